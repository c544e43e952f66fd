//! Test plugin: passes every message (for benches and the hot-path tests).
//! Exports `message-hooks` only (plus `lifecycle`).

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};

struct Pass;

#[edgesync_plugin::export]
impl Plugin for Pass {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Pass)
    }

    fn on_message(&self, _sender: SenderRef<'_>, _msg: MessageRef<'_>) -> MessageVerdict {
        MessageVerdict::Pass
    }
}
