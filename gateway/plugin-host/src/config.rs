//! Configuration: what the operator writes (`[plugin_host]` and each
//! `[[plugin]]` table of the gateway config). Serde types with unknown keys
//! rejected and the default written on every field; `validate` checks the
//! values once at load, naming the key.
//!
//! This module owns no runtime state; `host` and `plugin` turn these values
//! into engines, instance pools and breakers.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hooks::Hook;

/// Engine-wide settings shared by every plugin (one per gateway process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Directory of precompiled components, keyed by the component's
    /// SHA-256 and the engine configuration. `None` (default): no disk
    /// cache; every load compiles. Its files are native code: each is
    /// authenticated with the key in `cache_key_file` and refused (then
    /// recompiled) when it does not verify.
    pub cache_dir: Option<PathBuf>,
    /// File holding the cache's 32-byte authentication key, created 0600 on
    /// first use. Default `<cache_dir>.key` (beside the directory, not in it).
    pub cache_key_file: Option<PathBuf>,
    /// Epoch tick in milliseconds (default 1): the granularity of the CPU
    /// deadline. A runaway guest is stopped within `deadline_ms` + one tick.
    pub epoch_tick_ms: u64,
    /// Use the pooling instance allocator (default true); if the pool
    /// cannot be reserved (address-space limits) the host falls back to
    /// on-demand allocation and logs a warning.
    pub pooling: bool,
    /// Instance slots in the pool, across all plugins (default 256). Bounds
    /// the number of live plugin instances in the process.
    pub pool_total_instances: u32,
    /// Largest linear memory any instance may have, in MiB (default 64).
    /// Each plugin's `limits.memory_mib` must not exceed it.
    pub max_memory_mib: u32,
    /// Largest component file accepted, in MiB (default 32).
    pub max_component_mib: u32,
    /// Give up waiting for a compilation after this long (default 60 000).
    /// Compilation runs on a blocking thread, never on the message path.
    pub compile_timeout_ms: u64,
    /// How long a reload waits for calls still running on the old version
    /// (default 5 000) before returning; they still finish afterwards.
    pub drain_timeout_ms: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cache_dir: None,
            cache_key_file: None,
            epoch_tick_ms: 1,
            pooling: true,
            pool_total_instances: 256,
            max_memory_mib: 64,
            max_component_mib: 32,
            compile_timeout_ms: 60_000,
            drain_timeout_ms: 5_000,
        }
    }
}

/// One `[[plugin]]` table.
///
/// ```toml
/// [[plugin]]
/// name = "jwt-auth"
/// path = "plugins/jwt_auth.wasm"
/// config = { keys = [{ alg = "HS256", key = "s3cret" }] }
/// limits = { deadline_ms = 5 }
/// grants = { kv = false }
/// failure = { on_connect = "closed" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Unique name: 1-64 of `[a-z0-9_-]`, starting with a letter. Scopes the
    /// plugin's kv keys and names its metrics (`edgesync_plugin_<name>_*`).
    pub name: String,
    /// The component file (`.wasm`).
    pub path: PathBuf,
    /// Handed to `init` as JSON text and readable with `config.get`.
    /// Default: empty table.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// CPU, memory and instance limits.
    #[serde(default)]
    pub limits: Limits,
    /// Host capabilities the plugin may import.
    #[serde(default)]
    pub grants: Grants,
    /// What the gateway does when a hook fails (trap, timeout, breaker).
    #[serde(default)]
    pub failure: FailurePolicies,
    /// Crash-loop breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// Per-plugin limits. Every hook call runs under all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap per instance, in MiB (default 32). Growing past it
    /// traps the call.
    pub memory_mib: u32,
    /// CPU budget per hook call in milliseconds (default 10), measured as
    /// wall time spent in guest code (host calls excluded) and enforced by
    /// epoch interruption. `on-batch` gets one budget per 256 messages.
    pub deadline_ms: u64,
    /// CPU budget for instantiation plus `init` (default 100).
    pub init_deadline_ms: u64,
    /// Wall-clock timeout per hook call in milliseconds, including host
    /// calls and waiting for a free instance (default 250).
    pub timeout_ms: u64,
    /// Warm, initialised instances kept idle (default 4).
    pub pool_size: usize,
    /// Live instances at most, idle or busy (default 32). A call that finds
    /// none free waits, within `timeout_ms`.
    pub max_instances: usize,
    /// An instance is retired after this many calls on average (default
    /// 100 000; each instance draws a number in [n/2, 3n/2]) so a leaking
    /// guest cannot grow forever. 0 disables retirement.
    pub retire_after_calls: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 32,
            deadline_ms: 10,
            init_deadline_ms: 100,
            timeout_ms: 250,
            pool_size: 4,
            max_instances: 32,
            retire_after_calls: 100_000,
        }
    }
}

