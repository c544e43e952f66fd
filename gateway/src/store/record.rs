//! The record: the unit the store writes, replicates and delivers.
//!
//! # On-disk / on-wire format (versions 1 and 2, little endian)
//!
//! ```text
//! offset  size  field
//! 0       4     crc32c of every byte after this field
//! 4       1     format version: 2 when the record carries a publish key, else 1
//! 5       8     seq     (dense per topic and origin, from 1)
//! 13      8     hlc     (ms since Unix epoch << 16 | logical)
//! 21      8     epoch   (origin epoch)
//! 29      1+n   node    (u8 length, UTF-8)
//! ..      2+n   topic   (u16 length, UTF-8)
//! ..      1+n   client  (u8 length, UTF-8)
//! ..      1     has_mid (0 or 1), then 1+n mid (u8 length, UTF-8) when 1
//! ..      16    publish key (version 2 only): see [`PublishKey`]
//! ..      2     header count, then per header 2+n name and 2+n value
//! ..      4+n   payload
//! ```
//!
//! The record is self-describing (topic and origin inside), so a peer can store
//! it byte for byte. The CRC is computed on write and checked on every read.
//!
//! The publish key lets every gateway that stores a replica answer a retried
//! publish (same principal, client, topic and `mid`) with the original ack: the
//! record does not carry the publisher's principal, only this hash of the whole
//! dedupe identity. A record without one (no `mid`, or written before version 2)
//! is encoded as version 1, so decode → encode stays byte-identical either way.

use bytes::Bytes;
use edgesync_protocol::{Headers, Msg, Origin, Payload};

/// Format version of a record without a publish key.
pub const FORMAT_VERSION: u8 = 1;
/// Format version of a record with a publish key (after the mid).
pub const FORMAT_VERSION_KEYED: u8 = 2;

