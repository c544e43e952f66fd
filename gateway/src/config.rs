//! Configuration: a TOML file, overridden by flags and `EDGESYNC_*` environment
//! variables, turned into typed runtime settings by [`Config::build`].
//!
//! Every key has a default, so an empty file (or none) runs a usable gateway.
//! Unknown keys and bad values are errors that name the key and the line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::broker::PolicyFn;
use crate::outbox::SlowConsumerPolicy;
use crate::store::{FsyncPolicy, Retention, StoreOptions};

mod bridge;
pub use bridge::{
    BridgeConfig, BridgeKind, Direction, MAX_BRIDGE_BATCH, NATS_RESERVED_ROOTS, Urls,
};

/// A configuration problem, with the key (and line, when it came from the file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Invalid {
        key: String,
        /// Where the key is in the file, when it came from one.
        line: Option<usize>,
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        line: None,
        message: message.into(),
    }
}

/// The 1-based line of `key` (dotted, with `[i]` for array entries: `topic[0].pattern`,
/// `limits.idle_timeout_ms`) in TOML `text`, if it is written there.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut span = None;
    let mut value: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
    for segment in key.split('.') {
        if let Some(v) = value {
            match v.get_ref() {
                toml::de::DeValue::Table(t) => table = t,
                _ => return None,
            }
        }
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        span = Some(k.span());
        value = Some(v);
        if let Some(i) = index {
            let toml::de::DeValue::Array(items) = v.get_ref() else {
                return None;
            };
            let item = items.get(i)?;
            span = Some(item.span());
            value = Some(item);
        }
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// The whole file. Field docs give the default and the reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node id (letters, digits, `-`, `_`; ≤ 64 bytes). Default: generated once and kept in the data dir.
    pub node_id: Option<String>,
    /// Data directory for the store, dev certificates and plugin cache. Default `./edgesync-data`.
    pub data_dir: PathBuf,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub store: StoreConfig,
    pub limits: Limits,
    /// Per-topic settings, first matching pattern wins.
    #[serde(rename = "topic")]
    pub topics: Vec<TopicConfig>,
    pub log: LogConfig,
    pub admin: AdminConfig,
    /// WebAssembly plugins (`[[plugin]]`: name, path, config table, limits, grants, failure policy).
    #[serde(rename = "plugin")]
    pub plugins: Vec<edgesync_plugin_host::PluginConfig>,
    /// Which plugins run for which topics (`[[route]] topics = "chat.>" plugins = [...]`).
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Plugin runtime settings (cache dir default `<data_dir>/plugin-cache`, epoch tick, pooling).
    pub plugin_host: edgesync_plugin_host::HostConfig,
    /// Reload plugins whose component file changed (`[plugin_watch] interval_ms`; 0 = off, the default).
    pub plugin_watch: PluginWatch,
    /// Bridges to NATS JetStream (`[[bridge]]`, docs/bridge-jetstream.md).
    #[serde(rename = "bridge")]
    pub bridges: Vec<BridgeConfig>,
    /// The file's text when read by [`Config::from_file`]: [`Config::build`] names the
    /// line of a key it refuses.
    #[serde(skip)]
    pub source: Option<Arc<str>>,
}

/// `[[route]]`: topics matching `topics` run `plugins`, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Topic pattern (`*`, `>`).
    pub topics: String,
    /// Plugin names, in call order.
    pub plugins: Vec<String>,
}

/// Hot reload on file change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PluginWatch {
    /// How often to check every plugin's file (size and modification time), in ms. 0: never.
    pub interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            data_dir: PathBuf::from("edgesync-data"),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            store: StoreConfig::default(),
            limits: Limits::default(),
            topics: Vec::new(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            plugins: Vec::new(),
            routes: Vec::new(),
            plugin_host: edgesync_plugin_host::HostConfig::default(),
            plugin_watch: PluginWatch::default(),
            bridges: Vec::new(),
            source: None,
        }
    }
}

