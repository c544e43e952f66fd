//! `edgesync-replication`: the replication core of edgesync, with no I/O.
//!
//! This crate decides *what* two gateways say to each other and *when*; it never
//! touches a socket, a disk, a clock or a random number. Time comes in as an
//! argument (`now`: milliseconds on any monotonic clock, the same clock for one
//! [`Link`]), bytes come in as frames, and everything the outside world must do
//! comes out as an [`Action`]. That is what lets `tests/sim.rs` run the real code
//! in a seeded, replayable simulation of a whole cluster (REPLICATION.md §5, L1).
//!
//! # Modules, in data-flow order
//!
//! - [`ranges`]: sets of seqs as sorted disjoint ranges (the algebra under everything).
//! - [`vv`]: version vectors, per topic origin → range set; the replication checkpoint.
//! - [`digest`]: incremental per-(topic, origin, 1024-seq bucket) digests for anti-entropy.
//! - [`lww`]: last-writer-wins state (plugin kv, presence) with a clock-drift clamp.
//! - [`wire`]: the peer protocol's messages, framing and bounds.
//! - [`link`]: the per-connection state machine: handshake, summary, diff, stream,
//!   credits, acks, retention gaps, repair, digests, LWW sync.
//!
//! # What the core owns, and what it does not
//!
//! Owns: handshake validation and refusal reasons, which topics a link carries,
//! the diff of vectors, the order and batching of records, credit windows per
//! lane, durable-vector acks and the peer's durable view, truncation → gap
//! marker, digest comparison and repair pulls, LWW reconciliation.
//!
//! Does not own: sockets and QUIC streams, TLS and certificate parsing (the
//! driver passes the certificate's node id in), the record format and its CRC
//! check (records are opaque `Bytes` with their identity and CRC beside them;
//! the store verifies on apply), reading and writing the log, fsync, retention
//! policy, metrics registries, redial backoff, keep-alive and idle timeouts
//! (QUIC's).
//!
//! # Embedding: one `Link` per peer connection
//!
//! The driver (one async task per peer connection) owns a [`Link`] and the node
//! gives it a [`LocalView`]: synchronous reads of the store's *durable*
//! in-memory state (vectors, digests, LWW digests, the corrupt list). Call order:
//!
//! 1. Connection established (either side dialed; mutual TLS done):
//!    `Link::new(config, Some(peer_cert_node_id))`. It queues our hello.
//! 2. After **every** call below, drain [`Link::poll_action`] until `None` and
//!    carry the actions out in order, then re-arm the timer from
//!    [`Link::poll_timeout`] (an absolute `now`, or `None`).
//! 3. Feed it, as they happen:
//!    - every frame body read from any stream (length prefix removed, split with
//!      `LengthPrefixed::new(wire::MAX_FRAME_BYTES)`): [`Link::handle_frame`];
//!    - every batch the store commits durably — local publishes *and* applied
//!      foreign records, repaired records and gap markers, in commit order, to
//!      every link: [`Link::handle_committed`];
//!    - the answer to each [`Action::Read`]: [`Link::handle_read`];
//!    - the outcome of each [`Action::Apply`], after its fsync: [`Link::handle_applied`];
//!    - a record the store found corrupt (on any read): [`Link::handle_corrupt`],
//!      to every link;
//!    - LWW entries written locally, or that won an [`Action::LwwMerge`]:
//!      [`Link::send_lww`] on every *other* link;
//!    - the timer firing: [`Link::handle_timeout`].
//! 4. On [`Action::Closed`] (or when the connection dies), drop the `Link` and
//!    discard its outstanding reads and apply answers; the store still commits
//!    what it was given (idempotent). Redial with jittered backoff: a new `Link`
//!    starts again with summary, diff, stream — there is no special first sync.
//!
//! Actions: `Send { stream, frame }` (a ready length-prefixed frame:
//! [`StreamId::Control`] is the connection's first bidirectional stream, opened
//! by the dialer; `Lane(n)` is a unidirectional stream the record sender opens
//! on first use); `Read` (read `from..=to` of one (topic, origin) from the local
//! log, ascending, within `max_records`/`max_bytes`, verifying CRCs); `Apply`
//! (append records idempotently — skip what the vector covers; in repair mode
//! also replace a copy that is missing, corrupt or a gap marker, never a valid
//! record — and store gap markers for uncovered seqs of `gaps`, all in one
//! batch with the vector, one fsync, then answer with the durable set);
//! `LwwMerge`; `PeerDurable` (the peer's durable set of a (topic, origin) grew:
//! feeds `replicated(k)` acks and retention holds); `Up`; `Closed(reason)` (log
//! it and count it by kind); `Event` (metrics: gaps, digest mismatches,
//! rejected or unavailable records).
//!
//! # Streams and windows
//!
//! A topic's records always travel on lane `crc32c(topic) % lanes` (default 4
//! lanes), so per-(topic, origin) order is one QUIC stream's order, and a
//! large topic on one lane does not block the topics of the others. Within a
//! lane, (topic, origin) streams take turns per read. Each lane has its own
//! credit window, granted by the receiver in records and bytes (defaults 4096
//! records and 4 MiB) as batches become durable, so the window bounds what is
//! un-durable in flight. A message is sent only when it fits, except that one
//! record always fits while any byte credit is left: a window smaller than a
//! record still makes progress. Reads are at most `batch_records` (512) and
//! `batch_bytes` (512 KiB), four in flight per link; the live path (a
//! committed batch for a caught-up stream) is queued with no read while the
//! lane holds less than 1 MiB ready; past that the stream falls back to
//! reading from the log, so a slow peer costs reads, not memory.
//!
//! # Invariants (what the simulation checks)
//!
//! - A link never asks the store to apply records beyond the credit it
//!   granted, and never sends beyond the credit it was given.
//! - An ack carries the store's durable set, so no peer is told a record is
//!   durable before its fsync; the sender's peer view only grows by acks and
//!   the peer's summary (itself its durable vector).
//! - Per (topic, origin), records and truncations leave in ascending seq order
//!   on one stream; a truncation is never skipped: the receiver stores a gap
//!   marker, so its vector covers the range explicitly.
//! - A record the store reports corrupt is never sent; it is pulled again from
//!   every peer on detection, on every reconnect and every digest round, and
//!   becomes a gap marker when a peer answers that it expired it, or when the
//!   store gives up after a grace period (its policy; see `LocalView::corrupt`).
//! - A link closes with a precise [`CloseReason`] on any bad frame, protocol
//!   violation or refused hello; it never panics on peer input.
//!
//! # Numbers
//!
//! See `docs/replication-core.md` for the simulation's seeds per second and the
//! core's cost per record.

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
