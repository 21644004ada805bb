//! Topic directories as storage keeps them: each holds a manifest (the topic's configuration
//! and identity, format in [`super::records`]) so the state store can be rebuilt from the data,
//! and a deleted topic's directory is first renamed to a tombstone so a crash mid-delete is
//! finished at the next start instead of resurrecting the topic.
//!
//! Every file operation goes through the [`StorageFs`] layer.

use std::io;
use std::path::{Path, PathBuf};

use super::fs::{self as sfs, StorageFs};
use super::records::{self, FormatError, Manifest};

/// The manifest's file name inside a topic directory.
pub const MANIFEST_FILE: &str = "topic.manifest";

/// What separates a topic's name from the rest of its tombstone's name. `@` is not allowed in
/// topic names (`config::validate_topic_name`), so no topic directory can look like a tombstone.
const TOMBSTONE_MARK: &str = "@deleted-";

/// A manifest that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file system failed.
    #[error("manifest {path}: {source}")]
    Io {
        /// The manifest's path.
        path: PathBuf,
        source: io::Error,
    },
    /// The file is there but is not a valid manifest (torn, overwritten, newer format).
    #[error("manifest {path} is unreadable: {source}")]
    Format {
        /// The manifest's path.
        path: PathBuf,
        source: FormatError,
    },
}

/// Writes `manifest` into the topic directory `dir` atomically (temp file, fdatasync, rename,
/// directory fsync): after a crash the directory holds the old manifest or the new, whole.
pub fn write(fs: &dyn StorageFs, dir: &Path, manifest: &Manifest) -> Result<(), ManifestError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = records::encode_manifest(manifest).map_err(|source| ManifestError::Format {
        path: path.clone(),
        source,
    })?;
    sfs::write_atomic(fs, &path, &bytes).map_err(|source| ManifestError::Io { path, source })
}

/// Reads the manifest of the topic directory `dir`: `Ok(None)` when it has none.
pub fn read(fs: &dyn StorageFs, dir: &Path) -> Result<Option<Manifest>, ManifestError> {
    let path = dir.join(MANIFEST_FILE);
    // Longer than the largest valid manifest is junk: refused without reading it all.
    let max = 8 + 2 + 4 + u64::from(records::MAX_MANIFEST_BODY) + 4;
    match sfs::read_file(fs, &path, max) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => records::decode_manifest(&bytes)
            .map(Some)
            .map_err(|source| ManifestError::Format { path, source }),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(ManifestError::Format {
            path,
            source: FormatError::Undecodable(format!("longer than {max} bytes")),
        }),
        Err(source) => Err(ManifestError::Io { path, source }),
    }
}

/// Creates the topic directory `topics_dir/name` holding `manifest`, durably (the directory's
/// entry in `topics_dir` is synced too). Fails with `AlreadyExists` if the directory is there:
/// a create never writes over existing files. On any other failure the new directory is
/// removed again (best effort), so the create can be retried.
pub fn create_dir(
    fs: &dyn StorageFs,
    topics_dir: &Path,
    manifest: &Manifest,
) -> Result<PathBuf, ManifestError> {
    let dir = topics_dir.join(&manifest.config.name);
    let io_err = |source| ManifestError::Io {
        path: dir.join(MANIFEST_FILE),
        source,
    };
    if fs.is_dir(&dir) {
        return Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the topic directory already exists",
        )));
    }
    fs.create_dir_all(&dir).map_err(io_err)?;
    let made = write(fs, &dir, manifest).and_then(|()| fs.sync_dir(topics_dir).map_err(io_err));
    if let Err(e) = made {
        // Nothing is stored in it yet: take it away so a retry can create it. If even that
        // fails, the next start removes it (a directory without manifest or segments).
        let _ = fs.remove_dir_all(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Whether `entry` (a name in the topics directory) is a tombstone; if so, the name of the
/// topic it was.
pub fn tombstone_of(entry: &str) -> Option<&str> {
    entry.split_once(TOMBSTONE_MARK).map(|(topic, _)| topic)
}

/// Renames the topic directory `topics_dir/name` to a tombstone and syncs `topics_dir`, so the
/// delete survives a crash from here on. Returns the tombstone's path; `Ok(None)` when the
/// directory was already gone.
pub fn tombstone(fs: &dyn StorageFs, topics_dir: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    let dir = topics_dir.join(name);
    let mut n = 0u32;
    let mut to;
    // Unique even if an earlier tombstone of the same name could not be removed.
    loop {
        to = topics_dir.join(format!("{name}{TOMBSTONE_MARK}{}-{n}", records::now_ms()));
        if !fs.is_dir(&to) {
            break;
        }
        n += 1;
    }
    match fs.rename(&dir, &to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    }
    fs.sync_dir(topics_dir)?;
    Ok(Some(to))
}

/// Removes a tombstone (or any directory in the topics directory) and syncs its parent.
pub fn remove_dir(fs: &dyn StorageFs, dir: &Path) -> io::Result<()> {
    match fs.remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match dir.parent() {
        Some(parent) => fs.sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::records::TopicIdentity;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            config: crate::storage::test_topic_config(name),
            identity: TopicIdentity::new(),
        }
    }

    #[test]
    fn create_read_tombstone_remove() {
        let root = tempfile::tempdir().unwrap();
        let fs = sfs::os();
        let m = manifest("t");
        let dir = create_dir(fs.as_ref(), root.path(), &m).unwrap();
        assert_eq!(read(fs.as_ref(), &dir).unwrap(), Some(m.clone()));
        assert!(matches!(
            create_dir(fs.as_ref(), root.path(), &m),
            Err(ManifestError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists
        ));
        let tomb = tombstone(fs.as_ref(), root.path(), "t").unwrap().unwrap();
        let entry = tomb.file_name().unwrap().to_str().unwrap();
        assert_eq!(tombstone_of(entry), Some("t"));
        assert_eq!(tombstone_of("t"), None);
        assert!(crate::config::validate_topic_name(entry).is_err());
        assert_eq!(read(fs.as_ref(), &tomb).unwrap(), Some(m));
        assert_eq!(tombstone(fs.as_ref(), root.path(), "t").unwrap(), None);
        remove_dir(fs.as_ref(), &tomb).unwrap();
        assert!(!fs.is_dir(&tomb));
        assert_eq!(read(fs.as_ref(), &tomb).unwrap(), None);
    }

    #[test]
    fn a_junk_manifest_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let fs = sfs::os();
        sfs::write_atomic(fs.as_ref(), &root.path().join(MANIFEST_FILE), b"junk").unwrap();
        assert!(matches!(
            read(fs.as_ref(), root.path()),
            Err(ManifestError::Format {
                source: FormatError::BadMagic,
                ..
            })
        ));
    }
}
