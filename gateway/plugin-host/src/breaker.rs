//! The crash-loop breaker: an I/O-free state machine fed with `now`.
//!
//! Closed → (`failures` faults within `window`) → Open for `backoff` →
//! HalfOpen (calls allowed as probes) → a success closes it and resets the
//! backoff; a fault re-opens it with the backoff doubled, up to the max.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

// tokio's clock (the system clock unless a test pauses it): the backoff is then testable
// on paused time.
use tokio::time::Instant;

use parking_lot::Mutex;

use crate::config::BreakerConfig;

/// A breaker behind a lock, with a lock-free fast path: while no fault is
/// being counted ("quiet"), admitting and recording success touch one
/// atomic and no clock.
pub(crate) struct BreakerCell {
    quiet: AtomicBool,
    inner: Mutex<Breaker>,
}

impl BreakerCell {
    pub(crate) fn new(c: &BreakerConfig) -> Self {
        BreakerCell {
            quiet: AtomicBool::new(true),
            inner: Mutex::new(Breaker::new(c, Instant::now())),
        }
    }

    /// Whether a call may run; `Err(retry_in)` while open.
    pub(crate) fn admit(&self) -> Result<(), Duration> {
        if self.quiet.load(Ordering::Acquire) {
            return Ok(());
        }
        self.inner.lock().admit(Instant::now())
    }

    pub(crate) fn on_success(&self) {
        if self.quiet.load(Ordering::Acquire) {
            return;
        }
        let mut b = self.inner.lock();
        b.on_success();
        if b.is_quiet(Instant::now()) {
            self.quiet.store(true, Ordering::Release);
        }
    }

    /// Records a guest fault; returns whether the breaker tripped.
    pub(crate) fn on_fault(&self) -> bool {
        let mut b = self.inner.lock();
        self.quiet.store(false, Ordering::Release);
        b.on_fault(Instant::now())
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.inner.lock().state()
    }
}

/// Breaker position, as reported by `Plugin::breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; faults are being counted.
    Closed,
    /// Calls are refused until the instant.
    Open {
        /// When the next probe is allowed.
        until: Instant,
    },
    /// The backoff elapsed; calls are let through as probes.
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    failures: u32,
    window: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    state: BreakerState,
    /// Faults counted in the current window and when it started.
    count: u32,
    window_start: Instant,
    /// The backoff the next trip will use.
    backoff: Duration,
}

impl Breaker {
    pub(crate) fn new(c: &BreakerConfig, now: Instant) -> Self {
        Breaker {
            failures: c.failures.max(1),
            window: Duration::from_millis(c.window_ms),
            backoff_initial: Duration::from_millis(c.backoff_ms),
            backoff_max: Duration::from_millis(c.backoff_max_ms),
            state: BreakerState::Closed,
            count: 0,
            window_start: now,
            backoff: Duration::from_millis(c.backoff_ms),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// Closed with no fault counted in the current window.
    fn is_quiet(&self, now: Instant) -> bool {
        self.state == BreakerState::Closed
            && (self.count == 0 || now.duration_since(self.window_start) > self.window)
    }

    /// Whether a call may run at `now`; `Err(retry_in)` while open.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        if let BreakerState::Open { until } = self.state {
            if now < until {
                return Err(until - now);
            }
            self.state = BreakerState::HalfOpen;
        }
        Ok(())
    }

    pub(crate) fn on_success(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Closed;
            self.backoff = self.backoff_initial;
            self.count = 0;
        }
    }

    /// Records a guest fault; returns whether the breaker tripped (opened).
    pub(crate) fn on_fault(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen => {
                self.trip(now);
                true
            }
            BreakerState::Closed => {
                if now.duration_since(self.window_start) > self.window {
                    self.window_start = now;
                    self.count = 0;
                }
                self.count += 1;
                if self.count >= self.failures {
                    self.trip(now);
                    return true;
                }
                false
            }
        }
    }

    fn trip(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(self.backoff_max);
        self.count = 0;
        self.window_start = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failures: 3,
            window_ms: 1000,
            backoff_ms: 100,
            backoff_max_ms: 250,
        }
    }

    #[test]
    fn trips_after_failures_in_window_and_backs_off() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        assert!(!b.on_fault(t0));
        assert!(!b.on_fault(t0));
        assert!(b.on_fault(t0));
        assert_eq!(
            b.admit(t0 + Duration::from_millis(50)),
            Err(Duration::from_millis(50))
        );
        // Backoff elapsed: probe allowed; a fault re-opens with 200 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.admit(t1), Ok(()));
        assert!(b.on_fault(t1));
        assert!(b.admit(t1 + Duration::from_millis(199)).is_err());
        // Capped at 250 ms.
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(b.admit(t2), Ok(()));
        assert!(b.on_fault(t2));
        assert!(b.admit(t2 + Duration::from_millis(249)).is_err());
        let t3 = t2 + Duration::from_millis(250);
        assert_eq!(b.admit(t3), Ok(()));
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn faults_outside_the_window_do_not_accumulate() {
        let t0 = Instant::now();
        let mut b = Breaker::new(&cfg(), t0);
        b.on_fault(t0);
        b.on_fault(t0);
        assert!(!b.on_fault(t0 + Duration::from_millis(1500)));
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
