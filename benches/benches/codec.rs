//! Criterion benchmarks of the wire codec: encoding and decoding 1 KiB `Publish` frames, one at a
//! time and 256 to a buffer (as the broker and client batch them).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use tokio_util::codec::{Decoder, Encoder};
use weir_protocol::{Frame, Publish, WeirCodec};

const BATCH: usize = 256;

fn publish(id: u64) -> Frame {
    Frame::Publish(Publish {
        id,
        topic: "bench".into(),
        payload: Bytes::from(vec![0xAB; 1024]),
        headers: Vec::new(),
    })
}

fn encoded_batch() -> BytesMut {
    let mut codec = WeirCodec::default();
    let mut buf = BytesMut::new();
    for id in 0..BATCH as u64 {
        codec.encode(publish(id), &mut buf).expect("encodes");
    }
    buf
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(BATCH as u64));
    let frames: Vec<Frame> = (0..BATCH as u64).map(publish).collect();
    group.bench_function("encode 256 x 1KiB publish", |b| {
        let mut codec = WeirCodec::default();
        let mut buf = BytesMut::with_capacity(BATCH * 1100);
        b.iter(|| {
            buf.clear();
            for frame in &frames {
                codec.encode_frame(frame, &mut buf).expect("encodes");
            }
        });
    });
    group.bench_function("decode 256 x 1KiB publish", |b| {
        let mut codec = WeirCodec::default();
        b.iter_batched(
            encoded_batch,
            |mut buf| {
                while let Some(frame) = codec.decode(&mut buf).expect("decodes") {
                    std::hint::black_box(frame);
                }
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// The criterion entry points (a private module: the macro's functions carry no docs).
mod entry {
    use criterion::criterion_group;
    criterion_group!(benches, super::codec);
}

criterion_main!(entry::benches);
