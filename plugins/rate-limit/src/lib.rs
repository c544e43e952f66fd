//! `rate-limit`: at most `limit` messages per `window_ms` per principal
//! (fixed windows), counted in the host's kv so every instance — and
//! every restart — sees the same counters.
//!
//! ```toml
//! [plugin.config]
//! limit = 100
//! window_ms = 1000
//! by = "principal"          # principal | client | connection
//! topics = ["chat.>"]       # default: every topic
//! ```
//!
//! `principal` (the default) keys anonymous senders by their connection, never by
//! their client id: a client id is chosen by the client, so keying by it could be
//! evaded by changing ids and, worse, aimed at a victim's id to lock it out. A
//! connection cannot be forged (a client can open more, bounded by the gateway's
//! per-IP connection limit). `client` keys by client id anyway — for gateways where
//! auth binds client ids to principals.
//!
//! When kv is unavailable the message passes (rate limiting is not worth
//! losing messages over) and a warning is logged.

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef, kv, log, timers};
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum By {
    Principal,
    Client,
    Connection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    limit: u32,
    window_ms: u64,
    #[serde(default = "by_principal")]
    by: By,
    #[serde(default)]
    topics: Vec<String>,
}

fn by_principal() -> By {
    By::Principal
}

struct RateLimit {
    config: Config,
}

impl RateLimit {
    fn key(&self, sender: SenderRef<'_>) -> String {
        match self.config.by {
            By::Principal if !sender.principal.is_empty() => format!("p:{}", sender.principal),
            // Anonymous senders: their connection, which they cannot forge (not their
            // client id, which they choose).
            By::Principal | By::Connection => format!("n:{}", sender.conn_id),
            By::Client => format!("c:{}", sender.client_id),
        }
    }
}

#[edgesync_plugin::export]
impl Plugin for RateLimit {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("rate-limit config: {e}"))?;
        if config.window_ms == 0 {
            return Err("rate-limit config: window_ms must be > 0".into());
        }
        Ok(RateLimit { config })
    }

    fn on_message(&self, sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        let c = &self.config;
        if !c.topics.is_empty()
            && !c
                .topics
                .iter()
                .any(|p| edgesync_plugin::topic_matches(p, msg.topic))
        {
            return MessageVerdict::Pass;
        }
        let window = timers::now() / c.window_ms;
        let key = format!("rl:{}:{window}", self.key(sender));
        match kv::increment(&key, 1, Some(c.window_ms.saturating_mul(2))) {
            Ok(n) if n > i64::from(c.limit) => MessageVerdict::Reject(format!(
                "rate limit: more than {} messages per {} ms",
                c.limit, c.window_ms
            )),
            Ok(_) => MessageVerdict::Pass,
            Err(e) => {
                log::warn(&format!("rate-limit: kv unavailable, passing: {e:?}"));
                MessageVerdict::Pass
            }
        }
    }
}
