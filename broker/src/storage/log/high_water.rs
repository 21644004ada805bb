//! The durable high-water mark of a log (`high-water` in its directory): how far the log was
//! synced — so confirmed — when it was last recorded, and how far sequences are reserved.
//!
//! - **Synced mark.** Recovery may cut only what lies beyond it; a log that ends below it lost
//!   data that had been confirmed, which is damage, never a torn tail. It is recorded right after
//!   a successful sync, at most once per `storage.high_water_interval_ms` (one extra fdatasync
//!   per interval, never one per commit), when the log is opened and when it is closed cleanly.
//!   So it may lag the real synced end by up to one interval of commits: a disk that loses only
//!   that last stretch is not detected as damage.
//! - **Reservation.** No sequence at or past `reserved_next` is confirmed until a mark with a
//!   higher reservation is durable: the log reserves `seq_reservation` sequences at a time
//!   (one extra fdatasync per block). After a crash, the log resumes numbering at the
//!   reservation — never below a sequence that may have been confirmed, even when the disk lost
//!   the records — leaving a hole of never-confirmed sequences (see `holes.rs`). A clean close
//!   records the reservation at `next_seq`, so a clean restart leaves no hole.
//!
//! Layout (version 2): two 40-byte slots, written alternately (a torn write of one leaves the
//! other), each (big-endian):
//!
//! ```text
//! magic "WEIRHWM2" | generation u64 | synced_next u64 | reserved_next u64 | zero u32 | crc32c u32
//! ```
//!
//! The crc covers the 36 bytes before it; the valid slot with the highest generation wins.
//! Version 1 (two 32-byte slots, magic "WEIRHWM1", no reservation: `synced_next | zero u32`)
//! is still read, as a mark reserving nothing past `synced_next`; the first record rewrites the
//! file as version 2 (temp file, fsync, rename, directory fsync).

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::fs::{read_file, write_atomic, OpenMode, StorageFile, StorageFs};

const MAGIC_V1: &[u8; 8] = b"WEIRHWM1";
const SLOT_V1: usize = 32;
const MAGIC: &[u8; 8] = b"WEIRHWM2";
const SLOT: usize = 40;
/// The file's name in the log's directory.
pub(crate) const FILE_NAME: &str = "high-water";

/// One recorded high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HighWater {
    /// Counts writes; the slot is `generation % 2`.
    pub generation: u64,
    /// Every sequence below this had been synced when it was written.
    pub synced_next: u64,
    /// No sequence at or above this had been confirmed when it was written.
    pub reserved_next: u64,
}

/// Encodes one slot (version 2).
pub(crate) fn encode(hw: HighWater) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&hw.generation.to_be_bytes());
    slot[16..24].copy_from_slice(&hw.synced_next.to_be_bytes());
    slot[24..32].copy_from_slice(&hw.reserved_next.to_be_bytes());
    let crc = crc32c::crc32c(&slot[..36]);
    slot[36..].copy_from_slice(&crc.to_be_bytes());
    slot
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// Decodes one version-2 slot; `None` when it is not a valid one (torn, junk, never written).
pub(crate) fn decode(slot: &[u8]) -> Option<HighWater> {
    if slot.len() != SLOT || &slot[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(slot[36..40].try_into().ok()?);
    if crc32c::crc32c(&slot[..36]) != crc {
        return None;
    }
    Some(HighWater {
        generation: be_u64(&slot[8..16])?,
        synced_next: be_u64(&slot[16..24])?,
        reserved_next: be_u64(&slot[24..32])?,
    })
}

/// Decodes one version-1 slot: a mark with no reservation past `synced_next`.
fn decode_v1(slot: &[u8]) -> Option<HighWater> {
    if slot.len() != SLOT_V1 || &slot[..8] != MAGIC_V1 {
        return None;
    }
    let crc = u32::from_be_bytes(slot[28..32].try_into().ok()?);
    if crc32c::crc32c(&slot[..28]) != crc {
        return None;
    }
    let synced_next = be_u64(&slot[16..24])?;
    Some(HighWater {
        generation: be_u64(&slot[8..16])?,
        synced_next,
        reserved_next: synced_next,
    })
}

/// What [`load`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// The newest valid mark.
    pub mark: HighWater,
    /// Whether it was written in version 1 (the file is rewritten at the next record).
    pub legacy: bool,
}

/// The newest valid mark in `dir`, if any.
pub(crate) fn load(fs: &dyn StorageFs, dir: &Path) -> io::Result<Option<Loaded>> {
    let Some(bytes) =
        read_file(fs, &dir.join(FILE_NAME), (2 * SLOT) as u64).or_else(|e| match e.kind() {
            io::ErrorKind::InvalidData => Ok(None),
            _ => Err(e),
        })?
    else {
        return Ok(None);
    };
    let newest = |marks: Vec<HighWater>| marks.into_iter().max_by_key(|hw| hw.generation);
    if let Some(mark) = newest(bytes.chunks(SLOT).filter_map(decode).collect()) {
        return Ok(Some(Loaded {
            mark,
            legacy: false,
        }));
    }
    Ok(
        newest(bytes.chunks(SLOT_V1).filter_map(decode_v1).collect())
            .map(|mark| Loaded { mark, legacy: true }),
    )
}

/// The open high-water file of a log, and the last mark written to it.
#[derive(Debug)]
pub(crate) struct Recorder {
    path: PathBuf,
    file: Option<Box<dyn StorageFile>>,
    last: HighWater,
    /// The file is in version 1: the next record rewrites it whole.
    legacy: bool,
}

