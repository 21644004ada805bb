//! The file operations storage performs, behind a trait so that tests can put a layer under
//! storage that injects I/O errors (EIO, ENOSPC, short writes) and simulates crashes that keep
//! only what was synced plus a torn prefix of the rest (see `sim.rs`, test builds only).
//!
//! [`OsFs`] is the real thing: `std::fs` with positional I/O. Every path storage opens,
//! writes, syncs, renames or removes goes through an [`Fs`]; nothing in storage calls `std::fs`
//! directly except [`OsFs`] (sled, the state store, manages its own files).

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How [`StorageFs::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it; fail with `AlreadyExists` if it is there.
    CreateNew,
    /// Create it, or empty it if it is there.
    Truncate,
    /// Open an existing file; fail with `NotFound` if it is not there.
    Existing,
}

/// One open file: positional reads and writes, so `&self` suffices and reads can run
/// concurrently.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads into `buf` at `offset`; returns how many bytes were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset` (a failure may leave part of it written).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `bufs`, one after the other, at `offset`, as [`StorageFile::write_all_at`]
    /// of their concatenation would (a failure may leave part of them written). The operating
    /// system's files write them with `pwritev`, without gathering them first; this default
    /// (a test layer's) gathers them into one buffer.
    fn write_vectored_all_at(&self, bufs: &[io::IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut all = Vec::with_capacity(bufs.iter().map(|b| b.len()).sum());
        for buf in bufs {
            all.extend_from_slice(buf);
        }
        self.write_all_at(&all, offset)
    }
    /// Cuts or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: after `Ok`, everything written survives a crash. After an `Err`, nothing
    /// written since the last successful sync may be trusted, on this handle or any other.
    fn sync_data(&self) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// The directory operations storage performs.
pub trait StorageFs: Send + Sync + fmt::Debug {
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The names of the entries of `dir` (files and directories), in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` for reading and writing.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>>;
    /// Removes the file `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes the directory `path` and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` (replacing `to`; durable once both parents are synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsyncs the directory `dir`, making its entries (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Called before the state store in `dir` (sled, which does its own I/O) flushes: an error
    /// fails that flush. Nothing to check on a real disk; a fault-injecting layer fails it.
    fn check_state_flush(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// A shared file layer.
pub type Fs = Arc<dyn StorageFs>;

/// The operating system's files.
pub fn os() -> Fs {
    Arc::new(OsFs)
}

/// [`StorageFs`] over `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

#[derive(Debug)]
struct OsFile(std::fs::File);

impl StorageFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn write_vectored_all_at(&self, bufs: &[io::IoSlice<'_>], offset: u64) -> io::Result<()> {
        pwritev_all(&self.0, bufs, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// Most buffers one `pwritev` takes (the kernel's `IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// Writes all of `bufs` at `offset` with `pwritev`, at most [`IOV_MAX`] buffers a call, going
/// on after a short write and retrying an interrupted one.
fn pwritev_all(file: &std::fs::File, bufs: &[io::IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut bufs: Vec<io::IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).copied().collect();
    let mut rest = &mut bufs[..];
    while !rest.is_empty() {
        let count = rest.len().min(IOV_MAX);
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` (std guarantees it on Unix), the
        // first `count` slices are valid for reads for the duration of the call, and the fd
        // is open (borrowed from `file`).
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                at,
            )
        };
        match n {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                offset += n as u64;
                io::IoSlice::advance_slices(&mut rest, n as usize);
            }
        }
    }
    Ok(())
}

impl StorageFs for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true);
        match mode {
            OpenMode::CreateNew => opts.create_new(true),
            OpenMode::Truncate => opts.create(true).truncate(true),
            OpenMode::Existing => &mut opts,
        };
        Ok(Box::new(OsFile(opts.open(path)?)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Reads exactly `buf.len()` bytes at `offset` (`UnexpectedEof` if the file ends first).
pub(crate) fn read_exact_at(
    file: &dyn StorageFile,
    mut buf: &mut [u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file ended before the bytes expected",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The whole content of `path`: `Ok(None)` when it does not exist, `InvalidData` when it is
/// longer than `max_len` (not read).
pub(crate) fn read_file(
    fs: &dyn StorageFs,
    path: &Path,
    max_len: u64,
) -> io::Result<Option<Vec<u8>>> {
    let file = match fs.open(path, OpenMode::Existing) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.size()?;
    if len > max_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is {len} bytes, more than {max_len}", path.display()),
        ));
    }
    let mut bytes = vec![0; len as usize];
    read_exact_at(file.as_ref(), &mut bytes, 0)?;
    Ok(Some(bytes))
}

/// Writes `bytes` to `path` atomically: to `path.tmp` first, fdatasync, rename over `path`,
/// fsync the directory. After `Ok` the new content is durable; after a crash at any point
/// `path` holds either the old content or the new one, never a mix.
pub(crate) fn write_atomic(fs: &dyn StorageFs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let file = fs.open(&tmp, OpenMode::Truncate)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

/// Removes `path`; `Ok(false)` when it was not there.
pub(crate) fn remove_if_present(fs: &dyn StorageFs, path: &Path) -> io::Result<bool> {
    match fs.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use super::*;

    #[test]
    fn a_vectored_write_of_more_buffers_than_iov_max_lands_in_order_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = os().open(&path, OpenMode::Truncate).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        let pieces: Vec<Vec<u8>> = (0..IOV_MAX * 2 + 7)
            .map(|i| vec![(i % 251) as u8; i % 5])
            .collect();
        let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        file.write_vectored_all_at(&slices, 4).unwrap();
        let expected: Vec<u8> = b"head".iter().copied().chain(pieces.concat()).collect();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }
}
