//! Reading the flat `batch` record of `on-batch`.
//!
//! Layout (see `batch` in the WIT): message `i`'s offsets are
//! `ends[3i..3i+3]` = (`topic_end`, `payload_end`, `headers_end`); it
//! occupies `data[start .. payload_end]`, `start` being the previous
//! message's `payload_end` (0 first); its topic is `data[start .. topic_end]`,
//! its payload `data[topic_end .. payload_end]` and its headers
//! `headers[hstart .. headers_end]` (`hstart`: the previous `headers_end`).
//!
//! And writing its result, [`BatchVerdicts`]: only the verdicts that are not
//! `pass`.

use crate::message::{HeadersRef, MessageRef};
use crate::types::{Batch, BatchVerdict, Header, MessageVerdict};

/// One message of a batch, borrowed from the batch buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// Dot-separated topic.
    pub topic: &'a str,
    /// Headers in publish order.
    pub headers: &'a [Header],
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl<'a> BatchItem<'a> {
    /// The same message as a [`MessageRef`].
    pub fn as_message_ref(&self) -> MessageRef<'a> {
        MessageRef {
            topic: self.topic,
            headers: HeadersRef::List(self.headers),
            payload: self.payload,
        }
    }
}

/// Why a batch entry could not be read (a host bug, never expected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// Offsets out of order or past the end of `data`.
    BadOffsets {
        /// Index of the entry.
        index: usize,
    },
    /// The topic bytes are not UTF-8.
    TopicNotUtf8 {
        /// Index of the entry.
        index: usize,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::BadOffsets { index } => write!(f, "batch entry {index}: bad offsets"),
            BatchError::TopicNotUtf8 { index } => write!(f, "batch entry {index}: topic not UTF-8"),
        }
    }
}

impl std::error::Error for BatchError {}

impl Batch {
    /// Number of messages.
    pub fn len(&self) -> usize {
        self.ends.len() / 3
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The messages, in order.
    pub fn items(&self) -> impl Iterator<Item = Result<BatchItem<'_>, BatchError>> + '_ {
        let (mut start, mut hstart) = (0usize, 0usize);
        self.ends
            .chunks_exact(3)
            .enumerate()
            .map(move |(index, e)| {
                let topic_end = e[0] as usize;
                let payload_end = e[1] as usize;
                let headers_end = e[2] as usize;
                if start > topic_end
                    || topic_end > payload_end
                    || payload_end > self.data.len()
                    || hstart > headers_end
                    || headers_end > self.headers.len()
                {
                    return Err(BatchError::BadOffsets { index });
                }
                let topic = std::str::from_utf8(&self.data[start..topic_end])
                    .map_err(|_| BatchError::TopicNotUtf8 { index })?;
                let payload = &self.data[topic_end..payload_end];
                let headers = &self.headers[hstart..headers_end];
                start = payload_end;
                hstart = headers_end;
                Ok(BatchItem {
                    topic,
                    headers,
                    payload,
                })
            })
    }
}

/// What `on_batch` returns: the verdicts on the messages of a batch that do
/// not pass (every message not listed passes), which is all the host copies
/// out of the guest. Collect it from one verdict per message, in order:
///
/// ```ignore
/// batch.items().map(|item| /* a MessageVerdict */).collect::<BatchVerdicts>()
/// ```
///
/// or [`push`](BatchVerdicts::push) the exceptions by index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchVerdicts(Vec<BatchVerdict>);

impl BatchVerdicts {
    /// No exceptions: every message passes.
    pub fn new() -> Self {
        BatchVerdicts(Vec::new())
    }

    /// Sets the verdict on message `index`. Indexes must ascend (the host
    /// refuses the batch's result otherwise); `Pass` is not stored.
    pub fn push(&mut self, index: usize, verdict: MessageVerdict) {
        if verdict == MessageVerdict::Pass {
            return;
        }
        // A batch never holds 2^32 messages; an index past u32 becomes
        // u32::MAX, which the host refuses as out of range.
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        self.0.push(BatchVerdict { index, verdict });
    }

    /// The exceptions, in index order.
    pub fn as_slice(&self) -> &[BatchVerdict] {
        &self.0
    }

    /// The exceptions, for the export glue.
    pub fn into_inner(self) -> Vec<BatchVerdict> {
        self.0
    }
}

impl FromIterator<MessageVerdict> for BatchVerdicts {
    /// One verdict per message, in batch order.
    fn from_iter<I: IntoIterator<Item = MessageVerdict>>(iter: I) -> Self {
        let mut v = BatchVerdicts::new();
        for (index, verdict) in iter.into_iter().enumerate() {
            v.push(index, verdict);
        }
        v
    }
}
