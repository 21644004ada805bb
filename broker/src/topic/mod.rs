//! A topic: its bounds, its groups, and the two tasks that serve it — the group-commit
//! [`writer`] (the one place a publish becomes durable and confirmable) and the
//! [`dispatch`]er (credit-paced delivery to group members).
//!
//! Bounds count every stored message, ready and in flight alike, plus publishes accepted and
//! not yet committed, so nothing can push a topic past `max_messages` or `max_bytes`.
//! A message stops counting once every group has acked it; its disk space is reclaimed when
//! its whole segment is below every group's floor.
//!
//! # Layout
//!
//! This file holds the topic's state, opening it, and saving its groups. One job per file:
//!
//! - `admit.rs` — the publish path: storage health, bounds, the overflow policy, then the
//!   writer's queue or the parking queue.
//! - `dedup.rs` — the dedup window: a publish sent again is answered with its first seq.
//! - `parking.rs` — the `block` policy's parked publishes.
//! - `writer.rs` — the group-commit writer: appends become durable and confirmed.
//! - `dispatch.rs` — the dispatcher: credit-paced delivery to group members.
//! - `tail.rs` — the cache of recent messages deliveries are served from.
//! - `members.rs` — joining groups, credit, leaving.
//! - `groups.rs` — ack, nack, term, progress, ack deadlines, dead letters, deleting groups.
//! - `health.rs` — storage health (full, failed, damaged) and what it refuses or tells.
//! - `repair.rs` — `weir topic repair`.
//! - `age.rs` — `max_age`: commit times of the oldest messages, and their expiry.
//! - `info.rs` — info, counters, the bound refusing now, stalls.
//! - `drain.rs`, `refusing.rs` — the measured drain rate; recent refusals.

mod admit;
mod age;
mod batch;
mod dedup;
mod dispatch;
mod drain;
#[cfg(test)]
mod ephemeral_tests;
mod groups;
mod health;
mod info;
mod members;
mod parking;
mod refusing;
mod repair;
mod tail;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_protocol::{DroppedMessage, GroupSpec, TopicConfig, TopicHealth};

use crate::admission::Admission;
use crate::clock::Clock;
use crate::config::Config;
use crate::group::Group;
use crate::metrics::{Counter, Metrics};
use crate::refusal::Refusal;
use crate::storage::disk::DiskBudget;
use crate::storage::log::{LogConfig, LogError, SegmentLog};
use crate::storage::records::GroupRecord;
use crate::storage::state::StateStore;
use admit::DropWarning;
use drain::DrainRate;
use parking::ParkingQueue;
use refusing::RecentRefusals;
use tail::TailCache;
use writer::Append;
pub use writer::RunOutcome;

pub use batch::{BatchPart, RunConfirm};
pub use dedup::{DedupCounts, DedupLimits};
pub use groups::{DeadLetterJob, DeleteGroupError, Detached, UpdateGroupError};
pub use repair::RepairOutcome;

/// Why a publish could not be stored after it was accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The topic refused it at a bound.
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// The topic is closed, or its writer stopped: nothing was stored.
    #[error("storage failure: {0}")]
    Storage(String),
    /// A write or fdatasync failed while the publish was being stored: the outcome is unknown
    /// (it may or may not be stored; it was not confirmed). The topic is fenced
    /// ([`TopicHealth::Failed`]) until repaired or restarted.
    #[error("storage failed, outcome unknown: {0}")]
    StorageFailed(String),
}

/// The answer to one accepted publish: the sequence once durable, or why not.
pub type Confirm = oneshot::Receiver<Result<u64, AppendError>>;

/// A publish the topic took: queued for its commit, or parked by the `block` policy.
pub enum Admitted {
    /// Queued for the writer; counts against the connection's `max_unconfirmed`.
    Queued(Confirm),
    /// Parked until room frees up; counts against the topic's `max_blocked_publishes` only.
    Parked(Confirm),
    /// A duplicate (same producer stamp or `weir-msg-id`, within the dedup window): nothing is
    /// stored, and the confirm resolves to the original's sequence — at once, or once the
    /// original (still pending) is committed.
    Duplicate(Confirm),
}

/// Why joining a group failed.
#[derive(Debug)]
pub enum JoinError {
    /// The topic is at `max_groups_per_topic`.
    TooManyGroups(u32),
}

