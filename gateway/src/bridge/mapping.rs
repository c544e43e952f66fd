//! Records ↔ JetStream messages: subjects, headers, message ids and the encoding of
//! the bridge's durable positions. Pure functions, no I/O.
//!
//! - Subject = topic, dots kept (`sensors.eu.t1` ↔ `sensors.eu.t1`).
//! - `Nats-Msg-Id` = `<node>:<epoch>:<seq>:<topic>`: the record's identity (seq is
//!   dense per topic and origin, so the topic is part of it). Node ids hold no `:`.
//! - Identity headers `Edgesync-Origin`, `Edgesync-Epoch`, `Edgesync-Seq`,
//!   `Edgesync-Hlc`, `Edgesync-Client` (and `Edgesync-Mid` when the publisher gave
//!   one), then the record's own headers that are valid NATS headers and do not
//!   use a reserved name (`Nats-*`, `Edgesync-<identity>`).
//! - An imported record has client id `$bridge.<name>` (clients cannot choose a `$`
//!   id) and an `edgesync-import: <stream>:<stream seq>` header.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use bytes::Bytes;
use edgesync_protocol::{Headers, Origin};

use crate::store::Record;

pub const H_ORIGIN: &str = "Edgesync-Origin";
pub const H_EPOCH: &str = "Edgesync-Epoch";
pub const H_SEQ: &str = "Edgesync-Seq";
pub const H_HLC: &str = "Edgesync-Hlc";
pub const H_CLIENT: &str = "Edgesync-Client";
pub const H_MID: &str = "Edgesync-Mid";
/// On an imported record: where it came from (`<stream>:<stream seq>`).
pub const H_IMPORT: &str = "edgesync-import";

/// The client id of records an import made: `$bridge.<name>`.
pub fn import_client(bridge: &str) -> String {
    format!("{IMPORT_CLIENT_PREFIX}{bridge}")
}

const IMPORT_CLIENT_PREFIX: &str = "$bridge.";

/// True for a record an import made: export never sends it (no loops).
pub fn is_imported(r: &Record) -> bool {
    r.client.starts_with(IMPORT_CLIENT_PREFIX)
}

/// The JetStream de-duplication id of a record.
pub fn msg_id(r: &Record) -> String {
    format!("{}:{}:{}:{}", r.origin.node, r.origin.epoch, r.seq, r.topic)
}

/// The headers a record is published with. Returns them and how many of the
/// record's own headers were left out (not valid NATS headers, or reserved names).
pub fn export_headers(r: &Record) -> (HeaderMap, usize) {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", msg_id(r).as_str());
    h.insert(H_ORIGIN, r.origin.node.as_str());
    h.insert(H_EPOCH, HeaderValue::from(r.origin.epoch));
    h.insert(H_SEQ, HeaderValue::from(r.seq));
    h.insert(H_HLC, HeaderValue::from(r.hlc));
    if !r.client.is_empty() {
        insert_checked(&mut h, H_CLIENT, &r.client);
    }
    if let Some(mid) = &r.mid {
        insert_checked(&mut h, H_MID, mid);
    }
    let mut left_out = 0;
    for (k, v) in &r.headers.0 {
        let name = HeaderName::try_from(k.as_str());
        let value = HeaderValue::try_from(v.as_str());
        match (name, value) {
            (Ok(name), Ok(value)) if !reserved(k) => h.append(name, value),
            _ => left_out += 1,
        }
    }
    (h, left_out)
}

fn insert_checked(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::try_from(value) {
        h.insert(name, v);
    }
}

/// Header names the bridge owns: never copied from a record or into one.
fn reserved(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("nats-")
        || [H_ORIGIN, H_EPOCH, H_SEQ, H_HLC, H_CLIENT, H_MID, H_IMPORT]
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&n))
}

/// The edgesync identity (origin, seq) a JetStream message carries, if a bridge
/// exported it.
pub fn identity(h: &HeaderMap) -> Option<(Origin, u64)> {
    let node = h.get(H_ORIGIN)?.as_str().to_string();
    let epoch = h.get(H_EPOCH)?.as_str().parse().ok()?;
    let seq = h.get(H_SEQ)?.as_str().parse().ok()?;
    Some((Origin::new(node, epoch), seq))
}

