//! Managing topics and groups: `CreateTopic`, `ListTopics`, `DescribeTopic`, `UpdateTopic`,
//! `DeleteTopic`, `RepairTopic`, `UpdateGroup` and `DeleteGroup`. The expensive ones are
//! admitted under the key's `ops_per_s`. Each needs the key's `manage` permission on the topic
//! (listing and describing: `monitor`); see [`crate::permissions`].

use tracing::warn;
use weir_protocol::{
    CreateTopic, DeleteGroup, DeleteTopic, DescribeTopic, ErrorCode, Frame, GroupDeleted,
    GroupUpdated, ListTopics, RepairTopic, TopicCreated, TopicDeleted, TopicRepaired, TopicUpdated,
    Unsubscribed, UpdateGroup, UpdateTopic,
};

use super::answers::{error, rejected};
use super::{Connection, End};
use crate::admission::Work;
use crate::broker::{CreateError, DeleteTopicError, UpdateError};
use crate::permissions::Action;
use crate::topic::{DeleteGroupError, Detached};

impl Connection {
    /// Lists the topics the key may `monitor`, one page that fits in a frame; charged to this
    /// connection's memory.
    pub(super) async fn list_topics(&mut self, l: ListTopics) -> Result<(), End> {
        let max = self.broker.config().limits.max_frame_bytes as usize;
        let access = self
            .identity
            .as_ref()
            .map(|id| id.access.clone())
            .ok_or(End::ProtocolError)?;
        let visible = |name: &str| access.grants().allows(Action::Monitor, name);
        let page = self.broker.list_topics_page(l, max, visible);
        self.send_charged(Frame::TopicList(page)).await
    }

    /// Describes a topic, cut to fit in a frame; charged to this connection's memory.
    pub(super) async fn describe_topic(&mut self, d: DescribeTopic) -> Result<(), End> {
        if !self.permit(d.req, Action::Monitor, &d.name).await? {
            return Ok(());
        }
        let answer = match self.broker.topic(&d.name) {
            Some(topic) => {
                let (info, recent_drops) = topic.describe();
                let max = self.broker.config().limits.max_frame_bytes as usize;
                let answer = crate::replies::description(d.req, info, recent_drops, max);
                Frame::TopicDescription(Box::new(answer))
            }
            None => error(
                d.req,
                ErrorCode::UnknownTopic,
                format!("unknown topic {}", d.name),
            ),
        };
        self.send_charged(answer).await
    }

    /// Creates a topic, admitted under the key's `ops_per_s` (given back when nothing was made).
    pub(super) async fn create_topic(&mut self, c: CreateTopic) -> Result<(), End> {
        if !self.permit(c.req, Action::Manage, &c.spec.name).await? {
            return Ok(());
        }
        if let Err(r) = self.admit_op(Work::CreateTopic, &c.spec.name) {
            return self.send(rejected(c.req, r)).await;
        }
        let mut spec = c.spec;
        if self.version < 6 {
            // A v4 or v5 client cannot say `max_age`: re-creating a topic that has one is not a
            // different configuration (it gets the topic as it is).
            if let Some(existing) = self.broker.topic(&spec.name) {
                spec.max_age_ms = Some(existing.config().max_age_ms.unwrap_or(0));
            }
        }
        let created = self.broker.create_topic(spec).await;
        if matches!(created, Err(_) | Ok((_, false))) {
            self.give_back_op();
        }
        let answer = match created {
            Ok((topic, created)) => Frame::TopicCreated(TopicCreated {
                req: c.req,
                created,
                config: topic.config(),
            }),
            Err(CreateError::Invalid(msg)) => error(c.req, ErrorCode::InvalidArgument, msg),
            Err(e @ CreateError::Exists(_)) => error(c.req, ErrorCode::TopicExists, e.to_string()),
            Err(e @ (CreateError::TooMany(_) | CreateError::OverCeiling(_))) => {
                error(c.req, ErrorCode::LimitExceeded, e.to_string())
            }
            Err(e) => error(c.req, ErrorCode::Internal, e.to_string()),
        };
        self.send(answer).await
    }

    /// Changes a topic's settings live, admitted like a create (it writes to disk too).
    pub(super) async fn update_topic(&mut self, u: UpdateTopic) -> Result<(), End> {
        if !self.permit(u.req, Action::Manage, &u.name).await? {
            return Ok(());
        }
        if let Err(r) = self.admit_op(Work::CreateTopic, &u.name) {
            return self.send(rejected(u.req, r)).await;
        }
        let answer = match self.broker.update_topic(&u.name, &u.update).await {
            Ok(config) => Frame::TopicUpdated(TopicUpdated { req: u.req, config }),
            Err(e) => self.update_error(u.req, e),
        };
        self.send(answer).await
    }

