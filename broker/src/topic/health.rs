//! A topic's storage health — healthy, full, failed or damaged — and what each means for
//! publishers (refused while failed or damaged) and subscribers (told of damage).

use weir_protocol::{Limit, RejectReason, TopicHealth};

use super::{lock, AppendError, Topic, TopicState};
use crate::group::{MemberId, Outbox};

impl Topic {
    /// Whether the topic's storage takes writes and serves reads, and if not, why.
    pub fn health(&self) -> TopicHealth {
        lock(&self.health).clone()
    }

    /// Moves the topic to `health`, logging the change: an ERROR when storage failed or is
    /// damaged (once per change, never per publish), a WARN when the disk is full, an INFO when
    /// it is healthy again. A damaged topic stays damaged until repaired, whatever else
    /// happens (the first damage found is the one kept). Returns whether the state changed.
    pub(super) fn set_health(&self, health: TopicHealth) -> bool {
        let mut current = lock(&self.health);
        if *current == health || matches!(*current, TopicHealth::Damaged { .. }) {
            return false;
        }
        let name = &self.name;
        match &health {
            TopicHealth::Healthy => {
                tracing::info!(topic = %name, was = current.state(), "topic storage is healthy again")
            }
            TopicHealth::Full { reason } => {
                tracing::warn!(topic = %name, %reason, "disk full: refusing publishes to the topic until space returns")
            }
            TopicHealth::Failed { reason } => {
                tracing::error!(topic = %name, %reason, "storage failed: the topic refuses publishes until `weir topic repair` or a restart")
            }
            TopicHealth::Damaged { at_seq, reason } => {
                tracing::error!(topic = %name, at_seq, %reason, "log damaged: delivering only what precedes the damage and refusing publishes until `weir topic repair`")
            }
        }
        *current = health;
        true
    }

    /// Moves the topic back to healthy after a repair (a damaged topic too), with an INFO line.
    pub(super) fn restore_health(&self) {
        let mut current = lock(&self.health);
        tracing::info!(topic = %self.name, was = current.state(), "storage repaired: the topic is healthy again");
        *current = TopicHealth::Healthy;
    }

    /// Whether the last commit found the disk full (cheap: no copy of the reason).
    pub(super) fn is_full(&self) -> bool {
        matches!(*lock(&self.health), TopicHealth::Full { .. })
    }

    /// The first unreadable sequence, while the log is damaged (cheap: no copy of the reason).
    pub(super) fn damaged_at(&self) -> Option<u64> {
        lock(&self.health).damaged_at()
    }

    /// Marks the topic's log damaged at `at_seq` (a record it had confirmed cannot be read
    /// back): groups get nothing from `at_seq` on, publishes are refused, and every subscriber
    /// is told with `Error{StorageDamaged}` (its subscription stays open). Counted once per
    /// damage found; the files are left as they are.
    pub(crate) fn mark_damaged(&self, at_seq: u64, reason: String) {
        if !self.set_health(TopicHealth::Damaged { at_seq, reason }) {
            return;
        }
        self.metrics.storage_damage_found.add(1);
        let st = lock(&self.state);
        for group in st.groups.values() {
            for (member, notices) in group.notice_queues() {
                self.tell_damaged(member, notices, at_seq);
            }
        }
        drop(st);
        // What precedes the damage is still to be delivered.
        self.wake_dispatcher.notify_one();
    }

    /// Sends one subscriber the notice of a damaged log (best effort: a full notice queue
    /// means the subscriber is not reading, and `topic info` says it too).
    fn tell_damaged(&self, member: MemberId, notices: &Outbox, at_seq: u64) {
        if notices
            .try_send(self.damaged_error(member.sub, at_seq).into())
            .is_err()
        {
            tracing::debug!(topic = %self.name, sub = member.sub, "damage notice not queued: the subscriber's queue is full");
        }
    }

    /// The `Error{StorageDamaged}` a subscription `sub` is told while the log is damaged, if it
    /// is (sent right after `Subscribed` to a subscription that joins a damaged topic).
    pub fn damage_notice(&self, sub: u64) -> Option<weir_protocol::Frame> {
        let at_seq = self.damaged_at()?;
        Some(self.damaged_error(sub, at_seq))
    }

    fn damaged_error(&self, sub: u64, at_seq: u64) -> weir_protocol::Frame {
        weir_protocol::Frame::Error(weir_protocol::Error {
            req: sub,
            code: weir_protocol::ErrorCode::StorageDamaged,
            denied: None,
            message: format!(
                "topic {}: its log is damaged at sequence {at_seq}; nothing from there on is \
                 delivered until an operator runs `weir topic repair`",
                self.name
            ),
        })
    }

    /// The first sequence groups may not be given: the committed end of the log, or where it is
    /// damaged, whichever is lower. Messages past the topic's `max_age` are expired first (see
    /// `age.rs`), so no group is handed one.
    pub(super) fn deliverable_end(&self, st: &mut TopicState) -> u64 {
        if self.expire_aged(st) > 0 {
            // Whole expired segments can go.
            self.wake_writer.notify_one();
        }
        self.damaged_at()
            .map_or(st.committed_next, |at| at.min(st.committed_next))
    }

    /// The refusal of a publish while storage is failed or damaged (`StorageDamaged`, the
    /// limit naming the state), or `None` when the topic takes publishes.
    pub(super) fn storage_refusal(&self) -> Option<AppendError> {
        let state = {
            let health = lock(&self.health);
            match &*health {
                TopicHealth::Failed { .. } | TopicHealth::Damaged { .. } => health.state(),
                _ => return None,
            }
        };
        let limit = Limit::new(format!("storage_{state}"), 0);
        Some(self.refusal(RejectReason::StorageDamaged, limit, None))
    }
}
