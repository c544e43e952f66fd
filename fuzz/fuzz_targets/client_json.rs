//! JSON client frames (WebSocket text frames) through the gateway's decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        edgesync_fuzz::client_frames(edgesync_protocol::Encoding::Json, data);
    });
});
