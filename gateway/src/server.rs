//! Wires the gateway together and orders its shutdown; nothing else.
//!
//! [`start`] opens the store, builds the layers bottom-up (broker, pipeline, connection
//! registry, plugins, session context), starts the committed → broker fan-out task,
//! binds every listener and returns a [`Running`] gateway with the bound addresses
//! (tests bind port 0). [`run`] is the binary's entry point: start, wait for the
//! shutdown token, stop.
//!
//! Shutdown order (each step waits for the previous): stop accepting →
//! every session sends `shutting_down`, finishes its in-flight publishes and
//! flushes its outbox → the store writer commits what it holds and syncs →
//! the admin listener stops last (so `/readyz` says 503, not "connection
//! refused", while the gateway drains). Nothing acknowledged is lost; nothing
//! unacknowledged is claimed. A start that fails part-way releases what it had
//! started the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use edgesync_protocol::{ErrorCode, ServerFrame};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminCtx, Readiness};
use crate::bridge::{BridgeCtx, Bridges};
use crate::broker::Broker;
use crate::clock::{self, SharedClock};
use crate::config::Settings;
use crate::conns::ConnRegistry;
use crate::metrics::{Metrics, StateSample};
use crate::peers::{Acceptor, PeerTls, Peers};
use crate::pipeline::acks::ReplicaAcks;
use crate::pipeline::{Pipeline, Replicas};
use crate::plugin::services::GatewayServices;
use crate::plugin::{PluginAdmin, Plugins};
use crate::queues::Queues;
use crate::session::driver::SessionCtx;
use crate::session::{AllowAll, Authorizer};
use crate::store::{Store, StoreError};
use crate::transport::admission::Admission;
use crate::transport::origin::OriginPolicy;
use crate::transport::{quic, tls, ws};

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("plugins: {0}")]
    Plugins(#[from] crate::plugin::PluginSetupError),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("{0}")]
    FdLimit(#[from] crate::transport::admission::FdLimitError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The running gateway's parts, for embedders and tests (metrics, the store, plugin
/// administration). Behaviour lives in the parts, not here.
pub struct Gateway {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Pipeline>,
    pub broker: Arc<Broker>,
    /// Queue groups (fed by the fan-out task, joined by sessions).
    pub queues: Arc<Queues>,
    /// Who is present on which topic.
    pub presence: Arc<crate::presence::Presence>,
    pub conns: Arc<ConnRegistry>,
    pub readiness: Arc<Readiness>,
    /// The replication driver, set when the QUIC listener is bound with `[cluster]`.
    pub peers: Arc<OnceLock<Arc<Peers>>>,
    /// The `[[bridge]]`s to JetStream (none configured: an empty set).
    pub bridges: Arc<Bridges>,
    plugins: Option<Arc<Plugins>>,
    /// Bumped after every group commit; bridges wake on it.
    commits: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Plugin administration; `None` when no plugin is configured.
    pub fn plugins(&self) -> Option<Arc<dyn PluginAdmin>> {
        self.plugins.clone().map(|p| p as Arc<dyn PluginAdmin>)
    }
}

/// Addresses the gateway listens on.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The development CA, when a development certificate is in use.
    pub dev_ca: Option<PathBuf>,
}

/// A started gateway.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub bound: Bound,
    /// Cancelled to start a graceful shutdown.
    shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    tasks: TaskTracker,
    fanout: tokio::task::JoinHandle<()>,
    /// Stops the admin listener; cancelled last in [`Running::stop`], so `/readyz`
    /// answers 503 (not "connection refused") while sessions drain.
    admin_stop: CancellationToken,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

/// Open the store, bind every listener and start serving.
///
/// # Errors
/// [`ServerError`] naming what could not start; whatever had started is stopped.
pub async fn start(settings: Settings) -> Result<Running, ServerError> {
    crate::transport::admission::raise_fd_limit(settings.limits())?;
    private_files();
    let clock = clock::system();
    let metrics = Arc::new(Metrics::new());
    let mut opts = settings.store_options();
    if let Some(node) = cluster_node_id(&settings)? {
        opts.node_id = Some(node);
    }
    opts.observer = metrics.clone();
    opts.clock = clock.clone();
    let (store, mut committed) = tokio::task::spawn_blocking(move || Store::open(opts))
        .await
        .map_err(|e| ServerError::Store(StoreError::Io(std::io::Error::other(e))))??;
    let broker = Arc::new(Broker::new(
        store.heads(),
        settings.slow_consumer_policy(),
        metrics.clone(),
    ));
    let peers: Arc<OnceLock<Arc<Peers>>> = Arc::default();
    let (commits_tx, commits) = tokio::sync::watch::channel(0u64);
    let pipeline = Pipeline::new(
        store.clone(),
        broker.clone(),
        metrics.clone(),
        clock.clone(),
        settings.limits().clone(),
    );
    let queues = Queues::with_owners(
        pipeline.clone(),
        store.clone(),
        metrics.clone(),
        settings.limits().max_queue_groups,
        settings
            .config
            .queues
            .iter()
            .map(|q| (q.group.clone(), q.owner.clone()))
            .collect(),
    );
    let presence = crate::presence::Presence::new(
        store.local_origin().clone(),
        clock.clone(),
        settings.limits().max_presence_members,
    );
    let (fanout_broker, fanout_queues) = (broker.clone(), queues.clone());
    let fanout_peers = peers.clone();
    let fanout = tokio::spawn(async move {
        while let Some(batch) = committed.recv().await {
            fanout_broker.fanout(&batch);
            fanout_queues.on_commit(&batch);
            if let Some(p) = fanout_peers.get() {
                p.committed(&batch);
            }
            commits_tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    });
    let conns = ConnRegistry::new(clock.clone());
    let plugins = match load_plugins(&settings, &store, &pipeline, &conns, &metrics, clock).await {
        Ok(p) => p,
        Err(e) => {
            fanout.abort();
            store.shutdown().await;
            return Err(e);
        }
    };
    let shutdown = CancellationToken::new();
    let mut running = Running {
        gateway: Arc::new(Gateway {
            readiness: Readiness::new(shutdown.clone()),
            bridges: Arc::new(Bridges::new(&settings.config.bridges, &metrics)),
            commits,
            store,
            metrics,
            pipeline,
            broker,
            queues,
            presence,
            conns,
            peers,
            plugins,
        }),
        bound: Bound::default(),
        shutdown,
        tasks: TaskTracker::new(),
        fanout,
        admin_stop: CancellationToken::new(),
        admin_task: None,
    };
    match wire(&mut running, &settings).await {
        Ok(()) => Ok(running),
        Err(e) => {
            tracing::error!(error = %e, "gateway failed to start; stopping what had started");
            running.stop(Duration::from_secs(2)).await;
            Err(e)
        }
    }
}

/// New files and directories of this process are private to its user: the process
/// umask gains `077` (bits the operator set are kept). The store's files are created
/// 0600 and its directories 0700 from the start, not narrowed afterwards; so are the
/// plugin cache and generated certificates (security finding 22). Process-wide, as a
/// umask is: an embedding program's files are private too.
fn private_files() {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_bits_truncate(0o077));
    let merged = old | Mode::from_bits_truncate(0o077);
    if merged != Mode::from_bits_truncate(0o077) {
        rustix::process::umask(merged);
    }
}

/// Hooks, housekeeping, metrics, the session context, then the listeners (admin first,
/// so `/readyz` answers 503 while the rest binds).
async fn wire(running: &mut Running, settings: &Settings) -> Result<(), ServerError> {
    let gw = running.gateway.clone();
    gw.queues.spawn_timer(running.shutdown.clone());
    if let Some(p) = &gw.plugins {
        gw.pipeline.set_hooks(p.clone());
        let watch = settings.config.plugin_watch.interval_ms;
        if watch > 0 {
            p.spawn_watcher(Duration::from_millis(watch), running.shutdown.clone());
        }
    }
    spawn_housekeeping(&gw.store, &gw.conns, running.shutdown.clone());
    // After the hooks: imported messages run the route's plugins like any publish.
    gw.bridges.spawn(&BridgeCtx {
        store: gw.store.clone(),
        pipeline: gw.pipeline.clone(),
        metrics: gw.metrics.clone(),
        commits: gw.commits.clone(),
        limits: settings.limits().clone(),
    });
    watch_state(&gw);
    let authorizer: Arc<dyn Authorizer> = match &gw.plugins {
        Some(p) => p.clone(),
        None => Arc::new(AllowAll),
    };
    let limits = settings.limits().clone();
    let ctx = Arc::new(SessionCtx {
        limits: limits.clone(),
        pipeline: gw.pipeline.clone(),
        store: gw.store.clone(),
        broker: gw.broker.clone(),
        queues: gw.queues.clone(),
        presence: gw.presence.clone(),
        conns: gw.conns.clone(),
        authorizer,
        metrics: gw.metrics.clone(),
        tasks: running.tasks.clone(),
        shutdown: running.shutdown.clone(),
    });
    let admission = Admission::new(&limits);
    bind_admin(running, settings).await?;
    bind_clients(running, settings, &ctx, &admission).await?;
    gw.readiness.set_ready();
    tracing::info!(node = gw.store.node(), epoch = gw.store.epoch(), ws = ?running.bound.ws, wss = ?running.bound.wss, quic = ?running.bound.quic, "edgesync ready");
    Ok(())
}

/// Load every `[[plugin]]` (none configured: `None`).
async fn load_plugins(
    settings: &Settings,
    store: &Store,
    pipeline: &Arc<Pipeline>,
    conns: &Arc<ConnRegistry>,
    metrics: &Metrics,
    clock: SharedClock,
) -> Result<Option<Arc<Plugins>>, ServerError> {
    let cfg = &settings.config;
    if cfg.plugins.is_empty() {
        return Ok(None);
    }
    let services = GatewayServices::new(
        store.clone(),
        Arc::downgrade(pipeline),
        conns.clone(),
        clock,
        settings.limits().max_topic_bytes,
    );
    let mut host = cfg.plugin_host.clone();
    if host.cache_dir.is_none() {
        host.cache_dir = Some(cfg.data_dir.join("plugin-cache"));
    }
    let loaded = Plugins::load(
        host,
        &cfg.plugins,
        &cfg.routes,
        services,
        metrics.registry.clone(),
    )
    .await?;
    Ok(Some(Arc::new(loaded)))
}

/// Retention and dedupe expiry, every second; and, once, the news that the store
/// stopped accepting writes, to every open connection (PROTOCOL.md §6: an `error`
/// push without `id`, code `storage_unavailable`).
fn spawn_housekeeping(store: &Store, conns: &Arc<ConnRegistry>, stop: CancellationToken) {
    let store = store.clone();
    let conns = conns.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut told = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => store.tick(),
            }
            if let (false, Some(cause)) = (told, store.poison_cause()) {
                told = true;
                let n = conns.broadcast(&ServerFrame::Error {
                    id: None,
                    code: ErrorCode::StorageUnavailable,
                    msg: format!("the gateway stopped accepting publishes: {cause}"),
                    retry: true,
                });
                tracing::warn!(
                    connections = n,
                    "told every connection that publishes are refused"
                );
            }
        }
    });
}

