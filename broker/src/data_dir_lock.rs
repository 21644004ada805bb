//! One broker per data directory: an exclusive `flock` on `<data-dir>/LOCK`, taken at start
//! before anything in the directory is read or moved, held until the process exits.
//!
//! A second broker on the same directory fails at once with [`DataDirLockError::InUse`],
//! naming the directory and the holder's pid (written into the file), instead of waiting on the
//! state store's own lock. The kernel drops the lock when the holder dies, even by `kill -9`,
//! so a stale `LOCK` file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// The held lock on a data directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirLockError {
    /// Another process holds the lock.
    #[error("data directory {dir} is in use by another weir-broker{holder}; stop it or choose another --data-dir")]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// `" (pid N)"` when the holder wrote its pid, else empty.
        holder: String,
    },
    /// The directory or its lock file could not be created or locked.
    #[error("cannot lock data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Creates `dir` if needed and locks it for this process, writing this process's pid into the
/// lock file. Fails at once (never waits) when another process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DataDirLock, DataDirLockError> {
    let io = |source| DataDirLockError::Io {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    if let Err(e) = file.try_lock_exclusive() {
        if e.kind() != fs2::lock_contended_error().kind() {
            return Err(io(e));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(DataDirLockError::InUse {
            dir: dir.to_owned(),
            holder: if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            },
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_at_once_naming_the_dir_and_holder_and_a_released_lock_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = lock_data_dir(&data).unwrap();
        // flock locks belong to the open file, so a second open in this process contends too.
        let err = lock_data_dir(&data).unwrap_err().to_string();
        assert!(err.contains(&data.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        lock_data_dir(&data).unwrap();
    }
}
