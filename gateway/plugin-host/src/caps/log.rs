//! `log`: guest log lines into `tracing`, tagged with the plugin name.
//! Bounded: lines are truncated to 4 KiB and each plugin may log at most
//! [`LINES_PER_SECOND`] lines per second; the excess is dropped and counted.
//! Escaped: control characters (newlines, carriage returns, ESC) and Unicode line
//! separators and direction overrides become `\n`, `\r` or `\u{..}`, so a guest (or
//! the client data it logs) cannot forge log lines or terminal output (security
//! finding 19).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::log::{self, Level};
use crate::state::HostState;

/// Longest log line kept, in bytes.
pub(crate) const MAX_LINE_BYTES: usize = 4096;
/// Lines per second per plugin before dropping.
pub(crate) const LINES_PER_SECOND: u64 = 200;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// Per-plugin rate limit: a one-second window and a count.
#[derive(Default)]
pub(crate) struct LogLimiter {
    window_s: AtomicU64,
    count: AtomicU64,
    /// Lines dropped by the limit since the plugin was loaded.
    pub dropped: AtomicU64,
}

impl LogLimiter {
    fn admit(&self) -> bool {
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.window_s.swap(now_s, Ordering::Relaxed) != now_s {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// `s` cut to at most `max` bytes on a char boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` with every character that could start a new log line or rewrite the terminal
/// escaped; borrowed unchanged when there is none.
pub(crate) fn escape_line(s: &str) -> Cow<'_, str> {
    let needs = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}')
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

impl log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if !self.plugin.log.admit() {
            return;
        }
        let plugin = self.plugin.name.as_str();
        let msg = escape_line(truncate(&message, MAX_LINE_BYTES));
        match level {
            Level::Trace => tracing::trace!(plugin, "{msg}"),
            Level::Debug => tracing::debug!(plugin, "{msg}"),
            Level::Info => tracing::info!(plugin, "{msg}"),
            Level::Warn => tracing::warn!(plugin, "{msg}"),
            // A plugin's ERROR is not necessarily an operator's: keep it at
            // WARN in the gateway log, marked as coming from the guest.
            Level::Error => tracing::warn!(plugin, guest_level = "error", "{msg}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn line_breaks_and_terminal_controls_are_escaped() {
        assert!(matches!(escape_line("plain text é"), Cow::Borrowed(_)));
        assert_eq!(
            escape_line("ok\n2026-12-05 INFO admin login\r\u{1b}[2J\u{202e}x"),
            "ok\\n2026-12-05 INFO admin login\\r\\u{1b}[2J\\u{202e}x"
        );
        assert_eq!(escape_line("a\u{2028}b"), "a\\u{2028}b");
    }
}
