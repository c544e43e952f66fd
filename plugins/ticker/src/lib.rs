//! `ticker`: publishes a JSON heartbeat to a topic every interval — the
//! "server time" / keep-alive tick of the chat systems edgesync replaces.
//! Needs `grants.pubsub = true`.
//!
//! ```toml
//! [plugin.config]
//! topic = "time.tick"
//! interval_ms = 1000
//! node = "edge-1"            # optional, included in the payload
//! ```
//!
//! Payload: `{"ts": <unix ms>, "seq": <n>, "node": "edge-1"}`; `seq` is a
//! kv counter, so it keeps increasing across instances and restarts.

use edgesync_plugin::{Plugin, kv, log, pubsub, timers};
use serde::Deserialize;

const TIMER: &str = "tick";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    topic: String,
    #[serde(default = "default_interval")]
    interval_ms: u64,
    #[serde(default)]
    node: Option<String>,
}

fn default_interval() -> u64 {
    1000
}

struct Ticker {
    config: Config,
}

#[edgesync_plugin::export]
impl Plugin for Ticker {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("ticker config: {e}"))?;
        // Idempotent: every instance runs init; the host keeps one timer.
        timers::set_repeat(TIMER, config.interval_ms)?;
        Ok(Ticker { config })
    }

    fn on_timer(&self, name: &str) {
        if name != TIMER {
            return;
        }
        let seq = kv::increment("seq", 1, None).unwrap_or(-1);
        let mut payload = serde_json::json!({ "ts": timers::now(), "seq": seq });
        if let Some(node) = &self.config.node {
            payload["node"] = serde_json::Value::from(node.clone());
        }
        if let Err(e) = pubsub::publish(&self.config.topic, &[], payload.to_string().as_bytes()) {
            log::warn(&format!("ticker: publish failed: {e}"));
        }
    }
}