/// Listener addresses; `"off"` disables one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain WebSocket. Default `127.0.0.1:7400` (loopback: plain text never leaves the host by default).
    pub ws: ListenAddr,
    /// WebSocket over TLS. Default `127.0.0.1:7443`.
    pub wss: ListenAddr,
    /// QUIC (UDP). Default `127.0.0.1:7443`.
    pub quic: ListenAddr,
    /// Admin HTTP (metrics, health, API). Default `127.0.0.1:7480`.
    pub admin: ListenAddr,
    /// Web pages (origins, `scheme://host[:port]`, or `"*"`) allowed to open a WebSocket
    /// (`ws`, `wss`). A browser's handshake from any other origin is refused with 403;
    /// clients that send no `Origin` (not browsers) are unaffected. Default empty: on a
    /// loopback listener, pages from loopback origins (`http://localhost:3000`) are
    /// allowed (the development default); on any other listener, no browser page is.
    pub allowed_origins: Vec<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            ws: ListenAddr::on("127.0.0.1:7400"),
            wss: ListenAddr::on("127.0.0.1:7443"),
            quic: ListenAddr::on("127.0.0.1:7443"),
            admin: ListenAddr::on("127.0.0.1:7480"),
            allowed_origins: Vec::new(),
        }
    }
}

/// A listener address or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<SocketAddr>);

impl ListenAddr {
    fn on(s: &str) -> Self {
        ListenAddr(s.parse().ok())
    }

    /// Parse `host:port` or `off`.
    ///
    /// # Errors
    /// A message naming the bad text.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "" | "none" => Ok(ListenAddr(None)),
            other => other
                .parse::<SocketAddr>()
                .map(|a| ListenAddr(Some(a)))
                .map_err(|e| format!("{other:?} is not host:port or \"off\" ({e})")),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ListenAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// TLS for wss and QUIC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. Default: a development certificate generated under `<data_dir>/tls`.
    pub cert: Option<PathBuf>,
    /// PEM private key (required with `cert`).
    pub key: Option<PathBuf>,
    /// PEM CA for client certificates (mTLS) on the QUIC and wss listeners. Default none: no client
    /// certificate is requested. When set, a certificate is requested but optional; one that
    /// verifies against this CA gives the session its `tls_identity` (subject CN, else the first
    /// SAN), which the auth hooks see. An invalid certificate fails the handshake.
    pub client_ca: Option<PathBuf>,
}

/// Durability settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `always`: fdatasync each group commit before acking (default). `interval`: ack after
    /// writing to the OS, fdatasync every `fsync_interval_ms` (power loss can lose that window).
    pub fsync: FsyncMode,
    /// Default 10 ms.
    pub fsync_interval_ms: u64,
    /// Most records per group commit. Default 4096.
    pub max_batch: usize,
    /// Publishes queued for the writer before publishers wait. Default 16384.
    pub queue_depth: usize,
    /// Dedupe window for (client id, client message id). Default 120000 ms.
    pub dedupe_window_ms: u64,
    /// Block cache, MiB. Default 64, at most [`MAX_CACHE_MB`] (in bytes it must fit a `u64`;
    /// a larger value used to wrap silently to a tiny cache).
    pub cache_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: FsyncMode::Always,
            fsync_interval_ms: 10,
            max_batch: 4096,
            queue_depth: 16_384,
            dedupe_window_ms: 120_000,
            cache_mb: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    Always,
    Interval,
}

