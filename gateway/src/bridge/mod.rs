//! Bridges to a distributed log: NATS JetStream (issue 17, docs/bridge-jetstream.md).
//!
//! One task per direction of each `[[bridge]]`, started by `server` beside the
//! pipeline:
//!
//! - [`export`]: reads committed records of the matching topics from the store
//!   (like a replication link) and publishes them with `Nats-Msg-Id` = the record's
//!   identity; the position — a version vector per topic, in the store's meta
//!   keyspace — moves only after JetStream acknowledged every publish of a window.
//! - [`import`]: a durable pull consumer; each message enters through the
//!   [`Pipeline`] like a publish (plugins run here, once) with an idempotent `mid`
//!   from the stream sequence; acknowledged to JetStream only after our commit.
//!   Imported records are never exported (no loops).
//!
//! A bridge never blocks publishers: it reads what the store already committed, and
//! while JetStream is down or slow it waits (with backoff), counts and reports lag.
//!
//! What it does not do: replication between gateways, or anything with sessions.

mod export;
mod import;
pub mod mapping;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{BridgeConfig, Limits};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::store::{Store, StoreError};

/// Why a bridge step failed. Every failure is retried with backoff; the class says
/// whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// JetStream: unreachable, timed out, or refused (stream missing, bad auth).
    #[error("jetstream: {0}")]
    Remote(String),
    /// Our store refused (poisoned, shutting down) or failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The pipeline refused the append (store, or a topic's replicated ack mode).
    #[error("append: {0}")]
    Append(#[from] crate::pipeline::AppendError),
}

fn remote(e: impl std::fmt::Display) -> BridgeError {
    BridgeError::Remote(e.to_string())
}

/// What a bridge task needs from the gateway.
#[derive(Clone)]
pub struct BridgeCtx {
    pub store: Store,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    /// Bumped after every group commit (the fan-out task does): export wakes on it.
    pub commits: watch::Receiver<u64>,
    /// The bounds an imported message must fit (those of a client's publish).
    pub limits: Limits,
}

/// The configured bridges: built with the gateway, started once the pipeline's hooks
/// are installed (imports must run plugins), stopped before the store closes.
pub struct Bridges {
    links: Vec<Arc<Link>>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Bridges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridges")
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// One bridge's state as `GET /v1/bridges` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeStatus {
    pub name: String,
    pub kind: &'static str,
    pub direction: &'static str,
    pub stream: String,
    pub urls: Vec<String>,
    /// Export: `up`, `connecting` or `down` (absent when the bridge does not export).
    pub export_state: Option<&'static str>,
    pub import_state: Option<&'static str>,
    /// Records stored here that JetStream has not acknowledged yet.
    pub export_lag: i64,
    /// Messages pending in the import consumer.
    pub import_lag: i64,
    pub published: u64,
    pub acked: u64,
    pub duplicates: u64,
    pub imported: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

impl Bridges {
    /// The bridges of `configs`, not started yet.
    pub fn new(configs: &[BridgeConfig], metrics: &Metrics) -> Bridges {
        Bridges {
            links: configs
                .iter()
                .map(|c| Arc::new(Link::new(c.clone(), metrics)))
                .collect(),
            tasks: parking_lot::Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        }
    }

    /// Start one task per direction of every bridge (once; a second call does nothing).
    pub fn spawn(&self, ctx: &BridgeCtx) {
        let mut tasks = self.tasks.lock();
        if !tasks.is_empty() || self.stop.is_cancelled() {
            return;
        }
        for link in &self.links {
            let d = link.cfg.direction;
            if d.exports() {
                tasks.push(tokio::spawn(export::run(
                    link.clone(),
                    ctx.clone(),
                    self.stop.clone(),
                )));
            }
            if d.imports() {
                tasks.push(tokio::spawn(import::run(
                    link.clone(),
                    ctx.clone(),
                    self.stop.clone(),
                )));
            }
            tracing::info!(
                bridge = link.name,
                direction = d.as_str(),
                stream = link.cfg.stream,
                "bridge started"
            );
        }
    }

    /// The state of every bridge, in config order.
    pub fn status(&self) -> Vec<BridgeStatus> {
        self.links.iter().map(|l| l.status()).collect()
    }

