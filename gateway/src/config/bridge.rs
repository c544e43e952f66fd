//! `[[bridge]]`: links to a distributed log (NATS JetStream), one entry each.
//! The bridge itself is `crate::bridge`; this is only its configuration and the
//! rules [`super::Config::build`] enforces (errors name the key, e.g.
//! `bridge[0].direction`, and the line).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, MAX_TIMER_MS, invalid};

/// Most records (export) or messages (import) per bridge batch.
pub const MAX_BRIDGE_BATCH: usize = 4096;

/// Subject roots NATS reserves for itself: never bridged, whatever the pattern.
pub const NATS_RESERVED_ROOTS: &[&str] = &["$JS", "$SYS", "$KV", "$O", "$NRG", "$MQTT", "$G"];

/// One `[[bridge]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Name in logs, metrics (`bridge` label), `GET /v1/bridges` and the keys of its
    /// durable position. Letters, digits, `-`, `_`; ≤ 64 bytes. Default: the stream name.
    #[serde(default)]
    pub name: Option<String>,
    /// The remote log. Only `"jetstream"` so far.
    pub kind: BridgeKind,
    /// Server URL, or a list of them (`nats://host:4222`, `tls://host:4222`).
    pub url: Urls,
    /// `export` (edgesync → JetStream), `import` (JetStream → edgesync) or `both`.
    /// Default `export`.
    #[serde(default)]
    pub direction: Direction,
    /// Topic patterns bridged (`*`, `>`); subjects are the topics, dots kept. `$` topics
    /// only when a pattern names them; NATS-reserved roots (`$JS`, `$SYS`, ...) never.
    pub topics: Vec<String>,
    /// The JetStream stream.
    pub stream: String,
    /// Create the stream when it is missing (subjects = `topics`, file storage,
    /// `duplicate_window_ms`); `false` requires it to exist. Default true.
    #[serde(default = "default_true")]
    pub create_stream: bool,
    /// The durable pull consumer of an import. Default `edgesync-<name>`.
    #[serde(default)]
    pub consumer: Option<String>,
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<String>,
    /// NKey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT + NKey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server; setting it requires TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS; given together.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Records published per window (export; all acknowledged before the position
    /// moves) and messages fetched per pull (import). Default 512, at most 4096.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How long a publish waits for JetStream's ack, and a request for its answer, ms.
    /// Default 5000.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// JetStream's duplicate window of a stream this bridge creates, ms. Default 120000.
    #[serde(default = "default_duplicate_window_ms")]
    pub duplicate_window_ms: u64,
    /// Longest wait between retries while JetStream is unreachable, ms. Default 5000.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

/// The kind of remote log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeKind {
    Jetstream,
}

/// Which way records flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Export,
    Import,
    Both,
}

impl Direction {
    pub fn exports(self) -> bool {
        matches!(self, Direction::Export | Direction::Both)
    }

    pub fn imports(self) -> bool {
        matches!(self, Direction::Import | Direction::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Export => "export",
            Direction::Import => "import",
            Direction::Both => "both",
        }
    }
}

/// One URL or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Urls {
    pub fn list(&self) -> Vec<String> {
        match self {
            Urls::One(u) => vec![u.clone()],
            Urls::Many(v) => v.clone(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_batch() -> usize {
    512
}
fn default_ack_timeout_ms() -> u64 {
    5000
}
fn default_duplicate_window_ms() -> u64 {
    120_000
}
fn default_retry_max_ms() -> u64 {
    5000
}

impl BridgeConfig {
    /// The bridge's name (default: the stream's).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.stream)
    }

    /// The durable consumer of an import.
    pub fn consumer_name(&self) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("edgesync-{}", self.name()))
    }
}

/// The rules of every `[[bridge]]`.
pub(super) fn check(bridges: &[BridgeConfig], max_topic_bytes: usize) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, b) in bridges.iter().enumerate() {
        let key = |k: &str| format!("bridge[{i}].{k}");
        let name_key = if b.name.is_some() { "name" } else { "stream" };
        if !plain_name(b.name()) {
            return Err(invalid(
                &key(name_key),
                format!("{:?}: use 1-64 letters, digits, '-' or '_'", b.name()),
            ));
        }
        if !names.insert(b.name()) {
            return Err(invalid(
                &key(name_key),
                format!("a second bridge named {:?}", b.name()),
            ));
        }
        if b.consumer.as_deref().is_some_and(|c| !plain_name(c)) {
            return Err(invalid(
                &key("consumer"),
                "use 1-64 letters, digits, '-' or '_'",
            ));
        }
        let urls = b.url.list();
        if urls.is_empty() {
            return Err(invalid(&key("url"), "at least one server URL"));
        }
        for u in &urls {
            check_url(u).map_err(|e| invalid(&key("url"), e))?;
        }
        if b.topics.is_empty() {
            return Err(invalid(&key("topics"), "at least one topic pattern"));
        }
        for (j, t) in b.topics.iter().enumerate() {
            edgesync_protocol::topic::validate_pattern(t, max_topic_bytes)
                .map_err(|e| invalid(&key(&format!("topics[{j}]")), e.to_string()))?;
            let root = t.split('.').next().unwrap_or_default();
            if NATS_RESERVED_ROOTS.contains(&root) {
                return Err(invalid(
                    &key(&format!("topics[{j}]")),
                    format!("{root} subjects are reserved by NATS"),
                ));
            }
        }
        check_auth(b, &key)?;
        if b.batch == 0 || b.batch > MAX_BRIDGE_BATCH {
            return Err(invalid(
                &key("batch"),
                format!("{}: must be 1..={MAX_BRIDGE_BATCH}", b.batch),
            ));
        }
        for (k, v) in [
            ("ack_timeout_ms", b.ack_timeout_ms),
            ("duplicate_window_ms", b.duplicate_window_ms),
            ("retry_max_ms", b.retry_max_ms),
        ] {
            if v == 0 || v > MAX_TIMER_MS {
                return Err(invalid(
                    &key(k),
                    format!("{v}: must be 1..={MAX_TIMER_MS} ms"),
                ));
            }
        }
    }
    Ok(())
}