/// Bounds on every input. Six are announced to clients in `connected` (frame, topic,
/// headers, subscriptions, publish rate, idle timeout); PROTOCOL.md §7 lists the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame accepted from a client, bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Longest topic or pattern, bytes. Default 256.
    pub max_topic_bytes: usize,
    /// Most headers per message. Default 32.
    pub max_headers: usize,
    /// Most header bytes (names + values) per message. Default 8 KiB.
    pub max_header_bytes: usize,
    /// Longest client id and client message id, bytes. Default 128.
    pub max_id_bytes: usize,
    /// Subscriptions per connection. Default 256.
    pub max_subscriptions: usize,
    /// Connections in total. Default 10000. At start the gateway raises its open-file soft
    /// limit to hold `max_connections + max_handshakes` plus a reserve, and refuses to
    /// start when the hard limit cannot.
    pub max_connections: usize,
    /// Connections per remote IP (an IPv6 address counts as its /64). Default 1000.
    pub max_connections_per_ip: usize,
    /// TLS/WebSocket/QUIC handshakes in progress at once, in total. Default 1024. Beyond
    /// it a new TCP connection is closed at once and a QUIC Initial refused; from half of
    /// it on, QUIC asks new peers to prove their address (Retry) first.
    pub max_handshakes: usize,
    /// Handshakes in progress at once per remote IP (IPv6: per /64). Default 256.
    pub max_handshakes_per_ip: usize,
    /// Publishes per second per connection (token bucket, burst of the same size). Default 10000.
    pub publish_rate_per_sec: u32,
    /// Publishes awaiting their durable ack per connection before reading pauses. Default 1024.
    pub max_inflight_publishes: usize,
    /// Close a connection that sent nothing for this long. Default 60000 ms.
    pub idle_timeout_ms: u64,
    /// Send a WebSocket ping after this long without traffic. Default 20000 ms.
    pub ping_interval_ms: u64,
    /// Frames queued per connection before the slow-consumer policy applies. Default 8192.
    pub outbox_frames: usize,
    /// Bytes queued per connection before the slow-consumer policy applies. Default 8 MiB.
    pub outbox_bytes: usize,
    /// Most messages per `history` reply. Default 1000.
    pub max_history: u32,
    /// Most stored bytes per `history` reply (and per catch-up read); a page that would
    /// pass it ends early with `more: true` (at least one message per page, so a page is
    /// at most this or one message). Default 1 MiB.
    pub max_history_bytes: usize,
    /// Longest cursor accepted, bytes. Default 64 KiB.
    pub max_cursor_bytes: usize,
    /// Time allowed for the TLS and WebSocket handshakes together (QUIC: the handshake,
    /// then opening the stream), and again for the first `connect` once the session
    /// starts (nothing before `connect` extends it: not pongs, not `ping`). Default 10000 ms.
    pub handshake_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1 << 20,
            max_topic_bytes: 256,
            max_headers: 32,
            max_header_bytes: 8 << 10,
            max_id_bytes: 128,
            max_subscriptions: 256,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_handshakes: 1024,
            max_handshakes_per_ip: 256,
            publish_rate_per_sec: 10_000,
            max_inflight_publishes: 1024,
            idle_timeout_ms: 60_000,
            ping_interval_ms: 20_000,
            outbox_frames: 8192,
            outbox_bytes: 8 << 20,
            max_history: 1000,
            max_history_bytes: 1 << 20,
            max_cursor_bytes: 64 << 10,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Settings for topics matching `pattern`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic pattern (`*`, `>` allowed).
    pub pattern: String,
    /// Keep at most this many messages. Default unlimited.
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// Keep at most this many payload bytes. Default unlimited.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Drop messages older than this. Default unlimited.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// What a subscriber that cannot keep up gets. Default `gap`.
    #[serde(default)]
    pub slow_consumer: SlowConsumerPolicy,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info,edgesync::store=debug`. Default `info`; `RUST_LOG` overrides.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/v1/*` (and `/metrics` when `protect_metrics`). Default none: the API is
    /// then disabled except `/metrics`, `/healthz`, `/readyz`.
    pub token: Option<String>,
    /// Require the token on `/metrics` too. Default false.
    pub protect_metrics: bool,
}

/// Values from flags and environment that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub node_id: Option<String>,
    pub ws: Option<ListenAddr>,
    pub wss: Option<ListenAddr>,
    pub quic: Option<ListenAddr>,
    pub admin: Option<ListenAddr>,
}

