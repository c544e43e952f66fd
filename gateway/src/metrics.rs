//! Every metric of the gateway, declared in one place on one explicit registry.
//!
//! Names follow `edgesync_<what>_<unit>[_total]`. Labels have bounded
//! cardinality only (transport, command type, result, reason, plugin name and
//! hook) — never a topic, client id or connection id.
//!
//! Three kinds of metric live here:
//!
//! - **event metrics** (counters, histograms), updated where the event happens:
//!   transports, the session driver, the broker, the store (through
//!   [`StoreObserver`], so the store itself never depends on this module);
//! - **state metrics** (store size, outbox depth, readiness), computed at scrape
//!   time by [`StateCollector`] from a [`StateSample`] source that the server
//!   installs with [`Metrics::watch`] — nothing has to remember to update them —
//!   except two gauges kept by their call sites: `edgesync_subscriptions`
//!   (session subscribe, unsubscribe, teardown) and `edgesync_connections_open`
//!   (the transports);
//! - **process metrics** (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_open_fds`, ...) from prometheus' own process collector (Linux).
//!
//! Where latencies are measured:
//!
//! - `edgesync_publish_ack_seconds`: the session driver, from the moment a
//!   `pub` was decoded to the moment its durable ack (or error) is queued.
//! - `edgesync_publish_deliver_seconds`: the broker's fan-out, from the record's
//!   HLC timestamp (assigned by the store writer when the record entered the log,
//!   millisecond resolution) to the moment it is queued in the first subscriber's
//!   outbox. Observed once per record that had at least one live subscriber;
//!   catch-up reads from history are not "live delivery" and are not counted.
//!   Time spent in the outbox until the socket write is visible in
//!   `edgesync_outbox_*`. On a replica the HLC is the origin's, so the value then
//!   includes replication delay and clock skew.
//!
//! Plugins: the `edgesync_plugin_*` families (calls by outcome — `ok`, `trap`,
//! `deadline`, `timeout`, … —, call duration, instance lifecycle, breaker trips;
//! labels `plugin`, `hook`) are declared in the plugin host's own telemetry
//! module (`gateway/plugin-host/src/telemetry.rs`) and registered on
//! [`Metrics::registry`] when plugins load, so they render with everything
//! else. They are not declared here a second time: the registry refuses
//! duplicate names. Plugin-defined metrics also go on that registry, under the
//! plugin's name.

use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::broker::BrokerObserver;
use crate::store::{CommitStats, StoreObserver};

