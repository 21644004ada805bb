//! Per-topic segmented append-only message log (DESIGN.md §4).
//!
//! A log is a directory of segment files `{first_seq:020}.log`, each a run of records with
//! consecutive sequence numbers (see `record.rs` for the framing); each segment starts where
//! the one before ends, or past a recorded hole (see `holes.rs`). The last segment is the active
//! one that appends go to; earlier ones are sealed. A sealed segment gets a checkpoint
//! (`{first_seq:020}.sealed`, see `checkpoint.rs`) once its data is durable, so that opening the log
//! trusts it without a scan: recovery reads only checkpoints and the active segment.
//!
//! Every record holds one [`Message`]: its headers and its payload, both covered by the CRC.
//!
//! Files: `mod.rs` (this API and crash recovery), `segment.rs` (one segment file), `record.rs`
//! (record encoding, message headers and CRC), `reader.rs` (buffered pread reader), `index.rs`
//! (sparse index), `checkpoint.rs` (sealed-segment checkpoints), `high_water.rs` (the durable
//! high-water mark and sequence reservation), `holes.rs` (ranges of sequences skipped on
//! purpose), `repair.rs` (quarantining a damaged range).

mod checkpoint;
#[cfg(test)]
mod crash_tests;
mod high_water;
mod holes;
mod index;
mod reader;
mod record;
mod repair;
#[cfg(test)]
mod repair_tests;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::storage::fs::{self, Fs};

use bytes::Bytes;
use weir_protocol::{Headers, ProducerStamp};

pub use record::exceeded_header_bound;
pub use repair::{Repaired, QUARANTINE_DIR};

/// Bytes the record of `message` takes on disk (its framing included).
pub fn record_len(message: &Message) -> u64 {
    record::encoded_len(message)
}
use segment::Segment;

/// A batch is encoded and written in chunks of about this size, so its encoded copy stays this
/// small beside the payloads; and write buffers above it are released after a batch instead of
/// being kept for reuse, so an idle log holds at most this much.
const MAX_KEPT_WRITE_BUF: usize = 1024 * 1024;

/// Tuning of one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Size at which the active segment is sealed and a new one started (default 64 MiB). A batch
    /// rolls before the record that would take the active segment past it; a record larger than
    /// this still gets a segment of its own, and 0 means one record per segment.
    pub segment_bytes: u64,
    /// Bytes of records between two sparse-index entries (default 4096): a seek scans forward at
    /// most this much (plus one record); the index holds `segment size / interval` entries of 8
    /// bytes. 0 is treated as 1 (every record indexed).
    pub index_interval_bytes: u32,
    /// Sequences reserved at a time by the durable high-water mark (default 4096; 0 is treated
    /// as 1): one extra fdatasync per this many messages confirmed, and after a crash the log
    /// resumes numbering at the reservation, skipping at most this many never-confirmed
    /// sequences (see `high_water.rs`).
    pub seq_reservation: u64,
}

impl Default for LogConfig {
    /// 64 MiB segments, one index entry per 4 KiB, 4096 sequences reserved at a time.
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 * 1024 * 1024,
            index_interval_bytes: 4096,
            seq_reservation: 4096,
        }
    }
}

/// One message to append: what a publish stores and a delivery carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Its headers, in order, names may repeat. Bounded by the record format (see
    /// [`exceeded_header_bound`]); in the broker first by `limits.max_headers` and
    /// `limits.max_header_bytes`.
    pub headers: Headers,
    /// Its body.
    pub payload: Bytes,
    /// Who published it and its number in that producer's sequence, stored with it so a
    /// topic's dedup window can be rebuilt at start (see [`record`] for the layout).
    pub producer: Option<ProducerStamp>,
}

/// One record as [`SegmentLog::scan`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Scanned<'a> {
    /// Its sequence.
    pub seq: u64,
    /// Its [`Message::size`] (payload plus header names and values).
    pub size: u32,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Its producer stamp, if it was published with one.
    pub producer: Option<ProducerStamp>,
    /// Its first `weir-msg-id` header's value, if any.
    pub msg_id: Option<&'a str>,
}

/// Memory one decoded header takes besides its name and value bytes (two `String`s).
pub const HEADER_OVERHEAD: u64 = 48;
/// Memory one message held in a queue or cache takes besides its payload and headers.
pub const MESSAGE_OVERHEAD: u64 = 96;

impl Message {
    /// Bytes of the header names and values (their framing not counted).
    pub fn header_bytes(&self) -> u64 {
        header_bytes(&self.headers)
    }

    /// The message's size: its payload plus its header names and values — what a topic's
    /// `max_message_bytes` and `max_bytes` count.
    pub fn size(&self) -> u64 {
        message_size(&self.headers, self.payload.len())
    }

    /// Bytes the message holds in memory ([`memory_bytes`]): what a queued, cached or delivered
    /// message is charged to the memory budget.
    pub fn memory_bytes(&self) -> u64 {
        memory_bytes(&self.headers, self.payload.len())
    }
}

/// The size of a message of `headers` and a payload of `payload_len` bytes: what topic bounds
/// count.
pub fn message_size(headers: &[(String, String)], payload_len: usize) -> u64 {
    payload_len as u64 + header_bytes(headers)
}

