//! `metrics`: plugin-defined Prometheus metrics, registered on the
//! gateway's registry as `edgesync_plugin_<plugin>_<name>`.
//!
//! Definitions live in the plugin's context (not the instance), so the
//! `define-*` calls every pooled instance makes in `init` are idempotent and
//! survive reloads. Bounded: at most [`MAX_METRICS`] metrics per plugin,
//! [`MAX_LABELS`] label names per metric and [`MAX_SERIES`] label-value
//! combinations per metric; samples beyond are dropped and counted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{CounterVec, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::metrics;
use crate::state::HostState;

/// Metrics per plugin.
pub(crate) const MAX_METRICS: usize = 32;
/// Label names per metric.
pub(crate) const MAX_LABELS: usize = 4;
/// Label-value combinations per metric.
pub(crate) const MAX_SERIES: usize = 64;
/// Longest label value, in bytes.
const MAX_LABEL_VALUE_BYTES: usize = 64;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    metrics::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

enum Handle {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

struct Def {
    name: String,
    kind: Kind,
    labels: Vec<String>,
    handle: Handle,
    series: HashSet<Vec<String>>,
}

/// One plugin's metrics.
pub(crate) struct PluginMetrics {
    prefix: String,
    registry: Registry,
    table: Mutex<Table>,
    /// Samples dropped (cardinality cap, wrong kind, bad id).
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<String, u32>,
    defs: Vec<Def>,
}

impl PluginMetrics {
    pub(crate) fn new(plugin: &str, registry: Registry) -> Self {
        PluginMetrics {
            prefix: format!("edgesync_plugin_{}_", plugin.replace('-', "_")),
            registry,
            table: Mutex::new(Table::default()),
            dropped: AtomicU64::new(0),
        }
    }

