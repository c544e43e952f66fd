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
            // Anonymous senders fall back to their client id.
            By::Principal if !sender.principal.is_empty() => format!("p:{}", sender.principal),
            By::Principal | By::Client => format!("c:{}", sender.client_id),
            By::Connection => format!("n:{}", sender.conn_id),
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
