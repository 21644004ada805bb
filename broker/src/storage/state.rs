//! The broker's state store: topic configurations and group state, in sled.
//!
//! This module is the only place that names sled (DESIGN.md §4): a handful of typed operations,
//! so the store can be swapped (redb was measured as the alternative) without touching callers.
//! Records are bincode-encoded with a leading format version byte: topic configurations are
//! version 1; group records version 2 (version 1, written before groups had settings, nack
//! delays and dead letters, is still read).

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use weir_protocol::{GroupConfig, TopicConfig};

/// Format version of topic configuration records.
const RECORD_VERSION: u8 = 1;
/// Format version of group records.
const GROUP_RECORD_VERSION: u8 = 2;

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
        reason: String,
    },
}

/// A group's durable state: its settings, where its cursor is, which messages below it are not
/// yet acked (with the number of deliveries each has had), which were nacked and when they may
/// be redelivered, and which are due for the dead-letter topic. Bounded by the group's
/// `max_in_flight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GroupRecord {
    /// The next sequence never yet delivered to the group.
    pub cursor: u64,
    /// Delivered-but-unacked messages below `cursor`: `(seq, deliveries so far)`.
    pub unacked: Vec<(u64, u32)>,
    /// The group's settings (`None` in records written before groups had settings).
    pub config: Option<GroupConfig>,
    /// Nacked messages: `(seq, deliveries so far, redeliver at, ms since the Unix epoch)`.
    pub delayed: Vec<(u64, u32, u64)>,
    /// Messages due for the dead-letter topic: `(seq, deliveries, reason)`.
    pub dead: Vec<(u64, u32, String)>,
}

/// The version 1 layout of [`GroupRecord`].
#[derive(Deserialize)]
struct GroupRecordV1 {
    cursor: u64,
    unacked: Vec<(u64, u32)>,
}

/// The sled-backed state store. Cheap to clone.
#[derive(Clone)]
pub struct StateStore {
    db: sled::Db,
    topics: sled::Tree,
    groups: sled::Tree,
}

impl StateStore {
    /// Opens (creating if needed) the store in `dir`, its page cache bounded by `cache_bytes`.
    ///
    /// sled 0.34 releases its directory lock from a background thread after the previous `Db`
    /// in this process is dropped (spacejam/sled#1289), so a lock held when we open is waited
    /// for, at most [`LOCK_WAIT`]; a lock still held after that (another broker on the same
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
        Ok(StateStore { db, topics, groups })
    }

    /// Stores a topic's configuration and makes it durable before returning.
    pub fn save_topic(&self, config: &TopicConfig) -> Result<(), StateError> {
        self.topics.insert(config.name.as_bytes(), encode(config))?;
        self.db.flush()?;
        Ok(())
    }

    /// Every stored topic configuration.
    pub fn load_topics(&self) -> Result<Vec<TopicConfig>, StateError> {
        self.topics.iter().map(|kv| decode_kv(kv?)).collect()
    }

    /// Stores a group's state (not flushed: call [`StateStore::flush`]).
    pub fn save_group(
        &self,
        topic: &str,
        group: &str,
        record: &GroupRecord,
    ) -> Result<(), StateError> {
        self.groups.insert(
            group_key(topic, group),
            encode_versioned(GROUP_RECORD_VERSION, record),
        )?;
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
        self.db.flush()?;
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
                Ok((name, decode_group(&k, &v)?))
            })
            .collect()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
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

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_versioned(RECORD_VERSION, value)
}

fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Encoding plain structs into a Vec cannot fail.
    out.extend(
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default(),
    );
    out
}

fn decode_kv<T: DeserializeOwned>((k, v): (sled::IVec, sled::IVec)) -> Result<T, StateError> {
    decode_value(&k, &v)
}

fn decode_value<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StateError> {
    match value.split_first() {
        Some((&RECORD_VERSION, body)) => decode_body(key, body),
        Some((v, _)) => Err(corrupt(key, format!("unknown record version {v}"))),
        None => Err(corrupt(key, "empty record".into())),
    }
}

/// Decodes a group record of either version.
fn decode_group(key: &[u8], value: &[u8]) -> Result<GroupRecord, StateError> {
    match value.split_first() {
        Some((&GROUP_RECORD_VERSION, body)) => decode_body(key, body),
        Some((1, body)) => {
            let old: GroupRecordV1 = decode_body(key, body)?;
            Ok(GroupRecord {
                cursor: old.cursor,
                unacked: old.unacked,
                ..GroupRecord::default()
            })
        }
        Some((v, _)) => Err(corrupt(key, format!("unknown group record version {v}"))),
        None => Err(corrupt(key, "empty record".into())),
    }
}

fn decode_body<T: DeserializeOwned>(key: &[u8], body: &[u8]) -> Result<T, StateError> {
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| corrupt(key, e.to_string()))
}

fn corrupt(key: &[u8], reason: String) -> StateError {
    StateError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::{FsyncPolicy, OverflowPolicy};

    fn config(name: &str) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            max_messages: 10,
            max_bytes: 100,
            max_message_bytes: 10,
            overflow: OverflowPolicy::Reject,
            fsync: FsyncPolicy::Batch,
            max_blocked_publishes: 8,
            max_block_ms: 1000,
        }
    }

    #[test]
    fn topics_and_groups_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path(), 1 << 20).unwrap();
            store.save_topic(&config("a")).unwrap();
            store.save_topic(&config("ab")).unwrap();
            let rec = GroupRecord {
                cursor: 7,
                unacked: vec![(3, 1), (5, 2)],
                config: Some(GroupConfig {
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
            .map(|c| c.name)
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
    fn a_version_1_group_record_is_still_read() {
        let v1 = encode_versioned(1, &(7u64, vec![(3u64, 1u32)]));
        let rec = decode_group(b"k", &v1).unwrap();
        assert_eq!(
            (rec.cursor, rec.unacked, rec.config),
            (7, vec![(3, 1)], None)
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
    fn an_unknown_record_version_is_reported_not_panicked() {
        assert!(matches!(
            decode_value::<GroupRecord>(b"k", &[9, 1, 2]),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_group(b"k", &[9, 1, 2]),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_value::<GroupRecord>(b"k", &[]),
            Err(StateError::Corrupt { .. })
        ));
    }
}
