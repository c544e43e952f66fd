//! MessagePack client frames (WebSocket binary frames, QUIC frame bodies).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        edgesync_fuzz::client_frames(edgesync_protocol::Encoding::MsgPack, data);
    });
});
