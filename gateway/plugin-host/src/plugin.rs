//! [`Plugin`]: a loaded plugin — hook calls, hot reload, timers.
//!
//! Every hook call follows the same path:
//! 1. the current version is read (one `Arc` clone); a family the
//!    component does not export returns [`PluginError::NotExported`]
//!    without touching an instance;
//! 2. the breaker admits the call or returns [`PluginError::Disabled`];
//! 3. a lease (one of `max_instances`; waiting at most the wall-clock timeout), an
//!    idle instance (or a new one, which runs `init`), the CPU deadline and
//!    wall-clock timeout armed on the epoch callback, the export called
//!    with a synchronous `call` on the calling thread (no fiber: WASI is
//!    linked non-blocking, see `caps::wasi`);
//! 4. success → instance back to the pool, breaker told; fault → instance
//!    discarded, breaker told, error classified.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;

use crate::batch::BatchVerdicts;
use crate::bindings::types::{
    Batch, ConnInfo, ConnRef, ConnectVerdict, Message, MessageVerdict, SubscribeVerdict,
    WriteVerdict,
};
use crate::breaker::BreakerState;
use crate::config::{FailurePolicy, PluginConfig};
use crate::error::PluginError;
use crate::hooks::{Exports, Hook};
use crate::host::{ComponentInfo, HostShared, build_version};
use crate::message::{MessageRef, SenderRef, pack, packed_len};
use crate::pool::{Instance, Lease, Version, describe_fault};
use crate::state::PluginCtx;

/// `on-batch` gets one CPU budget per this many messages.
pub const BATCH_MESSAGES_PER_DEADLINE: usize = 256;

/// A loaded plugin. Cheap to clone; all clones share the plugin. Dropping
/// the last clone unloads it (timers stop, metrics are unregistered).
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("version", &self.version())
            .field("exports", &self.exports())
            .finish()
    }
}

struct PluginInner {
    shared: Arc<HostShared>,
    ctx: Arc<PluginCtx>,
    current: RwLock<Arc<Version>>,
    reload_lock: tokio::sync::Mutex<()>,
    timer_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for PluginInner {
    fn drop(&mut self) {
        if let Some(t) = self.timer_task.get_mut().take() {
            t.abort();
        }
    }
}

/// The outcome of a successful [`Plugin::reload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Version that served before.
    pub from_version: u64,
    /// Version serving now.
    pub to_version: u64,
    /// Whether every call on the old version finished within
    /// `plugin_host.drain_timeout_ms` (they finish regardless).
    pub drained: bool,
    /// The new component.
    pub info: ComponentInfo,
}

/// Runs a hook through the common call path (see the module docs).
/// `|$v| $budget` computes the CPU budget from the version, `$family` is the
/// `Hooks` field, and the closure-like tail builds the export call from the
/// typed exports `$g`, the store `$store` and the instance's packing buffer
/// `$packed`. The CPU deadline and the wall-clock timeout are both enforced
/// by the epoch callback: host functions never wait, so a call is always
/// either running guest code or returning.
macro_rules! call_hook {
    ($self:ident, $hook:expr, |$v:ident| $budget:expr, $family:ident,
     |$g:ident, $store:ident, $packed:ident| $call:expr) => {{
        let hook: Hook = $hook;
        let version = $self.begin(hook)?;
        let started = sample_latency().then(Instant::now);
        let timeout = version.config.limits.timeout();
        let budget: Duration = {
            let $v: &Version = &version;
            $budget
        };
        let Some(mut lease) = version.checkout(timeout).await else {
            let reason = format!(
                "no free instance within {timeout:?} (limits.max_instances = {})",
                version.config.limits.max_instances
            );
            let err = PluginError::Host {
                plugin: $self.name().to_string(),
                hook,
                reason,
            };
            return Err($self.fail(&version, hook, err));
        };
        let mut inst: Box<Instance> = match lease.instance.take() {
            Some(inst) => inst,
            None => match version.instantiate(&$self.inner.shared, &$self.inner.ctx) {
                Ok(inst) => inst,
                Err(e) => return Err($self.fail(&version, hook, e)),
            },
        };
        let ticks = inst.store.data_mut().cpu.arm(budget, timeout);
        inst.store.set_epoch_deadline(ticks);
        let result = match inst.hooks.$family.as_ref() {
            Some($g) => {
                let $store = &mut inst.store;
                let $packed = &mut inst.packed;
                $call
            }
            None => Err(wasmtime::format_err!("instance lacks an exported family")),
        };
        $self.finish(&version, lease, hook, started, inst, result)
    }};
}

/// A guest result that breaks the contract (classified as `Contract`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ContractViolation(String);

