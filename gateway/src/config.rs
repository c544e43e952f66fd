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
    /// Replication: this gateway's cluster (`[cluster]`: id, CA). Default none: no peer links.
    pub cluster: Option<ClusterConfig>,
    /// Replication peers (`[[peer]]`: url, direction, topics, dial); needs `[cluster]`.
    #[serde(rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// Bridges to NATS JetStream (`[[bridge]]`, docs/bridge-jetstream.md).
    #[serde(rename = "bridge")]
    pub bridges: Vec<BridgeConfig>,
    /// Queue groups served by one node of a cluster (`[[queue]] group, owner`;
    /// docs/queues.md "Replication").
    #[serde(rename = "queue")]
    pub queues: Vec<QueueConfig>,
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

/// `[[queue]]`: the node of the cluster that serves queue group `group` — it hands
/// out the group's messages of every origin; members on other nodes are refused.
/// A group without an entry is served by every node for the messages that were
/// first stored on it (docs/queues.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub group: String,
    /// Node id of the serving gateway.
    pub owner: String,
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
            cluster: None,
            peers: Vec::new(),
            bridges: Vec::new(),
            queues: Vec::new(),
            source: None,
        }
    }
}

/// `[cluster]`: the replication cluster this gateway belongs to (docs/replication.md).
///
/// Peers authenticate each other with mutual TLS on the QUIC listener (ALPN
/// `edgesync-peer/1`): both present their node certificate (`[tls] cert`, whose subject CN
/// is the node id), both verify the other's against `ca`, and both compare cluster ids.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Cluster id (1-255 letters, digits, `-`, `_`, `.`). Required: links between gateways
    /// of different clusters are refused.
    pub id: String,
    /// PEM CA that signed every node certificate of the cluster. Required.
    pub ca: Option<PathBuf>,
    /// Accept links from cluster nodes that dial this one (edges behind NAT dial the hub).
    /// Default true.
    pub accept: bool,
    /// Topic patterns carried on accepted links from nodes without a `[[peer]]` entry
    /// naming them (`node_id`). Default `[">"]`.
    pub topics: Vec<String>,
    /// First redial delay after a link fails, ms; doubles per failure up to
    /// `redial_max_ms`, each delay jittered ±50 %. Default 200.
    pub redial_min_ms: u64,
    /// Longest redial delay, ms. Default 5000.
    pub redial_max_ms: u64,
    /// Anti-entropy digest round per link, ms. Default 30000.
    pub digest_interval_ms: u64,
    /// QUIC keep-alive on peer links, ms (failure detection: a silent peer is dropped after
    /// three of them). Default 2000.
    pub keep_alive_ms: u64,
    /// How long a `replicated:K` publish waits for K peers, ms. Default 5000.
    pub ack_timeout_ms: u64,
    /// Retention hold: retention keeps this node's records that a peer receiving their
    /// topic has not acknowledged, until they are this old, s (then the peer gets a gap
    /// marker). 0 turns the hold off. Default 86400 (a day offline).
    pub retention_hold_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            id: String::new(),
            ca: None,
            accept: true,
            topics: vec![">".into()],
            redial_min_ms: 200,
            redial_max_ms: 5000,
            digest_interval_ms: 30_000,
            keep_alive_ms: 2000,
            ack_timeout_ms: 5000,
            retention_hold_secs: 86_400,
        }
    }
}

/// Who sends records on a peer link, from this gateway's side.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeerDirection {
    /// This gateway sends its records to the peer only.
    Push,
    /// This gateway receives the peer's records only.
    Pull,
    /// Both ways (default).
    #[default]
    Both,
}

/// `[[peer]]`: one replication peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// `quic://host:port`: the peer's QUIC listener. Required when `dial` is true.
    #[serde(default)]
    pub url: Option<String>,
    /// The peer's node id. When dialing, the peer's certificate must name it; an entry with
    /// `dial = false` names the node whose inbound links get this entry's settings.
    #[serde(default)]
    pub node_id: Option<String>,
    /// `push`, `pull` or `both` (default).
    #[serde(default)]
    pub direction: PeerDirection,
    /// Topic patterns carried (the intersection with the peer's). Default `[">"]`.
    #[serde(default = "all_topics")]
    pub topics: Vec<String>,
    /// This gateway dials the peer (and redials). Default true. `false`: the peer dials.
    #[serde(default = "yes")]
    pub dial: bool,
}

