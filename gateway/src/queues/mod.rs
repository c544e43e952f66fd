//! Queue groups (issue 14.1, DESIGN.md §7): each message of a group's topics goes to one
//! member, which answers `ack`, `nak`, `progress` or `term`.
//!
//! This module owns the group's bookkeeping — who holds what, ack-wait deadlines,
//! redelivery, dead-letter decisions, windows, strict per-topic order — as the I/O-free
//! state machine [`Group`], fed with the time. It does not yet own the wiring: taking a
//! group's records from the committed stream, pushing deliveries into members'
//! outboxes, publishing dead letters through the pipeline and persisting progress in
//! the store are the next slices (docs/queues.md, "Status").

mod group;

pub use group::{
    Answered, DeadLetter, Delivery, Group, GroupOptions, JobKey, MemberId, NotInFlight,
};
