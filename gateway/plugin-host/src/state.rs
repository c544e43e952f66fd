//! Per-instance state kept in each `Store`: the plugin's shared context,
//! the version's config, WASI (empty), the memory cap and the CPU meter.
//!
//! The capability modules (`caps::*`) implement the generated host traits
//! on [`HostState`]; each reads only its own part of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::caps;
use crate::config::Grants;
use crate::engine::TickClock;
use crate::services::HostServices;
use crate::telemetry::PluginTelemetry;

/// State shared by every instance of every version of one plugin: the
/// things that must outlive instances (timers, metrics) or are costly to
/// rebuild (parsed keys).
pub(crate) struct PluginCtx {
    pub name: String,
    pub services: Arc<dyn HostServices>,
    pub metrics: caps::metrics::PluginMetrics,
    pub timers: caps::timers::TimerTable,
    pub crypto: caps::crypto::KeyCache,
    pub log: caps::log::LogLimiter,
    pub telemetry: PluginTelemetry,
}

/// What differs between versions of a plugin (a reload may change config).
pub(crate) struct VersionCtx {
    /// Increases with every successful load or reload of the plugin.
    pub id: u64,
    /// The config table as JSON text, handed to `init`.
    pub config_json: String,
    /// The same, parsed, for `config.get`.
    pub config: serde_json::Value,
    pub grants: Grants,
}

/// The data of one instance's `Store`.
pub(crate) struct HostState {
    pub plugin: Arc<PluginCtx>,
    pub version: Arc<VersionCtx>,
    /// Built on the guest's first WASI call: most plugins make none, and
    /// building a context (seeding two RNGs, boxing clocks and streams)
    /// was a measurable part of instantiation.
    pub wasi: Option<WasiCtx>,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub cpu: CpuMeter,
    /// The data of the current `on-message` verdict.
    pub verdict: caps::verdict::VerdictData,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let grants = &self.version.grants;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| caps::wasi::ctx(grants)),
            table: &mut self.table,
        }
    }
}

/// Linear-memory and table cap of one instance. Growth past the cap traps
/// (rather than failing the grow) so a memory bomb is classified precisely.
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    /// Set when a grow was refused; the call's error is then `MemoryLimit`.
    pub hit: bool,
}

/// Table elements any instance may have (function-reference tables of a
/// Rust component hold a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "memory limit: growing to {desired} bytes exceeds the cap of {} bytes",
                self.max_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The two clocks of the current call, checked whenever the store's epoch
/// deadline passes: guest CPU time (time since `arm` minus time spent in
/// host functions) against the CPU budget, and total time against the
/// call's wall-clock timeout.
///
/// Time is counted in epoch ticks read from the [`TickClock`] (one atomic
/// load per call), so a call is never interrupted before its budget and at
/// most one tick after it. Enforcing the wall-clock timeout here rather
/// than with a tokio timer keeps the timer wheel off the hot path; host
/// functions are synchronous, so a call never awaits anything but guest
/// code. "CPU time" is wall time in guest code: a worker thread preempted
/// by the OS for longer than the budget is charged for it, so budgets
/// below a few milliseconds are unwise on overloaded machines.
pub(crate) struct CpuMeter {
    clock: TickClock,
    tick: Duration,
    start_tick: u64,
    host: Duration,
    budget: Duration,
    wall: Duration,
    budget_ticks: u64,
    wall_ticks: u64,
    /// Set when the CPU deadline interrupted the guest.
    pub exceeded: bool,
    /// Set when the wall-clock timeout interrupted the guest.
    pub timed_out: bool,
}

impl CpuMeter {
    pub fn new(clock: TickClock, tick: Duration) -> Self {
        CpuMeter {
            clock,
            tick,
            start_tick: 0,
            host: Duration::ZERO,
            budget: Duration::ZERO,
            wall: Duration::ZERO,
            budget_ticks: 1,
            wall_ticks: 1,
            exceeded: false,
            timed_out: false,
        }
    }