impl Config {
    /// Read and parse a config file.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] with line and column for syntax errors, unknown keys and bad values.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config = Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        config.source = Some(text.into());
        Ok(config)
    }

    /// Parse TOML text.
    ///
    /// # Errors
    /// The parser's message, which names the key, line and column.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Apply flag / environment overrides.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(d) = &o.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(n) = &o.node_id {
            self.node_id = Some(n.clone());
        }
        if let Some(a) = o.ws {
            self.listen.ws = a;
        }
        if let Some(a) = o.wss {
            self.listen.wss = a;
        }
        if let Some(a) = o.quic {
            self.listen.quic = a;
        }
        if let Some(a) = o.admin {
            self.listen.admin = a;
        }
    }

    /// Check cross-field rules and produce runtime settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key, and its line when the config came from a
    /// file that has it.
    pub fn build(&self) -> Result<Settings, ConfigError> {
        self.check().map_err(|e| match (e, &self.source) {
            (ConfigError::Invalid { key, message, .. }, Some(text)) => ConfigError::Invalid {
                line: line_of(text, &key),
                key,
                message,
            },
            (e, _) => e,
        })?;
        Ok(Settings {
            config: Arc::new(self.clone()),
        })
    }

    /// Every rule [`Config::build`] enforces.
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(n) = &self.node_id
            && (n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(invalid(
                "node_id",
                format!("{n:?}: use 1-64 letters, digits, '-' or '_'"),
            ));
        }
        for (i, o) in self.listen.allowed_origins.iter().enumerate() {
            validate_origin(o).map_err(|e| invalid(&format!("listen.allowed_origins[{i}]"), e))?;
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls", "`cert` and `key` must be given together"));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.max_topic_bytes", l.max_topic_bytes),
            ("limits.max_subscriptions", l.max_subscriptions),
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
            ("limits.max_handshakes", l.max_handshakes),
            ("limits.max_handshakes_per_ip", l.max_handshakes_per_ip),
            ("limits.max_inflight_publishes", l.max_inflight_publishes),
            ("limits.outbox_frames", l.outbox_frames),
            ("limits.outbox_bytes", l.outbox_bytes),
            ("limits.max_history_bytes", l.max_history_bytes),
            ("limits.max_id_bytes", l.max_id_bytes),
            ("store.max_batch", self.store.max_batch),
            ("store.queue_depth", self.store.queue_depth),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if l.max_topic_bytes > u16::MAX as usize {
            return Err(invalid("limits.max_topic_bytes", "must be at most 65535"));
        }
        if l.max_id_bytes > 255 {
            return Err(invalid("limits.max_id_bytes", "must be at most 255"));
        }
        if l.publish_rate_per_sec == 0 {
            return Err(invalid(
                "limits.publish_rate_per_sec",
                "must be greater than 0",
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            edgesync_protocol::topic::validate_pattern(&t.pattern, l.max_topic_bytes)
                .map_err(|e| invalid(&format!("topic[{i}].pattern"), e.to_string()))?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            edgesync_protocol::topic::validate_pattern(&r.topics, l.max_topic_bytes)
                .map_err(|e| invalid(&format!("route[{i}].topics"), e.to_string()))?;
            if let Some(name) = r
                .plugins
                .iter()
                .find(|n| !self.plugins.iter().any(|p| &p.name == *n))
            {
                return Err(invalid(
                    &format!("route[{i}].plugins"),
                    format!("no [[plugin]] named {name:?}"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            if !names.insert(&p.name) {
                return Err(invalid(
                    &format!("plugin[{i}].name"),
                    format!("{:?} is defined twice", p.name),
                ));
            }
        }
        if self.store.fsync == FsyncMode::Interval && self.store.fsync_interval_ms == 0 {
            return Err(invalid(
                "store.fsync_interval_ms",
                "must be greater than 0 with fsync = \"interval\"",
            ));
        }
        for (key, v) in [
            ("store.fsync_interval_ms", self.store.fsync_interval_ms),
            ("plugin_watch.interval_ms", self.plugin_watch.interval_ms),
        ] {
            if v > MAX_TIMER_MS {
                return Err(invalid(
                    key,
                    format!("{v}: must be at most {MAX_TIMER_MS} ms"),
                ));
            }
        }
        if self.store.cache_mb > MAX_CACHE_MB {
            return Err(invalid(
                "store.cache_mb",
                format!(
                    "{}: must be at most {MAX_CACHE_MB} MiB",
                    self.store.cache_mb
                ),
            ));
        }
        bridge::check(&self.bridges, l.max_topic_bytes)?;
        check_timers(l)
    }
}

/// Check one `allowed_origins` entry: `"*"` or `scheme://host[:port]` (no path).
///
/// # Errors
/// What is wrong with it.
pub fn validate_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!(
            "{origin:?}: write scheme://host[:port], e.g. https://app.example"
        ));
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err(format!("{origin:?}: bad scheme"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{origin:?}: an origin is scheme://host[:port], without path, query or user"
        ));
    }
    Ok(())
}

/// Largest accepted block cache, MiB (1 TiB): beyond any machine's memory, and its byte
/// count fits a `u64` with room to spare.
pub const MAX_CACHE_MB: u64 = 1 << 20;

/// Longest accepted timer or timeout, ms (a day): far beyond any useful setting, and
/// small enough that `now + timeout` can never overflow an `Instant`.
pub const MAX_TIMER_MS: u64 = 86_400_000;

/// Timers and read bounds that would panic, spin or refuse everything when 0 or out of
/// range: the idle timeout, the ping interval (below the idle timeout, or every quiet
/// client is closed before it is pinged), the handshake timeout, `max_history`,
/// `max_cursor_bytes`.
fn check_timers(l: &Limits) -> Result<(), ConfigError> {
    for (key, v) in [
        ("limits.idle_timeout_ms", l.idle_timeout_ms),
        ("limits.ping_interval_ms", l.ping_interval_ms),
        ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
    ] {
        if v == 0 || v > MAX_TIMER_MS {
            return Err(invalid(key, format!("{v}: must be 1 to {MAX_TIMER_MS} ms")));
        }
    }
    if l.ping_interval_ms >= l.idle_timeout_ms {
        return Err(invalid(
            "limits.ping_interval_ms",
            format!(
                "{}: must be below limits.idle_timeout_ms ({}), or quiet clients are closed before they are pinged",
                l.ping_interval_ms, l.idle_timeout_ms
            ),
        ));
    }
    if l.max_history == 0 {
        return Err(invalid("limits.max_history", "must be greater than 0"));
    }
    if l.max_cursor_bytes == 0 {
        return Err(invalid("limits.max_cursor_bytes", "must be greater than 0"));
    }
    Ok(())
}

/// Runtime settings derived from a valid [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Arc<Config>,
}

