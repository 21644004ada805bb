//! `max_age`: a topic's bound on how old a stored message may be, measured from its commit
//! (the `timestamp_ms` the writer stamps on every record, on the broker's [`Clock`]).
//!
//! A message older than the bound leaves the topic as a `drop_oldest` eviction does: counted
//! in the topic's `dropped` (and `weir_messages_dropped_total{reason="max_age"}`), sampled in
//! its recent drops with reason `max_age`, every group that had not acked it owed a `Gap`
//! (a message in flight is removed too: a later ack of it is ignored), and whole segments
//! below the new first message deleted by the writer.
//!
//! # When
//!
//! - The topic's writer sleeps on the broker's clock until the oldest stored message's
//!   deadline and then expires what is due ([`Topic::age_due`], [`Topic::expire_aged`]) —
//!   so messages expire with nothing published and nobody reading;
//! - the dispatcher expires what is due before it plans each group's deliveries, so a group
//!   is never handed a message past its age.
//!
//! # Bounds
//!
//! The topic remembers the commit times of its oldest stored messages as [`CommitTimes`]:
//! one `(first seq, commit time)` entry per commit (one commit stamps all its messages with
//! one time), at most [`AGE_RUNS`] of them — never a map per message. Commits made while it is
//! full are not remembered; once it runs low the writer reads their times back from the
//! records' headers ([`REFILL_RECORDS`] records at most per step), as it does after a restart.
//! One step evicts at most [`EXPIRE_MAX`] messages under the topic's lock; the writer takes
//! the next step at once, between its commits.
//!
//! Commit times come from the wall clock: one stepped back makes messages expire late, never
//! early (expiry stops at the first message not yet due).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admit::MAX_AGE;
use super::{lock, Topic, TopicState};
use crate::clock::Clock;
use crate::storage::log::LogError;

/// Most commit times a topic remembers (16 bytes each).
pub(super) const AGE_RUNS: usize = 256;
/// Most records the writer reads back per step to learn their commit times.
const REFILL_RECORDS: usize = 4096;
/// Most messages one step evicts under the topic's lock.
const EXPIRE_MAX: u64 = 65_536;
/// How long the writer waits before reading commit times again after the log refused a read.
const REFILL_RETRY: Duration = Duration::from_secs(1);

/// The commit times of a topic's oldest stored messages: runs `(first seq, commit ms)`, each
/// covering the seqs up to the next run's first (the last one up to `known_to`). Consecutive
/// commits in the same millisecond share a run.
#[derive(Debug)]
pub(super) struct CommitTimes {
    runs: VecDeque<(u64, u64)>,
    /// Seqs below this have known commit times (or are gone); from it on they are read back
    /// from the log.
    known_to: u64,
    /// After a failed read: no new read before this instant on the broker's clock.
    retry_at: Option<Instant>,
}

impl CommitTimes {
    /// Nothing known yet: every stored message from `first_seq` on is read back from the log.
    pub(super) fn new(first_seq: u64) -> CommitTimes {
        CommitTimes {
            runs: VecDeque::new(),
            known_to: first_seq,
            retry_at: None,
        }
    }

    /// Records that seqs `first..end` were committed at `ms`: remembered when they follow
    /// what is known and there is room (or they share the newest run's time).
    pub(super) fn committed(&mut self, first: u64, end: u64, ms: u64) {
        if first != self.known_to || first >= end {
            return;
        }
        match self.runs.back() {
            Some(&(_, last)) if last == ms => {}
            _ if self.runs.len() == AGE_RUNS => return,
            _ => self.runs.push_back((first, ms)),
        }
        self.known_to = end;
    }

    /// Fits what is remembered to the stored messages `first_seq..committed_next`: forgets the
    /// runs wholly below `first_seq` (acked or evicted), and anything from `committed_next` on
    /// (a repair cut the log's end).
    pub(super) fn fit(&mut self, first_seq: u64, committed_next: u64) {
        while self
            .runs
            .get(1)
            .is_some_and(|&(start, _)| start <= first_seq)
        {
            self.runs.pop_front();
        }
        if self.known_to > committed_next {
            self.runs.retain(|&(start, _)| start < committed_next);
            self.known_to = committed_next;
        }
        if self.known_to <= first_seq {
            self.runs.clear();
            self.known_to = first_seq;
        }
    }