/// Host capabilities a plugin may import. Checked once at load against the
/// component's imports: importing an ungranted capability fails the load.
/// WASI is always linked with nothing in it but clocks and random (no
/// files, sockets or environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// `log` (default true).
    pub log: bool,
    /// `metrics` (default true).
    pub metrics: bool,
    /// `timers` (default true).
    pub timers: bool,
    /// `kv`, scoped to the plugin (default true).
    pub kv: bool,
    /// `pubsub`: publish anywhere, send to and close any connection
    /// (default **false**).
    pub pubsub: bool,
    /// With `pubsub`: publish (or send) to reserved `$` topics such as `$dlq.…`
    /// (default **false**: the gateway's own topics are not a plugin's to write).
    pub system_topics: bool,
    /// `config` (default true).
    pub config: bool,
    /// `crypto` (default true).
    pub crypto: bool,
    /// Guest stdout/stderr go to the gateway's stdout/stderr (default false:
    /// discarded).
    pub stdio: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            log: true,
            metrics: true,
            timers: true,
            kv: true,
            pubsub: false,
            system_topics: false,
            config: true,
            crypto: true,
            stdio: false,
        }
    }
}

/// What the gateway does when a hook call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Treat the failure as a refusal: deny the connection or subscription,
    /// reject the message (and dead-letter it).
    Closed,
    /// Treat the failure as a pass: allow / pass / accept unchanged.
    Open,
}

/// Failure policy per hook. Every hook fails closed unless the config says otherwise:
/// a plugin that checks something (auth, schema, rate) must not be bypassed by making it
/// fail; `open` is for plugins whose verdict is optional (a transform, a counter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailurePolicies {
    /// Default closed.
    pub on_connect: FailurePolicy,
    /// Default closed.
    pub on_subscribe: FailurePolicy,
    /// Also applies to `on_batch`. Default closed.
    pub on_message: FailurePolicy,
    /// Default closed.
    pub on_write: FailurePolicy,
}

impl Default for FailurePolicies {
    fn default() -> Self {
        FailurePolicies {
            on_connect: FailurePolicy::Closed,
            on_subscribe: FailurePolicy::Closed,
            on_message: FailurePolicy::Closed,
            on_write: FailurePolicy::Closed,
        }
    }
}

impl FailurePolicies {
    /// The policy for `hook`. Hooks without a verdict (`init`,
    /// `on_disconnect`, `on_timer`) report `Open`: nothing to refuse.
    pub fn for_hook(&self, hook: Hook) -> FailurePolicy {
        match hook {
            Hook::OnConnect => self.on_connect,
            Hook::OnSubscribe => self.on_subscribe,
            Hook::OnMessage | Hook::OnBatch => self.on_message,
            Hook::OnWrite => self.on_write,
            Hook::Init | Hook::OnDisconnect | Hook::OnTimer => FailurePolicy::Open,
        }
    }
}

/// Crash-loop breaker: `failures` guest faults (trap, deadline, timeout,
/// memory) within `window_ms` disable the plugin for a backoff that starts
/// at `backoff_ms` and doubles on every re-trip up to `backoff_max_ms`.
/// After the backoff one probe call is let through; success closes the
/// breaker and resets the backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Default 5.
    pub failures: u32,
    /// Default 10 000.
    pub window_ms: u64,
    /// Default 1 000.
    pub backoff_ms: u64,
    /// Default 60 000.
    pub backoff_max_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            window_ms: 10_000,
            backoff_ms: 1_000,
            backoff_max_ms: 60_000,
        }
    }
}