impl Settings {
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Store options for this configuration.
    pub fn store_options(&self) -> StoreOptions {
        let c = &self.config;
        let mut o = StoreOptions::new(c.data_dir.clone());
        o.node_id = c.node_id.clone();
        o.fsync = match c.store.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(c.store.fsync_interval_ms))
            }
        };
        o.max_batch = c.store.max_batch;
        o.queue_depth = c.store.queue_depth;
        o.dedupe_window = Duration::from_millis(c.store.dedupe_window_ms);
        o.cache_bytes = c.store.cache_mb << 20;
        let topics = c.topics.clone();
        o.retention = Arc::new(move |topic: &str| {
            topics
                .iter()
                .find(|t| edgesync_protocol::topic::matches(&t.pattern, topic))
                .map(|t| Retention {
                    max_messages: t.max_messages,
                    max_bytes: t.max_bytes,
                    max_age: t.max_age_secs.map(Duration::from_secs),
                })
                .unwrap_or_default()
        });
        o
    }

    /// Slow-consumer policy per topic.
    pub fn slow_consumer_policy(&self) -> PolicyFn {
        let topics = self.config.topics.clone();
        Arc::new(move |topic: &str| {
            topics
                .iter()
                .find(|t| edgesync_protocol::topic::matches(&t.pattern, topic))
                .map(|t| t.slow_consumer)
                .unwrap_or_default()
        })
    }

    /// The effective configuration as TOML, secrets redacted: the admin token, and in
    /// every plugin's `config` table the value of each key whose name suggests a secret
    /// ([`is_secret_key`]), at any depth (security finding 13). Over-redacting a
    /// harmless value is the accepted price of never printing a key.
    pub fn redacted_toml(&self) -> String {
        let mut c = (*self.config).clone();
        if c.admin.token.is_some() {
            c.admin.token = Some(REDACTED.into());
        }
        for b in &mut c.bridges {
            for secret in [&mut b.password, &mut b.token, &mut b.nkey_seed] {
                if secret.is_some() {
                    *secret = Some(REDACTED.into());
                }
            }
        }
        for p in &mut c.plugins {
            for (k, v) in p.config.iter_mut() {
                redact_value(k, v);
            }
        }
        toml::to_string(&c).unwrap_or_default()
    }
}

