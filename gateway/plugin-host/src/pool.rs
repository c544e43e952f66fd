//! One loaded version of a plugin and its warm instance pool.
//!
//! A [`Version`] is built once per load or reload: compiled component,
//! `InstancePre` (imports resolved once), export indices of the families
//! the component has, and a pool of initialised instances. Instances are
//! checked out for one call and checked back in — unless the call faulted
//! (discarded), the instance reached its randomised call budget (retired),
//! the pool is full, or the version was replaced by a reload (drained).
//! Concurrency is bounded by a semaphore of `limits.max_instances`; idle
//! instances are at most `limits.pool_size`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use wasmtime::Store;
use wasmtime::component::{InstancePre, ResourceTable};

use crate::bindings::types::PackedMessage;
use crate::bindings::{auth_hooks, lifecycle, message_hooks, storage_hooks, timer_hooks};
use crate::breaker::BreakerCell;
use crate::caps;
use crate::config::PluginConfig;
use crate::error::PluginError;
use crate::hooks::{Exports, Family};
use crate::host::{ComponentInfo, HostShared};
use crate::message::empty_packed;
use crate::state::{CpuMeter, HostState, MemoryCap, PluginCtx, VersionCtx, on_epoch_deadline};

/// Export indices, resolved once per version for the exported families.
#[derive(Default)]
pub(crate) struct HookIndices {
    lifecycle: Option<lifecycle::GuestIndices>,
    auth: Option<auth_hooks::GuestIndices>,
    message: Option<message_hooks::GuestIndices>,
    storage: Option<storage_hooks::GuestIndices>,
    timer: Option<timer_hooks::GuestIndices>,
}

impl HookIndices {
    /// Looks up the exports of every family in `exports`.
    ///
    /// # Errors
    /// A family is exported with a shape that does not match the contract.
    pub(crate) fn new(pre: &InstancePre<HostState>, exports: Exports) -> wasmtime::Result<Self> {
        let mut i = HookIndices::default();
        if exports.contains(Family::Lifecycle) {
            i.lifecycle = Some(lifecycle::GuestIndices::new(pre)?);
        }
        if exports.contains(Family::Auth) {
            i.auth = Some(auth_hooks::GuestIndices::new(pre)?);
        }
        if exports.contains(Family::Message) {
            i.message = Some(message_hooks::GuestIndices::new(pre)?);
        }
        if exports.contains(Family::Storage) {
            i.storage = Some(storage_hooks::GuestIndices::new(pre)?);
        }
        if exports.contains(Family::Timer) {
            i.timer = Some(timer_hooks::GuestIndices::new(pre)?);
        }
        Ok(i)
    }

    fn load(
        &self,
        store: &mut Store<HostState>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Hooks> {
        Ok(Hooks {
            lifecycle: self
                .lifecycle
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            auth: self
                .auth
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            message: self
                .message
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            storage: self
                .storage
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            timer: self
                .timer
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
        })
    }
}

/// Typed exports of one instance; `None` for families not exported.
pub(crate) struct Hooks {
    pub lifecycle: Option<lifecycle::Guest>,
    pub auth: Option<auth_hooks::Guest>,
    pub message: Option<message_hooks::Guest>,
    pub storage: Option<storage_hooks::Guest>,
    pub timer: Option<timer_hooks::Guest>,
}

/// An initialised instance. Boxed everywhere (`Instance` is several hundred
/// bytes of typed export handles): a checkout and checkin then move a
/// pointer, not the struct.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub hooks: Hooks,
    /// `on-message`'s argument, repacked for each call in the same buffer.
    pub packed: PackedMessage,
    calls: u64,
    retire_after: u64,
}

/// One version of a plugin.
pub(crate) struct Version {
    pub ctx: Arc<VersionCtx>,
    pub config: PluginConfig,
    pub exports: Exports,
    pub info: ComponentInfo,
    pre: InstancePre<HostState>,
    indices: HookIndices,
    #[allow(
        clippy::vec_box,
        reason = "checkout/checkin move the pointer, not the instance (see `Instance`)"
    )]
    idle: Mutex<Vec<Box<Instance>>>,
    busy: Semaphore,
    pub breaker: BreakerCell,
    retired: AtomicBool,
    inflight: AtomicUsize,
    drained: Notify,
}

impl Version {
    pub(crate) fn new(
        ctx: Arc<VersionCtx>,
        config: PluginConfig,
        info: ComponentInfo,
        pre: InstancePre<HostState>,
        indices: HookIndices,
    ) -> Self {
        Version {
            busy: Semaphore::new(config.limits.max_instances),
            breaker: BreakerCell::new(&config.breaker),
            exports: info.exports,
            ctx,
            config,
            info,
            pre,
            indices,
            idle: Mutex::new(Vec::new()),
            retired: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            drained: Notify::new(),
        }
    }

    /// The CPU budget of one hook call.
    pub(crate) fn deadline(&self) -> Duration {
        self.config.limits.deadline()
    }

    /// Marks a call in flight until the guard drops (also on cancellation).
    pub(crate) fn enter(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(self)
    }

