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
use crate::broker::{Broker, ConnOut};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::plugin::services::GatewayServices;
use crate::plugin::{Outcome, Plugins, Sender};
use crate::session::Auth;
use crate::session::driver::ConnInfo;
use crate::store::{AppendRequest, Store, StoreError};
use crate::transport::{quic, tls, ws};
use edgesync_plugin_host::Transport as PluginTransport;

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("plugins: {0}")]
    Plugins(#[from] crate::plugin::PluginSetupError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
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
    /// The connection's outbox, for plugin `send` / `close`.
    #[serde(skip)]
    pub out: std::sync::Weak<ConnOut>,
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
    /// Loaded plugins (`None` when no `[[plugin]]` is configured).
    plugins: Option<Arc<Plugins>>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("store", &self.store)
            .finish_non_exhaustive()
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
            return Err(format!(
                "the gateway holds its limit of {} connections",
                l.max_connections
            ));
        }
        let n = a.per_ip.entry(ip).or_insert(0);
        if *n >= l.max_connections_per_ip {
            return Err(format!(
                "limit of {} connections per IP reached",
                l.max_connections_per_ip
            ));
        }
        *n += 1;
        a.total += 1;
        Ok(AdmitGuard {
            gw: self.clone(),
            ip,
        })
    }

    pub fn register_conn(&self, id: u64, info: &ConnInfo, out: &Arc<ConnOut>) -> ConnGuard<'_> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.conns.lock().insert(
            id,
            ConnSummary {
                id,
                remote: info.remote.to_string(),
                transport: info.transport,
                client_id: None,
                connected_at_ms: now,
                out: Arc::downgrade(out),
            },
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
        self.plugins
            .clone()
            .map(|p| p as Arc<dyn crate::admin::PluginAdmin>)
    }

    /// True once every listener is bound and the store is open.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.shutdown.is_cancelled()
    }

    /// Auth at connect: `on-connect` of every auth plugin. `Ok(None)`: no auth plugins,
    /// everything is allowed.
    ///
    /// # Errors
    /// `(code, message)` for the client.
    pub async fn authorize(
        &self,
        conn_id: u64,
        client_id: &str,
        token: Option<&str>,
        info: &ConnInfo,
    ) -> Result<Option<Auth>, (ErrorCode, String)> {
        let Some(p) = &self.plugins else {
            return Ok(None);
        };
        let transport = if info.transport == "quic" {
            PluginTransport::Quic
        } else {
            PluginTransport::Websocket
        };
        let conn = edgesync_plugin_host::ConnInfo {
            conn_id,
            client_id: client_id.to_string(),
            token: token.map(str::to_string),
            remote_addr: info.remote.to_string(),
            transport,
            tls_identity: info.tls_identity.clone(),
        };
        p.connect(&conn).await
    }

    /// Auth at subscribe: `on-subscribe` of every auth plugin.
    ///
    /// # Errors
    /// `(code, message)` for the client.
    pub async fn authorize_subscribe(
        &self,
        sender: &Sender,
        pattern: &str,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(p) = &self.plugins else {
            return Ok(());
        };
        p.subscribe(&sender.conn_ref(), pattern).await
    }

    /// The session ended: `on-disconnect` of every auth plugin.
    pub async fn disconnected(&self, sender: &Sender) {
        if let Some(p) = &self.plugins {
            p.disconnect(&sender.conn_ref()).await;
        }
    }

    /// Message and storage hooks for a publish from outside a session (admin API).
    ///
    /// # Errors
    /// `(code, message)` for the client.
    pub async fn ingest(
        &self,
        principal: Option<&str>,
        req: &mut AppendRequest,
    ) -> Result<Ingest, (ErrorCode, String)> {
        let sender = Sender {
            conn_id: 0,
            client_id: req.client.clone(),
            principal: principal.map(str::to_string),
            plugin: None,
        };
        self.ingest_from(&sender, req).await
    }

    /// Message hooks then storage hooks for a publish, before it is stored. Messages a
    /// plugin failed on are stored in `$dlq.<plugin>`; `skip` delivers live only.
    ///
    /// # Errors
    /// `(code, message)` for the client.
    pub async fn ingest_from(
        &self,
        sender: &Sender,
        req: &mut AppendRequest,
    ) -> Result<Ingest, (ErrorCode, String)> {
        self.metrics.messages_in.inc();
        self.hooks(sender, req).await
    }

    /// As [`Gateway::ingest`] for an ephemeral publish (a QUIC datagram): the same hooks,
    /// counted in `edgesync_ephemeral_messages_in_total` instead of
    /// `edgesync_messages_in_total`, since it will never be stored.
    ///
    /// # Errors
    /// `(code, message)`, counted by the caller (a datagram is never answered).
    pub async fn ingest_ephemeral(
        &self,
        principal: Option<&str>,
        req: &mut AppendRequest,
    ) -> Result<Ingest, (ErrorCode, String)> {
        self.metrics.ephemeral_messages_in.inc();
        let sender = Sender {
            conn_id: 0,
            client_id: req.client.clone(),
            principal: principal.map(str::to_string),
            plugin: None,
        };
        self.hooks(&sender, req).await
    }

    /// [`Gateway::ingest_from`] for the publishes of one client frame, in order: the
    /// route's message plugins see them in one `on-batch` call each when they share a
    /// chain (see [`crate::plugin::Plugins::ingest_batch`]).
    pub async fn ingest_batch_from(
        &self,
        sender: &Sender,
        reqs: &mut [AppendRequest],
    ) -> Vec<Result<Ingest, (ErrorCode, String)>> {
        self.metrics.messages_in.inc_by(reqs.len() as u64);
        let Some(p) = &self.plugins else {
            return reqs.iter().map(|_| Ok(Ingest::Store)).collect();
        };
        let originals: Vec<_> = reqs
            .iter()
            .map(|r| (r.headers.clone(), r.payload.clone()))
            .collect();
        let done = p.ingest_batch(sender, reqs).await;
        let mut out = Vec::with_capacity(done.len());
        for ((d, req), original) in done.into_iter().zip(reqs.iter()).zip(originals) {
            let outcome = d.result.unwrap_or(Ok(crate::plugin::Outcome::Store));
            out.push(
                self.settle(sender, req, original, outcome, d.dead, d.hint)
                    .await,
            );
        }
        out
    }

    /// Message then storage hooks of the topic's route, with dead-lettering.
    async fn hooks(
        &self,
        sender: &Sender,
        req: &mut AppendRequest,
    ) -> Result<Ingest, (ErrorCode, String)> {
        let Some(p) = &self.plugins else {
            return Ok(Ingest::Store);
        };
        let original = (req.headers.clone(), req.payload.clone());
        let mut dead = Vec::new();
        let mut hint = None;
        let outcome = p.ingest(sender, req, &mut dead, &mut hint).await;
        self.settle(sender, req, original, outcome, dead, hint)
            .await
    }

    /// After the hooks: dead letters, the retention hint of a stored record, the
    /// live-only delivery of a skipped one.
    async fn settle(
        &self,
        sender: &Sender,
        req: &AppendRequest,
        original: (edgesync_protocol::Headers, bytes::Bytes),
        outcome: Result<crate::plugin::Outcome, (ErrorCode, String)>,
        dead: Vec<(String, String)>,
        hint: Option<crate::store::Retention>,
    ) -> Result<Ingest, (ErrorCode, String)> {
        for (plugin, error) in dead {
            self.dead_letter(
                &plugin,
                &error,
                sender,
                &req.topic,
                &original.0,
                &original.1,
            )
            .await;
        }
        match outcome? {
            Outcome::Store => {
                // Only a record that is written carries its hint: a later plugin's
                // reject, drop or skip leaves the topic's retention as it was.
                if let Some(r) = hint {
                    self.store.set_retention_override(&req.topic, r);
                }
                Ok(Ingest::Store)
            }
            Outcome::Dropped => Ok(Ingest::Dropped),
            Outcome::Ephemeral => {
                let msg = self.ephemeral_msg(
                    &req.topic,
                    req.client.clone(),
                    req.mid.clone(),
                    req.headers.clone(),
                    req.payload.clone(),
                );
                self.broker.fanout_ephemeral(&msg);
                Ok(Ingest::Dropped)
            }
        }
    }

    /// Store a message a plugin failed on in `$dlq.<plugin>`, with the original topic and
    /// the error in headers. Never retried; if even this fails, the loss is logged as an error.
    async fn dead_letter(
        &self,
        plugin: &str,
        error: &str,
        sender: &Sender,
        topic: &str,
        headers: &edgesync_protocol::Headers,
        payload: &bytes::Bytes,
    ) {
        let mut h = headers.clone();
        h.0.push(("edgesync-dlq-topic".into(), topic.to_string()));
        h.0.push((
            "edgesync-dlq-error".into(),
            error.chars().take(512).collect(),
        ));
        let req = AppendRequest {
            topic: format!("$dlq.{plugin}"),
            client: sender.client_id.clone(),
            mid: None,
            headers: h,
            payload: payload.clone(),
        };
        match self.store.append(req).await {
            Ok(ack) => tracing::warn!(
                plugin,
                topic,
                dlq_seq = ack.seq,
                error,
                "plugin failed on a message; dead-lettered"
            ),
            Err(e) => {
                tracing::error!(plugin, topic, error = %e, "dead-lettering failed; the message is lost")
            }
        }
    }

    /// A publish made by a plugin: hooks (skipping the publisher), store, fan-out.
    ///
    /// # Errors
    /// `(code, message)` why it was refused.
    pub async fn publish_internal(
        &self,
        sender: &Sender,
        topic: &str,
        headers: edgesync_protocol::Headers,
        payload: bytes::Bytes,
    ) -> Result<(), (ErrorCode, String)> {
        let mut req = AppendRequest {
            topic: topic.to_string(),
            client: sender.client_id.clone(),
            mid: None,
            headers,
            payload,
        };
        if self.ingest_from(sender, &mut req).await? == Ingest::Store {
            self.store
                .append(req)
                .await
                .map_err(|e| (ErrorCode::StorageUnavailable, e.to_string()))?;
        }
        Ok(())
    }

    /// Deliver a message straight to one connection (plugin `send`): not stored, `seq` 0,
    /// dropped when the outbox is full. False when the connection does not exist.
    pub fn send_direct(&self, conn_id: u64, topic: &str, payload: &[u8]) -> bool {
        let Some(out) = self.conn_out(conn_id) else {
            return false;
        };
        let msg = self.ephemeral_msg(
            topic,
            String::new(),
            None,
            Default::default(),
            bytes::Bytes::copy_from_slice(payload),
        );
        let frame = bytes::Bytes::from(
            out.outbox
                .encoding()
                .encode(&edgesync_protocol::ServerFrame::Msg(msg)),
        );
        out.outbox.try_push_ephemeral(&frame);
        true
    }

    /// Close one connection with a reason (plugin `close`). False when it does not exist.
    pub fn close_conn(&self, conn_id: u64, reason: &str) -> bool {
        let Some(out) = self.conn_out(conn_id) else {
            return false;
        };
        out.outbox.close(ErrorCode::Forbidden, reason);
        true
    }

    fn conn_out(&self, conn_id: u64) -> Option<Arc<ConnOut>> {
        self.conns
            .lock()
            .get(&conn_id)
            .and_then(|c| c.out.upgrade())
    }

    /// A message that is delivered but never stored: `seq` 0, no HLC, not in cursors.
    fn ephemeral_msg(
        &self,
        topic: &str,
        client: String,
        mid: Option<String>,
        headers: edgesync_protocol::Headers,
        payload: bytes::Bytes,
    ) -> edgesync_protocol::Msg {
        edgesync_protocol::Msg {
            topic: topic.to_string(),
            origin: self.store.node().to_string(),
            epoch: self.store.epoch(),
            seq: 0,
            hlc: 0,
            client,
            mid,
            headers,
            data: edgesync_protocol::Payload(payload),
        }
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
        f.debug_struct("Running")
            .field("bound", &self.bound)
            .finish_non_exhaustive()
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
    let broker = Arc::new(Broker::new(
        store.heads(),
        settings.slow_consumer_policy(),
        metrics.clone(),
    ));
    let services = Arc::new(GatewayServices::default());
    let plugins = if cfg.plugins.is_empty() {
        None
    } else {
        let mut host = cfg.plugin_host.clone();
        if host.cache_dir.is_none() {
            host.cache_dir = Some(cfg.data_dir.join("plugin-cache"));
        }
        let loaded = Plugins::load(
            host,
            &cfg.plugins,
            &cfg.routes,
            services.clone(),
            metrics.registry.clone(),
        )
        .await?;
        Some(Arc::new(loaded))
    };
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
        plugins,
        ready: AtomicBool::new(false),
    });
    if let Some(p) = gw
        .plugins
        .as_ref()
        .filter(|_| cfg.plugin_watch.interval_ms > 0)
    {
        p.spawn_watcher(
            Duration::from_millis(cfg.plugin_watch.interval_ms),
            gw.shutdown.clone(),
        );
    }
    services.attach(&gw);
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
        let l = admin::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                what: "admin",
                addr,
                source,
            })?;
        bound.admin = l.local_addr().ok();
        tracing::info!(addr = ?bound.admin, "admin listening");
        admin_task = Some(tokio::spawn(admin::serve(
            l,
            gw.clone(),
            admin_stop.clone(),
        )));
    }
    if let Some(addr) = cfg.listen.ws.0 {
        let l = ws::bind(addr).await.map_err(|source| ServerError::Bind {
            what: "ws",
            addr,
            source,
        })?;
        bound.ws = l.local_addr().ok();
        tokio::spawn(ws::serve(l, None, gw.clone()));
    }
    let needs_tls = cfg.listen.wss.0.is_some() || cfg.listen.quic.0.is_some();
    let identity = if needs_tls {
        Some(tls::load_or_create(&cfg.tls, &cfg.data_dir)?)
    } else {
        None
    };
    if let (Some(addr), Some(id)) = (cfg.listen.wss.0, &identity) {
        let server = tls::server_config(id, &[b"http/1.1"], cfg.tls.client_ca.as_deref())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let l = ws::bind(addr).await.map_err(|source| ServerError::Bind {
            what: "wss",
            addr,
            source,
        })?;
        bound.wss = l.local_addr().ok();
        bound.dev_ca = id.dev_ca.clone();
        tokio::spawn(ws::serve(l, Some(acceptor), gw.clone()));
    }
    if let (Some(addr), Some(id)) = (cfg.listen.quic.0, &identity) {
        let config = quic::server_config(id, cfg.tls.client_ca.as_deref(), gw.settings.limits())?;
        let endpoint = quic::bind(addr, config).map_err(|source| ServerError::Bind {
            what: "quic",
            addr,
            source,
        })?;
        bound.quic = endpoint.local_addr().ok();
        bound.dev_ca = bound.dev_ca.take().or_else(|| id.dev_ca.clone());
        tokio::spawn(quic::serve(endpoint, gw.clone()));
    }
    gw.ready.store(true, Ordering::Relaxed);
    tracing::info!(node = gw.store.node(), epoch = gw.store.epoch(), ws = ?bound.ws, wss = ?bound.wss, quic = ?bound.quic, "edgesync ready");
    let _ = admin_guard.disarm();
    Ok(Running {
        gateway: gw,
        bound,
        fanout,
        admin_stop,
        admin_task,
    })
}

impl Running {
    /// Graceful stop: drain sessions (bounded by `grace`), then flush and close the store.
    pub async fn stop(self, grace: Duration) {
        let gw = self.gateway;
        gw.shutdown.cancel();
        gw.tasks.close();
        let started = Instant::now();
        if tokio::time::timeout(grace, gw.tasks.wait()).await.is_err() {
            tracing::warn!(
                remaining = gw.tasks.len(),
                "sessions did not drain within the grace period"
            );
        }
        gw.store.shutdown().await;
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
