//! Unpacking `on-message`'s argument, `packed-message` (layout in the WIT):
//! one buffer holding the sender's client id and principal, the topic, the
//! payload and the length-prefixed headers.

use crate::message::{HeadersRef, MessageRef, SenderRef, validate_packed_headers};
use crate::types::PackedMessage;

/// Why a packed message could not be read (a host bug, never expected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedError(&'static str);

impl std::fmt::Display for PackedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed packed message: {}", self.0)
    }
}

impl std::error::Error for PackedError {}

impl PackedMessage {
    /// The sender and the message, borrowed from `data`.
    ///
    /// # Errors
    /// Offsets out of order or past the end, a string part that is not
    /// UTF-8, or a malformed header.
    pub fn unpack(&self) -> Result<(SenderRef<'_>, MessageRef<'_>), PackedError> {
        let data = &self.data[..];
        let ends = [
            self.client_id_end,
            self.principal_end,
            self.topic_end,
            self.payload_end,
        ];
        let mut start = 0usize;
        let mut parts: [&[u8]; 4] = [&[]; 4];
        for (part, end) in parts.iter_mut().zip(ends) {
            let end = end as usize;
            if end < start || end > data.len() {
                return Err(PackedError("offsets out of order"));
            }
            *part = &data[start..end];
            start = end;
        }
        let [client_id, principal, topic, payload] = parts;
        let text = |b| std::str::from_utf8(b).map_err(|_| PackedError("text is not UTF-8"));
        let headers = &data[start..];
        if !validate_packed_headers(headers) {
            return Err(PackedError("bad headers"));
        }
        let sender = SenderRef {
            conn_id: self.conn_id,
            client_id: text(client_id)?,
            principal: text(principal)?,
        };
        let msg = MessageRef {
            topic: text(topic)?,
            headers: HeadersRef::Packed(headers),
            payload,
        };
        Ok((sender, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn unpacks_every_part() {
        let mut data = b"clientbobt.xpay".to_vec();
        field(&mut data, "k");
        field(&mut data, "v");
        field(&mut data, "k2");
        field(&mut data, "");
        let p = PackedMessage {
            conn_id: 7,
            data,
            client_id_end: 6,
            principal_end: 9,
            topic_end: 12,
            payload_end: 15,
        };
        let (s, m) = p.unpack().expect("unpack");
        assert_eq!((s.conn_id, s.client_id, s.principal), (7, "client", "bob"));
        assert_eq!((m.topic, m.payload), ("t.x", &b"pay"[..]));
        let h: Vec<_> = m.headers.iter().collect();
        assert_eq!(h, vec![("k", "v"), ("k2", "")]);
        assert_eq!(m.header("k2"), Some(""));
        assert_eq!(m.headers.len(), 2);
    }

    #[test]
    fn refuses_bad_offsets_and_headers() {
        let p = PackedMessage {
            conn_id: 0,
            data: b"abc".to_vec(),
            client_id_end: 2,
            principal_end: 1,
            topic_end: 3,
            payload_end: 3,
        };
        assert!(p.unpack().is_err());
        let p = PackedMessage {
            conn_id: 0,
            data: b"ab\x05\0\0\0x".to_vec(),
            client_id_end: 1,
            principal_end: 1,
            topic_end: 2,
            payload_end: 2,
        };
        assert!(p.unpack().is_err());
    }
}