/// Latency buckets in seconds, 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Delivery latency buckets in seconds: the HLC has millisecond resolution, so 1 ms to 60 s.
const DELIVER_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The gateway's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The one registry `/metrics` renders. Plugin-defined metrics register here too.
    pub registry: Registry,
    /// Open connections by transport (`ws`, `wss`, `quic`).
    pub connections_open: IntGaugeVec,
    /// Accepted connections by transport.
    pub connections_accepted: IntCounterVec,
    /// Closed connections by reason (`normal` or the error code sent, e.g. `slow_consumer`).
    pub connections_closed: IntCounterVec,
    /// Connections refused before a session started, by reason.
    pub connections_refused: IntCounterVec,
    /// Commands by type and result (`ok` or an error code).
    pub commands: IntCounterVec,
    /// Messages accepted from publishers to be stored (`pub` commands, the admin API, plugin
    /// publishes), counted before the hooks. Ephemeral datagrams are not in it.
    pub messages_in: IntCounter,
    /// Ephemeral publishes (QUIC datagrams) that passed validation and permissions, before
    /// the hooks: never stored, delivered best-effort (see `ephemeral_deliveries`).
    pub ephemeral_messages_in: IntCounter,
    /// Message deliveries queued to subscribers (one per subscriber; live and catch-up).
    pub messages_out: IntCounter,
    /// Frame bytes received / sent, by direction.
    pub bytes: IntCounterVec,
    /// `bytes{direction="in"}`, resolved once (per-frame hot path).
    pub bytes_in: IntCounter,
    /// `bytes{direction="out"}`, resolved once (per-flush hot path).
    pub bytes_out: IntCounter,
    /// Deliveries dropped, by reason. Bounded reasons: `outbox_full`.
    pub deliveries_dropped: IntCounterVec,
    /// `deliveries_dropped{reason="outbox_full"}`: dropped by a full outbox and announced with a gap notice.
    pub gap_drops: IntCounter,
    /// Ephemeral (QUIC datagram) deliveries by result (`queued`, `dropped`): best-effort, never stored.
    pub ephemeral_deliveries: IntCounterVec,
    /// Gap notices sent for stored ranges a reader cannot get, by reason (`retention`, `corrupt`).
    pub gaps: IntCounterVec,
    /// Publish received → durable ack sent, seconds.
    pub publish_ack_seconds: Histogram,
    /// Record's HLC → queued to the first live subscriber at fan-out, seconds (see module docs).
    pub publish_deliver_seconds: Histogram,
    /// Group commit: append requests per batch (duplicates included).
    pub store_batch_records: Histogram,
    /// Group commit: write + fsync time, seconds.
    pub store_commit_seconds: Histogram,
    /// One fdatasync of the journal, seconds.
    pub store_fsync_seconds: Histogram,
    /// Records appended to the store (duplicates answered from the dedupe window excluded).
    pub store_appends: IntCounter,
    /// Damage found in the store, by kind (`journal`: batches dropped at open;
    /// `record`: records that fail their checksum or cannot be read).
    pub store_damaged: IntCounterVec,
    /// Durability work that failed in the background, by `what` (`shutdown_fsync`,
    /// `shutdown_flush`, `syncer`): reported here and at ERROR instead of dropped.
    pub store_durability_errors: IntCounterVec,
    /// Plugin kv tombstones removed once older than `store.kv_tombstone_secs`.
    pub store_tombstones_collected: IntCounter,
    /// Subscriptions currently held.
    pub subscriptions: IntGauge,
    /// Queue groups (label `group`, at most `limits.max_queue_groups` values; a group's
    /// series go when its last member leaves): deliveries, redeliveries (timeouts,
    /// naks, members gone), dead letters, messages skipped because retention removed
    /// them first, ack latency; pending / in flight / members sampled at scrape time.
    pub queue_delivered: IntCounterVec,
    pub queue_redeliveries: IntCounterVec,
    pub queue_dead_lettered: IntCounterVec,
    pub queue_skipped: IntCounterVec,
    pub queue_ack_seconds: HistogramVec,
    pub queue_pending: IntGaugeVec,
    pub queue_in_flight: IntGaugeVec,
    pub queue_members: IntGaugeVec,
    /// Replication: peer links refused (handshake or hello), by reason (`certificate`,
    /// `identity`, `cluster`, `protocol_version`, `self_link`, `direction`, `bad_hello`,
    /// `by_peer`: the peer refused us).
    pub peer_refused: IntCounterVec,
    /// Replication: peer links ended, by reason (`local`, `connection`, `protocol`,
    /// `wire`, `store`, `lagged`, `duplicate`, `refused`).
    pub peer_links_closed: IntCounterVec,
    /// Replication: 1 while the link to a peer is up, by peer node id (bounded by the
    /// cluster's size: only nodes with a cluster certificate get a label).
    pub peer_link_up: IntGaugeVec,
    /// Replication: records this node holds (of the topics a link carries, not the peer's
    /// own) that the peer has neither acknowledged as durable nor sent us, by peer.
    pub peer_lag_records: IntGaugeVec,
    /// Replication: records received from a peer and stored, by peer.
    pub peer_records_in: IntCounterVec,
    /// Replication: frame bytes to and from a peer, by peer and direction.
    pub peer_bytes: IntCounterVec,
    /// Replication: ranges a peer could no longer send (retention), stored as gap markers.
    pub peer_gaps: IntCounter,
    /// Replication: digest comparisons that found a difference (a repair was pulled).
    pub peer_digest_mismatches: IntCounter,
    /// Replication: last-writer-wins entries (plugin kv) received from peers, by outcome
    /// (`won`: stored, `stale`: an equal or newer entry was held, `refused`: not a
    /// namespace this node holds).
    pub peer_lww_entries: IntCounterVec,
    /// Replication: LWW entries whose stamp ran more than the drift bound ahead of this
    /// node's clock, stored clamped.
    pub peer_lww_clamped: IntCounter,
    /// The JetStream bridges' families (label `bridge`: the configured name, bounded by config).
    pub bridge: BridgeMetrics,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let deliveries_dropped = counter_vec(
            "edgesync_deliveries_dropped_total",
            "Deliveries dropped, by reason (outbox_full: announced to the subscriber with a gap notice).",
            &["reason"],
        );
        let bytes = counter_vec(
            "edgesync_frame_bytes_total",
            "Client frame bytes by direction.",
            &["direction"],
        );
        let m = Metrics {
            connections_open: gauge_vec(
                "edgesync_connections_open",
                "Open client connections by transport.",
                &["transport"],
            ),
            connections_accepted: counter_vec(
                "edgesync_connections_accepted_total",
                "Client connections accepted by transport.",
                &["transport"],
            ),
            connections_closed: counter_vec(
                "edgesync_connections_closed_total",
                "Client connections closed, by reason (normal or the error code sent).",
                &["reason"],
            ),
            connections_refused: counter_vec(
                "edgesync_connections_refused_total",
                "Connections refused before a session started, by reason.",
                &["reason"],
            ),
            commands: counter_vec(
                "edgesync_commands_total",
                "Client commands by type and result.",
                &["command", "result"],
            ),
            messages_in: counter(
                "edgesync_messages_in_total",
                "Messages accepted from publishers to be stored (ephemeral datagrams excluded).",
            ),
            ephemeral_messages_in: counter(
                "edgesync_ephemeral_messages_in_total",
                "Ephemeral publishes (QUIC datagrams) accepted; never stored.",
            ),
            messages_out: counter(
                "edgesync_messages_out_total",
                "Message deliveries queued to subscribers.",
            ),
            bytes_in: bytes.with_label_values(&["in"]),
            bytes_out: bytes.with_label_values(&["out"]),
            bytes,
            gap_drops: deliveries_dropped.with_label_values(&["outbox_full"]),
            deliveries_dropped,
            ephemeral_deliveries: counter_vec(
                "edgesync_ephemeral_deliveries_total",
                "Ephemeral (datagram) message deliveries by result (queued or dropped).",
                &["result"],
            ),
            gaps: counter_vec(
                "edgesync_gaps_total",
                "Gap notices for stored ranges a reader cannot get, by reason.",
                &["reason"],
            ),
            publish_ack_seconds: histogram(
                "edgesync_publish_ack_seconds",
                "Publish received to durable ack, seconds.",
                LATENCY_BUCKETS,
            ),
            publish_deliver_seconds: histogram(
                "edgesync_publish_deliver_seconds",
                "Record timestamp (HLC) to queued for the first live subscriber, seconds.",
                DELIVER_BUCKETS,
            ),
            store_batch_records: histogram(
                "edgesync_store_batch_records",
                "Append requests per group commit.",
                &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0],
            ),
            store_commit_seconds: histogram(
                "edgesync_store_commit_seconds",
                "Group commit write plus fsync, seconds.",
                LATENCY_BUCKETS,
            ),
            store_fsync_seconds: histogram(
                "edgesync_store_fsync_seconds",
                "One fdatasync of the store journal, seconds.",
                LATENCY_BUCKETS,
            ),
            store_appends: counter(
                "edgesync_store_appends_total",
                "Records appended to the store.",
            ),
            store_damaged: counter_vec(
                "edgesync_store_damaged_total",
                "Damage found in the store: journal batches dropped at open, records that fail their checksum.",
                &["kind"],
            ),
            store_durability_errors: counter_vec(
                "edgesync_store_durability_errors_total",
                "Background durability work that failed: the fsync or memtable flush at shutdown, the interval fsync thread.",
                &["what"],
            ),
            store_tombstones_collected: IntCounter::new(
                "edgesync_store_kv_tombstones_collected_total",
                "Plugin kv tombstones (deleted keys) removed once older than store.kv_tombstone_secs.",
            )
            .expect("valid metric"),
            subscriptions: IntGauge::new("edgesync_subscriptions", "Subscriptions currently held.")
                .expect("valid metric"),
            queue_delivered: counter_vec(
                "edgesync_queue_deliveries_total",
                "Queue group deliveries (redeliveries included).",
                &["group"],
            ),
            queue_redeliveries: counter_vec(
                "edgesync_queue_redeliveries_total",
                "Queue deliveries put back in line: ack wait passed, nak, member gone.",
                &["group"],
            ),
            queue_dead_lettered: counter_vec(
                "edgesync_queue_dead_lettered_total",
                "Queue messages sent to $dlq.queue.<group> (max_deliveries or term).",
                &["group"],
            ),
            queue_skipped: counter_vec(
                "edgesync_queue_skipped_total",
                "Queue messages removed by retention (or damaged) before a member got them.",
                &["group"],
            ),
            queue_ack_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "edgesync_queue_ack_seconds",
                    "Queue delivery to ack, seconds.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["group"],
            )
            .expect("valid metric"),
            queue_pending: gauge_vec(
                "edgesync_queue_pending",
                "Queue messages not answered yet (stored or held), per group with members.",
                &["group"],
            ),
            queue_in_flight: gauge_vec(
                "edgesync_queue_in_flight",
                "Queue deliveries held by members awaiting an answer.",
                &["group"],
            ),
            queue_members: gauge_vec(
                "edgesync_queue_members",
                "Members of each queue group.",
                &["group"],
            ),
            peer_refused: counter_vec(
                "edgesync_peer_refused_total",
                "Replication peer links refused at the handshake or hello, by reason.",
                &["reason"],
            ),
            peer_links_closed: counter_vec(
                "edgesync_peer_links_closed_total",
                "Replication peer links ended, by reason.",
                &["reason"],
            ),
            peer_link_up: gauge_vec(
                "edgesync_peer_link_up",
                "1 while the replication link to a peer is up, by peer node id.",
                &["peer"],
            ),
            peer_lag_records: gauge_vec(
                "edgesync_peer_lag_records",
                "Records held here that the peer has not acknowledged as durable, by peer.",
                &["peer"],
            ),
            peer_records_in: counter_vec(
                "edgesync_peer_records_in_total",
                "Records received from a peer and stored, by peer.",
                &["peer"],
            ),
            peer_bytes: counter_vec(
                "edgesync_peer_bytes_total",
                "Replication frame bytes by peer and direction.",
                &["peer", "direction"],
            ),
            peer_gaps: counter(
                "edgesync_peer_gaps_received_total",
                "Ranges a peer could no longer send (retention), stored as gap markers.",
            ),
            peer_digest_mismatches: counter(
                "edgesync_peer_digest_mismatches_total",
                "Anti-entropy digest comparisons that found a difference.",
            ),
            peer_lww_entries: counter_vec(
                "edgesync_peer_lww_entries_total",
                "Last-writer-wins entries received from peers, by outcome (won, stale, refused).",
                &["outcome"],
            ),
            peer_lww_clamped: counter(
                "edgesync_peer_lww_clamped_total",
                "LWW entries from peers stamped beyond the clock drift bound, stored clamped.",
            ),
            bridge: BridgeMetrics::new(),
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let all: Vec<Box<dyn Collector>> = vec![
            Box::new(self.connections_open.clone()),
            Box::new(self.connections_accepted.clone()),
            Box::new(self.connections_closed.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.commands.clone()),
            Box::new(self.messages_in.clone()),
            Box::new(self.ephemeral_messages_in.clone()),
            Box::new(self.messages_out.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.deliveries_dropped.clone()),
            Box::new(self.ephemeral_deliveries.clone()),
            Box::new(self.gaps.clone()),
            Box::new(self.publish_ack_seconds.clone()),
            Box::new(self.publish_deliver_seconds.clone()),
            Box::new(self.store_batch_records.clone()),
            Box::new(self.store_commit_seconds.clone()),
            Box::new(self.store_fsync_seconds.clone()),
            Box::new(self.store_appends.clone()),
            Box::new(self.store_damaged.clone()),
            Box::new(self.store_durability_errors.clone()),
            Box::new(self.store_tombstones_collected.clone()),
            Box::new(self.subscriptions.clone()),
            Box::new(self.queue_delivered.clone()),
            Box::new(self.queue_redeliveries.clone()),
            Box::new(self.queue_dead_lettered.clone()),
            Box::new(self.queue_skipped.clone()),
            Box::new(self.queue_ack_seconds.clone()),
            Box::new(self.queue_pending.clone()),
            Box::new(self.queue_in_flight.clone()),
            Box::new(self.queue_members.clone()),
            Box::new(self.peer_refused.clone()),
            Box::new(self.peer_links_closed.clone()),
            Box::new(self.peer_link_up.clone()),
            Box::new(self.peer_lag_records.clone()),
            Box::new(self.peer_records_in.clone()),
            Box::new(self.peer_bytes.clone()),
            Box::new(self.peer_gaps.clone()),
            Box::new(self.peer_digest_mismatches.clone()),
            Box::new(self.peer_lww_entries.clone()),
            Box::new(self.peer_lww_clamped.clone()),
            Box::new(build_info()),
        ];
        let all = all.into_iter().chain(self.bridge.collectors());
        for c in all {
            // Names are unique constants above; a duplicate is a programming error caught by tests.
            self.registry.register(c).expect("unique metric names");
        }
        #[cfg(target_os = "linux")]
        {
            // Fails only if the process metric names were registered twice on this registry.
            let _ = self.registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
    }

    /// Install the source of the scrape-time state metrics (store size, outbox depth,
    /// readiness). Call once; a second call is ignored (the names are taken).
    pub fn watch(&self, source: impl Fn() -> Option<StateSample> + Send + Sync + 'static) {
        if self
            .registry
            .register(Box::new(StateCollector::new(Box::new(source))))
            .is_err()
        {
            tracing::debug!("state metrics already watched");
        }
    }

    /// Drop a queue group's series (its last member left): the label stays bounded.
    pub fn forget_queue(&self, group: &str) {
        let l = &[group];
        let _ = self.queue_delivered.remove_label_values(l);
        let _ = self.queue_redeliveries.remove_label_values(l);
        let _ = self.queue_dead_lettered.remove_label_values(l);
        let _ = self.queue_skipped.remove_label_values(l);
        let _ = self.queue_ack_seconds.remove_label_values(l);
        let _ = self.queue_pending.remove_label_values(l);
        let _ = self.queue_in_flight.remove_label_values(l);
        let _ = self.queue_members.remove_label_values(l);
    }

    /// Count a gap notice for a stored range (`corrupt` records or removed by retention).
    pub fn gap(&self, corrupt: bool) {
        self.gaps
            .with_label_values(&[if corrupt { "corrupt" } else { "retention" }])
            .inc();
    }

    /// Observe the delivery latency of a record with HLC `hlc` (ms << 16) queued now.
    pub fn delivered(&self, hlc: u64) {
        let now_ms = crate::clock::Clock::unix_ms(&crate::clock::SystemClock);
        let age_ms = now_ms.saturating_sub(hlc >> 16);
        self.publish_deliver_seconds.observe(age_ms as f64 / 1000.0);
    }

    /// Render the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerObserver for Metrics {
    fn queued(&self, n: u64) {
        self.messages_out.inc_by(n);
    }

    fn gap_drop(&self) {
        self.gap_drops.inc();
    }

    fn delivered(&self, hlc: u64) {
        Metrics::delivered(self, hlc);
    }

    fn ephemeral(&self, queued: bool) {
        self.ephemeral_deliveries
            .with_label_values(&[if queued { "queued" } else { "dropped" }])
            .inc();
    }
}