    /// Stop every bridge task (each within 2 s). A window in flight is not waited
    /// for: its records are resent at the next start and JetStream drops them.
    pub async fn stop(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

/// One bridge: its config, state and metric handles (shared by its tasks).
pub(crate) struct Link {
    cfg: BridgeConfig,
    name: String,
    export_state: AtomicU8,
    import_state: AtomicU8,
    last_error: parking_lot::Mutex<Option<String>>,
    m: LinkMetrics,
}

const CONNECTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

fn state_name(s: u8) -> &'static str {
    match s {
        UP => "up",
        DOWN => "down",
        _ => "connecting",
    }
}

/// Metric handles resolved once for this bridge's label values.
struct LinkMetrics {
    up_export: IntGauge,
    up_import: IntGauge,
    lag_export: IntGauge,
    lag_import: IntGauge,
    published: IntCounter,
    acked: IntCounter,
    dup_export: IntCounter,
    dup_import: IntCounter,
    imported: IntCounter,
    skipped_imported: IntCounter,
    skipped_known: IntCounter,
    skipped_filtered: IntCounter,
    skipped_rejected: IntCounter,
    skipped_gap: IntCounter,
    errors_export: IntCounter,
    errors_import: IntCounter,
}

impl Link {
    fn new(cfg: BridgeConfig, metrics: &Metrics) -> Link {
        let name = cfg.name().to_string();
        let b = &metrics.bridge;
        let n = name.as_str();
        let (ex, im) = (cfg.direction.exports(), cfg.direction.imports());
        // Series exist only for the directions this bridge runs: an export-only bridge
        // must not show an `up{direction="import"} 0` that an alert would page on.
        let gauge = |on: bool, v: &prometheus::IntGaugeVec, l: &[&str]| {
            if on {
                v.with_label_values(l)
            } else {
                detached_gauge()
            }
        };
        let counter = |on: bool, v: &prometheus::IntCounterVec, l: &[&str]| {
            if on {
                v.with_label_values(l)
            } else {
                detached_counter()
            }
        };
        let m = LinkMetrics {
            up_export: gauge(ex, &b.up, &[n, "export"]),
            up_import: gauge(im, &b.up, &[n, "import"]),
            lag_export: gauge(ex, &b.lag, &[n, "export"]),
            lag_import: gauge(im, &b.lag, &[n, "import"]),
            published: counter(ex, &b.published, &[n]),
            acked: counter(ex, &b.acked, &[n]),
            dup_export: counter(ex, &b.duplicates, &[n, "export"]),
            dup_import: counter(im, &b.duplicates, &[n, "import"]),
            imported: counter(im, &b.imported, &[n]),
            skipped_imported: counter(ex, &b.skipped, &[n, "imported"]),
            skipped_known: counter(im, &b.skipped, &[n, "known"]),
            skipped_filtered: counter(im, &b.skipped, &[n, "filtered"]),
            skipped_rejected: counter(im, &b.skipped, &[n, "rejected"]),
            skipped_gap: counter(ex, &b.skipped, &[n, "gap"]),
            errors_export: counter(ex, &b.errors, &[n, "export"]),
            errors_import: counter(im, &b.errors, &[n, "import"]),
        };
        Link {
            cfg,
            name,
            export_state: AtomicU8::new(CONNECTING),
            import_state: AtomicU8::new(CONNECTING),
            last_error: parking_lot::Mutex::new(None),
            m,
        }
    }

    fn matches(&self, topic: &str) -> bool {
        self.cfg
            .topics
            .iter()
            .any(|p| edgesync_protocol::topic::matches(p, topic))
    }

    fn set_state(&self, export: bool, state: u8) {
        if state == UP {
            let was = if export {
                &self.export_state
            } else {
                &self.import_state
            };
            if was.load(Ordering::Relaxed) == DOWN {
                tracing::info!(bridge = self.name, export, "bridge up again");
            }
        }
        let (cell, gauge) = if export {
            (&self.export_state, &self.m.up_export)
        } else {
            (&self.import_state, &self.m.up_import)
        };
        cell.store(state, Ordering::Relaxed);
        gauge.set(i64::from(state == UP));
    }

    /// A failed step: counted, logged, remembered for `/v1/bridges`.
    fn failed(&self, export: bool, e: &BridgeError) {
        let cell = if export {
            &self.export_state
        } else {
            &self.import_state
        };
        let first = cell.load(Ordering::Relaxed) != DOWN;
        self.set_state(export, DOWN);
        if export {
            self.m.errors_export.inc();
        } else {
            self.m.errors_import.inc();
        }
        let dir = if export { "export" } else { "import" };
        if first {
            tracing::warn!(bridge = self.name, direction = dir, error = %e, "bridge down; retrying with backoff");
        } else {
            tracing::debug!(bridge = self.name, direction = dir, error = %e, "bridge still down");
        }
        *self.last_error.lock() = Some(format!("{dir}: {e}"));
    }

