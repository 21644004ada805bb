//! Start-up reconciliation of the topic directories with the state store (DESIGN.md §4, "What
//! storage promises when the disk misbehaves"): the directories are the truth about which
//! topics exist, the state store caches their configurations and holds the group cursors.
//!
//! In order:
//! 1. A state store that cannot be opened or read stops the broker ([`ReconcileError::StateUnreadable`],
//!    naming the path and `weir-broker --rebuild-state`). So does one sled opened as empty over
//!    files Weir did not write while topic directories exist.
//! 2. Tombstones (`<topic>@deleted-…`, a delete interrupted by a stop) are finished: the
//!    topic's state record is dropped if it is the deleted incarnation's, the directory removed.
//! 3. A state record whose directory is missing stops the broker ([`ReconcileError::MissingDir`])
//!    rather than restarting the topic empty at seq 1.
//! 4. A state record whose directory has no manifest (data from before manifests) gets one
//!    (migration); an unreadable manifest is reported and rewritten from the state record; a
//!    manifest of another incarnation wins over the record (its groups are dropped, reported).
//! 5. A directory without a state record is restored from its manifest, with a WARN naming
//!    the topic: its groups' cursors are lost. A directory with neither manifest nor segments
//!    is an interrupted create and is removed; one with segments but no usable manifest stops
//!    the broker ([`ReconcileError::UnknownDir`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use weir_protocol::TopicConfig;

use super::fs::StorageFs;
use super::manifest::{self, ManifestError};
use super::records::{Manifest, TopicRecord};
use super::state::{StateError, StateStore};

/// What start-up found and did; logged on the broker's "state recovered" line.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Every topic to open, by name.
    pub topics: Vec<TopicConfig>,
    /// Topics restored from their manifests because the state store had no record of them:
    /// their group cursors (if they had groups) are lost.
    pub restored: Vec<String>,
    /// Groups dropped because their topic's record belonged to another incarnation.
    pub groups_dropped: usize,
    /// Interrupted deletes finished.
    pub deletes_finished: usize,
    /// Topics given a manifest for the first time (data directories from before manifests).
    pub migrated: usize,
}

/// Why start-up cannot reconcile the data directory; each names what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The state store cannot be opened or read.
    #[error(
        "the state store {path} is unreadable ({reason}); start with `weir-broker --rebuild-state` \
         to rebuild it from the topic manifests (the broken store is moved aside, never deleted; \
         group cursors are reset and their groups start again from the oldest stored message)"
    )]
    StateUnreadable {
        /// The state store's directory.
        path: PathBuf,
        reason: String,
    },
    /// A topic has a state record but no directory (its messages are gone).
    #[error(
        "topic {name} is in the state store but its directory {path} is missing, so its messages \
         are gone; restore the directory from a backup, or start with `weir-broker --rebuild-state` \
         to rebuild the state from the topic directories that exist (the topic is then forgotten \
         and every group cursor is reset)"
    )]
    MissingDir {
        name: String,
        /// Its expected directory.
        path: PathBuf,
    },
    /// A topic directory has no state record and no usable manifest: its configuration is
    /// unknown.
    #[error(
        "topic directory {path} has no state record and no usable manifest ({reason}); its \
         configuration is unknown: restore the state store, or move the directory out of the \
         topics directory"
    )]
    UnknownDir {
        path: PathBuf,
        /// Why the manifest could not be used.
        reason: String,
    },
    /// A manifest could not be written or read (an I/O error).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A directory operation failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A state store write failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Opens the state store in `state_dir` and reconciles it with the topic directories under