/// What every topic of a broker shares: where state goes, the counters, and where its tasks
/// run and are tracked until `stop`.
#[derive(Clone)]
pub struct TopicEnv {
    /// The state store.
    pub store: StateStore,
    /// The broker's counters.
    pub metrics: Arc<Metrics>,
    /// Tracks the topic's writer and dispatcher tasks.
    pub tasks: TaskTracker,
    /// Cancelled to stop the topic's tasks.
    pub stop: CancellationToken,
    /// Cancelled when the broker begins a graceful stop, before it closes any connection:
    /// dispatchers plan no more deliveries (acks, nacks and deadlines are still handled), so
    /// a closing consumer's unacked messages are not handed to another consumer that is about
    /// to close too; and members that leave from then on are closed by the broker, not lost.
    pub stopping: CancellationToken,
    /// The runtime the tasks run on (topics are opened from blocking threads).
    pub runtime: tokio::runtime::Handle,
    /// Admission control (the writers feed it commit latencies).
    pub admission: Arc<Admission>,
    /// Notified when a message becomes due for a dead-letter topic.
    pub dead_letters: Arc<Notify>,
    /// The disk budget every topic's log draws from.
    pub disk: Arc<DiskBudget>,
    /// The file layer topics' files are written through (the OS; tests inject faults there).
    pub fs: crate::storage::fs::Fs,
    /// The broker's clock: groups' ack deadlines and nack delays run on it.
    pub clock: Clock,
}

/// Counters of one topic, since the broker started (the broker-wide ones are in [`Metrics`]).
#[derive(Debug, Default)]
struct TopicCounters {
    /// Publishes refused, any reason.
    rejected: Counter,
    /// Messages evicted by `drop_oldest` or `max_age`, plus those skipped by a repair.
    dropped: Counter,
    /// Messages a repair skipped with a damaged range (also in `dropped`).
    dropped_damaged: Counter,
    /// Messages older than the topic's `max_age`, removed (also in `dropped`).
    dropped_max_age: Counter,
    /// Messages committed to the topic's log.
    published: Counter,
    /// Deliveries sent to subscribers (including redeliveries).
    delivered: Counter,
    /// Deliveries with attempt > 1.
    redelivered: Counter,
    /// Messages acked, summed over the topic's groups.
    acked: Counter,
}

/// The counters of one topic that [`TopicInfo`] does not carry, since the broker started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicCounterSnapshot {
    /// Messages committed to the topic's log.
    pub published: u64,
    /// Deliveries sent to subscribers (including redeliveries).
    pub delivered: u64,
    /// Deliveries with attempt > 1.
    pub redelivered: u64,
    /// Messages acked, summed over the topic's groups.
    pub acked: u64,
    /// Messages `weir topic repair` skipped with a damaged range (counted in
    /// [`TopicInfo::dropped`] too).
    pub dropped_damaged: u64,
    /// What the dedup window did.
    pub dedup: DedupCounts,
    /// Producers the dedup window remembers now (at most `dedup.max_producers`).
    pub dedup_producers: u64,
    /// Explicit ids the dedup window remembers now (at most `dedup.max_ids`).
    pub dedup_ids: u64,
    /// Bytes of the broker's memory budget the dedup window is charged for now.
    pub dedup_memory_bytes: u64,
    /// Messages removed for being older than the topic's `max_age` (counted in
    /// [`TopicInfo::dropped`] too).
    pub dropped_max_age: u64,
}

/// Limits the topic applies to its groups.
#[derive(Debug, Clone, Copy)]
struct GroupLimits {
    max_in_flight: u32,
    max_credit: u32,
    max_groups: u32,
    /// `groups.key_lookahead`.
    key_lookahead: u32,
}

/// Mutable state of a topic, behind one mutex held only for short, non-blocking sections.
struct TopicState {
    /// Oldest stored sequence (not yet acked by every group).
    first_seq: u64,
    /// Every sequence below this is durable and may be delivered.
    committed_next: u64,
    /// Size (payload plus header names and values) of each stored message,
    /// `first_seq..committed_next` (bounded by `max_messages`: 4 bytes of memory per stored
    /// message), [`HOLE`] for a seq in a hole of the log (at most `storage.seq_reservation`
    /// per crash, or a repaired range).
    sizes: VecDeque<u32>,
    /// Entries of `sizes` that are [`HOLE`]s (not messages: not counted by any bound).
    holes_held: u64,
    stored_bytes: u64,
    /// Accepted publishes not yet committed.
    pending_count: u64,
    pending_bytes: u64,
    groups: BTreeMap<String, Group>,
    tail: TailCache,
    /// Messages leaving the topic per second (acked by every group), for retry hints.
    drain: DrainRate,
    /// The last [`admit::DROP_SAMPLE`] messages `drop_oldest` or `max_age` evicted.
    recent_drops: VecDeque<DroppedMessage>,
    /// Commit times of the oldest stored messages, for `max_age` (bounded: see `age.rs`).
    ages: age::CommitTimes,
    drop_warning: DropWarning,
    /// `block` policy: publishes waiting for room.
    parked: ParkingQueue,
    /// Producer sequences and message ids stored lately (bounded by `[dedup]`).
    dedup: dedup::Dedup,
}

