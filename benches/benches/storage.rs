//! Criterion benchmarks of the segmented message log (`weir_broker::storage::log`):
//! durable append (`append_batch` + `sync`) of 256 × 1 KiB payloads, and reading 256 records.
//!
//! The log lives in a temporary directory under Cargo's target tmp dir (a real disk, not tmpfs),
//! so the append figure includes a real `fdatasync` per batch.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_main, Criterion, Throughput};
use weir_broker::storage::log::{LogConfig, Message, SegmentLog};

const BATCH: usize = 256;
const PAYLOAD: usize = 1024;
/// Acked prefixes are deleted (outside the timed region) once the log holds this much.
const MAX_DISK: u64 = 512 * 1024 * 1024;
/// Records kept for the read benchmark (64 MiB of payload: one full segment and a bit).
const READ_RECORDS: u64 = 65_536;

fn bench_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new()
        .prefix("weir-storage-bench")
        .tempdir_in(base)
        .expect("create bench temp dir")
}

/// One batch of 1 KiB messages without headers (the figures in BENCHMARKS.md).
fn messages() -> Vec<Message> {
    (0..BATCH)
        .map(|i| Message {
            producer: None,
            headers: Vec::new(),
            payload: Bytes::from(vec![(i % 251) as u8; PAYLOAD]),
        })
        .collect()
}

fn append_sync(c: &mut Criterion) {
    let dir = bench_dir();
    let mut log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open log");
    let batch = messages();
    let mut group = c.benchmark_group("storage");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("append_batch_sync_256x1KiB", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let seq = log.append_batch(&batch, 0).expect("append");
                log.sync().expect("sync");
                elapsed += start.elapsed();
                black_box(seq);
                if log.disk_bytes() > MAX_DISK {
                    log.delete_before(log.next_seq()).expect("delete");
                }
            }
            elapsed
        })
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = bench_dir();
    let mut log = SegmentLog::open(dir.path(), LogConfig::default()).expect("open log");
    let batch = messages();
    while log.next_seq() <= READ_RECORDS {
        log.append_batch(&batch, 0).expect("append");
    }
    log.sync().expect("sync");
    let first = log.first_seq();
    let span = log.next_seq() - first - BATCH as u64;
    let mut i: u64 = 0;
    let mut group = c.benchmark_group("storage");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("read_256x1KiB", |b| {
        b.iter(|| {
            // Walk through the log in a fixed pseudo-random order of start points (index seeks).
            i = i.wrapping_add(1);
            let from = first + (i.wrapping_mul(7919 * 97)) % span;
            let recs = log.read(from, BATCH, usize::MAX).expect("read");
            assert_eq!(recs.len(), BATCH);
            black_box(recs)
        })
    });
    group.finish();
}

/// The criterion group (in a private module: the macro's `pub fn` carries no doc comment).
mod group {
    use criterion::criterion_group;
    criterion_group!(benches, super::append_sync, super::read);
}

criterion_main!(group::benches);
