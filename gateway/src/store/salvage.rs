//! Journal salvage: open past a damaged write-ahead journal instead of refusing to start.
//!
//! The storage engine (fjall 3.1) refuses to open when a complete batch in its
//! journal fails its checksum (`JournalRecovery(ChecksumMismatch)`), and silently
//! cuts the journal at the first entry it cannot parse — dropping every batch
//! after it, acknowledged ones included. One flipped bit would either keep the
//! gateway down or lose data without a word. So before the engine opens, the
//! store reads each journal file itself, batch by batch:
//!
//! - a batch that parses and whose checksum matches is kept;
//! - a damaged batch is dropped, and scanning resumes at the next position where
//!   a whole valid batch parses (so the batches after the damage are kept);
//! - an incomplete batch at the end (a torn write: the process died before the
//!   batch's fsync, so it was never acknowledged) is left for the engine, which
//!   discards it as it always does.
//!
//! When anything was dropped, the original files (without their trailing zero
//! padding, so the copy costs the journal's used bytes, not its preallocated size)
//! are copied to `<data_dir>/quarantine/<unix ms>/` and each damaged journal is rewritten with
//! only its valid batches (written to a temporary file, fsynced, renamed). What the
//! dropped batches held is reported as far as it can be read: keys of the records
//! keyspace (16 bytes: topic id, origin id, seq) become the store's corrupt list
//! after open, so readers get a `corrupt` gap instead of a silent hole and the
//! replication seam can fetch them again from a peer.
//!
//! # The journal format this reads (fjall 3.1, little endian)
//!
//! ```text
//! Start  tag 1 · item count u32 · seqno u64
//! Item   tag 2 · value type u8 · compression u8 · keyspace u64 · key len u16
//!        · value len u32 · stored len u32 · key · stored value
//! Clear  tag 4 · keyspace u64
//! End    tag 3 · xxh3-64 of the batch's item and clear bytes · "FJL" 3
//! ```
//!
//! The engine version is pinned (`fjall = "3.1"` in Cargo.toml); a test builds a
//! real database with the engine and checks that this reader parses every batch of
//! it, so a format change fails the suite instead of the salvage.

use std::io::Write;
use std::path::{Path, PathBuf};

const TAG_START: u8 = 1;
const TAG_ITEM: u8 = 2;
const TAG_END: u8 = 3;
const TAG_CLEAR: u8 = 4;
const MAGIC: &[u8; 4] = b"FJL\x03";
const ITEM_HEADER: usize = 21;

/// A key of a dropped batch (as far as the damaged bytes could be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostItem {
    /// The engine's internal keyspace id.
    pub keyspace: u64,
    pub key: Vec<u8>,
}

/// What a scan of one journal file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileScan {
    /// Byte ranges of valid batches, in file order.
    pub valid: Vec<(usize, usize)>,
    /// Byte ranges dropped as damaged.
    pub damaged: Vec<(usize, usize)>,
    /// Keys readable in the damaged ranges.
    pub lost: Vec<LostItem>,
    /// An incomplete last batch (start, end of file): a torn write, the engine's business.
    pub tail: Option<(usize, usize)>,
}

/// What [`salvage`] did to a journal directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Journal files rewritten without their damaged batches.
    pub rewritten: Vec<PathBuf>,
    /// Damaged batches (byte ranges) dropped, over all files.
    pub dropped: usize,
    /// Bytes dropped.
    pub dropped_bytes: usize,
    /// Keys of the dropped batches that could be read.
    pub lost: Vec<LostItem>,
    /// Where the original files were copied, when anything was rewritten.
    pub quarantine: Option<PathBuf>,
}

impl Report {
    /// True when nothing was damaged.
    pub fn is_clean(&self) -> bool {
        self.dropped == 0
    }
}

/// Why a batch at some position does not parse.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// The file ends inside the batch.
    Eof,
    /// The bytes are not a valid batch.
    Invalid,
}

