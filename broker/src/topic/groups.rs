//! A topic's group operations beyond delivery: ack, nack, term, progress, ack deadlines,
//! moving messages to dead-letter topics, changing a group's settings, and deleting groups.
//!
//! Every operation takes the topic lock for a short, non-blocking section, then wakes whoever
//! has new work: the dispatcher (redeliveries), the broker's dead-letter mover (messages due
//! for a dead-letter topic), the writer (segments that may now be deleted).

use std::time::{Duration, Instant};

use weir_protocol::{GroupConfig, GroupUpdate, RejectReason};

use super::{advance_first, lock, Topic, TopicState};
use crate::group::{DeadLetter, Group, MemberId, Outbox};
use crate::storage::log::{LogError, Record};

/// Why a group could not be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteGroupError {
    /// No such group.
    Unknown,
    /// Members are attached and `force` was not given.
    InUse,
}

/// Why a group's settings could not be changed (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateGroupError {
    /// No such group.
    Unknown,
    /// The new settings are invalid: why.
    Invalid(String),
}

/// Members detached by a delete, each with the queue its notices go to.
pub type Detached = Vec<(MemberId, Outbox)>;

/// A message of one group due for its dead-letter topic (see [`Topic::dead_letter_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterJob {
    pub group: String,
    /// Its dead-letter topic.
    pub dead_letter_topic: String,
    /// The message and why.
    pub letter: DeadLetter,
}

impl Topic {
    /// Acks messages delivered to a member; frees in-flight slots and, once every group has
    /// acked a message, its place in the topic's bounds.
    pub fn ack(&self, group: &str, id: MemberId, seqs: &[u64]) -> usize {
        let mut st = lock(&self.state);
        let acked = st.groups.get_mut(group).map_or(0, |g| g.ack(id, seqs));
        let trimmed = acked > 0 && self.release_floor(&mut st);
        drop(st);
        self.metrics.acked.add(acked as u64);
        self.counters.acked.add(acked as u64);
        if acked > 0 {
            self.wake_dispatcher.notify_one();
        }
        if trimmed {
            self.wake_writer.notify_one();
        }
        acked
    }

    /// The sequences delivered to member `id` and not yet settled within inclusive `ranges`
    /// (any number, overlapping or not), ascending: at most the group's `max_in_flight`,
    /// each visited once.
    pub fn held_in(&self, group: &str, id: MemberId, ranges: Vec<(u64, u64)>) -> Vec<u64> {
        let st = lock(&self.state);
        st.groups
            .get(group)
            .map_or_else(Vec::new, |g| g.held_in(id, ranges))
    }

    /// Nacks messages delivered to a member: they are redelivered after `delay_ms` (capped
    /// by `groups.max_nack_delay_ms`), or dead-lettered if this was their last attempt.
    /// Returns how many were nacked.
    pub fn nack(&self, group: &str, id: MemberId, seqs: &[u64], delay_ms: u64) -> usize {
        let delay = Duration::from_millis(delay_ms).min(self.max_nack_delay);
        let now = self.clock.now();
        let (nacked, dead) = self.with_group(group, |g| g.nack(id, seqs, delay, now));
        self.metrics.nacked.add(nacked as u64);
        self.wake_for(nacked > dead, dead > 0);
        nacked
    }

    /// Sends messages delivered to a member to the group's dead-letter topic at once.
    /// Returns how many.
    pub fn term(&self, group: &str, id: MemberId, seqs: &[u64], reason: &str) -> usize {
        let dead = self.with_group(group, |g| g.term(id, seqs, reason));
        self.wake_for(false, dead > 0);
        dead
    }

    /// Restarts the ack deadline of messages delivered to a member. Returns how many.
    pub fn progress(&self, group: &str, id: MemberId, seqs: &[u64]) -> usize {
        let now = self.clock.now();
        self.with_group(group, |g| g.progress(id, seqs, now))
    }

