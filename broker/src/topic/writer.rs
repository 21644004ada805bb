//! The group-commit writer of one topic: the one place a publish becomes durable and
//! confirmable (DESIGN.md §4). It collects queued appends (up to `commit_max_batch`), writes
//! them with one `write`, syncs once under the topic's fsync policy, and only then publishes
//! the new sequence numbers to the topic and confirms every append of the batch.
//!
//! Disk work runs on tokio's blocking pool, never on a reactor worker. Natural batching: while
//! one commit is on disk, further appends queue up and form the next batch; an idle writer
//! commits a lone append at once.
//!
//! Between commits it also deletes whole segments no message needs any more, expires parked
//! publishes at `max_block_ms`, and removes messages past the topic's `max_age`, sleeping on
//! the broker's clock until the oldest one is due (see `age.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weir_protocol::{FsyncPolicy, Limit, OverflowPolicy, RejectReason, TopicHealth};

use super::dedup::DedupKey;
use super::{age, lock, AppendError, Topic};
use crate::admission::budget::MemoryPermit;
use crate::storage::log::{self, LogError, Message};

/// Accepted publishes waiting for their commit: one publish, or a run of consecutive
/// messages of one `PublishBatch`, which one commit stores and one answer confirms.
pub(super) enum Append {
    /// One publish (a `Publish` frame, HTTP, a dead letter, an unparked publish).
    One {
        /// Its headers and payload, handed to the log as they are (headers are bounded by
        /// `limits.max_headers`, `limits.max_header_bytes` and the record format, checked
        /// before the topic takes the publish).
        message: Message,
        reply: oneshot::Sender<Result<u64, AppendError>>,
        /// The message's share of the memory budget, given back once it is committed.
        permit: MemoryPermit,
    },
    /// Consecutive messages of one batch, stored in order by one commit.
    Run {
        messages: Vec<Message>,
        reply: oneshot::Sender<RunOutcome>,
        /// The messages' share of the memory budget, given back once they are committed.
        permit: MemoryPermit,
    },
}

impl Append {
    /// How many messages it holds.
    fn len(&self) -> usize {
        match self {
            Append::One { .. } => 1,
            Append::Run { messages, .. } => messages.len(),
        }
    }

    /// Answers it: `stored` of its messages (a prefix) are stored from `first`; the rest, if
    /// any, get `refused(how many)`.
    fn answer(self, first: u64, stored: usize, refused: impl FnOnce(u64) -> AppendError) {
        // The publisher may have gone; what is stored stays stored all the same.
        match self {
            Append::One { reply, .. } => {
                let _ = reply.send(if stored > 0 {
                    Ok(first)
                } else {
                    Err(refused(1))
                });
            }
            Append::Run {
                messages,
                reply,
                permit,
            } => {
                let left = messages.len() - stored;
                let refused = (left > 0).then(|| refused(left as u64));
                let _ = reply.send(RunOutcome {
                    first_seq: first,
                    stored,
                    refused,
                });
                drop(permit);
            }
        }
    }
}

/// The answer to a run of a batch: its first `stored` messages are durable as `first_seq..`;
/// the others (a commit that ran out of disk or failed) were refused with `refused`.
#[derive(Debug)]
pub struct RunOutcome {
    /// The sequence of the run's first message (meaningless when `stored` is 0).
    pub first_seq: u64,
    /// How many of the run's messages, from its start, are stored.
    pub stored: usize,
    /// Why the rest are not; `None` when all are stored.
    pub refused: Option<AppendError>,
}

