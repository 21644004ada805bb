//! A file layer that fails on command, for fault-injection tests of a running broker
//! ([`crate::broker::Broker::open_on`]): it passes everything to the OS until told to make
//! writes, reads or fdatasyncs under some directory, or the state store's flushes, fail with
//! ENOSPC or EIO.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::fs::{OpenMode, OsFs, StorageFile, StorageFs};

/// An error to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `ENOSPC`: the filesystem is full.
    NoSpace,
    /// `EIO`: the device failed.
    Io,
}

impl Fault {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Fault::NoSpace => 28,
            Fault::Io => 5,
        })
    }
}

#[derive(Debug, Default)]
struct Plan {
    /// Only files under this directory fail (all files when `None`).
    under: Option<PathBuf>,
    writes: Option<Fault>,
    syncs: Option<Fault>,
    reads: Option<Fault>,
    /// Files (by inode) whose every read fails with EIO: a bad sector follows its file through
    /// a rename, and a new file at the same path reads fine.
    bad_inodes: Vec<u64>,
    state_flushes: Option<Fault>,
}

/// [`StorageFs`] over the OS that fails writes or syncs while told to. Cheap to share.
#[derive(Debug, Clone, Default)]
pub struct FaultyFs {
    plan: Arc<Mutex<Plan>>,
}

impl FaultyFs {
    /// A layer that fails nothing yet.
    pub fn new() -> FaultyFs {
        FaultyFs::default()
    }

    /// From now on, every write (`write_all_at`, `set_len` growing a file) to a file under
    /// `under` fails with `fault`; `None` stops that.
    pub fn fail_writes(&self, under: &Path, fault: Option<Fault>) {
        let mut plan = self.lock();
        plan.under = Some(under.to_path_buf());
        plan.writes = fault;
    }

    /// From now on, every `sync_data` of a file under `under` fails with `fault`; `None` stops
    /// that.
    pub fn fail_syncs(&self, under: &Path, fault: Option<Fault>) {
        let mut plan = self.lock();
        plan.under = Some(under.to_path_buf());
        plan.syncs = fault;
    }

    /// From now on, every read (`read_at`) of a file under `under` fails with `fault`; `None`
    /// stops that.
    pub fn fail_reads(&self, under: &Path, fault: Option<Fault>) {
        let mut plan = self.lock();
        plan.under = Some(under.to_path_buf());
        plan.reads = fault;
    }

    /// From now on, every read of the file now at `path` fails with EIO, wherever it is renamed
    /// to (a bad sector); a new file created at `path` afterwards reads fine.
    pub fn fail_reads_of_file(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(path)?.ino();
        self.lock().bad_inodes.push(ino);
        Ok(())
    }

    /// From now on, every flush of the state store fails with `fault`; `None` stops that.
    pub fn fail_state_flushes(&self, fault: Option<Fault>) {
        self.lock().state_flushes = fault;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One file opened through a [`FaultyFs`].
#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn StorageFile>,
    path: PathBuf,
    /// The file's inode when it was opened.
    ino: u64,
    plan: Arc<Mutex<Plan>>,
}

impl FaultyFile {
    /// The fault `pick` chooses from the plan, if this file is under the plan's directory.
    fn fault(&self, pick: fn(&Plan) -> Option<Fault>) -> io::Result<()> {
        let plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        let applies = plan.under.as_ref().is_none_or(|d| self.path.starts_with(d));
        match pick(&plan) {
            Some(fault) if applies => Err(fault.error()),
            _ => Ok(()),
        }
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.fault(|p| p.reads)?;
        if self
            .plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bad_inodes
            .contains(&self.ino)
        {
            return Err(Fault::Io.error());
        }
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fault(|p| p.writes)?;
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fault(|p| p.syncs)?;
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl StorageFs for FaultyFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        OsFs.is_dir(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        OsFs.list(dir)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        use std::os::unix::fs::MetadataExt;
        let inner = OsFs.open(path, mode)?;
        Ok(Box::new(FaultyFile {
            ino: std::fs::metadata(path).map_or(0, |m| m.ino()),
            inner,
            path: path.to_path_buf(),
            plan: self.plan.clone(),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_dir(dir)
    }
    fn check_state_flush(&self, _dir: &Path) -> io::Result<()> {
        match self.lock().state_flushes {
            Some(fault) => Err(fault.error()),
            None => Ok(()),
        }
    }
}
