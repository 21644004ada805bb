//! `Subscribe`, `Unsubscribe` and `Credit`: a connection's subscriptions, each a member of one
//! topic's group, and what happens to them when the connection ends.

use tracing::debug;
use weir_protocol::{Credit, ErrorCode, Frame, Subscribe, Subscribed, Unsubscribed};

use super::answers::{error, rejected, unknown_sub};
use super::{Connection, End, Subscription};
use crate::admission::Work;
use crate::group::{GrantError, MemberId};
use crate::permissions::Action;
use crate::topic::JoinError;

impl Connection {
    /// Subscribes: the request's own checks first (they cost no token), then the key's
    /// permissions (`subscribe` on the topic; `publish` on a dead-letter topic the group names
    /// other than `<topic>.dlq`), then the key's
    /// `ops_per_s` (which also pays for creating the topic), then the topic's group bound (a
    /// refusal there gives the token back).
    pub(super) async fn subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        self.forget_detached();
        let limits = &self.broker.config().limits;
        let refusal = if self.subs.contains_key(&s.sub) {
            Some((
                ErrorCode::SubscriptionExists,
                format!("subscription {} is already open", s.sub),
            ))
        } else if self.subs.len() >= limits.max_subscriptions as usize {
            Some((
                ErrorCode::LimitExceeded,
                format!(
                    "max_subscriptions ({}) reached on this connection",
                    limits.max_subscriptions
                ),
            ))
        } else if s.credit > limits.max_credit {
            Some((
                ErrorCode::LimitExceeded,
                format!(
                    "credit {} exceeds max_credit ({})",
                    s.credit, limits.max_credit
                ),
            ))
        } else if let Err(msg) = crate::config::validate_topic_name(&s.group) {
            Some((ErrorCode::InvalidArgument, format!("group: {msg}")))
        } else {
            None
        };
        if let Some((code, msg)) = refusal {
            return self.send(error(s.sub, code, msg)).await;
        }
        if !self.permit(s.sub, Action::Subscribe, &s.topic).await? {
            return Ok(());
        }
        // A group naming its own dead-letter topic has the broker write there for it.
        if let Some(dlq) = custom_dead_letter(&s.topic, s.group_spec.dead_letter_topic.as_deref()) {
            if !self.permit(s.sub, Action::Publish, dlq).await? {
                return Ok(());
            }
        }
        let group_config = match self.broker.config().resolve_group(&s.topic, &s.group_spec) {
            Ok(config) => config,
            Err(msg) => {
                return self
                    .send(error(s.sub, ErrorCode::InvalidArgument, msg))
                    .await
            }
        };
        if let Err(r) = self.admit_op(Work::Subscribe, &s.topic) {
            return self.send(rejected(s.sub, r)).await;
        }
        let Some(topic) = self.topic(s.sub, &s.topic, false).await? else {
            self.give_back_op();
            return Ok(());
        };
        let member = self.member(s.sub);
        if let Err(JoinError::TooManyGroups(max)) = topic.join(
            &s.group,
            (&s.group_spec, group_config),
            member,
            (self.deliveries.clone(), self.control.clone()),
            self.memory.outbound().clone(),
        ) {
            self.give_back_op();
            let msg = format!("topic {} is at max_groups_per_topic ({max})", s.topic);
            return self.send(error(s.sub, ErrorCode::LimitExceeded, msg)).await;
        }
        self.subs.insert(
            s.sub,
            Subscription {
                topic: topic.clone(),
                group: s.group.clone(),
            },
        );
        debug!(conn = self.id, sub = s.sub, topic = %s.topic, group = %s.group, credit = s.credit, "subscribed");
        // Subscribed goes out before the credit that lets deliveries start.
        self.send(Frame::Subscribed(Subscribed { sub: s.sub }))
            .await?;
        if let Some(notice) = topic.damage_notice(s.sub) {
            self.send(notice).await?;
        }
        if s.credit > 0 {
            // Cannot fail: the member just joined and the credit was checked against max_credit.
            let _ = topic.grant(&s.group, member, s.credit);
        }
        Ok(())
    }

    /// Closes subscription `sub`; its unacked messages return to its group (or, if it was the
    /// last member of an ephemeral group, the group is deleted: see [`crate::topic::Topic::leave`]).
    pub(super) async fn unsubscribe(&mut self, sub: u64) -> Result<(), End> {
        match self.subs.remove(&sub) {
            Some(s) => {
                s.topic.leave(&s.group, self.member(sub));
                self.send(Frame::Unsubscribed(Unsubscribed { sub })).await
            }
            None => self.send(unknown_sub(sub)).await,
        }
    }

    /// Grants subscription `sub` more credit, up to `max_credit` outstanding.
    pub(super) async fn credit(&mut self, c: Credit) -> Result<(), End> {
        let Some(s) = self.subs.get(&c.sub) else {
            return self.send(unknown_sub(c.sub)).await;
        };
        match s.topic.grant(&s.group, self.member(c.sub), c.n) {
            Ok(()) => Ok(()),
            Err(GrantError::UnknownMember) => self.send(unknown_sub(c.sub)).await,
            Err(GrantError::TooMuch { outstanding, max }) => {
                let msg = format!(
                    "credit {outstanding} + {} would exceed max_credit ({max})",
                    c.n
                );
                self.send(error(c.sub, ErrorCode::LimitExceeded, msg)).await
            }
        }
    }

    /// Forgets subscriptions a forced group or topic delete detached (their subscribers were
    /// sent `Unsubscribed`), so their ids and slots can be reused.
    fn forget_detached(&mut self) {
        let conn = self.id;
        self.subs
            .retain(|&sub, s| s.topic.is_member(&s.group, MemberId { conn, sub }));
    }

    /// Whether any subscription of this connection holds deliveries it has not settled.
    pub(super) fn holds_deliveries(&self) -> bool {
        self.subs.iter().any(|(&sub, s)| {
            s.topic
                .holds_deliveries(&s.group, MemberId { conn: self.id, sub })
        })
    }

    /// Detaches every subscription; their unacked messages return to their groups (ephemeral
    /// groups left without members are deleted).
    pub(super) fn leave_all(&mut self) {
        for (sub, s) in self.subs.drain() {
            s.topic.leave(&s.group, MemberId { conn: self.id, sub });
        }
    }
}

/// The dead-letter topic a group of `topic` names, when it is not the default one (which
/// follows `topic`'s permissions): the key needs `publish` on it.
pub(super) fn custom_dead_letter<'a>(topic: &str, named: Option<&'a str>) -> Option<&'a str> {
    named.filter(|dlq| *dlq != crate::config::default_dead_letter_topic(topic))
}
