//! Test plugin using every metric kind: counts messages by topic class,
//! sets a gauge to the last payload size, observes payload sizes.

use std::cell::Cell;

use edgesync_plugin::metrics;
use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};

struct MetricsUser {
    messages: u32,
    last_size: u32,
    sizes: u32,
    seen: Cell<u64>,
}

#[edgesync_plugin::export]
impl Plugin for MetricsUser {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(MetricsUser {
            messages: metrics::define_counter(
                "messages_total",
                "Messages seen.",
                &["class".into()],
            )?,
            last_size: metrics::define_gauge(
                "last_payload_bytes",
                "Size of the last payload.",
                &[],
            )?,
            sizes: metrics::define_histogram(
                "payload_bytes",
                "Payload sizes.",
                &[],
                &[16.0, 256.0, 4096.0],
            )?,
            seen: Cell::new(0),
        })
    }

    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        let class = msg.topic.split('.').next().unwrap_or("none").to_string();
        metrics::add(self.messages, &[class], 1.0);
        metrics::set(self.last_size, &[], msg.payload.len() as f64);
        metrics::observe(self.sizes, &[], msg.payload.len() as f64);
        self.seen.set(self.seen.get() + 1);
        MessageVerdict::Pass
    }
}
