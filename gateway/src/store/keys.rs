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

/// The dedupe identity of an idempotent publish: the principal (a presence byte,
/// then length-prefixed), the client id, the topic (each length-prefixed) and the mid.
/// The prefixes make the encoding injective: no two (principal, client, topic, mid)
/// share an identity, whatever bytes they hold.
pub(super) fn dedupe_identity(req: &Publish, mid: &str) -> Vec<u8> {
    let principal = req.principal.as_deref();
    let mut k = Vec::with_capacity(
        13 + principal.map_or(0, str::len) + req.client.len() + req.topic.len() + mid.len(),
    );
    let field = |k: &mut Vec<u8>, s: &str| {
        k.extend_from_slice(&(s.len() as u32).to_be_bytes());
        k.extend_from_slice(s.as_bytes());
    };
    match principal {
        Some(p) => {
            k.push(1);
            field(&mut k, p);
        }
        None => k.push(0),
    }
    field(&mut k, &req.client);
    field(&mut k, &req.topic);
    k.extend_from_slice(mid.as_bytes());
    k
}

/// The publish key a record carries: SHA-256 of the dedupe identity, first 16 bytes.
pub(super) fn publish_key(req: &Publish, mid: &str) -> PublishKey {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(dedupe_identity(req, mid));
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The dedupe keyspace key of a publish key: `k` · key. Local publishes and
/// replicated records with a publish key share one entry, so a retry on any
/// gateway that holds the record is answered with the original ack.
pub(super) fn dedupe_key(key: &PublishKey) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'k';
    k[1..].copy_from_slice(key);
    k
}

/// The value of a gap marker covering `key's seq ..= to`: a 4-byte tag, a version
/// byte and `to`. 13 bytes, shorter than any record (whose fixed fields alone are
/// 33 bytes), so the two can never be confused.
pub(super) fn gap_marker(to: u64) -> [u8; 13] {
    let mut v = [0u8; 13];
    v[..4].copy_from_slice(GAP_TAG);
    v[4] = 1;
    v[5..].copy_from_slice(&to.to_be_bytes());
    v
}

const GAP_TAG: &[u8; 4] = b"GAP\0";

/// `Some(to)` when `value` is a gap marker.
pub(super) fn decode_gap(value: &[u8]) -> Option<u64> {
    if value.len() != 13 || &value[..4] != GAP_TAG || value[4] != 1 {
        return None;
    }
    Some(u64::from_be_bytes(value[5..13].try_into().ok()?))
}

/// Meta key of one digest bucket: `g` · topic_id · origin_id · bucket.
pub(super) fn digest_key(topic_id: u32, origin_id: u32, bucket: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&digest_prefix(topic_id, origin_id));
    k[9..].copy_from_slice(&bucket.to_be_bytes());
    k
}

/// Meta key prefix of one (topic, origin)'s digest buckets.
pub(super) fn digest_prefix(topic_id: u32, origin_id: u32) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'g';
    k[1..5].copy_from_slice(&topic_id.to_be_bytes());
    k[5..9].copy_from_slice(&origin_id.to_be_bytes());
    k
}

/// Meta key of a record on the corrupt list: `c` · topic_id · origin_id · seq.
pub(super) fn corrupt_key(topic_id: u32, origin_id: u32, seq: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'c';
    k[1..].copy_from_slice(&record_key(topic_id, origin_id, seq));
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(principal: Option<&str>, client: &str, topic: &str, mid: &str) -> Vec<u8> {
        let req = Publish {
            topic: topic.into(),
            client: client.into(),
            principal: principal.map(str::to_string),
            mid: Some(mid.into()),
            headers: edgesync_protocol::Headers::default(),
            payload: bytes::Bytes::new(),
        };
        dedupe_identity(&req, mid)
    }

    /// Finding 18: the old `client · 0x00 · mid` key made (`a\0b`, `c`) and (`a`, `b\0c`)
    /// one key; every part but the last is now length-prefixed.
    #[test]
    fn dedupe_keys_never_collide() {
        let cases = [
            key(None, "a\0b", "t", "c"),
            key(None, "a", "t", "b\0c"),
            key(None, "a", "tb", "c"),
            key(None, "at", "b", "c"),
            key(Some(""), "a", "t", "c"),
            key(None, "a", "t", "c"),
            key(Some("a"), "", "t", "c"),
            key(Some("p"), "a", "t", "c"),
            key(Some("q"), "a", "t", "c"),
            key(None, "a", "u", "c"),
        ];
        for (i, a) in cases.iter().enumerate() {
            for b in &cases[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let hashed: std::collections::HashSet<_> = cases
            .iter()
            .map(|identity| <sha2::Sha256 as sha2::Digest>::digest(identity)[..16].to_vec())
            .collect::<std::collections::HashSet<Vec<u8>>>();
        assert_eq!(hashed.len(), cases.len());
    }
}