fn check_auth(b: &BridgeConfig, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if b.stream.is_empty()
        || b.stream.len() > 255
        || b.stream.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
    {
        return Err(invalid(
            &key("stream"),
            format!(
                "{:?}: a JetStream stream name (no spaces, '.', '*', '>', slashes)",
                b.stream
            ),
        ));
    }
    if b.user.is_some() != b.password.is_some() {
        return Err(invalid(&key("user"), "`user` and `password` go together"));
    }
    let methods = [
        b.user.is_some(),
        b.token.is_some(),
        b.nkey_seed.is_some(),
        b.credentials_file.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(invalid(
            &key("token"),
            "choose one of user/password, token, nkey_seed, credentials_file",
        ));
    }
    if b.tls_cert.is_some() != b.tls_key.is_some() {
        return Err(invalid(
            &key("tls_cert"),
            "`tls_cert` and `tls_key` go together",
        ));
    }
    Ok(())
}

/// `nats://`, `tls://` (or no scheme) then `host:port`.
fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("nats://")
        .or_else(|| u.strip_prefix("tls://"))
        .unwrap_or(u);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!("{u:?}: expected nats://host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() || rest.contains('/') {
        return Err(format!("{u:?}: expected nats://host:port"));
    }
    Ok(())
}

fn plain_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};

    fn build(text: &str) -> Result<(), ConfigError> {
        let mut c = Config::from_toml(text).map_err(|message| ConfigError::Parse {
            path: "t.toml".into(),
            message,
        })?;
        c.source = Some(text.into());
        c.build().map(|_| ())
    }

    const OK: &str = "[[bridge]]\nkind = \"jetstream\"\nurl = \"nats://127.0.0.1:4222\"\ndirection = \"export\"\ntopics = [\"sensors.>\"]\nstream = \"EDGE\"\n";

    #[test]
    fn the_documented_example_parses() {
        build(OK).expect("valid");
        let c = Config::from_toml(OK).expect("parse");
        let b = &c.bridges[0];
        assert_eq!((b.name(), b.batch, b.create_stream), ("EDGE", 512, true));
        assert_eq!(b.consumer_name(), "edgesync-EDGE");
    }

    #[test]
    fn secrets_are_redacted_in_the_effective_config() {
        let text = format!("{OK}user = \"u\"\npassword = \"hunter2\"\n");
        let shown = Config::from_toml(&text)
            .expect("parse")
            .build()
            .expect("valid")
            .redacted_toml();
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
        let text = format!("{OK}nkey_seed = \"SUAKEY\"\n");
        let shown = Config::from_toml(&text)
            .expect("parse")
            .build()
            .expect("valid")
            .redacted_toml();
        assert!(!shown.contains("SUAKEY"), "{shown}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_line() {
        let err = build(&format!("{OK}batchsize = 3\n"))
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("batchsize") && err.contains("line 7"), "{err}");
        let err = build(&OK.replace("\"export\"", "\"sideways\""))
            .expect_err("bad direction")
            .to_string();
        assert!(err.contains("sideways") && err.contains("line 4"), "{err}");
        for (text, key, line) in [
            (OK.replace("sensors.>", "a.>.b"), "bridge[0].topics[0]", 5),
            (
                OK.replace("sensors.>", "$JS.API.>"),
                "bridge[0].topics[0]",
                5,
            ),
            (
                OK.replace("nats://127.0.0.1:4222", "http://x"),
                "bridge[0].url",
                3,
            ),
            (OK.replace("\"EDGE\"", "\"a.b\""), "bridge[0].stream", 6),
            (format!("{OK}batch = 0\n"), "bridge[0].batch", 7),
            (
                format!("{OK}ack_timeout_ms = 0\n"),
                "bridge[0].ack_timeout_ms",
                7,
            ),
            (format!("{OK}user = \"u\"\n"), "bridge[0].user", 7),
            (
                format!("{OK}token = \"t\"\nnkey_seed = \"SU\"\n"),
                "bridge[0].token",
                7,
            ),
            (format!("{OK}{OK}"), "bridge[1].stream", 12),
        ] {
            match build(&text) {
                Err(ConfigError::Invalid {
                    key: k, line: l, ..
                }) => {
                    assert_eq!((k.as_str(), l), (key, Some(line)), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
