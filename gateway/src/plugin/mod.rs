//! The gateway side of WebAssembly plugins: which plugins run where, and the
//! services they call back into.
//!
//! The runtime (wasmtime, sandbox, pools, breaker, reload) is the
//! `edgesync-plugin-host` crate. This module:
//!
//! - loads every `[[plugin]]` at startup (compilation happens here, never on
//!   the message path) and keeps them by name;
//! - resolves `[[route]]`s (first matching topic pattern wins) to an ordered
//!   chain of plugins for message and storage hooks;
//! - runs the phases: `on-connect` / `on-subscribe` / `on-disconnect` on every
//!   plugin exporting auth hooks, in config order; `on-message` then `on-write`
//!   along the topic's chain, where a message enters (replicas never re-run
//!   them);
//! - applies the failure policy per hook (fail-closed: refuse; fail-open:
//!   continue) and dead-letters every message a plugin failed on to
//!   `$dlq.<plugin>` (stored, never retried);
//! - implements [`HostServices`] ([`services::GatewayServices`]): durable kv in
//!   the store, publish through the normal pipeline with loop protection,
//!   direct send and close.

pub mod admin;
pub mod services;

pub use admin::{PluginAdmin, PluginAdminError, PluginInfo};

use std::collections::BTreeMap;
use std::sync::Arc;

use edgesync_plugin_host as ph;
use edgesync_protocol::ErrorCode;
use edgesync_protocol::topic::matches;
use ph::{
    ConnectVerdict, FailurePolicy, Family, Hook, MessageVerdict, SubscribeVerdict, WriteVerdict,
};

pub use crate::model::Sender;
use crate::model::{Auth, ConnId, ConnInfo, HookOutcome, Publish, Refusal, Transport};
use crate::pipeline::{BoxFuture, DeadLetter, HookResult, MessageHooks};
use crate::session::Authorizer;
use crate::store::Retention;

pub use crate::config::RouteConfig;
pub use ph::{HostConfig, PluginConfig};

/// The principal of a session whose auth plugins all failed with `on_connect = "open"`:
/// connected, with no publish or subscribe permission.
pub const ANONYMOUS: &str = "anonymous";

/// Most plugin publishes in one causal chain before a publish is refused (loop protection).
pub const MAX_HOPS: u32 = 4;

/// The plugin host's view of a sender.
pub(crate) fn conn_ref(s: &Sender) -> ph::ConnRef {
    ph::ConnRef {
        conn_id: s.conn_id,
        client_id: s.client_id.clone(),
        principal: s.principal.clone().unwrap_or_default(),
    }
}

/// The same, borrowed (no copies on the per-publish path).
pub(crate) fn sender_ref(s: &Sender) -> ph::SenderRef<'_> {
    ph::SenderRef {
        conn_id: s.conn_id,
        client_id: &s.client_id,
        principal: s.principal.as_deref().unwrap_or_default(),
    }
}

