//! Wires the gateway together: store → broker fan-out → listeners → sessions.
//!
//! [`start`] opens the store, binds every listener and returns a [`Running`]
//! gateway with the bound addresses (tests bind port 0). [`run`] is the
//! binary's entry point: start, wait for the shutdown token, stop.
//!
//! Shutdown order (each step waits for the previous): stop accepting →
//! every session sends `shutting_down`, finishes its in-flight publishes and
//! flushes its outbox → the store writer commits what it holds and syncs →
//! exit. Nothing acknowledged is lost; nothing unacknowledged is claimed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgesync_protocol::ErrorCode;
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::broker::Broker;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::session::driver::ConnInfo;
use crate::store::{AppendRequest, Store, StoreError};
use crate::transport::{quic, tls, ws};

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
}

/// What a publish should do after the message hooks ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    Store,
    /// A plugin dropped it: acknowledge, store nothing.
    Dropped,
}

/// A connection as listed by the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ConnSummary {
    pub id: u64,
    pub remote: String,
    pub transport: &'static str,
    pub client_id: Option<String>,
    pub connected_at_ms: u64,
}

#[derive(Default)]
struct Admission {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Shared state of a running gateway.
pub struct Gateway {
    pub settings: Settings,
    pub store: Store,
    pub broker: Arc<Broker>,
    pub metrics: Arc<Metrics>,
    /// Cancelled to start a graceful shutdown.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    next_conn: AtomicU64,
    admission: Mutex<Admission>,
    conns: Mutex<HashMap<u64, ConnSummary>>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("store", &self.store).finish_non_exhaustive()
    }
}

/// Releases an admission slot when the connection ends.
pub struct AdmitGuard {
    gw: Arc<Gateway>,
    ip: IpAddr,
}

impl Drop for AdmitGuard {
    fn drop(&mut self) {
        let mut a = self.gw.admission.lock();
        a.total = a.total.saturating_sub(1);
        if let Some(n) = a.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                a.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Removes a connection from the listing when it ends.
pub struct ConnGuard<'a> {
    gw: &'a Gateway,
    id: u64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.gw.conns.lock().remove(&self.id);
    }
}

impl Gateway {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Take a connection slot, enforcing `max_connections` and `max_connections_per_ip`.
    ///
    /// # Errors
    /// The message for the `too_many_connections` error.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<AdmitGuard, String> {
        let l = self.settings.limits();
        let mut a = self.admission.lock();
        if a.total >= l.max_connections {
            return Err(format!("the gateway holds its limit of {} connections", l.max_connections));
        }
        let n = a.per_ip.entry(ip).or_insert(0);
        if *n >= l.max_connections_per_ip {
            return Err(format!("limit of {} connections per IP reached", l.max_connections_per_ip));
        }
        *n += 1;
        a.total += 1;
        Ok(AdmitGuard { gw: self.clone(), ip })
    }

    pub fn register_conn(&self, id: u64, info: &ConnInfo) -> ConnGuard<'_> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.conns.lock().insert(
            id,
            ConnSummary { id, remote: info.remote.to_string(), transport: info.transport, client_id: None, connected_at_ms: now },
        );
        ConnGuard { gw: self, id }
    }

    pub fn set_conn_client(&self, id: u64, client: &str) {
        if let Some(c) = self.conns.lock().get_mut(&id) {
            c.client_id = Some(client.to_string());
        }
    }

    /// Current connections, by id.
    pub fn connections(&self) -> Vec<ConnSummary> {
        let mut v: Vec<_> = self.conns.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Plugin administration for the admin API (`/v1/plugins`); `None` while no
    /// plugin host is wired in. The plugin integration replaces this body.
    pub fn plugins(&self) -> Option<Arc<dyn crate::admin::PluginAdmin>> {
        None
    }

    /// True once every listener is bound and the store is open.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.shutdown.is_cancelled()
    }

    /// Auth at connect: the principal, or the error to refuse with.
    ///
    /// # Errors
    /// `(code, message)` for the client.
    pub async fn authorize(&self, _client_id: &str, _token: Option<&str>, _info: &ConnInfo) -> Result<Option<String>, (ErrorCode, String)> {
        Ok(None)
    }

    /// Auth at subscribe.
    ///
    /// # Errors
    /// `(code, message)` for the client.
    pub async fn authorize_subscribe(&self, _principal: Option<&str>, _pattern: &str) -> Result<(), (ErrorCode, String)> {
        Ok(())
    }

    /// Permissions and message hooks for a publish, before it is stored.
    ///
    /// # Errors
    /// `(code, message)` for the client.
    pub async fn ingest(&self, _principal: Option<&str>, _req: &mut AppendRequest) -> Result<Ingest, (ErrorCode, String)> {
        self.metrics.messages_in.inc();
        Ok(Ingest::Store)
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
    fanout: tokio::task::JoinHandle<()>,
    /// Stops the admin listener; cancelled last in [`Running::stop`], so `/readyz`
    /// answers 503 (not "connection refused") while sessions drain.
    admin_stop: CancellationToken,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("bound", &self.bound).finish_non_exhaustive()
    }
}

