//! Repairing a damaged log (`weir topic repair`): the damaged segment file is moved, whole and
//! untouched, to the log's `quarantine/` directory; the records before the damage are copied
//! back under the segment's name; and the damaged range is skipped with a hole (see
//! `holes.rs`), so the log serves again and numbers on past every sequence that may have been
//! confirmed. Nothing is deleted: the quarantined file keeps the evidence (and any valid records
//! past the bad spot) for the operator.
//!
//! A `high-water` file that could not be read is quarantined the same way and replaced by a
//! mark reserving one `seq_reservation` window past the log's end: numbering resumes there.
//! What the lost mark knew is gone — a disk that also dropped confirmed records past the end
//! is then covered only as far as that window.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::storage::fs::{read_exact_at, Fs, OpenMode};

use super::segment::{self, Segment};
use super::{checkpoint, high_water, holes, Damage, LogConfig, LogError, SegmentLog};

/// The directory, inside a log's directory, that damaged files are moved to.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Bytes copied at once when a damaged segment's valid prefix is copied back.
const COPY_CHUNK: usize = 1024 * 1024;

/// What [`SegmentLog::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repaired {
    /// The sequences skipped, `from..to` (`None` when nothing was found damaged).
    pub skipped: Option<(u64, u64)>,
    /// The files moved to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
}

impl SegmentLog {
    /// Opens the log in `dir` and repairs the first damage found: the one recovery finds, or —
    /// when `suspect` names a sequence a read found damaged while the log was open (a sealed
    /// segment is trusted by its checkpoint at open) — a bad record found by scanning the
    /// segment holding it again. The damaged range runs from the first unreadable sequence to
    /// the next segment on disk, or, in the last segment, to past every sequence the high-water
    /// mark says may have been confirmed (at least one). Returns the reopened log, which may
    /// still be damaged further on (repair again), and what was done. With nothing damaged, the
    /// log is only reopened.
    pub fn repair(
        fs: Fs,
        dir: &Path,
        config: LogConfig,
        suspect: Option<u64>,
    ) -> Result<(SegmentLog, Repaired), LogError> {
        let log = SegmentLog::open_on(fs.clone(), dir, config)?;
        let found = match log.damage.clone() {
            Some(d) => d,
            None => match suspect.map(|s| log.verify_segment_of(s)).transpose()? {
                Some(Some(d)) => d,
                _ => return Ok((log, Repaired::default())),
            },
        };
        let mark = dir.join(high_water::FILE_NAME);
        if found.segment == mark {
            // The mark could not be read; everything else is whole. It is quarantined and a new
            // one reserves one window past the end, so numbering resumes there (a hole).
            let end = found.seq;
            drop(log);
            tracing::warn!(dir = %dir.display(), %found, "repairing log: quarantining its unreadable high-water mark");
            let moved = move_to_quarantine(&fs, dir, &mark)?;
            let mut fresh = high_water::Recorder::new(dir, None);
            fresh.record(
                fs.as_ref(),
                0,
                end.saturating_add(config.seq_reservation.max(1)),
            )?;
            fs.sync_dir(dir)?;
            let log = SegmentLog::open_on(fs, dir, config)?;
            let repaired = Repaired {
                skipped: None,
                quarantined: vec![moved],
            };
            return Ok((log, repaired));
        }
        let name = found.segment.file_name().and_then(|n| n.to_str());
        let Some(base) = name.and_then(|n| segment::parse_name(n, ".log")) else {
            return Err(LogError::Io(io::Error::other(format!(
                "damage names no segment file: {}",
                found.segment.display()
            ))));
        };
        let next_base = fs
            .list(dir)?
            .iter()
            .filter_map(|n| segment::parse_name(n, ".log"))
            .filter(|&b| b > base)
            .min();
        let mark = log.high_water.last();
        // With the mark unreadable, one reservation window past the damage at least.
        let unknown = match log.mark_unreadable {
            Some(_) => found.seq.saturating_add(config.seq_reservation.max(1)),
            None => 0,
        };
        let to = next_base.unwrap_or_else(|| {
            (found.seq + 1)
                .max(mark.reserved_next)
                .max(mark.synced_next)
                .max(unknown)
        });
        drop(log);
        tracing::warn!(dir = %dir.display(), from = found.seq, to, %found, "repairing damaged log: quarantining the segment and skipping the damaged range");
        let quarantined = quarantine(&fs, dir, &found)?;
        checkpoint::remove(fs.as_ref(), dir, base)?;
        if next_base.is_none() {
            Segment::create(fs.as_ref(), dir, to)?;
        }
        holes::create(fs.as_ref(), dir, found.seq, to)?;
        fs.sync_dir(dir)?;
        let log = SegmentLog::open_on(fs, dir, config)?;
        Ok((
            log,
            Repaired {
                skipped: Some((found.seq, to)),
                quarantined,
            },
        ))
    }

    /// Scans the segment holding `seq` again, whole; the damage found, if any.
    fn verify_segment_of(&self, seq: u64) -> Result<Option<Damage>, LogError> {
        if seq < self.first_seq() || seq >= self.next_seq() {
            return Ok(None);
        }
        let seg = &self.segments[self.segment_index(seq)];
        let (file, file_len) = Segment::open_file(self.fs.as_ref(), &seg.path)?;
        let mut buf = Vec::new();
        let interval = self.config.index_interval_bytes;
        let (scanned, stop) = Segment::scan(
            seg.path.clone(),
            file,
            seg.base_seq,
            file_len,
            interval,
            &mut buf,
        )?;
        if stop.is_none() && scanned.next_seq >= seg.next_seq {
            return Ok(None);
        }
        let reason = stop.map_or_else(
            || format!("segment ends before sequence {}", seg.next_seq),
            |s| s.reason,
        );
        Ok(Some(Damage {
            seq: scanned.next_seq,
            segment: seg.path.clone(),
            offset: scanned.size,
            reason,
        }))
    }
}

/// Moves `path` (a file in the log's directory `dir`), whole, to `quarantine/<name>.<unix
/// time>`, durably. Returns where it went.
fn move_to_quarantine(fs: &Fs, dir: &Path, path: &Path) -> Result<PathBuf, LogError> {
    let qdir = dir.join(QUARANTINE_DIR);
    if !fs.is_dir(&qdir) {
        fs.create_dir_all(&qdir)?;
        fs.sync_dir(dir)?;
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let moved = qdir.join(format!("{name}.{secs}"));
    fs.rename(path, &moved)?;
    fs.sync_dir(&qdir)?;
    fs.sync_dir(dir)?;
    Ok(moved)
}

/// Moves the damaged segment to `quarantine/` (when it holds anything past the damage) and
/// copies its valid prefix back under its name, synced. Returns the quarantined paths.
fn quarantine(fs: &Fs, dir: &Path, found: &Damage) -> Result<Vec<PathBuf>, LogError> {
    let (file, file_len) = Segment::open_file(fs.as_ref(), &found.segment)?;
    drop(file);
    if file_len <= found.offset {
        return Ok(Vec::new());
    }
    let moved = move_to_quarantine(fs, dir, &found.segment)?;
    let src = fs.open(&moved, OpenMode::Existing)?;
    let dst = fs.open(&found.segment, OpenMode::CreateNew)?;
    let mut buf = vec![0u8; COPY_CHUNK.min(found.offset as usize)];
    let mut at = 0;
    while at < found.offset {
        let n = ((found.offset - at) as usize).min(buf.len());
        read_exact_at(src.as_ref(), &mut buf[..n], at)?;
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    dst.sync_data()?;
    Ok(vec![moved])
}
