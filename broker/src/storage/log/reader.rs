//! Buffered, positional (pread) record reader over one segment file.
//!
//! Reads are positional (`read_exact_at`), so a reader needs only a shared file and any number of
//! readers can run concurrently on the same file. The buffer is owned by the caller and reused.

use std::io;

use crate::storage::fs::{read_exact_at, StorageFile};

use super::record::{self, RawHeaders, RecordHeader, HEADER_LEN};

/// First read size; doubled on every refill up to [`MAX_CHUNK`].
const MIN_CHUNK: usize = 16 * 1024;
/// Largest single read (a record larger than this is read in one piece of its own size).
const MAX_CHUNK: usize = 256 * 1024;

/// Outcome of reading the next record header.
#[derive(Debug)]
pub(crate) enum HeaderStep {
    /// The reader is exactly at its limit: no more records.
    End,
    /// Fewer bytes than a header (or than the record the header announces) remain before the limit.
    Incomplete,
    /// The header is malformed (reason given).
    Bad(String),
    /// A well-formed header; the record lies entirely before the limit.
    Record(RecordHeader),
}

/// The checked contents of one record: its producer stamp, message headers and payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Body<'a> {
    /// Who published it, when it was published with a producer stamp.
    pub producer: Option<weir_protocol::ProducerStamp>,
    /// The message headers, validated (decoding them cannot fail).
    pub headers: RawHeaders<'a>,
    /// The payload.
    pub payload: &'a [u8],
}

/// Reads records sequentially from `start` up to `limit` (exclusive) of one file.
pub(crate) struct RecordReader<'a> {
    file: &'a dyn StorageFile,
    buf: &'a mut Vec<u8>,
    /// File offset of `buf[0]`.
    buf_start: u64,
    /// Cursor inside `buf`: start of the current (not yet consumed) record.
    pos: usize,
    limit: u64,
    chunk: usize,
    /// Header of the record at the cursor, once `next_header` returned it.
    current: Option<RecordHeader>,
}

impl<'a> RecordReader<'a> {
    /// A reader positioned at `start`, never reading at or past `limit`. `buf` is cleared and reused.
    pub(crate) fn new(
        file: &'a dyn StorageFile,
        buf: &'a mut Vec<u8>,
        start: u64,
        limit: u64,
    ) -> Self {
        buf.clear();
        RecordReader {
            file,
            buf,
            buf_start: start,
            pos: 0,
            limit,
            chunk: MIN_CHUNK,
            current: None,
        }
    }

    /// File offset of the cursor (the start of the next record to be read).
    pub(crate) fn offset(&self) -> u64 {
        self.buf_start + self.pos as u64
    }

    /// Makes at least `need` bytes available at the cursor. `Ok(false)` when the limit comes first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        let avail = self.buf.len() - self.pos;
        if avail >= need {
            return Ok(true);
        }
        let file_pos = self.buf_start + self.buf.len() as u64;
        let left = self.limit.saturating_sub(file_pos);
        let missing = (need - avail) as u64;
        if left < missing {
            return Ok(false);
        }
        // Compact: keep only the unread bytes.
        self.buf.drain(..self.pos);
        self.buf_start += self.pos as u64;
        self.pos = 0;
        let want = (need.max(self.chunk) - avail) as u64;
        let to_read = usize::try_from(want.min(left))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "read too large"))?;
        let old = self.buf.len();
        self.buf.resize(old + to_read, 0);
        if let Err(e) = read_exact_at(self.file, &mut self.buf[old..], file_pos) {
            self.buf.truncate(old);
            return Err(e);
        }
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
        Ok(true)
    }

    /// Reads and validates the header of the record at the cursor (without consuming it).
    pub(crate) fn next_header(&mut self) -> io::Result<HeaderStep> {
        self.current = None;
        if self.offset() >= self.limit {
            return Ok(HeaderStep::End);
        }
        if !self.fill(HEADER_LEN)? {
            return Ok(HeaderStep::Incomplete);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&self.buf[self.pos..self.pos + HEADER_LEN]);
        let header = match RecordHeader::parse(&raw) {
            Ok(h) => h,
            Err(reason) => return Ok(HeaderStep::Bad(reason)),
        };
        if self.offset().saturating_add(header.total_len()) > self.limit {
            return Ok(HeaderStep::Incomplete);
        }
        self.current = Some(header);
        Ok(HeaderStep::Record(header))
    }

    /// Skips the record whose header was just returned, without reading or checking its body.
    pub(crate) fn skip(&mut self) {
        let Some(h) = self.current.take() else { return };
        let next = self.offset() + h.total_len();
        let avail = (self.buf.len() - self.pos) as u64;
        if h.total_len() <= avail {
            self.pos += h.total_len() as usize;
        } else {
            self.buf.clear();
            self.buf_start = next;
            self.pos = 0;
        }
    }

    /// Reads the body of the record whose header was just returned, verifies its CRC and the
    /// lengths of its message headers, and consumes it. `Ok(Ok(body))` on success; `Ok(Err(reason))`
    /// on a CRC mismatch or malformed message headers (the cursor stays at the record's start),
    /// and as well if no header is pending.
    pub(crate) fn body(&mut self) -> io::Result<Result<Body<'_>, String>> {
        let Some(h) = self.current else {
            return Ok(Err("no record header read".into()));
        };
        let total = usize::try_from(h.total_len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "record too large"))?;
        if !self.fill(total)? {
            // next_header checked the record ends before the limit, so this cannot happen; treat
            // it as corruption rather than panic.
            return Ok(Err(format!("record {} ends past the limit", h.seq)));
        }
        let rec = &self.buf[self.pos..self.pos + total];
        if !record::crc_matches(h.crc, rec) {
            return Ok(Err(format!("crc mismatch in record {}", h.seq)));
        }
        let (producer, headers, payload) = match record::split_body(&h, &rec[HEADER_LEN..]) {
            Ok(split) => split,
            Err(e) => return Ok(Err(format!("record {}: {e}", h.seq))),
        };
        self.current = None;
        self.pos += total;
        Ok(Ok(Body {
            producer,
            headers,
            payload,
        }))
    }
}
