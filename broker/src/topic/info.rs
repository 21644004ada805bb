//! What a topic tells operators: its info and description, its counters, the bound refusing
//! its publishes now, and stalled groups and subscribers.

use std::time::{Duration, Instant};

use weir_protocol::{DroppedMessage, TopicInfo};

use super::{lock, Topic, TopicCounterSnapshot, TopicState};
use crate::group::Stall;
use crate::refusal::Refusal;

impl Topic {
    /// A snapshot of the topic's depth and groups.
    pub fn info(&self) -> TopicInfo {
        self.info_of(&lock(&self.state))
    }

    /// A snapshot plus the sample of recently dropped messages, oldest first.
    pub fn describe(&self) -> (TopicInfo, Vec<DroppedMessage>) {
        let st = lock(&self.state);
        (self.info_of(&st), st.recent_drops.iter().cloned().collect())
    }

    fn info_of(&self, st: &TopicState) -> TopicInfo {
        // Groups' ages are on the broker's clock; the drain rate and refusals on real time.
        let (now, clock_now) = (Instant::now(), self.clock.now());
        TopicInfo {
            config: self.config(),
            depth: st.stored(),
            bytes: st.stored_bytes,
            next_seq: st.committed_next,
            groups: st
                .groups
                .iter()
                .map(|(name, g)| g.info(name, st.committed_next, clock_now))
                .collect(),
            groups_omitted: 0,
            dropped: self.counters.dropped.get(),
            parked: st.parked.len() as u64,
            rejected: self.counters.rejected.get(),
            drain_per_s: st.drain.per_second(now).round() as u64,
            refusing: lock(&self.recent_refusals).active(now),
            health: self.health(),
        }
    }

    /// The topic's publish, delivery and ack counters (read without the topic's lock).
    pub fn counters(&self) -> TopicCounterSnapshot {
        let c = &self.counters;
        let (dedup, (producers, ids), memory) = {
            let st = lock(&self.state);
            (st.dedup.counts, st.dedup.len(), st.dedup.memory_bytes())
        };
        TopicCounterSnapshot {
            published: c.published.get(),
            delivered: c.delivered.get(),
            redelivered: c.redelivered.get(),
            acked: c.acked.get(),
            dropped_damaged: c.dropped_damaged.get(),
            dedup,
            dedup_producers: producers as u64,
            dedup_ids: ids as u64,
            dedup_memory_bytes: memory,
            dropped_max_age: c.dropped_max_age.get(),
        }
    }

    /// Records that a publish to this topic was refused by admission before it reached the
    /// topic (rates, overload, memory): counted in the topic's `rejected` like its own refusals,
    /// and shown as [`TopicInfo::refusing`].
    pub fn note_refusal(&self, refusal: &Refusal) {
        self.counters.rejected.add(1);
        self.note_recent(refusal);
    }

    /// Remembers the latest refusal so [`TopicInfo::refusing`] can say which bound is holding
    /// publishers back.
    pub(super) fn note_recent(&self, refusal: &Refusal) {
        lock(&self.recent_refusals).note(refusal, Instant::now());
    }

    /// Logs (and counts) every group stalled at `max_in_flight`, and every member with no
    /// credit while messages wait, for at least `after` — once per `after` each.
    pub fn check_stalls(&self, now: Instant, after: Duration) {
        let mut found: Vec<(String, Stall)> = Vec::new();
        {
            let mut st = lock(&self.state);
            let committed = st.committed_next;
            let mut stalls = Vec::new();
            for (name, g) in st.groups.iter_mut() {
                g.stalls(committed, now, after, &mut stalls);
                found.extend(stalls.drain(..).map(|s| (name.clone(), s)));
            }
        }
        for (group, stall) in found {
            match stall {
                Stall::AtMaxInFlight { for_ } => {
                    self.metrics.stalls_max_in_flight.add(1);
                    tracing::warn!(
                        topic = %self.name, group, max_in_flight = self.limits.max_in_flight,
                        stalled_s = for_.as_secs(),
                        "group stalled at max_in_flight: its consumers are not acking"
                    );
                }
                Stall::NoCredit { member, for_ } => {
                    self.metrics.stalls_no_credit.add(1);
                    tracing::warn!(
                        topic = %self.name, group, conn = member.conn, sub = member.sub,
                        stalled_s = for_.as_secs(),
                        "subscriber has granted no credit while messages wait"
                    );
                }
            }
        }
    }
}
