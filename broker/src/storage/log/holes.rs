//! Holes: ranges of sequences a log skips on purpose, each recorded by an empty marker file
//! `{from:020}-{to:020}.hole` in the log's directory, meaning "the segment ending at `from` is
//! followed by the one starting at `to`; sequences `from..to` hold no record".
//!
//! A hole is made when the log resumes numbering past its reservation after an unclean stop
//! (see `high_water.rs`: those sequences were never confirmed, or the disk lost them), and when
//! `weir topic repair` skips a damaged range. The marker is made durable (directory fsync)
//! together with the segment at `to`, before anything is appended there; it is removed once the
//! segments before it are reclaimed. Recovery treats a segment that ends at a marker's `from`
//! and a next segment at its `to` as continuous; without the marker such a jump is a lost
//! segment (damage or a torn tail, as before).

use std::io;
use std::path::{Path, PathBuf};

use crate::storage::fs::{remove_if_present, OpenMode, StorageFs};

const SUFFIX: &str = ".hole";

/// The marker of the hole `from..to` in `dir`.
pub(crate) fn path(dir: &Path, from: u64, to: u64) -> PathBuf {
    dir.join(format!("{from:020}-{to:020}{SUFFIX}"))
}

/// Parses a marker's file name into its range; `None` for any other name or an empty range.
pub(crate) fn parse(name: &str) -> Option<(u64, u64)> {
    let (from, to) = name.strip_suffix(SUFFIX)?.split_once('-')?;
    let number = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
    };
    let (from, to) = (number(from)?, number(to)?);
    (from < to).then_some((from, to))
}

/// Creates the marker of `from..to` (the caller fsyncs the directory). An existing marker is
/// fine.
pub(crate) fn create(fs: &dyn StorageFs, dir: &Path, from: u64, to: u64) -> io::Result<()> {
    match fs.open(&path(dir, from, to), OpenMode::CreateNew) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the marker of `from..to`; `Ok(false)` when it was not there.
pub(crate) fn remove(fs: &dyn StorageFs, dir: &Path, from: u64, to: u64) -> io::Result<bool> {
    remove_if_present(fs, &path(dir, from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_name_round_trips_and_other_names_do_not_parse() {
        let p = path(Path::new("/d"), 7, 4096);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000007-00000000000000004096.hole");
        assert_eq!(parse(name), Some((7, 4096)));
        assert_eq!(
            parse("00000000000000000007-00000000000000000007.hole"),
            None
        );
        assert_eq!(parse("7-4096.hole"), None);
        assert_eq!(parse("00000000000000000007.log"), None);
    }
}