impl TopicState {
    /// Messages counted against `max_messages`: stored plus accepted-not-committed.
    fn count(&self) -> u64 {
        self.stored() + self.pending_count
    }

    /// Messages stored (holes not counted).
    fn stored(&self) -> u64 {
        self.sizes.len() as u64 - self.holes_held
    }

    /// Appends the size of the next committed message.
    fn push_size(&mut self, size: u64) {
        self.sizes
            .push_back(u32::try_from(size).unwrap_or(HOLE - 1).min(HOLE - 1));
        self.stored_bytes += size;
    }

    /// A message admitted (and so pending in the dedup window) ended without being stored.
    fn forget_pending(&mut self, message: &crate::storage::log::Message) {
        if let Some(key) = dedup::DedupKey::of(message) {
            self.dedup.forget(&key);
        }
    }

    /// Extends `sizes` to the end of `log`: the size of each record from `committed_next` on,
    /// a [`HOLE`] for each seq of a hole; `committed_next` becomes the log's `next_seq`. The
    /// records' producer stamps and ids join the dedup window (as of `clock`'s now, the age of
    /// each from its commit time).
    /// On an error (a damaged record) `sizes` ends, and `committed_next` is, where the scan
    /// stopped.
    fn extend_to(&mut self, log: &SegmentLog, clock: &Clock) -> Result<(), LogError> {
        let mut expected = self.committed_next;
        let (now, wall_ms) = (clock.now(), clock.unix_ms());
        let scanned = log.scan(expected, |r| {
            self.push_holes(r.seq.saturating_sub(expected));
            self.push_size(u64::from(r.size));
            expected = r.seq + 1;
            // The dedup window, as of each record's commit time.
            let age = Duration::from_millis(wall_ms.saturating_sub(r.timestamp_ms));
            if let (Some(key), Some(at)) = (
                dedup::DedupKey::new(r.producer, r.msg_id),
                now.checked_sub(age),
            ) {
                self.dedup.stored(&key, r.seq, at, now);
            }
        });
        if let Err(e) = scanned {
            self.committed_next = expected;
            return Err(e);
        }
        self.push_holes(log.next_seq().saturating_sub(expected));
        self.committed_next = log.next_seq().max(expected);
        Ok(())
    }

    /// Messages stored (holes not counted) with seqs in `from..to`.
    fn stored_in(&self, from: u64, to: u64) -> u64 {
        let index = |seq: u64| seq.saturating_sub(self.first_seq) as usize;
        self.sizes
            .range(index(from).min(self.sizes.len())..index(to).min(self.sizes.len()))
            .filter(|&&len| len != HOLE)
            .count() as u64
    }

    /// Forgets the sizes from `at` on (down to `first_seq` at most): `committed_next` becomes
    /// `at`, to be extended again from the log.
    fn truncate_sizes(&mut self, at: u64) {
        let keep = at.saturating_sub(self.first_seq);
        while self.sizes.len() as u64 > keep {
            match self.sizes.pop_back() {
                Some(HOLE) => self.holes_held -= 1,
                Some(len) => self.stored_bytes -= u64::from(len),
                None => break,
            }
        }
        self.committed_next = self.first_seq + self.sizes.len() as u64;
    }

    /// Appends `n` hole placeholders.
    fn push_holes(&mut self, n: u64) {
        self.sizes.extend(std::iter::repeat_n(HOLE, n as usize));
        self.holes_held += n;
    }

    /// Drops the oldest entry of `sizes`; its size, or `None` for a hole.
    fn pop_size(&mut self) -> Option<u32> {
        match self.sizes.pop_front()? {
            HOLE => {
                self.holes_held -= 1;
                None
            }
            len => {
                self.stored_bytes -= u64::from(len);
                Some(len)
            }
        }
    }

