//! QUIC length-prefixed framing: a byte stream arriving in chunks of any size is cut
//! into exactly the frames it announces, refusing oversized or empty ones, without
//! reserving more than the limit; each frame body then goes through the MessagePack
//! client decoder. Input: limit byte, chunk-size byte, then the stream.
#![no_main]
use bytes::BytesMut;
use edgesync_protocol::DecodeError;
use edgesync_protocol::codec::LengthPrefixed;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgesync_fuzz::bounded(data, |data| {
        let [limit, chunk, stream @ ..] = data else {
            return;
        };
        let max_frame = 1 + usize::from(*limit) * 16;
        let chunk = 1 + usize::from(*chunk);
        let lp = LengthPrefixed::new(max_frame);
        let mut buf = BytesMut::new();
        // The stream as the frames returned so far re-encode it.
        let mut rebuilt = Vec::new();
        'stream: for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            // Each call either returns a frame (consuming ≥ 5 bytes), asks for more, or fails.
            for _ in 0..=stream.len() {
                match lp.next_frame(&mut buf) {
                    Ok(Some(frame)) => {
                        assert!(!frame.is_empty() && frame.len() <= max_frame);
                        LengthPrefixed::put_prefix(&mut rebuilt, frame.len());
                        rebuilt.extend_from_slice(&frame);
                        edgesync_fuzz::client_frames(edgesync_protocol::Encoding::MsgPack, &frame);
                    }
                    Ok(None) => break,
                    Err(DecodeError::TooLarge { len, max }) => {
                        assert_eq!(max, max_frame);
                        assert!(len > max_frame);
                        assert_eq!(
                            buf[..4],
                            u32::try_from(len).expect("u32 prefix").to_be_bytes()
                        );
                        break 'stream;
                    }
                    Err(DecodeError::Empty) => {
                        assert_eq!(buf[..4], [0, 0, 0, 0]);
                        break 'stream;
                    }
                    Err(e) => panic!("framing error of the wrong type: {e:?}"),
                }
            }
            // Waiting for a frame never reserves beyond the limit, whatever the prefix says.
            assert!(
                buf.capacity() <= 4 * (4 + max_frame + chunk),
                "{}",
                buf.capacity()
            );
        }
        // Frames come out in order and whole: they re-encode to a prefix of the stream.
        assert_eq!(&stream[..rebuilt.len()], &rebuilt[..]);
    });
});
