//! Store records as read from disk or from a peer (`store::Record::decode`). The first
//! input byte picks a mode: odd, the CRC field is recomputed over the rest, so the
//! fuzzer reaches the field parser instead of stopping at the checksum; even, the bytes
//! are decoded as they are (checksum path).
#![no_main]
use edgesync::store::{Record, RecordError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        let Some((&mode, bytes)) = data.split_first() else {
            return;
        };
        let mut bytes = bytes.to_vec();
        if mode & 1 == 1 && bytes.len() >= 4 {
            let crc = crc32c(&bytes[4..]);
            bytes[..4].copy_from_slice(&crc.to_le_bytes());
        }
        match Record::decode(&bytes) {
            Ok(r) => {
                let enc = r.encode().expect("a decoded record fits its own format");
                // The canonical form is never longer than what was read (a `has_mid` byte
                // other than 0/1 and trailing bytes are the only slack).
                assert!(enc.len() <= bytes.len());
                assert_eq!(Record::decode(&enc).expect("own encoding"), r);
            }
            Err(RecordError::Checksum { stored, computed }) => {
                assert_ne!(stored, computed);
                assert_eq!(mode & 1, 0, "a recomputed checksum mismatched");
            }
            Err(RecordError::Truncated(field) | RecordError::Utf8(field)) => {
                assert!(!field.is_empty());
            }
            Err(RecordError::Version(v)) => assert!(v != 1 && v != 2, "version {v} is known"),
            Err(RecordError::KeyWithoutMid) => {
                // Only a keyed (v2) record with has_mid = 0 reports this.
                assert_eq!(bytes.get(4), Some(&2));
            }
            Err(e @ RecordError::TooLong(_)) => panic!("decode cannot report {e:?}"),
        }
    });
});

/// CRC-32C, bit by bit (the record's checksum; kept here so the target checks the
/// store's implementation instead of sharing it).
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