    /// The group holding the oldest message (stored, or accepted and being stored) not every
    /// group has acked — the lowest floor, the first by name on a tie — if any group holds
    /// one: what `TopicFull` names.
    fn holder(&self) -> Option<String> {
        let end = self.committed_next + self.pending_count;
        self.groups
            .iter()
            .map(|(name, g)| (g.floor(), name))
            .filter(|&(floor, _)| floor < end)
            .min_by_key(|&(floor, _)| floor)
            .map(|(_, name)| name.clone())
    }

    /// Bytes counted against `max_bytes`: stored plus accepted-not-committed.
    fn bytes(&self) -> u64 {
        self.stored_bytes + self.pending_bytes
    }
}

/// One topic. Shared by connections, its writer and its dispatcher through an `Arc`.
pub struct Topic {
    /// The topic's name (never changes).
    name: String,
    /// Its bounds and policies: changed live by [`Topic::update`]. Read through
    /// [`Topic::settings`] and never held across another read of it or a lock.
    config: RwLock<TopicConfig>,
    limits: GroupLimits,
    state: Mutex<TopicState>,
    log: Arc<RwLock<SegmentLog>>,
    appends: mpsc::Sender<Append>,
    wake_dispatcher: Notify,
    wake_writer: Notify,
    /// Whether storage takes writes and serves reads (see [`TopicHealth`]).
    health: Mutex<TopicHealth>,
    /// Longest time between two records of the log's durable high-water mark.
    high_water_interval: Duration,
    /// Where the log lives and how it is opened (to reopen it on repair).
    files: (crate::storage::fs::Fs, std::path::PathBuf, LogConfig),
    /// Set when the broker stops: nothing parks any more.
    closing: AtomicBool,
    counters: TopicCounters,
    /// The retry hint when nothing drains (`limits.max_retry_after_ms`).
    max_retry_after: Duration,
    /// Drops per second past which `drop_oldest` logs a warning.
    drop_warn_per_s: u64,
    store: StateStore,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    /// The broker's disk budget: checked before each commit, told of every byte written and
    /// deleted.
    disk: Arc<DiskBudget>,
    /// The longest nack delay honoured (`groups.max_nack_delay_ms`).
    max_nack_delay: Duration,
    /// How long the dedup window remembers (`dedup.window_ms`), named in its refusals.
    dedup_window: Duration,
    /// Wakes the broker's dead-letter mover when a message becomes due for a dead-letter topic.
    dead_letters: Arc<Notify>,
    /// The broker's clock: its groups' ack deadlines and nack delays run on it.
    clock: Clock,
    /// Stops this topic's writer and dispatcher (a child of the broker's stop token, cancelled
    /// alone when the topic is deleted).
    stop: CancellationToken,
    /// The broker's [`TopicEnv::stopping`]: no deliveries are planned once it is cancelled.
    stopping: CancellationToken,
    /// The writer's and the dispatcher's tasks, awaited when the topic is deleted.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Which bound refused publishes to this topic lately.
    recent_refusals: Mutex<RecentRefusals>,
    /// Held while group records are taken and written, so two savers (the periodic flush and
    /// the dead-letter mover) never write an older record over a newer one.
    saving: Mutex<()>,
}

/// The `sizes` entry of a seq in a hole of the log (no message's size: sizes stop below it).
const HOLE: u32 = u32::MAX;

/// The size of stored message `seq` given a topic's `sizes` from `first_seq`; `None` for a seq
/// in a hole, or not stored.
fn stored_size(sizes: &VecDeque<u32>, first_seq: u64, seq: u64) -> Option<u64> {
    let i = usize::try_from(seq.checked_sub(first_seq)?).ok()?;
    sizes
        .get(i)
        .filter(|&&len| len != HOLE)
        .map(|&len| u64::from(len))
}

