//! Presence: who is on a topic — the chat online list.
//!
//! A connection is *present* on a topic while it holds a `sub` with `presence: true`
//! on that exact string (a room such as `chat.room1`, or a pattern used as a name).
//! Members are clients, not connections: a client with two connections there is one
//! member with `connections: 2`; it `join`s with its first connection and `leave`s
//! with its last (unsubscribe, disconnect, idle timeout — every end of a session goes
//! through [`Presence::leave_conn`]). Every present connection also watches the topic:
//! it gets the `join` and `leave` pushes of the others, and of itself.
//!
//! Bounds: the `presence` reply lists at most `limits.max_presence_members` members
//! (with the count and a `truncated` flag); a watcher whose outbox is over its limits
//! (`limits.outbox_frames` / `outbox_bytes`) when a push is due is closed
//! `slow_consumer` rather than given an outbox that grows without bound or a list that
//! silently goes wrong. A push is encoded once per encoding, whatever the room's size.
//!
//! In a cluster, members of other gateways are listed too (with their `node`), and
//! their joins and leaves are pushed to this gateway's watchers: see `replica`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use edgesync_protocol::{ErrorCode, Origin, PresenceMember, ServerFrame};
use edgesync_replication::{BucketDigest, LwwEntry};
use parking_lot::Mutex;
use tokio::sync::broadcast;

mod replica;

use replica::MemberValue;
pub use replica::{PRESENCE_NAMESPACE, REMOTE_HIDE_AFTER_MS};

use crate::store::{LwwBatch, LwwMerged};

use crate::broker::ConnOut;
use crate::clock::Clock;

#[derive(Debug)]
struct Member {
    principal: Option<String>,
    conns: BTreeSet<u64>,
    since: u64,
}

#[derive(Debug, Default)]
struct Room {
    members: BTreeMap<String, Member>,
    watchers: HashMap<u64, Arc<ConnOut>>,
}

#[derive(Debug, Default)]
struct Inner {
    rooms: HashMap<String, Room>,
    /// Per connection, the topics it is present on (for teardown).
    by_conn: HashMap<u64, (String, BTreeSet<String>)>,
    /// The cluster's view (entries of every node, this one's included).
    repl: replica::Replica,
}

/// The presence of every topic on this gateway.
pub struct Presence {
    inner: Mutex<Inner>,
    node: String,
    /// This gateway's origin: the writer of its presence entries.
    origin: Origin,
    /// Set when the gateway has peers (`[cluster]`): only then are entries kept and sent.
    replicating: std::sync::atomic::AtomicBool,
    clock: Arc<dyn Clock>,
    max_members: usize,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").finish_non_exhaustive()
    }
}

/// A topic's presence, as the `presence` reply and the admin API give it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listing {
    pub topic: String,
    pub count: u64,
    pub truncated: bool,
    pub members: Vec<PresenceMember>,
}

impl Presence {
    pub fn new(origin: Origin, clock: Arc<dyn Clock>, max_members: usize) -> Arc<Self> {
        Arc::new(Presence {
            inner: Mutex::new(Inner::default()),
            node: origin.node.clone(),
            origin,
            replicating: std::sync::atomic::AtomicBool::new(false),
            clock,
            max_members,
        })
    }

    /// Connection `out` of `client` (authenticated as `principal`) is present on `topic`.
    pub fn enter(&self, topic: &str, client: &str, principal: Option<&str>, out: &Arc<ConnOut>) {
        let mut g = self.inner.lock();
        let entry = g
            .by_conn
            .entry(out.id)
            .or_insert_with(|| (client.to_string(), BTreeSet::new()));
        entry.1.insert(topic.to_string());
        let room = g.rooms.entry(topic.to_string()).or_default();
        room.watchers.insert(out.id, out.clone());
        let now = self.clock.unix_ms();
        let member = room
            .members
            .entry(client.to_string())
            .or_insert_with(|| Member {
                principal: principal.map(str::to_string),
                conns: BTreeSet::new(),
                since: now,
            });
        let first = member.conns.is_empty();
        let added = member.conns.insert(out.id);
        if first {
            let push = ServerFrame::Join {
                topic: topic.to_string(),
                client: client.to_string(),
                principal: member.principal.clone(),
                node: self.node.clone(),
                since: member.since,
            };
            broadcast(room, &push);
        }
        if added {
            self.write_own(&mut g, topic, client, 0);
        }
    }

