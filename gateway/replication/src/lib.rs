//! `edgesync-replication`: the replication core of edgesync, with no I/O.
//!
//! (Crate docs are completed in a later commit.)

pub mod digest;
pub mod link;
pub mod lww;
pub mod ranges;
pub mod vv;
pub mod wire;

pub use digest::{BucketDigest, Entry, OriginDigest};
pub use link::{
    Action, ApplyBatch, ApplyOutcome, CloseReason, Committed, Link, LinkConfig, LinkEvent, LinkUp,
    LocalView, ReadRequest, ReadResult,
};
pub use lww::{LwwEntry, LwwMap, Merge};
pub use ranges::{Range, RangeSet};
pub use vv::VersionVector;
pub use wire::{Direction, Message, RecordBody, RefuseReason, StreamId};
