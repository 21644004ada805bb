//! [`Broker`]: the cloneable handle to everything a connection needs — the topic registry,
//! the state store, the counters. Opening it, and the tasks it starts, are in `open.rs`;
//! changing a live topic's settings in `update.rs`.
//!
//! Bounds: at most `max_topics` topics (creating one more is refused). Topic creation is
//! serialised (it touches disk); lookups are a read lock.

mod open;
mod update;

pub use update::UpdateError;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use weir_protocol::{ListTopics, TopicConfig, TopicInfo, TopicList, TopicSpec};

use crate::admission::{Admission, KeyLimits, Work};
use crate::auth_limit::AuthFailures;
use crate::clock::Clock;
use crate::config::Config;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::refusal::Refusal;
use crate::storage::disk::DiskBudget;
use crate::storage::manifest;
use crate::storage::reconcile::ReconcileError;
use crate::storage::records::{Manifest, TopicIdentity};
use crate::storage::state::StateError;
use crate::topic::{Detached, Topic, TopicEnv, TopicError};

/// A failure opening the broker.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The state store and the topic directories could not be reconciled (each case names
    /// its fix, e.g. `weir-broker --rebuild-state`).
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// A topic failed to recover.
    #[error("topic {name}: {source}")]
    Topic {
        /// The topic.
        name: String,
        /// Why.
        source: TopicError,
    },
    /// A blocking task panicked.
    #[error("startup task failed: {0}")]
    Join(String),
    /// A `[tls]` file is missing or unusable (the error names it).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The admin endpoint's address could not be bound.
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a topic could not be found or created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The name or a bound is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A topic of that name exists with another configuration: the message names each
    /// setting that differs.
    #[error("{0}")]
    Exists(Box<ConfigMismatch>),
    /// The broker is at `max_topics`.
    #[error("the broker is at max_topics ({0})")]
    TooMany(u32),
    /// A bound asks for more than the broker-wide ceiling (`max_topic_bytes`,
    /// `max_topic_messages`).
    #[error("a topic bound asks for more than the broker's {} ({})", .0.name, .0.value)]
    OverCeiling(weir_protocol::Limit),
    /// The topic does not exist and auto-create is off.
    #[error("unknown topic {0}")]
    Unknown(String),
    /// Creating it was refused by admission (the key's `ops_per_s`).
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// Storage failed.
    #[error("cannot create topic: {0}")]
    Failed(String),
}

/// An existing topic's configuration beside the one a create asked for.
#[derive(Debug)]
pub struct ConfigMismatch {
    /// What the topic has.
    pub existing: TopicConfig,
    /// What the create asked for (resolved against the defaults).
    pub asked: TopicConfig,
}

impl std::fmt::Display for ConfigMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic {} exists with a different configuration: {}",
            self.existing.name,
            self.existing.differences(&self.asked).join(", ")
        )
    }
}

/// Why a topic could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteTopicError {
    /// No such topic.
    #[error("unknown topic")]
    Unknown,
    /// Subscribers are attached and `force` was not given; how many.
    #[error("{0} subscribers attached")]
    InUse(usize),
    /// Removing its state or files failed.
    #[error("cannot delete topic: {0}")]
    Failed(String),
}

struct Shared {
    config: Config,
    keys: KeyRing,
    auth_failures: AuthFailures,
    env: TopicEnv,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    creating: tokio::sync::Mutex<()>,
    next_connection: AtomicU64,
    /// Set when a graceful stop begins (readiness turns false).
    shutting_down: std::sync::atomic::AtomicBool,
}

