//! The durable high-water mark of a log (`high-water` in its directory): how far the log was
//! synced — so confirmed — when it was last recorded. Recovery may cut only what lies beyond
//! it; a log that ends below it lost data that had been confirmed, which is damage, never a
//! torn tail.
//!
//! It is recorded right after a successful sync, at most once per
//! `storage.high_water_interval_ms` (one extra fdatasync per interval, never one per commit),
//! when the log is opened and when it is closed cleanly. So it may lag the real synced end by up
//! to one interval of commits: a disk that loses only that last stretch is not detected.
//!
//! Layout: two 32-byte slots, written alternately (a torn write of one leaves the other), each
//! (big-endian):
//!
//! ```text
//! magic "WEIRHWM1" | generation u64 | synced_next u64 | reserved u32 (0) | crc32c u32
//! ```
//!
//! The crc covers the 28 bytes before it; the valid slot with the highest generation wins.

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::fs::{read_file, OpenMode, StorageFile, StorageFs};

const MAGIC: &[u8; 8] = b"WEIRHWM1";
const SLOT: usize = 32;
/// The file's name in the log's directory.
pub(crate) const FILE_NAME: &str = "high-water";

/// One recorded high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HighWater {
    /// Counts writes; the slot is `generation % 2`.
    pub generation: u64,
    /// Every sequence below this had been synced when it was written.
    pub synced_next: u64,
}

/// Encodes one slot.
pub(crate) fn encode(hw: HighWater) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&hw.generation.to_be_bytes());
    slot[16..24].copy_from_slice(&hw.synced_next.to_be_bytes());
    let crc = crc32c::crc32c(&slot[..28]);
    slot[28..].copy_from_slice(&crc.to_be_bytes());
    slot
}

/// Decodes one slot; `None` when it is not a valid one (torn, junk, never written).
pub(crate) fn decode(slot: &[u8]) -> Option<HighWater> {
    if slot.len() != SLOT || &slot[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(slot[28..32].try_into().ok()?);
    if crc32c::crc32c(&slot[..28]) != crc {
        return None;
    }
    Some(HighWater {
        generation: u64::from_be_bytes(slot[8..16].try_into().ok()?),
        synced_next: u64::from_be_bytes(slot[16..24].try_into().ok()?),
    })
}

/// The newest valid mark in `dir`, if any.
pub(crate) fn load(fs: &dyn StorageFs, dir: &Path) -> io::Result<Option<HighWater>> {
    let Some(bytes) =
        read_file(fs, &dir.join(FILE_NAME), (2 * SLOT) as u64).or_else(|e| match e.kind() {
            io::ErrorKind::InvalidData => Ok(None),
            _ => Err(e),
        })?
    else {
        return Ok(None);
    };
    Ok(bytes
        .chunks(SLOT)
        .filter_map(decode)
        .max_by_key(|hw| hw.generation))
}

/// The open high-water file of a log, and the last mark written to it.
#[derive(Debug)]
pub(crate) struct Recorder {
    path: PathBuf,
    file: Option<Box<dyn StorageFile>>,
    last: HighWater,
}

impl Recorder {
    /// A recorder continuing from `loaded` (the mark found at open, if any).
    pub(crate) fn new(dir: &Path, loaded: Option<HighWater>) -> Recorder {
        Recorder {
            path: dir.join(FILE_NAME),
            file: None,
            last: loaded.unwrap_or(HighWater {
                generation: 0,
                synced_next: 0,
            }),
        }
    }

    /// The last mark written (or loaded).
    pub(crate) fn last(&self) -> HighWater {
        self.last
    }

    /// Records `synced_next` durably (one positional write and one fdatasync; the first call
    /// creates the file, and returns `true` so the caller syncs the directory). Call only when
    /// every record below `synced_next` is synced. A mark that would not move is not written.
    pub(crate) fn record(&mut self, fs: &dyn StorageFs, synced_next: u64) -> io::Result<bool> {
        if synced_next <= self.last.synced_next && self.last.generation > 0 {
            return Ok(false);
        }
        let created = self.file.is_none();
        if self.file.is_none() {
            let mode = match fs.open(&self.path, OpenMode::Existing) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs.open(&self.path, OpenMode::CreateNew)?
                }
                Err(e) => return Err(e),
            };
            self.file = Some(mode);
        }
        let next = HighWater {
            generation: self.last.generation + 1,
            synced_next,
        };
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no file"))?;
        file.write_all_at(&encode(next), (next.generation % 2) * SLOT as u64)?;
        file.sync_data()?;
        self.last = next;
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_of_a_slot() {
        let slot = encode(HighWater {
            generation: 3,
            synced_next: 0x0102,
        });
        let mut expected = b"WEIRHWM1".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(slot.to_vec(), expected);
        assert_eq!(
            decode(&slot),
            Some(HighWater {
                generation: 3,
                synced_next: 0x0102
            })
        );
    }

    #[test]
    fn a_torn_or_flipped_slot_is_ignored_and_the_other_wins() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::fs::OsFs;
        let mut rec = Recorder::new(dir.path(), None);
        assert!(rec.record(&fs, 10).unwrap(), "first write creates the file");
        assert!(!rec.record(&fs, 20).unwrap());
        assert_eq!(load(&fs, dir.path()).unwrap().unwrap().synced_next, 20);
        // Flip a byte of the newest slot (generation 2 lives in slot 0).
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(load(&fs, dir.path()).unwrap().unwrap().synced_next, 10);
        std::fs::write(&path, b"junk").unwrap();
        assert_eq!(load(&fs, dir.path()).unwrap(), None);
    }
}
