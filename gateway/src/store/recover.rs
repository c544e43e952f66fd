//! Opening: rebuild the index from the meta keyspace and prove the tail.

use std::collections::HashMap;

use edgesync_protocol::Origin;
use fjall::{Database, Keyspace, PersistMode};

use super::*;

/// Rebuild the in-memory index from the meta keyspace and prove the tail.
pub(super) fn recover(
    db: &Database,
    records: &Keyspace,
    meta: &Keyspace,
    configured_node: Option<&str>,
) -> Result<(String, u64, Index, Option<String>), StoreError> {
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
    for g in meta.prefix(b"v") {
        let (_, v) = g.into_inner()?;
        let state = decode_topic_state(&v).map_err(|e| corrupt("topic state", e))?;
        let name = names
            .get(&state.id)
            .cloned()
            .ok_or_else(|| corrupt("topic state", format!("unknown id {}", state.id)))?;
        index.topics.insert(name, state);
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
                let ok = match records.get(record_key(t.id, oid, s.high))? {
                    Some(v) => Record::decode(&v).map(|r| r.seq == s.high).unwrap_or(false),
                    None => false,
                };
                if !ok {
                    reason = Some(format!(
                        "topic {name}: record {} at the high-water mark is missing or corrupt",
                        s.high
                    ));
                    break 'topics;
                }
            }
            if records.get(record_key(t.id, oid, s.high + 1))?.is_some() {
                reason = Some(format!(
                    "topic {name}: a record beyond the high-water mark {} exists",
                    s.high
                ));
                break 'topics;
            }
        }
        if reason.is_some() {
            epoch += 1;
        }
    }
    let mut b = db.batch();
    b.insert(meta, b"n".as_slice(), node.as_bytes());
    b.insert(meta, b"e".as_slice(), epoch.to_be_bytes().as_slice());
    b.commit()?;
    db.persist(PersistMode::SyncData)?;
    Ok((node, epoch, index, reason))
}