    fn status(&self) -> BridgeStatus {
        let d = self.cfg.direction;
        let m = &self.m;
        BridgeStatus {
            name: self.name.clone(),
            kind: "jetstream",
            direction: d.as_str(),
            stream: self.cfg.stream.clone(),
            urls: self.cfg.url.list(),
            export_state: d
                .exports()
                .then(|| state_name(self.export_state.load(Ordering::Relaxed))),
            import_state: d
                .imports()
                .then(|| state_name(self.import_state.load(Ordering::Relaxed))),
            export_lag: m.lag_export.get(),
            import_lag: m.lag_import.get(),
            published: m.published.get(),
            acked: m.acked.get(),
            duplicates: m.dup_export.get() + m.dup_import.get(),
            imported: m.imported.get(),
            errors: m.errors_export.get() + m.errors_import.get(),
            last_error: self.last_error.lock().clone(),
        }
    }

    /// Connect to the servers of this bridge (no retry here: the caller backs off).
    async fn connect(&self) -> Result<jetstream::Context, BridgeError> {
        let cfg = &self.cfg;
        let timeout = Duration::from_millis(cfg.ack_timeout_ms);
        let mut o = async_nats::ConnectOptions::new()
            .name(format!("edgesync-bridge-{}", self.name))
            .connection_timeout(timeout)
            .request_timeout(Some(timeout));
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &cfg.token {
            o = o.token(t.clone());
        }
        if let Some(s) = &cfg.nkey_seed {
            o = o.nkey(s.clone());
        }
        if let Some(f) = &cfg.credentials_file {
            o = o.credentials_file(f).await.map_err(remote)?;
        }
        if let Some(ca) = &cfg.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(c), Some(k)) = (&cfg.tls_cert, &cfg.tls_key) {
            o = o.add_client_certificate(c.clone(), k.clone());
        }
        let urls: Vec<async_nats::ServerAddr> = cfg
            .url
            .list()
            .iter()
            .map(|u| u.parse().map_err(remote))
            .collect::<Result<_, _>>()?;
        let client = o.connect(urls).await.map_err(remote)?;
        Ok(jetstream::ContextBuilder::new()
            .timeout(timeout)
            .max_ack_inflight((export::INFLIGHT_WINDOWS + 1) * cfg.batch.max(1))
            .backpressure_on_inflight(true)
            .build(client))
    }

    /// The stream, created when missing and `create_stream` allows it.
    async fn stream(
        &self,
        js: &jetstream::Context,
    ) -> Result<jetstream::stream::Stream, BridgeError> {
        let cfg = &self.cfg;
        match js.get_stream(&cfg.stream).await {
            Ok(s) => return Ok(s),
            Err(e)
                if cfg.create_stream
                    && matches!(
                        e.kind(),
                        jetstream::context::GetStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                    ) => {}
            Err(e) => return Err(remote(format!("stream {:?}: {e}", cfg.stream))),
        }
        let config = jetstream::stream::Config {
            name: cfg.stream.clone(),
            subjects: cfg.topics.clone(),
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_millis(cfg.duplicate_window_ms),
            ..Default::default()
        };
        let s = js.get_or_create_stream(config).await.map_err(remote)?;
        tracing::info!(
            bridge = self.name,
            stream = cfg.stream,
            "created the JetStream stream"
        );
        Ok(s)
    }
}

/// A gauge on no registry, for a direction the bridge does not run.
fn detached_gauge() -> IntGauge {
    // A constant, valid name: `new` cannot fail on it.
    IntGauge::new("edgesync_bridge_unused", "not registered").unwrap_or_else(|_| unreachable!())
}

/// A counter on no registry, for a direction the bridge does not run.
fn detached_counter() -> IntCounter {
    // A constant, valid name: `new` cannot fail on it.
    IntCounter::new("edgesync_bridge_unused", "not registered").unwrap_or_else(|_| unreachable!())
}

/// Sleep `d` unless `stop` is cancelled first (then false).
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// The next retry delay: doubled, at most `max_ms`.
fn next_backoff(d: Duration, max_ms: u64) -> Duration {
    (d * 2).min(Duration::from_millis(max_ms))
}

/// The first retry delay.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
