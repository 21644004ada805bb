//! A topic's group members: joining a group (creating it), granting credit, leaving — and
//! deleting an ephemeral group when its last member leaves.

use weir_protocol::{GroupConfig, GroupSpec, StartPosition};

use super::{lock, JoinError, Topic};
use crate::admission::budget::MemoryBudget;
use crate::group::{Departure, GrantError, Group, MemberId, Outbox};

impl Topic {
    /// Attaches a subscription to `group` with no credit yet: deliveries go to `outbox`, each
    /// holding its bytes from `memory` (its connection's outbound memory) until written, `Gap`
    /// notices to `notices`. A group that does not exist yet is created at `spec.start` (the
    /// oldest stored message, the next one published, or a sequence — never below the oldest
    /// stored) with `config` (`spec` resolved against the broker's defaults), ephemeral if
    /// `spec.ephemeral` (see [`Topic::leave`]); an existing group keeps its own settings and
    /// kind, whatever `spec` says. Ephemeral groups count toward `max_groups_per_topic` too.
    pub fn join(
        &self,
        group: &str,
        (spec, config): (&GroupSpec, GroupConfig),
        id: MemberId,
        (outbox, notices): (Outbox, Outbox),
        memory: MemoryBudget,
    ) -> Result<(), JoinError> {
        let mut st = lock(&self.state);
        if !st.groups.contains_key(group) {
            if st.groups.len() >= self.limits.max_groups as usize {
                return Err(JoinError::TooManyGroups(self.limits.max_groups));
            }
            let cursor = match spec.start {
                StartPosition::Earliest => st.first_seq,
                StartPosition::Latest => st.committed_next + st.pending_count,
                StartPosition::Seq(seq) => seq.max(st.first_seq),
            };
            let mut g = Group::with_config(cursor, self.limits.max_in_flight, config);
            if spec.ephemeral {
                g.make_ephemeral();
            }
            st.groups.insert(group.to_string(), g);
        }
        if let Some(g) = st.groups.get_mut(group) {
            g.join(id, outbox, notices, memory);
        }
        Ok(())
    }

    /// Grants a member credit and wakes the dispatcher.
    pub fn grant(&self, group: &str, id: MemberId, n: u32) -> Result<(), GrantError> {
        let mut st = lock(&self.state);
        let g = st.groups.get_mut(group).ok_or(GrantError::UnknownMember)?;
        g.grant(id, n, self.limits.max_credit)?;
        drop(st);
        // Notify after releasing the lock so the dispatcher does not wake into a held mutex.
        self.wake_dispatcher.notify_one();
        Ok(())
    }

    /// Whether member `id` of `group` holds deliveries it has not acked or nacked yet.
    pub fn holds_deliveries(&self, group: &str, id: MemberId) -> bool {
        lock(&self.state)
            .groups
            .get(group)
            .is_some_and(|g| g.holds_deliveries(id))
    }

    /// Detaches a member. Its unacked messages return to the group for redelivery, except
    /// those on their last attempt, which are dead-lettered (`consumer-lost`) — unless the
    /// broker is stopping and closed the member itself (see [`Group::leave`]).
    ///
    /// When the last member of an ephemeral group leaves, the group is deleted as
    /// [`Topic::delete_group`] would: its cursor and everything it held unacked (returned or
    /// due for dead-lettering) are forgotten, and messages only it still needed leave the
    /// topic, so it holds nothing afterwards (counted in
    /// [`Metrics::ephemeral_groups_deleted`](crate::metrics::Metrics::ephemeral_groups_deleted)).
    pub fn leave(&self, group: &str, id: MemberId) {
        let departure = if self.stopping.is_cancelled() {
            Departure::BrokerStopping
        } else {
            Departure::Lost
        };
        let mut st = lock(&self.state);
        let Some(g) = st.groups.get_mut(group) else {
            return;
        };
        let left = g.leave(id, departure);
        if g.is_ephemeral() && !g.has_members() {
            let (_, trimmed) = self.forget_group(&mut st, group);
            drop(st);
            self.metrics.ephemeral_groups_deleted.add(1);
            tracing::debug!(topic = %self.name, group, "ephemeral group deleted: its last subscription left");
            if trimmed {
                self.wake_writer.notify_one();
            }
            return;
        }
        drop(st);
        if left.requeued > 0 || left.dead > 0 {
            tracing::debug!(
                topic = %self.name,
                group,
                requeued = left.requeued,
                dead = left.dead,
                "unacked messages of a leaving member returned to the group"
            );
        }
        if left.requeued > 0 {
            self.wake_dispatcher.notify_one();
        }
        if left.dead > 0 {
            self.dead_letters.notify_one();
        }
    }

    /// How many subscriptions are attached to the topic's groups.
    pub fn subscriber_count(&self) -> usize {
        lock(&self.state)
            .groups
            .values()
            .map(Group::member_count)
            .sum()
    }

    /// Whether any group of the topic has a member attached.
    pub fn has_subscribers(&self) -> bool {
        lock(&self.state).groups.values().any(Group::has_members)
    }
}