    /// Replicate presence from now on (the gateway has peers). Without it no entry is
    /// kept, so a gateway alone holds no tombstones.
    pub fn replicate(&self) {
        self.replicating
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// State this gateway's member (topic, client) to the cluster as it is now.
    fn write_own(&self, g: &mut Inner, topic: &str, client: &str, floor: u64) {
        if !self.replicating.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let value = g
            .rooms
            .get(topic)
            .and_then(|r| r.members.get(client))
            .map(|m| MemberValue {
                principal: m.principal.clone(),
                connections: u32::try_from(m.conns.len()).unwrap_or(u32::MAX),
                since: m.since,
            });
        let now = self.clock.unix_ms();
        g.repl
            .write_local(&self.origin, (topic, client), value.as_ref(), now, floor);
    }

    /// New presence entries (this gateway's changes, merges by other links), for the
    /// peer links.
    pub fn subscribe_lww(&self) -> broadcast::Receiver<LwwBatch> {
        self.inner.lock().repl.subscribe()
    }

    /// The digests of the presence entries (namespace [`PRESENCE_NAMESPACE`]).
    pub fn lww_digests(&self) -> Vec<(String, u32, BucketDigest)> {
        self.inner.lock().repl.digests()
    }

    /// The presence entries of one key bucket.
    pub fn lww_bucket(&self, bucket: u32) -> Vec<LwwEntry> {
        self.inner.lock().repl.bucket(bucket)
    }

    /// A link to `node` is up: its members are shown.
    pub fn peer_up(&self, node: &str) {
        self.inner.lock().repl.peer_up(node);
    }

    /// No link to `node` is up any more: its members are hidden after
    /// [`REMOTE_HIDE_AFTER_MS`].
    pub fn peer_down(&self, node: &str) {
        let now = self.clock.unix_ms();
        self.inner.lock().repl.peer_down(node, now);
    }

    /// Merge presence entries from a peer (link `source`): other nodes' members join
    /// and leave here (pushed to watchers); an entry of this node that disagrees with
    /// its members now is answered with the truth, stamped above it.
    pub fn lww_merge(&self, entries: Vec<LwwEntry>, source: u64) -> LwwMerged {
        let mut out = LwwMerged::default();
        let mut g = self.inner.lock();
        let now = self.clock.unix_ms();
        for entry in entries {
            let parsed = (entry.namespace == PRESENCE_NAMESPACE)
                .then(|| replica::parse_key(&entry.key))
                .flatten()
                .map(|(t, c, n)| (t.to_string(), c.to_string(), n.to_string()));
            let Some((topic, client, node)) = parsed else {
                out.refused += 1;
                continue;
            };
            if node == self.node {
                self.merge_own(&mut g, entry, (&topic, &client), &mut out);
                continue;
            }
            if let Some(value) = g.repl.merge_remote(entry, now, &mut out) {
                self.remote_changed(&mut g, &topic, (&client, &node), value, now);
            }
        }
        g.repl.forward(source, out.winners.clone());
        out
    }

    /// A peer's copy of one of this node's entries.
    fn merge_own(
        &self,
        g: &mut Inner,
        entry: LwwEntry,
        (topic, client): (&str, &str),
        out: &mut LwwMerged,
    ) {
        if g.repl
            .held(&entry.key)
            .is_some_and(|h| h.rank() >= entry.rank())
        {
            out.stale += 1;
            return;
        }
        let present = g
            .rooms
            .get(topic)
            .is_some_and(|r| r.members.contains_key(client));
        if !present && entry.value.is_none() {
            // It says what is true (gone): keep it, nothing to answer.
            let now = self.clock.unix_ms();
            g.repl.merge_remote(entry, now, out);
            return;
        }
        // From this node's previous run (or an older statement): state the truth above it.
        out.stale += 1;
        self.write_own(g, topic, client, entry.hlc);
    }

    /// Another node's member changed: update the listing, push join/leave to watchers.
    fn remote_changed(
        &self,
        g: &mut Inner,
        topic: &str,
        (client, node): (&str, &str),
        value: Option<MemberValue>,
        now: u64,
    ) {
        let hidden = g.repl.hidden(node, now);
        let members = g.repl.remote.entry(topic.to_string()).or_default();
        let id = (client.to_string(), node.to_string());
        let push = match value {
            Some(v) => {
                let push = ServerFrame::Join {
                    topic: topic.to_string(),
                    client: client.to_string(),
                    principal: v.principal.clone(),
                    node: node.to_string(),
                    since: v.since,
                };
                members.insert(id, v).is_none().then_some(push)
            }
            None => members.remove(&id).map(|v| ServerFrame::Leave {
                topic: topic.to_string(),
                client: client.to_string(),
                principal: v.principal,
                node: node.to_string(),
            }),
        };
        if members.is_empty() {
            g.repl.remote.remove(topic);
        }
        if let (Some(push), false, Some(room)) = (push, hidden, g.rooms.get(topic)) {
            broadcast(room, &push);
        }
    }

    /// Connection `conn` is no longer present on `topic` (it unsubscribed).
    pub fn leave(&self, topic: &str, conn: u64) {
        let mut g = self.inner.lock();
        let Some((client, topics)) = g.by_conn.get_mut(&conn) else {
            return;
        };
        let client = client.clone();
        topics.remove(topic);
        if topics.is_empty() {
            g.by_conn.remove(&conn);
        }
        self.leave_room(&mut g, topic, &client, conn);
    }

    /// Connection `conn` ended: it leaves every topic it was present on.
    pub fn leave_conn(&self, conn: u64) {
        let mut g = self.inner.lock();
        let Some((client, topics)) = g.by_conn.remove(&conn) else {
            return;
        };
        for topic in topics {
            self.leave_room(&mut g, &topic, &client, conn);
        }
    }

    fn leave_room(&self, g: &mut Inner, topic: &str, client: &str, conn: u64) {
        let Some(room) = g.rooms.get_mut(topic) else {
            return;
        };
        room.watchers.remove(&conn);
        let gone = match room.members.get_mut(client) {
            Some(m) => {
                m.conns.remove(&conn);
                m.conns.is_empty()
            }
            None => false,
        };
        let mut changed = false;
        if gone {
            let principal = room.members.remove(client).and_then(|m| m.principal);
            let push = ServerFrame::Leave {
                topic: topic.to_string(),
                client: client.to_string(),
                principal,
                node: self.node.clone(),
            };
            broadcast(room, &push);
            changed = true;
        } else if room.members.contains_key(client) {
            changed = true; // one connection fewer
        }
        if room.members.is_empty() && room.watchers.is_empty() {
            g.rooms.remove(topic);
        }
        if changed {
            self.write_own(g, topic, client, 0);
        }
    }

    /// Who is present on `topic`, on this gateway and (in a cluster) on the others
    /// whose members are not hidden: at most `max_members` listed, sorted by client id
    /// then node.
    pub fn list(&self, topic: &str) -> Listing {
        let g = self.inner.lock();
        let now = self.clock.unix_ms();
        let mut all: Vec<PresenceMember> = Vec::new();
        if let Some(room) = g.rooms.get(topic) {
            all.extend(room.members.iter().map(|(client, m)| PresenceMember {
                client: client.clone(),
                principal: m.principal.clone(),
                connections: u32::try_from(m.conns.len()).unwrap_or(u32::MAX),
                node: self.node.clone(),
                since: m.since,
            }));
        }
        if let Some(remote) = g.repl.remote.get(topic) {
            all.extend(
                remote
                    .iter()
                    .filter(|((_, node), _)| !g.repl.hidden(node, now))
                    .map(|((client, node), v)| PresenceMember {
                        client: client.clone(),
                        principal: v.principal.clone(),
                        connections: v.connections,
                        node: node.clone(),
                        since: v.since,
                    }),
            );
            all.sort_by(|a, b| (&a.client, &a.node).cmp(&(&b.client, &b.node)));
        }
        let count = all.len() as u64;
        all.truncate(self.max_members);
        Listing {
            topic: topic.to_string(),
            count,
            truncated: count > all.len() as u64,
            members: all,
        }
    }
}

/// Push `frame` to every watcher of `room` (encoded once per encoding); a watcher
/// whose outbox is past its limits is closed (`slow_consumer`) — its view of the list
/// would otherwise be wrong.
fn broadcast(room: &Room, frame: &ServerFrame) {
    let mut encoded: Vec<(edgesync_protocol::Encoding, bytes::Bytes)> = Vec::with_capacity(2);
    for out in room.watchers.values() {
        if out.outbox.within_limits() {
            let enc = out.outbox.encoding();
            let bytes = match encoded.iter().find(|(e, _)| *e == enc) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = bytes::Bytes::from(enc.encode(frame));
                    encoded.push((enc, b.clone()));
                    b
                }
            };
            out.outbox.push_control(bytes);
        } else {
            out.outbox.close(
                ErrorCode::SlowConsumer,
                "presence updates are not being read",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use edgesync_protocol::Encoding;

    fn conn(id: u64) -> Arc<ConnOut> {
        ConnOut::new(id, Outbox::new(Encoding::Json, 100, 1 << 20))
    }

    fn p() -> Arc<Presence> {
        Presence::new(Origin::new("n1", 1), crate::clock::system(), 2)
    }

    #[test]
    fn a_client_is_one_member_however_many_connections_and_leaves_with_the_last() {
        let p = p();
        let (a1, a2, b) = (conn(1), conn(2), conn(3));
        p.enter("room", "alice", Some("al"), &a1);
        p.enter("room", "alice", Some("al"), &a2);
        p.enter("room", "bob", None, &b);
        let l = p.list("room");
        assert_eq!((l.count, l.truncated), (2, false));
        assert_eq!(l.members[0].connections, 2);
        assert_eq!(l.members[0].principal.as_deref(), Some("al"));
        p.leave_conn(1);
        assert_eq!(p.list("room").count, 2, "alice still has a connection");
        p.leave("room", 2);
        assert_eq!(p.list("room").count, 1);
        p.leave_conn(3);
        assert_eq!(p.list("room").count, 0);
        assert!(
            p.inner.lock().rooms.is_empty(),
            "nothing kept for an empty room"
        );
        assert!(p.lww_digests().is_empty(), "no entries without a cluster");
    }

    fn remote(topic: &str, client: &str, node: &str, present: bool, ms: u64) -> LwwEntry {
        let value = MemberValue {
            principal: None,
            connections: 1,
            since: ms,
        };
        LwwEntry {
            namespace: PRESENCE_NAMESPACE.into(),
            key: replica::key(topic, client, node),
            value: present.then(|| bytes::Bytes::from(serde_json::to_vec(&value).expect("json"))),
            hlc: ms << 16,
            origin: Origin::new(node, 1),
        }
    }

    #[test]
    fn remote_members_are_listed_pushed_and_hidden_when_their_node_is_away() {
        let clock = crate::clock::ManualClock::new(1_000_000);
        let p = Presence::new(Origin::new("n1", 1), clock.clone(), 10);
        let watcher = conn(1);
        p.enter("room", "w", None, &watcher);
        let m = p.lww_merge(vec![remote("room", "alice", "n2", true, 999_000)], 5);
        assert_eq!(m.winners.len(), 1);
        let l = p.list("room");
        assert_eq!(l.count, 2);
        assert_eq!(
            (l.members[0].client.as_str(), l.members[0].node.as_str()),
            ("alice", "n2")
        );
        // Merging it again changes nothing; an older tombstone loses.
        assert_eq!(
            p.lww_merge(vec![remote("room", "alice", "n2", true, 999_000)], 5)
                .stale,
            1
        );
        assert_eq!(
            p.lww_merge(vec![remote("room", "alice", "n2", false, 998_000)], 5)
                .stale,
            1
        );
        p.peer_down("n2");
        clock.advance(REMOTE_HIDE_AFTER_MS as i64 - 1);
        assert_eq!(p.list("room").count, 2, "not hidden before the bound");
        clock.advance(1);
        assert_eq!(
            p.list("room").count,
            1,
            "hidden once the link is down that long"
        );
        p.peer_up("n2");
        assert_eq!(p.list("room").count, 2);
        let m = p.lww_merge(vec![remote("room", "alice", "n2", false, 999_500)], 5);
        assert_eq!(m.winners.len(), 1);
        assert_eq!(p.list("room").count, 1);
        let mut bytes = Vec::new();
        watcher.outbox.drain_into(&mut bytes, 1 << 20);
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(
            text.matches("\"t\":\"join\"").count(),
            2,
            "own join and alice's: {text}"
        );
        assert_eq!(
            text.matches("\"t\":\"leave\"").count(),
            1,
            "alice's leave: {text}"
        );
    }

    #[test]
    fn a_previous_run_s_own_members_are_answered_with_a_newer_tombstone() {
        let clock = crate::clock::ManualClock::new(1_000_000);
        let p = Presence::new(Origin::new("n1", 1), clock, 10);
        p.replicate();
        let mut live = p.subscribe_lww();
        // A peer still holds "ghost" on this node, stamped ahead of this node's clock.
        let ghost = remote("room", "ghost", "n1", true, 1_005_000);
        let m = p.lww_merge(vec![ghost.clone()], 5);
        assert!(m.winners.is_empty());
        assert_eq!(p.list("room").count, 0, "never listed");
        let answer = live.try_recv().expect("an answer");
        assert_eq!(answer.source, crate::store::LWW_SOURCE_LOCAL);
        assert_eq!(answer.entries.len(), 1);
        let t = &answer.entries[0];
        assert_eq!(
            (t.key.as_str(), t.value.is_none()),
            (ghost.key.as_str(), true)
        );
        assert!(
            t.rank() > ghost.rank(),
            "the tombstone outranks the ghost everywhere"
        );
        // Receiving it back is stale.
        assert_eq!(p.lww_merge(vec![t.clone()], 5).stale, 1);
    }

    #[test]
    fn tombstones_are_collected_after_their_bound_and_not_taken_back() {
        let clock = crate::clock::ManualClock::new(1_000_000);
        let p = Presence::new(Origin::new("n1", 1), clock.clone(), 10);
        p.replicate();
        let joined = remote("room", "bob", "n2", true, 1_000_000);
        let left = remote("room", "bob", "n2", false, 1_000_100);
        p.lww_merge(vec![joined.clone(), left.clone()], 5);
        assert_eq!(p.list("room").count, 0);
        assert_eq!(p.inner.lock().repl.held_len(), 1, "bob's tombstone");
        // Within the bound the tombstone stays: the old join stays beaten.
        clock.advance(i64::try_from(replica::PRESENCE_TOMBSTONE_TTL_MS).expect("ms") - 1_000);
        assert_eq!(p.lww_merge(vec![joined.clone()], 5).stale, 1);
        // Past it (and 10 s after the last sweep), the next merge sweeps it; the same
        // tombstone coming back is not stored again.
        clock.advance(11_000);
        let other = remote("room", "carol", "n2", true, 1_000_000 + 610_000);
        p.lww_merge(vec![other], 5);
        assert_eq!(p.inner.lock().repl.held_len(), 1, "only carol");
        assert_eq!(p.lww_merge(vec![left], 5).stale, 1);
        assert_eq!(p.inner.lock().repl.held_len(), 1);
        assert_eq!(p.list("room").count, 1);
    }

    #[test]
    fn listings_are_bounded_and_say_so() {
        let p = p();
        for i in 0..5 {
            p.enter("room", &format!("c{i}"), None, &conn(i));
        }
        let l = p.list("room");
        assert_eq!((l.count, l.truncated, l.members.len()), (5, true, 2));
    }
}