/// The scrape-time state metrics. Weak: a stopped gateway is freed, and its state
/// metrics then disappear.
fn watch_state(gw: &Arc<Gateway>) {
    let weak = Arc::downgrade(gw);
    gw.metrics.watch(move || {
        let gw = weak.upgrade()?;
        let totals = gw.store.totals();
        let outboxes = gw.broker.outbox_depths();
        Some(StateSample {
            ready: gw.readiness.is_ready(),
            store_topics: totals.topics,
            store_records: totals.records,
            store_payload_bytes: totals.payload_bytes,
            store_disk_bytes: gw.store.disk_bytes(),
            store_poisoned: gw.store.is_poisoned(),
            outbox_queued_frames: outboxes.queued_frames,
            outbox_depth_max_frames: outboxes.max_frames,
        })
    });
}

async fn bind_admin(running: &mut Running, settings: &Settings) -> Result<(), ServerError> {
    let Some(addr) = settings.config.listen.admin.0 else {
        return Ok(());
    };
    let l = admin::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            what: "admin",
            addr,
            source,
        })?;
    running.bound.admin = l.local_addr().ok();
    warn_if_exposed("admin", addr);
    tracing::info!(addr = ?running.bound.admin, "admin listening");
    let gw = &running.gateway;
    let ctx = Arc::new(AdminCtx {
        admin: settings.config.admin.clone(),
        limits: settings.limits().clone(),
        config_toml: settings.redacted_toml(),
        slow_consumer: settings.slow_consumer_policy(),
        pipeline: gw.pipeline.clone(),
        store: gw.store.clone(),
        conns: gw.conns.clone(),
        queues: gw.queues.clone(),
        presence: gw.presence.clone(),
        plugins: gw.plugins(),
        metrics: gw.metrics.clone(),
        readiness: gw.readiness.clone(),
        peers: gw.peers.clone(),
        bridges: gw.bridges.clone(),
    });
    running.admin_task = Some(tokio::spawn(admin::serve(
        l,
        ctx,
        running.admin_stop.clone(),
    )));
    Ok(())
}

