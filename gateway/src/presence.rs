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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use edgesync_protocol::{ErrorCode, PresenceMember, ServerFrame};
use parking_lot::Mutex;

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
}

/// The presence of every topic on this gateway.
pub struct Presence {
    inner: Mutex<Inner>,
    node: String,
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
    pub fn new(node: String, clock: Arc<dyn Clock>, max_members: usize) -> Arc<Self> {
        Arc::new(Presence {
            inner: Mutex::new(Inner::default()),
            node,
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
        member.conns.insert(out.id);
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
        if gone {
            let principal = room.members.remove(client).and_then(|m| m.principal);
            let push = ServerFrame::Leave {
                topic: topic.to_string(),
                client: client.to_string(),
                principal,
                node: self.node.clone(),
            };
            broadcast(room, &push);
        }
        if room.members.is_empty() && room.watchers.is_empty() {
            g.rooms.remove(topic);
        }
    }

    /// Who is present on `topic` (at most `max_members` listed, sorted by client id).
    pub fn list(&self, topic: &str) -> Listing {
        let g = self.inner.lock();
        let Some(room) = g.rooms.get(topic) else {
            return Listing {
                topic: topic.to_string(),
                count: 0,
                truncated: false,
                members: Vec::new(),
            };
        };
        let members: Vec<PresenceMember> = room
            .members
            .iter()
            .take(self.max_members)
            .map(|(client, m)| PresenceMember {
                client: client.clone(),
                principal: m.principal.clone(),
                connections: u32::try_from(m.conns.len()).unwrap_or(u32::MAX),
                node: self.node.clone(),
                since: m.since,
            })
            .collect();
        Listing {
            topic: topic.to_string(),
            count: room.members.len() as u64,
            truncated: room.members.len() > members.len(),
            members,
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
        Presence::new("n1".into(), crate::clock::system(), 2)
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
