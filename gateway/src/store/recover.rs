//! Opening: rebuild the index from the meta keyspace and prove the tail.

use std::collections::HashMap;

use edgesync_protocol::Origin;
use fjall::{Database, Keyspace, PersistMode};

use super::*;

/// What [`recover`] found.
pub(super) struct Recovered {
    pub(super) node: String,
    pub(super) epoch: u64,
    pub(super) index: Index,
    /// Why a new epoch was started, if one was.
    pub(super) new_epoch: Option<String>,
    /// Records held but unservable: lost with dropped journal batches, or listed before.
    pub(super) damaged: Vec<(String, Origin, u64)>,
}

/// Rebuild the in-memory index from the meta keyspace and prove the tail.
pub(super) fn recover(
    db: &Database,
    records: &Keyspace,
    meta: &Keyspace,
    configured_node: Option<&str>,
    lost: &[salvage::LostItem],
    inspect: bool,
) -> Result<Recovered, StoreError> {
    let corrupt = |what: &str, detail: String| StoreError::CorruptMeta {
        what: what.into(),
        detail,
    };
    let mut index = Index::default();
    let stored_node = meta
        .get(b"n")?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    let node = match (&stored_node, configured_node) {
        (Some(s), Some(c)) if s != c => {
            return Err(StoreError::NodeMismatch {
                stored: s.clone(),
                configured: c.into(),
            });
        }
        (Some(s), _) => s.clone(),
        (None, Some(c)) => c.to_string(),
        (None, None) => format!("node-{:08x}", rand::random::<u32>()),
    };
    let mut epoch = match meta.get(b"e")? {
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("epoch", "length".into()))?,
        ),
        None => 0,
    };
    if let Some(v) = meta.get(b"h")? {
        index.max_hlc = u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("hlc", "length".into()))?,
        );
    }
    for g in meta.prefix(b"o") {
        let (k, v) = g.into_inner()?;
        let id = u32::from_be_bytes(
            k[1..]
                .try_into()
                .map_err(|_| corrupt("origin key", format!("{k:?}")))?,
        );
        if v.len() < 8 {
            return Err(corrupt("origin", format!("id {id}")));
        }
        let e = u64::from_be_bytes(
            v[..8]
                .try_into()
                .map_err(|_| corrupt("origin", "epoch".into()))?,
        );
        let origin = Origin::new(String::from_utf8_lossy(&v[8..]).into_owned(), e);
        index.next_origin_id = index.next_origin_id.max(id + 1);
        index.origin_ids.insert(origin.clone(), id);
        index.origins.insert(id, origin);
    }
    let mut names: HashMap<u32, String> = HashMap::new();
    for g in meta.prefix(b"t") {
        let (k, v) = g.into_inner()?;
        let id = u32::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| corrupt("topic id", format!("{k:?}")))?,
        );
        names.insert(id, String::from_utf8_lossy(&k[1..]).into_owned());
        index.next_topic_id = index.next_topic_id.max(id + 1);
    }
    let mut repairs = db.batch();
    for g in meta.prefix(b"v") {
        let (k, v) = g.into_inner()?;
        let Some(id) = k
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
        else {
            tracing::error!(key = ?k, "malformed topic state key ignored");
            continue;
        };
        // A state that fails its CRC (a damaged table or journal) is rebuilt from the
        // topic's record keys: one scan of that topic only.
        let state = match decode_topic_state(&v) {
            Ok(s) if s.id == id => s,
            Ok(_) | Err(_) => {
                tracing::error!(
                    topic_id = id,
                    "topic state damaged; rebuilding it from the topic's records"
                );
                let s = rebuild_topic_state(records, id);
                repairs.insert(meta, meta_topic_key(id), encode_topic_state(&s));
                s
            }
        };
        let name = match names.get(&id) {
            Some(n) => n.clone(),
            None => {
                // The batch that named the topic was lost: every record names its topic.
                let Some(n) = name_from_records(records, id) else {
                    tracing::error!(
                        topic_id = id,
                        "topic state without a name or a readable record dropped"
                    );
                    continue;
                };
                tracing::error!(topic_id = id, topic = %n, "topic name restored from its records");
                let mut tk = b"t".to_vec();
                tk.extend_from_slice(n.as_bytes());
                repairs.insert(meta, tk, id.to_be_bytes().as_slice());
                n
            }
        };
        // Origins whose `o` key was lost: every record names its origin.
        for oid in state.streams.keys() {
            if index.origins.contains_key(oid) {
                continue;
            }
            if let Some(origin) = origin_from_records(records, id, *oid) {
                let mut ok = b"o".to_vec();
                ok.extend_from_slice(&oid.to_be_bytes());
                let mut ov = origin.epoch.to_be_bytes().to_vec();
                ov.extend_from_slice(origin.node.as_bytes());
                repairs.insert(meta, ok, ov);
                index.next_origin_id = index.next_origin_id.max(oid + 1);
                index.origin_ids.insert(origin.clone(), *oid);
                index.origins.insert(*oid, origin);
            }
        }
        index.next_topic_id = index.next_topic_id.max(id + 1);
        index.topics.insert(name, state);
    }
    // Records of batches the journal salvage dropped: covered by the vector but gone.
    let by_id: HashMap<u32, String> = index
        .topics
        .iter()
        .map(|(n, t)| (t.id, n.clone()))
        .collect();
    let mut damaged = Vec::new();
    for item in lost {
        let Ok(key) = <[u8; 16]>::try_from(item.key.as_slice()) else {
            continue;
        };
        let tid = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        let oid = u32::from_be_bytes([key[4], key[5], key[6], key[7]]);
        let seq = key_seq(&key);
        let (Some(name), Some(origin)) = (by_id.get(&tid), index.origins.get(&oid)) else {
            continue;
        };
        let covered = index.topics[name]
            .streams
            .get(&oid)
            .is_some_and(|s| s.covers(seq) && seq >= s.low);
        if covered && !matches!(records.get(key), Ok(Some(_))) {
            // New to the corrupt list: keep it durable (`c` key).
            repairs.insert(meta, corrupt_key(tid, oid, seq), b"".as_slice());
            damaged.push((name.clone(), origin.clone(), seq));
        }
    }
    // The corrupt list kept from earlier runs (`c` keys).
    for g in meta.prefix(b"c") {
        let (k, _) = g.into_inner()?;
        let Ok(key) = <[u8; 16]>::try_from(&k[1..]) else {
            continue;
        };
        let tid = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
        let oid = u32::from_be_bytes([key[4], key[5], key[6], key[7]]);
        if let (Some(name), Some(origin)) = (by_id.get(&tid), index.origins.get(&oid)) {
            damaged.push((name.clone(), origin.clone(), key_seq(&key)));
        }
    }
    damaged.sort();
    damaged.dedup();
    if !inspect && !repairs.is_empty() {
        repairs.commit()?;
    }
    // Prove the tail of every stream of the current local origin.
    let mut reason = None;
    if epoch == 0 {
        epoch = 1;
    } else if let Some(&oid) = index.origin_ids.get(&Origin::new(node.clone(), epoch)) {
        'topics: for (name, t) in &index.topics {
            let Some(s) = t.streams.get(&oid) else {
                continue;
            };
            if s.high >= s.low {
                // An engine error (a damaged table block) counts as missing.
                let ok = match records.get(record_key(t.id, oid, s.high)) {
                    Ok(Some(v)) => Record::decode(&v).map(|r| r.seq == s.high).unwrap_or(false),
                    Ok(None) | Err(_) => false,
                };
                if !ok {
                    reason = Some(format!(
                        "topic {name}: record {} at the high-water mark is missing or corrupt",
                        s.high
                    ));
                    break 'topics;
                }
            }
            if !matches!(records.get(record_key(t.id, oid, s.high + 1)), Ok(None)) {
                reason = Some(format!(
                    "topic {name}: a record beyond the high-water mark {} exists",
                    s.high
                ));
                break 'topics;
            }
        }
        if reason.is_some() && !inspect {
            epoch += 1;
        }
    }
    if inspect {
        return Ok(Recovered {
            node,
            epoch,
            index,
            new_epoch: reason,
            damaged,
        });
    }
    let mut b = db.batch();
    b.insert(meta, b"n".as_slice(), node.as_bytes());
    b.insert(meta, b"e".as_slice(), epoch.to_be_bytes().as_slice());
    b.commit()?;
    db.persist(PersistMode::SyncData)?;
    Ok(Recovered {
        node,
        epoch,
        index,
        new_epoch: reason,
        damaged,
    })
}