impl Plugin {
    pub(crate) fn start(
        shared: Arc<HostShared>,
        ctx: Arc<PluginCtx>,
        version: Arc<Version>,
    ) -> Plugin {
        let plugin = Plugin {
            inner: Arc::new(PluginInner {
                shared,
                ctx: ctx.clone(),
                current: RwLock::new(version),
                reload_lock: tokio::sync::Mutex::new(()),
                timer_task: Mutex::new(None),
            }),
        };
        let task = tokio::spawn(run_timers(Arc::downgrade(&plugin.inner), ctx));
        *plugin.inner.timer_task.lock() = Some(task);
        plugin
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.ctx.name
    }

    /// The hook families the current version exports. The host never calls
    /// a family that is not in this set.
    pub fn exports(&self) -> Exports {
        self.inner.current.read().exports
    }

    /// Whether the current version exports the family of `hook`.
    pub fn has(&self, hook: Hook) -> bool {
        self.exports().contains(hook.family())
    }

    /// The current version number (increases with every reload).
    pub fn version(&self) -> u64 {
        self.inner.current.read().ctx.id
    }

    /// The current version's config.
    pub fn config(&self) -> PluginConfig {
        self.inner.current.read().config.clone()
    }

    /// What the current component is.
    pub fn info(&self) -> ComponentInfo {
        self.inner.current.read().info.clone()
    }

    /// The configured failure policy for `hook`: what the gateway does when
    /// a call returns an error.
    pub fn policy(&self, hook: Hook) -> FailurePolicy {
        self.inner.current.read().config.failure.for_hook(hook)
    }

    /// The crash-loop breaker's position.
    pub fn breaker(&self) -> BreakerState {
        self.inner.current.read().breaker.state()
    }

    /// Names of the plugin's active timers.
    pub fn timers(&self) -> Vec<String> {
        self.inner.ctx.timers.names()
    }

    /// Full names of the metrics the plugin defined.
    pub fn metric_names(&self) -> Vec<String> {
        self.inner.ctx.metrics.names()
    }

    /// Idle warm instances of the current version.
    pub fn idle_instances(&self) -> usize {
        self.inner.current.read().idle_len()
    }

    /// Drops idle warm instances beyond `keep` (they are re-created on
    /// demand, each running `init`): returns their memory, e.g. after a
    /// burst, and lets benches separate instantiation from teardown.
    pub fn trim_idle(&self, keep: usize) {
        let version = self.inner.current.read().clone();
        version.trim_idle(keep);
    }

    /// Instantiates a fresh instance (running the guest's `init` with the
    /// current config) and adds it to the warm pool. Load already does this
    /// `limits.pool_size` times; call it to check `init` or top up the pool.
    ///
    /// # Errors
    /// [`PluginError::Init`] if `init` fails or faults.
    pub async fn init(&self) -> Result<(), PluginError> {
        let version = self.inner.current.read().clone();
        version.warm(&self.inner.shared, &self.inner.ctx)
    }

    /// `auth-hooks.on-connect`: admit a connection.
    ///
    /// # Errors
    /// See [`PluginError`]; apply [`Plugin::policy`]`(Hook::OnConnect)`.
    pub async fn on_connect(&self, conn: &ConnInfo) -> Result<ConnectVerdict, PluginError> {
        call_hook!(
            self,
            Hook::OnConnect,
            |v| v.deadline(),
            auth,
            |g, store, _p| g.call_on_connect(store, conn)
        )
    }

    /// `auth-hooks.on-subscribe`: admit a subscription.
    ///
    /// # Errors
    /// See [`PluginError`]; apply [`Plugin::policy`]`(Hook::OnSubscribe)`.
    pub async fn on_subscribe(
        &self,
        conn: &ConnRef,
        pattern: &str,
    ) -> Result<SubscribeVerdict, PluginError> {
        call_hook!(
            self,
            Hook::OnSubscribe,
            |v| v.deadline(),
            auth,
            |g, store, _p| g.call_on_subscribe(store, conn, pattern)
        )
    }

    /// `auth-hooks.on-disconnect`: a connection ended.
    ///
    /// # Errors
    /// See [`PluginError`] (informational only: nothing to refuse).
    pub async fn on_disconnect(&self, conn: &ConnRef) -> Result<(), PluginError> {
        call_hook!(
            self,
            Hook::OnDisconnect,
            |v| v.deadline(),
            auth,
            |g, store, _p| g.call_on_disconnect(store, conn)
        )
    }

    /// `message-hooks.on-message`: the verdict on one published message.
    /// See [`Plugin::on_message_ref`] to call it without owned values.
    ///
    /// # Errors
    /// See [`PluginError`]; apply [`Plugin::policy`]`(Hook::OnMessage)`.
    pub async fn on_message(
        &self,
        sender: &ConnRef,
        msg: &Message,
    ) -> Result<MessageVerdict, PluginError> {
        self.on_message_ref(sender.into(), msg.into()).await
    }

