//! The journal salvage scanner (`store::salvage::scan`) on any bytes: it never panics,
//! and what it reports partitions the file — valid, damaged and tail ranges are
//! non-empty, in bounds, in file order and disjoint; nothing after the last range but
//! zeros (preallocated space); keys reported lost come from damaged ranges.
#![no_main]
use edgesync::store::salvage::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        let s = scan(data);
        let mut ranges: Vec<(usize, usize, &str)> = Vec::new();
        ranges.extend(s.valid.iter().map(|&(a, b)| (a, b, "valid")));
        ranges.extend(s.damaged.iter().map(|&(a, b)| (a, b, "damaged")));
        ranges.extend(s.tail.iter().map(|&(a, b)| (a, b, "tail")));
        ranges.sort_unstable();
        let mut covered = 0;
        for &(a, b, kind) in &ranges {
            assert!(
                a < b && b <= data.len(),
                "{kind} range {a}..{b} of {}",
                data.len()
            );
            assert!(
                a >= covered,
                "{kind} range {a}..{b} overlaps the one ending at {covered}"
            );
            // Between ranges there is nothing: the scan never skips bytes silently.
            assert_eq!(a, covered, "bytes {covered}..{a} neither valid nor damaged");
            covered = b;
        }
        assert!(
            data[covered..].iter().all(|&x| x == 0),
            "non-zero bytes after {covered} unaccounted for"
        );
        // Each list is in file order, and the tail (if any) is last and reaches the end.
        assert!(s.valid.windows(2).all(|w| w[0].1 <= w[1].0));
        assert!(s.damaged.windows(2).all(|w| w[0].1 <= w[1].0));
        if let Some((_, end)) = s.tail {
            assert_eq!(end, data.len());
        }
        if s.damaged.is_empty() {
            assert!(s.lost.is_empty(), "lost keys without a damaged range");
        }
        let damaged_bytes: usize = s.damaged.iter().map(|(a, b)| b - a).sum();
        let lost_bytes: usize = s.lost.iter().map(|l| l.key.len()).sum();
        assert!(
            lost_bytes <= damaged_bytes,
            "lost keys larger than the damage"
        );
    });
});
