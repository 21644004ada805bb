//! `weir bench disk`: what the disk under a data directory takes in synced writes of one
//! batch size — the ceiling a broker's group commit (one write, one `fdatasync` per batch)
//! can reach there — and how fast it reads the same bytes back in order.
//!
//! It writes `--total` bytes to a temporary file in `--dir`, `--batch` bytes per `write`, each
//! followed by `fdatasync` (as the broker's writer does under `fsync = "batch"`), then reads the
//! file sequentially, and deletes it (also when interrupted). Bounded: the file never exceeds
//! `--total`, and one batch is held in memory. Nothing here talks to a broker.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use tokio::sync::watch;

use super::common::{histogram, record};
use crate::size::{format_size, parse_size};

/// Largest `--batch`: one batch is held in memory.
const MAX_BATCH: u64 = 64 * 1024 * 1024;

/// Arguments of `weir bench disk`.
#[derive(Debug, Args)]
pub struct DiskArgs {
    /// Directory to measure: put it where the broker's data directory is.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Bytes per synced write: bytes or with a unit (256KiB, 1MiB); at most 64 MiB.
    #[arg(long, value_name = "SIZE", default_value = "256KiB", value_parser = parse_size)]
    pub batch: u64,
    /// Bytes to write in all: bytes or with a unit (256MiB, 1GiB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub total: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug, Serialize)]
struct DiskReport {
    dir: PathBuf,
    batch_bytes: u64,
    total_bytes: u64,
    /// Synced writes per second.
    syncs_per_s: f64,
    /// Bytes written (and synced) per second, in MB/s (10^6).
    write_mb_per_s: f64,
    /// `write` + `fdatasync` of one batch, p50 / p99 / max, microseconds.
    sync_p50_us: f64,
    sync_p99_us: f64,
    sync_max_us: f64,
    /// The file read back in order, MB/s (it was just written: mostly from the page cache).
    read_mb_per_s: f64,
}

/// Deletes the measurement file when dropped, whatever ended the run.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `weir bench disk` on a blocking thread; when `interrupt` turns true (Ctrl-C, SIGTERM)
/// it stops after the batch in progress, deletes its file and fails with `interrupted`.
pub async fn run(args: DiskArgs, mut interrupt: watch::Receiver<bool>) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=MAX_BATCH).contains(&args.batch),
        "--batch must be 1 byte to {}",
        format_size(MAX_BATCH)
    );
    anyhow::ensure!(args.total >= args.batch, "--total must be at least --batch");
    let json = args.json;
    let stop = Arc::new(AtomicBool::new(false));
    let mut measuring = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || measure(&args, &stop)
    });
    let report = tokio::select! {
        report = &mut measuring => report??,
        _ = interrupt.wait_for(|stop| *stop) => {
            stop.store(true, Ordering::Relaxed);
            let _ = measuring.await;
            anyhow::bail!("interrupted");
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(crate::exit::exit(crate::exit::DONE))
}

/// Writes, syncs, reads back and deletes the scratch file; stops early (an error) once `stop`
/// is set.
fn measure(args: &DiskArgs, stop: &AtomicBool) -> anyhow::Result<DiskReport> {
    let (scratch, mut file) = scratch(&args.dir)?;
    let batch = vec![0x5a_u8; args.batch as usize];
    let mut syncs = histogram();
    let mut written = 0;
    let started = Instant::now();
    while written < args.total {
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        let n = (args.total - written).min(args.batch) as usize;
        let t0 = Instant::now();
        file.write_all(&batch[..n])?;
        file.sync_data()?;
        record(&mut syncs, t0.elapsed().as_nanos() as u64);
        written += n as u64;
    }
    let write_s = started.elapsed().as_secs_f64();
    drop(file);
    let read_mb_per_s = read_back(&scratch.0, args.batch as usize, written, stop)?;
    let us = |q: f64| syncs.value_at_quantile(q) as f64 / 1000.0;
    Ok(DiskReport {
        dir: args.dir.clone(),
        batch_bytes: args.batch,
        total_bytes: written,
        syncs_per_s: syncs.len() as f64 / write_s,
        write_mb_per_s: written as f64 / write_s / 1e6,
        sync_p50_us: us(0.5),
        sync_p99_us: us(0.99),
        sync_max_us: syncs.max() as f64 / 1000.0,
        read_mb_per_s,
    })
}

/// A new scratch file in `dir`, deleted when the [`Scratch`] is dropped.
fn scratch(dir: &Path) -> anyhow::Result<(Scratch, File)> {
    let scratch = Scratch(dir.join(format!(
        ".weir-bench-disk-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&scratch.0)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", scratch.0.display()))?;
    Ok((scratch, file))
}

/// The sequential read rate of the disk under a directory ([`sequential_read`]).
#[derive(Debug, Clone, Serialize)]
pub struct SequentialRead {
    /// The directory measured.
    pub dir: PathBuf,
    /// Bytes read.
    pub bytes: u64,
    /// Bytes read in order per second, MB/s (10^6).
    pub read_mb_per_s: f64,
    /// Whether the page cache was dropped before reading (then the figure is the disk's; else
    /// mostly the page cache's).
    pub cache_dropped: bool,
}

/// Chunk of [`sequential_read`]'s writes and reads.
const SEQUENTIAL_CHUNK: usize = 1024 * 1024;

/// Writes `total` bytes to a scratch file in `dir` (synced once at the end), drops the page
/// cache when `cold` (root only: [`super::common::drop_caches`]; the answer says whether it
/// did), reads the file back in order and deletes it: the disk's sequential read rate there.
/// Holds one 1 MiB chunk in memory; stops (an error) once `stop` is set.
pub fn sequential_read(
    dir: &Path,
    total: u64,
    cold: bool,
    stop: &AtomicBool,
) -> anyhow::Result<SequentialRead> {
    let (scratch, mut file) = scratch(dir)?;
    let chunk = vec![0x5a_u8; SEQUENTIAL_CHUNK];
    let mut written = 0;
    while written < total {
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        let n = (total - written).min(SEQUENTIAL_CHUNK as u64) as usize;
        file.write_all(&chunk[..n])?;
        written += n as u64;
    }
    file.sync_data()?;
    drop(file);
    let cache_dropped = cold && super::common::drop_caches().is_ok();
    let read_mb_per_s = read_back(&scratch.0, SEQUENTIAL_CHUNK, written, stop)?;
    Ok(SequentialRead {
        dir: dir.to_path_buf(),
        bytes: written,
        read_mb_per_s,
        cache_dropped,
    })
}

/// Reads `path` in order, `chunk` bytes at a time; MB/s. Fails if fewer than `expected` bytes
/// come back, or (`interrupted`) once `stop` is set.
fn read_back(path: &Path, chunk: usize, expected: u64, stop: &AtomicBool) -> anyhow::Result<f64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; chunk];
    let (mut read, started) = (0u64, Instant::now());
    loop {
        anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    anyhow::ensure!(read == expected, "read back {read} of {expected} bytes");
    Ok(read as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e6)
}

/// The report as a few lines of text.
fn summary(r: &DiskReport) -> String {
    format!(
        "disk {}: {} in synced writes of {}\n  {:.0} synced writes/s, {:.1} MB/s; write+fdatasync p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs\n  read back in order: {:.1} MB/s (just written: mostly the page cache)\n",
        r.dir.display(),
        format_size(r.total_bytes),
        format_size(r.batch_bytes),
        r.syncs_per_s,
        r.write_mb_per_s,
        r.sync_p50_us,
        r.sync_p99_us,
        r.sync_max_us,
        r.read_mb_per_s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_writes_syncs_reads_back_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let args = DiskArgs {
            dir: dir.path().to_path_buf(),
            batch: 64 * 1024,
            total: 1024 * 1024 + 100,
            json: true,
        };
        let report = measure(&args, &AtomicBool::new(false)).unwrap();
        assert_eq!(report.total_bytes, 1024 * 1024 + 100);
        assert!(report.syncs_per_s > 0.0 && report.write_mb_per_s > 0.0);
        assert!(report.sync_p50_us <= report.sync_max_us);
        assert!(report.read_mb_per_s > 0.0);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "the scratch file is deleted: {left:?}");
        assert!(summary(&report).contains("synced writes of 64.0 KiB"));
    }

    #[test]
    fn sequential_read_reads_what_it_wrote_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = sequential_read(
            dir.path(),
            3 * 1024 * 1024 + 7,
            false,
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!(r.bytes, 3 * 1024 * 1024 + 7);
        assert!(r.read_mb_per_s > 0.0 && !r.cache_dropped);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let stopped = sequential_read(dir.path(), 1024, false, &AtomicBool::new(true));
        assert!(stopped.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_that_cannot_take_the_file_is_named() {
        let args = DiskArgs {
            dir: PathBuf::from("/nonexistent/weir"),
            batch: 4096,
            total: 4096,
            json: false,
        };
        let err = measure(&args, &AtomicBool::new(false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/weir"), "{err}");
    }
}