    /// [`Plugin::on_message`] on borrowed views: the message is copied once,
    /// into the instance's packing buffer (`packed-message` in the WIT).
    ///
    /// # Errors
    /// See [`PluginError`]; [`PluginError::Host`] for a message past 4 GiB
    /// (no instance touched). Apply [`Plugin::policy`]`(Hook::OnMessage)`.
    pub async fn on_message_ref(
        &self,
        sender: SenderRef<'_>,
        msg: MessageRef<'_>,
    ) -> Result<MessageVerdict, PluginError> {
        if u32::try_from(packed_len(sender, msg)).is_err() {
            return Err(PluginError::Host {
                plugin: self.name().to_string(),
                hook: Hook::OnMessage,
                reason: "message exceeds 4 GiB".into(),
            });
        }
        call_hook!(
            self,
            Hook::OnMessage,
            |v| v.deadline(),
            message,
            |g, store, packed| {
                pack(packed, sender, msg);
                store.data_mut().verdict.clear();
                g.call_on_message(&mut *store, packed).and_then(|action| {
                    store
                        .data_mut()
                        .verdict
                        .verdict(action)
                        .map_err(|reason| wasmtime::Error::new(ContractViolation(reason)))
                })
            }
        )
    }

    /// `message-hooks.on-batch`: one verdict per message of `batch`, in
    /// order, in one guest call (build the batch with
    /// [`BatchBuilder`](crate::BatchBuilder)). The guest returns only the
    /// verdicts that are not `pass`; [`BatchVerdicts`] keeps them so, checked
    /// (indexes in range and ascending). The CPU budget is `deadline_ms` per
    /// [`BATCH_MESSAGES_PER_DEADLINE`] messages.
    ///
    /// # Errors
    /// See [`PluginError`]; [`PluginError::Contract`] if the guest returns
    /// an index out of range or out of order. Apply
    /// [`Plugin::policy`]`(Hook::OnBatch)`.
    pub async fn on_batch(
        &self,
        sender: &ConnRef,
        batch: &Batch,
    ) -> Result<BatchVerdicts, PluginError> {
        let n = batch.ends.len() / 3;
        let budgets = (1 + n / BATCH_MESSAGES_PER_DEADLINE).min(1000) as u32;
        call_hook!(
            self,
            Hook::OnBatch,
            |v| v.deadline() * budgets,
            message,
            |g, store, _p| g
                .call_on_batch(store, sender, batch)
                .and_then(|exceptions| {
                    BatchVerdicts::new(n, exceptions)
                        .map_err(|reason| wasmtime::Error::new(ContractViolation(reason)))
                })
        )
    }

    /// `storage-hooks.on-write`: the verdict on a record about to be
    /// persisted.
    ///
    /// # Errors
    /// See [`PluginError`]; apply [`Plugin::policy`]`(Hook::OnWrite)`.
    pub async fn on_write(
        &self,
        sender: &ConnRef,
        msg: &Message,
    ) -> Result<WriteVerdict, PluginError> {
        call_hook!(
            self,
            Hook::OnWrite,
            |v| v.deadline(),
            storage,
            |g, store, _p| g.call_on_write(store, sender, msg)
        )
    }

    /// `timer-hooks.on-timer`: the timer `name` fired. The plugin's timer
    /// task calls this; exposed for tests and manual triggering.
    ///
    /// # Errors
    /// See [`PluginError`].
    pub async fn on_timer(&self, name: &str) -> Result<(), PluginError> {
        call_hook!(
            self,
            Hook::OnTimer,
            |v| v.deadline(),
            timer,
            |g, store, _p| g.call_on_timer(store, name)
        )
    }

    /// Hot reload: builds the new version from `config` (same name; path,
    /// config table, limits, grants may change) and runs `init` on its warm
    /// instances while the old version keeps serving; then swaps atomically
    /// and drains the old version. If anything fails before the swap the old
    /// version stays — that is the rollback — and the error is returned.
    /// Timers the new version did not set again are cancelled.
    ///
    /// # Errors
    /// [`PluginError::Load`] or [`PluginError::Init`] from the new version.
    pub async fn reload(&self, config: PluginConfig) -> Result<ReloadReport, PluginError> {
        if config.name != self.name() {
            return Err(PluginError::load(
                self.name(),
                format!("reload must keep the name (got `{}`)", config.name),
            ));
        }
        let _serial = self.inner.reload_lock.lock().await;
        let new = build_version(&self.inner.shared, &self.inner.ctx, config).await?;
        let old = std::mem::replace(&mut *self.inner.current.write(), new.clone());
        old.retire();
        self.inner.ctx.timers.retain_version(new.ctx.id);
        let drain = Duration::from_millis(self.inner.shared.config.drain_timeout_ms);
        let drained = old.wait_drained(drain).await;
        tracing::info!(
            plugin = self.name(),
            from = old.ctx.id,
            to = new.ctx.id,
            drained,
            "plugin reloaded"
        );
        Ok(ReloadReport {
            from_version: old.ctx.id,
            to_version: new.ctx.id,
            drained,
            info: new.info.clone(),
        })
    }

