//! One segment file: create/open, append (one pwrite), positional reads, recovery scan, truncate.

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::fs::{read_exact_at, OpenMode, StorageFile, StorageFs};

use super::checkpoint::Checkpoint;
use super::index::SparseIndex;
use super::reader::{Body, HeaderStep, RecordReader};
use super::record;
use super::record::{RecordHeader, HEADER_LEN};
use super::{LogError, Message};

/// Path of the segment whose first record has sequence `base_seq`.
pub(crate) fn log_path(dir: &Path, base_seq: u64) -> PathBuf {
    dir.join(format!("{base_seq:020}.log"))
}

/// Parses a file name of exactly 20 decimal digits plus `suffix` (e.g. `".log"`) into its number.
pub(crate) fn parse_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bytes of a segment read at once when looking past a bad record.
const LOOK_PAST_WINDOW: usize = 4 * 1024 * 1024;

/// How far above the expected sequence a record found past a bad one may be and still count
/// (random bytes almost never parse as a header with a sequence this close).
const PLAUSIBLE_SEQ_SPAN: u64 = 1 << 32;

/// Where and why a recovery scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanStop {
    /// Offset of the first record that is not valid.
    pub offset: u64,
    /// What is wrong with it.
    pub reason: String,
    /// The file could not be read there (an I/O error, not bad content): whatever it holds is
    /// unknown, so it is never cut as a torn tail.
    pub unreadable: bool,
}

/// One open segment file and what is known about its contents.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Sequence of the first record (the file's name).
    pub base_seq: u64,
    /// One past the sequence of the last record (`== base_seq` when empty).
    pub next_seq: u64,
    /// Bytes of whole valid records; reads never go past it, appends go exactly there.
    pub size: u64,
    /// The file's path.
    pub path: PathBuf,
    file: Box<dyn StorageFile>,
    /// Sparse seq → offset index.
    pub index: SparseIndex,
    /// Written (or recovered) since the last successful `fdatasync`.
    pub dirty: bool,
    /// Sealed, and its checkpoint is not yet written.
    pub needs_checkpoint: bool,
}

impl Segment {
    /// Creates a new, empty segment file for `base_seq` in `dir`. Fails with `AlreadyExists` if
    /// the file is already there (the log never reuses a base sequence). The caller owns the
    /// directory fsync.
    pub(crate) fn create(fs: &dyn StorageFs, dir: &Path, base_seq: u64) -> io::Result<Segment> {
        let path = log_path(dir, base_seq);
        let file = fs.open(&path, OpenMode::CreateNew)?;
        Ok(Segment {
            base_seq,
            next_seq: base_seq,
            size: 0,
            path,
            file,
            index: SparseIndex::new(),
            dirty: false,
            needs_checkpoint: false,
        })
    }

    /// Opens an existing segment file for reading and writing, returning it and its length.
    pub(crate) fn open_file(
        fs: &dyn StorageFs,
        path: &Path,
    ) -> io::Result<(Box<dyn StorageFile>, u64)> {
        let file = fs.open(path, OpenMode::Existing)?;
        let len = file.size()?;
        Ok((file, len))
    }

    /// A sealed segment trusted by its checkpoint (no scan).
    pub(crate) fn from_checkpoint(
        path: PathBuf,
        file: Box<dyn StorageFile>,
        cp: Checkpoint,
    ) -> Segment {
        Segment {
            base_seq: cp.base_seq,
            next_seq: cp.next_seq,
            size: cp.valid_len,
            path,
            file,
            index: cp.index,
            dirty: false,
            needs_checkpoint: false,
        }
    }

