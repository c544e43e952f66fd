//! Reads: version vectors, listings, and ranges of records (checked on the way out).

use std::collections::{BTreeMap, HashMap};

use edgesync_protocol::Origin;

use super::*;

impl Store {
    /// The version vector of a topic (empty when unknown).
    pub fn head(&self, topic: &str) -> BTreeMap<Origin, u64> {
        let idx = self.shared.index.read();
        idx.topics.get(topic).map(|t| idx.vv(t)).unwrap_or_default()
    }

    /// Version vectors of every topic (used to seed the broker).
    pub fn heads(&self) -> HashMap<String, BTreeMap<Origin, u64>> {
        let idx = self.shared.index.read();
        idx.topics
            .iter()
            .map(|(name, t)| (name.clone(), idx.vv(t)))
            .collect()
    }

    /// Listing of topics with counts, sorted by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let idx = self.shared.index.read();
        let mut out: Vec<TopicInfo> = idx
            .topics
            .iter()
            .map(|(name, t)| TopicInfo {
                topic: name.clone(),
                messages: t.count,
                bytes: t.bytes,
                heads: idx
                    .vv(t)
                    .into_iter()
                    .map(|(o, s)| (o.to_string(), s))
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.topic.cmp(&b.topic));
        out
    }

    /// Positions that make a read return the last `n` records of each origin.
    pub fn last_n_positions(&self, topic: &str, n: u64) -> BTreeMap<Origin, u64> {
        let idx = self.shared.index.read();
        let Some(t) = idx.topics.get(topic) else {
            return BTreeMap::new();
        };
        t.streams
            .iter()
            .filter_map(|(oid, s)| {
                let origin = idx.origins.get(oid)?.clone();
                let from = s.high.saturating_sub(n).max(s.low.saturating_sub(1));
                Some((origin, from))
            })
            .collect()
    }

    /// The lowest retained seq of one stream now (`u64::MAX` when retention removed it all).
    fn stream_low(&self, topic: &str, oid: u32) -> u64 {
        let idx = self.shared.index.read();
        idx.topics
            .get(topic)
            .and_then(|t| t.streams.get(&oid))
            .map_or(u64::MAX, |s| s.low)
    }

    /// Read records of `topic` after `after` (per origin), at most `limit`, never past
    /// `upto` (per origin) when given. Corrupt records are skipped and reported.
    ///
    /// # Errors
    /// Engine errors.
    pub fn read(
        &self,
        topic: &str,
        after: &BTreeMap<Origin, u64>,
        upto: Option<&BTreeMap<Origin, u64>>,
        limit: usize,
    ) -> Result<ReadBatch, StoreError> {
        self.read_bounded(topic, after, upto, limit, usize::MAX)
    }

    /// [`Store::read`], also stopping before the records' stored bytes would pass
    /// `max_bytes` (at least one record is returned, so a read always advances;
    /// `more` is then set). What a client can make the gateway hold per read.
    ///
    /// # Errors
    /// Engine errors.
    pub fn read_bounded(
        &self,
        topic: &str,
        after: &BTreeMap<Origin, u64>,
        upto: Option<&BTreeMap<Origin, u64>>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, StoreError> {
        let (topic_id, streams) = {
            let idx = self.shared.index.read();
            let Some(t) = idx.topics.get(topic) else {
                return Ok(ReadBatch {
                    positions: after.clone(),
                    ..ReadBatch::default()
                });
            };
            let streams: Vec<(u32, Origin, Stream)> = t
                .streams
                .iter()
                .filter_map(|(oid, s)| Some((*oid, idx.origins.get(oid)?.clone(), s.clone())))
                .collect();
            (t.id, streams)
        };
        let mut out = ReadBatch {
            positions: after.clone(),
            ..ReadBatch::default()
        };
        let mut bytes = 0usize;
        'streams: for (oid, origin, stream) in streams {
            let pos = after.get(&origin).copied().unwrap_or(0);
            let end = upto.map_or(stream.high, |u| {
                u.get(&origin).copied().unwrap_or(0).min(stream.high)
            });
            if pos >= end {
                continue;
            }
            if out.records.len() >= limit {
                out.more = true;
                break;
            }
            let mut next = pos + 1;
            if next < stream.low {
                let to = (stream.low - 1).min(end);
                out.missing.push(MissingRange {
                    origin: origin.clone(),
                    from: next,
                    to,
                    corrupt: false,
                });
                next = to + 1;
                out.positions.insert(origin.clone(), to);
                if next > end {
                    continue;
                }
            }
            let budget = limit - out.records.len();
            let lo = record_key(topic_id, oid, next);
            let hi = record_key(topic_id, oid, end);
            for guard in self.shared.records.range(lo..=hi).take(budget) {
                let Ok((key, value)) = guard.into_inner() else {
                    // A damaged table block: report the seq the scan could not reach as
                    // corrupt and move past it; the next read resumes after it.
                    tracing::error!(topic, origin = %origin, seq = next, "store read failed; reporting the seq corrupt");
                    out.missing.push(MissingRange {
                        origin: origin.clone(),
                        from: next,
                        to: next,
                        corrupt: true,
                    });
                    self.found_corrupt(topic, &origin, (topic_id, oid), next);
                    out.positions.insert(origin.clone(), next);
                    next += 1;
                    break;
                };
                let seq = key_seq(&key);
                if seq < next {
                    // Inside a gap marker already reported.
                    continue;
                }
                if !out.records.is_empty() && bytes.saturating_add(value.len()) > max_bytes {
                    // The position stays before this record: the next read starts here.
                    out.more = true;
                    break 'streams;
                }
                bytes = bytes.saturating_add(value.len());
                if seq != next {
                    // A hole: report it, never skip silently. Retention may have removed
                    // it since `low` was read above (a race, not damage) — only a hole
                    // still inside the retained range is corruption.
                    out.missing.push(MissingRange {
                        origin: origin.clone(),
                        from: next,
                        to: seq - 1,
                        corrupt: seq > self.stream_low(topic, oid),
                    });
                }
                if let Some(gap_to) = super::keys::decode_gap(&value) {
                    // A range the origin's retention removed before we had it.
                    let to = gap_to.min(end);
                    out.missing.push(MissingRange {
                        origin: origin.clone(),
                        from: seq,
                        to,
                        corrupt: false,
                    });
                    next = to + 1;
                    out.positions.insert(origin.clone(), to);
                    continue;
                }
                match Record::decode(&value) {
                    Ok(r) if r.seq == seq && r.topic == topic && r.origin == origin => {
                        out.records.push(r)
                    }
                    Ok(_) | Err(_) => {
                        tracing::error!(topic, origin = %origin, seq, "corrupt record skipped; not served");
                        self.found_corrupt(topic, &origin, (topic_id, oid), seq);
                        out.missing.push(MissingRange {
                            origin: origin.clone(),
                            from: seq,
                            to: seq,
                            corrupt: true,
                        });
                    }
                }
                next = seq + 1;
                out.positions.insert(origin.clone(), seq);
            }
            if next <= end {
                out.more = true;
            }
        }
        Ok(out)
    }
}
