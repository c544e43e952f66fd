//! Test plugin exercising every kv operation. The payload is a command;
//! the verdict replaces the payload with the result:
//!
//! - `incr KEY [DELTA]` → new value
//! - `set KEY VALUE` → `v<version>`
//! - `get KEY` → `VALUE@<version>` or `none`
//! - `cas KEY EXPECTED|none VALUE` → `v<version>` or `mismatch`
//! - `del KEY` → `true`/`false`
//! - `scan PREFIX` → `k1=v1,k2=v2`
//!
//! Errors come back as `error: ...`.

use edgesync_plugin::kv::{self, KvError};
use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};

struct KvCounter;

fn run(cmd: &str) -> Result<String, KvError> {
    let parts: Vec<&str> = cmd.split(' ').collect();
    Ok(match parts.as_slice() {
        ["incr", key] => kv::increment(key, 1, None)?.to_string(),
        ["incr", key, delta] => kv::increment(key, delta.parse().unwrap_or(1), None)?.to_string(),
        ["set", key, value] => format!("v{}", kv::set(key, value.as_bytes(), None)?),
        ["get", key] => match kv::get(key)? {
            Some(e) => format!("{}@{}", String::from_utf8_lossy(&e.value), e.version),
            None => "none".into(),
        },
        ["cas", key, expected, value] => {
            let expected = expected.parse::<u64>().ok();
            match kv::compare_and_swap(key, expected, value.as_bytes(), None)? {
                Some(v) => format!("v{v}"),
                None => "mismatch".into(),
            }
        }
        ["del", key] => kv::delete(key)?.to_string(),
        ["scan", prefix] => kv::scan_prefix(prefix, 100)?
            .into_iter()
            .map(|(k, e)| format!("{k}={}", String::from_utf8_lossy(&e.value)))
            .collect::<Vec<_>>()
            .join(","),
        _ => return Ok(format!("error: unknown command `{cmd}`")),
    })
}

#[edgesync_plugin::export]
impl Plugin for KvCounter {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(KvCounter)
    }

    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        let cmd = msg.payload_str().unwrap_or("");
        let result = run(cmd).unwrap_or_else(|e| format!("error: {e:?}"));
        let mut out = msg.to_message();
        out.payload = result.into_bytes();
        MessageVerdict::Replace(out)
    }
}
