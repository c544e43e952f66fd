//! Borrowed views of a message and its sender — [`MessageRef`],
//! [`HeadersRef`], [`SenderRef`] — so the pass path of `on_message` and
//! `on_batch` allocates nothing.

use crate::types::{ConnRef, Header, Message};

/// A message as hooks see it: borrowed from the call's arguments or from a
/// batch buffer. Use [`MessageRef::to_message`] to build a replacement.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Dot-separated topic.
    pub topic: &'a str,
    /// Headers in publish order.
    pub headers: HeadersRef<'a>,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl<'a> MessageRef<'a> {
    /// An owned copy, e.g. to modify and return in `MessageVerdict::Replace`.
    pub fn to_message(&self) -> Message {
        Message {
            topic: self.topic.to_string(),
            headers: self.headers.to_vec(),
            payload: self.payload.to_vec(),
        }
    }

    /// The value of the first header named `name` (case-sensitive).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name)
    }

    /// The payload as UTF-8, if it is.
    pub fn payload_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.payload).ok()
    }
}

impl Message {
    /// A borrowed view of this message.
    pub fn as_ref(&self) -> MessageRef<'_> {
        MessageRef {
            topic: &self.topic,
            headers: HeadersRef::List(&self.headers),
            payload: &self.payload,
        }
    }
}

/// Who sent a message: [`ConnRef`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderRef<'a> {
    /// Gateway-local connection id; 0 when the message does not come from
    /// a client connection (a plugin publish, the admin API).
    pub conn_id: u64,
    /// The client id the connection presented at connect.
    pub client_id: &'a str,
    /// The principal an auth hook assigned at connect; empty when the
    /// connection is anonymous.
    pub principal: &'a str,
}

impl SenderRef<'_> {
    /// An owned copy.
    pub fn to_conn_ref(&self) -> ConnRef {
        ConnRef {
            conn_id: self.conn_id,
            client_id: self.client_id.to_string(),
            principal: self.principal.to_string(),
        }
    }
}

impl ConnRef {
    /// A borrowed view of this sender.
    pub fn as_sender(&self) -> SenderRef<'_> {
        SenderRef {
            conn_id: self.conn_id,
            client_id: &self.client_id,
            principal: &self.principal,
        }
    }
}

/// A message's headers, in publish order, borrowed: either a list of
/// [`Header`]s or the packed form of `on-message` (see `packed-message` in
/// the WIT; validated before a hook sees it).
#[derive(Debug, Clone, Copy)]
pub enum HeadersRef<'a> {
    /// A list of headers (`on-batch`, `on-write`, [`Message::as_ref`]).
    List(&'a [Header]),
    /// Length-prefixed names and values, as `on-message` receives them.
    Packed(&'a [u8]),
}

impl<'a> HeadersRef<'a> {
    /// No headers.
    pub const EMPTY: HeadersRef<'static> = HeadersRef::List(&[]);

    /// `(name, value)` pairs in publish order.
    pub fn iter(&self) -> HeaderIter<'a> {
        match *self {
            HeadersRef::List(l) => HeaderIter::List(l.iter()),
            HeadersRef::Packed(p) => HeaderIter::Packed(p),
        }
    }

    /// The value of the first header named `name` (case-sensitive).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        match self {
            HeadersRef::List(l) => l.len(),
            HeadersRef::Packed(_) => self.iter().count(),
        }
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        match self {
            HeadersRef::List(l) => l.is_empty(),
            HeadersRef::Packed(p) => p.is_empty(),
        }
    }

    /// Owned copies, e.g. for a replacement message.
    pub fn to_vec(&self) -> Vec<Header> {
        self.iter()
            .map(|(name, value)| Header {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect()
    }
}

/// Iterator over [`HeadersRef`]: `(name, value)`.
#[derive(Debug, Clone)]
pub enum HeaderIter<'a> {
    #[doc(hidden)]
    List(std::slice::Iter<'a, Header>),
    #[doc(hidden)]
    Packed(&'a [u8]),
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            HeaderIter::List(it) => it.next().map(|h| (h.name.as_str(), h.value.as_str())),
            HeaderIter::Packed(rest) => {
                let (name, after) = split_field(rest)?;
                let (value, after) = split_field(after)?;
                *rest = after;
                Some((name, value))
            }
        }
    }
}

/// Splits one length-prefixed UTF-8 field off `buf`: `(field, rest)`.
/// `None` at the end or on a malformed field (never after
/// [`validate_packed_headers`]).
pub(crate) fn split_field(buf: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return None;
    }
    let (field, rest) = rest.split_at(len);
    Some((std::str::from_utf8(field).ok()?, rest))
}

/// Whether `buf` is a well-formed sequence of (name, value) fields.
pub(crate) fn validate_packed_headers(mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        let Some((_, rest)) = split_field(buf) else {
            return false;
        };
        let Some((_, rest)) = split_field(rest) else {
            return false;
        };
        buf = rest;
    }
    true
}
