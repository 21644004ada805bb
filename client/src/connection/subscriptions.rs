//! The task's side of one subscription ([`SubEntry`]): its state on the wire, the credit the
//! broker holds, where its deliveries and notices go, how it ends — and how it moves to a new
//! connection after a reconnect ([`SubEntry::renew`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use weir_protocol::{Deliver, Frame, Gap, GroupSpec, StartPosition, Subscribe};

use super::shared::{RawDelivery, SubItem, SubShared, GAP_SLOTS};
use crate::error::ClientError;

/// What a `Subscribe` said, kept for the subscription's life: it is sent again on every new
/// connection.
pub(crate) struct SubscribeArgs {
    pub topic: String,
    pub group: String,
    pub group_spec: GroupSpec,
}

/// Where a subscription stands on the live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubState {
    /// `Subscribe` sent, `Subscribed` not yet received.
    Opening,
    /// Open: deliveries flow.
    Open,
    /// `Unsubscribe` sent; deliveries still arriving are dropped (the broker redelivers them).
    Closing,
}

/// One subscription, as the task tracks it.
pub(crate) struct SubEntry {
    pub shared: Arc<SubShared>,
    /// Where its `Subscribe` came among the frames sent (an id of the publish/request counter),
    /// to resend it in order after a reconnect.
    pub order: u64,
    pub args: SubscribeArgs,
    /// `None` once the subscription is closing or has failed.
    pub tx: Option<mpsc::Sender<SubItem>>,
    pub state: SubState,
    /// Credit the broker has and has not used yet, as this client counts it.
    pub broker_credit: u32,
    /// The pacer's epoch: deliveries are tagged with it.
    pub epoch: u64,
    /// The highest sequence delivered to it so far (an ephemeral subscription resumes after it
    /// on a new connection, see [`SubEntry::renew`]).
    pub last_seq: Option<u64>,
    pub open_reply: Option<oneshot::Sender<Result<(), ClientError>>>,
    pub close_reply: Option<oneshot::Sender<Result<(), ClientError>>>,
}

/// What routing a `Deliver` asks of the task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Nothing more.
    Done,
    /// The broker delivered beyond the credit: the subscription has ended with a protocol
    /// error, and the task must unsubscribe it.
    Unsubscribe,
}

impl SubEntry {
    /// A subscription whose `Subscribe` (with `credit`) is being sent.
    pub fn opening(
        shared: Arc<SubShared>,
        order: u64,
        args: SubscribeArgs,
        credit: u32,
        tx: mpsc::Sender<SubItem>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    ) -> SubEntry {
        SubEntry {
            shared,
            order,
            args,
            tx: Some(tx),
            state: SubState::Opening,
            broker_credit: credit,
            epoch: 0,
            last_seq: None,
            open_reply: Some(reply),
            close_reply: None,
        }
    }

    /// The `Subscribe` frame for the live connection, with the credit the broker is to hold.
    pub fn subscribe_frame(&self) -> Frame {
        Frame::Subscribe(Subscribe {
            sub: self.shared.id,
            topic: self.args.topic.clone(),
            group: self.args.group.clone(),
            credit: self.broker_credit,
            group_spec: self.args.group_spec.clone(),
        })
    }

    /// Whether it still has a stream to feed (it is not closing and has not ended).
    pub fn is_live(&self) -> bool {
        self.state != SubState::Closing && self.tx.is_some()
    }

    /// Moves the subscription to a new connection, where it opens again (same id, topic, group
    /// and settings). The broker returned every delivery of the old connection to the group;
    /// those still buffered or held by the app stay with it, count against the window until
    /// finished, and finishing them sends nothing (a new pacer epoch). So the broker gets as
    /// credit what it held unused plus what the app finished and was not yet sent — the window
    /// minus what the app still holds.
    ///
    /// An ephemeral group was deleted when the old connection closed, so the subscription
    /// creates it again: after the last sequence it received (`StartPosition::Seq(last + 1)`),
    /// not from its original start, which would replay what it already had (or skip what was
    /// published meanwhile, for `Latest`). Deliveries received and not acked are not
    /// redelivered then. Having received nothing, it keeps its original start.
    pub fn renew(&mut self) {
        if let (true, Some(last)) = (self.args.group_spec.ephemeral, self.last_seq) {
            self.args.group_spec.start = StartPosition::Seq(last.saturating_add(1));
        }
        let (epoch, credit) = match self.shared.pacer.lock() {
            Ok(mut pacer) => pacer.renew(),
            Err(_) => (self.epoch + 1, 0),
        };
        self.epoch = epoch;
        self.broker_credit += credit;
        self.state = SubState::Opening;
    }