/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

/// True for a plugin config key that names a secret: it contains `key`, `secret`,
/// `token`, `password`, `passwd`, `credential`, `private` or `auth` (any case).
pub fn is_secret_key(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "credential",
        "private",
        "auth",
    ]
    .iter()
    .any(|w| n.contains(w))
}

fn redact_value(name: &str, v: &mut serde_json::Value) {
    if is_secret_key(name) {
        *v = serde_json::Value::String(REDACTED.into());
        return;
    }
    match v {
        serde_json::Value::Object(m) => {
            for (k, inner) in m.iter_mut() {
                redact_value(k, inner);
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                redact_value(name, inner);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_secrets_are_redacted_at_any_depth() {
        let c = Config::from_toml(
            r#"
[admin]
token = "admin-secret"
[[plugin]]
name = "jwt-auth"
path = "x.wasm"
[plugin.config]
keys = [{ alg = "HS256", key = "hmac-secret" }]
issuer = "https://auth.example"
[plugin.config.upstream]
api_token = "tok-secret"
nested = [{ password = "pw-secret", user = "bob" }]
"#,
        )
        .expect("parse");
        let out = c.build().expect("valid").redacted_toml();
        for secret in ["admin-secret", "hmac-secret", "tok-secret", "pw-secret"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("https://auth.example"), "{out}");
        assert!(out.contains("bob"), "{out}");
        assert!(out.contains(REDACTED), "{out}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").expect("parse");
        assert_eq!(c, Config::default());
        c.build().expect("valid");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::from_toml("data_dir = \"x\"\n\n[limits]\nmax_frame_byte = 3\n")
            .expect_err("unknown");
        assert!(err.contains("max_frame_byte"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml("[store]\nfsync = \"sometimes\"\n").expect_err("bad enum");
        assert!(err.contains("sometimes") && err.contains("line 2"), "{err}");
        let err = Config::from_toml("[listen]\nws = \"nowhere\"\n").expect_err("bad addr");
        assert!(err.contains("nowhere") && err.contains("line 2"), "{err}");
        let c = Config::from_toml("[limits]\nmax_subscriptions = 0\n").expect("parse");
        let err = c.build().expect_err("zero").to_string();
        assert!(err.contains("limits.max_subscriptions"), "{err}");
        let c = Config::from_toml("[[topic]]\npattern = \"a.>.b\"\n").expect("parse");
        assert!(
            c.build()
                .expect_err("bad pattern")
                .to_string()
                .contains("topic[0].pattern")
        );
    }

    #[test]
    fn allowed_origins_are_validated() {
        assert!(validate_origin("*").is_ok());
        assert!(validate_origin("https://app.example:8443").is_ok());
        assert!(validate_origin("app.example").is_err());
        assert!(validate_origin("https://app.example/path").is_err());
        assert!(validate_origin("https://").is_err());
        let c = Config::from_toml("[listen]\nallowed_origins = [\"https://a.example/x\"]\n")
            .expect("parse");
        let err = c.build().expect_err("a path").to_string();
        assert!(err.contains("listen.allowed_origins[0]"), "{err}");
    }

    #[test]
    fn out_of_range_timers_are_refused_with_key_and_line() {
        for (text, key, line) in [
            (
                "[limits]\nidle_timeout_ms = 0\n",
                "limits.idle_timeout_ms",
                2,
            ),
            (
                "node_id = \"n\"\n[limits]\nmax_frame_bytes = 10\nidle_timeout_ms = 18446744073709551615\n",
                "limits.idle_timeout_ms",
                4,
            ),
            (
                "[limits]\nping_interval_ms = 0\n",
                "limits.ping_interval_ms",
                2,
            ),
            (
                "[limits]\nidle_timeout_ms = 1000\nping_interval_ms = 1000\n",
                "limits.ping_interval_ms",
                3,
            ),
            (
                "\n[limits]\nhandshake_timeout_ms = 0\n",
                "limits.handshake_timeout_ms",
                3,
            ),
            ("[limits]\nmax_history = 0\n", "limits.max_history", 2),
            (
                "[limits]\nmax_cursor_bytes = 0\n",
                "limits.max_cursor_bytes",
                2,
            ),
            (
                "[plugin_watch]\ninterval_ms = 18446744073709551615\n",
                "plugin_watch.interval_ms",
                2,
            ),
            (
                "[store]\nfsync_interval_ms = 99999999999\n",
                "store.fsync_interval_ms",
                2,
            ),
            // The config fuzz target's property (settings say what the file says):
            // 2^44 MiB is 2^64 bytes, which wrapped to a cache of 0 bytes.
            ("[store]\ncache_mb = 17592186044416\n", "store.cache_mb", 2),
            (
                "[limits]\nmax_subscriptions = 0\n",
                "limits.max_subscriptions",
                2,
            ),
            (
                "[[topic]]\npattern = \"a\"\n[[topic]]\npattern = \"a.>.b\"\n",
                "topic[1].pattern",
                4,
            ),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("edgesync.toml");
            std::fs::write(&path, text).expect("write");
            let c = Config::from_file(&path).expect("parses");
            let err = std::panic::catch_unwind(|| c.build())
                .expect("never a panic")
                .expect_err(text);
            match &err {
                ConfigError::Invalid {
                    key: k, line: l, ..
                } => {
                    assert_eq!((k.as_str(), *l), (key, Some(line)), "{text}");
                }
                other => panic!("{text}: {other}"),
            }
            let shown = err.to_string();
            assert!(
                shown.contains(key) && shown.contains(&format!("line {line}")),
                "{shown}"
            );
        }
        // The defaults, and a ping just below the idle timeout, are fine.
        let c = Config::from_toml("[limits]\nidle_timeout_ms = 1000\nping_interval_ms = 999\n")
            .expect("parses");
        c.build().expect("valid");
    }

    #[test]
    fn overrides_win_and_off_disables() {
        let mut c =
            Config::from_toml("[listen]\nws = \"127.0.0.1:1\"\nwss = \"off\"\n").expect("parse");
        assert_eq!(c.listen.wss, ListenAddr(None));
        c.apply(&Overrides {
            ws: Some(ListenAddr::parse("127.0.0.1:2").expect("addr")),
            ..Overrides::default()
        });
        assert_eq!(c.listen.ws.0.map(|a| a.port()), Some(2));
    }

    #[test]
    fn retention_and_policy_follow_first_matching_pattern() {
        let c = Config::from_toml(
            "[[topic]]\npattern = \"chat.>\"\nmax_messages = 5\nslow_consumer = \"disconnect\"\n[[topic]]\npattern = \">\"\nmax_age_secs = 60\n",
        )
        .expect("parse");
        let s = c.build().expect("valid");
        let o = s.store_options();
        assert_eq!((o.retention)("chat.x").max_messages, Some(5));
        assert_eq!(
            (o.retention)("other").max_age,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            (s.slow_consumer_policy())("chat.x"),
            SlowConsumerPolicy::Disconnect
        );
        assert_eq!((s.slow_consumer_policy())("other"), SlowConsumerPolicy::Gap);
    }
}
