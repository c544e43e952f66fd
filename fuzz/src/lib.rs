//! Properties shared by the fuzz targets (one file per target in `fuzz_targets/`).
//!
//! Every target asserts more than "no panic" where it can: what decodes encodes and
//! decodes back to the same value, errors are the documented typed variants, and
//! nothing allocates beyond a bound set by the input's length.

use edgesync_protocol::codec::Invalid;
use edgesync_protocol::{ClientFrame, DecodeError, Encoding, ErrorCode, ServerFrame};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Client frames in `enc`: the gateway's decoder (`decode_each`) against the strict one
/// (`decode_all`), and a round trip of everything that decodes.
pub fn client_frames(enc: Encoding, frame: &[u8]) {
    let each = enc.decode_each::<ClientFrame>(frame);
    let all = enc.decode_all::<ClientFrame>(frame);
    match &each {
        Err(e) => {
            // A broken frame is refused whole, as a bad frame (never "too large": no
            // limit is given here), and the strict decoder refuses it too.
            assert_eq!(e.code(), ErrorCode::BadFrame, "{e:?}");
            assert!(
                all.is_err(),
                "decode_each refused what decode_all took: {e:?}"
            );
        }
        Ok(msgs) => {
            assert!(!msgs.is_empty(), "Ok(empty) instead of DecodeError::Empty");
            // A message is at least one byte: the list is bounded by the frame.
            assert!(msgs.len() <= frame.len());
            for m in msgs {
                match m {
                    Ok(f) => round_trip(enc, f),
                    Err(Invalid { message, .. }) => assert!(!message.is_empty()),
                }
            }
            // Where the strict decoder takes the frame, both agree message by message.
            if let Ok(strict) = &all {
                let loose: Vec<&ClientFrame> =
                    msgs.iter().filter_map(|m| m.as_ref().ok()).collect();
                assert_eq!(
                    loose.len(),
                    msgs.len(),
                    "decode_all took an invalid message"
                );
                assert_eq!(strict.iter().collect::<Vec<_>>(), loose);
            }
        }
    }
    if let Err(e) = &all {
        assert_typed(e);
    }
}

/// Server frames in `enc`: decode, then every decoded frame round-trips.
pub fn server_frames(enc: Encoding, frame: &[u8]) {
    match enc.decode_all::<ServerFrame>(frame) {
        Ok(frames) => {
            assert!(frames.len() <= frame.len());
            for f in &frames {
                round_trip(enc, f);
            }
            // The batch as the gateway writes it (separator between messages) decodes to
            // the same list.
            let mut batch = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                if i > 0 {
                    batch.extend_from_slice(enc.separator());
                }
                enc.encode_into(f, &mut batch);
            }
            let back: Vec<ServerFrame> = enc.decode_all(&batch).expect("re-encoded batch");
            assert_eq!(back, frames);
        }
        Err(e) => assert_typed(&e),
    }
}

/// `value` encoded in `enc` decodes to itself, alone and as a one-message frame.
pub fn round_trip<T>(enc: Encoding, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = enc.encode(value);
    let back: Vec<T> = enc
        .decode_all(&bytes)
        .unwrap_or_else(|e| panic!("{value:?} encoded as {bytes:?} does not decode: {e}"));
    assert_eq!(back.len(), 1, "{value:?} encoded as {bytes:?}");
    assert_eq!(&back[0], value, "{bytes:?}");
}

/// A decode error without a limit in play is one of the "bad frame" variants.
fn assert_typed(e: &DecodeError) {
    assert!(
        matches!(
            e,
            DecodeError::Json(_) | DecodeError::MsgPack(_) | DecodeError::Empty
        ),
        "{e:?}"
    );
    assert!(!e.to_string().is_empty());
}

/// Bytes an input may hold live at once beyond a multiple of its length: serde's
/// cautious preallocation (a length prefix is trusted up to 1 MiB of elements) plus
/// the decoders' fixed buffers.
pub const ALLOC_SLACK_BYTES: usize = 2 << 20;
/// Live bytes per input byte a decoder may hold (decoded copy, error text, re-encoding).
pub const ALLOC_BYTES_PER_INPUT_BYTE: usize = 64;

/// Run `f` on `input` and assert that the memory it held live at its peak is bounded by
/// the input's length: a length field that claims gigabytes must not be believed.
pub fn bounded<R>(input: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let base = alloc::reset_peak();
    let out = f(input);
    let peak = alloc::peak().saturating_sub(base);
    let limit = ALLOC_SLACK_BYTES + ALLOC_BYTES_PER_INPUT_BYTE * input.len();
    assert!(
        peak <= limit,
        "held {peak} bytes live for a {}-byte input (limit {limit})",
        input.len()
    );
    out
}

/// A counting allocator: the system allocator, plus the live and peak byte counts that
/// [`bounded`] reads. libFuzzer's own malloc limit needs a sanitizer's hooks; the targets
/// build without one (`-s none`: the code under test forbids `unsafe`, so AddressSanitizer
/// finds nothing there and costs a 2-3x slower run).
mod alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Start a new peak at the current live count, which it returns.
    pub fn reset_peak() -> usize {
        let live = LIVE.load(Relaxed);
        PEAK.store(live, Relaxed);
        live
    }

    pub fn peak() -> usize {
        PEAK.load(Relaxed)
    }

    struct Counting;

    // SAFETY: every call is forwarded unchanged to the system allocator; the counters
    // are plain atomics and never affect what is allocated.
    #[allow(unsafe_code)]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc` is passed through as is.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
                PEAK.fetch_max(live, Relaxed);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as for `alloc`.
            unsafe { System.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as for `alloc`.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                LIVE.fetch_sub(layout.size(), Relaxed);
                let live = LIVE.fetch_add(new_size, Relaxed) + new_size;
                PEAK.fetch_max(live, Relaxed);
            }
            p
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}