/// The broker's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// The broker's configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The configured API keys.
    pub(crate) fn keys(&self) -> &KeyRing {
        &self.shared.keys
    }

    /// Failed authentications per client address (wire and HTTP).
    pub(crate) fn auth_failures(&self) -> &AuthFailures {
        &self.shared.auth_failures
    }

    /// Records a failed authentication from `ip` (a `Hello` or an admin request): counted in
    /// `weir_auth_failures_total`, noted against the address's `max_auth_failures_per_s`, and
    /// logged at most once a second.
    pub(crate) fn auth_failed(&self, ip: std::net::IpAddr, why: &crate::keys::AuthError) {
        self.metrics().auth_failures.add(1);
        let now = self.clock().now();
        self.shared.auth_failures.failed_at(ip, why, now);
    }

    /// The disk budget (`storage.max_bytes`, `storage.min_free_bytes`).
    pub fn disk(&self) -> &DiskBudget {
        &self.shared.env.disk
    }

    /// Admits one expensive operation `op` on `target` by `key` (`ops_per_s`); a refusal is
    /// counted and logged under that operation, and the caller answers it.
    pub(crate) fn admit_op(&self, key: &KeyLimits, op: Work, target: &str) -> Result<(), Refusal> {
        let admission = self.admission();
        admission.admit_op(key).inspect_err(|r| {
            self.metrics().op_refused(op);
            admission.log_refusal_at(op, target, r, std::time::Instant::now());
        })
    }

    /// The broker's clock: ack deadlines, nack delays and rate windows (keys' buckets, failed
    /// authentications per address) run on it (see [`crate::clock`]). Real time unless the
    /// broker was opened with a paused clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.env.clock
    }

    /// Admission control: overload, memory budget, per-key rate limits.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.shared.env.admission
    }

    /// The broker's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.env.metrics
    }

    /// What topics share: the state store, the stop token, the dead-letter wake-up.
    pub(crate) fn env(&self) -> &TopicEnv {
        &self.shared.env
    }

    /// A fresh connection id.
    pub(crate) fn next_connection_id(&self) -> u64 {
        self.shared.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// How many connections this broker has served since it opened: every connection given an
    /// id by `Broker::next_connection_id` (those refused before `Hello`, at
    /// `max_connections` or for failed authentications, get none). Unlike the
    /// `connections` gauge it never goes down, so tests can count reconnects.
    pub fn connections_served(&self) -> u64 {
        self.shared.next_connection.load(Ordering::Relaxed) - 1
    }

    /// The topic named `name`, if it exists.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.shared
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The topic named `name`, created with the default bounds if it does not exist and
    /// `auto_create_topics` is on. Creating it is an expensive operation: when `key` is given,
    /// it pays one of the key's `ops_per_s` tokens first (a refusal creates nothing).
    pub(crate) async fn topic_or_create(
        &self,
        name: &str,
        key: Option<&KeyLimits>,
    ) -> Result<Arc<Topic>, CreateError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if !self.shared.config.limits.auto_create_topics {
            return Err(CreateError::Unknown(name.to_string()));
        }
        if let Some(key) = key {
            self.admit_op(key, Work::CreateTopic, name)
                .map_err(CreateError::Refused)?;
        }
        let spec = TopicSpec {
            name: name.to_string(),
            ..TopicSpec::default()
        };
        match self.create_topic(spec).await {
            Ok((topic, _)) => Ok(topic),
            // Created meanwhile, or restored from a directory already there, with other
            // settings: use it as it is.
            Err(CreateError::Exists(_)) => {
                self.topic(name).ok_or(CreateError::Unknown(name.into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a topic, durably, before returning. Idempotent: an existing topic with the same
    /// effective configuration is returned with `false`; one with another configuration is
    /// [`CreateError::Exists`].
    ///
    /// The directory and its manifest are written first, then the state record, so a crash in
    /// between leaves a directory the next start restores. A directory already there (with no
    /// topic registered) is never written over: a usable manifest restores that topic, as it
    /// was (its settings compared with the spec as for an existing topic); without one the
    /// create fails.
    pub(crate) async fn create_topic(
        &self,
        spec: TopicSpec,
    ) -> Result<(Arc<Topic>, bool), CreateError> {
        let config = self
            .shared
            .config
            .resolve_topic(spec)
            .map_err(CreateError::Invalid)?;
        if let Some(limit) = self.shared.config.topic_ceiling_exceeded(&config) {
            return Err(CreateError::OverCeiling(limit));
        }
        let _creating = self.shared.creating.lock().await;
        if let Some(existing) = self.topic(&config.name) {
            if existing.config() == config {
                return Ok((existing, false));
            }
            return Err(CreateError::Exists(Box::new(ConfigMismatch {
                existing: existing.config(),
                asked: config,
            })));
        }
        let max = self.shared.config.limits.max_topics;
        if self
            .shared
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            >= max as usize
        {
            return Err(CreateError::TooMany(max));
        }
        let shared = self.shared.clone();
        let name = config.name.clone();
        let requested = config.clone();
        let (topic, restored) =
            tokio::task::spawn_blocking(move || create_blocking(&shared, config))
                .await
                .map_err(|e| CreateError::Failed(e.to_string()))??;
        self.shared
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), topic.clone());
        if restored {
            if topic.config() != requested {
                return Err(CreateError::Exists(Box::new(ConfigMismatch {
                    existing: topic.config(),
                    asked: requested,
                })));
            }
            return Ok((topic, false));
        }
        tracing::info!(topic = %name, "topic created");
        Ok((topic, true))
    }

    /// Deletes a topic: its messages, its groups and their state. Refused while subscribers are
    /// attached unless `force`, which detaches them (returned, with their notice queues, so
    /// they can be told). Publishes parked on it are refused, queued ones are committed first,
    /// and creating a topic waits until the files are gone (so a topic of the same name starts
    /// empty).
    ///
    /// Crash-safe: the directory is renamed to a tombstone (a name no topic can have) and its
    /// parent synced before the state is touched; then the state is deleted (flushed); then the
    /// tombstone removed. A start after a crash anywhere in between finishes the delete.
    pub(crate) async fn delete_topic(
        &self,
        name: &str,
        force: bool,
    ) -> Result<Detached, DeleteTopicError> {
        let _creating = self.shared.creating.lock().await;
        let topic = self.topic(name).ok_or(DeleteTopicError::Unknown)?;
        let attached = topic.subscriber_count();
        if attached > 0 && !force {
            return Err(DeleteTopicError::InUse(attached));
        }
        self.shared
            .topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let detached = topic.close_for_delete();
        topic.stopped().await;
        let shared = self.shared.clone();
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let fs = shared.env.fs.as_ref();
            let topics_dir = shared.config.data_dir.join("topics");
            let tomb = manifest::tombstone(fs, &topics_dir, &owned)
                .map_err(|e| format!("renaming the directory to a tombstone: {e}"))?;
            shared
                .env
                .store
                .delete_topic(&owned)
                .map_err(|e| e.to_string())?;
            match tomb {
                Some(tomb) => manifest::remove_dir(fs, &tomb)
                    .map_err(|e| format!("removing {}: {e}", tomb.display())),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| DeleteTopicError::Failed(e.to_string()))?
        .map_err(DeleteTopicError::Failed)?;
        topic.release_disk();
        tracing::info!(topic = %name, detached = detached.len(), "topic deleted");
        Ok(detached)
    }

    /// Repairs topic `name`'s storage (see [`Topic::repair`]) and returns what was done.
    /// `Ok(None)` when there is no such topic.
    pub(crate) async fn repair_topic(
        &self,
        name: &str,
    ) -> Result<Option<crate::topic::RepairOutcome>, String> {
        let Some(topic) = self.topic(name) else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || topic.repair())
            .await
            .map_err(|e| e.to_string())?
            .map(Some)
    }

    /// One page of topic snapshots answering `request` (see [`crate::replies`]): in name order
    /// after `request.after`, those whose name is `visible` (the asker may monitor them), as
    /// many as fit in a frame of `max_frame_bytes`.
    pub(crate) fn list_topics_page(
        &self,
        request: ListTopics,
        max_frame_bytes: usize,
        visible: impl Fn(&str) -> bool,
    ) -> TopicList {
        let after = request.after.unwrap_or_default();
        let topics: Vec<Arc<Topic>> = {
            let registry = self.shared.topics.read().unwrap_or_else(|p| p.into_inner());
            registry
                .range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded))
                .filter(|(name, _)| visible(name))
                .map(|(_, t)| t.clone())
                .collect()
        };
        crate::replies::topic_page(
            request.req,
            topics.iter().map(|t| t.info()),
            request.limit,
            max_frame_bytes,
        )
    }

    /// A snapshot of every topic, sorted by name.
    pub(crate) fn list_topics(&self) -> Vec<TopicInfo> {
        self.topics().iter().map(|t| t.info()).collect()
    }

    /// Every topic, sorted by name (the registry lock is released before returning).
    pub(crate) fn topics(&self) -> Vec<Arc<Topic>> {
        let registry = self.shared.topics.read().unwrap_or_else(|p| p.into_inner());
        registry.values().cloned().collect()
    }

    /// Whether a graceful stop has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Relaxed)
    }

    /// The first step of a graceful stop: marks the broker not ready and refuses every parked
    /// publish (`block` topics) with `ShuttingDown`, so connections can answer them instead of
    /// waiting out the grace period.
    pub(crate) fn refuse_parked(&self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        for topic in self.topics() {
            topic.refuse_parked(weir_protocol::RejectReason::ShuttingDown);
        }
    }

    /// Stops the writers (each after committing what is queued), the dispatchers and the state
    /// flusher, then persists every group's state and syncs everything. Call once no connection
    /// can publish any more.
    pub async fn close(&self) {
        self.shared.env.stop.cancel();
        self.shared.env.tasks.close();
        self.shared.env.tasks.wait().await;
        let broker = self.clone();
        match tokio::task::spawn_blocking(move || broker.save_state(true)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "final state flush failed"),
            Err(e) => tracing::error!(error = %e, "final state flush task failed"),
        }
        self.shared.env.metrics.log_summary();
    }

    /// Writes every changed group to the state store and flushes it (also when nothing
    /// changed, if `owed`: an earlier flush failed). Blocking.
    fn save_state(&self, owed: bool) -> Result<(), TopicError> {
        let mut saved = 0;
        for topic in self.topics() {
            saved += topic.save_dirty_groups()?;
        }
        if saved > 0 || owed {
            self.shared.env.store.flush()?;
        }
        Ok(())
    }
}

