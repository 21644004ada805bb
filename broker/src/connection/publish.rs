//! `Publish`: through the checks every publish passes, then waiting for its commit; and the
//! publishes the reader shed unread.

use std::time::Instant;

use tracing::debug;
use weir_protocol::{ErrorCode, Publish, PublishBatch};

use super::answers::{self, error, rejected};
use super::confirm::{failure, PendingConfirm, Waiting};
use super::{Connection, End};
use crate::permissions::Action;
use crate::reader::{Shed, Unread};
use crate::storage::log::Message;
use crate::topic::{Admitted, AppendError, BatchPart};

impl Connection {
    /// Publishes `p`, if the key may publish to its topic (an auto-create by a publish needs
    /// only that), through the checks every publish passes ([`crate::publish::publish`]): a
    /// refusal is answered at once, an accepted publish waits for its commit in `pending`
    /// (counted against `max_unconfirmed`) or, parked by a `block` topic, in `parked`.
    pub(super) async fn publish(&mut self, p: Publish) -> Result<(), End> {
        // Before the lookup: a forbidden publish creates no topic and stores nothing.
        if !self.permit(p.id, Action::Publish, &p.topic).await? {
            return Ok(());
        }
        let Some(topic) = self.topic(p.id, &p.topic, true).await? else {
            return Ok(());
        };
        let key = self.key.clone().ok_or(End::ProtocolError)?;
        let memory = self.memory.inbound();
        let message = Message {
            producer: p.producer,
            headers: p.headers,
            payload: p.payload,
        };
        let published = crate::publish::publish(&self.broker, &key, memory, &topic, message).await;
        match published {
            Ok(Admitted::Duplicate(original)) => {
                self.wait_for(p.id, Waiting::Duplicate(original));
                Ok(())
            }
            Ok(Admitted::Queued(confirm)) => {
                self.wait_for(p.id, Waiting::One(confirm));
                Ok(())
            }
            Ok(Admitted::Parked(confirm)) => {
                self.park(p.id, confirm);
                Ok(())
            }
            Err(e) => {
                if let AppendError::Refused(r) = &e {
                    debug!(conn = self.id, topic = %p.topic, reason = ?r.reason, "publish refused");
                }
                self.send(failure(p.id, e)).await
            }
        }
    }

    /// Publishes a batch (protocol v5): message `i` is publish `first_id + i`, answered as if
    /// published alone — consecutive stored ones by one `Confirmed` once committed, each other
    /// by its own `Rejected` or `Error`, in message order. A batch its key may not publish, or
    /// to a topic that cannot be found or created, is refused message by message alike.
    /// Counts against `max_unconfirmed` per message (a batch may take the connection past it
    /// by its own size; reading pauses then).
    pub(super) async fn publish_batch(&mut self, b: PublishBatch) -> Result<(), End> {
        self.broker.metrics().publish_batches.add(1);
        let count = b.messages.len() as u64;
        if count == 0 {
            // No publish to answer, and nothing to auto-create a topic for.
            return Ok(());
        }
        let past_max = |first: u64| first.checked_add(count).is_none();
        if past_max(b.first_id) || b.producer.is_some_and(|p| past_max(p.seq)) {
            let msg = "publish ids or producer sequences of a batch would pass u64::MAX";
            return self
                .send(error(b.first_id, ErrorCode::InvalidArgument, msg))
                .await;
        }
        let ids = b.first_id..b.first_id + count;
        if let Some(refused) = self.permission(Action::Publish, &b.topic)? {
            for id in ids {
                if id != b.first_id {
                    // Each message of the batch is a refused publish, counted as one.
                    self.permission(Action::Publish, &b.topic)?;
                }
                self.send(answers::forbidden(id, &refused)).await?;
                self.answered_now();
            }
            return Ok(());
        }
        let topic = match self.lookup(&b.topic, true).await {
            Ok(topic) => topic,
            Err(failure) => {
                for id in ids {
                    self.send(failure(id)).await?;
                    self.answered_now();
                }
                return Ok(());
            }
        };
        let key = self.key.clone().ok_or(End::ProtocolError)?;
        let memory = self.memory.inbound();
        let batch = (b.messages, b.producer);
        let parts = crate::publish::publish_batch(&self.broker, &key, memory, &topic, batch).await;
        let mut id = b.first_id;
        for part in parts {
            match part {
                BatchPart::Run { count, confirm } => {
                    self.wait_for(id, Waiting::Run { count, confirm });
                    id += count as u64;
                }
                BatchPart::Parked(confirm) => {
                    self.park(id, confirm);
                    id += 1;
                }
                BatchPart::Refused(e) => {
                    self.send(failure(id, e)).await?;
                    self.answered_now();
                    id += 1;
                }
                BatchPart::Duplicate(original) => {
                    self.wait_for(id, Waiting::Duplicate(original));
                    id += 1;
                }
            }
        }
        Ok(())
    }

    /// Publishes from `id` on wait for their commit, counted against `max_unconfirmed`.
    fn wait_for(&mut self, id: u64, waiting: Waiting) {
        let pending = PendingConfirm {
            id,
            waiting,
            received: self.read_at,
        };
        self.unconfirmed += pending.count();
        self.pending.push(pending);
    }

    /// Publish `id`, parked by a `block` topic, waits for room (not counted against
    /// `max_unconfirmed`).
    fn park(&mut self, id: u64, confirm: crate::topic::Confirm) {
        self.parked.push(PendingConfirm {
            id,
            waiting: Waiting::One(confirm),
            received: self.read_at,
        });
    }

    /// Records the publish→confirm time of a publish of a batch answered at once.
    fn answered_now(&self) {
        let elapsed = self.read_at.elapsed();
        self.broker.metrics().observe_publish_confirm(elapsed);
    }

    /// Answers a publish the reader shed unread: its payload did not fit in this connection's
    /// memory (refused as admission would refuse it, naming the level that had no room), or its
    /// header was larger than any accepted (`MessageTooLarge` naming `max_header_bytes`).
    /// A batch shed unread has each of its messages refused alike.
    pub(super) async fn shed(&mut self, p: Unread, why: Shed) -> Result<(), End> {
        self.broker.metrics().frames_shed.add(1);
        let r = match why {
            Shed::Memory(full) => self.broker.admission().memory_refusal(full, Instant::now()),
            Shed::HeaderTooLarge => crate::publish::header_too_large(&self.broker),
        };
        let topic = self.broker.topic(&p.topic);
        for id in p.first_id..p.first_id.saturating_add(p.count) {
            crate::publish::count_refusal(&self.broker, &p.topic, topic.as_deref(), &r);
            self.send(rejected(id, r.clone())).await?;
        }
        Ok(())
    }
}
