//! `retention`: a storage hook. Messages on ephemeral topics are delivered
//! but not persisted (`skip`); topics matching a rule are persisted with a
//! retention hint; everything else is accepted unchanged.
//!
//! ```toml
//! [plugin.config]
//! ephemeral = ["presence.>", "typing.*"]
//! [[plugin.config.rules]]
//! topics = "chat.>"
//! max_age_ms = 604800000
//! max_count = 10000
//! max_bytes = 104857600
//! ```

use edgesync_plugin::{MessageRef, Plugin, RetentionHint, SenderRef, WriteChanges, WriteVerdict};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    topics: String,
    #[serde(default)]
    max_age_ms: Option<u64>,
    #[serde(default)]
    max_count: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    ephemeral: Vec<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}

struct Retention {
    config: Config,
}

#[edgesync_plugin::export]
impl Plugin for Retention {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("retention config: {e}"))?;
        for p in config
            .ephemeral
            .iter()
            .chain(config.rules.iter().map(|r| &r.topics))
        {
            if !edgesync_plugin::pattern_is_valid(p) {
                return Err(format!("retention config: `{p}` is not a topic pattern"));
            }
        }
        Ok(Retention { config })
    }

    fn on_write(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> WriteVerdict {
        let topic = msg.topic;
        if self
            .config
            .ephemeral
            .iter()
            .any(|p| edgesync_plugin::topic_matches(p, topic))
        {
            return WriteVerdict::Skip;
        }
        match self
            .config
            .rules
            .iter()
            .find(|r| edgesync_plugin::topic_matches(&r.topics, topic))
        {
            Some(r) => WriteVerdict::AcceptWith(WriteChanges {
                headers: None,
                payload: None,
                retention: Some(RetentionHint {
                    max_age_ms: r.max_age_ms,
                    max_count: r.max_count,
                    max_bytes: r.max_bytes,
                }),
            }),
            None => WriteVerdict::Accept,
        }
    }
}
