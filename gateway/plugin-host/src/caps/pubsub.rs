//! `pubsub`: publish, send to a connection, close a connection — through
//! the gateway's [`HostServices`](crate::HostServices), which runs the
//! normal pipeline and applies loop protection. Topics and sizes are
//! validated here.

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::pubsub;
use crate::bindings::types::Header;
use crate::state::HostState;

use super::host_time;

/// Longest topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Largest payload a plugin may publish or send, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Most headers on a plugin publish.
pub const MAX_HEADERS: usize = 32;
/// Longest close reason, in bytes.
const MAX_REASON_BYTES: usize = 256;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    pubsub::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// A concrete topic: 1-256 bytes of non-empty dot-separated segments, no
/// wildcards, no whitespace.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic
            .split('.')
            .all(|s| !s.is_empty() && s != "*" && s != ">" && !s.chars().any(char::is_whitespace));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid topic `{}`",
            super::log::truncate(topic, 64)
        ))
    }
}

/// A reserved `$` topic only with `grants.system_topics`.
fn check_reserved(state: &HostState, topic: &str) -> Result<(), String> {
    if topic.starts_with('$') && !state.version.grants.system_topics {
        return Err(format!(
            "`{}` is a reserved `$` topic; writing it needs grants.system_topics",
            super::log::truncate(topic, 64)
        ));
    }
    Ok(())
}

fn check_payload(payload: &[u8]) -> Result<(), String> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(format!("payload over {MAX_PAYLOAD_BYTES} bytes"));
    }
    Ok(())
}

impl pubsub::Host for HostState {
    fn publish(
        &mut self,
        topic: String,
        headers: Vec<Header>,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        check_topic(&topic)?;
        check_reserved(self, &topic)?;
        check_payload(&payload)?;
        if headers.len() > MAX_HEADERS {
            return Err(format!("at most {MAX_HEADERS} headers"));
        }
        host_time(self, |s| {
            s.plugin
                .services
                .publish(&s.plugin.name, &topic, &headers, &payload)
        })
        .map_err(|e| e.to_string())
    }

    fn send(&mut self, conn_id: u64, topic: String, payload: Vec<u8>) -> Result<(), String> {
        check_topic(&topic)?;
        check_reserved(self, &topic)?;
        check_payload(&payload)?;
        host_time(self, |s| {
            s.plugin
                .services
                .send(&s.plugin.name, conn_id, &topic, &payload)
        })
        .map_err(|e| e.to_string())
    }

    fn close(&mut self, conn_id: u64, reason: String) -> Result<(), String> {
        let reason = super::log::truncate(&reason, MAX_REASON_BYTES).to_string();
        host_time(self, |s| {
            s.plugin.services.close(&s.plugin.name, conn_id, &reason)
        })
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(check_topic("a.b.c").is_ok());
        assert!(check_topic("a.*").is_err());
        assert!(check_topic("a..b").is_err());
        assert!(check_topic("").is_err());
        assert!(check_topic("a b").is_err());
    }
}
