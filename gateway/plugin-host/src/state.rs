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
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
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

/// Guest CPU time of the current call: wall time since `arm` minus time
/// spent in host functions. Checked on every epoch tick past the deadline.
pub(crate) struct CpuMeter {
    started: Instant,
    host: Duration,
    budget: Duration,
    tick: Duration,
    /// Set when the deadline interrupted the guest.
    pub exceeded: bool,
}

impl CpuMeter {
    pub fn new(tick: Duration) -> Self {
        CpuMeter {
            started: Instant::now(),
            host: Duration::ZERO,
            budget: Duration::ZERO,
            tick,
            exceeded: false,
        }
    }

    /// Starts metering a call with `budget`; returns the epoch ticks to set
    /// as the store's deadline.
    pub fn arm(&mut self, budget: Duration) -> u64 {
        self.started = Instant::now();
        self.host = Duration::ZERO;
        self.budget = budget;
        self.exceeded = false;
        ticks(budget, self.tick)
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Adds the time since `since` (a host function's start) to host time.
    pub fn add_host_time(&mut self, since: Instant) {
        self.host += since.elapsed();
    }

    fn guest_elapsed(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host)
    }
}

fn ticks(d: Duration, tick: Duration) -> u64 {
    let tick_ns = tick.as_nanos().max(1);
    (d.as_nanos().div_ceil(tick_ns) as u64).max(1)
}

/// The store's epoch-deadline callback: interrupt when guest CPU time is
/// spent, otherwise extend the deadline by the remaining budget.
pub(crate) fn on_epoch_deadline(
    mut ctx: StoreContextMut<'_, HostState>,
) -> wasmtime::Result<UpdateDeadline> {
    let cpu = &mut ctx.data_mut().cpu;
    let used = cpu.guest_elapsed();
    if used >= cpu.budget {
        cpu.exceeded = true;
        return Ok(UpdateDeadline::Interrupt);
    }
    Ok(UpdateDeadline::Continue(ticks(cpu.budget - used, cpu.tick)))
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
