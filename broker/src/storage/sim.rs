//! `SimFs`: an in-memory [`StorageFs`] that knows what was synced, for crash simulation and
//! fault injection in tests (test builds only).
//!
//! Every file is an inode with two contents: what the program sees, and what is durable (as of
//! its last successful `sync_data`). Every directory is an inode with the entries the program
//! sees, the durable entries (as of its last successful `sync_dir`) and the ordered list of
//! changes since then (creations, removals, renames). [`SimFs::crash`] returns the file system
//! as after a power loss: each file keeps its durable content plus a random prefix of the bytes
//! it was extended with since (torn at a random byte), and each unsynced directory change is
//! kept or undone at random ([`DirCrash`] says whether independently or as an ordered prefix).
//! A rename is one change: kept or undone as a whole. A directory whose own entry is undone
//! vanishes with everything in it.
//!
//! Faults: [`SimFs::inject`] makes the n-th call (from now) of one [`Op`] fail with EIO, ENOSPC,
//! or — for writes — a short write (part of the buffer written, then ENOSPC), once or from then
//! on. [`SimFs::arm_crash`] takes the crash image just before the n-th mutating call (from now),
//! so a crash can hit the middle of an operation.
//!
//! Paths must be absolute; `..` is not interpreted. A cross-directory rename is recorded as two
//! independent changes (one per directory). Reads never fail.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::fs::{Fs, OpenMode, StorageFile, StorageFs};

/// A small seeded PRNG (SplitMix64): reproducible, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct SimRng(u64);

