//! Codec benchmarks: encoding a 64-byte message push, and decoding a batch.
use criterion::{Criterion, criterion_group, criterion_main};
use edgesync_protocol::{Encoding, Msg, Payload, ServerFrame};

fn push() -> ServerFrame {
    ServerFrame::Msg(Msg {
        topic: "sensors.eu.t1".into(),
        origin: "node-1".into(),
        epoch: 1,
        seq: 123_456,
        hlc: 1 << 40,
        client: "c-1".into(),
        mid: None,
        headers: Default::default(),
        data: Payload::from(vec![7u8; 64]),
        sub: None,
        queue: None,
        delivery: None,
    })
}

fn bench(c: &mut Criterion) {
    let f = push();
    for enc in [Encoding::Json, Encoding::MsgPack] {
        c.bench_function(&format!("encode_push_{enc:?}"), |b| {
            b.iter(|| enc.encode(&f))
        });
        let mut batch = Vec::new();
        for i in 0..100 {
            if i > 0 {
                batch.extend_from_slice(enc.separator());
            }
            enc.encode_into(&f, &mut batch);
        }
        c.bench_function(&format!("decode_100_pushes_{enc:?}"), |b| {
            b.iter(|| enc.decode_all::<ServerFrame>(&batch).map(|v| v.len()))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