/// The headers an imported message is stored with: its own minus the reserved ones
/// (JetStream's and the bridge's), plus `edgesync-import`.
pub fn import_headers(h: Option<&HeaderMap>, stream: &str, stream_seq: u64) -> Headers {
    let mut out = Vec::new();
    if let Some(h) = h {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            if reserved(name) {
                continue;
            }
            for v in values {
                out.push((name.to_string(), v.as_str().to_string()));
            }
        }
    }
    // HashMap order: sort so a redelivery stores the same bytes.
    out.sort();
    out.push((H_IMPORT.to_string(), format!("{stream}:{stream_seq}")));
    Headers(out)
}

/// The idempotent client message id of an imported message: a redelivery has the
/// same one, so the store's dedupe index answers it with the original ack.
pub fn import_mid(stream: &str, stream_seq: u64) -> String {
    format!("js:{stream}:{stream_seq}")
}

/// Position key of a topic's export version vector.
pub fn export_key(topic: &str) -> Vec<u8> {
    let mut k = b"x".to_vec();
    k.extend_from_slice(topic.as_bytes());
    k
}

/// Position key of an import's floor (highest stream seq committed here).
pub fn import_key(stream: &str) -> Vec<u8> {
    let mut k = b"i".to_vec();
    k.extend_from_slice(stream.as_bytes());
    k
}

/// A version vector as position bytes (MessagePack of `[(node, epoch, seq)]`).
pub fn encode_vv(vv: &BTreeMap<Origin, u64>) -> Vec<u8> {
    let list: Vec<(&str, u64, u64)> = vv
        .iter()
        .map(|(o, s)| (o.node.as_str(), o.epoch, *s))
        .collect();
    rmp_serde::to_vec(&list).unwrap_or_default()
}

/// Position bytes back to a version vector; `None` when they do not decode.
pub fn decode_vv(bytes: &[u8]) -> Option<BTreeMap<Origin, u64>> {
    let list: Vec<(String, u64, u64)> = rmp_serde::from_slice(bytes).ok()?;
    Some(
        list.into_iter()
            .map(|(n, e, s)| (Origin::new(n, e), s))
            .collect(),
    )
}

/// Messages a version vector is behind `head` by.
pub fn lag(head: &BTreeMap<Origin, u64>, pos: Option<&BTreeMap<Origin, u64>>) -> u64 {
    head.iter()
        .map(|(o, h)| h.saturating_sub(pos.and_then(|p| p.get(o)).copied().unwrap_or(0)))
        .sum()
}

/// The payload, as the record holds it.
pub fn payload(r: &Record) -> Bytes {
    r.payload.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(headers: Vec<(&str, &str)>) -> Record {
        Record {
            topic: "sensors.a".into(),
            origin: Origin::new("n1", 3),
            seq: 42,
            hlc: 7 << 16,
            client: "dev-1".into(),
            mid: Some("m-9".into()),
            publish_key: None,
            headers: Headers(
                headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn identity_round_trips_through_the_headers() {
        let r = record(vec![
            ("unit", "C"),
            ("Nats-Msg-Id", "forged"),
            ("bad name", "v"),
            ("k", "a\r\nb"),
        ]);
        let (h, left_out) = export_headers(&r);
        assert_eq!(left_out, 3, "reserved, invalid name, invalid value");
        assert_eq!(
            h.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some("n1:3:42:sensors.a")
        );
        assert_eq!(h.get("unit").map(|v| v.as_str()), Some("C"));
        assert_eq!(identity(&h), Some((Origin::new("n1", 3), 42)));
        let imported = import_headers(Some(&h), "EDGE", 7);
        assert_eq!(
            imported.0,
            vec![
                ("unit".to_string(), "C".to_string()),
                (H_IMPORT.to_string(), "EDGE:7".to_string())
            ],
            "the bridge's and JetStream's headers are not stored"
        );
    }

    #[test]
    fn imported_records_are_recognised_and_positions_round_trip() {
        let mut r = record(vec![]);
        assert!(!is_imported(&r));
        r.client = import_client("hub");
        assert!(is_imported(&r));
        let vv: BTreeMap<Origin, u64> = [(Origin::new("a", 1), 5), (Origin::new("b", 2), 9)].into();
        assert_eq!(decode_vv(&encode_vv(&vv)), Some(vv.clone()));
        assert_eq!(decode_vv(b"\xff"), None);
        let pos: BTreeMap<Origin, u64> = [(Origin::new("a", 1), 3)].into();
        assert_eq!(lag(&vv, Some(&pos)), 2 + 9);
        assert_eq!(lag(&vv, None), 14);
    }
}
