//! Checkpoint of a sealed segment (`{base_seq:020}.sealed`): what recovery needs to trust the
//! segment without scanning it.
//!
//! Layout (big-endian):
//!
//! ```text
//! magic "WEIRSEAL" | version u32 | base_seq u64 | valid_len u64 | next_seq u64 |
//! entry_count u32 | entry_count × (rel_seq u32, offset u32) | crc32c u32 of all preceding bytes
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::fs::{self, OpenMode, StorageFs};

use super::index::SparseIndex;

const MAGIC: &[u8; 8] = b"WEIRSEAL";
const VERSION: u32 = 1;
/// Bytes before the entries.
const FIXED_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4;
/// Checkpoint files larger than this are rejected unread (the segment is scanned instead).
const MAX_FILE_LEN: u64 = 64 * 1024 * 1024;

/// What a checkpoint records about one sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Sequence of the segment's first record (also in its file name).
    pub base_seq: u64,
    /// Bytes of whole, valid records at the start of the segment file.
    pub valid_len: u64,
    /// One past the sequence of the segment's last record (`base_seq + record count`).
    pub next_seq: u64,
    /// The segment's sparse index.
    pub index: SparseIndex,
}

/// Path of the checkpoint for the segment starting at `base_seq` in `dir`.
pub(crate) fn path(dir: &Path, base_seq: u64) -> PathBuf {
    dir.join(format!("{base_seq:020}.sealed"))
}

/// Serializes a checkpoint, CRC included.
pub(crate) fn encode(cp: &Checkpoint) -> Vec<u8> {
    let entries = cp.index.entries();
    let mut buf = Vec::with_capacity(FIXED_LEN + entries.len() * 8 + 4);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_be_bytes());
    buf.extend_from_slice(&cp.base_seq.to_be_bytes());
    buf.extend_from_slice(&cp.valid_len.to_be_bytes());
    buf.extend_from_slice(&cp.next_seq.to_be_bytes());
    // The index holds at most one entry per byte of a u32-addressable range, so this fits.
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&count.to_be_bytes());
    for &(rel, off) in entries.iter().take(count as usize) {
        buf.extend_from_slice(&rel.to_be_bytes());
        buf.extend_from_slice(&off.to_be_bytes());
    }
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_be_bytes());
    buf
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses and validates a checkpoint for the segment starting at `expected_base`.
/// `Err` says why it cannot be trusted; never panics on any input.
pub(crate) fn decode(bytes: &[u8], expected_base: u64) -> Result<Checkpoint, String> {
    if bytes.len() < FIXED_LEN + 4 {
        return Err(format!("checkpoint too short ({} bytes)", bytes.len()));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored_crc = be_u32(crc_bytes, 0).ok_or("missing crc")?;
    if crc32c::crc32c(body) != stored_crc {
        return Err("checkpoint crc mismatch".into());
    }
    if &body[..8] != MAGIC {
        return Err("bad checkpoint magic".into());
    }
    let version = be_u32(body, 8).ok_or("truncated")?;
    if version != VERSION {
        return Err(format!("unknown checkpoint version {version}"));
    }
    let base_seq = be_u64(body, 12).ok_or("truncated")?;
    let valid_len = be_u64(body, 20).ok_or("truncated")?;
    let next_seq = be_u64(body, 28).ok_or("truncated")?;
    let count = be_u32(body, 36).ok_or("truncated")? as usize;
    if base_seq != expected_base {
        return Err(format!(
            "checkpoint is for base {base_seq}, file name says {expected_base}"
        ));
    }
    if next_seq <= base_seq || valid_len == 0 {
        return Err("checkpoint describes an empty segment".into());
    }
    if body.len() != FIXED_LEN + count.saturating_mul(8) {
        return Err("checkpoint entry count does not match its length".into());
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let at = FIXED_LEN + i * 8;
        let rel = be_u32(body, at).ok_or("truncated")?;
        let off = be_u32(body, at + 4).ok_or("truncated")?;
        entries.push((rel, off));
    }
    let index = SparseIndex::from_entries(entries, next_seq - base_seq, valid_len)
        .ok_or("checkpoint index entries out of order or out of range")?;
    Ok(Checkpoint {
        base_seq,
        valid_len,
        next_seq,
        index,
    })
}

/// Writes the checkpoint file and fsyncs it (its directory entry is the caller's to sync).
pub(crate) fn write(fs: &dyn StorageFs, dir: &Path, cp: &Checkpoint) -> io::Result<()> {
    let f = fs.open(&path(dir, cp.base_seq), OpenMode::Truncate)?;
    f.write_all_at(&encode(cp), 0)?;
    f.sync_data()
}

/// Loads the checkpoint for `base_seq`: `Ok(None)` when there is none, `Ok(Some(Err(reason)))`
/// when one exists but cannot be trusted, I/O errors as `Err`.
pub(crate) fn load(
    fs: &dyn StorageFs,
    dir: &Path,
    base_seq: u64,
) -> io::Result<Option<Result<Checkpoint, String>>> {
    match fs::read_file(fs, &path(dir, base_seq), MAX_FILE_LEN) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => Ok(Some(decode(&bytes, base_seq))),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Some(Err(e.to_string()))),
        Err(e) => Err(e),
    }
}

/// Removes the checkpoint for `base_seq` if present; `Ok(true)` if a file was removed.
pub(crate) fn remove(fs: &dyn StorageFs, dir: &Path, base_seq: u64) -> io::Result<bool> {
    fs::remove_if_present(fs, &path(dir, base_seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut index = SparseIndex::new();
        index.observe(3, 4096, 4096);
        index.observe(7, 8200, 4096);
        Checkpoint {
            base_seq: 11,
            valid_len: 10_000,
            next_seq: 21,
            index,
        }
    }

    #[test]
    fn round_trip() {
        let cp = sample();
        let bytes = encode(&cp);
        assert_eq!(decode(&bytes, 11), Ok(cp));
        assert!(decode(&bytes, 12).is_err());
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_rejected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, 11).is_err(), "flip at {i}");
            assert!(decode(&bytes[..i], 11).is_err(), "truncated to {i}");
        }
    }
}
