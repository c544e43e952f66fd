//! `transform`: rewrites JSON object payloads by config — redact fields,
//! rename fields, add fields. Non-matching topics and unchanged messages
//! pass untouched.
//!
//! ```toml
//! [plugin.config]
//! topics = ["chat.>", "sensors.*"]   # default: every topic
//! redact = ["password", "card.number"]  # dotted paths
//! redact_with = "[redacted]"          # replacement value; omit the key: remove the field instead
//! rename = { temp = "temperature" }   # dotted source path -> top-level-or-dotted destination
//! enrich = { source = "edge-1" }      # fields set to fixed JSON values
//! add_time = "received_at"            # field set to the host time (Unix ms)
//! add_principal = "sender"            # field set to the sender's principal id
//! non_json = "pass"                   # pass | drop | reject for payloads that are not a JSON object
//! ```

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum NonJson {
    #[default]
    Pass,
    Drop,
    Reject,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    redact: Vec<String>,
    #[serde(default)]
    redact_with: Option<Value>,
    #[serde(default)]
    rename: Map<String, Value>,
    #[serde(default)]
    enrich: Map<String, Value>,
    #[serde(default)]
    add_time: Option<String>,
    #[serde(default)]
    add_principal: Option<String>,
    #[serde(default)]
    non_json: NonJson,
}

struct Transform {
    config: Config,
    renames: Vec<(String, String)>,
}

/// Removes the value at a dotted path.
fn take(obj: &mut Map<String, Value>, path: &str) -> Option<Value> {
    match path.split_once('.') {
        None => obj.remove(path),
        Some((head, rest)) => take(obj.get_mut(head)?.as_object_mut()?, rest),
    }
}

/// Sets the value at a dotted path, creating intermediate objects.
fn put(obj: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            obj.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let child = obj
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            if let Some(m) = child.as_object_mut() {
                put(m, rest, value);
            }
        }
    }
}

/// Replaces the value at a dotted path if present.
fn redact(obj: &mut Map<String, Value>, path: &str, with: Option<&Value>) -> bool {
    match path.split_once('.') {
        None => match (obj.get_mut(path), with) {
            (Some(v), Some(w)) => {
                *v = w.clone();
                true
            }
            (Some(_), None) => obj.remove(path).is_some(),
            (None, _) => false,
        },
        Some((head, rest)) => match obj.get_mut(head).and_then(Value::as_object_mut) {
            Some(child) => redact(child, rest, with),
            None => false,
        },
    }
}

impl Transform {
    fn applies(&self, topic: &str) -> bool {
        self.config.topics.is_empty()
            || self
                .config
                .topics
                .iter()
                .any(|p| edgesync_plugin::topic_matches(p, topic))
    }

    /// Applies every rule; returns whether anything changed.
    fn apply(&self, obj: &mut Map<String, Value>, sender: SenderRef<'_>) -> bool {
        let c = &self.config;
        let mut changed = false;
        for path in &c.redact {
            changed |= redact(obj, path, c.redact_with.as_ref());
        }
        for (from, to) in &self.renames {
            if let Some(v) = take(obj, from) {
                put(obj, to, v);
                changed = true;
            }
        }
        for (k, v) in &c.enrich {
            put(obj, k, v.clone());
            changed = true;
        }
        if let Some(field) = &c.add_time {
            put(obj, field, Value::from(edgesync_plugin::timers::now()));
            changed = true;
        }
        if let Some(field) = &c.add_principal {
            put(obj, field, Value::from(sender.principal));
            changed = true;
        }
        changed
    }
}

#[edgesync_plugin::export]
impl Plugin for Transform {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("transform config: {e}"))?;
        let renames = config
            .rename
            .iter()
            .map(|(from, to)| match to.as_str() {
                Some(to) => Ok((from.clone(), to.to_string())),
                None => Err(format!("transform config: rename.{from} must be a string")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Transform { config, renames })
    }

    fn on_message(&self, sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        if !self.applies(msg.topic) {
            return MessageVerdict::Pass;
        }
        let mut obj = match serde_json::from_slice::<Value>(msg.payload) {
            Ok(Value::Object(obj)) => obj,
            _ => {
                return match self.config.non_json {
                    NonJson::Pass => MessageVerdict::Pass,
                    NonJson::Drop => MessageVerdict::Drop,
                    NonJson::Reject => {
                        MessageVerdict::Reject("transform: payload must be a JSON object".into())
                    }
                };
            }
        };
        if !self.apply(&mut obj, sender) {
            return MessageVerdict::Pass;
        }
        let mut out = msg.to_message();
        out.payload = Value::Object(obj).to_string().into_bytes();
        MessageVerdict::Replace(out)
    }
}
