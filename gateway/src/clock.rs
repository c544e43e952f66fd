//! Wall-clock time, injected.
//!
//! Everything that stamps or ages data by the wall clock — the store's HLC, the dedupe
//! window, retention by age, plugin kv TTLs, connection listings — reads it through a
//! [`Clock`], so tests and the replication simulation can run on a clock they move by
//! hand ([`ManualClock`]). Timers that only measure intervals (session idle and ping
//! deadlines) use `tokio::time`, which `tokio::time::pause()` already controls.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch. May jump (NTP); callers that need monotonic
    /// values (the HLC) keep their own maximum.
    fn unix_ms(&self) -> u64;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The system clock as a shared handle.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to (tests, simulation).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `unix_ms`.
    pub fn new(unix_ms: u64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicU64::new(unix_ms)))
    }

    /// Move the clock forward (or backward, to test jumps) by `delta_ms`.
    pub fn advance(&self, delta_ms: i64) {
        if delta_ms >= 0 {
            self.0.fetch_add(delta_ms as u64, Ordering::SeqCst);
        } else {
            self.0.fetch_sub(delta_ms.unsigned_abs(), Ordering::SeqCst);
        }
    }

    /// Set the reading.
    pub fn set(&self, unix_ms: u64) {
        self.0.store(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
