//! `Ack`, `Nack`, `Term` and `Progress`: settling deliveries a subscription holds.

use weir_protocol::{Ack, Nack, Progress, Settle, Settlement, Term};

use super::answers::unknown_sub;
use super::{Connection, End};
use crate::group::MemberId;
use crate::topic::Topic;

impl Connection {
    /// Acks: the messages are done for this group.
    pub(super) async fn ack(&mut self, a: Ack) -> Result<(), End> {
        self.on_sub(a.sub, |t, g, m| t.ack(g, m, &a.seqs)).await
    }

    /// Nacks: the messages are redelivered after `delay_ms`.
    pub(super) async fn nack(&mut self, n: Nack) -> Result<(), End> {
        let delay = n.delay_ms;
        self.on_sub(n.sub, |t, g, m| t.nack(g, m, &n.seqs, delay))
            .await
    }

    /// Terms: the messages are due for the dead-letter topic, with the reason (capped).
    pub(super) async fn term(&mut self, t: Term) -> Result<(), End> {
        let reason = self.capped_reason(t.reason);
        self.on_sub(t.sub, |topic, g, m| topic.term(g, m, &t.seqs, &reason))
            .await
    }

    /// Progress: the messages' ack deadlines start again.
    pub(super) async fn progress(&mut self, p: Progress) -> Result<(), End> {
        self.on_sub(p.sub, |t, g, m| t.progress(g, m, &p.seqs))
            .await
    }

    /// Settles ranges (protocol v5): the deliveries this subscription holds in them are acked,
    /// nacked, termed or extended as by the single frames.
    pub(super) async fn settle(&mut self, s: Settle) -> Result<(), End> {
        let reason = match &s.how {
            Settlement::Term { reason } => self.capped_reason(reason.clone()),
            _ => String::new(),
        };
        let ranges = s.ranges;
        self.on_sub(s.sub, |t, g, m| {
            let seqs = t.held_in(g, m, ranges);
            match s.how {
                Settlement::Ack => t.ack(g, m, &seqs),
                Settlement::Nack { delay_ms } => t.nack(g, m, &seqs, delay_ms),
                Settlement::Term { .. } => t.term(g, m, &seqs, &reason),
                Settlement::Progress => t.progress(g, m, &seqs),
            }
        })
        .await
    }

    /// Applies `op` to subscription `sub`'s topic, group and member id, or answers
    /// `UnknownSubscription`.
    async fn on_sub(
        &mut self,
        sub: u64,
        op: impl FnOnce(&Topic, &str, MemberId) -> usize,
    ) -> Result<(), End> {
        let Some(s) = self.subs.get(&sub) else {
            return self.send(unknown_sub(sub)).await;
        };
        op(&s.topic, &s.group, self.member(sub));
        Ok(())
    }

    /// A `Term` reason cut to `max_reason_bytes` (at a character boundary), counted when cut:
    /// every client string the broker keeps has a byte cap.
    fn capped_reason(&self, mut reason: String) -> String {
        let max = self.broker.config().limits.max_reason_bytes as usize;
        if reason.len() > max {
            let cut = (0..=max)
                .rev()
                .find(|&i| reason.is_char_boundary(i))
                .unwrap_or(0);
            reason.truncate(cut);
            self.broker.metrics().reasons_truncated.add(1);
        }
        reason
    }
}