    /// Scans `file` (of length `file_len`) from the start, checking every record's length, CRC and
    /// sequence (`base_seq`, `base_seq + 1`, ...) and rebuilding the sparse index. Returns the
    /// segment covering the valid prefix, and where the scan stopped if it did not reach the end of
    /// the file. Does not modify the file. Any content is accepted, and a read that fails part-way
    /// stops the scan there (marked `unreadable`); only failing to start is an error.
    pub(crate) fn scan(
        path: PathBuf,
        file: Box<dyn StorageFile>,
        base_seq: u64,
        file_len: u64,
        interval: u32,
        buf: &mut Vec<u8>,
    ) -> io::Result<(Segment, Option<ScanStop>)> {
        let mut index = SparseIndex::new();
        let mut expected = base_seq;
        let (size, stop) = {
            let mut r = RecordReader::new(file.as_ref(), buf, 0, file_len);
            loop {
                let at = r.offset();
                let stop = |reason: String| {
                    let unreadable = false;
                    (
                        at,
                        Some(ScanStop {
                            offset: at,
                            reason,
                            unreadable,
                        }),
                    )
                };
                let unreadable = |e: io::Error| {
                    let reason = format!("cannot read the segment: {e}");
                    let unreadable = true;
                    (
                        at,
                        Some(ScanStop {
                            offset: at,
                            reason,
                            unreadable,
                        }),
                    )
                };
                let step = match r.next_header() {
                    Ok(step) => step,
                    Err(e) => break unreadable(e),
                };
                let h = match step {
                    HeaderStep::End => break (at, None),
                    HeaderStep::Incomplete => break stop("incomplete record".into()),
                    HeaderStep::Bad(reason) => break stop(reason),
                    HeaderStep::Record(h) => h,
                };
                if h.seq != expected {
                    break stop(format!("sequence {} where {expected} was expected", h.seq));
                }
                let Some(next) = expected.checked_add(1) else {
                    break stop("sequence space exhausted".into());
                };
                match r.body() {
                    Ok(Ok(_)) => {}
                    Ok(Err(reason)) => break stop(reason),
                    Err(e) => break unreadable(e),
                }
                index.observe(expected - base_seq, at, interval);
                expected = next;
            }
        };
        let seg = Segment {
            base_seq,
            next_seq: expected,
            size,
            path,
            file,
            index,
            dirty: false,
            needs_checkpoint: false,
        };
        Ok((seg, stop))
    }

    /// Looks past a bad spot at `stop` for a whole, valid record (CRC matching) whose sequence is
    /// at least `min_seq`, anywhere in the file's first `file_len` bytes after `stop`; returns
    /// its sequence. A crash leaves a torn tail — a prefix of what was written — so nothing valid
    /// can follow the tear within one file: a valid record past a bad one means the bad one was
    /// damaged after it was written. Reads the rest of the file once, in windows of
    /// [`LOOK_PAST_WINDOW`] bytes.
    pub(crate) fn valid_record_after(
        &self,
        stop: u64,
        file_len: u64,
        min_seq: u64,
    ) -> io::Result<Option<u64>> {
        let window = LOOK_PAST_WINDOW as u64;
        let mut buf = vec![0u8; LOOK_PAST_WINDOW + HEADER_LEN];
        let mut start = stop + 1;
        while start + (HEADER_LEN as u64) <= file_len {
            let len = (file_len - start).min(window + HEADER_LEN as u64) as usize;
            read_exact_at(self.file.as_ref(), &mut buf[..len], start)?;
            let candidates = len.saturating_sub(HEADER_LEN - 1).min(LOOK_PAST_WINDOW);
            for i in 0..candidates {
                let Ok(raw) = <&[u8; HEADER_LEN]>::try_from(&buf[i..i + HEADER_LEN]) else {
                    continue;
                };
                let Ok(h) = RecordHeader::parse(raw) else {
                    continue;
                };
                let at = start + i as u64;
                let plausible = h.seq >= min_seq
                    && h.seq - min_seq < PLAUSIBLE_SEQ_SPAN
                    && at + h.total_len() <= file_len;
                if !plausible {
                    continue;
                }
                let mut record = vec![0u8; h.total_len() as usize];
                read_exact_at(self.file.as_ref(), &mut record, at)?;
                if record::crc_matches(h.crc, &record) {
                    return Ok(Some(h.seq));
                }
            }
            start += window;
        }
        Ok(None)
    }

