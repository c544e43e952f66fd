//! The wasmtime engine every plugin shares, and the epoch ticker that
//! drives CPU deadlines.
//!
//! Engine settings: Cranelift, component model, epoch interruption,
//! component-model concurrency off (it costs 2-3x per call and hooks are
//! synchronous), pooling allocator sized by [`HostConfig`] with a fallback
//! to on-demand allocation when the pool cannot be reserved.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::HostConfig;

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots: fast instantiation, bounded memory.
    Pooling,
    /// mmap per instance (pooling disabled or could not be reserved).
    OnDemand,
}

/// Builds the engine, pooling first, then on-demand.
///
/// # Errors
/// When even the on-demand engine cannot be created.
pub(crate) fn build(config: &HostConfig) -> wasmtime::Result<(Engine, Allocator)> {
    if config.pooling {
        let mut c = base_config();
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(config)));
        match Engine::new(&c) {
            Ok(engine) => return Ok((engine, Allocator::Pooling)),
            Err(e) => tracing::warn!(
                error = %e,
                "plugin host: pooling allocator unavailable, falling back to on-demand allocation"
            ),
        }
    }
    let engine = Engine::new(&base_config())?;
    Ok((engine, Allocator::OnDemand))
}

fn base_config() -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.concurrency_support(false);
    c.epoch_interruption(true);
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Guests get a generous but bounded stack; deep recursion traps.
    c.max_wasm_stack(512 << 10);
    // No guest call runs on a fiber (hooks are called synchronously), but wasmtime's
    // `async` feature is compiled in (wasmtime-wasi-io requires it), and with it the
    // pooling allocator reserves a fiber stack of this size per `total_stacks` slot.
    // Keep that reservation small; it must stay at least `max_wasm_stack`.
    c.async_stack_size(1 << 20);
    c
}

fn pooling(config: &HostConfig) -> PoolingAllocationConfig {
    let n = config.pool_total_instances.max(1);
    let mut p = PoolingAllocationConfig::new();
    // A Rust wasm32-wasip2 component holds one main core module plus a few
    // small shim modules (indirect-call tables), one linear memory. A
    // componentize-py (Python) component holds one core module per shared
    // library (libc, libpython, each native extension): 14 for the bare
    // template, so the per-component bound leaves room for extensions. It is
    // only checked at load; the totals are what the pool reserves.
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_core_instances_per_component(32)
        .max_memories_per_component(2)
        .max_tables_per_component(8)
        .max_memory_size((config.max_memory_mib as usize) << 20)
        // Reset a freed slot by rewriting only the pages the guest dirtied
        // (found with Linux's PAGEMAP_SCAN ioctl, kernel 6.7+), up to
        // `KEEP_RESIDENT_SCANNED`, instead of `madvise` plus a page fault
        // per touched page at the next instantiation — that was most of an
        // instantiation's cost. Without the ioctl wasmtime would `memset`
        // the first `keep_resident` bytes whether dirty or not, so the
        // amount stays small there.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(if PoolingAllocationConfig::is_pagemap_scan_available() {
            KEEP_RESIDENT_SCANNED
        } else {
            64 << 10
        })
        .table_keep_resident(16 << 10);
    p
}

/// Dirty bytes of a freed linear memory reset in place (and kept resident)
/// when PAGEMAP_SCAN is available; dirty pages past it are decommitted. A
/// Rust guest's working set (stack top, data, first heap pages) is a few
/// dozen pages.
const KEEP_RESIDENT_SCANNED: usize = 1 << 20;

/// Ticks since the host started, readable with one atomic load: the time
/// base of the CPU meter (an `Instant::now()` per call costs more than
/// the rest of the bookkeeping on some virtual machines).
#[derive(Clone, Default)]
pub(crate) struct TickClock(Arc<AtomicU64>);

impl TickClock {
    pub(crate) fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn advance(&self, ticks: u64) {
        self.0.fetch_add(ticks, Ordering::AcqRel);
    }
}

/// Increments the engine's epoch every tick on a dedicated thread; stops
/// when dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine` and `clock`. The clock is advanced first, so
    /// when a deadline fires the clock already shows the tick that fired it.
    pub(crate) fn start(
        engine: &Engine,
        clock: TickClock,
        tick: Duration,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("edgesync-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    match weak.upgrade() {
                        Some(engine) => {
                            clock.advance(1);
                            engine.increment_epoch();
                        }
                        None => return,
                    }
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
