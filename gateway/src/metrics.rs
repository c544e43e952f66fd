//! Every metric of the gateway, declared in one place on one explicit registry.
//!
//! Names follow `edgesync_<what>_<unit>[_total]`. Labels have bounded
//! cardinality only (transport, command type, result, reason) — never a topic,
//! client id or connection id.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Latency buckets in seconds, 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Open connections by transport (`ws`, `wss`, `quic`).
    pub connections_open: IntGaugeVec,
    /// Accepted connections by transport.
    pub connections_accepted: IntCounterVec,
    /// Closed connections by reason (`client`, `error code`, `shutdown`, ...).
    pub connections_closed: IntCounterVec,
    /// Connections refused before a session started, by reason.
    pub connections_refused: IntCounterVec,
    /// Commands by type and result (`ok` or an error code).
    pub commands: IntCounterVec,
    /// Messages accepted from publishers (durably stored).
    pub messages_in: IntCounter,
    /// Message deliveries queued to subscribers (one per subscriber).
    pub messages_out: IntCounter,
    /// Frame bytes received / sent, by direction.
    pub bytes: IntCounterVec,
    /// Deliveries dropped because an outbox was full (announced by a gap notice).
    pub gap_drops: IntCounter,
    /// Ephemeral (QUIC datagram) deliveries by result: `queued`, or `dropped` when an
    /// outbox was full (best-effort: no gap notice).
    pub ephemeral_deliveries: IntCounterVec,
    /// Publish received → durable ack sent, seconds.
    pub publish_ack_seconds: Histogram,
    /// Group commit: records per batch.
    pub store_batch_records: Histogram,
    /// Group commit: write + fsync time, seconds.
    pub store_commit_seconds: Histogram,
    /// Records appended to the store.
    pub store_appends: IntCounter,
    /// Plugin calls by plugin, hook and result (plugins register through this registry).
    pub plugin_calls: IntCounterVec,
    /// Plugin call latency by plugin and hook.
    pub plugin_call_seconds: HistogramVec,
    /// Subscriptions currently held.
    pub subscriptions: IntGauge,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            connections_open: IntGaugeVec::new(
                Opts::new("edgesync_connections_open", "Open client connections by transport."),
                &["transport"],
            )
            .expect("valid metric"),
            connections_accepted: IntCounterVec::new(
                Opts::new("edgesync_connections_accepted_total", "Client connections accepted by transport."),
                &["transport"],
            )
            .expect("valid metric"),
            connections_closed: IntCounterVec::new(
                Opts::new("edgesync_connections_closed_total", "Client connections closed by reason."),
                &["reason"],
            )
            .expect("valid metric"),
            connections_refused: IntCounterVec::new(
                Opts::new("edgesync_connections_refused_total", "Connections refused before a session started."),
                &["reason"],
            )
            .expect("valid metric"),
            commands: IntCounterVec::new(
                Opts::new("edgesync_commands_total", "Client commands by type and result."),
                &["command", "result"],
            )
            .expect("valid metric"),
            messages_in: IntCounter::new("edgesync_messages_in_total", "Messages published and durably stored.")
                .expect("valid metric"),
            messages_out: IntCounter::new("edgesync_messages_out_total", "Message deliveries queued to subscribers.")
                .expect("valid metric"),
            bytes: IntCounterVec::new(
                Opts::new("edgesync_frame_bytes_total", "Client frame bytes by direction."),
                &["direction"],
            )
            .expect("valid metric"),
            gap_drops: IntCounter::new(
                "edgesync_deliveries_dropped_total",
                "Deliveries dropped by a full outbox and announced with a gap notice.",
            )
            .expect("valid metric"),
            ephemeral_deliveries: IntCounterVec::new(
                Opts::new(
                    "edgesync_ephemeral_deliveries_total",
                    "Ephemeral (datagram) message deliveries to subscribers, by result.",
                ),
                &["result"],
            )
            .expect("valid metric"),
            publish_ack_seconds: Histogram::with_opts(
                HistogramOpts::new("edgesync_publish_ack_seconds", "Publish received to durable ack, seconds.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            store_batch_records: Histogram::with_opts(
                HistogramOpts::new("edgesync_store_batch_records", "Records per group commit.")
                    .buckets(vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0]),
            )
            .expect("valid metric"),
            store_commit_seconds: Histogram::with_opts(
                HistogramOpts::new("edgesync_store_commit_seconds", "Group commit write plus fsync, seconds.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            store_appends: IntCounter::new("edgesync_store_appends_total", "Records appended to the store.")
                .expect("valid metric"),
            plugin_calls: IntCounterVec::new(
                Opts::new("edgesync_plugin_calls_total", "Plugin hook calls by plugin, hook and result."),
                &["plugin", "hook", "result"],
            )
            .expect("valid metric"),
            plugin_call_seconds: HistogramVec::new(
                HistogramOpts::new("edgesync_plugin_call_seconds", "Plugin hook call latency, seconds.")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["plugin", "hook"],
            )
            .expect("valid metric"),
            subscriptions: IntGauge::new("edgesync_subscriptions", "Subscriptions currently held.")
                .expect("valid metric"),
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_accepted.clone()),
            Box::new(self.connections_closed.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.commands.clone()),
            Box::new(self.messages_in.clone()),
            Box::new(self.messages_out.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.gap_drops.clone()),
            Box::new(self.ephemeral_deliveries.clone()),
            Box::new(self.publish_ack_seconds.clone()),
            Box::new(self.store_batch_records.clone()),
            Box::new(self.store_commit_seconds.clone()),
            Box::new(self.store_appends.clone()),
            Box::new(self.plugin_calls.clone()),
            Box::new(self.plugin_call_seconds.clone()),
            Box::new(self.subscriptions.clone()),
        ];
        for c in all {
            // Names are unique constants above; a duplicate is a programming error caught by tests.
            r.register(c).expect("unique metric names");
        }
    }

    /// Render the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