/// The first 16 bytes of SHA-256 over a publish's dedupe identity (principal,
/// client, topic, mid; see `keys::dedupe_identity`). 128 bits: an accidental
/// collision needs ~2^64 publishes inside one dedupe window, and a chosen one a
/// SHA-256 second preimage on 128 bits.
pub type PublishKey = [u8; 16];

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub origin: Origin,
    pub seq: u64,
    pub hlc: u64,
    pub client: String,
    pub mid: Option<String>,
    /// Hash of the publish's dedupe identity; `Some` only with a `mid`.
    pub publish_key: Option<PublishKey>,
    pub headers: Headers,
    pub payload: Bytes,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record truncated at {0}")]
    Truncated(&'static str),
    #[error("record format version {0} is unknown")]
    Version(u8),
    #[error("record field {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("record field {0} is too long to encode")]
    TooLong(&'static str),
    #[error("record has a publish key but no mid")]
    KeyWithoutMid,
}

impl Record {
    /// The protocol view of this record.
    pub fn to_msg(&self) -> Msg {
        Msg {
            topic: self.topic.clone(),
            origin: self.origin.node.clone(),
            epoch: self.origin.epoch,
            seq: self.seq,
            hlc: self.hlc,
            client: self.client.clone(),
            mid: self.mid.clone(),
            headers: self.headers.clone(),
            data: Payload(self.payload.clone()),
            sub: None,
            queue: None,
            delivery: None,
        }
    }

    /// Encode with checksum.
    ///
    /// # Errors
    /// [`RecordError::TooLong`] when a field exceeds its length prefix (the session
    /// bounds every field well below these, so this signals a bug upstream).
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::with_capacity(64 + self.topic.len() + self.payload.len());
        out.extend_from_slice(&[0; 4]);
        out.push(match self.publish_key {
            Some(_) => FORMAT_VERSION_KEYED,
            None => FORMAT_VERSION,
        });
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.hlc.to_le_bytes());
        out.extend_from_slice(&self.origin.epoch.to_le_bytes());
        put_u8_str(&mut out, &self.origin.node, "node")?;
        put_u16_str(&mut out, &self.topic, "topic")?;
        put_u8_str(&mut out, &self.client, "client")?;
        match &self.mid {
            None => out.push(0),
            Some(mid) => {
                out.push(1);
                put_u8_str(&mut out, mid, "mid")?;
            }
        }
        if let Some(key) = &self.publish_key {
            if self.mid.is_none() {
                return Err(RecordError::KeyWithoutMid);
            }
            out.extend_from_slice(key);
        }
        let n = u16::try_from(self.headers.len()).map_err(|_| RecordError::TooLong("headers"))?;
        out.extend_from_slice(&n.to_le_bytes());
        for (k, v) in &self.headers.0 {
            put_u16_str(&mut out, k, "header name")?;
            put_u16_str(&mut out, v, "header value")?;
        }
        let len = u32::try_from(self.payload.len()).map_err(|_| RecordError::TooLong("payload"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32c::crc32c(&out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decode and verify the checksum.
    ///
    /// # Errors
    /// [`RecordError`] for a checksum mismatch or malformed bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader { buf: bytes };
        let stored = u32::from_le_bytes(r.array::<4>("crc")?);
        let computed = crc32c::crc32c(r.buf);
        if stored != computed {
            return Err(RecordError::Checksum { stored, computed });
        }
        let version = r.array::<1>("version")?[0];
        if version != FORMAT_VERSION && version != FORMAT_VERSION_KEYED {
            return Err(RecordError::Version(version));
        }
        let seq = u64::from_le_bytes(r.array::<8>("seq")?);
        let hlc = u64::from_le_bytes(r.array::<8>("hlc")?);
        let epoch = u64::from_le_bytes(r.array::<8>("epoch")?);
        let node = r.u8_str("node")?;
        let topic = r.u16_str("topic")?;
        let client = r.u8_str("client")?;
        let mid = match r.array::<1>("has_mid")?[0] {
            0 => None,
            _ => Some(r.u8_str("mid")?),
        };
        let publish_key = match version {
            FORMAT_VERSION_KEYED if mid.is_none() => return Err(RecordError::KeyWithoutMid),
            FORMAT_VERSION_KEYED => Some(r.array::<16>("publish key")?),
            _ => None,
        };
        let n = u16::from_le_bytes(r.array::<2>("header count")?);
        let mut headers = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            headers.push((r.u16_str("header name")?, r.u16_str("header value")?));
        }
        let len = u32::from_le_bytes(r.array::<4>("payload length")?) as usize;
        let payload = Bytes::copy_from_slice(r.take(len, "payload")?);
        Ok(Record {
            topic,
            origin: Origin { node, epoch },
            seq,
            hlc,
            client,
            mid,
            publish_key,
            headers: Headers(headers),
            payload,
        })
    }
}

fn put_u8_str(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), RecordError> {
    let n = u8::try_from(s.len()).map_err(|_| RecordError::TooLong(field))?;
    out.push(n);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_u16_str(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), RecordError> {
    let n = u16::try_from(s.len()).map_err(|_| RecordError::TooLong(field))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(RecordError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8_str(&mut self, what: &'static str) -> Result<String, RecordError> {
        let n = self.array::<1>(what)?[0] as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError::Utf8(what))
    }

    fn u16_str(&mut self, what: &'static str) -> Result<String, RecordError> {
        let n = u16::from_le_bytes(self.array::<2>(what)?) as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError::Utf8(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_record() -> impl Strategy<Value = Record> {
        (
            "[a-z.]{1,30}",
            "[a-z0-9-]{1,10}",
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            prop::option::of(("[a-z0-9]{0,12}", prop::option::of(any::<[u8; 16]>()))),
            prop::collection::vec(("[a-z]{1,5}", "[ -~]{0,8}"), 0..3),
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(
                |(topic, node, epoch, seq, hlc, mid, headers, payload)| Record {
                    topic,
                    origin: Origin { node, epoch },
                    seq,
                    hlc,
                    client: "client".into(),
                    publish_key: mid.as_ref().and_then(|(_, k)| *k),
                    mid: mid.map(|(m, _)| m),
                    headers: Headers(headers),
                    payload: Bytes::from(payload),
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(r in any_record()) {
            let bytes = r.encode().expect("encode");
            let decoded = Record::decode(&bytes).expect("decode");
            // Replicas store what they receive byte for byte: re-encoding is identical.
            prop_assert_eq!(decoded.encode().expect("re-encode"), bytes.clone());
            prop_assert_eq!(bytes[4], if r.publish_key.is_some() { 2 } else { 1 });
            prop_assert_eq!(decoded, r);
        }

        #[test]
        fn any_single_bit_flip_is_detected(r in any_record(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = r.encode().expect("encode");
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(Record::decode(&bytes).is_err());
        }

        #[test]
        fn truncation_is_detected(r in any_record(), cut in any::<prop::sample::Index>()) {
            let bytes = r.encode().expect("encode");
            let n = cut.index(bytes.len());
            prop_assert!(Record::decode(&bytes[..n]).is_err());
        }
    }
}
