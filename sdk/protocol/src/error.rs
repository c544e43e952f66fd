//! Stable error codes. The string form is what travels on the wire and what
//! clients match on; it never changes meaning once released.

use serde::{Deserialize, Serialize};

/// An error the gateway reports to a client, with whether retrying the same
/// command later can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded in the negotiated encoding.
    BadFrame,
    /// The command decoded but a field is missing or has a bad value.
    BadRequest,
    /// A frame exceeded `limits.max_frame_bytes`.
    FrameTooLarge,
    /// The topic or pattern breaks the naming rules.
    TopicInvalid,
    /// The topic or pattern exceeds `limits.max_topic_bytes`.
    TopicTooLong,
    /// More headers, or larger headers, than `limits.max_headers` / `limits.max_header_bytes`.
    HeadersTooLarge,
    /// The connection already holds `limits.max_subscriptions` subscriptions.
    TooManySubscriptions,
    /// The pattern is already subscribed on this connection.
    AlreadySubscribed,
    /// No subscription with that pattern exists on this connection.
    NotSubscribed,
    /// A command other than `connect` arrived before `connect`.
    NotConnected,
    /// `connect` was sent twice.
    AlreadyConnected,
    /// Publishing faster than `limits.publish_rate_per_sec`.
    RateLimited,
    /// The gateway holds `limits.max_connections` (or per-IP) connections.
    TooManyConnections,
    /// Authentication failed.
    Unauthorized,
    /// The principal may not publish to / subscribe to that topic.
    Forbidden,
    /// A plugin rejected the message.
    Rejected,
    /// The cursor could not be decoded.
    CursorInvalid,
    /// The subscriber fell behind and its outbox overflowed (policy `disconnect`).
    SlowConsumer,
    /// Nothing was received within `limits.idle_timeout_ms`.
    IdleTimeout,
    /// The store could not make the message durable; nothing was acknowledged.
    StorageUnavailable,
    /// The gateway is shutting down; reconnect (possibly elsewhere).
    ShuttingDown,
    /// An unexpected internal failure; nothing was acknowledged.
    Internal,
    /// `ack`/`nak`/`progress`/`term` of a queue delivery this connection does not hold
    /// (already answered, taken back after its ack wait or never delivered to it).
    NotInFlight,
    /// A `sub` joining a queue group with `ack_wait_ms`, `max_deliveries` or `ordering`
    /// other than the group's, or with a pattern other than the group's.
    QueueConflict,
    /// The topic's ack mode is `replicated:K` and fewer than K peers reported the
    /// message durable in time. It is stored on this gateway; publish again with the
    /// same `mid` to wait again (the retry is answered with the original record).
    ReplicationTimeout,
}

impl ErrorCode {
    /// The wire name (`snake_case`).
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadFrame => "bad_frame",
            BadRequest => "bad_request",
            FrameTooLarge => "frame_too_large",
            TopicInvalid => "topic_invalid",
            TopicTooLong => "topic_too_long",
            HeadersTooLarge => "headers_too_large",
            TooManySubscriptions => "too_many_subscriptions",
            AlreadySubscribed => "already_subscribed",
            NotSubscribed => "not_subscribed",
            NotConnected => "not_connected",
            AlreadyConnected => "already_connected",
            RateLimited => "rate_limited",
            TooManyConnections => "too_many_connections",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            Rejected => "rejected",
            CursorInvalid => "cursor_invalid",
            SlowConsumer => "slow_consumer",
            IdleTimeout => "idle_timeout",
            StorageUnavailable => "storage_unavailable",
            ShuttingDown => "shutting_down",
            Internal => "internal",
            NotInFlight => "not_in_flight",
            QueueConflict => "queue_conflict",
            ReplicationTimeout => "replication_timeout",
        }
    }

    /// Whether sending the same command again later can succeed.
    pub fn retryable(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            RateLimited
                | TooManyConnections
                | SlowConsumer
                | IdleTimeout
                | StorageUnavailable
                | ShuttingDown
                | Internal
                | ReplicationTimeout
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
