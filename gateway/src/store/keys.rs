//! Key and value encodings of the keyspaces (see the layout table in the module docs).

use super::*;

pub(super) fn record_key(topic_id: u32, origin_id: u32, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&topic_id.to_be_bytes());
    k[4..8].copy_from_slice(&origin_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn key_seq(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if key.len() == 16 {
        b.copy_from_slice(&key[8..16]);
    }
    u64::from_be_bytes(b)
}

pub(super) fn meta_topic_key(id: u32) -> Vec<u8> {
    let mut k = b"v".to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn encode_topic_state(t: &TopicState) -> Vec<u8> {
    let body = rmp_serde::to_vec(t).unwrap_or_default();
    let mut out = crc32c::crc32c(&body).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

pub(super) fn decode_topic_state(bytes: &[u8]) -> Result<TopicState, String> {
    if bytes.len() < 4 {
        return Err("truncated".into());
    }
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if crc32c::crc32c(&bytes[4..]) != stored {
        return Err("checksum mismatch".into());
    }
    rmp_serde::from_slice(&bytes[4..]).map_err(|e| e.to_string())
}

pub(super) fn dedupe_key(client: &str, mid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client.len() + mid.len());
    k.push(b'k');
    k.extend_from_slice(client.as_bytes());
    k.push(0);
    k.extend_from_slice(mid.as_bytes());
    k
}