/// DESIGN §9 asks for TLS on every listener that is not loopback. A plain-text listener
/// (`ws`, admin) may still be exposed — TLS often ends at a proxy in front of it — but
/// never silently: startup logs a warning naming it (ARCHITECTURE.md, Decisions).
fn warn_if_exposed(what: &'static str, addr: SocketAddr) {
    if is_exposed(addr) {
        tracing::warn!(
            listener = what,
            %addr,
            "plain-text listener on a non-loopback address: traffic and tokens cross the network unencrypted unless a TLS proxy fronts it (use wss or QUIC otherwise)"
        );
    }
}

/// True for an address other hosts can reach (not loopback).
fn is_exposed(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

fn bind_error(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Bind { what, addr, source }
}

async fn bind_clients(
    running: &mut Running,
    settings: &Settings,
    ctx: &Arc<SessionCtx>,
    admission: &Arc<Admission>,
) -> Result<(), ServerError> {
    let cfg = &settings.config;
    if let Some(addr) = cfg.listen.ws.0 {
        let l = ws::bind(addr).await.map_err(bind_error("ws", addr))?;
        running.bound.ws = l.local_addr().ok();
        warn_if_exposed("ws", addr);
        let origins = Arc::new(OriginPolicy::new(
            &cfg.listen.allowed_origins,
            addr.ip().is_loopback(),
        ));
        // On the session tracker: `stop` waits for the accept loop to end, so the port
        // is free again when it returns (also after a failed start).
        running
            .tasks
            .spawn(ws::serve(l, None, ctx.clone(), admission.clone(), origins));
    }
    if cfg.listen.wss.0.is_none() && cfg.listen.quic.0.is_none() {
        return Ok(());
    }
    let id = tls::load_or_create(&cfg.tls, &cfg.data_dir)?;
    running.bound.dev_ca = id.dev_ca.clone();
    if let Some(addr) = cfg.listen.wss.0 {
        let server = tls::server_config(&id, &[b"http/1.1"], cfg.tls.client_ca.as_deref())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let l = ws::bind(addr).await.map_err(bind_error("wss", addr))?;
        running.bound.wss = l.local_addr().ok();
        let origins = Arc::new(OriginPolicy::new(
            &cfg.listen.allowed_origins,
            addr.ip().is_loopback(),
        ));
        running.tasks.spawn(ws::serve(
            l,
            Some(acceptor),
            ctx.clone(),
            admission.clone(),
            origins,
        ));
    }
    if let Some(addr) = cfg.listen.quic.0 {
        let peer_ca = cfg.cluster.as_ref().and_then(|c| c.ca.as_deref());
        let config = quic::server_config(
            &id,
            cfg.tls.client_ca.as_deref(),
            peer_ca,
            settings.limits(),
        )?;
        let endpoint = quic::bind(addr, config).map_err(bind_error("quic", addr))?;
        running.bound.quic = endpoint.local_addr().ok();
        let routing = start_peers(running, settings, &id, &endpoint)?;
        running.tasks.spawn(quic::serve(
            endpoint,
            ctx.clone(),
            admission.clone(),
            routing,
        ));
    }
    Ok(())
}

/// With `[cluster]`: the replication driver on the QUIC endpoint (dial loops started),
/// and what the listener needs to hand it peer connections.
fn start_peers(
    running: &Running,
    settings: &Settings,
    id: &tls::Identity,
    endpoint: &quinn::Endpoint,
) -> Result<Option<quic::PeerRouting>, ServerError> {
    let cfg = &settings.config;
    let Some(cluster) = &cfg.cluster else {
        return Ok(None);
    };
    let Some(ca) = &cluster.ca else {
        return Err(ServerError::Cluster("[cluster] ca is required".into()));
    };
    let gw = &running.gateway;
    let acks = Arc::new(ReplicaAcks::new());
    gw.pipeline.set_replicas(Replicas {
        acks: acks.clone(),
        k_of: settings.ack_peers(),
        timeout: Duration::from_millis(cluster.ack_timeout_ms),
    });
    if cluster.retention_hold_secs > 0 {
        let (hold_acks, local) = (acks.clone(), gw.store.local_origin().clone());
        let max_ms = cluster.retention_hold_secs.saturating_mul(1000);
        let clock = clock::system();
        gw.store
            .set_retention_hold(Arc::new(move |topic, origin, seq, hlc| {
                *origin == local
                    && clock.unix_ms().saturating_sub(hlc >> 16) < max_ms
                    && hold_acks.peer_lacks(topic, seq)
            }));
    }
    let peers = Peers::new(
        gw.store.clone(),
        gw.presence.clone(),
        acks,
        gw.metrics.clone(),
        cluster.clone(),
        cfg.peers.clone(),
        PeerTls::new(ca, id.clone())?,
        endpoint.clone(),
        running.shutdown.clone(),
        running.tasks.clone(),
    )?;
    let _ = gw.peers.set(peers.clone());
    peers.start();
    tracing::info!(cluster = %cluster.id, node = peers.node_id(), peers = cfg.peers.len(), "replication on");
    let client_verifier = match &cfg.tls.client_ca {
        Some(ca) => Some(tls::client_verifier(ca)?),
        None => None,
    };
    Ok(Some(quic::PeerRouting {
        links: Arc::new(Acceptor(peers)),
        client_verifier,
    }))
}

/// With `[cluster]`, the node id is the subject CN of `[tls] cert` (`edgesync cert node
/// NAME`); a configured `node_id` must equal it.
fn cluster_node_id(settings: &Settings) -> Result<Option<String>, ServerError> {
    let cfg = &settings.config;
    let (Some(_), Some(cert)) = (&cfg.cluster, &cfg.tls.cert) else {
        return Ok(None);
    };
    let certs = tls::read_certs(cert)?;
    let Some(name) = certs.first().and_then(|c| tls::certificate_identity(c)) else {
        return Err(ServerError::Cluster(format!(
            "{}: the certificate names no node id (subject CN)",
            cert.display()
        )));
    };
    if let Some(n) = &cfg.node_id
        && *n != name
    {
        return Err(ServerError::Cluster(format!(
            "node_id {n:?} differs from the node certificate's identity {name:?} ({})",
            cert.display()
        )));
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ServerError::Cluster(format!(
            "the node certificate's identity {name:?} is not a valid node id (1-64 letters, digits, '-', '_')"
        )));
    }
    Ok(Some(name))
}

