//! `schema`: rejects messages whose payload does not satisfy a JSON shape
//! rule, with a reason that names the field. The first rule whose topic
//! pattern matches applies; messages no rule matches pass.
//!
//! ```toml
//! [[plugin.config.rules]]
//! topics = "sensors.>"
//! max_bytes = 4096                            # optional payload size cap
//! required = ["id", "value"]                  # fields that must be present
//! fields = { id = "string", value = "number", tags = "array" }
//! additional = false                          # reject fields not in `fields` (default true)
//! ```
//!
//! Types: `string`, `number`, `integer`, `boolean`, `object`, `array`,
//! `null`, `any`. A field may allow several: `"string|null"`.

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    topics: String,
    #[serde(default)]
    max_bytes: Option<usize>,
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    fields: Map<String, Value>,
    #[serde(default = "yes")]
    additional: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<Rule>,
}

/// A compiled rule: field types parsed once.
struct Compiled {
    rule: Rule,
    fields: Vec<(String, Vec<String>)>,
}

struct Schema {
    rules: Vec<Compiled>,
}

const TYPES: &[&str] = &[
    "string", "number", "integer", "boolean", "object", "array", "null", "any",
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(expected: &str, v: &Value) -> bool {
    let actual = type_name(v);
    expected == "any" || expected == actual || (expected == "number" && actual == "integer")
}

impl Compiled {
    fn check(&self, payload: &[u8]) -> Result<(), String> {
        let r = &self.rule;
        if let Some(max) = r.max_bytes
            && payload.len() > max
        {
            return Err(format!(
                "payload is {} bytes, the limit is {max}",
                payload.len()
            ));
        }
        let obj: Map<String, Value> = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => o,
            Ok(other) => {
                return Err(format!(
                    "payload must be a JSON object, got {}",
                    type_name(&other)
                ));
            }
            Err(e) => return Err(format!("payload is not valid JSON: {e}")),
        };
        for field in &r.required {
            if !obj.contains_key(field) {
                return Err(format!("field `{field}` is required"));
            }
        }
        for (field, types) in &self.fields {
            if let Some(v) = obj.get(field)
                && !types.iter().any(|t| type_ok(t, v))
            {
                return Err(format!(
                    "field `{field}` must be {}, got {}",
                    types.join(" or "),
                    type_name(v)
                ));
            }
        }
        if !r.additional
            && let Some(extra) = obj.keys().find(|k| !r.fields.contains_key(*k))
        {
            return Err(format!("field `{extra}` is not allowed"));
        }
        Ok(())
    }
}

#[edgesync_plugin::export]
impl Plugin for Schema {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(config).map_err(|e| format!("schema config: {e}"))?;
        let mut rules = Vec::new();
        for (i, rule) in config.rules.into_iter().enumerate() {
            if !edgesync_plugin::pattern_is_valid(&rule.topics) {
                return Err(format!(
                    "schema config: rules[{i}].topics `{}` is not a pattern",
                    rule.topics
                ));
            }
            let mut fields = Vec::new();
            for (name, t) in &rule.fields {
                let spec = t.as_str().ok_or_else(|| {
                    format!("schema config: rules[{i}].fields.{name} must be a string")
                })?;
                let types: Vec<String> = spec.split('|').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = types.iter().find(|t| !TYPES.contains(&t.as_str())) {
                    return Err(format!(
                        "schema config: rules[{i}].fields.{name}: unknown type `{bad}`"
                    ));
                }
                fields.push((name.clone(), types));
            }
            rules.push(Compiled { rule, fields });
        }
        Ok(Schema { rules })
    }

    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| edgesync_plugin::topic_matches(&r.rule.topics, msg.topic))
        else {
            return MessageVerdict::Pass;
        };
        match rule.check(msg.payload) {
            Ok(()) => MessageVerdict::Pass,
            Err(reason) => {
                MessageVerdict::Reject(format!("schema ({}): {reason}", rule.rule.topics))
            }
        }
    }
}
