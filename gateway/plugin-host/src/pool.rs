//! One loaded version of a plugin and its warm instance pool.
//!
//! A [`Version`] is built once per load or reload: compiled component,
//! `InstancePre` (imports resolved once), export indices of the families
//! the component has, and a pool of initialised instances. Instances are
//! checked out for one call and checked back in — unless the call faulted
//! (discarded), the instance reached its randomised call budget (retired),
//! the pool is full, or the version was replaced by a reload (drained).
//! Concurrency is bounded by `limits.max_instances` leases; idle instances
//! are at most `limits.pool_size`. The lease count, the callers queued for
//! a lease and the idle instances share one mutex ([`Slots`]), so a call
//! takes it once to check out and once to check in — no semaphore, no
//! separate in-flight counter.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::Notify;
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
    slots: Mutex<Slots>,
    /// A lease was returned while callers were queued.
    freed: Notify,
    /// A retired version's last call finished.
    drained: Notify,
    pub breaker: BreakerCell,
}

/// The pool's state, under one lock.
struct Slots {
    #[allow(
        clippy::vec_box,
        reason = "checkout/checkin move the pointer, not the instance (see `Instance`)"
    )]
    idle: Vec<Box<Instance>>,
    /// Leases out (calls running or instantiating), ≤ `max_instances`.
    busy: usize,
    /// Callers waiting for a lease.
    queued: usize,
    /// Replaced by a reload: no more pooling; drained when nothing is out
    /// or queued.
    retired: bool,
}

impl Slots {
    fn drained(&self) -> bool {
        self.busy == 0 && self.queued == 0
    }
}

/// The right to run one call on a version, with the idle instance it came
/// with (if any). Dropping it returns the lease without an instance (a
/// faulted or cancelled call); [`Lease::checkin`] returns one.
pub(crate) struct Lease<'a> {
    version: &'a Version,
    pub instance: Option<Box<Instance>>,
}

impl Lease<'_> {
    /// Ends the call successfully: the instance goes back to the pool
    /// unless it reached its call budget, the pool is full or the version
    /// was retired.
    pub(crate) fn checkin(mut self, mut inst: Box<Instance>, plugin: &PluginCtx) {
        inst.calls += 1;
        let retiring = inst.calls >= inst.retire_after;
        if retiring {
            plugin.telemetry.retired.inc();
        }
        let keep = (!retiring).then_some(inst);
        // Dropped after the lock: resetting a pool slot is a syscall.
        let _surplus = self.version.release(keep);
        self.instance = None;
        std::mem::forget(self);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let _discarded = self.instance.take();
        let _surplus = self.version.release(None);
    }
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
            breaker: BreakerCell::new(&config.breaker),
            exports: info.exports,
            ctx,
            config,
            info,
            pre,
            indices,
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                busy: 0,
                queued: 0,
                retired: false,
            }),
            freed: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// The CPU budget of one hook call.
    pub(crate) fn deadline(&self) -> Duration {
        self.config.limits.deadline()
    }

    /// A lease for one call, with an idle instance if there is one (else
    /// the caller instantiates). Waits at most `timeout` when all
    /// `max_instances` leases are out (a tokio timer only then).
    pub(crate) async fn checkout(&self, timeout: Duration) -> Option<Lease<'_>> {
        let max = self.config.limits.max_instances;
        {
            let mut s = self.slots.lock();
            if s.busy < max {
                return Some(self.lease(&mut s));
            }
            s.queued += 1;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            {
                let mut s = self.slots.lock();
                if s.busy < max {
                    s.queued -= 1;
                    return Some(self.lease(&mut s));
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                // A lease may have come back just now; either take it or
                // leave the queue (and maybe complete a drain).
                let mut s = self.slots.lock();
                s.queued -= 1;
                if s.busy < max {
                    return Some(self.lease(&mut s));
                }
                let drained = s.retired && s.drained();
                drop(s);
                if drained {
                    self.drained.notify_waiters();
                }
                return None;
            }
        }
    }

    /// Takes a lease (the caller checked `busy < max_instances` under the
    /// lock), with an idle instance if there is one.
    fn lease(&self, s: &mut Slots) -> Lease<'_> {
        s.busy += 1;
        Lease {
            version: self,
            instance: s.idle.pop(),
        }
    }

    /// Returns a lease, pooling `keep` if there is room; returns what was
    /// not pooled, for the caller to drop outside the lock.
    fn release(&self, keep: Option<Box<Instance>>) -> Option<Box<Instance>> {
        let mut s = self.slots.lock();
        s.busy -= 1;
        let surplus = match keep {
            Some(inst) if !s.retired && s.idle.len() < self.config.limits.pool_size => {
                s.idle.push(inst);
                None
            }
            other => other,
        };
        let wake = s.queued > 0;
        let drained = s.retired && s.drained();
        drop(s);
        if wake {
            self.freed.notify_one();
        }
        if drained {
            self.drained.notify_waiters();
        }
        surplus
    }

    /// Adds a fresh instance to the idle pool (prewarming, `Plugin::init`).
    pub(crate) fn warm(
        &self,
        shared: &HostShared,
        plugin: &Arc<PluginCtx>,
    ) -> Result<(), PluginError> {
        let inst = self.instantiate(shared, plugin)?;
        let mut s = self.slots.lock();
        if !s.retired && s.idle.len() < self.config.limits.pool_size.max(1) {
            s.idle.push(inst);
        }
        Ok(())
    }

    /// Instantiates from the `InstancePre` and runs `init`, under the init
    /// CPU deadline and the memory cap.
    pub(crate) fn instantiate(
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
            verdict: Default::default(),
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
        let instance = match self.pre.instantiate(&mut store) {
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
            match lc.call_init(&mut store, &self.ctx.config_json) {
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
        let idle = {
            let mut s = self.slots.lock();
            s.retired = true;
            std::mem::take(&mut s.idle)
        };
        drop(idle);
    }

    /// Waits until no call runs on this version, at most `timeout`.
    /// Returns whether it drained.
    pub(crate) async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.drained.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.slots.lock().drained() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.slots.lock().drained();
            }
        }
    }

    /// Drops idle instances beyond `keep`.
    pub(crate) fn trim_idle(&self, keep: usize) {
        let trimmed: Vec<Box<Instance>> = {
            let idle = &mut self.slots.lock().idle;
            let keep = keep.min(idle.len());
            idle.drain(keep..).collect()
        };
        // Dropped outside the lock: resetting a slot is a syscall.
        drop(trimmed);
    }

    /// Idle instances right now (for tests and introspection).
    pub(crate) fn idle_len(&self) -> usize {
        self.slots.lock().idle.len()
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