/// The memory a message of `headers` and a payload of `payload_len` bytes holds once decoded:
/// its size plus [`MESSAGE_OVERHEAD`] and [`HEADER_OVERHEAD`] per header — so a cache or queue of
/// empty messages with many empty headers is bounded by its byte budget too.
pub fn memory_bytes(headers: &[(String, String)], payload_len: usize) -> u64 {
    message_size(headers, payload_len) + MESSAGE_OVERHEAD + HEADER_OVERHEAD * headers.len() as u64
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, unique within the log for its whole life (never reused).
    pub seq: u64,
    /// Timestamp given to `append_batch`, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The message headers, in the order they were appended (empty for records written before
    /// headers were stored).
    pub headers: Headers,
    /// The message body (its own allocation, not shared with any read buffer).
    pub payload: Bytes,
}

/// Bytes of the names and values of `headers` (what the memory budget and caches count for
/// them besides the payload).
pub fn header_bytes(headers: &[(String, String)]) -> u64 {
    headers
        .iter()
        .map(|(n, v)| (n.len() + v.len()) as u64)
        .sum()
}

impl From<Record> for Message {
    /// The stored message: the record's headers and payload.
    fn from(record: Record) -> Message {
        Message {
            producer: None,
            headers: record.headers,
            payload: record.payload,
        }
    }
}

/// Errors of the message log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An operating-system I/O error (also used, with kind `InvalidInput`, for a message larger
    /// than a record can hold — headers past [`exceeded_header_bound`], or about 4 GiB in all —
    /// or an exhausted sequence space).
    #[error("log I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A segment's content is not what was written (CRC mismatch, impossible record or header
    /// length, header not UTF-8, broken sequence) where recovery cannot simply cut a torn tail.
    #[error("corrupt log segment {} at offset {offset}: {reason}", segment.display())]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// The first sequence that cannot be read (everything below it reads fine).
        seq: u64,
        /// Byte offset of the bad record in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A write or an fdatasync failed earlier (the reason given): the log takes no more appends
    /// or syncs, since what its files hold past the last good sync is unknown. Reopening the
    /// log (a restart, or `weir topic repair`) re-verifies the files.
    #[error("the log is fenced after a failed write or sync: {0}")]
    Fenced(String),
    /// A read asked for a sequence outside `first..=next` (below the oldest stored record, or
    /// beyond the next sequence to be assigned).
    #[error("sequence {seq} out of range (stored: {first}..{next})")]
    SeqOutOfRange {
        /// The requested sequence.
        seq: u64,
        /// `first_seq()` at the time of the request.
        first: u64,
        /// `next_seq()` at the time of the request.
        next: u64,
    },
}

impl LogError {
    /// Whether the filesystem is out of space (ENOSPC), as opposed to failing.
    pub fn is_no_space(&self) -> bool {
        match self {
            LogError::Io(e) => {
                e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(ENOSPC)
            }
            _ => false,
        }
    }
}

/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;

fn invalid_input(msg: &str) -> LogError {
    LogError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// The append-only log of one topic: segment files in one directory.
///
/// Appends, `sync` and `delete_before` take `&mut self`; reads take `&self` and use positional
/// I/O, so any number can run concurrently (e.g. behind an `RwLock`). `Send + Sync`.
pub struct SegmentLog {
    fs: Fs,
    dir: PathBuf,
    config: LogConfig,
    /// Ordered by base sequence, contiguous (`segments[i].next_seq == segments[i + 1].base_seq`,
    /// or a hole bridges them), never empty; the last one is active.
    segments: Vec<Segment>,
    /// Holes between segments, `from → to` (see `holes.rs`).
    holes: BTreeMap<u64, u64>,
    /// Every segment before this index is synced and checkpointed.
    pending_from: usize,
    /// Segment or checkpoint files were created or removed since the last directory fsync.
    dir_dirty: bool,
    disk_bytes: u64,
    /// Reused encoding buffer for `append_batch`.
    write_buf: Vec<u8>,
    /// Why the log takes no more appends (a failed sync, or a failed write it could not
    /// undo, or damage): see [`LogError::Fenced`].
    fenced: Option<String>,
    /// Where recovery found data that had been synced damaged (see [`Damage`]).
    damage: Option<Damage>,
    /// The durable high-water mark (see `high_water.rs`).
    high_water: high_water::Recorder,
    /// Why the high-water mark could not be read at open, if it could not.
    mark_unreadable: Option<String>,
    /// Where the last successful sync left the log: the active segment's base, its size and
    /// `next_seq` then. A failed sync cuts the log back to it (see [`SegmentLog::sync`]).
    synced: (u64, u64, u64),
}

/// Data that had been synced, found damaged when the log was opened: a bad record followed by
/// valid ones, a bad record in a segment a later checkpoint vouches for, or a sealed segment
/// that does not reach the next one. The log keeps every file as it is, serves the records
/// before `seq`, and takes no appends (it is fenced) until repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first sequence that cannot be read.
    pub seq: u64,
    /// The segment file holding it.
    pub segment: PathBuf,
    /// Byte offset of the bad spot in that file.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.segment.display(),
            self.offset,
            self.reason
        )
    }
}

impl fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("first_seq", &self.first_seq())
            .field("next_seq", &self.next_seq())
            .field("segments", &self.segments.len())
            .field("disk_bytes", &self.disk_bytes)
            .finish()
    }
}