/// Setup failures (startup stops with the plugin named).
#[derive(Debug, thiserror::Error)]
pub enum PluginSetupError {
    #[error("plugin runtime: {0}")]
    Host(#[from] ph::HostError),
    #[error("plugin {name}: {source}")]
    Load {
        name: String,
        source: ph::PluginError,
    },
    #[error("route {index}: unknown plugin {name:?}")]
    UnknownPlugin { index: usize, name: String },
}

/// Loaded plugins and routes.
pub struct Plugins {
    /// The runtime (engine, epoch ticker, caches): held so it lives as long as the plugins.
    _host: ph::PluginHost,
    /// Name → plugin, plus config order.
    loaded: BTreeMap<String, ph::Plugin>,
    order: Vec<String>,
    /// Each route with its plugins resolved at load, so a publish finds its
    /// chain without a lookup or an allocation.
    routes: Vec<(RouteConfig, Vec<ph::Plugin>)>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

fn refuse(code: ErrorCode, msg: impl Into<String>) -> Refusal {
    Refusal::new(code, msg)
}

impl Plugins {
    /// Start the runtime and load (compile, instantiate, `init`) every plugin.
    ///
    /// # Errors
    /// [`PluginSetupError`] naming the plugin or route.
    pub async fn load(
        host_config: HostConfig,
        configs: &[PluginConfig],
        routes: &[RouteConfig],
        services: Arc<dyn ph::HostServices>,
        registry: prometheus::Registry,
    ) -> Result<Plugins, PluginSetupError> {
        let host = ph::PluginHost::new(host_config, services, registry)?;
        let mut loaded = BTreeMap::new();
        let mut order = Vec::new();
        for c in configs {
            let p = host
                .load(c.clone())
                .await
                .map_err(|source| PluginSetupError::Load {
                    name: c.name.clone(),
                    source,
                })?;
            tracing::info!(plugin = %c.name, exports = ?p.exports().iter().map(Family::interface).collect::<Vec<_>>(), "plugin loaded");
            order.push(c.name.clone());
            loaded.insert(c.name.clone(), p);
        }
        let mut resolved = Vec::with_capacity(routes.len());
        for (index, r) in routes.iter().enumerate() {
            let chain = r
                .plugins
                .iter()
                .map(|n| {
                    loaded
                        .get(n)
                        .cloned()
                        .ok_or_else(|| PluginSetupError::UnknownPlugin {
                            index,
                            name: n.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            resolved.push((r.clone(), chain));
        }
        Ok(Plugins {
            _host: host,
            loaded,
            order,
            routes: resolved,
        })
    }

    /// Plugins exporting auth hooks, in config order.
    fn auth_chain(&self) -> impl Iterator<Item = &ph::Plugin> {
        self.order
            .iter()
            .filter_map(|n| self.loaded.get(n))
            .filter(|p| p.exports().contains(Family::Auth))
    }

    /// The plugin chain of the first route matching `topic`.
    fn chain(&self, topic: &str) -> &[ph::Plugin] {
        self.routes
            .iter()
            .find(|(r, _)| matches(&r.topics, topic))
            .map_or(&[], |(_, chain)| chain.as_slice())
    }

    /// `on-connect` on every auth plugin. No auth plugin: everyone may do anything.
    ///
    /// # Errors
    /// `unauthorized` with the plugin's reason.
    async fn on_connect(&self, info: &ph::ConnInfo) -> Result<Option<Auth>, Refusal> {
        let mut auth: Option<Auth> = None;
        for p in self.auth_chain() {
            match p.on_connect(info).await {
                Ok(ConnectVerdict::Allow(principal)) => {
                    check_principal(p.name(), &principal)?;
                    if auth.is_none() {
                        auth = Some(Auth {
                            principal: principal.id,
                            publish: principal.permissions.publish,
                            subscribe: principal.permissions.subscribe,
                        });
                    }
                }
                Ok(ConnectVerdict::Deny(reason)) => {
                    return Err(refuse(ErrorCode::Unauthorized, reason));
                }
                Err(e) => {
                    if refuses(p, Hook::OnConnect, &e) {
                        tracing::warn!(plugin = p.name(), error = %e, "auth plugin failed; connection refused (fail-closed)");
                        return Err(refuse(
                            ErrorCode::Unauthorized,
                            format!("auth plugin {} failed", p.name()),
                        ));
                    }
                }
            }
        }
        if auth.is_none() && self.auth_chain().next().is_some() {
            // Every auth plugin failed open. "Open" lets the client in with the default
            // permissions — none — never as a session without auth plugins, which may do
            // anything.
            auth = Some(Auth {
                principal: ANONYMOUS.to_string(),
                publish: Vec::new(),
                subscribe: Vec::new(),
            });
        }
        Ok(auth)
    }

    /// `on-subscribe` on every auth plugin.
    ///
    /// # Errors
    /// `forbidden` with the plugin's reason.
    async fn on_subscribe(&self, conn: &ph::ConnRef, pattern: &str) -> Result<(), Refusal> {
        for p in self.auth_chain().filter(|p| p.has(Hook::OnSubscribe)) {
            match p.on_subscribe(conn, pattern).await {
                Ok(SubscribeVerdict::Allow) => {}
                Ok(SubscribeVerdict::Deny(reason)) => {
                    return Err(refuse(ErrorCode::Forbidden, reason));
                }
                Err(e) => {
                    if refuses(p, Hook::OnSubscribe, &e) {
                        tracing::warn!(plugin = p.name(), error = %e, "auth plugin failed; subscribe refused (fail-closed)");
                        return Err(refuse(
                            ErrorCode::Forbidden,
                            format!("auth plugin {} failed", p.name()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `on-disconnect` on every auth plugin (errors are logged only).
    async fn on_disconnect(&self, conn: &ph::ConnRef) {
        for p in self.auth_chain().filter(|p| p.has(Hook::OnDisconnect)) {
            if let Err(e) = p.on_disconnect(conn).await {
                tracing::debug!(plugin = p.name(), error = %e, "on-disconnect failed");
            }
        }
    }

    /// Message hooks then storage hooks along the topic's chain. `req` is changed in
    /// place by `replace` / `accept-with`. The result lists the plugins that failed on
    /// the message (the pipeline dead-letters it for each) and a retention hint from
    /// `accept-with`; its outcome is `rejected` with the plugin's reason, or when a
    /// fail-closed hook failed.
    pub async fn ingest(&self, sender: &Sender, req: &mut Publish) -> HookResult {
        let mut r = HookResult::store();
        r.outcome = self.chain_of(sender, req, &mut r.dead, &mut r.hint).await;
        r
    }

    async fn chain_of(
        &self,
        sender: &Sender,
        req: &mut Publish,
        dead: &mut Vec<DeadLetter>,
        hint: &mut Option<Retention>,
    ) -> Result<HookOutcome, Refusal> {
        let chain = self.chain(&req.topic);
        if chain.is_empty() {
            return Ok(HookOutcome::Store);
        }
        for p in message_plugins(chain, sender) {
            if let Some(end) = on_message(p, sender, req, dead).await {
                return end;
            }
        }
        storage_stage(chain, sender, req, dead, hint).await
    }

    /// [`Plugins::ingest`] for several publishes of one sender (the publishes of one
    /// client frame), in order: one result, dead-letter list and retention hint per
    /// request. When every request has the same chain, each message plugin sees them
    /// in **one `on-batch` call** (the plugin's fast path) instead of one `on-message`
    /// call each; a message that plugin dropped or rejected leaves the batch for the
    /// plugins after it. If the `on-batch` call faults (a trap, a deadline, memory),
    /// that plugin's messages are run one by one through `on-message`, so a poison
    /// message fails alone and the failure policy applies per message; the price is
    /// that side effects of the failed batch call (kv writes, publishes) may repeat. If
    /// it fails for a reason no retry changes (the breaker is open, no instance was
    /// free), the failure policy applies to every message of the batch at once.
    /// Storage hooks run per message.
    pub async fn ingest_batch(&self, sender: &Sender, reqs: &mut [Publish]) -> Vec<HookResult> {
        let mut out: Vec<Ingested> = reqs.iter().map(|_| Ingested::default()).collect();
        let Some(first) = reqs.first() else {
            return Vec::new();
        };
        let chain = self.chain(&first.topic);
        let same = reqs
            .iter()
            .all(|r| std::ptr::eq(self.chain(&r.topic), chain));
        if chain.is_empty() || reqs.len() < 2 || !same {
            for (req, o) in reqs.iter_mut().zip(out.iter_mut()) {
                o.result = Some(self.chain_of(sender, req, &mut o.dead, &mut o.hint).await);
            }
            return finish(out);
        }
        for p in message_plugins(chain, sender) {
            let alive: Vec<usize> = (0..reqs.len())
                .filter(|&i| out[i].result.is_none())
                .collect();
            if alive.is_empty() {
                break;
            }
            let verdicts = match (alive.len() > 1).then(|| batch_of(reqs, &alive)).flatten() {
                Some(batch) => match p.on_batch(&conn_ref(sender), &batch).await {
                    Ok(v) => Some(v),
                    // A guest fault may be one poison message: retry one by one.
                    Err(e) if e.is_guest_fault() => None,
                    // The breaker is open or no instance was free: retrying per message
                    // would only repeat (or multiply) the wait; the policy applies to all.
                    Err(e) => {
                        for &i in &alive {
                            let o = &mut out[i];
                            o.result = failed(p, &e, &mut o.dead);
                        }
                        continue;
                    }
                },
                None => None,
            };
            match verdicts {
                Some(v) => {
                    for e in v.into_exceptions() {
                        let i = alive[e.index as usize];
                        if let Some(end) = apply(e.verdict, &mut reqs[i]) {
                            out[i].result = Some(end);
                        }
                    }
                }
                // One message left, a batch past 4 GiB, or the batch call failed:
                // one `on-message` per message (each failure handled on its own).
                None => {
                    for &i in &alive {
                        let o = &mut out[i];
                        if let Some(end) = on_message(p, sender, &mut reqs[i], &mut o.dead).await {
                            o.result = Some(end);
                        }
                    }
                }
            }
        }
        for (req, o) in reqs.iter_mut().zip(out.iter_mut()) {
            if o.result.is_none() {
                o.result = Some(storage_stage(chain, sender, req, &mut o.dead, &mut o.hint).await);
            }
        }
        finish(out)
    }

    /// Poll every plugin's component file every `every`; when its size or modification
    /// time changes, hot-reload it (a failed reload keeps the old version and is logged).
    pub fn spawn_watcher(
        self: &Arc<Self>,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let plugins = Arc::downgrade(self);
        let stamp = |p: &ph::Plugin| {
            std::fs::metadata(&p.config().path)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        // The files as loaded: a change made before the first poll is still a change.
        let mut seen: BTreeMap<String, Option<(u64, Option<std::time::SystemTime>)>> = self
            .loaded
            .iter()
            .map(|(n, p)| (n.clone(), stamp(p)))
            .collect();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let Some(this) = plugins.upgrade() else {
                    return;
                };
                for (name, p) in &this.loaded {
                    let now = stamp(p);
                    let before = seen.insert(name.clone(), now);
                    if before.is_some_and(|b| b != now) && now.is_some() {
                        match p.reload(p.config()).await {
                            Ok(_) => {
                                tracing::info!(plugin = %name, version = p.version(), "plugin file changed; reloaded")
                            }
                            Err(e) => {
                                tracing::warn!(plugin = %name, error = %e, "plugin file changed but reload failed; previous version keeps running")
                            }
                        }
                    }
                }
            }
        });
    }

    fn info(p: &ph::Plugin) -> PluginInfo {
        let mut detail = serde_json::Map::new();
        detail.insert("version".into(), p.version().into());
        detail.insert("path".into(), p.config().path.display().to_string().into());
        detail.insert("timers".into(), p.timers().into());
        detail.insert("idle_instances".into(), p.idle_instances().into());
        let state = match p.breaker() {
            ph::BreakerState::Closed => "running".to_string(),
            other => format!("breaker_{other:?}").to_lowercase(),
        };
        PluginInfo {
            name: p.name().to_string(),
            hooks: p
                .exports()
                .iter()
                .map(|f| f.interface().to_string())
                .collect(),
            state,
            detail,
        }
    }
}

/// What [`Plugins::ingest_batch`] has decided so far for one request.
#[derive(Debug, Default)]
struct Ingested {
    /// `None` while the request is still on its way along the chain.
    result: Option<Result<HookOutcome, Refusal>>,
    dead: Vec<DeadLetter>,
    hint: Option<Retention>,
}

fn finish(out: Vec<Ingested>) -> Vec<HookResult> {
    out.into_iter()
        .map(|o| HookResult {
            outcome: o.result.unwrap_or(Ok(HookOutcome::Store)),
            dead: o.dead,
            hint: o.hint,
        })
        .collect()
}

impl MessageHooks for Plugins {
    fn ingest<'a>(&'a self, sender: &'a Sender, req: &'a mut Publish) -> BoxFuture<'a, HookResult> {
        Box::pin(Plugins::ingest(self, sender, req))
    }

    fn ingest_batch<'a>(
        &'a self,
        sender: &'a Sender,
        reqs: &'a mut [Publish],
    ) -> BoxFuture<'a, Vec<HookResult>> {
        Box::pin(Plugins::ingest_batch(self, sender, reqs))
    }
}

/// The chain's plugins with message hooks, minus the sender itself (loop protection).
fn message_plugins<'a>(
    chain: &'a [ph::Plugin],
    sender: &'a Sender,
) -> impl Iterator<Item = &'a ph::Plugin> + 'a {
    chain
        .iter()
        .filter(move |p| Some(p.name()) != sender.plugin.as_deref() && p.has(Hook::OnMessage))
}

/// `on-message` of one plugin on one request: `None` to go on along the chain,
/// `Some` with the request's final result (dropped, or refused).
async fn on_message(
    p: &ph::Plugin,
    sender: &Sender,
    req: &mut Publish,
    dead: &mut Vec<DeadLetter>,
) -> Option<Result<HookOutcome, Refusal>> {
    // Borrowed views: the host copies the message once, into the guest, instead of
    // the gateway building an owned copy first.
    let msg = ph::MessageRef {
        topic: &req.topic,
        headers: ph::HeadersRef::Pairs(&req.headers.0),
        payload: &req.payload,
    };
    match p.on_message_ref(sender_ref(sender), msg).await {
        Ok(verdict) => apply(verdict, req),
        Err(e) => failed(p, &e, dead),
    }
}

/// A message hook failed on a request: it is dead-lettered, and refused when the hook
/// fails closed (`Some`), else it goes on along the chain (`None`).
fn failed(
    p: &ph::Plugin,
    e: &ph::PluginError,
    dead: &mut Vec<DeadLetter>,
) -> Option<Result<HookOutcome, Refusal>> {
    dead.push(DeadLetter {
        plugin: p.name().to_string(),
        error: e.summary(),
        detail: e.to_string(),
    });
    refuses(p, Hook::OnMessage, e).then(|| {
        Err(refuse(
            ErrorCode::Rejected,
            format!("plugin {} failed; message dead-lettered", p.name()),
        ))
    })
}

/// Whether a failed hook call refuses (the connection, the subscription, the message):
/// the hook's failure policy — except that a plugin switched off by its crash-loop
/// breaker always refuses. `open` forgives one call's fault; it never means that a
/// client who trips the breaker with a few poison messages switches the plugin off for
/// everyone else's messages.
fn refuses(p: &ph::Plugin, hook: Hook, e: &ph::PluginError) -> bool {
    p.policy(hook) == FailurePolicy::Closed || e.kind() == ph::ErrorKind::Disabled
}

/// Applies a message verdict to `req`: `None` to go on along the chain, `Some` with
/// the request's final result (dropped, or refused).
fn apply(verdict: MessageVerdict, req: &mut Publish) -> Option<Result<HookOutcome, Refusal>> {
    match verdict {
        MessageVerdict::Pass => None,
        MessageVerdict::Replace(m) => {
            from_message(req, m);
            None
        }
        MessageVerdict::Drop => Some(Ok(HookOutcome::Dropped)),
        MessageVerdict::Reject(reason) => Some(Err(refuse(ErrorCode::Rejected, reason))),
    }
}

/// The `alive` requests as one `on-batch` argument (`None` past 4 GiB).
fn batch_of(reqs: &[Publish], alive: &[usize]) -> Option<ph::types::Batch> {
    let bytes = alive
        .iter()
        .map(|&i| reqs[i].topic.len() + reqs[i].payload.len())
        .sum();
    let mut b = ph::BatchBuilder::with_capacity(alive.len(), bytes);
    let mut headers = Vec::new();
    for &i in alive {
        let r = &reqs[i];
        headers.clear();
        headers.extend(r.headers.0.iter().map(|(k, v)| ph::Header {
            name: k.clone(),
            value: v.clone(),
        }));
        b.push(&r.topic, &headers, &r.payload).ok()?;
    }
    Some(b.finish())
}

/// Storage hooks along the chain (after the message hooks).
async fn storage_stage(
    chain: &[ph::Plugin],
    sender: &Sender,
    req: &mut Publish,
    dead: &mut Vec<DeadLetter>,
    hint: &mut Option<Retention>,
) -> Result<HookOutcome, Refusal> {
    let mut outcome = HookOutcome::Store;
    for p in chain
        .iter()
        .filter(|p| Some(p.name()) != sender.plugin.as_deref())
    {
        if !p.has(Hook::OnWrite) {
            continue;
        }
        let msg = to_message(req);
        match p.on_write(&conn_ref(sender), &msg).await {
            Ok(WriteVerdict::Accept) => {}
            Ok(WriteVerdict::AcceptWith(changes)) => {
                if let Some(h) = changes.headers {
                    req.headers = edgesync_protocol::Headers(
                        h.into_iter().map(|h| (h.name, h.value)).collect(),
                    );
                }
                if let Some(payload) = changes.payload {
                    req.payload = bytes::Bytes::from(payload);
                }
                if let Some(r) = changes.retention {
                    *hint = Some(Retention {
                        max_messages: r.max_count,
                        max_bytes: r.max_bytes,
                        max_age: r.max_age_ms.map(std::time::Duration::from_millis),
                    });
                }
            }
            Ok(WriteVerdict::Skip) => outcome = HookOutcome::LiveOnly,
            Ok(WriteVerdict::Reject(reason)) => {
                return Err(refuse(ErrorCode::Rejected, reason));
            }
            Err(e) => {
                dead.push(DeadLetter {
                    plugin: p.name().to_string(),
                    error: e.summary(),
                    detail: e.to_string(),
                });
                if refuses(p, Hook::OnWrite, &e) {
                    return Err(refuse(
                        ErrorCode::Rejected,
                        format!("plugin {} failed; message dead-lettered", p.name()),
                    ));
                }
            }
        }
    }
    Ok(outcome)
}

fn to_message(req: &Publish) -> ph::Message {
    ph::Message {
        topic: req.topic.clone(),
        headers: req
            .headers
            .0
            .iter()
            .map(|(k, v)| ph::Header {
                name: k.clone(),
                value: v.clone(),
            })
            .collect(),
        payload: req.payload.to_vec(),
    }
}

fn from_message(req: &mut Publish, m: ph::Message) {
    // A replace may not move the message to another topic: permissions were checked for this one.
    req.headers =
        edgesync_protocol::Headers(m.headers.into_iter().map(|h| (h.name, h.value)).collect());
    req.payload = bytes::Bytes::from(m.payload);
}

impl Authorizer for Plugins {
    fn connect<'a>(
        &'a self,
        conn_id: ConnId,
        client_id: &'a str,
        token: Option<&'a str>,
        info: &'a ConnInfo,
    ) -> BoxFuture<'a, Result<Option<Auth>, Refusal>> {
        let conn = ph::ConnInfo {
            conn_id,
            client_id: client_id.to_string(),
            token: token.map(str::to_string),
            remote_addr: info.remote.to_string(),
            transport: match info.transport {
                Transport::Quic => ph::Transport::Quic,
                Transport::Ws | Transport::Wss => ph::Transport::Websocket,
            },
            tls_identity: info.tls_identity.clone(),
        };
        Box::pin(async move { self.on_connect(&conn).await })
    }

    fn subscribe<'a>(
        &'a self,
        sender: &'a Sender,
        pattern: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move { self.on_subscribe(&conn_ref(sender), pattern).await })
    }

    fn disconnect<'a>(&'a self, sender: &'a Sender) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.on_disconnect(&conn_ref(sender)).await })
    }
}

impl PluginAdmin for Plugins {
    fn list(&self) -> Vec<PluginInfo> {
        self.order
            .iter()
            .filter_map(|n| self.loaded.get(n))
            .map(Plugins::info)
            .collect()
    }