    /// Expires ack deadlines and nack delays of every group as of `now`, the broker clock's
    /// time (see [`Group::expire`]). Returns when anything is next due, on that clock.
    pub(super) fn expire(&self, now: Instant) -> Option<Instant> {
        let (mut redeliver, mut dead) = (false, false);
        let next = {
            let mut st = lock(&self.state);
            let mut next: Option<Instant> = None;
            for g in st.groups.values_mut() {
                let done = g.expire(now);
                self.metrics.ack_timeouts.add(done.timed_out as u64);
                redeliver |= done.timed_out > done.dead || done.released > 0;
                dead |= done.dead > 0;
                next = match (next, g.next_expiry()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            next
        };
        self.wake_for(redeliver, dead);
        next
    }

    /// Up to `max` messages due for dead-letter topics, over every group.
    pub fn dead_letter_jobs(&self, max: usize) -> Vec<DeadLetterJob> {
        let st = lock(&self.state);
        let mut jobs = Vec::new();
        for (name, g) in &st.groups {
            let left = max - jobs.len();
            if left == 0 {
                break;
            }
            jobs.extend(
                g.dead_letters(left)
                    .into_iter()
                    .map(|letter| DeadLetterJob {
                        group: name.clone(),
                        dead_letter_topic: g.config().dead_letter_topic.clone(),
                        letter,
                    }),
            );
        }
        jobs
    }

    /// Records that `seq` of `group` is durably in its dead-letter topic: it leaves the group,
    /// and the topic once no other group needs it.
    pub fn dead_lettered(&self, group: &str, seq: u64) {
        let mut st = lock(&self.state);
        let moved = st
            .groups
            .get_mut(group)
            .is_some_and(|g| g.dead_lettered(seq));
        let trimmed = moved && self.release_floor(&mut st);
        drop(st);
        if moved {
            self.metrics.dead_lettered.add(1);
            self.wake_dispatcher.notify_one();
        }
        if trimmed {
            self.wake_writer.notify_one();
        }
    }

    /// Deletes a group and its state (cursor, unacked, nacked, dead letters). Refused while
    /// members are attached unless `force`, which detaches them; returns the detached members
    /// with their notice queues, so they can be told (`Unsubscribed`). Messages only that group
    /// still needed leave the topic.
    pub fn delete_group(&self, name: &str, force: bool) -> Result<Detached, DeleteGroupError> {
        let mut st = lock(&self.state);
        let g = st.groups.get(name).ok_or(DeleteGroupError::Unknown)?;
        if g.has_members() && !force {
            return Err(DeleteGroupError::InUse);
        }
        // An ephemeral group was never written to the state store.
        let stored = !g.is_ephemeral();
        let (detached, trimmed) = self.forget_group(&mut st, name);
        drop(st);
        if stored {
            if let Err(e) = self.store.delete_group(&self.name, name) {
                tracing::error!(topic = %self.name, group = name, error = %e, "cannot delete group state");
            }
        }
        tracing::info!(topic = %self.name, group = name, detached = detached.len(), "group deleted");
        if trimmed {
            self.wake_writer.notify_one();
        }
        Ok(detached)
    }

    /// Takes group `name` out of the topic (the lock held): detaches its members, forgets its
    /// cursor and everything it held unacked, and lets messages only it still needed leave.
    /// Returns the detached members and whether the topic's first sequence moved (wake the
    /// writer after releasing the lock: segments may be deletable). Nothing if there is no such
    /// group.
    pub(super) fn forget_group(&self, st: &mut TopicState, name: &str) -> (Detached, bool) {
        let Some(mut g) = st.groups.remove(name) else {
            return (Detached::new(), false);
        };
        let detached = g.detach_all();
        (detached, self.release_floor(st))
    }

    /// Whether `id` is still a member of `group` (a forced delete may have detached it).
    pub fn is_member(&self, group: &str, id: MemberId) -> bool {
        lock(&self.state)
            .groups
            .get(group)
            .is_some_and(|g| g.has_member(id))
    }

    /// Stops the topic for deletion: refuses parked publishes, stops the writer (after what is
    /// queued) and the dispatcher, detaches every member and forgets every group. Returns the
    /// detached members with their notice queues. The caller removes the files once
    /// [`Topic::stopped`] resolves.
    pub fn close_for_delete(&self) -> Detached {
        self.refuse_parked(RejectReason::ShuttingDown);
        self.stop.cancel();
        let mut st = lock(&self.state);
        let detached = st.groups.values_mut().flat_map(Group::detach_all).collect();
        st.groups.clear();
        detached
    }

    /// After messages left a group: moves the topic's first sequence up to the lowest group
    /// floor and lets parked publishes into the freed room. Returns whether anything left.
    pub(super) fn release_floor(&self, st: &mut TopicState) -> bool {
        let trimmed = advance_first(st, Instant::now());
        if trimmed {
            self.unpark(st, &self.appends);
        }
        trimmed
    }

    /// Reads stored message `seq` from the log (off the reactor); `None` if it is no longer
    /// stored.
    pub async fn read_stored(&self, seq: u64) -> Result<Option<Record>, LogError> {
        self.read_range(move |first, next| (seq >= first && seq < next).then_some((seq, 1)))
            .await
            .map(|records| records.into_iter().next())
    }

    /// Reads the last `n` stored messages (fewer if fewer are stored), oldest first.
    pub async fn read_last(&self, n: usize) -> Result<Vec<Record>, LogError> {
        self.read_range(move |first, next| {
            let from = next.saturating_sub(n as u64).max(first);
            (from < next).then_some((from, (next - from) as usize))
        })
        .await
    }

    /// Reads the `(from, count)` that `range` picks given the log's `(first, next)` sequences,
    /// on the blocking pool.
    async fn read_range(
        &self,
        range: impl FnOnce(u64, u64) -> Option<(u64, usize)> + Send + 'static,
    ) -> Result<Vec<Record>, LogError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let log = log.read().unwrap_or_else(|p| p.into_inner());
            match range(log.first_seq(), log.next_seq()) {
                Some((from, count)) => log.read(from, count, usize::MAX),
                None => Ok(Vec::new()),
            }
        })
        .await
        .map_err(|e| LogError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Changes `group`'s settings to `update` applied to its current ones, once `check` (the
    /// broker's rules for a group of this topic) accepts them; returns them. Saved with the
    /// group's state at the next flush (the caller flushes to make it durable at once).
    pub fn update_group(
        &self,
        group: &str,
        update: &GroupUpdate,
        check: impl FnOnce(&GroupConfig) -> Result<GroupConfig, String>,
    ) -> Result<GroupConfig, UpdateGroupError> {
        let mut st = lock(&self.state);
        let g = st.groups.get_mut(group).ok_or(UpdateGroupError::Unknown)?;
        let config = check(&update.apply_to(g.config())).map_err(UpdateGroupError::Invalid)?;
        g.set_config(config.clone());
        Ok(config)
    }

    /// Runs `f` on `group` under the lock (a default result if it does not exist).
    fn with_group<R: Default>(&self, group: &str, f: impl FnOnce(&mut Group) -> R) -> R {
        lock(&self.state)
            .groups
            .get_mut(group)
            .map(f)
            .unwrap_or_default()
    }

    /// Wakes the dispatcher when messages wait for redelivery, and the dead-letter mover when
    /// some are due for a dead-letter topic.
    fn wake_for(&self, redeliver: bool, dead: bool) {
        if redeliver {
            self.wake_dispatcher.notify_one();
        }
        if dead {
            self.dead_letters.notify_one();
        }
    }
}