fn all_topics() -> Vec<String> {
    vec![">".into()]
}

fn yes() -> bool {
    true
}

/// Parse `quic://host:port` into `(host, port)`.
///
/// # Errors
/// What is wrong with it.
pub fn parse_peer_url(url: &str) -> Result<(String, u16), String> {
    let Some(rest) = url.strip_prefix("quic://") else {
        return Err(format!("{url:?}: write quic://host:port"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: the port is missing (quic://host:port)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("{url:?}: bad host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{url:?}: bad port"))?;
    Ok((host.to_string(), port))
}

/// True for a node or cluster id: 1..=max bytes of letters, digits, `-`, `_` (and `.` when `dots`).
fn valid_id(s: &str, max: usize, dots: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.'))
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
    /// How long a deleted plugin kv key's tombstone is kept, seconds: a gateway cut off
    /// from its cluster for longer can bring the key back. Default 604800 (7 days),
    /// [`MIN_KV_TOMBSTONE_SECS`] ..= [`MAX_KV_TOMBSTONE_SECS`].
    pub kv_tombstone_secs: u64,
}

/// Shortest `store.kv_tombstone_secs`: a minute.
pub const MIN_KV_TOMBSTONE_SECS: u64 = 60;
/// Longest `store.kv_tombstone_secs`: ten years.
pub const MAX_KV_TOMBSTONE_SECS: u64 = 10 * 366 * 24 * 3600;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: FsyncMode::Always,
            fsync_interval_ms: 10,
            max_batch: 4096,
            queue_depth: 16_384,
            dedupe_window_ms: 120_000,
            cache_mb: 64,
            kv_tombstone_secs: 7 * 24 * 3600,
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
    /// Queue groups with members at once (bounds the queue metrics' `group` label). A
    /// `sub` that would start another is refused `too_many_subscriptions`. Default 256.
    pub max_queue_groups: usize,
    /// Members listed in a `presence` reply (and `GET /v1/presence`); past it the reply
    /// gives the count and `truncated: true`. Default 1000.
    pub max_presence_members: usize,
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
            max_queue_groups: 256,
            max_presence_members: 1000,
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
    /// When a publish is acknowledged: `local` (durable here; the default) or
    /// `replicated:K` (also durable on K peers, K 1-32; needs `[cluster]`; fewer peers
    /// within `cluster.ack_timeout_ms` → the retryable error `replication_timeout`).
    #[serde(default)]
    pub ack: AckMode,
}

/// A topic's ack mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// Durable on this gateway.
    #[default]
    Local,
    /// Durable here and on this many peers.
    Replicated(u32),
}

/// Most peers a `replicated:K` ack may wait for.
pub const MAX_ACK_PEERS: u32 = 32;

impl AckMode {
    /// Parse `local` or `replicated:K`.
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "local" {
            return Ok(AckMode::Local);
        }
        s.strip_prefix("replicated:")
            .and_then(|k| k.parse::<u32>().ok())
            .filter(|k| (1..=MAX_ACK_PEERS).contains(k))
            .map(AckMode::Replicated)
            .ok_or_else(|| {
                format!("{s:?}: use \"local\" or \"replicated:K\" with K from 1 to {MAX_ACK_PEERS}")
            })
    }

    /// Peers to wait for (0 for `local`).
    pub fn peers(self) -> usize {
        match self {
            AckMode::Local => 0,
            AckMode::Replicated(k) => k as usize,
        }
    }
}

impl Serialize for AckMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AckMode::Local => s.serialize_str("local"),
            AckMode::Replicated(k) => s.serialize_str(&format!("replicated:{k}")),
        }
    }
}

