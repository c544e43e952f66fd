//! Borrowed views of a message and its sender ([`MessageRef`],
//! [`SenderRef`], [`HeadersRef`]), and packing them into `on-message`'s
//! one-buffer argument (`packed-message`; layout in the WIT and in the
//! guest SDK's `packed` module).
//!
//! The gateway holds messages in its own types; with these views a hook
//! call copies the message once, into the instance's reusable packing
//! buffer, and wasmtime copies that buffer into the guest with a single
//! guest allocation (five with the `conn-ref` + `message` form).

use crate::bindings::types::{ConnRef, Header, Message, PackedMessage};

/// Who sent a message, borrowed ([`ConnRef`] without the copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderRef<'a> {
    /// Gateway-local connection id; 0 outside a client connection.
    pub conn_id: u64,
    /// The client id the connection presented at connect.
    pub client_id: &'a str,
    /// The principal an auth hook assigned; empty when anonymous.
    pub principal: &'a str,
}

impl<'a> From<&'a ConnRef> for SenderRef<'a> {
    fn from(c: &'a ConnRef) -> Self {
        SenderRef {
            conn_id: c.conn_id,
            client_id: &c.client_id,
            principal: &c.principal,
        }
    }
}

/// A message's headers in publish order, borrowed from whichever form the
/// caller keeps them in.
#[derive(Debug, Clone, Copy)]
pub enum HeadersRef<'a> {
    /// The contract's [`Header`] records.
    Headers(&'a [Header]),
    /// `(name, value)` pairs, the gateway's form.
    Pairs(&'a [(String, String)]),
}

impl<'a> HeadersRef<'a> {
    /// No headers.
    pub const EMPTY: HeadersRef<'static> = HeadersRef::Headers(&[]);

    fn for_each(&self, mut f: impl FnMut(&'a str, &'a str)) {
        match *self {
            HeadersRef::Headers(h) => h.iter().for_each(|h| f(&h.name, &h.value)),
            HeadersRef::Pairs(p) => p.iter().for_each(|(n, v)| f(n, v)),
        }
    }
}

/// A message as a hook sees it, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Dot-separated topic.
    pub topic: &'a str,
    /// Headers in publish order.
    pub headers: HeadersRef<'a>,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl<'a> From<&'a Message> for MessageRef<'a> {
    fn from(m: &'a Message) -> Self {
        MessageRef {
            topic: &m.topic,
            headers: HeadersRef::Headers(&m.headers),
            payload: &m.payload,
        }
    }
}

/// A packing buffer keeps at most this much capacity between calls, so one
/// huge message does not pin its size on a pooled instance.
const KEEP_CAPACITY: usize = 64 << 10;

/// The size of `sender` and `msg` packed: [`pack`] needs it to fit `u32`.
pub(crate) fn packed_len(sender: SenderRef<'_>, msg: MessageRef<'_>) -> usize {
    let mut n = sender.client_id.len() + sender.principal.len() + msg.topic.len();
    n = n.saturating_add(msg.payload.len());
    msg.headers.for_each(|name, value| {
        n = n.saturating_add(8 + name.len() + value.len());
    });
    n
}

/// Packs `sender` and `msg` into `out`, reusing `out.data`'s allocation.
/// The caller has checked that [`packed_len`] fits `u32`, so every offset
/// and length does.
pub(crate) fn pack(out: &mut PackedMessage, sender: SenderRef<'_>, msg: MessageRef<'_>) {
    let data = &mut out.data;
    if data.capacity() > KEEP_CAPACITY {
        *data = Vec::new();
    }
    data.clear();
    debug_assert!(u32::try_from(packed_len(sender, msg)).is_ok());
    // In range: the whole buffer fits `u32` (checked by the caller).
    let end = |data: &Vec<u8>| data.len() as u32;
    out.conn_id = sender.conn_id;
    data.extend_from_slice(sender.client_id.as_bytes());
    out.client_id_end = end(data);
    data.extend_from_slice(sender.principal.as_bytes());
    out.principal_end = end(data);
    data.extend_from_slice(msg.topic.as_bytes());
    out.topic_end = end(data);
    data.extend_from_slice(msg.payload);
    out.payload_end = end(data);
    msg.headers.for_each(|name, value| {
        for field in [name, value] {
            data.extend_from_slice(&(field.len() as u32).to_le_bytes());
            data.extend_from_slice(field.as_bytes());
        }
    });
}

/// An empty packing buffer.
pub(crate) fn empty_packed() -> PackedMessage {
    PackedMessage {
        conn_id: 0,
        data: Vec::new(),
        client_id_end: 0,
        principal_end: 0,
        topic_end: 0,
        payload_end: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_contract() {
        let mut p = empty_packed();
        let headers = [("k".to_string(), "vv".to_string())];
        let sender = SenderRef {
            conn_id: 3,
            client_id: "c1",
            principal: "",
        };
        let msg = MessageRef {
            topic: "t.x",
            headers: HeadersRef::Pairs(&headers),
            payload: b"pay",
        };
        assert_eq!(packed_len(sender, msg), 19);
        pack(&mut p, sender, msg);
        assert_eq!(p.conn_id, 3);
        assert_eq!(
            (p.client_id_end, p.principal_end, p.topic_end, p.payload_end),
            (2, 2, 5, 8)
        );
        assert_eq!(&p.data[..8], b"c1t.xpay");
        assert_eq!(&p.data[8..], b"\x01\0\0\0k\x02\0\0\0vv");

        // Reuse: a second message replaces the first entirely.
        let m = Message {
            topic: "a".into(),
            headers: Vec::new(),
            payload: Vec::new(),
        };
        let c = ConnRef {
            conn_id: 0,
            client_id: String::new(),
            principal: String::new(),
        };
        pack(&mut p, SenderRef::from(&c), (&m).into());
        assert_eq!(p.data, b"a");
        assert_eq!((p.topic_end, p.payload_end), (1, 1));
    }
}
