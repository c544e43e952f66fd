//! Queue groups (issue 14.1, DESIGN.md §7): each message of a group's topics goes to one
//! member, which answers `ack`, `nak`, `progress` or `term`.
//!
//! This module owns the group's bookkeeping — who holds what, ack-wait deadlines,
//! redelivery, dead-letter decisions, windows, strict per-topic order — as the I/O-free
//! state machine [`Group`], fed with the time.
//!
//! [`Queues`] (`runtime.rs`) is the wiring: groups read their topics from the store as
//! commits mark them and members answer, push deliveries into members' outboxes, store
//! dead letters through the pipeline, keep their progress durable in the store, and run
//! one timer task for ack-wait deadlines.

mod group;
mod runtime;

pub use runtime::{GroupInfo, MAX_HELD, Queues};

pub use group::{
    Answered, DeadLetter, Delivery, Group, GroupOptions, JobKey, MemberId, NotInFlight,
};