    /// Steps 1-2 of a call: export check and breaker.
    fn begin(&self, hook: Hook) -> Result<Arc<Version>, PluginError> {
        let version = self.inner.current.read().clone();
        if !version.exports.contains(hook.family()) {
            return Err(PluginError::NotExported {
                plugin: self.name().to_string(),
                hook,
            });
        }
        if let Err(retry_in) = version.breaker.admit() {
            self.inner
                .ctx
                .telemetry
                .error(hook, crate::error::ErrorKind::Disabled);
            return Err(PluginError::Disabled {
                plugin: self.name().to_string(),
                retry_in,
            });
        }
        Ok(version)
    }

    /// Step 4: pool, breaker, telemetry, classification.
    fn finish<R>(
        &self,
        version: &Version,
        lease: Lease<'_>,
        hook: Hook,
        started: Option<Instant>,
        inst: Box<Instance>,
        result: wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let ctx = &self.inner.ctx;
        match result {
            Ok(value) => {
                lease.checkin(inst, ctx);
                version.breaker.on_success();
                ctx.telemetry
                    .ok(hook, started.map(|s| s.elapsed().as_secs_f64()));
                Ok(value)
            }
            Err(e) => {
                ctx.telemetry.discarded.inc();
                let err = classify(&ctx.name, hook, &inst, &e);
                drop(inst);
                drop(lease);
                Err(self.fail(version, hook, err))
            }
        }
    }

    /// Records a failed call (telemetry, breaker) and returns its error.
    fn fail(&self, version: &Version, hook: Hook, err: PluginError) -> PluginError {
        let ctx = &self.inner.ctx;
        ctx.telemetry.error(hook, err.kind());
        if err.is_guest_fault() && version.breaker.on_fault() {
            ctx.telemetry.breaker_trips.inc();
            tracing::warn!(plugin = %ctx.name, %hook, error = %err, "plugin crash-loop breaker opened");
        } else {
            tracing::debug!(plugin = %ctx.name, %hook, error = %err, "plugin hook failed");
        }
        err
    }
}

/// Call latency is observed for one call in [`LATENCY_SAMPLE_EVERY`] per
/// worker thread: two clock reads cost more than the rest of the
/// bookkeeping of a hook call on some virtual machines.
pub const LATENCY_SAMPLE_EVERY: u32 = 8;

fn sample_latency() -> bool {
    thread_local! {
        static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    CALLS.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % LATENCY_SAMPLE_EVERY == 0
    })
}

/// Turns a failed export call into a classified error.
fn classify(plugin: &str, hook: Hook, inst: &Instance, e: &wasmtime::Error) -> PluginError {
    let state = inst.store.data();
    let plugin = plugin.to_string();
    if state.memory.hit {
        return PluginError::MemoryLimit {
            plugin,
            hook,
            limit_bytes: state.memory.max_bytes,
        };
    }
    if state.cpu.exceeded {
        return PluginError::Deadline {
            plugin,
            hook,
            budget: state.cpu.budget(),
        };
    }
    if state.cpu.timed_out {
        return PluginError::Timeout {
            plugin,
            hook,
            timeout: state.cpu.wall(),
        };
    }
    if let Some(c) = e.downcast_ref::<ContractViolation>() {
        return PluginError::Contract {
            plugin,
            hook,
            reason: c.0.clone(),
        };
    }
    PluginError::Trap {
        plugin,
        hook,
        message: describe_fault(state, e),
        cause: crate::caps::log::truncate(&e.root_cause().to_string(), 512).to_string(),
    }
}

/// Delivers the plugin's timers until the plugin is dropped.
async fn run_timers(plugin: Weak<PluginInner>, ctx: Arc<PluginCtx>) {
    loop {
        let changed = ctx.timers.changed.notified();
        match ctx.timers.next_due() {
            Some(due) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = changed => continue,
                }
            }
            None => {
                changed.await;
                continue;
            }
        }
        let names = ctx.timers.take_due(tokio::time::Instant::now());
        let Some(inner) = plugin.upgrade() else {
            return;
        };
        let p = Plugin { inner };
        for name in names {
            match p.on_timer(&name).await {
                Ok(()) => {}
                Err(PluginError::NotExported { .. }) => {
                    tracing::debug!(plugin = %ctx.name, timer = %name, "timer fired but on-timer is not exported");
                }
                Err(e) => {
                    tracing::warn!(plugin = %ctx.name, timer = %name, error = %e, "on-timer failed")
                }
            }
        }
    }
}
