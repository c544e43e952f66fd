//! The plugin host's own metrics, declared in one place, on the registry
//! the gateway passes in. Labels are bounded: plugin names come from
//! config, hooks and outcomes are fixed sets.
//!
//! - `edgesync_plugin_calls_total{plugin,hook,outcome}` — outcome is `ok`
//!   or an [`ErrorKind`] label (`trap`, `deadline`, …)
//! - `edgesync_plugin_call_duration_seconds{plugin,hook}` — successful
//!   calls, sampled (one in `LATENCY_SAMPLE_EVERY` per worker thread)
//! - `edgesync_plugin_instances_total{plugin,event}` — `created`,
//!   `discarded` (after a fault), `retired` (call budget reached)
//! - `edgesync_plugin_breaker_trips_total{plugin}`

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::error::ErrorKind;
use crate::hooks::Hook;

/// Registered once per [`PluginHost`](crate::PluginHost).
#[derive(Clone)]
pub(crate) struct HostTelemetry {
    calls: IntCounterVec,
    duration: HistogramVec,
    instances: IntCounterVec,
    breaker_trips: IntCounterVec,
}

impl HostTelemetry {
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let calls = IntCounterVec::new(
            Opts::new(
                "edgesync_plugin_calls_total",
                "Plugin hook calls by outcome.",
            ),
            &["plugin", "hook", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "edgesync_plugin_call_duration_seconds",
                "Duration of successful plugin hook calls, including instance checkout.",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3,
                1e-2, 2.5e-2, 0.1,
            ]),
            &["plugin", "hook"],
        )?;
        let instances = IntCounterVec::new(
            Opts::new(
                "edgesync_plugin_instances_total",
                "Plugin instance lifecycle events.",
            ),
            &["plugin", "event"],
        )?;
        let breaker_trips = IntCounterVec::new(
            Opts::new(
                "edgesync_plugin_breaker_trips_total",
                "Crash-loop breaker trips.",
            ),
            &["plugin"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        registry.register(Box::new(breaker_trips.clone()))?;
        Ok(HostTelemetry {
            calls,
            duration,
            instances,
            breaker_trips,
        })
    }

    /// Pre-resolved handles for one plugin (no label lookup per call).
    pub(crate) fn for_plugin(&self, plugin: &str) -> PluginTelemetry {
        let ok = Hook::ALL.map(|h| self.calls.with_label_values(&[plugin, h.name(), "ok"]));
        let duration = Hook::ALL.map(|h| self.duration.with_label_values(&[plugin, h.name()]));
        PluginTelemetry {
            plugin: plugin.to_string(),
            calls: self.calls.clone(),
            ok,
            duration,
            created: self.instances.with_label_values(&[plugin, "created"]),
            discarded: self.instances.with_label_values(&[plugin, "discarded"]),
            retired: self.instances.with_label_values(&[plugin, "retired"]),
            breaker_trips: self.breaker_trips.with_label_values(&[plugin]),
        }
    }
}

/// One plugin's metric handles.
pub(crate) struct PluginTelemetry {
    plugin: String,
    calls: IntCounterVec,
    ok: [IntCounter; 8],
    duration: [Histogram; 8],
    pub created: IntCounter,
    pub discarded: IntCounter,
    pub retired: IntCounter,
    pub breaker_trips: IntCounter,
}

impl PluginTelemetry {
    pub(crate) fn ok(&self, hook: Hook, seconds: Option<f64>) {
        self.ok[hook.index()].inc();
        if let Some(s) = seconds {
            self.duration[hook.index()].observe(s);
        }
    }

    pub(crate) fn error(&self, hook: Hook, kind: ErrorKind) {
        self.calls
            .with_label_values(&[self.plugin.as_str(), hook.name(), kind.as_str()])
            .inc();
    }
}