impl StoreObserver for Metrics {
    fn committed(&self, stats: &CommitStats) {
        self.store_batch_records.observe(stats.requests as f64);
        self.store_appends.inc_by(stats.records as u64);
        self.store_commit_seconds
            .observe(stats.elapsed.as_secs_f64());
    }

    fn synced(&self, elapsed: Duration) {
        self.store_fsync_seconds.observe(elapsed.as_secs_f64());
    }

    fn damaged(&self, kind: &'static str, n: u64) {
        self.store_damaged.with_label_values(&[kind]).inc_by(n);
    }

    fn durability_error(&self, what: &'static str) {
        self.store_durability_errors
            .with_label_values(&[what])
            .inc();
    }

    fn tombstones_collected(&self, n: u64) {
        self.store_tombstones_collected.inc_by(n);
    }
}

/// The bridges' metrics (`crate::bridge`). Labels: `bridge` (configured names),
/// `direction` (`export`, `import`), `reason` (a fixed set) — bounded.
#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    /// 1 while the bridge's link to the remote log works, else 0.
    pub up: IntGaugeVec,
    /// Records (export: stored here, not yet acknowledged by JetStream) or messages
    /// (import: in the stream, not yet committed here) waiting.
    pub lag: IntGaugeVec,
    /// Records published to JetStream (resends included).
    pub published: IntCounterVec,
    /// Publishes JetStream acknowledged (the position moves only after these).
    pub acked: IntCounterVec,
    /// Dropped as duplicates: export — JetStream's duplicate window recognised the
    /// `Nats-Msg-Id`; import — a redelivery already committed here.
    pub duplicates: IntCounterVec,
    /// Messages imported and committed here.
    pub imported: IntCounterVec,
    /// Not bridged, by reason: `imported` (export never sends records an import
    /// made), `known` (import: the record is already here), `filtered` (subject outside
    /// `topics`), `rejected` (invalid, or refused by a plugin), `gap` (records retention
    /// removed before export).
    pub skipped: IntCounterVec,
    /// Failures talking to JetStream or committing, by direction (each is retried).
    pub errors: IntCounterVec,
}