impl SimRng {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> SimRng {
        SimRng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent / 100`.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The kinds of calls faults can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Op {
    /// `StorageFile::write_all_at`.
    Write,
    /// `StorageFile::sync_data`.
    SyncData,
    /// `StorageFs::rename`.
    Rename,
    /// `StorageFs::sync_dir`.
    SyncDir,
    /// `StorageFs::open` (any mode) and `create_dir_all`.
    Open,
    /// `StorageFs::remove_file` and `remove_dir_all`.
    Remove,
    /// `StorageFile::set_len`.
    SetLen,
}

impl Op {
    /// Every kind.
    pub(crate) const ALL: [Op; 7] = [
        Op::Write,
        Op::SyncData,
        Op::Rename,
        Op::SyncDir,
        Op::Open,
        Op::Remove,
        Op::SetLen,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The call fails with EIO (raw os error 5) and changes nothing.
    Eio,
    /// The call fails with ENOSPC (raw os error 28, kind `StorageFull`) and changes nothing.
    Enospc,
    /// A write stores the first `keep` bytes of its buffer (at most all but one) and then fails
    /// with ENOSPC. On any other call: like [`Fault::Eio`].
    ShortWrite {
        /// Bytes written before the failure.
        keep: usize,
    },
    /// A `sync_data` fails with EIO and the kernel drops the dirty pages it could not write
    /// (Linux since 4.13: they are marked clean, reads still see them from the page cache, a
    /// later `sync_data` returns Ok without writing them). The bytes past the durable length
    /// at the failure never become durable unless written again. On any other call: like
    /// [`Fault::Eio`].
    EioLosePages,
}

impl Fault {
    fn error(self) -> io::Error {
        match self {
            Fault::Eio | Fault::EioLosePages => io::Error::from_raw_os_error(libc::EIO),
            Fault::Enospc | Fault::ShortWrite { .. } => io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }
}

/// How a crash treats the unsynced changes of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirCrash {
    /// Each change is kept or undone independently (the weakest guarantee POSIX gives).
    Independent,
    /// A random prefix of the changes, in order, is kept (what a journaling file system does).
    Prefix,
}

#[derive(Debug, Clone, Copy)]
struct Injection {
    op: Op,
    /// The call count of `op` at which it fires.
    at: u64,
    fault: Fault,
    /// Fails every call of `op` from `at` on.
    sticky: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(usize),
    Dir(usize),
}

/// One directory change: `name` now maps to `to` (`None`: removed).
#[derive(Debug, Clone)]
struct Change {
    sets: Vec<(String, Option<Entry>)>,
}

#[derive(Debug, Clone, Default)]
struct DirNode {
    seen: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
    pending: Vec<Change>,
}

#[derive(Debug, Clone, Default)]
struct FileNode {
    seen: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges whose pages a failed sync dropped: still seen, never written (a write over
    /// them clears them).
    lost: Vec<(usize, usize)>,
}

impl FileNode {
    /// What a successful `sync_data` makes durable: what is seen, except dropped pages, which
    /// hold what the disk had there before (zeros past its old end).
    fn synced(&self) -> Vec<u8> {
        let mut out = self.seen.clone();
        for &(from, to) in &self.lost {
            for (i, b) in out.iter_mut().enumerate().take(to).skip(from) {
                *b = self.durable.get(i).copied().unwrap_or(0);
            }
        }
        out
    }

    /// A write of `len` bytes at `offset`: those bytes are no longer lost.
    fn rewritten(&mut self, offset: usize, len: usize) {
        let end = offset + len;
        let mut kept = Vec::new();
        for &(from, to) in &self.lost {
            if to <= offset || from >= end {
                kept.push((from, to));
            } else {
                if from < offset {
                    kept.push((from, offset));
                }
                if to > end {
                    kept.push((end, to));
                }
            }
        }
        self.lost = kept;
    }
}

#[derive(Debug, Clone)]
struct State {
    files: Vec<FileNode>,
    dirs: Vec<DirNode>,
    calls: [u64; 7],
    injections: Vec<Injection>,
    faults_fired: u64,
    /// Mutating calls so far (any kind).
    mutations: u64,
    crash_at: Option<u64>,
    /// The image taken when `crash_at` was reached (the state before that call).
    frozen: Option<Box<State>>,
}

impl State {
    fn new() -> State {
        State {
            files: Vec::new(),
            dirs: vec![DirNode::default()],
            calls: [0; 7],
            injections: Vec::new(),
            faults_fired: 0,
            mutations: 0,
            crash_at: None,
            frozen: None,
        }
    }

    /// Counts a call of `op` (a mutation) and returns the fault to inject into it, if any.
    fn call(&mut self, op: Op) -> Option<Fault> {
        self.mutations += 1;
        if self.crash_at == Some(self.mutations) && self.frozen.is_none() {
            let mut image = self.clone();
            image.frozen = None;
            self.frozen = Some(Box::new(image));
        }
        let n = &mut self.calls[op.index()];
        *n += 1;
        let n = *n;
        let hit = self
            .injections
            .iter()
            .find(|i| i.op == op && (i.at == n || (i.sticky && n >= i.at)))
            .map(|i| i.fault);
        if hit.is_some() {
            self.faults_fired += 1;
        }
        hit
    }

    fn components(path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => names.push(
                    n.to_str()
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not UTF-8"))?
                        .to_owned(),
                ),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("SimFs: unsupported path {}", path.display()),
                    ))
                }
            }
        }
        if !path.has_root() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("SimFs: path {} is not absolute", path.display()),
            ));
        }
        Ok(names)
    }

    /// The entry at `path` (the root is `Dir(0)`).
    fn resolve(&self, path: &Path) -> io::Result<Entry> {
        let mut at = Entry::Dir(0);
        for name in Self::components(path)? {
            let Entry::Dir(d) = at else {
                return Err(not_found(path));
            };
            at = *self.dirs[d]
                .seen
                .get(&name)
                .ok_or_else(|| not_found(path))?;
        }
        Ok(at)
    }

    /// The directory holding `path` and `path`'s last name.
    fn parent(&self, path: &Path) -> io::Result<(usize, String)> {
        let mut names = Self::components(path)?;
        let name = names.pop().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "SimFs: the root has no parent")
        })?;
        let parent: PathBuf = std::iter::once("/".to_owned()).chain(names).collect();
        match self.resolve(&parent)? {
            Entry::Dir(d) => Ok((d, name)),
            Entry::File(_) => Err(not_found(path)),
        }
    }

    fn change(&mut self, dir: usize, sets: Vec<(String, Option<Entry>)>) {
        let node = &mut self.dirs[dir];
        for (name, to) in &sets {
            match to {
                Some(e) => node.seen.insert(name.clone(), *e),
                None => node.seen.remove(name),
            };
        }
        node.pending.push(Change { sets });
    }

    /// The state after a power loss.
    fn crashed(&self, rng: &mut SimRng, mode: DirCrash) -> State {
        let files = self
            .files
            .iter()
            .map(|f| {
                let mut content = f.durable.clone();
                // Bytes past the durable length may have reached the disk, in order, up to a
                // tear; unsynced overwrites of durable bytes (or truncations) are lost.
                if f.seen.len() > f.durable.len() {
                    let extra = f.seen.len() - f.durable.len();
                    let keep = rng.below(extra as u64 + 1) as usize;
                    content.extend_from_slice(&f.seen[f.durable.len()..f.durable.len() + keep]);
                }
                FileNode {
                    seen: content.clone(),
                    durable: content,
                    lost: Vec::new(),
                }
            })
            .collect();
        let dirs = self
            .dirs
            .iter()
            .map(|d| {
                let mut entries = d.durable.clone();
                let cut = rng.below(d.pending.len() as u64 + 1) as usize;
                for (i, change) in d.pending.iter().enumerate() {
                    let keep = match mode {
                        DirCrash::Independent => rng.chance(50),
                        DirCrash::Prefix => i < cut,
                    };
                    if keep {
                        for (name, to) in &change.sets {
                            match to {
                                Some(e) => entries.insert(name.clone(), *e),
                                None => entries.remove(name),
                            };
                        }
                    }
                }
                DirNode {
                    seen: entries.clone(),
                    durable: entries,
                    pending: Vec::new(),
                }
            })
            .collect();
        // The fault plan spans crashes: call counts go on, and injections yet to fire stay (a
        // sticky one that already fired is dropped, so the crashed disk works again).
        let calls = self.calls;
        let injections = self
            .injections
            .iter()
            .filter(|i| calls[i.op.index()] < i.at)
            .copied()
            .collect();
        State {
            files,
            dirs,
            calls,
            injections,
            faults_fired: self.faults_fired,
            mutations: 0,
            crash_at: None,
            frozen: None,
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("SimFs: {} not found", path.display()),
    )
}

/// The in-memory file system (a cheap handle: clones share it).
#[derive(Debug, Clone)]
pub(crate) struct SimFs {
    state: Arc<Mutex<State>>,
    dir_crash: DirCrash,
}

impl SimFs {
    /// Removes the entry `path` (a directory with everything in it when `dir`, else a file):
    /// an unsynced directory change, like every other.
    fn remove(&self, path: &Path, dir: bool) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(f) = state.call(Op::Remove) {
            return Err(f.error());
        }
        let (parent, name) = state.parent(path)?;
        match (state.dirs[parent].seen.get(&name), dir) {
            (Some(Entry::File(_)), false) | (Some(Entry::Dir(_)), true) => {
                state.change(parent, vec![(name, None)]);
                Ok(())
            }
            (Some(Entry::Dir(_)), false) => Err(io::Error::other("is a directory")),
            (Some(Entry::File(_)), true) => Err(io::Error::other("not a directory")),
            (None, _) => Err(not_found(path)),
        }
    }

    /// An empty file system (just `/`) whose crashes treat directories as `dir_crash` says.
    pub(crate) fn new(dir_crash: DirCrash) -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(State::new())),
            dir_crash,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This file system as an [`Fs`] for storage.
    pub(crate) fn fs(&self) -> Fs {
        Arc::new(self.clone())
    }

    /// The file system as after a power loss now — or, if [`SimFs::arm_crash`] fired, at the
    /// moment it fired. Open handles of `self` keep working on `self`, not on the result. The
    /// fault plan carries over: call counts continue and faults yet to fire stay armed.
    pub(crate) fn crash(&self, rng: &mut SimRng) -> SimFs {
        let state = self.lock();
        let image = state.frozen.as_deref().unwrap_or(&state);
        SimFs {
            state: Arc::new(Mutex::new(image.crashed(rng, self.dir_crash))),
            dir_crash: self.dir_crash,
        }
    }

    /// Makes the `nth` call of `op` from now on (1 = the next one) fail with `fault`; if
    /// `sticky`, every later call of `op` too.
    pub(crate) fn inject(&self, op: Op, nth: u64, fault: Fault, sticky: bool) {
        let mut state = self.lock();
        let at = state.calls[op.index()] + nth.max(1);
        state.injections.push(Injection {
            op,
            at,
            fault,
            sticky,
        });
    }

    /// Removes every injected fault (counts are kept).
    pub(crate) fn clear_faults(&self) {
        self.lock().injections.clear();
    }

    /// How many calls failed by injection so far.
    pub(crate) fn faults_fired(&self) -> u64 {
        self.lock().faults_fired
    }

    /// How many calls of `op` were made so far.
    pub(crate) fn calls(&self, op: Op) -> u64 {
        self.lock().calls[op.index()]
    }

    /// Takes the crash image just before the `nth` mutating call (of any kind) from now; a later
    /// [`SimFs::crash`] starts from that image.
    pub(crate) fn arm_crash(&self, nth: u64) {
        let mut state = self.lock();
        state.crash_at = Some(state.mutations + nth.max(1));
        state.frozen = None;
    }

    /// Whether the armed crash point was reached.
    pub(crate) fn crash_fired(&self) -> bool {
        self.lock().frozen.is_some()
    }

    /// Creates `dir` (and its parents) and makes every directory entry on the way durable.
    pub(crate) fn create_dir_durable(&self, dir: &Path) {
        self.create_dir_all(dir).expect("create_dir_all");
        let mut path = PathBuf::from("/");
        self.sync_dir(&path).expect("sync /");
        for c in State::components(dir).expect("path") {
            path.push(c);
            self.sync_dir(&path).expect("sync_dir");
        }
    }

    /// The content of the file at `path` as the program sees it.
    pub(crate) fn content(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        match state.resolve(path)? {
            Entry::File(f) => Ok(state.files[f].seen.clone()),
            Entry::Dir(_) => Err(io::Error::other("a directory")),
        }
    }
}

impl StorageFs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(f) = state.call(Op::Open) {
            return Err(f.error());
        }
        let mut at = 0;
        for name in State::components(dir)? {
            at = match state.dirs[at].seen.get(&name) {
                Some(Entry::Dir(d)) => *d,
                Some(Entry::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("SimFs: {name} is a file"),
                    ))
                }
                None => {
                    let d = state.dirs.len();
                    state.dirs.push(DirNode::default());
                    state.change(at, vec![(name, Some(Entry::Dir(d)))]);
                    d
                }
            };
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        matches!(self.lock().resolve(path), Ok(Entry::Dir(_)))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        match state.resolve(dir)? {
            Entry::Dir(d) => Ok(state.dirs[d].seen.keys().cloned().collect()),
            Entry::File(_) => Err(io::Error::other("not a directory")),
        }
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.lock();
        if let Some(f) = state.call(Op::Open) {
            return Err(f.error());
        }
        let (dir, name) = state.parent(path)?;
        let ino = match (state.dirs[dir].seen.get(&name).copied(), mode) {
            (Some(Entry::Dir(_)), _) => return Err(io::Error::other("is a directory")),
            (Some(Entry::File(_)), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("SimFs: {} exists", path.display()),
                ))
            }
            (Some(Entry::File(f)), OpenMode::Truncate) => {
                state.files[f].seen.clear();
                f
            }
            (Some(Entry::File(f)), OpenMode::Existing) => f,
            (None, OpenMode::Existing) => return Err(not_found(path)),
            (None, OpenMode::CreateNew | OpenMode::Truncate) => {
                let f = state.files.len();
                state.files.push(FileNode::default());
                state.change(dir, vec![(name, Some(Entry::File(f)))]);
                f
            }
        };
        Ok(Box::new(SimFile {
            state: self.state.clone(),
            ino,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.remove(path, false)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.remove(path, true)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(f) = state.call(Op::Rename) {
            return Err(f.error());
        }
        let (from_dir, from_name) = state.parent(from)?;
        let (to_dir, to_name) = state.parent(to)?;
        let entry = *state.dirs[from_dir]
            .seen
            .get(&from_name)
            .ok_or_else(|| not_found(from))?;
        if from_dir == to_dir {
            if from_name != to_name {
                state.change(from_dir, vec![(from_name, None), (to_name, Some(entry))]);
            }
        } else {
            state.change(from_dir, vec![(from_name, None)]);
            state.change(to_dir, vec![(to_name, Some(entry))]);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(f) = state.call(Op::SyncDir) {
            return Err(f.error());
        }
        match state.resolve(dir)? {
            Entry::Dir(d) => {
                let node = &mut state.dirs[d];
                node.durable = node.seen.clone();
                node.pending.clear();
                Ok(())
            }
            Entry::File(_) => Err(io::Error::other("not a directory")),
        }
    }
}

/// An open [`SimFs`] file.
#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: usize,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_into(content: &mut Vec<u8>, buf: &[u8], offset: u64) {
    let offset = offset as usize;
    let end = offset + buf.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset..end].copy_from_slice(buf);
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.lock();
        let content = &state.files[self.ino].seen;
        let Ok(offset) = usize::try_from(offset) else {
            return Ok(0);
        };
        if offset >= content.len() {
            return Ok(0);
        }
        let n = buf.len().min(content.len() - offset);
        buf[..n].copy_from_slice(&content[offset..offset + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.lock();
        let fault = state.call(Op::Write);
        let file = &mut state.files[self.ino];
        let written = match fault {
            None => buf.len(),
            Some(Fault::ShortWrite { keep }) => keep.min(buf.len().saturating_sub(1)),
            Some(_) => 0,
        };
        write_into(&mut file.seen, &buf[..written], offset);
        file.rewritten(offset as usize, written);
        match fault {
            None => Ok(()),
            Some(f) => Err(f.error()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(f) = state.call(Op::SetLen) {
            return Err(f.error());
        }
        state.files[self.ino].seen.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.lock();
        let fault = state.call(Op::SyncData);
        let file = &mut state.files[self.ino];
        match fault {
            None => {
                file.durable = file.synced();
                Ok(())
            }
            Some(f @ Fault::EioLosePages) => {
                // Every byte written since the last sync (approximated as everything past the
                // durable length, and every byte that differs from it) is dropped.
                let n = file.seen.len();
                let first_diff = (0..n)
                    .find(|&i| file.durable.get(i) != Some(&file.seen[i]))
                    .unwrap_or(n);
                if first_diff < n {
                    file.lost.push((first_diff, n));
                }
                Err(f.error())
            }
            Some(f) => Err(f.error()),
        }
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.lock().files[self.ino].seen.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::{read_file, write_atomic};

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn write_file(fs: &SimFs, path: &str, bytes: &[u8]) -> Box<dyn StorageFile> {
        let f = fs.open(&p(path), OpenMode::Truncate).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    /// A layer holding the durable directory `/d` and in it the file `/d/f` with `content`,
    /// synced (data and entry).
    fn durable_file(content: &[u8]) -> (SimFs, Box<dyn StorageFile>) {
        let fs = SimFs::new(DirCrash::Independent);
        fs.create_dir_durable(&p("/d"));
        let f = write_file(&fs, "/d/f", content);
        f.sync_data().unwrap();
        fs.sync_dir(&p("/d")).unwrap();
        (fs, f)
    }

    #[test]
    fn files_read_back_what_was_written_and_modes_behave() {
        let fs = SimFs::new(DirCrash::Independent);
        fs.create_dir_all(&p("/a/b")).unwrap();
        assert!(fs.is_dir(&p("/a/b")));
        assert!(!fs.is_dir(&p("/a/c")));
        let f = write_file(&fs, "/a/b/x", b"hello");
        f.write_all_at(b"!!", 7).unwrap();
        assert_eq!(fs.content(&p("/a/b/x")).unwrap(), b"hello\0\0!!");
        assert_eq!(f.size().unwrap(), 9);
        let mut buf = [0u8; 4];
        assert_eq!(f.read_at(&mut buf, 7).unwrap(), 2);
        assert_eq!(&buf[..2], b"!!");
        f.set_len(3).unwrap();
        assert_eq!(fs.content(&p("/a/b/x")).unwrap(), b"hel");
        let err = fs.open(&p("/a/b/x"), OpenMode::CreateNew).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let err = fs.open(&p("/a/b/y"), OpenMode::Existing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(fs.list(&p("/a/b")).unwrap(), vec!["x".to_owned()]);
        fs.rename(&p("/a/b/x"), &p("/a/b/y")).unwrap();
        assert_eq!(fs.list(&p("/a/b")).unwrap(), vec!["y".to_owned()]);
        fs.remove_file(&p("/a/b/y")).unwrap();
        assert!(fs.list(&p("/a/b")).unwrap().is_empty());
        assert_eq!(
            fs.remove_file(&p("/a/b/y")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        fs.remove_dir_all(&p("/a")).unwrap();
        assert!(!fs.is_dir(&p("/a/b")));
    }

    #[test]
    fn synced_content_and_entries_survive_every_crash() {
        for seed in 0..200 {
            let mut rng = SimRng::new(seed);
            let (fs, f) = durable_file(b"durable");
            f.write_all_at(b"+more", 7).unwrap();
            let after = fs.crash(&mut rng);
            let got = after.content(&p("/d/f")).unwrap();
            assert!(got.starts_with(b"durable"), "seed {seed}: {got:?}");
            assert!(b"durable+more".starts_with(&got), "seed {seed}: {got:?}");
        }
    }

    #[test]
    fn unsynced_tail_is_torn_at_every_length() {
        let mut lengths = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let mut rng = SimRng::new(seed);
            let (fs, f) = durable_file(b"ab");
            f.write_all_at(b"cdefg", 2).unwrap();
            lengths.insert(fs.crash(&mut rng).content(&p("/d/f")).unwrap().len());
        }
        assert_eq!(lengths, (2..=7).collect());
    }

    #[test]
    fn unsynced_truncation_and_rewrite_are_undone() {
        for seed in 0..50 {
            let mut rng = SimRng::new(seed);
            let (fs, f) = durable_file(b"0123456789");
            f.set_len(4).unwrap();
            assert_eq!(
                fs.crash(&mut rng).content(&p("/d/f")).unwrap(),
                b"0123456789"
            );
            f.write_all_at(b"XY", 0).unwrap();
            assert_eq!(
                fs.crash(&mut rng).content(&p("/d/f")).unwrap(),
                b"0123456789",
                "seed {seed}"
            );
        }
    }

    #[test]
    fn unsynced_directory_changes_are_kept_or_undone_and_synced_ones_stay() {
        let (mut created_kept, mut created_lost, mut removal_undone) = (0, 0, 0);
        for seed in 0..200 {
            let mut rng = SimRng::new(seed);
            let fs = SimFs::new(DirCrash::Independent);
            fs.create_dir_durable(&p("/d"));
            let old = write_file(&fs, "/d/old", b"o");
            old.sync_data().unwrap();
            fs.sync_dir(&p("/d")).unwrap();
            let new = write_file(&fs, "/d/new", b"n");
            new.sync_data().unwrap();
            fs.remove_file(&p("/d/old")).unwrap();
            let after = fs.crash(&mut rng);
            let names = after.list(&p("/d")).unwrap();
            if names.contains(&"new".to_owned()) {
                created_kept += 1;
                assert_eq!(after.content(&p("/d/new")).unwrap(), b"n");
            } else {
                created_lost += 1;
            }
            if names.contains(&"old".to_owned()) {
                removal_undone += 1;
                assert_eq!(after.content(&p("/d/old")).unwrap(), b"o");
            }
            // Once synced, the directory is as seen in every crash.
            fs.sync_dir(&p("/d")).unwrap();
            let after = fs.crash(&mut rng);
            assert_eq!(after.list(&p("/d")).unwrap(), vec!["new".to_owned()]);
        }
        assert!(created_kept > 0 && created_lost > 0 && removal_undone > 0);
    }

    #[test]
    fn an_unsynced_new_directory_may_vanish_with_its_files() {
        let mut vanished = 0;
        for seed in 0..100 {
            let mut rng = SimRng::new(seed);
            let fs = SimFs::new(DirCrash::Independent);
            fs.create_dir_all(&p("/d/e")).unwrap();
            let f = write_file(&fs, "/d/e/f", b"x");
            f.sync_data().unwrap();
            fs.sync_dir(&p("/d/e")).unwrap();
            let after = fs.crash(&mut rng);
            if !after.is_dir(&p("/d/e")) {
                vanished += 1;
                assert!(read_file(&after, &p("/d/e/f"), 100).unwrap().is_none());
            } else {
                assert_eq!(after.content(&p("/d/e/f")).unwrap(), b"x");
            }
        }
        assert!(vanished > 0);
    }

    #[test]
    fn write_atomic_gives_old_or_new_after_any_crash_point() {
        for mode in [DirCrash::Independent, DirCrash::Prefix] {
            for seed in 0..100u64 {
                let mut rng = SimRng::new(seed);
                let fs = SimFs::new(mode);
                fs.create_dir_durable(&p("/d"));
                write_atomic(&fs, &p("/d/cfg"), b"old content").unwrap();
                // Crash before any of the (at most 5) mutations write_atomic makes.
                fs.arm_crash(rng.range(1, 6));
                write_atomic(&fs, &p("/d/cfg"), b"new").unwrap();
                let after = fs.crash(&mut rng);
                let got = after.content(&p("/d/cfg")).unwrap();
                assert!(
                    got == b"old content" || got == b"new",
                    "{mode:?} seed {seed}: {got:?}"
                );
                // After it returned, the new content is durable.
                assert_eq!(fs.clone().crash_fresh(&mut rng), b"new");
            }
        }
    }

    impl SimFs {
        /// Content of /d/cfg after a crash now (ignoring an armed crash point).
        fn crash_fresh(self, rng: &mut SimRng) -> Vec<u8> {
            self.lock().frozen = None;
            self.crash(rng).content(&p("/d/cfg")).unwrap()
        }
    }

    #[test]
    fn prefix_mode_keeps_changes_in_order() {
        for seed in 0..100 {
            let mut rng = SimRng::new(seed);
            let fs = SimFs::new(DirCrash::Prefix);
            fs.create_dir_durable(&p("/d"));
            for name in ["a", "b", "c", "d"] {
                write_file(&fs, &format!("/d/{name}"), b"");
            }
            let names = fs.crash(&mut rng).list(&p("/d")).unwrap();
            let want: Vec<String> = ["a", "b", "c", "d"][..names.len()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            assert_eq!(names, want, "seed {seed}");
        }
    }

    #[test]
    fn injected_faults_fail_the_chosen_call_only() {
        let fs = SimFs::new(DirCrash::Independent);
        fs.create_dir_durable(&p("/d"));
        let f = write_file(&fs, "/d/f", b"");
        fs.inject(Op::Write, 2, Fault::Eio, false);
        f.write_all_at(b"one", 0).unwrap();
        let err = f.write_all_at(b"two", 3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        f.write_all_at(b"three", 3).unwrap();
        assert_eq!(fs.content(&p("/d/f")).unwrap(), b"onethree");
        assert_eq!(fs.faults_fired(), 1);

        fs.inject(Op::SyncData, 1, Fault::Enospc, false);
        let err = f.sync_data().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        // The failed sync made nothing durable.
        let mut rng = SimRng::new(1);
        let after = fs.crash(&mut rng).content(&p("/d/f")).unwrap();
        assert!(b"onethree".starts_with(&after));
        f.sync_data().unwrap();

        fs.inject(Op::Write, 1, Fault::ShortWrite { keep: 2 }, false);
        let err = f.write_all_at(b"XYZ", 8).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(fs.content(&p("/d/f")).unwrap(), b"onethreeXY");

        for (op, call) in [
            (Op::Rename, 0),
            (Op::SyncDir, 1),
            (Op::Open, 2),
            (Op::Remove, 3),
            (Op::SetLen, 4),
        ] {
            let before = fs.calls(op);
            fs.inject(op, 1, Fault::Eio, true);
            let attempt = || match call {
                0 => fs.rename(&p("/d/f"), &p("/d/g")),
                1 => fs.sync_dir(&p("/d")),
                2 => fs.open(&p("/d/h"), OpenMode::CreateNew).map(drop),
                3 => fs.remove_file(&p("/d/f")),
                _ => f.set_len(0),
            };
            assert!(attempt().is_err(), "{op:?}");
            assert_eq!(fs.calls(op), before + 1);
            // Sticky: the next call fails too.
            assert!(attempt().is_err(), "{op:?} sticky");
        }
        // None of the failed calls changed anything.
        assert_eq!(fs.list(&p("/d")).unwrap(), vec!["f".to_owned()]);
        assert_eq!(fs.content(&p("/d/f")).unwrap(), b"onethreeXY");
        fs.clear_faults();
        f.set_len(0).unwrap();
    }

    #[test]
    fn pages_dropped_by_a_failed_sync_never_become_durable_unless_rewritten() {
        let (fs, f) = durable_file(b"abc");
        f.write_all_at(b"def", 3).unwrap();
        fs.inject(Op::SyncData, 1, Fault::EioLosePages, false);
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        // Still seen; a later sync "succeeds" without writing the dropped bytes.
        assert_eq!(fs.content(&p("/d/f")).unwrap(), b"abcdef");
        f.write_all_at(b"gh", 6).unwrap();
        f.sync_data().unwrap();
        let after = fs.crash(&mut SimRng::new(0));
        assert_eq!(after.content(&p("/d/f")).unwrap(), b"abc\0\0\0gh");
        // Written again, they are durable.
        f.write_all_at(b"DE", 3).unwrap();
        f.sync_data().unwrap();
        let after = fs.crash(&mut SimRng::new(0));
        assert_eq!(after.content(&p("/d/f")).unwrap(), b"abcDE\0gh");
    }

    #[test]
    fn armed_crash_takes_the_image_before_the_chosen_call() {
        let (fs, f) = durable_file(b"abc");
        fs.arm_crash(2);
        f.write_all_at(b"def", 3).unwrap(); // call 1
        assert!(!fs.crash_fired());
        f.sync_data().unwrap(); // call 2: the image is taken before it
        assert!(fs.crash_fired());
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..100 {
            seen.insert(
                fs.crash(&mut SimRng::new(seed))
                    .content(&p("/d/f"))
                    .unwrap(),
            );
        }
        // The sync never happened in the image: torn tails of "def" appear.
        assert!(seen.len() > 1, "{seen:?}");
        assert!(seen
            .iter()
            .all(|c| b"abcdef".starts_with(c) && c.len() >= 3));
    }
}