    fn define(
        &self,
        kind: Kind,
        name: &str,
        help: &str,
        labels: Vec<String>,
        buckets: Vec<f64>,
    ) -> Result<u32, String> {
        validate_name(name)?;
        if labels.len() > MAX_LABELS {
            return Err(format!("at most {MAX_LABELS} labels"));
        }
        for l in &labels {
            validate_name(l).map_err(|e| format!("label {e}"))?;
        }
        let mut t = self.table.lock();
        if let Some(&id) = t.by_name.get(name) {
            let d = &t.defs[id as usize];
            if d.kind != kind || d.labels != labels {
                return Err(format!(
                    "`{name}` is already defined as a {:?} with labels {:?}",
                    d.kind, d.labels
                ));
            }
            return Ok(id);
        }
        if t.defs.len() >= MAX_METRICS {
            return Err(format!("at most {MAX_METRICS} metrics per plugin"));
        }
        let full = format!("{}{name}", self.prefix);
        let help = if help.is_empty() {
            name
        } else {
            super::log::truncate(help, 256)
        };
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let handle = match kind {
            Kind::Counter => Handle::Counter(
                CounterVec::new(Opts::new(&full, help), &label_refs).map_err(|e| e.to_string())?,
            ),
            Kind::Gauge => Handle::Gauge(
                GaugeVec::new(Opts::new(&full, help), &label_refs).map_err(|e| e.to_string())?,
            ),
            Kind::Histogram => {
                let mut opts = HistogramOpts::new(&full, help);
                if !buckets.is_empty() {
                    if buckets.len() > 32 || !buckets.windows(2).all(|w| w[0] < w[1]) {
                        return Err("buckets must be at most 32, strictly ascending".into());
                    }
                    opts = opts.buckets(buckets);
                }
                Handle::Histogram(HistogramVec::new(opts, &label_refs).map_err(|e| e.to_string())?)
            }
        };
        let collector: Box<dyn Collector> = match &handle {
            Handle::Counter(c) => Box::new(c.clone()),
            Handle::Gauge(g) => Box::new(g.clone()),
            Handle::Histogram(h) => Box::new(h.clone()),
        };
        self.registry
            .register(collector)
            .map_err(|e| format!("register `{full}`: {e}"))?;
        let id = t.defs.len() as u32;
        t.defs.push(Def {
            name: name.to_string(),
            kind,
            labels,
            handle,
            series: HashSet::new(),
        });
        t.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    fn record(&self, id: u32, kind: Kind, labels: Vec<String>, value: f64) {
        let mut t = self.table.lock();
        let ok = match t.defs.get_mut(id as usize) {
            Some(d) if d.kind == kind || (kind == Kind::Counter && d.kind == Kind::Gauge) => {
                admit_series(d, &labels) && apply(d, kind, &labels, value)
            }
            _ => false,
        };
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Full names of the defined metrics (for tests and `plugin check`).
    pub(crate) fn names(&self) -> Vec<String> {
        let t = self.table.lock();
        t.defs
            .iter()
            .map(|d| format!("{}{}", self.prefix, d.name))
            .collect()
    }
}

impl Drop for PluginMetrics {
    /// Unregisters the plugin's metrics when the plugin is unloaded.
    fn drop(&mut self) {
        let t = self.table.get_mut();
        for d in &t.defs {
            let collector: Box<dyn Collector> = match &d.handle {
                Handle::Counter(c) => Box::new(c.clone()),
                Handle::Gauge(g) => Box::new(g.clone()),
                Handle::Histogram(h) => Box::new(h.clone()),
            };
            let _ = self.registry.unregister(collector);
        }
    }
}

fn admit_series(d: &mut Def, labels: &[String]) -> bool {
    if labels.len() != d.labels.len() || labels.iter().any(|l| l.len() > MAX_LABEL_VALUE_BYTES) {
        return false;
    }
    if d.series.contains(labels) {
        return true;
    }
    if d.series.len() >= MAX_SERIES {
        return false;
    }
    d.series.insert(labels.to_vec());
    true
}

fn apply(d: &Def, kind: Kind, labels: &[String], value: f64) -> bool {
    if !value.is_finite() {
        return false;
    }
    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    match (&d.handle, kind) {
        (Handle::Counter(c), Kind::Counter) if value >= 0.0 => {
            c.with_label_values(&refs).inc_by(value);
        }
        (Handle::Gauge(g), Kind::Counter) => g.with_label_values(&refs).add(value),
        (Handle::Gauge(g), Kind::Gauge) => g.with_label_values(&refs).set(value),
        (Handle::Histogram(h), Kind::Histogram) => h.with_label_values(&refs).observe(value),
        _ => return false,
    }
    true
}

fn validate_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name `{}` must match [a-z][a-z0-9_]{{0,63}}",
            super::log::truncate(name, 64)
        ))
    }
}

impl metrics::Host for HostState {
    fn define_counter(
        &mut self,
        name: String,
        help: String,
        labels: Vec<String>,
    ) -> Result<u32, String> {
        self.plugin
            .metrics
            .define(Kind::Counter, &name, &help, labels, Vec::new())
    }

    fn define_gauge(
        &mut self,
        name: String,
        help: String,
        labels: Vec<String>,
    ) -> Result<u32, String> {
        self.plugin
            .metrics
            .define(Kind::Gauge, &name, &help, labels, Vec::new())
    }

    fn define_histogram(
        &mut self,
        name: String,
        help: String,
        labels: Vec<String>,
        buckets: Vec<f64>,
    ) -> Result<u32, String> {
        self.plugin
            .metrics
            .define(Kind::Histogram, &name, &help, labels, buckets)
    }

    fn add(&mut self, id: u32, labels: Vec<String>, delta: f64) {
        // `add` on a gauge adds; on a counter the delta must be >= 0.
        self.plugin.metrics.record(id, Kind::Counter, labels, delta);
    }

    fn set(&mut self, id: u32, labels: Vec<String>, value: f64) {
        self.plugin.metrics.record(id, Kind::Gauge, labels, value);
    }

    fn observe(&mut self, id: u32, labels: Vec<String>, value: f64) {
        self.plugin
            .metrics
            .record(id, Kind::Histogram, labels, value);
    }
}