impl Recorder {
    /// A recorder continuing from `loaded` (the mark found at open, if any).
    pub(crate) fn new(dir: &Path, loaded: Option<Loaded>) -> Recorder {
        Recorder {
            path: dir.join(FILE_NAME),
            file: None,
            last: loaded.map_or(
                HighWater {
                    generation: 0,
                    synced_next: 0,
                    reserved_next: 0,
                },
                |l| l.mark,
            ),
            legacy: loaded.is_some_and(|l| l.legacy),
        }
    }

    /// The last mark written (or loaded).
    pub(crate) fn last(&self) -> HighWater {
        self.last
    }

    /// Records `synced_next` and `reserved_next` durably (one positional write and one
    /// fdatasync; the first call creates the file, and returns `true` so the caller syncs the
    /// directory). Call only when every record below `synced_next` is synced. A mark that would
    /// change nothing is not written.
    pub(crate) fn record(
        &mut self,
        fs: &dyn StorageFs,
        synced_next: u64,
        reserved_next: u64,
    ) -> io::Result<bool> {
        let unchanged =
            synced_next == self.last.synced_next && reserved_next == self.last.reserved_next;
        if unchanged && self.last.generation > 0 {
            return Ok(false);
        }
        self.persist(fs, synced_next, reserved_next)
    }

    /// [`Recorder::record`], written even if nothing changed: at open, so that a mark read
    /// back from the page cache after a failed fdatasync (not durable) is made durable before
    /// anything relies on it.
    pub(crate) fn persist(
        &mut self,
        fs: &dyn StorageFs,
        synced_next: u64,
        reserved_next: u64,
    ) -> io::Result<bool> {
        let next = HighWater {
            generation: self.last.generation + 1,
            synced_next,
            reserved_next,
        };
        let slot_at = (next.generation % 2) as usize * SLOT;
        if self.legacy {
            let mut bytes = [0u8; 2 * SLOT];
            bytes[slot_at..slot_at + SLOT].copy_from_slice(&encode(next));
            self.file = None;
            write_atomic(fs, &self.path, &bytes)?;
            self.legacy = false;
            self.last = next;
            return Ok(false);
        }
        let created = self.file.is_none();
        if self.file.is_none() {
            let file = match fs.open(&self.path, OpenMode::Existing) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs.open(&self.path, OpenMode::CreateNew)?
                }
                Err(e) => return Err(e),
            };
            self.file = Some(file);
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no file"))?;
        file.write_all_at(&encode(next), slot_at as u64)?;
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
        let mark = HighWater {
            generation: 3,
            synced_next: 0x0102,
            reserved_next: 0x0203,
        };
        let slot = encode(mark);
        let mut expected = b"WEIRHWM2".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 2, 3]);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        let crc = crc32c::crc32c(&expected);
        expected.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(slot.to_vec(), expected);
        assert_eq!(decode(&slot), Some(mark));
    }

    /// A version-1 slot as the previous release wrote it.
    fn v1_slot(generation: u64, synced_next: u64) -> Vec<u8> {
        let mut slot = b"WEIRHWM1".to_vec();
        slot.extend_from_slice(&generation.to_be_bytes());
        slot.extend_from_slice(&synced_next.to_be_bytes());
        slot.extend_from_slice(&[0, 0, 0, 0]);
        let crc = crc32c::crc32c(&slot);
        slot.extend_from_slice(&crc.to_be_bytes());
        slot
    }

    #[test]
    fn a_version_1_file_is_read_without_reservation_and_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::fs::OsFs;
        let path = dir.path().join(FILE_NAME);
        let mut bytes = v1_slot(4, 40);
        bytes.extend(v1_slot(3, 30));
        std::fs::write(&path, &bytes).unwrap();
        let loaded = load(&fs, dir.path()).unwrap().unwrap();
        let mark = HighWater {
            generation: 4,
            synced_next: 40,
            reserved_next: 40,
        };
        assert_eq!(loaded, Loaded { mark, legacy: true });
        let mut rec = Recorder::new(dir.path(), Some(loaded));
        rec.record(&fs, 50, 60).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);
        let again = load(&fs, dir.path()).unwrap().unwrap();
        assert!(!again.legacy);
        assert_eq!((again.mark.synced_next, again.mark.reserved_next), (50, 60));
        rec.record(&fs, 55, 60).unwrap();
        assert_eq!(load(&fs, dir.path()).unwrap().unwrap().mark.synced_next, 55);
    }

    #[test]
    fn a_torn_or_flipped_slot_is_ignored_and_the_other_wins() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::storage::fs::OsFs;
        let mut rec = Recorder::new(dir.path(), None);
        assert!(
            rec.record(&fs, 10, 10).unwrap(),
            "first write creates the file"
        );
        assert!(!rec.record(&fs, 20, 30).unwrap());
        assert!(
            !rec.record(&fs, 20, 30).unwrap(),
            "an unchanged mark is not written"
        );
        let loaded = load(&fs, dir.path()).unwrap().unwrap().mark;
        assert_eq!((loaded.synced_next, loaded.reserved_next), (20, 30));
        // Flip a byte of the newest slot (generation 2 lives in slot 0).
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(load(&fs, dir.path()).unwrap().unwrap().mark.synced_next, 10);
        std::fs::write(&path, b"junk").unwrap();
        assert_eq!(load(&fs, dir.path()).unwrap(), None);
    }
}
