//! Reading the flat `batch` record of `on-batch`.
//!
//! Layout (see `batch-entry` in the WIT): message `i` occupies
//! `data[start .. payload_end]`, `start` being the previous entry's
//! `payload_end` (0 first); its topic is `data[start .. topic_end]`, its
//! payload `data[topic_end .. payload_end]` and its headers
//! `headers[hstart .. headers_end]` (`hstart`: the previous `headers_end`).

use crate::message::MessageRef;
use crate::types::{Batch, Header};

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
            headers: self.headers,
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
        self.entries.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The messages, in order.
    pub fn items(&self) -> impl Iterator<Item = Result<BatchItem<'_>, BatchError>> + '_ {
        let (mut start, mut hstart) = (0usize, 0usize);
        self.entries.iter().enumerate().map(move |(index, e)| {
            let topic_end = e.topic_end as usize;
            let payload_end = e.payload_end as usize;
            let headers_end = e.headers_end as usize;
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
            Ok(BatchItem { topic, headers, payload })
        })
    }
}