    /// The commit time of the oldest remembered message.
    fn oldest_ms(&self) -> Option<u64> {
        self.runs.front().map(|&(_, ms)| ms)
    }

    /// The end (exclusive) of the messages whose commit time is at most `cutoff_ms`, counted
    /// from the oldest run and stopping at the first run that is newer.
    fn expired_end(&self, cutoff_ms: u64) -> Option<u64> {
        let mut end = None;
        for (i, &(_, ms)) in self.runs.iter().enumerate() {
            if ms > cutoff_ms {
                break;
            }
            end = Some(
                self.runs
                    .get(i + 1)
                    .map_or(self.known_to, |&(next, _)| next),
            );
        }
        end
    }

    /// When the commit times past `known_to` (up to `committed_next`) are to be read back:
    /// once fewer than a quarter of the runs are remembered, at once or, after a failed read,
    /// at its retry time. `None` while nothing needs reading.
    fn refill_at(&self, committed_next: u64, now: Instant) -> Option<Instant> {
        (self.known_to < committed_next && self.runs.len() <= AGE_RUNS / 4)
            .then(|| self.retry_at.map_or(now, |at| at.max(now)))
    }

    /// Whether the commit times past `known_to` are to be read back now.
    fn wants_refill(&self, committed_next: u64, now: Instant) -> bool {
        self.refill_at(committed_next, now)
            .is_some_and(|at| at <= now)
    }

    /// Adds runs read back from the log for `from..to` (`found`: `(seq, ms)` of the records
    /// read, in order; `end`: where the read stopped), if nothing changed what is known since
    /// the read began at `from`.
    fn learned(&mut self, from: u64, found: &[(u64, u64)], end: u64) {
        if self.known_to != from {
            return;
        }
        for &(seq, ms) in found {
            if self.runs.back().is_some_and(|&(_, last)| last == ms) {
                continue;
            }
            if self.runs.len() == AGE_RUNS {
                self.known_to = seq;
                return;
            }
            self.runs.push_back((seq, ms));
        }
        self.known_to = end;
        self.retry_at = None;
    }
}

/// A deadline in milliseconds since the Unix epoch as an instant on `clock` (now if passed);
/// `None` if it lies past what an `Instant` can hold (it never comes).
fn instant_of(clock: &Clock, at_ms: u64) -> Option<Instant> {
    let now = clock.now();
    now.checked_add(Duration::from_millis(at_ms.saturating_sub(clock.unix_ms())))
}

impl Topic {
    /// Evicts (as [`Topic::evict_front`] does, reason `max_age`) the oldest stored messages
    /// whose remembered commit time is older than the topic's `max_age` on the broker's
    /// clock — at most [`EXPIRE_MAX`]. Returns how many messages were dropped; 0 without a
    /// `max_age`. Messages whose commit time is not remembered yet wait for the writer to
    /// read it back.
    pub(super) fn expire_aged(&self, st: &mut TopicState) -> u64 {
        let Some(max_age) = self.settings().max_age_ms else {
            return 0;
        };
        st.ages.fit(st.first_seq, st.committed_next);
        let cutoff = self.clock.unix_ms().saturating_sub(max_age);
        let Some(end) = st.ages.expired_end(cutoff) else {
            return 0;
        };
        let end = end
            .min(st.committed_next)
            .min(st.first_seq.saturating_add(EXPIRE_MAX));
        let k = end.saturating_sub(st.first_seq) as usize;
        let dropped = self.evict_front(st, k, MAX_AGE);
        st.ages.fit(st.first_seq, st.committed_next);
        dropped
    }