impl BridgeMetrics {
    fn new() -> Self {
        BridgeMetrics {
            up: gauge_vec(
                "edgesync_bridge_up",
                "1 while the bridge's link to the remote log works.",
                &["bridge", "direction"],
            ),
            lag: gauge_vec(
                "edgesync_bridge_lag_messages",
                "Messages waiting to cross the bridge (export: stored here, not yet acknowledged by JetStream; import: pending in the consumer).",
                &["bridge", "direction"],
            ),
            published: counter_vec(
                "edgesync_bridge_published_total",
                "Records published to JetStream by export (resends included).",
                &["bridge"],
            ),
            acked: counter_vec(
                "edgesync_bridge_acked_total",
                "Export publishes acknowledged by JetStream.",
                &["bridge"],
            ),
            duplicates: counter_vec(
                "edgesync_bridge_duplicates_total",
                "Duplicates dropped (export: by JetStream's duplicate window; import: redeliveries already committed).",
                &["bridge", "direction"],
            ),
            imported: counter_vec(
                "edgesync_bridge_imported_total",
                "JetStream messages imported and committed.",
                &["bridge"],
            ),
            skipped: counter_vec(
                "edgesync_bridge_skipped_total",
                "Records or messages not bridged, by reason.",
                &["bridge", "reason"],
            ),
            errors: counter_vec(
                "edgesync_bridge_errors_total",
                "Bridge failures (JetStream unreachable, timeouts, store refusals), by direction; each is retried.",
                &["bridge", "direction"],
            ),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.up.clone()),
            Box::new(self.lag.clone()),
            Box::new(self.published.clone()),
            Box::new(self.acked.clone()),
            Box::new(self.duplicates.clone()),
            Box::new(self.imported.clone()),
            Box::new(self.skipped.clone()),
            Box::new(self.errors.clone()),
        ]
    }
}

