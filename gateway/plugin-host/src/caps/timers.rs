//! `timers`: named one-shot and repeating timers kept per plugin (not per
//! instance: instances come and go) and delivered through `on-timer` by the
//! plugin's timer task (`plugin::run_timers`).
//!
//! Setting a timer is idempotent by name — every pooled instance runs
//! `init` and may set the same timer — so setting an existing name with the
//! same kind and period keeps its schedule. Bounded: [`MAX_TIMERS`] per
//! plugin, periods in [[`MIN_INTERVAL`], [`MAX_DELAY`]].

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::timers;
use crate::state::HostState;

/// Timers per plugin.
pub(crate) const MAX_TIMERS: usize = 64;
/// Shortest repeat interval.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest delay or interval (30 days).
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_NAME_BYTES: usize = 64;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    timers::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

#[derive(Debug, Clone, PartialEq)]
struct Timer {
    /// `Some(period)` for repeating timers.
    repeat: Option<Duration>,
    due: Instant,
    /// The plugin version that last set it; a reload drops timers the new
    /// version did not set again.
    version: u64,
}

/// One plugin's timers.
#[derive(Default)]
pub(crate) struct TimerTable {
    timers: Mutex<BTreeMap<String, Timer>>,
    /// Wakes the timer task when the table changes.
    pub changed: Notify,
}

impl TimerTable {
    fn set(&self, name: &str, period: Duration, repeat: bool, version: u64) -> Result<(), String> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(format!("timer name must be 1-{MAX_NAME_BYTES} bytes"));
        }
        if period > MAX_DELAY || (repeat && period < MIN_INTERVAL) {
            return Err(format!(
                "timer period must be in {}..={} ms",
                if repeat { MIN_INTERVAL.as_millis() } else { 0 },
                MAX_DELAY.as_millis()
            ));
        }
        let repeat = repeat.then_some(period);
        let mut t = self.timers.lock();
        if let Some(existing) = t.get_mut(name) {
            // An instance of an older version (still draining after a
            // reload) must not override what the newer version set.
            if existing.version > version {
                return Ok(());
            }
            if existing.repeat == repeat && repeat.is_some() {
                existing.version = version;
                return Ok(());
            }
        } else if t.len() >= MAX_TIMERS {
            return Err(format!("at most {MAX_TIMERS} timers per plugin"));
        }
        t.insert(
            name.to_string(),
            Timer {
                repeat,
                due: Instant::now() + period,
                version,
            },
        );
        drop(t);
        self.changed.notify_one();
        Ok(())
    }

    fn cancel(&self, name: &str) -> bool {
        let removed = self.timers.lock().remove(name).is_some();
        if removed {
            self.changed.notify_one();
        }
        removed
    }

    /// The earliest due time.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.timers.lock().values().map(|t| t.due).min()
    }

    /// Names of the timers due at `now`, in due order; one-shots are
    /// removed, repeats rescheduled (skipping missed periods, no bursts).
    pub(crate) fn take_due(&self, now: Instant) -> Vec<String> {
        let mut t = self.timers.lock();
        let mut due: Vec<(Instant, String)> = t
            .iter()
            .filter(|(_, v)| v.due <= now)
            .map(|(k, v)| (v.due, k.clone()))
            .collect();
        due.sort();
        for (_, name) in &due {
            let Some(timer) = t.get_mut(name) else {
                continue;
            };
            match timer.repeat {
                Some(period) => {
                    timer.due += period;
                    if timer.due <= now {
                        timer.due = now + period;
                    }
                }
                None => {
                    t.remove(name);
                }
            }
        }
        due.into_iter().map(|(_, n)| n).collect()
    }

    /// Drops timers last set by a version other than `version` (after a
    /// reload to `version`).
    pub(crate) fn retain_version(&self, version: u64) {
        self.timers.lock().retain(|_, t| t.version == version);
        self.changed.notify_one();
    }

    /// Names of the current timers.
    pub(crate) fn names(&self) -> Vec<String> {
        self.timers.lock().keys().cloned().collect()
    }
}

impl timers::Host for HostState {
    fn set_once(&mut self, name: String, delay_ms: u64) -> Result<(), String> {
        let v = self.version.id;
        self.plugin
            .timers
            .set(&name, Duration::from_millis(delay_ms), false, v)
    }

    fn set_repeat(&mut self, name: String, interval_ms: u64) -> Result<(), String> {
        let v = self.version.id;
        self.plugin
            .timers
            .set(&name, Duration::from_millis(interval_ms), true, v)
    }

    fn cancel(&mut self, name: String) -> bool {
        self.plugin.timers.cancel(&name)
    }

    fn now(&mut self) -> u64 {
        self.plugin.services.now_unix_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idempotent_repeat_and_one_shot() {
        let t = TimerTable::default();
        t.set("tick", Duration::from_millis(100), true, 1).ok();
        let due = t.next_due();
        tokio::time::advance(Duration::from_millis(50)).await;
        // Same name, same period: schedule kept.
        t.set("tick", Duration::from_millis(100), true, 2).ok();
        assert_eq!(t.next_due(), due);
        t.set("once", Duration::from_millis(10), false, 2).ok();
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            t.take_due(Instant::now()),
            vec!["once".to_string(), "tick".to_string()]
        );
        assert_eq!(t.names(), vec!["tick".to_string()]);
        // An older version cannot override a newer one's timer.
        t.set("tick", Duration::from_millis(500), true, 1).ok();
        assert!(t.next_due() <= Some(Instant::now() + Duration::from_millis(100)));
        t.retain_version(3);
        assert!(t.names().is_empty());
        assert!(t.set("x", Duration::from_millis(1), true, 1).is_err());
    }
}