/// What `append_batch` restores when a write fails part-way.
struct Undo {
    segments: usize,
    size: u64,
    next_seq: u64,
    pending_from: usize,
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`, recovering after a crash.
    ///
    /// Sealed segments with a valid checkpoint are trusted without reading them. Any other
    /// segment is scanned (lengths, CRCs, sequence continuity). At the first invalid or
    /// incomplete record, or where a segment does not end where the next one starts, the file is
    /// cut there (a `tracing::warn!` says how many bytes) and any later segments are removed: they
    /// hold only records written after the last `sync`. Such a cut inside an earlier segment while
    /// a later one holds a valid checkpoint means data that was synced is damaged, and gives
    /// `LogError::Corrupt` instead of deleting anything. Recovered data is fsynced before this
    /// returns, so everything readable from the log afterwards is durable. A new log starts at
    /// sequence 1 (a missing `dir` is created and its parent fsynced). Files in `dir` not named
    /// like segments, checkpoints or hole markers are ignored; checkpoints without a segment and
    /// hole markers that bridge no two segments are removed. A log that ends below its durable
    /// seq reservation (an unclean stop) numbers on from the reservation, recording the hole
    /// (see `high_water.rs` and `holes.rs`); one with no segment left but a mark starts past
    /// the mark. The mark is written again at open (it may have been read from the page cache
    /// after a failed fdatasync). A damaged log changes no file, but fsyncs what it will serve.
    pub fn open(dir: &Path, config: LogConfig) -> Result<SegmentLog, LogError> {
        Self::open_on(fs::os(), dir, config)
    }

    /// [`SegmentLog::open`] on the file layer `fs` (tests put fault injection and crash
    /// simulation there).
    pub fn open_on(fs: Fs, dir: &Path, config: LogConfig) -> Result<SegmentLog, LogError> {
        if !fs.is_dir(dir) {
            // Make every new directory's entry durable: fsync the parent of each one created,
            // from the deepest existing ancestor down.
            let mut created = vec![dir];
            let mut ancestor = dir.parent();
            while let Some(a) = ancestor.filter(|a| !a.as_os_str().is_empty() && !fs.is_dir(a)) {
                created.push(a);
                ancestor = a.parent();
            }
            fs.create_dir_all(dir)?;
            for new in created.iter().rev() {
                match new.parent() {
                    Some(p) if !p.as_os_str().is_empty() => fs.sync_dir(p)?,
                    _ => fs.sync_dir(Path::new("."))?,
                }
            }
        }
        let mut bases = BTreeSet::new();
        let mut seals = BTreeSet::new();
        let mut holes = BTreeMap::new();
        for name in fs.list(dir)? {
            if let Some(base) = segment::parse_name(&name, ".log") {
                bases.insert(base);
            } else if let Some(base) = segment::parse_name(&name, ".sealed") {
                seals.insert(base);
            } else if let Some((from, to)) = holes::parse(&name) {
                holes.insert(from, to);
            }
        }
        // A mark that cannot be read (an I/O error, not bad content): which seqs were confirmed
        // or reserved is unknown, so nothing is cut and the log opens damaged.
        let (loaded, mark_unreadable) = match high_water::load(fs.as_ref(), dir) {
            Ok(loaded) => (loaded, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let mut log = SegmentLog {
            high_water: high_water::Recorder::new(dir, loaded),
            mark_unreadable,
            fs,
            dir: dir.to_path_buf(),
            config,
            segments: Vec::with_capacity(bases.len().max(1)),
            holes,
            pending_from: 0,
            dir_dirty: false,
            disk_bytes: 0,
            write_buf: Vec::new(),
            fenced: None,
            damage: None,
            synced: (0, 0, 0),
        };
        for &orphan in seals.difference(&bases) {
            tracing::warn!(dir = %dir.display(), base = orphan, "removing checkpoint without segment");
            checkpoint::remove(log.fs.as_ref(), dir, orphan)?;
            log.dir_dirty = true;
        }
        let bases: Vec<u64> = bases.into_iter().collect();
        log.recover(&bases)?;
        if log.segments.is_empty() {
            // A new log starts at 1; one whose every segment was reclaimed (a crash can keep
            // the removal of the last one and lose the creation of the next) numbers on past
            // everything its mark says may have been confirmed.
            let mark = log.high_water.last();
            let base = mark.synced_next.max(mark.reserved_next).max(1);
            if base > 1 {
                tracing::warn!(dir = %dir.display(), base, "log has no segment left: numbering on past its high-water mark");
            }
            log.segments
                .push(Segment::create(log.fs.as_ref(), dir, base)?);
            log.dir_dirty = true;
        }
        log.disk_bytes = log.segments.iter().map(|s| s.size).sum();
        if let Some(e) = log.mark_unreadable.clone().filter(|_| log.damage.is_none()) {
            let damage = Damage {
                seq: log.next_seq(),
                segment: dir.join(high_water::FILE_NAME),
                offset: 0,
                reason: format!(
                    "cannot read the high-water mark ({e}): which seqs were confirmed or \
                     reserved is unknown"
                ),
            };
            log.damaged(damage);
        }
        let confirmed = log.confirmed_bound();
        if log.damage.is_none() && log.next_seq() < confirmed {
            let active = log.active();
            let damage = Damage {
                seq: log.next_seq(),
                segment: active.path.clone(),
                offset: active.size,
                reason: format!(
                    "the log ends before sequence {} but everything below {confirmed} had been \
                     synced (high-water mark): the disk lost confirmed data",
                    log.next_seq()
                ),
            };
            log.damaged(damage);
        }
        if log.damage.is_none() {
            log.forget_stale_holes()?;
            let reserved = log.high_water.last().reserved_next;
            if log.next_seq() < reserved {
                // An unclean stop: sequences up to the reservation may have been confirmed.
                let from = log.next_seq();
                tracing::warn!(dir = %dir.display(), from, to = reserved, "resuming numbering past the reserved sequences after an unclean stop");
                log.skip_to(reserved)?;
            }
            // Whatever an interrupted run left unsynced in the directory (segments,
            // checkpoints, removals) is made durable before anything here is trusted.
            log.dir_dirty = true;
            log.sync()?;
            // Written again even if unchanged: what was read may be only in the page cache.
            let next = log.next_seq();
            let reserved = log.high_water.last().reserved_next.max(next);
            if log.high_water.persist(log.fs.as_ref(), next, reserved)? {
                log.fs.sync_dir(dir)?;
            }
        } else {
            // Damaged: nothing is cut, written or checkpointed, but what it serves is made
            // durable first (it may be only in the page cache after a crash of the process).
            for seg in log.segments.iter_mut().filter(|s| s.dirty) {
                seg.sync_data()?;
            }
            log.fs.sync_dir(dir)?;
        }
        Ok(log)
    }

    /// Removes hole markers that bridge no two segments of the log (what a crash left of a
    /// hole being made, or of segments being reclaimed).
    fn forget_stale_holes(&mut self) -> Result<(), LogError> {
        let ends: BTreeSet<u64> = self.segments.iter().map(|s| s.next_seq).collect();
        let bases: BTreeSet<u64> = self.segments.iter().map(|s| s.base_seq).collect();
        let stale: Vec<(u64, u64)> = self
            .holes
            .iter()
            .map(|(&f, &t)| (f, t))
            .filter(|(f, t)| !ends.contains(f) || !bases.contains(t))
            .collect();
        for (from, to) in stale {
            holes::remove(self.fs.as_ref(), &self.dir, from, to)?;
            self.holes.remove(&from);
            self.dir_dirty = true;
        }
        Ok(())
    }

    /// Seals the active segment and continues at `to`, recording the hole `next_seq()..to`
    /// (its marker and the new segment become durable at the next sync, together).
    fn skip_to(&mut self, to: u64) -> Result<(), LogError> {
        let from = self.next_seq();
        holes::create(self.fs.as_ref(), &self.dir, from, to)?;
        self.holes.insert(from, to);
        let seg = Segment::create(self.fs.as_ref(), &self.dir, to)?;
        let last = self.segments.len() - 1;
        self.segments[last].needs_checkpoint = true;
        self.pending_from = self.pending_from.min(last);
        self.segments.push(seg);
        self.dir_dirty = true;
        Ok(())
    }

    /// Every seq below this may have been confirmed: the high-water mark's synced end, or
    /// everything when the mark could not be read.
    fn confirmed_bound(&self) -> u64 {
        match self.mark_unreadable {
            Some(_) => u64::MAX,
            None => self.high_water.last().synced_next,
        }
    }

    /// The holes of the log: ranges `from..to` of sequences that hold no record, in order.
    pub fn holes(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.holes.iter().map(|(&from, &to)| (from, to))
    }

    /// Loads the segments named by `bases` (ascending) into `self.segments`.
    fn recover(&mut self, bases: &[u64]) -> Result<(), LogError> {
        // Whether a segment ending at `end` reaches `next_base`: right there, or past a
        // recorded hole (an empty segment may end where a hole starts, like the one before it).
        let holes = self.holes.clone();
        let reaches = |end: u64, next_base: Option<u64>| match next_base {
            Some(nb) => nb == end || holes.get(&end) == Some(&nb),
            None => true,
        };
        let dir = self.dir.clone();
        let fs = self.fs.clone();
        let fs = fs.as_ref();
        let interval = self.config.index_interval_bytes;
        let mut buf = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied();
            let path = segment::log_path(&dir, base);
            let (file, file_len) = Segment::open_file(fs, &path)?;
            if next_base.is_some() {
                let confirmed = self.confirmed_bound();
                // A checkpoint that cannot be read is no checkpoint: the segment is scanned.
                let loaded = checkpoint::load(fs, &dir, base)
                    .unwrap_or_else(|e| Some(Err(format!("cannot read it: {e}"))));
                match loaded {
                    // A sealed segment that does not reach the next one, while nothing from
                    // where it ends was confirmed: the next one's directory entry was never
                    // synced (a crash can keep a later creation and lose an earlier one), so
                    // scan it and cut there like any torn tail.
                    Some(Ok(cp))
                        if !reaches(cp.next_seq, next_base) && cp.next_seq >= confirmed =>
                    {
                        tracing::warn!(
                            segment = %path.display(),
                            ends_at = cp.next_seq,
                            next_base = next_base.unwrap_or_default(),
                            "sealed segment does not reach the next one; scanning it"
                        );
                    }
                    Some(Ok(cp)) if cp.valid_len <= file_len => {
                        if !reaches(cp.next_seq, next_base) {
                            let reason = format!(
                                "sealed segment ends before sequence {} but the next segment \
                                 starts at {}",
                                cp.next_seq,
                                next_base.unwrap_or_default()
                            );
                            let damage = Damage {
                                seq: cp.next_seq,
                                segment: path.clone(),
                                offset: cp.valid_len,
                                reason,
                            };
                            self.segments.push(Segment::from_checkpoint(path, file, cp));
                            self.damaged(damage);
                            break;
                        }
                        let valid_len = cp.valid_len;
                        let mut seg = Segment::from_checkpoint(path, file, cp);
                        if file_len > valid_len {
                            tracing::warn!(
                                segment = %seg.path.display(),
                                cut_bytes = file_len - valid_len,
                                "sealed segment longer than its checkpoint; truncating"
                            );
                            seg.truncate(valid_len, seg.next_seq)?;
                        }
                        self.segments.push(seg);
                        continue;
                    }
                    Some(Ok(cp)) => tracing::warn!(
                        segment = %path.display(),
                        checkpoint_len = cp.valid_len,
                        file_len,
                        "segment shorter than its checkpoint; scanning it"
                    ),
                    Some(Err(reason)) => tracing::warn!(
                        segment = %path.display(),
                        %reason,
                        "ignoring invalid checkpoint; scanning segment"
                    ),
                    None => {}
                }
            } else if checkpoint::remove(fs, &dir, base)? {
                // The active segment is appended to: a checkpoint for it would go stale.
                self.dir_dirty = true;
            }
            let (mut seg, stop) = Segment::scan(path, file, base, file_len, interval, &mut buf)?;
            // Its contents may still be only in the page cache: sync before trusting them.
            seg.dirty = true;
            let continuous = reaches(seg.next_seq, next_base);
            if stop.is_none() && continuous {
                seg.needs_checkpoint = next_base.is_some();
                self.segments.push(seg);
                continue;
            }
            // A torn tail — everything from here on was written after the last successful sync —
            // unless something says the bad spot was synced: a later segment's checkpoint
            // (written only once this segment was synced), or a valid record past it in the same
            // file (a crash keeps a prefix of what was written, never a hole).
            let later = &bases[i + 1..];
            let (offset, reason) = match &stop {
                Some(s) => (s.offset, s.reason.clone()),
                None => (
                    seg.size,
                    format!("segment ends before sequence {}", next_base.unwrap_or(0)),
                ),
            };
            let mut synced_past = stop
                .as_ref()
                .filter(|s| s.unreadable)
                .map(|s| s.reason.clone());
            for &l in later {
                if synced_past.is_some() {
                    break;
                }
                // One that cannot be read may vouch for the bad spot: the open fails rather
                // than cut on a guess.
                if let Some(Ok(_)) = checkpoint::load(fs, &dir, l)? {
                    synced_past = Some(format!("{reason} (a later segment was synced)"));
                }
            }
            let confirmed = self.confirmed_bound();
            if synced_past.is_none() && seg.next_seq < confirmed {
                synced_past = Some(format!(
                    "{reason}; everything below {confirmed} had been synced (high-water mark)"
                ));
            }
            if synced_past.is_none() && stop.is_some() {
                if let Some(found) = seg.valid_record_after(offset, file_len, seg.next_seq)? {
                    synced_past = Some(format!("{reason} (valid record {found} follows it)"));
                }
            }
            if let Some(reason) = synced_past {
                let damage = Damage {
                    seq: seg.next_seq,
                    segment: seg.path.clone(),
                    offset,
                    reason,
                };
                self.segments.push(seg);
                self.damaged(damage);
                break;
            }
            let cut = file_len - seg.size;
            tracing::warn!(
                segment = %seg.path.display(),
                cut_bytes = cut,
                valid_bytes = seg.size,
                next_seq = seg.next_seq,
                reason = stop.as_ref().map_or("segment ends early", |s| s.reason.as_str()),
                dropped_segments = later.len(),
                "truncating torn tail of the log"
            );
            if cut > 0 {
                seg.truncate(seg.size, seg.next_seq)?;
            }
            for &l in later {
                fs.remove_file(&segment::log_path(&dir, l))?;
                checkpoint::remove(fs, &dir, l)?;
            }
            checkpoint::remove(fs, &dir, base)?;
            self.dir_dirty = true;
            self.segments.push(seg);
            break;
        }
        Ok(())
    }

    fn active(&self) -> &Segment {
        // `segments` is never empty after `open`.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Oldest stored sequence (== next_seq() when the log is empty). Sequences start at 1 in a new log.
    pub fn first_seq(&self) -> u64 {
        self.segments[0].base_seq
    }

    /// Sequence the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.active().next_seq
    }

    /// Appends one record per message (headers and payload) with consecutive sequence numbers
    /// starting at next_seq(), all stamped `timestamp_ms`; returns the first assigned seq. One
    /// write(2) per segment touched and per MAX_KEPT_WRITE_BUF of encoded records. Rolls to a new
    /// segment when the active one would pass segment_bytes (a record larger than segment_bytes
    /// still gets its own segment). Does NOT fsync.
    ///
    /// An empty `messages` writes nothing and returns `next_seq()`. A message larger than a
    /// record can hold — headers past [`exceeded_header_bound`], or headers and payload together
    /// over `u32::MAX - 18` encoded bytes — fails the whole batch with `LogError::Io` of kind
    /// `InvalidInput` before anything is written. If a write fails, the batch is undone (the log
    /// is as before the call, best effort on disk) and the error returned.
    pub fn append_batch(
        &mut self,
        messages: &[Message],
        timestamp_ms: u64,
    ) -> Result<u64, LogError> {
        if let Some(reason) = &self.fenced {
            return Err(LogError::Fenced(reason.clone()));
        }
        let first = self.next_seq();
        if messages.is_empty() {
            return Ok(first);
        }
        if !messages.iter().all(record::fits) {
            return Err(invalid_input("message larger than a log record can hold"));
        }
        if first.checked_add(messages.len() as u64).is_none() {
            return Err(invalid_input("sequence space exhausted"));
        }
        let active = self.active();
        let undo = Undo {
            segments: self.segments.len(),
            size: active.size,
            next_seq: active.next_seq,
            pending_from: self.pending_from,
        };
        let mut buf = std::mem::take(&mut self.write_buf);
        let result = self.append_with(&mut buf, messages, timestamp_ms);
        buf.clear();
        if buf.capacity() > MAX_KEPT_WRITE_BUF {
            buf = Vec::new();
        }
        self.write_buf = buf;
        match result {
            Ok(()) => Ok(first),
            Err(e) => {
                if !self.undo(undo) {
                    self.fenced = Some(format!("a failed append could not be undone: {e}"));
                }
                Err(e)
            }
        }
    }

    fn append_with(
        &mut self,
        heads: &mut Vec<u8>,
        messages: &[Message],
        ts: u64,
    ) -> Result<(), LogError> {
        let limit = self.config.segment_bytes;
        let mut start = 0;
        // Bytes of the records since `start`: their heads in `heads`, their payloads in place.
        let mut chunk = 0u64;
        for (seq, (i, m)) in (self.next_seq()..).zip(messages.iter().enumerate()) {
            let rec_len = record::encoded_len(m);
            let filled = self.active().size + chunk;
            if filled > 0 && filled.saturating_add(rec_len) > limit {
                if i > start {
                    self.write_active(heads, &messages[start..i])?;
                    heads.clear();
                    (start, chunk) = (i, 0);
                }
                self.roll()?;
            }
            record::encode_head(heads, seq, ts, m);
            chunk += rec_len;
            // Write in chunks: one vectored write never covers more than about
            // MAX_KEPT_WRITE_BUF of records (plus one).
            if chunk >= MAX_KEPT_WRITE_BUF as u64 {
                self.write_active(heads, &messages[start..=i])?;
                heads.clear();
                (start, chunk) = (i + 1, 0);
            }
        }
        self.write_active(heads, &messages[start..])
    }

    /// Appends the records of `messages` (their heads in `heads`) to the active segment.
    fn write_active(&mut self, heads: &[u8], messages: &[Message]) -> Result<(), LogError> {
        if messages.is_empty() {
            return Ok(());
        }
        let interval = self.config.index_interval_bytes;
        let last = self.segments.len() - 1;
        let written = self.segments[last].append(heads, messages, interval)?;
        self.disk_bytes += written;
        self.pending_from = self.pending_from.min(last);
        Ok(())
    }

    /// Seals the active segment and starts a new one at `next_seq()`.
    fn roll(&mut self) -> Result<(), LogError> {
        let last = self.segments.len() - 1;
        let next = self.segments[last].next_seq;
        let seg = Segment::create(self.fs.as_ref(), &self.dir, next)?;
        self.segments[last].needs_checkpoint = true;
        self.pending_from = self.pending_from.min(last);
        self.segments.push(seg);
        self.dir_dirty = true;
        Ok(())
    }

    /// Restores the state before a failed `append_batch` (file operations best effort).
    /// Returns whether the files are as before, too.
    fn undo(&mut self, undo: Undo) -> bool {
        let mut clean = true;
        while self.segments.len() > undo.segments {
            let Some(seg) = self.segments.pop() else {
                break;
            };
            if let Err(e) = self.fs.remove_file(&seg.path) {
                tracing::warn!(segment = %seg.path.display(), error = %e, "cannot remove segment of failed append");
                clean = false;
            }
        }
        let active = self.active_mut();
        active.needs_checkpoint = false;
        if active.size != undo.size {
            if let Err(e) = active.truncate(undo.size, undo.next_seq) {
                tracing::warn!(segment = %active.path.display(), error = %e, "cannot truncate failed append");
                clean = false;
            }
        }
        self.pending_from = undo.pending_from.min(self.segments.len() - 1);
        self.disk_bytes = self.segments.iter().map(|s| s.size).sum();
        clean
    }

    /// fdatasync the active segment (and every segment written since the last sync), and fsync the
    /// directory if segments were created or deleted since the last sync. After it returns Ok,
    /// every appended record survives kill -9 / power loss.
    ///
    /// Also writes (and fsyncs) the checkpoint of every segment sealed since the last sync, after
    /// that segment's data is synced, so a checkpoint never vouches for data that could be lost.
    /// After an `Err`, whether unsynced records are durable is unknown (the kernel may have dropped
    /// the failed pages, and a second fsync on the same file could wrongly succeed): the log is
    /// fenced — every later append or sync answers [`LogError::Fenced`] — until it is reopened.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if let Some(reason) = &self.fenced {
            return Err(LogError::Fenced(reason.clone()));
        }
        let result = self.sync_unfenced();
        match &result {
            Ok(()) => {
                let active = self.active();
                self.synced = (active.base_seq, active.size, active.next_seq);
            }
            Err(e) => {
                // The kernel may have dropped the pages it failed to write while reads still
                // see them, and a later fsync would not write them: cut everything since the
                // last good sync, so a reopen cannot trust it (the outcome of those records
                // was never confirmed). If the cut fails, a reopen sees them: outcome unknown.
                self.cut_to_last_sync();
                self.fenced = Some(format!("sync failed: {e}"));
            }
        }
        result
    }

    /// Cuts the log back to where the last successful sync left it (best effort).
    fn cut_to_last_sync(&mut self) {
        let (base, size, next_seq) = self.synced;
        let Some(i) = self.segments.iter().position(|s| s.base_seq == base) else {
            return;
        };
        let undo = Undo {
            segments: i + 1,
            size,
            next_seq,
            pending_from: self.pending_from,
        };
        if !self.undo(undo) {
            tracing::warn!(dir = %self.dir.display(), "cannot cut the log back to its last good sync");
        }
    }

    /// Where opening found synced data damaged, if it did (see [`Damage`]).
    pub fn damage(&self) -> Option<&Damage> {
        self.damage.as_ref()
    }

    /// Records `damage`: the log serves what precedes it and takes no appends.
    fn damaged(&mut self, damage: Damage) {
        tracing::error!(dir = %self.dir.display(), seq = damage.seq, %damage, "log damaged; its files are kept as they are");
        self.fenced = Some(format!("damaged: {damage}"));
        self.damage = Some(damage);
    }

    /// Records the durable high-water mark at `next_seq()` (one write and one fdatasync of the
    /// `high-water` file): recovery will treat a log that ends below it as damaged, never as a
    /// torn tail. Does nothing unless everything appended is synced and the log is healthy.
    pub fn record_high_water(&mut self) -> Result<(), LogError> {
        let reserved = self.high_water.last().reserved_next;
        self.record_mark(|next| reserved.max(next))
    }

    /// Records the high-water mark with no sequence reserved past `next_seq()`: a clean close,
    /// after which the log resumes numbering exactly where it ends (no hole). Does nothing
    /// unless everything appended is synced and the log is healthy.
    pub fn release_reservation(&mut self) -> Result<(), LogError> {
        self.record_mark(|next| next)
    }

    fn record_mark(&mut self, reserved: impl FnOnce(u64) -> u64) -> Result<(), LogError> {
        let last = self.segments.len() - 1;
        if self.fenced.is_some() || self.pending_from < last || self.segments[last].dirty {
            return Ok(());
        }
        let next = self.next_seq();
        if self
            .high_water
            .record(self.fs.as_ref(), next, reserved(next))?
        {
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Makes sure every sequence below `next_seq()` is covered by the durable reservation
    /// before it is confirmed: when it is not, reserves `seq_reservation` more (one write and
    /// one fdatasync of the `high-water` file, so once per that many messages). A failure
    /// fences the log: the records are stored, but may not be confirmed.
    pub fn ensure_reserved(&mut self) -> Result<(), LogError> {
        if let Some(reason) = &self.fenced {
            return Err(LogError::Fenced(reason.clone()));
        }
        let next = self.next_seq();
        let mark = self.high_water.last();
        if next <= mark.reserved_next {
            return Ok(());
        }
        let synced = mark.synced_next.max(self.synced.2);
        let reserve = next.saturating_add(self.config.seq_reservation.max(1));
        let recorded = self
            .high_water
            .record(self.fs.as_ref(), synced, reserve)
            .and_then(|created| match created {
                true => self.fs.sync_dir(&self.dir),
                false => Ok(()),
            });
        if let Err(e) = recorded {
            self.fenced = Some(format!("cannot reserve sequences: {e}"));
            return Err(e.into());
        }
        Ok(())
    }

    /// Fences the log for `reason`: it takes no more appends or syncs until reopened.
    pub fn fence(&mut self, reason: String) {
        self.fenced = Some(reason);
    }

    /// Why the log is fenced (see [`LogError::Fenced`]), if it is.
    pub fn fenced(&self) -> Option<&str> {
        self.fenced.as_deref()
    }

    fn sync_unfenced(&mut self) -> Result<(), LogError> {
        let from = self.pending_from;
        for seg in &mut self.segments[from..] {
            if seg.dirty {
                seg.sync_data()?;
            }
        }
        let last = self.segments.len() - 1;
        for seg in &mut self.segments[from..last] {
            if seg.needs_checkpoint {
                checkpoint::write(self.fs.as_ref(), &self.dir, &seg.checkpoint())?;
                seg.needs_checkpoint = false;
                self.dir_dirty = true;
            }
        }
        if self.dir_dirty {
            self.fs.sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.pending_from = last;
        Ok(())
    }

    /// Reads up to `max_records` consecutive records (headers and payload) starting at `from_seq`,
    /// stopping early once `max_bytes` of payload is collected (but always returning at least one record if from_seq < next_seq).
    /// Uses the sparse index to seek; reads with pread (positional), so `&self` suffices and reads
    /// can run concurrently with each other. from_seq < first_seq() -> Err(SeqOutOfRange).
    /// from_seq == next_seq() -> Ok(empty). Verifies each record's CRC and header lengths
    /// (mismatch -> Corrupt).
    ///
    /// Precisely: a record is added only while the payload total stays `<= max_bytes`, except the
    /// first, which is always added (headers are not counted in `max_bytes`). `max_records == 0`
    /// returns an empty vector. `from_seq > next_seq()` is `SeqOutOfRange` too.
    pub fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let (first, next) = (self.first_seq(), self.next_seq());
        if from_seq < first || from_seq > next {
            return Err(LogError::SeqOutOfRange {
                seq: from_seq,
                first,
                next,
            });
        }
        if from_seq == next || max_records == 0 {
            return Ok(Vec::new());
        }
        let available = usize::try_from(next - from_seq).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(max_records.min(available).min(1024));
        let mut bytes = 0usize;
        let mut buf = Vec::new();
        for seg in &self.segments[self.segment_index(from_seq)..] {
            let exhausted = seg.for_each_from(from_seq, &mut buf, |seq, timestamp_ms, body| {
                let len = body.payload.len();
                if !out.is_empty() && bytes.saturating_add(len) > max_bytes {
                    return false;
                }
                bytes += len;
                out.push(Record {
                    seq,
                    timestamp_ms,
                    headers: body.headers.to_headers(),
                    payload: Bytes::copy_from_slice(body.payload),
                });
                out.len() < max_records
            })?;
            if !exhausted {
                break;
            }
        }
        Ok(out)
    }

    /// Index of the segment holding `seq` (the first segment when `seq` precedes all of them).
    fn segment_index(&self, seq: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_seq <= seq)
            .saturating_sub(1)
    }

    /// Calls `f` with what a topic rebuilds at start ([`Scanned`]) for every record with
    /// seq >= from_seq, in order, without allocating per record beyond a reused buffer
    /// (headers are measured and searched, not decoded).
    ///
    /// `from_seq` below `first_seq()` starts at `first_seq()`; at or beyond `next_seq()` calls `f`
    /// never. Verifies every record's CRC and header lengths like `read` (mismatch -> Corrupt,
    /// after `f` saw the records before it).
    pub fn scan(&self, from_seq: u64, mut f: impl FnMut(Scanned<'_>)) -> Result<(), LogError> {
        let mut buf = Vec::new();
        for seg in &self.segments[self.segment_index(from_seq)..] {
            seg.for_each_from(from_seq, &mut buf, |seq, timestamp_ms, body| {
                let size = body.payload.len() as u64 + body.headers.content_bytes();
                f(Scanned {
                    seq,
                    size: u32::try_from(size).unwrap_or(u32::MAX),
                    timestamp_ms,
                    producer: body.producer,
                    msg_id: body.headers.find(weir_protocol::MSG_ID_HEADER),
                });
                true
            })?;
        }
        Ok(())
    }

    /// Calls `f(seq, size)` for every record with seq >= from_seq (see [`SegmentLog::scan`]).
    #[cfg(test)]
    pub fn scan_sizes(&self, from_seq: u64, mut f: impl FnMut(u64, u32)) -> Result<(), LogError> {
        self.scan(from_seq, |r| f(r.seq, r.size))
    }

    /// Calls `f(seq, timestamp_ms)` for every record with seq >= `from_seq`, in order, until
    /// `f` returns `false` (used to learn the commit times of stored messages for `max_age`);
    /// verifies records as [`SegmentLog::scan`] does. Allocates nothing per record.
    pub fn scan_times(
        &self,
        from_seq: u64,
        mut f: impl FnMut(u64, u64) -> bool,
    ) -> Result<(), LogError> {
        let mut buf = Vec::new();
        for seg in &self.segments[self.segment_index(from_seq)..] {
            if !seg.for_each_from(from_seq, &mut buf, |seq, timestamp_ms, _| {
                f(seq, timestamp_ms)
            })? {
                break;
            }
        }
        Ok(())
    }

    /// Deletes every whole segment all of whose records have seq < `seq` (they are fully acked or
    /// evicted). Never deletes the active (last) segment, so next_seq survives restarts even when
    /// everything was consumed. Returns how many segments were deleted; first_seq() moves forward.
    ///
    /// The directory is fsynced before returning when anything was deleted. If removing a file
    /// fails, the segments before it stay deleted and the error is returned.
    pub fn delete_before(&mut self, seq: u64) -> Result<usize, LogError> {
        let last = self.segments.len() - 1;
        let deletable = self.segments[..last]
            .iter()
            .take_while(|s| s.next_seq <= seq)
            .count();
        let mut deleted = 0;
        let mut failure = None;
        for seg in &self.segments[..deletable] {
            match self.fs.remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if let Err(e) = checkpoint::remove(self.fs.as_ref(), &self.dir, seg.base_seq) {
                // Harmless: `open` removes checkpoints without a segment.
                tracing::warn!(segment = %seg.path.display(), error = %e, "cannot remove checkpoint");
            }
            deleted += 1;
            // One directory fsync per removal keeps removals durable in order (oldest first): a
            // crash can then never keep a later segment's removal and undo an earlier one's,
            // which would leave a hole recovery could not tell from a torn tail.
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                failure = Some(e);
                break;
            }
        }
        for seg in self.segments.drain(..deleted) {
            self.disk_bytes -= seg.size;
        }
        let first = self.first_seq();
        while let Some((&from, &to)) = self.holes.first_key_value().filter(|(&f, _)| f < first) {
            // Harmless if it stays: `open` removes markers that bridge nothing.
            if let Err(e) = holes::remove(self.fs.as_ref(), &self.dir, from, to) {
                tracing::warn!(dir = %self.dir.display(), from, to, error = %e, "cannot remove hole marker");
            }
            self.holes.remove(&from);
        }
        self.pending_from = self.pending_from.saturating_sub(deleted);
        if deleted > 0 {
            self.dir_dirty = true;
            self.fs.sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(deleted),
        }
    }

    /// Total bytes of all segment files on disk (valid record bytes; checkpoints not counted).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Number of segment files (at least 1: the active segment always exists).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}
