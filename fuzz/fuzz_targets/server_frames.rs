//! Server frames as clients decode them, both encodings: the first byte picks the
//! encoding (even: JSON, odd: MessagePack), the rest is the frame.
#![no_main]
use edgesync_protocol::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        let Some((&pick, frame)) = data.split_first() else {
            return;
        };
        let enc = if pick & 1 == 0 {
            Encoding::Json
        } else {
            Encoding::MsgPack
        };
        edgesync_fuzz::server_frames(enc, frame);
    });
});