/// Every record key of one topic, in order (records that fail to read are skipped).
fn topic_keys(records: &Keyspace, tid: u32) -> impl Iterator<Item = (u32, u64, fjall::Slice)> {
    records.prefix(tid.to_be_bytes()).filter_map(|g| {
        let (k, v) = g.into_inner().ok()?;
        let oid = u32::from_be_bytes(k.get(4..8)?.try_into().ok()?);
        Some((oid, key_seq(&k), v))
    })
}

/// A topic state rebuilt from the topic's record keys: per origin the lowest seq held
/// is the floor and everything up to the highest is covered (holes inside read as
/// corrupt gaps, never as silence).
fn rebuild_topic_state(records: &Keyspace, tid: u32) -> TopicState {
    let mut t = TopicState {
        id: tid,
        ..TopicState::default()
    };
    for (oid, seq, v) in topic_keys(records, tid) {
        let s = t.streams.entry(oid).or_insert(Stream {
            low: seq,
            high: seq,
            extra: Default::default(),
        });
        s.low = s.low.min(seq);
        s.high = s.high.max(seq);
        if let Some(to) = keys::decode_gap(&v) {
            s.high = s.high.max(to);
        } else {
            t.count += 1;
            t.bytes += Record::decode(&v).map_or(0, |r| r.payload.len() as u64);
        }
    }
    t
}

fn name_from_records(records: &Keyspace, tid: u32) -> Option<String> {
    topic_keys(records, tid).find_map(|(_, _, v)| Record::decode(&v).ok().map(|r| r.topic))
}

fn origin_from_records(records: &Keyspace, tid: u32, oid: u32) -> Option<Origin> {
    topic_keys(records, tid)
        .filter(|(o, _, _)| *o == oid)
        .find_map(|(_, _, v)| Record::decode(&v).ok().map(|r| r.origin))
}