    /// The checkpoint describing this segment as it is now.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            base_seq: self.base_seq,
            valid_len: self.size,
            next_seq: self.next_seq,
            index: self.index.clone(),
        }
    }

    /// Writes the records of `messages` (in order, starting at sequence `next_seq`) at the end
    /// of the valid data with one positional vectored write of each record's head (from
    /// `heads`, see [`record::encode_head`]) and its payload, then updates size, next sequence
    /// and index; returns the bytes written. On failure the file is cut back to its previous size (best effort)
    /// and the in-memory state is unchanged. Does not fsync.
    pub(crate) fn append(
        &mut self,
        heads: &[u8],
        messages: &[Message],
        interval: u32,
    ) -> io::Result<u64> {
        // Each record's head (from `heads`, in order) then its payload: one vectored write.
        let mut parts = Vec::with_capacity(messages.len() * 2);
        let mut at = 0usize;
        for m in messages {
            let head = record::encoded_len(m) as usize - m.payload.len();
            parts.push(io::IoSlice::new(&heads[at..at + head]));
            parts.push(io::IoSlice::new(&m.payload));
            at += head;
        }
        debug_assert_eq!(at, heads.len());
        if let Err(e) = self.file.write_vectored_all_at(&parts, self.size) {
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.dirty = true;
        let mut offset = self.size;
        for (rel, m) in (self.next_seq - self.base_seq..).zip(messages) {
            self.index.observe(rel, offset, interval);
            offset += record::encoded_len(m);
        }
        let written = offset - self.size;
        self.size = offset;
        self.next_seq += messages.len() as u64;
        Ok(written)
    }

    /// Cuts the file and the in-memory state back to `size` bytes holding records up to (not
    /// including) `next_seq`. The in-memory state is updated even if the file truncation fails.
    pub(crate) fn truncate(&mut self, size: u64, next_seq: u64) -> io::Result<()> {
        self.size = size;
        self.next_seq = next_seq;
        self.index.truncate_at(size);
        self.dirty = true;
        self.file.set_len(size)
    }

    /// `fdatasync`s the file and clears the dirty flag.
    pub(crate) fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    fn corrupt(&self, seq: u64, offset: u64, reason: String) -> LogError {
        LogError::Corrupt {
            segment: self.path.clone(),
            seq,
            offset,
            reason,
        }
    }

    /// Maps a read error: a file shorter than its recorded valid length is corruption.
    fn read_error(&self, e: io::Error, seq: u64, offset: u64) -> LogError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            self.corrupt(seq, offset, "file shorter than its recorded length".into())
        } else {
            LogError::Io(e)
        }
    }

    /// Calls `f(seq, timestamp_ms, body)` for each record with sequence `>= from` (and
    /// `>= base_seq`), in order, until `f` returns `false` or the segment ends. Seeks with the
    /// sparse index, reads with pread into `buf` (reused), verifies the CRC and the message
    /// header lengths of every record passed to `f` and the sequence of every record visited.
    /// Returns `Ok(true)` when the segment was exhausted, `Ok(false)` when `f` stopped it. Any
    /// malformed content is `LogError::Corrupt`.
    pub(crate) fn for_each_from<F>(
        &self,
        from: u64,
        buf: &mut Vec<u8>,
        mut f: F,
    ) -> Result<bool, LogError>
    where
        F: FnMut(u64, u64, Body<'_>) -> bool,
    {
        let from = from.max(self.base_seq);
        if from >= self.next_seq {
            return Ok(true);
        }
        let (rel, offset) = self.index.lookup(from - self.base_seq);
        let mut expected = self.base_seq + rel;
        let mut r = RecordReader::new(self.file.as_ref(), buf, offset, self.size);
        while expected < self.next_seq {
            let at = r.offset();
            let h = match r
                .next_header()
                .map_err(|e| self.read_error(e, expected, at))?
            {
                HeaderStep::Record(h) => h,
                HeaderStep::End => {
                    return Err(self.corrupt(
                        expected,
                        at,
                        format!("segment ends before record {expected}"),
                    ))
                }
                HeaderStep::Incomplete => {
                    return Err(self.corrupt(
                        expected,
                        at,
                        format!("record {expected} is incomplete"),
                    ))
                }
                HeaderStep::Bad(reason) => return Err(self.corrupt(expected, at, reason)),
            };
            if h.seq != expected {
                return Err(self.corrupt(
                    expected,
                    at,
                    format!("sequence {} where {expected} was expected", h.seq),
                ));
            }
            if expected < from {
                r.skip();
            } else {
                let body = r.body().map_err(|e| self.read_error(e, expected, at))?;
                let body = body.map_err(|reason| self.corrupt(expected, at, reason))?;
                if !f(h.seq, h.timestamp_ms, body) {
                    return Ok(false);
                }
            }
            expected += 1;
        }
        Ok(true)
    }
}