    /// A permit for one concurrent call, waiting at most `timeout` (a tokio
    /// timer only when no permit is free right away).
    pub(crate) async fn permit(&self, timeout: Duration) -> Option<SemaphorePermit<'_>> {
        if let Ok(p) = self.busy.try_acquire() {
            return Some(p);
        }
        match tokio::time::timeout(timeout, self.busy.acquire()).await {
            Ok(Ok(p)) => Some(p),
            _ => None,
        }
    }

    /// An idle instance, if any (then the caller instantiates one).
    pub(crate) fn idle_instance(&self) -> Option<Box<Instance>> {
        self.idle.lock().pop()
    }

    /// Returns an instance after a successful call.
    pub(crate) fn checkin(&self, mut inst: Box<Instance>, plugin: &PluginCtx) {
        inst.calls += 1;
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        if inst.calls >= inst.retire_after {
            plugin.telemetry.retired.inc();
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < self.config.limits.pool_size {
            idle.push(inst);
        }
    }

    /// Adds a fresh instance to the idle pool (prewarming, `Plugin::init`).
    pub(crate) async fn warm(
        &self,
        shared: &HostShared,
        plugin: &Arc<PluginCtx>,
    ) -> Result<(), PluginError> {
        let inst = self.instantiate(shared, plugin).await?;
        let mut idle = self.idle.lock();
        if idle.len() < self.config.limits.pool_size.max(1) {
            idle.push(inst);
        }
        Ok(())
    }

    /// Instantiates from the `InstancePre` and runs `init`, under the init
    /// CPU deadline and the memory cap.
    pub(crate) async fn instantiate(
        &self,
        shared: &HostShared,
        plugin: &Arc<PluginCtx>,
    ) -> Result<Box<Instance>, PluginError> {
        let limits = &self.config.limits;
        let state = HostState {
            plugin: plugin.clone(),
            version: self.ctx.clone(),
            wasi: None,
            table: ResourceTable::new(),
            memory: MemoryCap {
                max_bytes: limits.memory_bytes(),
                hit: false,
            },
            cpu: CpuMeter::new(shared.clock.clone(), shared.tick),
        };
        let mut store = Store::new(&shared.engine, state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(on_epoch_deadline);
        let wall = limits.timeout().max(limits.init_deadline() * 2);
        let ticks = store.data_mut().cpu.arm(limits.init_deadline(), wall);
        store.set_epoch_deadline(ticks);
        let init_err = |store: &Store<HostState>, e: wasmtime::Error| PluginError::Init {
            plugin: plugin.name.clone(),
            reason: describe_fault(store.data(), &e),
        };
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            // Every pool slot is taken (all plugins together): the host's
            // capacity, not the guest's fault.
            Err(e)
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some() =>
            {
                return Err(PluginError::Host {
                    plugin: plugin.name.clone(),
                    hook: crate::hooks::Hook::Init,
                    reason: format!("{e} (raise plugin_host.pool_total_instances)"),
                });
            }
            Err(e) => return Err(init_err(&store, e)),
        };
        let hooks = match self.indices.load(&mut store, &instance) {
            Ok(h) => h,
            Err(e) => return Err(init_err(&store, e)),
        };
        if let Some(lc) = &hooks.lifecycle {
            match lc.call_init(&mut store, &self.ctx.config_json).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    let reason = caps::log::truncate(&reason, 1024).to_string();
                    return Err(PluginError::Init {
                        plugin: plugin.name.clone(),
                        reason,
                    });
                }
                Err(e) => return Err(init_err(&store, e)),
            }
        }
        plugin.telemetry.created.inc();
        Ok(Box::new(Instance {
            store,
            hooks,
            packed: empty_packed(),
            calls: 0,
            retire_after: self.draw_retire_after(),
        }))
    }

    fn draw_retire_after(&self) -> u64 {
        let n = self.config.limits.retire_after_calls;
        if n == 0 {
            return u64::MAX;
        }
        rand::rng().random_range(n.div_ceil(2)..=n.saturating_add(n / 2))
    }

    /// Stops pooling: idle instances are dropped now, busy ones at checkin.
    pub(crate) fn retire(&self) {
        // SeqCst pairs with `InflightGuard::drop` (see there).
        self.retired.store(true, Ordering::SeqCst);
        self.idle.lock().clear();
    }

    /// Waits until no call runs on this version, at most `timeout`.
    /// Returns whether it drained.
    pub(crate) async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.drained.notified();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inflight.load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// Drops idle instances beyond `keep`.
    pub(crate) fn trim_idle(&self, keep: usize) {
        let trimmed: Vec<Box<Instance>> = {
            let mut idle = self.idle.lock();
            let keep = keep.min(idle.len());
            idle.drain(keep..).collect()
        };
        // Dropped outside the lock: resetting a slot is a syscall.
        drop(trimmed);
    }

    /// Idle instances right now (for tests and introspection).
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.lock().len()
    }
}

/// Decrements the in-flight count of a version when dropped.
pub(crate) struct InflightGuard<'a>(&'a Version);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        // Only a retired version is waited on (`wait_drained`), so only the
        // last call on one wakes the waiter; `Notify` takes a lock. With
        // SeqCst here and in `retire` / `wait_drained`, either this load
        // sees `retired` or the waiter's load sees the count at zero.
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.retired.load(Ordering::SeqCst)
        {
            self.0.drained.notify_waiters();
        }
    }
}

/// A human-readable description of a fault, using the instance's meters.
pub(crate) fn describe_fault(state: &HostState, e: &wasmtime::Error) -> String {
    if state.memory.hit {
        return format!("memory limit of {} bytes reached", state.memory.max_bytes);
    }
    if state.cpu.exceeded {
        return format!("CPU deadline of {:?} exceeded", state.cpu.budget());
    }
    if state.cpu.timed_out {
        return format!("wall-clock timeout of {:?} exceeded", state.cpu.wall());
    }
    let text = format!("{e:#}");
    caps::log::truncate(&text, 2048).to_string()
}
