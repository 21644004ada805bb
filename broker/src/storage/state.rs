//! The broker's state store: topic configurations and group state, in sled.
//!
//! This module is the only place that names sled (DESIGN.md §4): a handful of typed operations,
//! so the store can be swapped (redb was measured as the alternative) without touching callers.
//! Records are storage's own versioned formats (`records.rs`), never the wire types.
//!
//! The store is a cache of what the topic directories say (each holds a manifest) plus the
//! groups' cursors: when it is lost it can be rebuilt from the manifests (`weir-broker
//! --rebuild-state`, see [`set_aside`]), losing only the cursors.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir_protocol::TopicConfig;

use super::fs::{Fs, StorageFs};
use super::records::{self, FormatError, GroupRecord, TopicIdentity, TopicRecord};

/// The key of the marker record, in the `meta` tree, saying Weir wrote this store.
const MARKER_KEY: &[u8] = b"format";
/// The marker's value: the store's layout version.
const MARKER_VALUE: &[u8] = &[1];

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// sled failed.
    #[error("state store: {0}")]
    Store(#[from] sled::Error),
    /// A record could not be decoded (unknown version or bad bytes).
    #[error("state store record {key:?} is unreadable: {reason}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// Why.
        reason: FormatError,
    },
    /// A record could not be encoded (nothing was written).
    #[error("cannot encode a state record: {0}")]
    Encode(FormatError),
}

/// The sled-backed state store. Cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    db: sled::Db,
    topics: sled::Tree,
    groups: sled::Tree,
    meta: sled::Tree,
    /// The file layer asked before each flush, and the store's directory (see
    /// [`StateStore::checked_by`]).
    flush_check: Option<(Fs, PathBuf)>,
}

