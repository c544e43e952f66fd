//! Whole-store verification for `edgesync store check|repair`: every record read
//! and its checksum verified, every stream's retained range checked for holes.
//! Offline tools only — the gateway itself never scans the log.

use edgesync_protocol::Origin;

use super::*;

/// What [`Store::verify`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verify {
    /// Records read and verified.
    pub records: u64,
    /// Gap markers (ranges a peer's retention removed before we had them).
    pub gap_markers: u64,
    /// Records that fail their checksum, name another topic/seq, or cannot be
    /// read (a damaged table block): (topic, origin, seq).
    pub corrupt: Vec<(String, Origin, u64)>,
    /// Seqs the version vector covers above the retention floor with no record.
    pub missing: Vec<(String, Origin, u64)>,
}

impl Verify {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

impl Store {
    /// Read every retained record of every topic and check it. With `list`, what
    /// is damaged goes on the durable corrupt list (repair).
    ///
    /// # Errors
    /// None per record (damage is reported); only a closed store.
    pub fn verify(&self, list: bool) -> Result<Verify, StoreError> {
        let streams: Vec<(String, u32, u32, Origin, Stream)> = {
            let idx = self.shared.index.read();
            let mut v = Vec::new();
            for (name, t) in &idx.topics {
                for (oid, s) in &t.streams {
                    if let Some(o) = idx.origins.get(oid) {
                        v.push((name.clone(), t.id, *oid, o.clone(), s.clone()));
                    }
                }
            }
            v.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
            v
        };
        let mut out = Verify::default();
        for (topic, tid, oid, origin, s) in streams {
            let top = s.high.max(s.extra.high_water());
            let mut next = s.low;
            while next <= top {
                // Scan until the end or the first engine error, then step past it by
                // point reads (a damaged block fails every read inside it).
                let lo = record_key(tid, oid, next);
                let hi = record_key(tid, oid, top);
                let mut failed = false;
                for guard in self.shared.records.range(lo..=hi) {
                    let Ok((key, value)) = guard.into_inner() else {
                        failed = true;
                        break;
                    };
                    let seq = key_seq(&key);
                    for hole in next..seq {
                        if s.covers(hole) {
                            out.missing.push((topic.clone(), origin.clone(), hole));
                        }
                    }
                    next = seq + 1;
                    if let Some(to) = keys::decode_gap(&value) {
                        out.gap_markers += 1;
                        next = to.max(seq) + 1;
                        continue;
                    }
                    match Record::decode(&value) {
                        Ok(r) if r.seq == seq && r.topic == topic && r.origin == origin => {
                            out.records += 1
                        }
                        _ => out.corrupt.push((topic.clone(), origin.clone(), seq)),
                    }
                }
                if !failed {
                    for hole in next..=top {
                        if s.covers(hole) {
                            out.missing.push((topic.clone(), origin.clone(), hole));
                        }
                    }
                    break;
                }
                // `next` cannot be read: corrupt if covered; go on after it.
                match self.shared.records.get(record_key(tid, oid, next)) {
                    Ok(Some(v)) if Record::decode(&v).is_ok() => out.records += 1,
                    Ok(None) if !s.covers(next) => {}
                    Ok(None) => out.missing.push((topic.clone(), origin.clone(), next)),
                    Ok(Some(_)) | Err(_) => out.corrupt.push((topic.clone(), origin.clone(), next)),
                }
                next += 1;
            }
            if list {
                for (t, o, seq) in out.corrupt.iter().chain(&out.missing) {
                    if *t == topic && *o == origin {
                        self.found_corrupt(t, o, (tid, oid), *seq);
                    }
                }
            }
        }
        Ok(out)
    }
}