impl<'de> Deserialize<'de> for AckMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AckMode::parse(&s).map_err(serde::de::Error::custom)
    }
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
                // A missing key: the line of the table that lacks it.
                line: line_of(text, &key).or_else(|| {
                    key.rsplit_once('.')
                        .and_then(|(table, _)| line_of(text, table))
                }),
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
            ("limits.max_queue_groups", l.max_queue_groups),
            ("limits.max_presence_members", l.max_presence_members),
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
        if !(MIN_KV_TOMBSTONE_SECS..=MAX_KV_TOMBSTONE_SECS).contains(&self.store.kv_tombstone_secs)
        {
            return Err(invalid(
                "store.kv_tombstone_secs",
                format!(
                    "{}: must be {MIN_KV_TOMBSTONE_SECS}..={MAX_KV_TOMBSTONE_SECS} s",
                    self.store.kv_tombstone_secs
                ),
            ));
        }
        bridge::check(&self.bridges, l.max_topic_bytes)?;
        check_timers(l)?;
        self.check_queues()?;
        self.check_cluster()
    }

    /// `[cluster]` and `[[peer]]`.
    /// `[[queue]]`: group names as a `sub` takes them, each once, an owner named.
    fn check_queues(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.group.is_empty()
                || q.group.len() > 64
                || q.group.contains(['.', '*', '>', ' '])
                || q.group.starts_with('$')
            {
                return Err(invalid(
                    &format!("queue[{i}].group"),
                    format!("{:?}: 1 to 64 bytes, one topic segment", q.group),
                ));
            }
            if !seen.insert(q.group.as_str()) {
                return Err(invalid(
                    &format!("queue[{i}].group"),
                    format!("{:?} is listed twice", q.group),
                ));
            }
            if !valid_id(&q.owner, 255, true) {
                return Err(invalid(
                    &format!("queue[{i}].owner"),
                    format!("{:?}: a node id", q.owner),
                ));
            }
        }
        Ok(())
    }

    fn check_cluster(&self) -> Result<(), ConfigError> {
        let Some(c) = &self.cluster else {
            if !self.peers.is_empty() {
                return Err(invalid("peer", "[[peer]] entries need a [cluster] section"));
            }
            if let Some(i) = self.topics.iter().position(|t| t.ack != AckMode::Local) {
                return Err(invalid(
                    &format!("topic[{i}].ack"),
                    "replicated acks need a [cluster] section (and peers)",
                ));
            }
            return Ok(());
        };
        if !valid_id(&c.id, 255, true) {
            return Err(invalid(
                "cluster.id",
                format!("{:?}: use 1-255 letters, digits, '-', '_' or '.'", c.id),
            ));
        }
        if c.ca.is_none() {
            return Err(invalid(
                "cluster.ca",
                "required: the CA that signed the cluster's node certificates",
            ));
        }
        if self.tls.cert.is_none() {
            return Err(invalid(
                "tls.cert",
                "[cluster] needs this node's certificate (`edgesync cert node NAME`) and key",
            ));
        }
        if self.listen.quic.0.is_none() {
            return Err(invalid(
                "listen.quic",
                "[cluster] links run on the QUIC listener: it cannot be off",
            ));
        }
        let max_topic = self.limits.max_topic_bytes;
        check_patterns("cluster.topics", &c.topics, max_topic)?;
        for (key, v, min) in [
            ("cluster.redial_min_ms", c.redial_min_ms, 1),
            ("cluster.redial_max_ms", c.redial_max_ms, 1),
            ("cluster.digest_interval_ms", c.digest_interval_ms, 100),
            ("cluster.keep_alive_ms", c.keep_alive_ms, 100),
            ("cluster.ack_timeout_ms", c.ack_timeout_ms, 1),
        ] {
            if v < min || v > MAX_TIMER_MS {
                return Err(invalid(
                    key,
                    format!("{v}: must be {min} to {MAX_TIMER_MS} ms"),
                ));
            }
        }
        if c.retention_hold_secs > MAX_TIMER_MS / 1000 * 365 {
            return Err(invalid(
                "cluster.retention_hold_secs",
                format!("{}: must be at most a year", c.retention_hold_secs),
            ));
        }
        if c.redial_max_ms < c.redial_min_ms {
            return Err(invalid(
                "cluster.redial_max_ms",
                "must be at least cluster.redial_min_ms",
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let key = |k: &str| format!("peer[{i}].{k}");
            match (&p.url, p.dial) {
                (Some(u), _) => {
                    parse_peer_url(u).map_err(|e| invalid(&key("url"), e))?;
                }
                (None, true) => {
                    return Err(invalid(&key("url"), "required when this side dials"));
                }
                (None, false) => {}
            }
            if let Some(n) = &p.node_id
                && !valid_id(n, 64, true)
            {
                return Err(invalid(
                    &key("node_id"),
                    format!("{n:?}: use 1-64 letters, digits, '-', '_' or '.'"),
                ));
            }
            if !p.dial && p.node_id.is_none() {
                return Err(invalid(
                    &key("node_id"),
                    "required with dial = false: it names the node whose links this entry sets up",
                ));
            }
            check_patterns(&key("topics"), &p.topics, max_topic)?;
        }
        Ok(())
    }
}

/// A non-empty list of valid topic patterns.
fn check_patterns(key: &str, patterns: &[String], max: usize) -> Result<(), ConfigError> {
    if patterns.is_empty() {
        return Err(invalid(
            key,
            "give at least one pattern (\">\" for every topic)",
        ));
    }
    for p in patterns {
        edgesync_protocol::topic::validate_pattern(p, max)
            .map_err(|e| invalid(key, format!("{p:?}: {e}")))?;
    }
    Ok(())
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
        o.kv_tombstone_ttl = Duration::from_secs(c.store.kv_tombstone_secs);
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

    /// Peers a publish on each topic waits for (`replicated:K` → K; `local` → 0), first
    /// matching `[[topic]]` pattern.
    pub fn ack_peers(&self) -> Arc<dyn Fn(&str) -> usize + Send + Sync> {
        let topics = self.config.topics.clone();
        Arc::new(move |topic: &str| {
            topics
                .iter()
                .find(|t| edgesync_protocol::topic::matches(&t.pattern, topic))
                .map_or(0, |t| t.ack.peers())
        })
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
                "[store]\nkv_tombstone_secs = 0\n",
                "store.kv_tombstone_secs",
                2,
            ),
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

    /// The issue's two-gateway example parses; its defaults are the documented ones.
    #[test]
    fn cluster_and_peers_parse_with_defaults() {
        let c = Config::from_toml(
            r#"
node_id = "edge-1"
[tls]
cert = "certs/edge-1.pem"
key = "certs/edge-1.key"
[cluster]
id = "plant-7"
ca = "certs/ca.pem"
[[peer]]
url = "quic://127.0.0.1:7543"
topics = ["sensors.>"]
[[peer]]
node_id = "edge-2"
dial = false
direction = "push"
"#,
        )
        .expect("parse");
        c.build().expect("valid");
        let cl = c.cluster.as_ref().expect("cluster");
        assert_eq!((cl.id.as_str(), cl.accept), ("plant-7", true));
        assert_eq!(cl.topics, vec![">".to_string()]);
        assert_eq!(c.peers.len(), 2);
        assert!(c.peers[0].dial);
        assert_eq!(c.peers[0].direction, PeerDirection::Both);
        assert_eq!(c.peers[1].direction, PeerDirection::Push);
        assert_eq!(c.peers[1].topics, vec![">".to_string()]);
        assert_eq!(
            parse_peer_url("quic://hub.example:7443"),
            Ok(("hub.example".into(), 7443))
        );
        assert_eq!(parse_peer_url("quic://[::1]:9"), Ok(("::1".into(), 9)));
    }

    #[test]
    fn bad_cluster_and_peer_values_are_refused_with_key_and_line() {
        let base =
            "[tls]\ncert = \"c.pem\"\nkey = \"c.key\"\n[cluster]\nid = \"c1\"\nca = \"ca.pem\"\n";
        for (extra, key, line) in [
            ("[[peer]]\nurl = \"http://x:1\"\n", "peer[0].url", 8),
            ("[[peer]]\nurl = \"quic://x\"\n", "peer[0].url", 8),
            ("[[peer]]\nurl = \"quic://x:0\"\n", "peer[0].url", 8),
            ("[[peer]]\ndial = true\n", "peer[0].url", 7),
            ("[[peer]]\ndial = false\n", "peer[0].node_id", 7),
            (
                "[[peer]]\nurl = \"quic://x:1\"\ntopics = [\"a.>.b\"]\n",
                "peer[0].topics",
                9,
            ),
            (
                "[[peer]]\nurl = \"quic://x:1\"\ntopics = []\n",
                "peer[0].topics",
                9,
            ),
            (
                "[[peer]]\nurl = \"quic://x:1\"\nnode_id = \"a b\"\n",
                "peer[0].node_id",
                9,
            ),
        ] {
            let text = format!("{base}{extra}");
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("edgesync.toml");
            std::fs::write(&path, &text).expect("write");
            let c = Config::from_file(&path).expect("parses");
            match c.build().expect_err(&text) {
                ConfigError::Invalid {
                    key: k, line: l, ..
                } => assert_eq!((k.as_str(), l), (key, Some(line)), "{text}"),
                other => panic!("{text}: {other}"),
            }
        }
        // Unknown keys and bad enum values: the parser names them with the line.
        let err = Config::from_toml(&format!(
            "{base}[[peer]]\nurl = \"quic://x:1\"\ndirektion = \"push\"\n"
        ))
        .expect_err("unknown key");
        assert!(err.contains("direktion") && err.contains("line 9"), "{err}");
        let err = Config::from_toml(&format!(
            "{base}[[peer]]\nurl = \"quic://x:1\"\ndirection = \"sideways\"\n"
        ))
        .expect_err("bad direction");
        assert!(err.contains("sideways") && err.contains("line 9"), "{err}");
        let err = Config::from_toml(&format!("{base}colour = 1\n")).expect_err("unknown");
        assert!(err.contains("colour"), "{err}");
        // Cross-field rules.
        for (text, key) in [
            ("[[peer]]\nurl = \"quic://x:1\"\n", "peer"),
            (
                "[tls]\ncert = \"c\"\nkey = \"k\"\n[cluster]\nid = \"c1\"\n",
                "cluster.ca",
            ),
            ("[cluster]\nid = \"c1\"\nca = \"ca.pem\"\n", "tls.cert"),
            (
                "[tls]\ncert = \"c\"\nkey = \"k\"\n[cluster]\nid = \"\"\nca = \"a\"\n",
                "cluster.id",
            ),
            (
                "[tls]\ncert = \"c\"\nkey = \"k\"\n[cluster]\nid = \"c\"\nca = \"a\"\nredial_min_ms = 0\n",
                "cluster.redial_min_ms",
            ),
            (
                "[tls]\ncert = \"c\"\nkey = \"k\"\n[cluster]\nid = \"c\"\nca = \"a\"\nredial_min_ms = 500\nredial_max_ms = 100\n",
                "cluster.redial_max_ms",
            ),
            (
                "[listen]\nquic = \"off\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n[cluster]\nid = \"c\"\nca = \"a\"\n",
                "listen.quic",
            ),
        ] {
            let c = Config::from_toml(text).expect("parses");
            let err = c.build().expect_err(text).to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn ack_modes_parse_and_need_a_cluster() {
        assert_eq!(AckMode::parse("local"), Ok(AckMode::Local));
        assert_eq!(AckMode::parse("replicated:2"), Ok(AckMode::Replicated(2)));
        for bad in [
            "replicated:0",
            "replicated:33",
            "replicated",
            "quorum",
            "replicated:x",
        ] {
            assert!(AckMode::parse(bad).is_err(), "{bad}");
        }
        let err = Config::from_toml("[[topic]]\npattern = \"a\"\nack = \"replicated:0\"\n")
            .expect_err("bad ack");
        assert!(
            err.contains("replicated:0") && err.contains("line 3"),
            "{err}"
        );
        let c = Config::from_toml("[[topic]]\npattern = \"a\"\nack = \"replicated:1\"\n")
            .expect("parse");
        let err = c.build().expect_err("no cluster").to_string();
        assert!(err.contains("topic[0].ack"), "{err}");
        let c = Config::from_toml(
            "[tls]\ncert = \"c\"\nkey = \"k\"\n[cluster]\nid = \"c\"\nca = \"a\"\n[[topic]]\npattern = \"orders.>\"\nack = \"replicated:2\"\n",
        )
        .expect("parse");
        let s = c.build().expect("valid");
        let k = s.ack_peers();
        assert_eq!((k("orders.eu"), k("chat.x")), (2, 0));
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