/// Locks a mutex, carrying on if a panicking thread poisoned it (the state stays consistent:
/// no critical section here can panic halfway through an update it cares about).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Topic {
    /// Opens a topic's log in `dir` (recovering it), restores its groups from the state store,
    /// and starts its writer and dispatcher on `tasks`; both stop when `stop` is cancelled (the
    /// writer only once its queue is empty). Blocking: call from a blocking thread.
    pub fn open(
        config: TopicConfig,
        dir: &Path,
        broker: &Config,
        env: &TopicEnv,
    ) -> Result<Arc<Topic>, TopicError> {
        let store = env.store.clone();
        let log_config = LogConfig {
            segment_bytes: broker.storage.segment_bytes,
            seq_reservation: broker.storage.seq_reservation,
            ..LogConfig::default()
        };
        let mut log = SegmentLog::open_on(env.fs.clone(), dir, log_config)?;
        env.disk.stored_changed(log.disk_bytes() as i64);
        let mut health = match log.damage() {
            Some(damage) => TopicHealth::Damaged {
                at_seq: damage.seq,
                reason: damage.to_string(),
            },
            None => TopicHealth::Healthy,
        };
        let limits = GroupLimits {
            max_in_flight: broker.limits.max_in_flight,
            max_credit: broker.limits.max_credit,
            max_groups: broker.limits.max_groups_per_topic,
            key_lookahead: broker.groups.key_lookahead,
        };
        let records = store.load_groups(&config.name)?;
        let log_first = log.first_seq();
        // Settings for group records written before groups had any (the defaults are valid).
        let defaults = broker
            .resolve_group(&config.name, &GroupSpec::default())
            .unwrap_or_default();
        let groups: BTreeMap<String, Group> = records
            .iter()
            .map(|(name, rec)| {
                let now = env.clock.now();
                let group = Group::recover(rec, log_first, limits.max_in_flight, &defaults, now);
                (name.clone(), group)
            })
            .collect();
        let first_seq = groups
            .values()
            .map(Group::floor)
            .min()
            .unwrap_or(log_first)
            .max(log_first);
        let state = TopicState {
            first_seq,
            committed_next: first_seq,
            sizes: VecDeque::new(),
            holes_held: 0,
            stored_bytes: 0,
            pending_count: 0,
            pending_bytes: 0,
            groups,
            tail: TailCache::new(broker.storage.tail_cache_bytes, env.admission.inbound()),
            drain: DrainRate::new(Instant::now()),
            recent_drops: VecDeque::with_capacity(admit::DROP_SAMPLE),
            ages: age::CommitTimes::new(first_seq),
            drop_warning: DropWarning::new(Instant::now()),
            parked: ParkingQueue::new(config.max_blocked_publishes as usize),
            dedup: dedup::Dedup::new(
                DedupLimits::from(&broker.dedup),
                env.admission.inbound().empty_permit(),
            ),
        };
        let mut state = state;
        // Reading the sizes verifies every stored record, checkpointed segments too: a bad one
        // is damage found at start, contained to this topic.
        if let Err(e) = state.extend_to(&log, &env.clock) {
            let LogError::Corrupt { seq, .. } = e else {
                return Err(e.into());
            };
            if health == TopicHealth::Healthy {
                tracing::error!(topic = %config.name, seq, error = %e, "log damaged; its files are kept as they are");
                log.fence(format!("damaged: {e}"));
                health = TopicHealth::Damaged {
                    at_seq: seq,
                    reason: e.to_string(),
                };
            }
        }
        if matches!(health, TopicHealth::Damaged { .. }) {
            env.metrics.storage_damage_found.add(1);
        }
        for (from, to) in log.holes() {
            for g in state.groups.values_mut() {
                g.skip(from, to, false);
            }
        }
        let (appends, queue) = mpsc::channel(broker.storage.append_queue as usize);
        let topic = Arc::new(Topic {
            name: config.name.clone(),
            config: RwLock::new(config),
            limits,
            state: Mutex::new(state),
            log: Arc::new(RwLock::new(log)),
            appends,
            wake_dispatcher: Notify::new(),
            wake_writer: Notify::new(),
            health: Mutex::new(health),
            files: (env.fs.clone(), dir.to_path_buf(), log_config),
            high_water_interval: Duration::from_millis(broker.storage.high_water_interval_ms),
            closing: AtomicBool::new(false),
            counters: TopicCounters::default(),
            max_retry_after: Duration::from_millis(broker.limits.max_retry_after_ms),
            drop_warn_per_s: broker.limits.drop_warn_per_s,
            store,
            metrics: env.metrics.clone(),
            admission: env.admission.clone(),
            disk: env.disk.clone(),
            max_nack_delay: Duration::from_millis(broker.groups.max_nack_delay_ms),
            dedup_window: Duration::from_millis(broker.dedup.window_ms),
            dead_letters: env.dead_letters.clone(),
            clock: env.clock.clone(),
            stop: env.stop.child_token(),
            stopping: env.stopping.clone(),
            tasks: Mutex::new(Vec::new()),
            recent_refusals: Mutex::new(RecentRefusals::default()),
            saving: Mutex::new(()),
        });
        let max_batch = broker.storage.commit_max_batch as usize;
        let writer = env.tasks.spawn_on(
            writer::run(topic.clone(), queue, max_batch, topic.stop.clone()),
            &env.runtime,
        );
        let dispatcher = env.tasks.spawn_on(
            dispatch::run(topic.clone(), topic.stop.clone()),
            &env.runtime,
        );
        lock(&topic.tasks).extend([writer, dispatcher]);
        topic.wake_dispatcher.notify_one();
        Ok(topic)
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's configuration now (a copy: [`Topic::update`] may change it).
    pub fn config(&self) -> TopicConfig {
        self.settings().clone()
    }

    /// The live configuration, read-locked: hold it only to copy fields out.
    fn settings(&self) -> std::sync::RwLockReadGuard<'_, TopicConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `config` (the same name; checked by the broker against its limits) live:
    /// - raised `max_messages` / `max_bytes` take effect at once: parked publishes that now
    ///   fit go to the writer;
    /// - lowered below what the topic holds, nothing stored is removed by the update: under
    ///   `reject` and `block` new publishes are refused (or parked) until acks drain the topic
    ///   below the new bound, under `drop_oldest` the next commit evicts down to it (counted
    ///   and announced as any eviction);
    /// - `max_message_bytes` applies to publishes from now on (stored ones stay deliverable);
    /// - `overflow` applies to publishes from now on; publishes parked under `block` keep
    ///   waiting for room until their `max_block_ms` as they were promised;
    /// - `max_blocked_publishes` lowered below what is parked refuses new parks until fewer
    ///   remain; `max_block_ms` applies to publishes parked from now on;
    /// - `fsync` applies from the next commit; switched to `batch`, whatever was written
    ///   unsynced is synced at once;
    /// - `max_age` set or lowered: the writer (woken here) removes the messages already older
    ///   at once, as at the bound (see `age.rs`); raised or removed, nothing more leaves until
    ///   the new bound.
    pub fn update(&self, config: TopicConfig) {
        debug_assert_eq!(config.name, self.name);
        let parking = config.max_blocked_publishes as usize;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        let mut st = lock(&self.state);
        st.parked.set_capacity(parking);
        self.unpark(&mut st, &self.appends);
        drop(st);
        // The writer re-reads the fsync policy and its parking deadlines when woken.
        self.wake_writer.notify_one();
    }

    /// Writes the state of every durable group that changed since the last call to the state
    /// store (without flushing it); ephemeral groups are never written. Blocking. Callers are
    /// served one at a time, so records reach the store in the order they were taken.
    pub fn save_dirty_groups(&self) -> Result<usize, TopicError> {
        let _saving = lock(&self.saving);
        let records: Vec<(String, GroupRecord)> = {
            let mut st = lock(&self.state);
            let now = self.clock.now();
            st.groups
                .iter_mut()
                .filter(|(_, g)| !g.is_ephemeral())
                .filter_map(|(name, g)| g.take_dirty().then(|| (name.clone(), g.record(now))))
                .collect()
        };
        for (name, record) in &records {
            self.store.save_group(&self.name, name, record)?;
        }
        Ok(records.len())
    }

    /// Resolves once the writer and the dispatcher have ended (after [`Topic::close_for_delete`]
    /// or the broker's stop).
    pub async fn stopped(&self) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Gives the disk budget back what this topic's log holds on disk (its files are being
    /// deleted).
    pub fn release_disk(&self) {
        let bytes = self
            .log
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .disk_bytes();
        self.disk.stored_changed(-(bytes as i64));
    }
}

/// Moves `first_seq` up to the lowest floor of all groups, dropping acked messages from the
/// bounds and the tail cache. With no groups, messages stay until the bound. Returns whether
/// anything was dropped.
fn advance_first(st: &mut TopicState, now: Instant) -> bool {
    let Some(floor) = st.groups.values().map(Group::floor).min() else {
        return false;
    };
    let floor = floor.min(st.committed_next);
    if floor <= st.first_seq {
        return false;
    }
    let mut left = 0;
    for _ in st.first_seq..floor {
        left += u64::from(st.pop_size().is_some());
    }
    st.drain.record(left, now);
    st.first_seq = floor;
    st.tail.trim_below(floor);
    true
}

/// A failure opening or persisting a topic.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The message log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] crate::storage::state::StateError),
}