/// Gateway state read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSample {
    pub ready: bool,
    pub store_topics: u64,
    /// Records held (after retention).
    pub store_records: u64,
    /// Payload bytes held (after retention).
    pub store_payload_bytes: u64,
    /// Bytes the store uses on disk (journal and tables).
    pub store_disk_bytes: u64,
    pub store_poisoned: bool,
    /// Frames queued in all connection outboxes together.
    pub outbox_queued_frames: u64,
    /// Deepest single outbox, frames.
    pub outbox_depth_max_frames: u64,
}

/// Turns a [`StateSample`] source into gauges at every scrape.
pub struct StateCollector {
    source: Box<dyn Fn() -> Option<StateSample> + Send + Sync>,
    ready: IntGauge,
    store_topics: IntGauge,
    store_records: IntGauge,
    store_payload_bytes: IntGauge,
    store_disk_bytes: IntGauge,
    store_poisoned: IntGauge,
    outbox_queued_frames: IntGauge,
    outbox_depth_max_frames: IntGauge,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl StateCollector {
    fn new(source: Box<dyn Fn() -> Option<StateSample> + Send + Sync>) -> Self {
        let g = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        StateCollector {
            source,
            ready: g(
                "edgesync_ready",
                "1 when the store is open, listeners are bound and plugins loaded.",
            ),
            store_topics: g("edgesync_store_topics", "Topics held by the store."),
            store_records: g(
                "edgesync_store_records",
                "Records held by the store (after retention).",
            ),
            store_payload_bytes: g(
                "edgesync_store_payload_bytes",
                "Payload bytes held by the store (after retention).",
            ),
            store_disk_bytes: g("edgesync_store_disk_bytes", "Bytes the store uses on disk."),
            store_poisoned: g(
                "edgesync_store_poisoned",
                "1 after a failed fsync: publishes are refused until restart.",
            ),
            outbox_queued_frames: g(
                "edgesync_outbox_queued_frames",
                "Frames queued in all connection outboxes.",
            ),
            outbox_depth_max_frames: g(
                "edgesync_outbox_depth_max_frames",
                "Frames queued in the deepest outbox.",
            ),
        }
    }

    fn gauges(&self) -> [&IntGauge; 8] {
        [
            &self.ready,
            &self.store_topics,
            &self.store_records,
            &self.store_payload_bytes,
            &self.store_disk_bytes,
            &self.store_poisoned,
            &self.outbox_queued_frames,
            &self.outbox_depth_max_frames,
        ]
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges().into_iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(s) = (self.source)() else {
            return Vec::new();
        };
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.ready.set(i64::from(s.ready));
        self.store_topics.set(clamp(s.store_topics));
        self.store_records.set(clamp(s.store_records));
        self.store_payload_bytes.set(clamp(s.store_payload_bytes));
        self.store_disk_bytes.set(clamp(s.store_disk_bytes));
        self.store_poisoned.set(i64::from(s.store_poisoned));
        self.outbox_queued_frames.set(clamp(s.outbox_queued_frames));
        self.outbox_depth_max_frames
            .set(clamp(s.outbox_depth_max_frames));
        self.gauges()
            .into_iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}

// Constructors for constant names and help texts: they cannot fail (valid
// names, no duplicate labels), which the unit test below proves by building all.

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric")
}

/// `edgesync_build_info{version="…"} 1`: lets dashboards show which version runs.
fn build_info() -> IntGaugeVec {
    let g = gauge_vec(
        "edgesync_build_info",
        "Always 1; the version label says which build runs.",
        &["version"],
    );
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new();
        m.gap_drops.inc();
        m.gap(false);
        m.delivered(0);
        m.watch(|| {
            Some(StateSample {
                ready: true,
                store_records: 3,
                ..StateSample::default()
            })
        });
        let text = m.render();
        for name in [
            "edgesync_deliveries_dropped_total{reason=\"outbox_full\"} 1",
            "edgesync_gaps_total{reason=\"retention\"} 1",
            "edgesync_publish_deliver_seconds_count 1",
            "edgesync_ready 1",
            "edgesync_store_records 3",
            "edgesync_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn a_gone_source_removes_state_metrics() {
        let m = Metrics::new();
        m.watch(|| None);
        assert!(!m.render().contains("edgesync_ready"));
    }
}