    /// Starts metering a call with a CPU `budget` and a `wall` timeout;
    /// returns the epoch ticks to set as the store's deadline. The start
    /// tick may be up to one tick old, hence the extra tick: the guest
    /// always gets its full budget.
    pub fn arm(&mut self, budget: Duration, wall: Duration) -> u64 {
        self.start_tick = self.clock.now();
        self.host = Duration::ZERO;
        let wall = wall.max(budget);
        // Budgets rarely change between calls; the tick counts need two
        // 128-bit divisions.
        if (budget, wall) != (self.budget, self.wall) {
            self.budget = budget;
            self.wall = wall;
            self.budget_ticks = ticks(budget, self.tick);
            self.wall_ticks = ticks(wall, self.tick);
        }
        self.exceeded = false;
        self.timed_out = false;
        self.budget_ticks + 1
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn wall(&self) -> Duration {
        self.wall
    }

    /// Adds the time since `since` (a host function's start) to host time.
    pub fn add_host_time(&mut self, since: Instant) {
        self.host += since.elapsed();
    }

    /// What to do at an epoch deadline.
    fn check(&mut self) -> UpdateDeadline {
        let elapsed = self.clock.now().saturating_sub(self.start_tick);
        let host_ticks = (self.host.as_nanos() / self.tick.as_nanos().max(1)) as u64;
        let guest = elapsed.saturating_sub(host_ticks);
        if guest > self.budget_ticks {
            self.exceeded = true;
            return UpdateDeadline::Interrupt;
        }
        if elapsed > self.wall_ticks {
            self.timed_out = true;
            return UpdateDeadline::Interrupt;
        }
        let next = (self.budget_ticks + 1 - guest).min(self.wall_ticks + 1 - elapsed);
        UpdateDeadline::Continue(next.max(1))
    }
}

fn ticks(d: Duration, tick: Duration) -> u64 {
    let tick_ns = tick.as_nanos().max(1);
    (d.as_nanos().div_ceil(tick_ns) as u64).max(1)
}

/// The store's epoch-deadline callback: interrupt when guest CPU time or
/// the wall-clock timeout is spent, otherwise extend the deadline to the
/// nearer of the two.
pub(crate) fn on_epoch_deadline(
    mut ctx: StoreContextMut<'_, HostState>,
) -> wasmtime::Result<UpdateDeadline> {
    Ok(ctx.data_mut().cpu.check())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_never_interrupts_early_and_at_most_a_tick_late() {
        let clock = TickClock::default();
        let mut m = CpuMeter::new(clock.clone(), Duration::from_millis(1));
        let deadline = m.arm(Duration::from_millis(10), Duration::from_millis(50));
        assert_eq!(deadline, 11);
        clock.advance(10);
        assert!(matches!(m.check(), UpdateDeadline::Continue(1)));
        clock.advance(1);
        assert!(matches!(m.check(), UpdateDeadline::Interrupt));
        assert!(m.exceeded && !m.timed_out);

        // Host time is not guest time; the wall clock still runs.
        let deadline = m.arm(Duration::from_millis(10), Duration::from_millis(20));
        assert_eq!(deadline, 11);
        m.host = Duration::from_millis(15);
        clock.advance(18);
        assert!(matches!(m.check(), UpdateDeadline::Continue(3)));
        clock.advance(3);
        assert!(matches!(m.check(), UpdateDeadline::Interrupt));
        assert!(m.timed_out && !m.exceeded);
    }

    #[test]
    fn ticks_round_up() {
        let ms = Duration::from_millis(1);
        assert_eq!(ticks(Duration::from_millis(10), ms), 10);
        assert_eq!(ticks(Duration::from_micros(10_500), ms), 11);
        assert_eq!(ticks(Duration::ZERO, ms), 1);
    }
}