impl Running {
    /// Start the graceful shutdown without waiting for it (see [`Running::stop`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Graceful stop: drain sessions (bounded by `grace`), then flush and close the store.
    pub async fn stop(self, grace: Duration) {
        let gw = self.gateway;
        self.shutdown.cancel();
        self.tasks.close();
        let started = Instant::now();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tasks.len(),
                "sessions did not drain within the grace period"
            );
        }
        // Bridges read and write the store: they stop before it closes.
        gw.bridges.stop().await;
        // Bounded: the store's close is itself bounded (see `store::writer`), this is
        // the backstop so a stuck writer cannot hold the process past its grace.
        if tokio::time::timeout(STORE_CLOSE_MAX, gw.store.shutdown())
            .await
            .is_err()
        {
            tracing::error!(
                secs = STORE_CLOSE_MAX.as_secs(),
                "store did not close in time; exiting anyway (acknowledged records are in the durable journal)"
            );
        }
        if let Some(cause) = gw.store.poison_cause() {
            tracing::error!(cause = %cause, "gateway stopped with its store poisoned: fix the cause, then restart");
        }
        self.fanout.abort();
        self.admin_stop.cancel();
        if let Some(t) = self.admin_task {
            // Graceful: in-flight admin requests finish; bounded so a stuck client cannot hold exit.
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "edgesync stopped"
        );
    }
}

/// Longest wait for the store to close at shutdown (its own memtable flush gives up
/// after 5 s).
const STORE_CLOSE_MAX: Duration = Duration::from_secs(10);

/// Run until `shutdown` is cancelled, then stop gracefully.
///
/// # Errors
/// [`ServerError`] when startup fails, or [`StoreError::Poisoned`] after the stop
/// when the store had stopped accepting writes (a full disk): the process then
/// exits non-zero.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), ServerError> {
    let running = start(settings).await?;
    let store = running.gateway.store.clone();
    shutdown.cancelled().await;
    running.stop(Duration::from_secs(10)).await;
    // The stop was orderly, but writes had been refused: say so in the exit status.
    match store.poison_cause() {
        Some(cause) => Err(ServerError::Store(StoreError::Poisoned(cause))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_counts_as_not_exposed() {
        for (addr, exposed) in [
            ("127.0.0.1:7400", false),
            ("[::1]:7400", false),
            ("0.0.0.0:7400", true),
            ("[::]:7400", true),
            ("192.168.1.5:7400", true),
        ] {
            let a: SocketAddr = addr.parse().expect("addr");
            assert_eq!(is_exposed(a), exposed, "{addr}");
        }
    }
}