    /// When the writer should next look at the topic's ages, on the broker's clock: the oldest
    /// remembered message's deadline, or now when commit times are to be read back. `None`
    /// without a `max_age`, or with nothing stored.
    pub(super) fn age_due(&self) -> Option<Instant> {
        let max_age = self.settings().max_age_ms?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.ages.fit(st.first_seq, st.committed_next);
        let now = self.clock.now();
        let due = st
            .ages
            .oldest_ms()
            .and_then(|ms| instant_of(&self.clock, ms.saturating_add(max_age)));
        match (due, st.ages.refill_at(st.committed_next, now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts recording commit times from the next commit if the topic has a `max_age`.
    /// `first..end` were just committed at `ms` (the topic's lock held).
    pub(super) fn note_commit_time(&self, st: &mut TopicState, first: u64, end: u64, ms: u64) {
        if self.settings().max_age_ms.is_some() {
            st.ages.fit(st.first_seq, st.committed_next);
            st.ages.committed(first, end, ms);
        }
    }
}

/// One step of the writer's age sweep: expires what is due, reads commit times back from the
/// log when few are remembered (off the reactor), and expires again. Returns how many
/// messages left the topic.
pub(super) async fn sweep(topic: &Arc<Topic>) -> u64 {
    let (mut dropped, refill) = {
        let mut st = lock(&topic.state);
        let dropped = topic.expire_aged(&mut st);
        let now = topic.clock.now();
        let wanted =
            topic.settings().max_age_ms.is_some() && st.ages.wants_refill(st.committed_next, now);
        // Nothing past a damaged record can be read: what lies there waits for a repair.
        let end = topic
            .damaged_at()
            .map_or(st.committed_next, |at| at.min(st.committed_next));
        let refill = wanted.then_some((st.ages.known_to, end));
        if refill.is_some_and(|(from, to)| from >= to) {
            st.ages.retry_at = Some(now + REFILL_RETRY);
            return dropped;
        }
        (dropped, refill)
    };
    let Some((from, to)) = refill else {
        return dropped;
    };
    let log = topic.log.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<(Vec<(u64, u64)>, u64), LogError> {
        let log = log.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(u64, u64)> = Vec::new();
        let mut end = to;
        let mut runs = 0;
        log.scan_times(from, |seq, ms| {
            if seq >= to {
                return false;
            }
            let new_run = found.last().is_none_or(|&(_, last)| last != ms);
            if found.len() == REFILL_RECORDS || (new_run && runs == AGE_RUNS) {
                end = seq;
                return false;
            }
            runs += usize::from(new_run);
            found.push((seq, ms));
            true
        })?;
        Ok((found, end))
    })
    .await
    .unwrap_or_else(|e| Err(LogError::Io(std::io::Error::other(e.to_string()))));
    let mut st = lock(&topic.state);
    match read {
        Ok((found, end)) => {
            st.ages.learned(from, &found, end);
            dropped += topic.expire_aged(&mut st);
        }
        Err(e) => {
            tracing::warn!(topic = %topic.name, from, error = %e, "cannot read commit times for max_age");
            st.ages.retry_at = Some(topic.clock.now() + REFILL_RETRY);
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_that_follow_what_is_known_become_runs_and_expire_as_a_prefix() {
        let mut t = CommitTimes::new(0);
        t.committed(0, 3, 100);
        t.committed(3, 4, 100); // same millisecond: one run
        t.committed(4, 6, 200);
        assert_eq!(t.runs, [(0, 100), (4, 200)]);
        assert_eq!(t.known_to, 6);
        assert_eq!(t.expired_end(99), None);
        assert_eq!(t.expired_end(100), Some(4));
        assert_eq!(t.expired_end(1_000), Some(6));
        // A commit that does not follow what is known (a gap) is not remembered.
        t.committed(7, 8, 300);
        assert_eq!(t.known_to, 6);
        assert_eq!(t.runs.len(), 2);
    }

    #[test]
    fn a_newer_run_before_an_older_one_stops_expiry_there() {
        // The wall clock stepped back between two commits: the later, older-looking run
        // waits for the one before it.
        let mut t = CommitTimes::new(10);
        t.committed(10, 11, 500);
        t.committed(11, 12, 400);
        assert_eq!(t.expired_end(450), None);
        assert_eq!(t.expired_end(500), Some(12));
    }

    #[test]
    fn trimming_forgets_runs_below_the_first_stored_message() {
        let mut t = CommitTimes::new(0);
        t.committed(0, 2, 1);
        t.committed(2, 4, 2);
        t.committed(4, 6, 3);
        t.fit(3, 6);
        assert_eq!(t.runs, [(2, 2), (4, 3)], "the run holding seq 3 stays");
        t.fit(6, 6);
        assert!(t.runs.is_empty());
        assert_eq!(t.known_to, 6);
        t.fit(9, 9);
        assert_eq!(
            t.known_to, 9,
            "nothing below the first stored message is unknown"
        );
    }

    #[test]
    fn a_cut_end_of_the_log_is_forgotten() {
        let mut t = CommitTimes::new(0);
        t.committed(0, 2, 1);
        t.committed(2, 4, 2);
        t.fit(0, 2);
        assert_eq!(t.runs, [(0, 1)]);
        assert_eq!(t.known_to, 2);
        assert_eq!(t.expired_end(5), Some(2), "never past the end");
    }

    #[test]
    fn at_most_age_runs_are_remembered_and_the_rest_is_read_back() {
        let mut t = CommitTimes::new(0);
        for i in 0..AGE_RUNS as u64 + 5 {
            t.committed(i, i + 1, i);
        }
        assert_eq!(t.runs.len(), AGE_RUNS);
        assert_eq!(
            t.known_to, AGE_RUNS as u64,
            "commits past the bound are not kept"
        );
        let now = Instant::now();
        let end = AGE_RUNS as u64 + 5;
        assert!(!t.wants_refill(end, now), "plenty remembered");
        t.fit(AGE_RUNS as u64 - 10, end);
        assert!(t.wants_refill(end, now), "running low, with more stored");
        let from = t.known_to;
        let found: Vec<(u64, u64)> = (from..end).map(|s| (s, s)).collect();
        t.learned(from, &found, end);
        assert_eq!(t.known_to, end);
        assert_eq!(t.runs.back(), Some(&(end - 1, end - 1)));
        assert!(!t.wants_refill(end, now));
    }

    #[test]
    fn a_read_back_that_fills_the_runs_stops_where_it_fit() {
        let mut t = CommitTimes::new(0);
        let found: Vec<(u64, u64)> = (0..AGE_RUNS as u64 + 3).map(|s| (s, s)).collect();
        t.learned(0, &found, AGE_RUNS as u64 + 3);
        assert_eq!(t.runs.len(), AGE_RUNS);
        assert_eq!(t.known_to, AGE_RUNS as u64);
        // A read that raced with a change of what is known is dropped.
        t.learned(5, &[(300, 1)], 301);
        assert_eq!(t.known_to, AGE_RUNS as u64);
    }

    #[test]
    fn a_failed_read_waits_before_the_next() {
        let mut t = CommitTimes::new(0);
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        t.retry_at = Some(later);
        assert!(!t.wants_refill(5, now));
        assert_eq!(t.refill_at(5, now), Some(later));
        assert!(t.wants_refill(5, later));
        // With plenty remembered, a past retry time asks for no read (the writer does not spin).
        for i in 0..AGE_RUNS as u64 / 2 {
            t.committed(i, i + 1, i);
        }
        assert_eq!(t.refill_at(200, later), None);
    }

    #[test]
    fn deadlines_in_wall_milliseconds_map_onto_the_broker_clock() {
        let clock = Clock::paused();
        let now_ms = clock.unix_ms();
        let in_250 = clock.now() + Duration::from_millis(250);
        assert_eq!(instant_of(&clock, now_ms + 250), Some(in_250));
        assert_eq!(
            instant_of(&clock, now_ms - 5),
            Some(clock.now()),
            "a passed deadline is now"
        );
    }
}
