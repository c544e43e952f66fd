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
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub cpu: CpuMeter,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
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
/// deadline passes: guest CPU time (wall time since `arm` minus time spent
/// in host functions) against the CPU budget, and wall time against the
/// call's timeout. Enforcing the wall-clock timeout here rather than with a
/// tokio timer keeps the timer wheel off the hot path; host functions are
/// synchronous, so a call never waits on anything else.
pub(crate) struct CpuMeter {
    started: Instant,
    host: Duration,
    budget: Duration,
    wall: Duration,
    tick: Duration,
    /// Set when the CPU deadline interrupted the guest.
    pub exceeded: bool,
    /// Set when the wall-clock timeout interrupted the guest.
    pub timed_out: bool,
}

impl CpuMeter {
    pub fn new(tick: Duration) -> Self {
        CpuMeter {
            started: Instant::now(),
            host: Duration::ZERO,
            budget: Duration::ZERO,
            wall: Duration::ZERO,
            tick,
            exceeded: false,
            timed_out: false,
        }
    }

    /// Starts metering a call with a CPU `budget` and a `wall` timeout;
    /// returns the epoch ticks to set as the store's deadline.
    pub fn arm(&mut self, budget: Duration, wall: Duration) -> u64 {
        self.started = Instant::now();
        self.host = Duration::ZERO;
        self.budget = budget;
        self.wall = wall.max(budget);
        self.exceeded = false;
        self.timed_out = false;
        ticks(budget, self.tick)
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
    let cpu = &mut ctx.data_mut().cpu;
    let wall_used = cpu.started.elapsed();
    let used = wall_used.saturating_sub(cpu.host);
    if used >= cpu.budget {
        cpu.exceeded = true;
        return Ok(UpdateDeadline::Interrupt);
    }
    if wall_used >= cpu.wall {
        cpu.timed_out = true;
        return Ok(UpdateDeadline::Interrupt);
    }
    let next = (cpu.budget - used).min(cpu.wall - wall_used);
    Ok(UpdateDeadline::Continue(ticks(next, cpu.tick)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        let ms = Duration::from_millis(1);
        assert_eq!(ticks(Duration::from_millis(10), ms), 10);
        assert_eq!(ticks(Duration::from_micros(10_500), ms), 11);
        assert_eq!(ticks(Duration::ZERO, ms), 1);
    }
}