/// Receives the next appends: waits for one, then takes what is already queued while the
/// batch holds fewer than `max_batch` messages (one run may take it past). Returns how many
/// appends it took: 0 once the queue is closed. Cancel-safe: it awaits only before the first.
async fn recv_batch(
    queue: &mut mpsc::Receiver<Append>,
    batch: &mut Vec<Append>,
    max_batch: usize,
) -> usize {
    let Some(first) = queue.recv().await else {
        return 0;
    };
    let mut messages = first.len();
    batch.push(first);
    while messages < max_batch {
        match queue.try_recv() {
            Ok(next) => {
                messages += next.len();
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    batch.len()
}

/// When the log was last synced, for `fsync = "interval:<ms>"`.
struct SyncClock {
    policy: FsyncPolicy,
    last_sync: Instant,
    unsynced: bool,
    /// When the durable high-water mark was last recorded.
    last_high_water: Instant,
}

impl SyncClock {
    fn sync_now(&self) -> bool {
        match self.policy {
            FsyncPolicy::Batch => true,
            FsyncPolicy::Never => false,
            FsyncPolicy::IntervalMs(ms) => {
                self.last_sync.elapsed() >= Duration::from_millis(u64::from(ms))
            }
        }
    }

    /// When an interval policy owes a sync for data written since the last one.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        match self.policy {
            FsyncPolicy::IntervalMs(ms) if self.unsynced => {
                Some((self.last_sync + Duration::from_millis(u64::from(ms))).into())
            }
            _ => None,
        }
    }
}

/// What woke the writer.
enum Wake {
    /// Appends arrived (how many; 0 once the queue is closed).
    Appends(usize),
    /// Acks or evictions may have left whole segments to delete.
    Reclaim,
    /// `fsync = "interval:<ms>"` owes a sync.
    SyncDue,
    /// A parked publish's `max_block_ms` may have passed.
    ParkDeadline,
    /// The oldest stored message may be past the topic's `max_age`, or commit times are to be
    /// read back (see `age.rs`).
    Age,
    /// The topic is stopping.
    Stop,
}

/// Runs the writer until `stop` is cancelled and its queue is empty. Its time waiting in the
/// `select!` counts as idle, the rest as busy (`weir_worker_*_seconds_total{worker="writer"}`).
pub(super) async fn run(
    topic: Arc<Topic>,
    mut queue: mpsc::Receiver<Append>,
    max_batch: usize,
    stop: CancellationToken,
) {
    let mut batch: Vec<Append> = Vec::with_capacity(max_batch);
    let mut clock = SyncClock {
        policy: topic.settings().fsync,
        last_sync: Instant::now(),
        unsynced: false,
        last_high_water: Instant::now(),
    };
    let mut work = topic.metrics.workers.writer.clock();
    loop {
        // `weir topic update` may have changed the policy (it wakes the writer).
        let policy = topic.settings().fsync;
        if policy != clock.policy {
            clock.policy = policy;
            // Data written under a laxer policy is synced at once when the new one syncs
            // every commit.
            if policy == FsyncPolicy::Batch && clock.unsynced {
                sync_owed(&topic, &mut clock).await;
            }
        }
        let interval_sync = clock.deadline();
        let park_deadline = topic.next_park_deadline().map(tokio::time::Instant::from);
        // On the broker's clock: a paused one wakes it when advanced past the deadline.
        let age_due = topic.age_due();
        let aged = async {
            match age_due {
                Some(at) => topic.clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        work.waiting();
        let wake = tokio::select! {
            biased;
            received = recv_batch(&mut queue, &mut batch, max_batch) => Wake::Appends(received),
            () = topic.wake_writer.notified() => Wake::Reclaim,
            () = sleep_until(interval_sync), if interval_sync.is_some() => Wake::SyncDue,
            () = sleep_until(park_deadline), if park_deadline.is_some() => Wake::ParkDeadline,
            () = aged => Wake::Age,
            () = stop.cancelled() => Wake::Stop,
        };
        work.working();
        match wake {
            Wake::Appends(0) => break,
            Wake::Appends(_) => commit(&topic, &mut batch, &mut clock).await,
            Wake::Reclaim => {
                reclaim(&topic, false).await;
            }
            Wake::SyncDue => sync_owed(&topic, &mut clock).await,
            Wake::ParkDeadline => topic.expire_parked(Instant::now()),
            Wake::Age => {
                if age::sweep(&topic).await > 0 {
                    // Groups that had not acked them are owed a `Gap`; whole segments can go.
                    topic.wake_dispatcher.notify_one();
                    reclaim(&topic, false).await;
                }
            }
            Wake::Stop if queue.is_empty() => break,
            Wake::Stop => {}
        }
    }
    // Whatever the policy, a clean stop leaves everything written on disk, and reserves no
    // seq past the end, so the restart numbers on with no hole.
    if reclaim(&topic, true).await {
        release_reservation(&topic).await;
    }
    topic.refuse_parked(RejectReason::ShuttingDown);
}

/// Syncs what the log holds unsynced (reclaiming acked segments too).
async fn sync_owed(topic: &Arc<Topic>, clock: &mut SyncClock) {
    if reclaim(topic, true).await {
        clock.last_sync = Instant::now();
        clock.unsynced = false;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}

/// Appends the batch, syncs per policy, then makes the messages deliverable (handing them to
/// the tail cache) and confirms them. The topic's byte bounds count message sizes (payload
/// plus header names and values). The
/// commit's duration (the blocking part: write, sync, segment deletion) and size are recorded
/// in `commit_duration` and `commit_batch`, failed commits included.
async fn commit(topic: &Arc<Topic>, batch: &mut Vec<Append>, clock: &mut SyncClock) {
    let mut messages: Vec<Message> = Vec::with_capacity(batch.iter().map(Append::len).sum());
    for append in batch.iter_mut() {
        match append {
            Append::One { message, .. } => messages.push(std::mem::take(message)),
            Append::Run { messages: run, .. } => {
                messages.extend(run.iter_mut().map(std::mem::take))
            }
        }
    }
    let taken = (
        messages.len() as u64,
        messages.iter().map(Message::size).sum(),
    );
    // Forgotten by the dedup window if the commit fails (nothing allocated without any).
    let keys: Vec<DedupKey> = messages.iter().filter_map(DedupKey::of).collect();
    let sync = clock.sync_now();
    let high_water = sync && clock.last_high_water.elapsed() >= topic.high_water_interval;
    if high_water {
        clock.last_high_water = Instant::now();
    }
    let log = topic.log.clone();
    let this = topic.clone();
    let disk = topic.disk.clone();
    let first_seq = lock(&topic.state).first_seq;
    // The append time: the records' `timestamp_ms` (on the broker's clock: the commit time
    // `max_age` is measured from) and the tail cache's `Instant`.
    let (started, timestamp_ms) = (Instant::now(), topic.clock.unix_ms());
    let result = tokio::task::spawn_blocking(move || -> Result<Committed, LogError> {
        // The disk budget, measured now: the messages that fit are stored, the rest refused.
        let (room, limit) = disk.room();
        let mut used = 0;
        let fits = messages
            .iter()
            .take_while(|m| {
                used += log::record_len(m);
                used <= room
            })
            .count();
        let refused = messages.split_off(fits);
        let mut log = log.write().unwrap_or_else(|p| p.into_inner());
        let before = log.disk_bytes();
        let first = if messages.is_empty() {
            log.next_seq()
        } else {
            log.append_batch(&messages, timestamp_ms)?
        };
        disk.stored_changed(log.disk_bytes() as i64 - before as i64);
        if sync {
            log.sync()?;
        }
        // No seq is confirmed before the durable reservation covers it (never reused).
        log.ensure_reserved()?;
        if high_water {
            record_high_water(&mut log, &this.name);
        }
        let before = log.disk_bytes();
        let deleted = log.delete_before(first_seq);
        disk.stored_changed(log.disk_bytes() as i64 - before as i64);
        if let Err(e) = deleted {
            // The batch is durable all the same: confirm it; reclaiming is tried again later.
            tracing::warn!(topic = %this.name, error = %e, "cannot reclaim acked segments");
        }
        Ok(Committed {
            first,
            messages,
            refused: (refused, limit),
        })
    })
    .await
    .unwrap_or_else(|e| Err(LogError::Io(std::io::Error::other(e.to_string()))));
    let elapsed = started.elapsed();
    topic.metrics.commit_duration.observe(elapsed);
    topic.admission.record_commit(elapsed);
    match result {
        Ok(Committed {
            first,
            messages,
            refused: (refused, limit),
        }) => {
            let retry = Some(topic.max_retry_after.as_millis() as u64);
            if !refused.is_empty() {
                let bytes = refused.iter().map(Message::size).sum();
                topic.release(refused.len() as u64, bytes);
                let mut st = lock(&topic.state);
                refused.iter().for_each(|m| st.forget_pending(m));
            }
            let count = messages.len() as u64;
            let bytes: u64 = messages.iter().map(Message::size).sum();
            topic.metrics.commit_batch.observe(count);
            if sync {
                clock.last_sync = Instant::now();
                clock.unsynced = false;
            } else {
                clock.unsynced = true;
            }
            let evicted;
            {
                let mut st = lock(&topic.state);
                st.pending_count -= count;
                st.pending_bytes -= bytes;
                topic.admission.queued(-(count as i64));
                let now = topic.clock.now();
                for (i, message) in messages.into_iter().enumerate() {
                    if let Some(key) = DedupKey::of(&message) {
                        st.dedup.stored(&key, first + i as u64, now, now);
                    }
                    st.push_size(message.size());
                    st.tail.push(first + i as u64, message, started);
                }
                st.committed_next = first + count;
                topic.note_commit_time(&mut st, first, first + count, timestamp_ms);
                let drop_oldest = topic.settings().overflow == OverflowPolicy::DropOldest;
                evicted = drop_oldest && topic.evict_to_bound(&mut st, Instant::now()) > 0;
                // Room in the writer's queue: parked publishes that fit may follow.
                topic.unpark(&mut st, &topic.appends);
            }
            topic.metrics.published.add(count);
            topic.counters.published.add(count);
            if topic.is_full() {
                topic.set_health(TopicHealth::Healthy);
            }
            let mut offset = 0;
            for append in batch.drain(..) {
                let n = append.len();
                let stored = (count as usize).saturating_sub(offset).min(n);
                // Only the disk budget stores less than the whole batch.
                let refused =
                    |n| topic.refusal_of(n, RejectReason::StorageFull, limit.clone(), retry);
                append.answer(first + offset as u64, stored, refused);
                offset += n;
            }
            topic.wake_dispatcher.notify_one();
            if evicted {
                // Whole evicted segments can go.
                topic.wake_writer.notify_one();
            }
        }
        Err(e) => {
            topic.release(taken.0, taken.1);
            {
                // Not stored (or, on a failed write, not known to be: the topic then takes no
                // publish until a repair or restart rebuilds the window from the log).
                let mut st = lock(&topic.state);
                keys.iter().for_each(|key| st.dedup.forget(key));
            }
            let undone = topic.log.read().is_ok_and(|log| log.fenced().is_none());
            if e.is_no_space() && undone {
                // Nothing of the batch is stored: refuse it, and take the next one as space
                // returns.
                topic.set_health(TopicHealth::Full {
                    reason: e.to_string(),
                });
                let retry = topic.max_retry_after.as_millis() as u64;
                let limit = Limit::new("filesystem_free_bytes", 0);
                for append in batch.drain(..) {
                    append.answer(0, 0, |n| {
                        topic.refusal_of(n, RejectReason::StorageFull, limit.clone(), Some(retry))
                    });
                }
            } else {
                topic.metrics.storage_failures.add(1);
                topic.set_health(TopicHealth::Failed {
                    reason: e.to_string(),
                });
                let failed = AppendError::StorageFailed(e.to_string());
                for append in batch.drain(..) {
                    append.answer(0, 0, |_| failed.clone());
                }
            }
        }
    }
}

/// What a commit stored, and what the disk budget refused.
struct Committed {
    /// The sequence of the first stored message.
    first: u64,
    /// The stored messages, in order.
    messages: Vec<Message>,
    /// The messages past the disk budget (the end of the batch), and the bound that refused them.
    refused: (Vec<Message>, Limit),
}

/// Deletes whole segments below the topic's first stored message and, when `sync`, forces
/// written data to disk. Returns whether it succeeded.
async fn reclaim(topic: &Arc<Topic>, sync: bool) -> bool {
    let log = topic.log.clone();
    let disk = topic.disk.clone();
    let first_seq = lock(&topic.state).first_seq;
    let this = topic.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<usize, LogError> {
        let mut log = log.write().unwrap_or_else(|p| p.into_inner());
        if sync {
            log.sync()?;
            record_high_water(&mut log, &this.name);
        }
        let before = log.disk_bytes();
        let deleted = log.delete_before(first_seq);
        disk.stored_changed(log.disk_bytes() as i64 - before as i64);
        deleted
    })
    .await;
    match result {
        Ok(Ok(deleted)) => {
            if deleted > 0 {
                tracing::debug!(topic = %topic.name, deleted, "reclaimed fully acked segments");
            }
            true
        }
        Ok(Err(e)) => {
            if topic.log.read().is_ok_and(|log| log.fenced().is_some()) {
                // An interval sync failed: the log is fenced, and the topic says so now rather
                // than at its next publish.
                topic.metrics.storage_failures.add(1);
                topic.set_health(TopicHealth::Failed {
                    reason: e.to_string(),
                });
            } else {
                tracing::error!(topic = %topic.name, error = %e, "segment reclaim failed");
            }
            false
        }
        Err(e) => {
            tracing::error!(topic = %topic.name, error = %e, "segment reclaim task failed");
            false
        }
    }
}

/// Records the high-water mark of a cleanly closed log (no seq reserved past its end). A
/// failure is logged: the restart then skips the reserved seqs, as after a crash.
async fn release_reservation(topic: &Arc<Topic>) {
    let log = topic.log.clone();
    let released = tokio::task::spawn_blocking(move || {
        log.write()
            .unwrap_or_else(|p| p.into_inner())
            .release_reservation()
    })
    .await;
    if let Ok(Err(e)) = released {
        tracing::warn!(topic = %topic.name, error = %e, "cannot release the log's seq reservation");
    }
}

/// Records the log's durable high-water mark. A failure is logged, not returned: the commit it
/// follows is durable all the same, and the next interval tries again.
fn record_high_water(log: &mut log::SegmentLog, topic: &str) {
    if let Err(e) = log.record_high_water() {
        tracing::warn!(topic, error = %e, "cannot record the log's high-water mark");
    }
}
