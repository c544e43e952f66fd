//! [`BatchBuilder`]: packs messages into the flat `batch` record of
//! `on-batch` — one buffer, offsets per message (layout in the WIT and in
//! the guest SDK's `batch` module).

use crate::bindings::types::{Batch, BatchEntry, Header, Message};

/// Builds a [`Batch`]. Offsets are `u32`: a batch holds at most 4 GiB,
/// far above any frame limit; `push` refuses beyond.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    data: Vec<u8>,
    headers: Vec<Header>,
    entries: Vec<BatchEntry>,
}

/// The batch would exceed `u32` offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch exceeds 4 GiB")]
pub struct BatchFull;

impl BatchBuilder {
    /// A builder with room for `messages` messages and `bytes` bytes of
    /// topics and payloads.
    pub fn with_capacity(messages: usize, bytes: usize) -> Self {
        BatchBuilder {
            data: Vec::with_capacity(bytes),
            headers: Vec::new(),
            entries: Vec::with_capacity(messages),
        }
    }

    /// Appends one message.
    ///
    /// # Errors
    /// [`BatchFull`] past 4 GiB.
    pub fn push(
        &mut self,
        topic: &str,
        headers: &[Header],
        payload: &[u8],
    ) -> Result<(), BatchFull> {
        let topic_end = self.data.len() + topic.len();
        let payload_end = topic_end + payload.len();
        let headers_end = self.headers.len() + headers.len();
        let (Ok(topic_end), Ok(payload_end), Ok(headers_end)) = (
            u32::try_from(topic_end),
            u32::try_from(payload_end),
            u32::try_from(headers_end),
        ) else {
            return Err(BatchFull);
        };
        self.data.extend_from_slice(topic.as_bytes());
        self.data.extend_from_slice(payload);
        self.headers.extend_from_slice(headers);
        self.entries.push(BatchEntry {
            topic_end,
            payload_end,
            headers_end,
        });
        Ok(())
    }

    /// Messages so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The batch.
    pub fn finish(self) -> Batch {
        Batch {
            data: self.data,
            headers: self.headers,
            entries: self.entries,
        }
    }

    /// A batch of `messages`.
    ///
    /// # Errors
    /// [`BatchFull`] past 4 GiB.
    pub fn from_messages(messages: &[Message]) -> Result<Batch, BatchFull> {
        let bytes = messages
            .iter()
            .map(|m| m.topic.len() + m.payload.len())
            .sum();
        let mut b = BatchBuilder::with_capacity(messages.len(), bytes);
        for m in messages {
            b.push(&m.topic, &m.headers, &m.payload)?;
        }
        Ok(b.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_cumulative() {
        let mut b = BatchBuilder::default();
        b.push("a.b", &[], b"xy").ok();
        b.push("c", &[], b"").ok();
        let batch = b.finish();
        assert_eq!(batch.data, b"a.bxyc");
        assert_eq!(
            (batch.entries[0].topic_end, batch.entries[0].payload_end),
            (3, 5)
        );
        assert_eq!(
            (batch.entries[1].topic_end, batch.entries[1].payload_end),
            (6, 6)
        );
    }
}