    /// Hot reload from the plugin's configured path: `init` the new version, swap
    /// atomically, drain the old; the old keeps running when `init` fails.
    fn reload<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<PluginInfo, PluginAdminError>> {
        Box::pin(async move {
            let p = self
                .loaded
                .get(name)
                .ok_or_else(|| PluginAdminError::NotFound(name.to_string()))?;
            p.reload(p.config())
                .await
                .map_err(|e| PluginAdminError::Failed(e.to_string()))?;
            Ok(Plugins::info(p))
        })
    }
}

/// What an auth plugin grants is checked before it is enforced (security finding 11):
/// every granted pattern must be a valid pattern, and the principal id must not hold a
/// wildcard or a control character — an identity is data, and one that looks like a
/// pattern (`*`, `>`) is never what a template such as `users.{principal}.>` meant.
/// A plugin that breaks this refuses the connection (fail closed), naming the plugin.
///
/// # Errors
/// `unauthorized`, saying what was wrong.
fn check_principal(plugin: &str, principal: &ph::Principal) -> Result<(), Refusal> {
    if let Some(c) = principal
        .id
        .chars()
        .find(|c| matches!(c, '*' | '>') || c.is_control())
    {
        tracing::warn!(plugin, principal = ?principal.id, "auth plugin returned a principal holding {c:?}; connection refused");
        return Err(refuse(
            ErrorCode::Unauthorized,
            format!("auth plugin {plugin} returned a principal id holding {c:?}"),
        ));
    }
    let perms = &principal.permissions;
    for pattern in perms.publish.iter().chain(&perms.subscribe) {
        if let Err(e) = edgesync_protocol::topic::validate_pattern(pattern, usize::MAX) {
            tracing::warn!(plugin, pattern = ?pattern, error = %e, "auth plugin granted an invalid pattern; connection refused");
            return Err(refuse(
                ErrorCode::Unauthorized,
                format!("auth plugin {plugin} granted an invalid pattern {pattern:?}: {e}"),
            ));
        }
    }
    Ok(())
}
