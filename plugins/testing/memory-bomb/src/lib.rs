//! Test plugin: allocates without bound on a message whose payload is
//! `bomb` (touching every page), passes everything else. The host must
//! cap its memory and keep serving.

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};

struct MemoryBomb;

#[edgesync_plugin::export]
impl Plugin for MemoryBomb {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(MemoryBomb)
    }

    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        if msg.payload == b"bomb" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![0xA5; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        MessageVerdict::Pass
    }
}
