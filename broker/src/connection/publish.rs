//! `Publish`: through the checks every publish passes, then waiting for its commit; and the
//! publishes the reader shed unread.

use std::time::Instant;

use tracing::debug;
use weir_protocol::{ErrorCode, Publish};

use super::answers::{error, rejected};
use super::confirm::PendingConfirm;
use super::{Connection, End};
use crate::permissions::Action;
use crate::reader::Shed;
use crate::topic::{Admitted, AppendError};

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
        let published =
            crate::publish::publish(&self.broker, &key, memory, &topic, p.headers, p.payload).await;
        match published {
            Ok(admitted) => {
                let (waiting, confirm) = match admitted {
                    Admitted::Queued(confirm) => (&mut self.pending, confirm),
                    Admitted::Parked(confirm) => (&mut self.parked, confirm),
                };
                waiting.push(PendingConfirm {
                    id: p.id,
                    confirm,
                    received: self.read_at,
                });
                Ok(())
            }
            Err(AppendError::Refused(r)) => {
                debug!(conn = self.id, topic = %p.topic, reason = ?r.reason, "publish refused");
                self.send(rejected(p.id, r)).await
            }
            Err(AppendError::Storage(message)) => {
                self.send(error(p.id, ErrorCode::Internal, message)).await
            }
            Err(e @ AppendError::StorageFailed(_)) => {
                self.send(error(p.id, ErrorCode::StorageFailed, e.to_string()))
                    .await
            }
        }
    }

    /// Answers a publish the reader shed unread: its payload did not fit in this connection's
    /// memory (refused as admission would refuse it, naming the level that had no room), or its
    /// header was larger than any accepted (`MessageTooLarge` naming `max_header_bytes`).
    pub(super) async fn shed(&mut self, p: Publish, why: Shed) -> Result<(), End> {
        self.broker.metrics().frames_shed.add(1);
        let r = match why {
            Shed::Memory(full) => self.broker.admission().memory_refusal(full, Instant::now()),
            Shed::HeaderTooLarge => crate::publish::header_too_large(&self.broker),
        };
        let topic = self.broker.topic(&p.topic);
        crate::publish::count_refusal(&self.broker, &p.topic, topic.as_deref(), &r);
        self.send(rejected(p.id, r)).await
    }
}
