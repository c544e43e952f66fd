//! Cursors as clients send them (`connect.cursor`, `start: {"cursor": …}`): decoding
//! any text is an error or a cursor whose wire form decodes to itself.
#![no_main]
use edgesync_protocol::{Cursor, CursorError};
use libfuzzer_sys::fuzz_target;

/// The gateway's default `max_cursor_bytes` order of magnitude; inputs above it must be
/// refused by length before any decoding.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match Cursor::decode(text, MAX) {
            Ok(c) => {
                let wire = c.encode();
                let back = Cursor::decode(&wire, usize::MAX).expect("a cursor's own encoding");
                assert_eq!(back, c);
                assert_eq!(back.encode(), wire, "encoding is canonical");
            }
            Err(CursorError::TooLarge { len, max }) => {
                assert_eq!((len, max), (text.len(), MAX));
            }
            Err(CursorError::Version(v)) => assert_ne!(v, 1),
            Err(e @ (CursorError::Base64(_) | CursorError::Body(_))) => {
                assert!(text.len() <= MAX);
                assert!(!e.to_string().is_empty());
            }
        }
    });
});
