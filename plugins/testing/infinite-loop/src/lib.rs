//! Test plugin: spins forever on a message whose payload is `loop`,
//! passes everything else. The host must stop it at the CPU deadline and
//! keep serving.

use edgesync_plugin::{ConnRef, MessageRef, MessageVerdict, Plugin};

struct InfiniteLoop;

#[edgesync_plugin::export]
impl Plugin for InfiniteLoop {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(InfiniteLoop)
    }

    fn on_message(&self, _sender: &ConnRef, msg: MessageRef<'_>) -> MessageVerdict {
        if msg.payload == b"loop" {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        MessageVerdict::Pass
    }
}
