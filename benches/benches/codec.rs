//! Criterion benchmarks of the wire codec: encoding and decoding 256 × 1 KiB messages as 256
//! `Publish` frames in one buffer (protocol v4, one frame per message) and as one `PublishBatch`
//! (protocol v5).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use tokio_util::codec::{Decoder, Encoder};
use weir_protocol::{BatchMessage, Frame, Publish, PublishBatch, WeirCodec};

const BATCH: usize = 256;

fn publish(id: u64) -> Frame {
    Frame::Publish(Publish {
        producer: None,
        id,
        topic: "bench".into(),
        payload: Bytes::from(vec![0xAB; 1024]),
        headers: Vec::new(),
    })
}

/// The same 256 messages as one `PublishBatch`.
fn publish_batch() -> Frame {
    Frame::PublishBatch(PublishBatch {
        producer: None,
        first_id: 0,
        topic: "bench".into(),
        messages: (0..BATCH)
            .map(|_| BatchMessage::new(Vec::new(), Bytes::from(vec![0xAB; 1024])))
            .collect(),
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
    let batch = publish_batch();
    group.bench_function("encode 256 x 1KiB as one PublishBatch", |b| {
        let mut codec = WeirCodec::default();
        let mut buf = BytesMut::with_capacity(BATCH * 1100);
        b.iter(|| {
            buf.clear();
            codec.encode_frame(&batch, &mut buf).expect("encodes");
        });
    });
    group.bench_function("decode 256 x 1KiB as one PublishBatch", |b| {
        let mut codec = WeirCodec::default();
        b.iter_batched(
            || {
                let mut buf = BytesMut::new();
                WeirCodec::default()
                    .encode_frame(&batch, &mut buf)
                    .expect("encodes");
                buf
            },
            |mut buf| std::hint::black_box(codec.decode(&mut buf).expect("decodes")),
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