/// A config value out of range, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin config `{key}`: {reason}")]
pub struct ConfigError {
    /// Dotted key, e.g. `plugin.limits.memory_mib`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl PluginConfig {
    /// A config with defaults for everything but name and path.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        PluginConfig {
            name: name.into(),
            path: path.into(),
            config: serde_json::Map::new(),
            limits: Limits::default(),
            grants: Grants::default(),
            failure: FailurePolicies::default(),
            breaker: BreakerConfig::default(),
        }
    }

    /// Checks every value against its bounds and the host's.
    ///
    /// # Errors
    /// The first offending key.
    pub fn validate(&self, host: &HostConfig) -> Result<(), ConfigError> {
        if !name_is_valid(&self.name) {
            return Err(bad(
                "plugin.name",
                "must be 1-64 of [a-z0-9_-], starting with a letter",
            ));
        }
        let l = &self.limits;
        if l.memory_mib == 0 || l.memory_mib > host.max_memory_mib {
            return Err(bad(
                "plugin.limits.memory_mib",
                format!(
                    "must be in 1..={} (plugin_host.max_memory_mib)",
                    host.max_memory_mib
                ),
            ));
        }
        if l.deadline_ms == 0 || l.deadline_ms > 60_000 {
            return Err(bad("plugin.limits.deadline_ms", "must be in 1..=60000"));
        }
        if l.init_deadline_ms == 0 || l.init_deadline_ms > 60_000 {
            return Err(bad(
                "plugin.limits.init_deadline_ms",
                "must be in 1..=60000",
            ));
        }
        if l.timeout_ms < l.deadline_ms || l.timeout_ms > 600_000 {
            return Err(bad(
                "plugin.limits.timeout_ms",
                "must be in deadline_ms..=600000",
            ));
        }
        if l.max_instances == 0 || l.max_instances > 4096 {
            return Err(bad("plugin.limits.max_instances", "must be in 1..=4096"));
        }
        if l.pool_size > l.max_instances {
            return Err(bad(
                "plugin.limits.pool_size",
                "must not exceed max_instances",
            ));
        }
        let b = &self.breaker;
        if b.failures == 0 {
            return Err(bad("plugin.breaker.failures", "must be at least 1"));
        }
        if b.backoff_ms == 0 || b.backoff_max_ms < b.backoff_ms {
            return Err(bad(
                "plugin.breaker.backoff_ms",
                "must be >= 1 and <= backoff_max_ms",
            ));
        }
        Ok(())
    }
}

impl Limits {
    /// `deadline_ms` as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// `init_deadline_ms` as a duration.
    pub fn init_deadline(&self) -> Duration {
        Duration::from_millis(self.init_deadline_ms)
    }

    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// `memory_mib` in bytes.
    pub fn memory_bytes(&self) -> usize {
        (self.memory_mib as usize) << 20
    }
}

/// Plugin names end up in metric names, log fields and kv scopes.
pub fn name_is_valid(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= 64
        && first.is_ascii_lowercase()
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = PluginConfig::new("jwt-auth", "x.wasm");
        assert_eq!(c.validate(&HostConfig::default()), Ok(()));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let json = r#"{"name":"a","path":"a.wasm","limits":{"memroy_mib":4}}"#;
        let err = serde_json::from_str::<PluginConfig>(json)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("memroy_mib"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c = PluginConfig::new("Bad Name", "x.wasm");
        assert_eq!(
            c.validate(&HostConfig::default()).map_err(|e| e.key),
            Err("plugin.name".into())
        );
        c.name = "ok".into();
        c.limits.memory_mib = 1024;
        let key = c.validate(&HostConfig::default()).map_err(|e| e.key);
        assert_eq!(key, Err("plugin.limits.memory_mib".into()));
    }
}