    /// Ends the subscription for its handle with `err` (after what is buffered).
    pub fn end_with(&mut self, err: ClientError) {
        if let Ok(mut end) = self.shared.end.lock() {
            end.get_or_insert(err.clone());
        }
        if let Ok(mut pacer) = self.shared.pacer.lock() {
            pacer.close();
        }
        self.tx = None;
        if let Some(reply) = self.open_reply.take() {
            let _ = reply.send(Err(err.clone()));
        }
        if let Some(reply) = self.close_reply.take() {
            let _ = reply.send(Err(err));
        }
    }

    /// Hands a non-fatal error to the stream, if there is room for it.
    pub fn deliver_error(&mut self, err: ClientError) {
        if let Some(tx) = &self.tx {
            if tx.try_send(Err(err.clone())).is_err() {
                tracing::warn!(sub = self.shared.id, error = %err, "weir subscription error dropped: its buffer is full");
            }
        }
    }

    /// Routes one delivery into the stream, against the credit.
    pub fn on_deliver(&mut self, d: Deliver) -> Delivered {
        if !self.is_live() {
            // Unacked: the broker returns it to the group once the unsubscribe lands.
            return Delivered::Done;
        }
        if self.broker_credit == 0 {
            self.end_with(ClientError::Protocol(format!(
                "broker delivered seq {} to subscription {} without credit",
                d.seq, d.sub
            )));
            self.state = SubState::Closing;
            return Delivered::Unsubscribe;
        }
        self.broker_credit -= 1;
        self.last_seq = Some(self.last_seq.map_or(d.seq, |last| last.max(d.seq)));
        let item = RawDelivery {
            seq: d.seq,
            attempt: d.attempt,
            headers: d.headers,
            payload: d.payload,
            epoch: self.epoch,
        };
        if let Some(tx) = &self.tx {
            match tx.try_send(Ok(item)) {
                Ok(()) => {}
                // The handle is gone; its Unsubscribe is on its way.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Cannot happen while the credit count above holds; treat as a violation
                    // rather than block the connection.
                    self.end_with(ClientError::Protocol(format!(
                        "subscription {} buffer overflow: more deliveries than its window",
                        d.sub
                    )));
                }
            }
        }
        Delivered::Done
    }

    /// Routes a gap notice (messages evicted before the group got them) into the stream.
    pub fn on_gap(&mut self, g: Gap) {
        let count = g.to.saturating_sub(g.from) + 1;
        self.shared.dropped.fetch_add(count, Relaxed);
        tracing::warn!(
            sub = g.sub,
            from = g.from,
            to = g.to,
            "the broker dropped messages before delivery"
        );
        let Some(tx) = &self.tx else { return };
        let notice = Err(ClientError::MessagesDropped {
            from: g.from,
            to: g.to,
        });
        let room = self.shared.gaps_queued.load(Relaxed) < GAP_SLOTS;
        if room && tx.try_send(notice).is_ok() {
            self.shared.gaps_queued.fetch_add(1, Relaxed);
        } else if let Ok(mut pending) = self.shared.pending_gap.lock() {
            // Notices queued already (or the channel is full): the app has unread items and
            // will poll again, so merge for then.
            let (from, to) = pending.map_or((g.from, g.to), |(f, t)| (f.min(g.from), t.max(g.to)));
            *pending = Some((from, to));
        }
    }

    /// The broker ended the subscription without being asked (`Unsubscribed`): a forced delete
    /// of its group or topic. The stream ends with [`ClientError::GroupDeleted`].
    pub fn detached(&mut self) {
        let err = ClientError::GroupDeleted {
            topic: self.args.topic.clone(),
            group: self.args.group.clone(),
        };
        self.end_with(err);
    }
}