    /// Changes a group's settings live, admitted like a group delete.
    pub(super) async fn update_group(&mut self, u: UpdateGroup) -> Result<(), End> {
        if !self.permit(u.req, Action::Manage, &u.topic).await? {
            return Ok(());
        }
        let dlq = u.update.dead_letter_topic.as_deref();
        if let Some(dlq) = super::subscribe::custom_dead_letter(&u.topic, dlq) {
            if !self.permit(u.req, Action::Publish, dlq).await? {
                return Ok(());
            }
        }
        if let Err(r) = self.admit_op(Work::DeleteGroup, &u.topic) {
            return self.send(rejected(u.req, r)).await;
        }
        let answer = match self
            .broker
            .update_group(&u.topic, &u.group, &u.update)
            .await
        {
            Ok(config) => Frame::GroupUpdated(GroupUpdated { req: u.req, config }),
            Err(e) => self.update_error(u.req, e),
        };
        self.send(answer).await
    }

    /// The `Error` answering request `req` with a failed update.
    fn update_error(&self, req: u64, e: UpdateError) -> Frame {
        let code = match e {
            UpdateError::Unknown(_) => ErrorCode::UnknownTopic,
            UpdateError::UnknownGroup { .. } => ErrorCode::UnknownGroup,
            UpdateError::Invalid(_) => ErrorCode::InvalidArgument,
            UpdateError::OverCeiling(_) => ErrorCode::LimitExceeded,
            UpdateError::Failed { .. } | UpdateError::NotStored { .. } => {
                warn!(conn = self.id, error = %e, "update failed");
                ErrorCode::Internal
            }
        };
        error(req, code, e.to_string())
    }

    /// Deletes a group (with `force`, detaching its subscribers), admitted like a create.
    pub(super) async fn delete_group(&mut self, d: DeleteGroup) -> Result<(), End> {
        if !self.permit(d.req, Action::Manage, &d.topic).await? {
            return Ok(());
        }
        if let Err(r) = self.admit_op(Work::DeleteGroup, &d.topic) {
            return self.send(rejected(d.req, r)).await;
        }
        let Some(topic) = self.broker.topic(&d.topic) else {
            let msg = format!("unknown topic {}", d.topic);
            return self.send(error(d.req, ErrorCode::UnknownTopic, msg)).await;
        };
        let answer = match topic.delete_group(&d.group, d.force) {
            Ok(detached) => {
                tell_detached(detached);
                Frame::GroupDeleted(GroupDeleted { req: d.req })
            }
            Err(DeleteGroupError::Unknown) => error(
                d.req,
                ErrorCode::UnknownGroup,
                format!("topic {} has no group {}", d.topic, d.group),
            ),
            Err(DeleteGroupError::InUse) => error(
                d.req,
                ErrorCode::InUse,
                format!(
                    "group {} has subscribers attached (delete with force to detach them)",
                    d.group
                ),
            ),
        };
        self.send(answer).await
    }

    /// Deletes a topic (with `force`, detaching its subscribers), admitted like a create.
    pub(super) async fn delete_topic(&mut self, d: DeleteTopic) -> Result<(), End> {
        if !self.permit(d.req, Action::Manage, &d.name).await? {
            return Ok(());
        }
        if let Err(r) = self.admit_op(Work::DeleteTopic, &d.name) {
            return self.send(rejected(d.req, r)).await;
        }
        let answer = match self.broker.delete_topic(&d.name, d.force).await {
            Ok(detached) => {
                tell_detached(detached);
                Frame::TopicDeleted(TopicDeleted { req: d.req })
            }
            Err(DeleteTopicError::Unknown) => error(
                d.req,
                ErrorCode::UnknownTopic,
                format!("unknown topic {}", d.name),
            ),
            Err(DeleteTopicError::InUse(n)) => error(
                d.req,
                ErrorCode::InUse,
                format!(
                    "topic {} has {n} subscribers attached (delete with force to detach them)",
                    d.name
                ),
            ),
            Err(DeleteTopicError::Failed(msg)) => error(d.req, ErrorCode::Internal, msg),
        };
        self.send(answer).await
    }

    /// Repairs a topic's storage (`weir topic repair`): an expensive operation, admitted like a
    /// delete.
    pub(super) async fn repair_topic(&mut self, r: RepairTopic) -> Result<(), End> {
        if !self.permit(r.req, Action::Manage, &r.name).await? {
            return Ok(());
        }
        if let Err(refusal) = self.admit_op(Work::DeleteTopic, &r.name) {
            return self.send(rejected(r.req, refusal)).await;
        }
        let answer = match self.broker.repair_topic(&r.name).await {
            Ok(Some(done)) => Frame::TopicRepaired(TopicRepaired {
                req: r.req,
                skipped: done.skipped,
                quarantined: done.quarantined,
                health: done.health,
            }),
            Ok(None) => error(
                r.req,
                ErrorCode::UnknownTopic,
                format!("unknown topic {}", r.name),
            ),
            Err(msg) => error(r.req, ErrorCode::StorageDamaged, msg),
        };
        self.send(answer).await
    }
}

/// Tells members a forced delete detached that their subscription is over (`Unsubscribed`).
/// A member whose control queue is full is not told (logged): its connection is not reading.
fn tell_detached(detached: Detached) {
    for (member, notices) in detached {
        let frame = Frame::Unsubscribed(Unsubscribed { sub: member.sub });
        if notices.try_send(frame.into()).is_err() {
            warn!(
                conn = member.conn,
                sub = member.sub,
                "cannot tell a detached subscriber: its queue is full"
            );
        }
    }
}