/// One parsed batch: where it ends.
struct Parsed {
    end: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Keys read from a bad batch, each with the offset just past its bytes (so keys whose
/// claimed length runs past the damaged range, into the next valid batch, are not
/// reported: they are not keys of the dropped batch).
type Read = Vec<(usize, LostItem)>;

/// Parse the batch starting at `pos`; when it is bad, also return the items that
/// could be read (for the lost list).
fn parse_batch(b: &[u8], pos: usize) -> Result<Parsed, (Bad, Read)> {
    let mut items = Vec::new();
    let eof = |items: Read| Err((Bad::Eof, items));
    if b.get(pos) != Some(&TAG_START) {
        return Err((Bad::Invalid, items));
    }
    let (Some(count), Some(_seqno)) = (u32_at(b, pos + 1), u64_at(b, pos + 5)) else {
        return eof(items);
    };
    let mut at = pos + 13;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for _ in 0..count {
        let Some(&tag) = b.get(at) else {
            return eof(items);
        };
        match tag {
            TAG_ITEM => {
                let (Some(&compression), Some(keyspace), Some(klen), Some(stored)) = (
                    b.get(at + 2),
                    u64_at(b, at + 3),
                    u16_at(b, at + 11),
                    u32_at(b, at + 17),
                ) else {
                    return eof(items);
                };
                if compression > 1 {
                    return Err((Bad::Invalid, items));
                }
                let key_at = at + ITEM_HEADER;
                let end = key_at + klen as usize + stored as usize;
                let key_end = key_at + klen as usize;
                if let Some(key) = b.get(key_at..key_end) {
                    let key = key.to_vec();
                    items.push((key_end, LostItem { keyspace, key }));
                }
                let Some(bytes) = b.get(at..end) else {
                    return eof(items);
                };
                hasher.update(bytes);
                at = end;
            }
            TAG_CLEAR => {
                let Some(bytes) = b.get(at..at + 9) else {
                    return eof(items);
                };
                hasher.update(bytes);
                at += 9;
            }
            TAG_START => {
                // A new batch inside this one: this one was never finished.
                return Err((Bad::Invalid, items));
            }
            // Zeros to the end: the preallocated rest of the file, never written.
            _ if zeros_from(b, at) => return eof(items),
            _ => return Err((Bad::Invalid, items)),
        }
    }
    match b.get(at) {
        None => return eof(items),
        Some(&TAG_END) => {}
        Some(_) if zeros_from(b, at) => return eof(items),
        Some(_) => return Err((Bad::Invalid, items)),
    }
    let (Some(sum), Some(magic)) = (u64_at(b, at + 1), b.get(at + 9..at + 13)) else {
        return eof(items);
    };
    if magic != MAGIC || sum != hasher.digest() {
        return Err((Bad::Invalid, items));
    }
    Ok(Parsed { end: at + 13 })
}

fn zeros_from(b: &[u8], at: usize) -> bool {
    b.get(at..).is_none_or(|r| r.iter().all(|&x| x == 0))
}

/// Scan one journal file's bytes.
pub fn scan(b: &[u8]) -> FileScan {
    let mut out = FileScan::default();
    let mut pos = 0;
    while pos < b.len() {
        match parse_batch(b, pos) {
            Ok(p) => {
                out.valid.push((pos, p.end));
                pos = p.end;
            }
            Err((bad, items)) => {
                // Zero bytes from here on: preallocated or never written.
                if b[pos..].iter().all(|&x| x == 0) {
                    break;
                }
                // Find the next whole valid batch; everything before it is damaged.
                let next = (pos + 1..b.len())
                    .filter(|&p| b[p] == TAG_START)
                    .find(|&p| parse_batch(b, p).is_ok());
                match next {
                    Some(n) => {
                        out.damaged.push((pos, n));
                        out.lost.extend(within(items, n));
                        pos = n;
                    }
                    // Cut short with no end marker after it: a torn write.
                    None if bad == Bad::Eof && !b[pos..].windows(4).any(|w| w == MAGIC) => {
                        out.tail = Some((pos, b.len()));
                        break;
                    }
                    None => {
                        // A complete but invalid batch (or garbage) with nothing valid after.
                        out.damaged.push((pos, b.len()));
                        out.lost.extend(within(items, b.len()));
                        break;
                    }
                }
            }
        }
    }
    out
}

/// The keys of `items` that end by `end` (inside the damaged range).
fn within(items: Read, end: usize) -> impl Iterator<Item = LostItem> {
    items
        .into_iter()
        .filter(move |(key_end, _)| *key_end <= end)
        .map(|(_, item)| item)
}

/// The journal files of a database directory, oldest first.
fn journals(db_dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(db_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let path = entry?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((id, path));
    }
    out.sort();
    Ok(out)
}

/// Check (and with `rewrite`, repair) every journal of the database under `db_dir`.
/// Originals of rewritten files are copied under `quarantine` first.
///
/// # Errors
/// I/O errors reading, copying or rewriting the files.
pub fn salvage(db_dir: &Path, quarantine: &Path, rewrite: bool) -> std::io::Result<Report> {
    let mut report = Report::default();
    for (_, path) in journals(db_dir)? {
        let bytes = std::fs::read(&path)?;
        let s = scan(&bytes);
        if s.damaged.is_empty() {
            continue;
        }
        report.dropped += s.damaged.len();
        report.dropped_bytes += s.damaged.iter().map(|(a, b)| b - a).sum::<usize>();
        report.lost.extend(s.lost.iter().cloned());
        if !rewrite {
            continue;
        }
        let dir = match &report.quarantine {
            Some(d) => d.clone(),
            None => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let d = quarantine.join(ms.to_string());
                std::fs::create_dir_all(&d)?;
                report.quarantine = Some(d.clone());
                d
            }
        };
        // The original without the engine's zero padding: a journal is preallocated
        // (64 MiB), and a whole copy would need that much free space (on a small or
        // nearly full disk the copy alone kept the gateway from starting).
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let name = path.file_name().unwrap_or_default();
        std::fs::write(dir.join(name), &bytes[..used])?;
        let tmp = path.with_extension("jnl.salvage");
        {
            let mut f = std::fs::File::create(&tmp)?;
            for &(a, b) in &s.valid {
                f.write_all(&bytes[a..b])?;
            }
            if let Some((a, b)) = s.tail {
                f.write_all(&bytes[a..b])?;
            }
            // Keep the file's length: the engine preallocates journals with zeros.
            f.set_len(bytes.len() as u64)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(db_dir)?.sync_all()?;
        report.rewritten.push(path);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(keyspace: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut v = vec![TAG_ITEM, 0, 0];
        v.extend_from_slice(&keyspace.to_le_bytes());
        v.extend_from_slice(&(key.len() as u16).to_le_bytes());
        v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        v.extend_from_slice(&(value.len() as u32).to_le_bytes());
        v.extend_from_slice(key);
        v.extend_from_slice(value);
        v
    }

    fn batch(seqno: u64, items: &[(u64, &[u8], &[u8])]) -> Vec<u8> {
        let mut v = vec![TAG_START];
        v.extend_from_slice(&(items.len() as u32).to_le_bytes());
        v.extend_from_slice(&seqno.to_le_bytes());
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (ks, k, val) in items {
            let i = item(*ks, k, val);
            h.update(&i);
            v.extend_from_slice(&i);
        }
        v.push(TAG_END);
        v.extend_from_slice(&h.digest().to_le_bytes());
        v.extend_from_slice(MAGIC);
        v
    }

    #[test]
    fn a_clean_journal_is_all_valid() {
        let mut j = batch(1, &[(3, b"k1", b"v1")]);
        j.extend(batch(2, &[(3, b"k2", b"v2"), (4, b"m", b"")]));
        let s = scan(&j);
        assert_eq!(s.valid.len(), 2);
        assert!(s.damaged.is_empty() && s.tail.is_none());
    }

    #[test]
    fn a_flipped_byte_drops_only_its_batch_and_names_its_keys() {
        let a = batch(1, &[(3, b"k1", b"v1")]);
        let mut b = batch(2, &[(3, b"k2", b"value two")]);
        let c = batch(3, &[(3, b"k3", b"v3")]);
        let flip = b.len() - 16; // inside the value
        b[flip] ^= 0x40;
        let j = [a.clone(), b.clone(), c.clone()].concat();
        let s = scan(&j);
        assert_eq!(s.valid, vec![(0, a.len()), (a.len() + b.len(), j.len())]);
        assert_eq!(s.damaged, vec![(a.len(), a.len() + b.len())]);
        assert_eq!(
            s.lost,
            vec![LostItem {
                keyspace: 3,
                key: b"k2".to_vec()
            }]
        );
    }

    #[test]
    fn a_damaged_tag_does_not_hide_the_batches_after_it() {
        let a = batch(1, &[(3, b"k1", b"v1")]);
        let mut b = batch(2, &[(3, b"k2", b"v2")]);
        let c = batch(3, &[(3, b"k3", b"v3")]);
        b[0] = 0x7f; // the engine stops reading here and drops c too
        let j = [a, b, c.clone()].concat();
        let s = scan(&j);
        assert_eq!(s.valid.len(), 2);
        assert_eq!(s.valid[1].1 - s.valid[1].0, c.len());
        assert_eq!(s.damaged.len(), 1);
    }

    #[test]
    fn a_key_length_running_into_the_next_batch_is_not_a_lost_key() {
        // Found by the salvage fuzz target: a damaged item's key length pointed past its
        // batch, so bytes of the next (valid) batch were reported as a lost key — a key
        // that can name an intact record, which readers would then be told is corrupt.
        let a = batch(1, &[(3, b"k1", b"v1")]);
        let mut b = batch(2, &[(3, b"k2", b"v2")]);
        let c = batch(3, &[(3, b"k3", b"v3")]);
        let key_at = 13 + ITEM_HEADER;
        let klen = (b.len() - key_at + 5) as u16; // 5 bytes into `c`
        b[13 + 11..13 + 13].copy_from_slice(&klen.to_le_bytes());
        let j = [a.clone(), b.clone(), c].concat();
        let s = scan(&j);
        assert_eq!(s.damaged, vec![(a.len(), a.len() + b.len())]);
        assert_eq!(s.valid.len(), 2);
        assert!(s.lost.is_empty(), "{:?}", s.lost);
    }

    #[test]
    fn a_torn_tail_is_left_to_the_engine() {
        let a = batch(1, &[(3, b"k1", b"v1")]);
        let b = batch(2, &[(3, b"k2", b"v2")]);
        let j = [a.clone(), b[..b.len() - 5].to_vec()].concat();
        let s = scan(&j);
        assert_eq!(s.valid, vec![(0, a.len())]);
        assert!(s.damaged.is_empty());
        assert_eq!(s.tail, Some((a.len(), j.len())));
        // Zero padding after the last batch is not damage either, and a batch cut
        // short by the padding is a torn write.
        let z = [a.clone(), vec![0; 100]].concat();
        let s = scan(&z);
        assert!(s.damaged.is_empty() && s.tail.is_none());
        let t = [a.clone(), b[..b.len() - 20].to_vec(), vec![0; 100]].concat();
        let s = scan(&t);
        assert!(s.damaged.is_empty());
        assert_eq!(s.tail, Some((a.len(), t.len())));
    }

    #[test]
    fn a_complete_last_batch_with_a_bad_checksum_is_dropped() {
        let a = batch(1, &[(3, b"k1", b"v1")]);
        let mut b = batch(2, &[(3, b"k2", b"v2")]);
        let n = b.len();
        b[n - 10] ^= 1; // the checksum
        let j = [a.clone(), b].concat();
        let s = scan(&j);
        assert_eq!(s.valid, vec![(0, a.len())]);
        assert_eq!(s.damaged, vec![(a.len(), j.len())]);
        assert_eq!(s.lost[0].key, b"k2".to_vec());
    }
}
