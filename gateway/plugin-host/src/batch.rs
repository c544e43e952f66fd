//! [`BatchBuilder`]: packs messages into the flat `batch` record of
//! `on-batch` — one buffer, offsets per message (layout in the WIT and in
//! the guest SDK's `batch` module); [`BatchVerdicts`]: what comes back.

use crate::bindings::types::{Batch, BatchVerdict, Header, Message, MessageVerdict};

/// Builds a [`Batch`]. Offsets are `u32`: a batch holds at most 4 GiB,
/// far above any frame limit; `push` refuses beyond.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    data: Vec<u8>,
    headers: Vec<Header>,
    /// Three per message: topic end, payload end, headers end.
    ends: Vec<u32>,
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
            ends: Vec::with_capacity(messages.saturating_mul(3)),
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
        self.ends
            .extend_from_slice(&[topic_end, payload_end, headers_end]);
        Ok(())
    }

    /// Messages so far.
    pub fn len(&self) -> usize {
        self.ends.len() / 3
    }

    /// Whether no message was pushed.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The batch.
    pub fn finish(self) -> Batch {
        Batch {
            data: self.data,
            headers: self.headers,
            ends: self.ends,
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

/// The verdicts of one `on-batch` call: one per message, in batch order.
/// Kept as the guest returns them — only the verdicts that are not `pass`,
/// by index — so an all-pass batch costs no verdict per message.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchVerdicts {
    len: usize,
    /// Strictly ascending indexes, all below `len`.
    exceptions: Vec<BatchVerdict>,
}

impl BatchVerdicts {
    /// `len` verdicts; the messages not in `exceptions` pass. Checks the
    /// contract: indexes in range, strictly ascending.
    ///
    /// # Errors
    /// The offending index, as a message.
    pub(crate) fn new(len: usize, exceptions: Vec<BatchVerdict>) -> Result<Self, String> {
        let mut next = 0usize;
        for e in &exceptions {
            let index = e.index as usize;
            if index < next || index >= len {
                return Err(format!(
                    "on-batch returned a verdict for message {index} of {len}, out of range or order"
                ));
            }
            next = index + 1;
        }
        Ok(BatchVerdicts { len, exceptions })
    }

    /// Number of messages (verdicts).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every message passes.
    pub fn all_pass(&self) -> bool {
        self.exceptions
            .iter()
            .all(|e| e.verdict == MessageVerdict::Pass)
    }

    /// The verdicts that are not (necessarily) `pass`, by message index,
    /// ascending.
    pub fn exceptions(&self) -> &[BatchVerdict] {
        &self.exceptions
    }

    /// The verdicts that are not (necessarily) `pass`, owned, by message
    /// index, ascending.
    pub fn into_exceptions(self) -> Vec<BatchVerdict> {
        self.exceptions
    }

    /// One verdict per message, in order.
    pub fn iter(&self) -> impl Iterator<Item = &MessageVerdict> + '_ {
        let mut next = self.exceptions.iter().peekable();
        (0..self.len).map(move |i| match next.peek() {
            Some(e) if e.index as usize == i => next.next().map_or(&PASS, |e| &e.verdict),
            _ => &PASS,
        })
    }

    /// One owned verdict per message, in order.
    pub fn into_vec(self) -> Vec<MessageVerdict> {
        let mut out = Vec::with_capacity(self.len);
        for BatchVerdict { index, verdict } in self.exceptions {
            out.resize(index as usize, MessageVerdict::Pass);
            out.push(verdict);
        }
        out.resize(self.len, MessageVerdict::Pass);
        out
    }
}

static PASS: MessageVerdict = MessageVerdict::Pass;

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
        assert_eq!(batch.ends, vec![3, 5, 0, 6, 6, 0]);
    }

    fn at(index: u32, reason: &str) -> BatchVerdict {
        BatchVerdict {
            index,
            verdict: MessageVerdict::Reject(reason.into()),
        }
    }

    #[test]
    fn exceptions_spread_over_passes() {
        let v = BatchVerdicts::new(4, vec![at(1, "a"), at(3, "b")]).expect("valid");
        let want = vec![
            MessageVerdict::Pass,
            MessageVerdict::Reject("a".into()),
            MessageVerdict::Pass,
            MessageVerdict::Reject("b".into()),
        ];
        assert_eq!(v.iter().cloned().collect::<Vec<_>>(), want);
        assert!(!v.all_pass());
        assert_eq!(v.into_vec(), want);
        let none = BatchVerdicts::new(2, Vec::new()).expect("valid");
        assert!(none.all_pass() && none.iter().count() == 2);
    }

    #[test]
    fn exceptions_out_of_range_or_order_break_the_contract() {
        for bad in [
            vec![at(2, "x")],
            vec![at(1, "x"), at(0, "y")],
            vec![at(0, "x"), at(0, "y")],
        ] {
            assert!(BatchVerdicts::new(2, bad).is_err());
        }
    }
}