/// Open the store, bind every listener and start serving.
///
/// # Errors
/// [`ServerError`] naming what could not start.
pub async fn start(settings: Settings) -> Result<Running, ServerError> {
    let cfg = settings.config.clone();
    let metrics = Arc::new(Metrics::new());
    let mut opts = settings.store_options();
    opts.observer = metrics.clone();
    let (store, mut committed) = tokio::task::spawn_blocking(move || Store::open(opts))
        .await
        .map_err(|e| ServerError::Store(StoreError::Io(std::io::Error::other(e))))??;
    let broker = Arc::new(Broker::new(store.heads(), settings.slow_consumer_policy(), metrics.clone()));
    let gw = Arc::new(Gateway {
        settings: settings.clone(),
        store: store.clone(),
        broker: broker.clone(),
        metrics,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        next_conn: AtomicU64::new(1),
        admission: Mutex::new(Admission::default()),
        conns: Mutex::new(HashMap::new()),
        ready: AtomicBool::new(false),
    });
    let fanout = tokio::spawn(async move {
        while let Some(batch) = committed.recv().await {
            broker.fanout(&batch);
        }
    });
    let ticker_store = store.clone();
    let ticker_stop = gw.shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticker_stop.cancelled() => return,
                _ = every.tick() => ticker_store.tick(),
            }
        }
    });
    gw.metrics.watch_gateway(Arc::downgrade(&gw));
    let mut bound = Bound::default();
    // The admin listener comes first so `/readyz` answers 503 while the rest binds.
    let admin_stop = CancellationToken::new();
    let admin_guard = admin_stop.clone().drop_guard(); // stops it if startup fails below
    let mut admin_task = None;
    if let Some(addr) = cfg.listen.admin.0 {
        let l = admin::bind(addr).await.map_err(|source| ServerError::Bind { what: "admin", addr, source })?;
        bound.admin = l.local_addr().ok();
        tracing::info!(addr = ?bound.admin, "admin listening");
        admin_task = Some(tokio::spawn(admin::serve(l, gw.clone(), admin_stop.clone())));
    }
    if let Some(addr) = cfg.listen.ws.0 {
        let l = ws::bind(addr).await.map_err(|source| ServerError::Bind { what: "ws", addr, source })?;
        bound.ws = l.local_addr().ok();
        tokio::spawn(ws::serve(l, None, gw.clone()));
    }
    let needs_tls = cfg.listen.wss.0.is_some() || cfg.listen.quic.0.is_some();
    let identity = if needs_tls { Some(tls::load_or_create(&cfg.tls, &cfg.data_dir)?) } else { None };
    if let (Some(addr), Some(id)) = (cfg.listen.wss.0, &identity) {
        let server = tls::server_config(id, &[b"http/1.1"], None)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let l = ws::bind(addr).await.map_err(|source| ServerError::Bind { what: "wss", addr, source })?;
        bound.wss = l.local_addr().ok();
        bound.dev_ca = id.dev_ca.clone();
        tokio::spawn(ws::serve(l, Some(acceptor), gw.clone()));
    }
    if let (Some(addr), Some(id)) = (cfg.listen.quic.0, &identity) {
        let config = quic::server_config(id, cfg.tls.client_ca.as_deref(), gw.settings.limits())?;
        let endpoint = quic::bind(addr, config).map_err(|source| ServerError::Bind { what: "quic", addr, source })?;
        bound.quic = endpoint.local_addr().ok();
        bound.dev_ca = bound.dev_ca.take().or_else(|| id.dev_ca.clone());
        tokio::spawn(quic::serve(endpoint, gw.clone()));
    }
    gw.ready.store(true, Ordering::Relaxed);
    tracing::info!(node = gw.store.node(), epoch = gw.store.epoch(), ws = ?bound.ws, wss = ?bound.wss, quic = ?bound.quic, "edgesync ready");
    let _ = admin_guard.disarm();
    Ok(Running { gateway: gw, bound, fanout, admin_stop, admin_task })
}

impl Running {
    /// Graceful stop: drain sessions (bounded by `grace`), then flush and close the store.
    pub async fn stop(self, grace: Duration) {
        let gw = self.gateway;
        gw.shutdown.cancel();
        gw.tasks.close();
        let started = Instant::now();
        if tokio::time::timeout(grace, gw.tasks.wait()).await.is_err() {
            tracing::warn!(remaining = gw.tasks.len(), "sessions did not drain within the grace period");
        }
        gw.store.shutdown().await;
        self.fanout.abort();
        self.admin_stop.cancel();
        if let Some(t) = self.admin_task {
            // Graceful: in-flight admin requests finish; bounded so a stuck client cannot hold exit.
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        tracing::info!(ms = started.elapsed().as_millis() as u64, "edgesync stopped");
    }
}

/// Run until `shutdown` is cancelled, then stop gracefully.
///
/// # Errors
/// [`ServerError`] when startup fails.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), ServerError> {
    let running = start(settings).await?;
    shutdown.cancelled().await;
    running.stop(Duration::from_secs(10)).await;
    Ok(())
}