/// The directory of topic `name`.
fn topic_dir(config: &Config, name: &str) -> PathBuf {
    config.data_dir.join("topics").join(name)
}

/// Creates the topic `config` names (or restores it from a directory already there, the
/// `bool`), its directory and manifest first, then its state record. Blocking.
fn create_blocking(
    shared: &Shared,
    config: TopicConfig,
) -> Result<(Arc<Topic>, bool), CreateError> {
    let failed = |e: &dyn std::fmt::Display| CreateError::Failed(e.to_string());
    let fs = shared.env.fs.as_ref();
    let topics_dir = shared.config.data_dir.join("topics");
    let dir = topic_dir(&shared.config, &config.name);
    let (manifest, restored) = if fs.is_dir(&dir) {
        match manifest::read(fs, &dir) {
            Ok(Some(m)) if m.config.name == config.name => {
                tracing::warn!(topic = %config.name, "a directory of this topic existed without a state record: restored from its manifest, not written over (its groups' cursors, if any, are lost)");
                (m, true)
            }
            Ok(_) => {
                return Err(CreateError::Failed(format!(
                    "{} exists without a usable manifest; it is not written over",
                    dir.display()
                )))
            }
            Err(e) => return Err(failed(&e)),
        }
    } else {
        let m = Manifest {
            config,
            identity: TopicIdentity::new(),
        };
        manifest::create_dir(fs, &topics_dir, &m).map_err(|e| failed(&e))?;
        (m, false)
    };
    // A topic starts with no groups, whatever state an earlier topic of the same name may
    // have left behind (a flush racing its deletion).
    let store = &shared.env.store;
    store
        .delete_topic(&manifest.config.name)
        .map_err(|e| failed(&e))?;
    store
        .save_topic(&manifest.config, &manifest.identity)
        .map_err(|e| failed(&e))?;
    let topic =
        Topic::open(manifest.config, &dir, &shared.config, &shared.env).map_err(|e| failed(&e))?;
    Ok((topic, restored))
}
