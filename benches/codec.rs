//! Micro-benchmarks of the hot path of a fan-out: decoding a client's V2 push, and encoding the
//! broadcast it causes (the JSON alone, and the whole WebSocket frame every subscriber shares).
//!
//! `cargo bench --bench codec`

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fawkes::protocol::{FrameKind, Outbound, Payload, Serializer};
use fawkes::transport::frame;

const PUSH: &[u8] = br#"["1","7","community:feed","new_post",{"body":"hello world","n":42}]"#;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("v2_decode");
    group.throughput(Throughput::Bytes(PUSH.len() as u64));
    group.bench_function("push", |b| {
        b.iter(|| {
            Serializer::V2
                .decode(FrameKind::Text, black_box(PUSH))
                .unwrap()
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let payload = Payload::Json(serde_json::json!({"body": "hello world", "n": 42}));
    let broadcast = Outbound::Broadcast {
        topic: "community:feed",
        event: "new_post",
        payload: &payload,
    };
    let mut group = c.benchmark_group("v2_encode");
    group.bench_function("broadcast", |b| {
        // Reuse one buffer, so this measures the serializer rather than the allocator.
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            Serializer::V2
                .encode(black_box(&broadcast), &mut out)
                .unwrap();
            black_box(&out);
        })
    });
    // What the server does once per broadcast: reserve the header, encode in place, finish.
    group.bench_function("broadcast_frame", |b| {
        b.iter(|| {
            let mut buf = frame::start(128);
            let kind = Serializer::V2
                .encode(black_box(&broadcast), &mut buf)
                .unwrap();
            frame::finish(buf, kind)
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