/// `topics_dir` (see the module docs). Blocking.
pub fn recover(
    fs: &dyn StorageFs,
    state_dir: &Path,
    topics_dir: &Path,
    cache_bytes: u64,
) -> Result<(StateStore, Reconciled), ReconcileError> {
    let unreadable = |reason: String| ReconcileError::StateUnreadable {
        path: state_dir.to_path_buf(),
        reason,
    };
    let state_existed = fs.list(state_dir).is_ok_and(|names| !names.is_empty());
    let store = StateStore::open(state_dir, cache_bytes).map_err(|e| unreadable(e.to_string()))?;
    let records = store.load_topics().map_err(|e| unreadable(e.to_string()))?;
    let marked = store.is_marked().map_err(|e| unreadable(e.to_string()))?;
    let mut records: BTreeMap<String, TopicRecord> = records
        .into_iter()
        .map(|r| (r.config.name.clone(), r))
        .collect();
    let Scan { dirs, tombstones } = scan(fs, topics_dir)?;
    if !marked && state_existed && store.is_empty() && !dirs.is_empty() {
        return Err(unreadable(
            "it holds nothing Weir wrote, yet topic directories exist".into(),
        ));
    }
    let mut done = Reconciled::default();

    for (topic, tomb) in &tombstones {
        let tomb_incarnation = manifest::read(fs, tomb)
            .ok()
            .flatten()
            .map(|m| m.identity.incarnation);
        if let Some(record) = records.get(topic) {
            let same = matches!(
                (record.identity, tomb_incarnation),
                (Some(i), Some(t)) if i.incarnation == t
            );
            if same || !dirs.contains(topic) {
                store.delete_topic(topic)?;
                records.remove(topic);
            }
        }
        manifest::remove_dir(fs, tomb).map_err(|source| ReconcileError::Io {
            path: tomb.clone(),
            source,
        })?;
        tracing::warn!(topic = %topic, tombstone = %tomb.display(), "finished a topic delete interrupted by a stop");
        done.deletes_finished += 1;
    }

    for (name, record) in &records {
        let dir = topics_dir.join(name);
        if !dirs.contains(name) {
            return Err(ReconcileError::MissingDir {
                name: name.clone(),
                path: dir,
            });
        }
        let why = match manifest::read(fs, &dir) {
            Ok(Some(m)) if m.config.name == *name => {
                if record.identity == Some(m.identity) && record.config == m.config {
                    continue;
                }
                if record
                    .identity
                    .is_some_and(|i| i.incarnation != m.identity.incarnation)
                {
                    let groups = store.load_groups(name).map(|g| g.len()).unwrap_or(0);
                    tracing::warn!(
                        topic = %name,
                        groups_dropped = groups,
                        "the state record is of another incarnation than the topic directory: the directory's manifest wins and the record's groups are dropped"
                    );
                    store.delete_topic(name)?;
                    done.groups_dropped += groups;
                }
                // A record from before manifests (or a differing one): the manifest is the truth.
                store.save_topic(&m.config, &m.identity)?;
                continue;
            }
            Ok(None) => {
                rewrite_manifest(fs, &store, &dir, record)?;
                tracing::info!(topic = %name, "topic directory given a manifest");
                done.migrated += 1;
                continue;
            }
            Ok(Some(m)) => format!("it names topic {}", m.config.name),
            Err(e @ ManifestError::Format { .. }) => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        tracing::warn!(topic = %name, error = %why, "topic manifest unusable: rewritten from the state store");
        rewrite_manifest(fs, &store, &dir, record)?;
    }

    for name in dirs.iter().filter(|d| !records.contains_key(*d)) {
        let dir = topics_dir.join(name);
        let unknown = |reason: String| ReconcileError::UnknownDir {
            path: dir.clone(),
            reason,
        };
        match manifest::read(fs, &dir) {
            Ok(Some(m)) if m.config.name == *name => {
                // Groups left by an earlier incarnation (a flush racing a delete) are not its.
                store.delete_topic(name)?;
                store.save_topic(&m.config, &m.identity)?;
                tracing::warn!(
                    topic = %name,
                    "topic restored from its manifest: the state store had no record of it, so its groups' cursors (if it had groups) are lost; groups subscribing again start where they ask (earliest: the oldest stored message)"
                );
                done.restored.push(name.clone());
            }
            Ok(Some(m)) => return Err(unknown(format!("its manifest names {}", m.config.name))),
            Err(ManifestError::Format { source, .. }) => return Err(unknown(source.to_string())),
            Err(e @ ManifestError::Io { .. }) => return Err(e.into()),
            Ok(None) => {
                let entries = fs.list(&dir).map_err(|source| ReconcileError::Io {
                    path: dir.clone(),
                    source,
                })?;
                if entries.iter().any(|e| e.ends_with(".log")) {
                    return Err(unknown("it has no manifest".into()));
                }
                // Created, then stopped before its manifest was in place: nothing was stored.
                manifest::remove_dir(fs, &dir).map_err(|source| ReconcileError::Io {
                    path: dir.clone(),
                    source,
                })?;
                tracing::info!(dir = %dir.display(), "removed a topic directory whose creation was interrupted");
            }
        }
    }

    store.mark()?;
    done.topics = store
        .load_topics()
        .map_err(|e| unreadable(e.to_string()))?
        .into_iter()
        .map(|r| r.config)
        .collect();
    Ok((store, done))
}

/// Writes the manifest of `record` into `dir`, giving a record from before manifests an
/// identity (saved to the store too).
fn rewrite_manifest(
    fs: &dyn StorageFs,
    store: &StateStore,
    dir: &Path,
    record: &TopicRecord,
) -> Result<(), ReconcileError> {
    let identity = record.identity.unwrap_or_default();
    let manifest = Manifest {
        config: record.config.clone(),
        identity,
    };
    manifest::write(fs, dir, &manifest)?;
    if record.identity.is_none() {
        store.save_topic(&record.config, &identity)?;
    }
    Ok(())
}

/// What the topics directory holds.
struct Scan {
    /// Topic directories, by name.
    dirs: BTreeSet<String>,
    /// Tombstones: (the deleted topic's name, the tombstone's path).
    tombstones: Vec<(String, PathBuf)>,
}

/// Lists the topic directories and tombstones under `topics_dir`. Anything else there is left
/// alone, with a WARN.
fn scan(fs: &dyn StorageFs, topics_dir: &Path) -> Result<Scan, ReconcileError> {
    let mut dirs = BTreeSet::new();
    let mut tombstones = Vec::new();
    let names = fs.list(topics_dir).map_err(|source| ReconcileError::Io {
        path: topics_dir.to_path_buf(),
        source,
    })?;
    for entry in names {
        let path = topics_dir.join(&entry);
        if !fs.is_dir(&path) {
            tracing::warn!(path = %path.display(), "ignoring a file in the topics directory");
        } else if let Some(topic) = manifest::tombstone_of(&entry) {
            tombstones.push((topic.to_string(), path));
        } else if crate::config::validate_topic_name(&entry).is_ok() {
            dirs.insert(entry);
        } else {
            tracing::warn!(path = %path.display(), "ignoring a directory that is not a topic's");
        }
    }
    Ok(Scan { dirs, tombstones })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::{self as sfs, Fs};
    use crate::storage::records::GroupRecord;
    use crate::storage::records::TopicIdentity;

    struct Data {
        root: tempfile::TempDir,
        fs: Fs,
    }

    impl Data {
        fn new() -> Data {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("topics")).unwrap();
            Data {
                root,
                fs: sfs::os(),
            }
        }
        fn state(&self) -> PathBuf {
            self.root.path().join("state")
        }
        fn topics(&self) -> PathBuf {
            self.root.path().join("topics")
        }
        fn store(&self) -> StateStore {
            StateStore::open(&self.state(), 1 << 20).unwrap()
        }
        fn recover(&self) -> Result<(StateStore, Reconciled), ReconcileError> {
            recover(self.fs.as_ref(), &self.state(), &self.topics(), 1 << 20)
        }
        /// A topic directory holding one segment file (and no manifest).
        fn segment_dir(&self, name: &str) -> PathBuf {
            let dir = self.topics().join(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("00000000000000000001.log"), b"x").unwrap();
            dir
        }
    }

    fn config(name: &str) -> TopicConfig {
        crate::storage::test_topic_config(name)
    }

    #[test]
    fn a_data_dir_from_before_manifests_gets_them() {
        let data = Data::new();
        {
            let store = data.store();
            let v1 = crate::storage::records::encode_topic_record_v1(&config("old"));
            store.insert_raw_topic("old", &v1);
            store
                .save_group("old", "g", &GroupRecord::default())
                .unwrap();
            store.flush().unwrap();
        }
        let dir = data.segment_dir("old");
        let (store, done) = data.recover().unwrap();
        assert_eq!((done.migrated, done.restored.len()), (1, 0));
        assert_eq!(done.topics, [config("old")]);
        let m = manifest::read(data.fs.as_ref(), &dir).unwrap().unwrap();
        let record = &store.load_topics().unwrap()[0];
        assert_eq!(
            record.identity,
            Some(m.identity),
            "state and manifest agree"
        );
        assert_eq!(store.load_groups("old").unwrap().len(), 1, "groups kept");
        drop(store);
        let (_, again) = data.recover().unwrap();
        assert_eq!(again.migrated, 0, "migrated once");
    }

    #[test]
    fn a_record_without_its_directory_stops_the_start_naming_it() {
        let data = Data::new();
        data.store()
            .save_topic(&config("lost"), &TopicIdentity::new())
            .unwrap();
        match data.recover() {
            Err(e @ ReconcileError::MissingDir { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("topic lost") && msg.contains("--rebuild-state"),
                    "{msg}"
                );
            }
            other => panic!("expected MissingDir, got {:?}", other.map(|(_, d)| d)),
        }
    }

    #[test]
    fn a_directory_without_state_or_manifest() {
        let data = Data::new();
        // No segments: an interrupted create, removed.
        std::fs::create_dir(data.topics().join("half")).unwrap();
        let (store, done) = data.recover().unwrap();
        assert!(done.topics.is_empty());
        assert!(!data.topics().join("half").exists());
        drop(store);
        // Segments: unknown configuration, the start stops and nothing is removed.
        let dir = data.segment_dir("kept");
        assert!(matches!(
            data.recover(),
            Err(ReconcileError::UnknownDir { path, .. }) if path == dir
        ));
        assert!(dir.join("00000000000000000001.log").exists());
    }

    #[test]
    fn a_junk_manifest_is_rewritten_from_the_state_record() {
        let data = Data::new();
        let id = TopicIdentity::new();
        data.store().save_topic(&config("t"), &id).unwrap();
        let dir = data.segment_dir("t");
        std::fs::write(dir.join(manifest::MANIFEST_FILE), b"junk").unwrap();
        let (_, done) = data.recover().unwrap();
        assert_eq!(done.topics, [config("t")]);
        let m = manifest::read(data.fs.as_ref(), &dir).unwrap().unwrap();
        assert_eq!((m.config, m.identity), (config("t"), id));
    }

    #[test]
    fn a_tombstone_drops_only_its_own_incarnations_state() {
        let data = Data::new();
        let fs = data.fs.as_ref();
        let old = Manifest {
            config: config("t"),
            identity: TopicIdentity::new(),
        };
        let new = Manifest {
            config: config("t"),
            identity: TopicIdentity {
                incarnation: old.identity.incarnation.wrapping_add(1),
                created_ms: 0,
            },
        };
        // The old incarnation's tombstone was left behind (its removal failed) and the topic
        // re-created: the new one's state and directory stay.
        let tomb = data.topics().join("t@deleted-1-0");
        std::fs::create_dir(&tomb).unwrap();
        manifest::write(fs, &tomb, &old).unwrap();
        manifest::create_dir(fs, &data.topics(), &new).unwrap();
        let store = data.store();
        store.save_topic(&new.config, &new.identity).unwrap();
        store.save_group("t", "g", &GroupRecord::default()).unwrap();
        store.flush().unwrap();
        drop(store);
        let (store, done) = data.recover().unwrap();
        assert_eq!((done.deletes_finished, done.topics.len()), (1, 1));
        assert!(!tomb.exists());
        assert_eq!(store.load_groups("t").unwrap().len(), 1);
        drop(store);
        // The state of the tombstone's own incarnation is dropped, its groups too.
        manifest::tombstone(fs, &data.topics(), "t")
            .unwrap()
            .unwrap();
        let (store, done) = data.recover().unwrap();
        assert!(done.topics.is_empty());
        assert!(store.load_groups("t").unwrap().is_empty());
        assert_eq!(std::fs::read_dir(data.topics()).unwrap().count(), 0);
    }
}
