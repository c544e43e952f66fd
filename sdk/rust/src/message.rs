//! [`MessageRef`]: a borrowed view of a message, so the pass path of
//! `on_message` and `on_batch` allocates nothing.

use crate::types::{Header, Message};

/// A message as hooks see it: borrowed from the call's arguments or from a
/// batch buffer. Use [`MessageRef::to_message`] to build a replacement.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Dot-separated topic.
    pub topic: &'a str,
    /// Headers in publish order.
    pub headers: &'a [Header],
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
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
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
            headers: &self.headers,
            payload: &self.payload,
        }
    }
}
