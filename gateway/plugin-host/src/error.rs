//! Errors of the plugin layer, classified by source (guest fault, operator
//! config, host) so the gateway can apply the failure policy, feed the
//! breaker and decide about dead-lettering without string matching.

use std::time::Duration;

use crate::hooks::Hook;

/// Why a plugin could not be loaded or a hook call did not produce a verdict.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The component does not export the hook's family; the host did not
    /// touch an instance. Not a fault: the gateway skips the plugin.
    #[error("plugin `{plugin}` does not export {hook} (family {family})", family = hook.family())]
    NotExported {
        /// Plugin name.
        plugin: String,
        /// The hook asked for.
        hook: Hook,
    },
    /// The guest trapped (panic, unreachable, bad memory access, stack
    /// overflow). The instance was discarded.
    #[error("plugin `{plugin}` trapped in {hook}: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The hook that trapped.
        hook: Hook,
        /// The trap and its backtrace, as wasmtime reports them (for the operator's log).
        message: String,
        /// The trap's cause alone, without the backtrace (for dead letters and
        /// anything else another client may read: a backtrace shows the guest's code).
        cause: String,
    },
    /// The guest used more than its CPU budget; stopped by epoch
    /// interruption. The instance was discarded.
    #[error("plugin `{plugin}` exceeded its {budget:?} CPU deadline in {hook}")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// The hook.
        hook: Hook,
        /// The budget it exceeded.
        budget: Duration,
    },
    /// The call (including host calls and waiting for an instance) took
    /// longer than the wall-clock timeout. The instance was discarded.
    #[error("plugin `{plugin}` timed out after {timeout:?} in {hook}")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The hook.
        hook: Hook,
        /// The timeout.
        timeout: Duration,
    },
    /// The guest tried to grow its memory past the cap. The instance was
    /// discarded.
    #[error("plugin `{plugin}` hit its {limit_bytes} byte memory limit in {hook}")]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// The hook.
        hook: Hook,
        /// The cap.
        limit_bytes: usize,
    },
    /// The crash-loop breaker is open: the plugin faulted repeatedly and is
    /// disabled for `retry_in`.
    #[error("plugin `{plugin}` is disabled by its crash-loop breaker for another {retry_in:?}")]
    Disabled {
        /// Plugin name.
        plugin: String,
        /// Until the next probe call is allowed.
        retry_in: Duration,
    },
    /// The guest's `init` returned an error (or faulted).
    #[error("plugin `{plugin}` init failed: {reason}")]
    Init {
        /// Plugin name.
        plugin: String,
        /// The guest's error string, or the fault.
        reason: String,
    },
    /// The guest broke the contract (e.g. `on-batch` returned the wrong
    /// number of verdicts). Counted as a fault.
    #[error("plugin `{plugin}` broke the contract in {hook}: {reason}")]
    Contract {
        /// Plugin name.
        plugin: String,
        /// The hook.
        hook: Hook,
        /// What was wrong.
        reason: String,
    },
    /// The component could not be loaded: unreadable, too large, not a
    /// component, fails to compile, does not match the contract, imports an
    /// ungranted capability, or the config is invalid.
    #[error("plugin `{plugin}` cannot be loaded: {reason}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// Why, naming the file, key or import.
        reason: String,
    },
    /// The host itself failed (engine, instance pool exhausted, a task
    /// panicked). Not the guest's fault.
    #[error("plugin `{plugin}`: host error in {hook}: {reason}")]
    Host {
        /// Plugin name.
        plugin: String,
        /// The hook.
        hook: Hook,
        /// What failed.
        reason: String,
    },
}

/// The class of a [`PluginError`], for metrics labels and policy decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`PluginError::NotExported`]
    NotExported,
    /// [`PluginError::Trap`]
    Trap,
    /// [`PluginError::Deadline`]
    Deadline,
    /// [`PluginError::Timeout`]
    Timeout,
    /// [`PluginError::MemoryLimit`]
    MemoryLimit,
    /// [`PluginError::Disabled`]
    Disabled,
    /// [`PluginError::Init`]
    Init,
    /// [`PluginError::Contract`]
    Contract,
    /// [`PluginError::Load`]
    Load,
    /// [`PluginError::Host`]
    Host,
}

impl ErrorKind {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotExported => "not_exported",
            ErrorKind::Trap => "trap",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::Disabled => "disabled",
            ErrorKind::Init => "init",
            ErrorKind::Contract => "contract",
            ErrorKind::Load => "load",
            ErrorKind::Host => "host",
        }
    }
}

impl PluginError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PluginError::NotExported { .. } => ErrorKind::NotExported,
            PluginError::Trap { .. } => ErrorKind::Trap,
            PluginError::Deadline { .. } => ErrorKind::Deadline,
            PluginError::Timeout { .. } => ErrorKind::Timeout,
            PluginError::MemoryLimit { .. } => ErrorKind::MemoryLimit,
            PluginError::Disabled { .. } => ErrorKind::Disabled,
            PluginError::Init { .. } => ErrorKind::Init,
            PluginError::Contract { .. } => ErrorKind::Contract,
            PluginError::Load { .. } => ErrorKind::Load,
            PluginError::Host { .. } => ErrorKind::Host,
        }
    }

    /// Whether the guest misbehaved (trap, deadline, timeout, memory,
    /// contract, failed init). These feed the crash-loop breaker, and a
    /// message that causes one is a dead-letter candidate.
    pub fn is_guest_fault(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Trap
                | ErrorKind::Deadline
                | ErrorKind::Timeout
                | ErrorKind::MemoryLimit
                | ErrorKind::Contract
                | ErrorKind::Init
        )
    }

    /// The error without a backtrace: what a dead letter carries. The same as the
    /// `Display` text except for a trap, whose wasm backtrace (the guest's function
    /// names and code offsets) is left to the operator's log.
    pub fn summary(&self) -> String {
        match self {
            PluginError::Trap {
                plugin,
                hook,
                cause,
                ..
            } => format!("plugin `{plugin}` trapped in {hook}: {cause}"),
            other => other.to_string(),
        }
    }

    /// Whether calling again later may succeed (the breaker closes, the
    /// host recovers). A fault caused by the input itself will recur.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Disabled | ErrorKind::Host | ErrorKind::Timeout
        )
    }

    pub(crate) fn load(plugin: &str, reason: impl Into<String>) -> Self {
        PluginError::Load {
            plugin: plugin.to_string(),
            reason: reason.into(),
        }
    }
}
