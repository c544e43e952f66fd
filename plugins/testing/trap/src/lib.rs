//! Test plugin: panics (traps) on a message whose payload contains
//! `TRAP`; otherwise upper-cases the payload (so tests can tell it ran).

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};

struct Trap;

#[edgesync_plugin::export]
impl Plugin for Trap {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Trap)
    }

    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        if msg.payload.windows(4).any(|w| w == b"TRAP") {
            panic!("trap plugin: payload asked for a trap");
        }
        let mut out = msg.to_message();
        out.payload.make_ascii_uppercase();
        MessageVerdict::Replace(out)
    }
}