impl StateStore {
    /// Opens (creating if needed) the store in `dir`, its page cache bounded by `cache_bytes`.
    ///
    /// sled 0.34 releases its directory lock from a background thread after the previous `Db`
    /// in this process is dropped (spacejam/sled#1289), so a lock held when we open is waited
    /// for, at most `LOCK_WAIT`; a lock still held after that (another broker on the same
    /// directory) is an error.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<StateStore, StateError> {
        let config = sled::Config::new().path(dir).cache_capacity(cache_bytes);
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e)) if is_lock_held(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        let topics = db.open_tree("topics")?;
        let groups = db.open_tree("groups")?;
        let meta = db.open_tree("meta")?;
        Ok(StateStore {
            db,
            topics,
            groups,
            meta,
            flush_check: None,
        })
    }

    /// Whether this store carries the marker [`StateStore::mark`] writes: stores written before
    /// the marker existed do not, and neither does a store sled opened over files it did not
    /// write (which reads as empty).
    pub fn is_marked(&self) -> Result<bool, StateError> {
        Ok(self.meta.get(MARKER_KEY)?.is_some())
    }

    /// Writes the marker saying Weir wrote this store, durably.
    pub fn mark(&self) -> Result<(), StateError> {
        self.meta.insert(MARKER_KEY, MARKER_VALUE)?;
        self.flush()?;
        Ok(())
    }

    /// Whether the store holds no topic and no group.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.groups.is_empty()
    }

    /// Stores a topic's configuration and identity and makes it durable before returning.
    pub fn save_topic(
        &self,
        config: &TopicConfig,
        identity: &TopicIdentity,
    ) -> Result<(), StateError> {
        let record = records::encode_topic_record(config, identity).map_err(StateError::Encode)?;
        self.topics.insert(config.name.as_bytes(), record)?;
        self.flush()?;
        Ok(())
    }

    /// Every stored topic.
    pub fn load_topics(&self) -> Result<Vec<TopicRecord>, StateError> {
        self.topics
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                records::decode_topic_record(&v).map_err(|reason| corrupt(&k, reason))
            })
            .collect()
    }

    /// Stores a group's state (not flushed: call [`StateStore::flush`]).
    pub fn save_group(
        &self,
        topic: &str,
        group: &str,
        record: &GroupRecord,
    ) -> Result<(), StateError> {
        let value = records::encode_group_record(record).map_err(StateError::Encode)?;
        self.groups.insert(group_key(topic, group), value)?;
        Ok(())
    }

    /// Removes a group's state (not flushed: call [`StateStore::flush`]).
    pub fn delete_group(&self, topic: &str, group: &str) -> Result<(), StateError> {
        self.groups.remove(group_key(topic, group))?;
        Ok(())
    }

    /// Removes a topic's configuration and every group of it, durably.
    pub fn delete_topic(&self, topic: &str) -> Result<(), StateError> {
        for key in self.groups.scan_prefix(group_key(topic, "")).keys() {
            self.groups.remove(key?)?;
        }
        self.topics.remove(topic.as_bytes())?;
        self.flush()?;
        Ok(())
    }

    /// Every stored group of `topic`, by name.
    pub fn load_groups(&self, topic: &str) -> Result<Vec<(String, GroupRecord)>, StateError> {
        let prefix = group_key(topic, "");
        self.groups
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let record = records::decode_group_record(&v).map_err(|r| corrupt(&k, r))?;
                Ok((name, record))
            })
            .collect()
    }

    /// Stores raw bytes as topic `name`'s record: old formats and junk, for tests.
    #[cfg(test)]
    pub(crate) fn insert_raw_topic(&self, name: &str, bytes: &[u8]) {
        self.topics.insert(name.as_bytes(), bytes).unwrap();
    }

    /// Makes every write so far durable. Asks the file layer first (see
    /// [`StateStore::checked_by`]): a fault it injects fails the flush.
    pub fn flush(&self) -> Result<(), StateError> {
        if let Some((fs, dir)) = &self.flush_check {
            fs.check_state_flush(dir)
                .map_err(|e| StateError::Store(sled::Error::Io(e)))?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// This store, asking `fs` before each flush of the store in `dir` (fault injection sees
    /// the state store's flushes, which sled performs itself).
    pub fn checked_by(mut self, fs: Fs, dir: PathBuf) -> StateStore {
        self.flush_check = Some((fs, dir));
        self
    }
}

/// Moves the state store directory `dir` aside to `<dir>.broken-<unix seconds>` (never
/// deleting it: it is evidence, and may hold cursors worth recovering by hand) and syncs its
/// parent, so the next [`StateStore::open`] starts empty and the broker rebuilds topics from
/// their manifests. Returns where it went; `Ok(None)` when there was no directory.
///
/// Refused (an error) while a broker holds the store open. A lock released just before (sled
/// lets go of it from a background thread after the store is dropped) is waited for, at most
/// `LOCK_WAIT`.
pub fn set_aside(fs: &dyn StorageFs, dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let deadline = Instant::now() + LOCK_WAIT;
    while is_held(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if is_held(dir) {
        return Err(std::io::Error::other(format!(
            "{} is in use by a running broker",
            dir.display()
        )));
    }
    let secs = records::now_ms() / 1000;
    let mut to = dir.as_os_str().to_owned();
    to.push(format!(".broken-{secs}"));
    let mut to = PathBuf::from(to);
    // A second rebuild in the same second keeps the first one's copy.
    let mut n = 1;
    while fs.is_dir(&to) {
        let mut next = dir.as_os_str().to_owned();
        next.push(format!(".broken-{secs}-{n}"));
        to = PathBuf::from(next);
        n += 1;
    }
    match fs.rename(dir, &to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs.sync_dir(parent)?;
    Ok(Some(to))
}

/// Whether a `Db` (in any process) holds the lock sled takes on the store's `db` file.
fn is_held(dir: &Path) -> bool {
    use fs2::FileExt;
    // sled's own lock file, outside the storage file layer like the rest of sled's files.
    match std::fs::File::open(dir.join("db")) {
        Ok(file) => {
            let held = file.try_lock_exclusive().is_err();
            if !held {
                let _ = FileExt::unlock(&file);
            }
            held
        }
        Err(_) => false,
    }
}

/// How long [`StateStore::open`] waits for another holder of the directory lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Whether sled failed to open because another `Db` holds the directory's lock (sled reports
/// it as `ErrorKind::Other` with this message).
fn is_lock_held(e: &std::io::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// `topic \0 group`: topic names cannot contain NUL, so prefixes never collide.
fn group_key(topic: &str, group: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + group.len() + 1);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(group.as_bytes());
    key
}

fn corrupt(key: &[u8], reason: FormatError) -> StateError {
    StateError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::GroupConfig;

    fn config(name: &str) -> TopicConfig {
        crate::storage::test_topic_config(name)
    }

    #[test]
    fn topics_and_groups_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path(), 1 << 20).unwrap();
            let id = TopicIdentity::new();
            store.save_topic(&config("a"), &id).unwrap();
            store.save_topic(&config("ab"), &id).unwrap();
            let rec = GroupRecord {
                cursor: 7,
                unacked: vec![(3, 1), (5, 2)],
                config: Some(GroupConfig {
                    ordering: weir_protocol::GroupOrdering::Shared,
                    ack_timeout_ms: 100,
                    max_attempts: 3,
                    dead_letter_topic: "a.dlq".into(),
                }),
                delayed: vec![(4, 1, 99)],
                dead: vec![(6, 3, "ack timeout".into())],
            };
            store.save_group("a", "g1", &rec).unwrap();
            store
                .save_group("ab", "g2", &GroupRecord::default())
                .unwrap();
            store.flush().unwrap();
        }
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        let mut names: Vec<_> = store
            .load_topics()
            .unwrap()
            .into_iter()
            .map(|r| r.config.name)
            .collect();
        names.sort();
        assert_eq!(names, ["a", "ab"]);
        let groups = store.load_groups("a").unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].0, "g1");
        assert_eq!(groups[0].1.dead, vec![(6, 3, "ack timeout".to_string())]);
        assert_eq!(groups[0].1.delayed, vec![(4, 1, 99)]);
        store.delete_group("a", "g1").unwrap();
        assert!(store.load_groups("a").unwrap().is_empty());
        store.delete_topic("ab").unwrap();
        assert!(store.load_groups("ab").unwrap().is_empty());
        assert_eq!(store.load_topics().unwrap().len(), 1);
    }

    #[test]
    fn the_marker_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let fs = crate::storage::fs::os();
        assert_eq!(set_aside(fs.as_ref(), &state).unwrap(), None);
        {
            let store = StateStore::open(&state, 1 << 20).unwrap();
            assert!(!store.is_marked().unwrap() && store.is_empty());
            store.mark().unwrap();
            store
                .save_topic(&config("a"), &TopicIdentity::new())
                .unwrap();
        }
        let aside = set_aside(fs.as_ref(), &state).unwrap().expect("moved");
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.broken-"));
        let moved = StateStore::open(&aside, 1 << 20).unwrap();
        assert!(moved.is_marked().unwrap());
        assert_eq!(moved.load_topics().unwrap().len(), 1);
        let fresh = StateStore::open(&state, 1 << 20).unwrap();
        assert!(!fresh.is_marked().unwrap() && fresh.is_empty());
        assert!(
            set_aside(fs.as_ref(), &state).is_err(),
            "refused while the store is open"
        );
    }

    #[test]
    fn open_waits_for_a_lock_released_shortly_after_and_fails_on_one_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateStore::open(dir.path(), 1 << 20).unwrap();
        let path = dir.path().to_path_buf();
        let waiter = std::thread::spawn(move || StateStore::open(&path, 1 << 20).map(|_| ()));
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        waiter
            .join()
            .unwrap()
            .expect("opened once the lock was released");
        let _still_held = StateStore::open(dir.path(), 1 << 20).unwrap();
        let started = Instant::now();
        assert!(StateStore::open(dir.path(), 1 << 20).is_err());
        assert!(started.elapsed() >= LOCK_WAIT);
    }

    #[test]
    fn an_undecodable_record_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        store.topics.insert("t", &[9, 1, 2]).unwrap();
        store.groups.insert(group_key("t", "g"), &[]).unwrap();
        assert!(matches!(
            store.load_topics(),
            Err(StateError::Corrupt { key, reason: FormatError::UnknownVersion(9) }) if key == "t"
        ));
        assert!(matches!(
            store.load_groups("t"),
            Err(StateError::Corrupt {
                reason: FormatError::Empty,
                ..
            })
        ));
    }
}
