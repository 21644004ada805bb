//! [`Subscription`]: a stream of [`Delivery`]s from one group of one topic, paced by the app's
//! acks.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::connection::{Command, ConnHandle, SubItem, SubShared, SUB_ERROR_SLOTS};
use crate::error::ClientError;
use crate::pacing::AckPacer;

/// A subscription: a [`Stream`] of the messages the broker delivers to it.
///
/// **Pacing.** The subscription has a window of `w` messages ([`Subscription::window`]): it opens
/// with `w` credit, and as the app acks (or drops) deliveries the client sends the acks and
/// returns the same amount of credit, batched: when `max(1, w/4)` are pending, whenever the
/// stream is polled with nothing buffered, and otherwise within 5 ms. The broker therefore never
/// has more than `w` messages outstanding towards it (credit + buffered + held by the app), and
/// a slow app slows the broker's deliveries instead of filling memory.
///
/// **Buffer.** Deliveries wait in a bounded channel of `w` (+4 for notices) items; it cannot
/// overflow while the broker respects credit. A broker that delivers beyond the granted credit
/// ends the stream with [`ClientError::Protocol`].
///
/// **Items.** `Ok(Delivery)` per message; `Err(e)` for a problem the broker reported about the
/// subscription (the stream continues unless it ends right after); after the connection or the
/// subscription ends with an error, a final `Err` and then `None`. A subscription the broker closed
/// on its own ends with `None`.
///
/// **Dropped messages.** When a `drop_oldest` topic evicts messages before this subscription's
/// group received them, the broker says so (a `Gap` notice, which takes no credit) and the stream
/// yields `Err(`[`ClientError::MessagesDropped`]`{from, to})`, then goes on; the running count is
/// [`Subscription::dropped`]. Notices are never lost: at most 2 wait in the buffer, and further
/// ones are merged into one range (`min(from)..=max(to)`) that is yielded first on the next poll,
/// possibly ahead of deliveries already buffered.
///
/// **Closing.** [`Subscription::close`] unsubscribes and waits for the broker's answer; dropping
/// the subscription unsubscribes best effort. Either way, acks already made are sent first, and
/// every message delivered and not acked returns to the group and is redelivered.
#[derive(Debug)]
pub struct Subscription {
    conn: ConnHandle,
    shared: Arc<SubShared>,
    rx: mpsc::Receiver<SubItem>,
    topic: String,
    group: String,
    window: u32,
    /// The stream has returned `None`.
    done: bool,
    /// No `Unsubscribe` needs sending on drop (already sent, or never subscribed).
    closed: bool,
}

impl Subscription {
    pub(crate) async fn open(
        conn: ConnHandle,
        topic: &str,
        group: &str,
        window: u32,
    ) -> Result<Self, ClientError> {
        if window == 0 {
            return Err(ClientError::InvalidArgument(
                "a subscription window must be at least 1".into(),
            ));
        }
        let window = window.min(conn.shared.limits.max_credit.max(1));
        let shared = Arc::new(SubShared {
            id: conn.shared.next_sub_id(),
            pacer: Mutex::new(AckPacer::new(window)),
            end: Mutex::new(None),
            conn: conn.shared.clone(),
            dropped: std::sync::atomic::AtomicU64::new(0),
            pending_gap: Mutex::new(None),
            gaps_queued: std::sync::atomic::AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel(window as usize + SUB_ERROR_SLOTS);
        let (reply, reply_rx) = oneshot::channel();
        let mut sub = Subscription {
            conn: conn.clone(),
            shared: shared.clone(),
            rx,
            topic: topic.to_owned(),
            group: group.to_owned(),
            window,
            done: false,
            closed: true,
        };
        let cmd = Command::Subscribe {
            shared,
            topic: topic.to_owned(),
            group: group.to_owned(),
            credit: window,
            tx,
            reply,
        };
        conn.send(cmd).await?;
        // From here on, dropping `sub` (also by cancelling this future) unsubscribes.
        sub.closed = false;
        match reply_rx.await {
            Ok(Ok(())) => Ok(sub),
            Ok(Err(e)) => {
                sub.closed = true;
                Err(e)
            }
            Err(_) => {
                sub.closed = true;
                Err(conn.shared.error())
            }
        }
    }

    /// The subscription id on its connection.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The group joined.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The window: the most messages outstanding towards this subscription at once (after
    /// clamping to the broker's `max_credit`).
    pub fn window(&self) -> u32 {
        self.window
    }

    /// How many messages the broker evicted (`drop_oldest` topics) before this subscription's
    /// group received them. Each eviction also comes through the stream as
    /// [`ClientError::MessagesDropped`], after which the stream goes on.
    pub fn dropped(&self) -> u64 {
        self.shared
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Unsubscribes and waits for the broker to confirm. Acks made before are sent first;
    /// deliveries not acked (including any still buffered) are redelivered to the group.
    /// Fails with the connection's terminal error if it ended first.
    pub async fn close(mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.conn
            .send(Command::Unsubscribe {
                sub: self.shared.id,
                reply: Some(reply),
            })
            .await?;
        self.closed = true;
        rx.await.map_err(|_| self.conn.shared.error())?
    }
}

impl Stream for Subscription {
    type Item = Result<Delivery, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let pending_gap = self
            .shared
            .pending_gap
            .lock()
            .ok()
            .and_then(|mut g| g.take());
        if let Some((from, to)) = pending_gap {
            return Poll::Ready(Some(Err(ClientError::MessagesDropped { from, to })));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(raw))) => Poll::Ready(Some(Ok(Delivery {
                seq: raw.seq,
                attempt: raw.attempt,
                payload: raw.payload,
                sub: Some(self.shared.clone()),
            }))),
            Poll::Ready(Some(Err(e))) => {
                if matches!(e, ClientError::MessagesDropped { .. }) {
                    self.shared
                        .gaps_queued
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                let end = self.shared.end.lock().ok().and_then(|mut end| end.take());
                Poll::Ready(end.map(Err))
            }
            Poll::Pending => {
                // The app waits for messages: whatever it acked must reach the broker now, or
                // the broker may be waiting for exactly that credit.
                let pending = self
                    .shared
                    .pacer
                    .lock()
                    .map(|p| p.has_pending())
                    .unwrap_or(false);
                if pending {
                    self.shared.conn.flush_now.notify_one();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let cmd = Command::Unsubscribe {
            sub: self.shared.id,
            reply: None,
        };
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.conn.tx.try_send(cmd) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let tx = self.conn.tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }
}

/// One message delivered to a [`Subscription`].
///
/// Ack it with [`Delivery::ack`] once processed. Dropping it unacked (or taking its payload
/// with [`Delivery::into_payload`]) gives its credit back to the subscription without acking:
/// the broker redelivers the message (attempt + 1) after the group's ack timeout, or at once
/// when the subscription closes. Acks made after the subscription closed are not sent.
#[derive(Debug)]
pub struct Delivery {
    seq: u64,
    attempt: u32,
    payload: Bytes,
    /// `None` once acked.
    sub: Option<Arc<SubShared>>,
}

impl Delivery {
    /// The message's sequence number in its topic.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// 1 for the first delivery to the group, +1 for each redelivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The message body.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Takes the message body **without acking** (the message will be redelivered; its credit is
    /// returned). To keep the body and ack, clone it first: `let body = d.payload().clone();
    /// d.ack();` (a cheap reference-count increment).
    pub fn into_payload(mut self) -> Bytes {
        std::mem::take(&mut self.payload)
    }

    /// Acknowledges the message: it will not be redelivered to the group, and its credit returns
    /// to the subscription. The ack is batched with others (see [`Subscription`]).
    pub fn ack(mut self) {
        if let Some(sub) = self.sub.take() {
            let wake = match sub.pacer.lock() {
                Ok(mut pacer) => pacer.ack(self.seq),
                Err(_) => return,
            };
            sub.conn.wake(wake);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            let wake = match sub.pacer.lock() {
                Ok(mut pacer) => pacer.release(),
                Err(_) => return,
            };
            sub.conn.wake(wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;
    use crate::connection::{test_handle, test_limits, RawDelivery};

    /// Opens a subscription against a handle whose commands the test answers; returns it with
    /// the sender the connection task would route deliveries into.
    async fn open(
        window: u32,
    ) -> (
        Subscription,
        mpsc::Sender<SubItem>,
        mpsc::Receiver<Command>,
        u32,
    ) {
        let (conn, mut rx) = test_handle(test_limits(), 8);
        let opening = tokio::spawn(Subscription::open(conn, "t", "g", window));
        let (tx, credit) = match rx.recv().await.unwrap() {
            Command::Subscribe {
                tx, reply, credit, ..
            } => {
                reply.send(Ok(())).unwrap();
                (tx, credit)
            }
            other => panic!("expected a subscribe, got {other:?}"),
        };
        (opening.await.unwrap().unwrap(), tx, rx, credit)
    }

    fn raw(seq: u64) -> SubItem {
        Ok(RawDelivery {
            seq,
            attempt: 1,
            payload: Bytes::from(format!("m{seq}")),
        })
    }

    #[tokio::test]
    async fn window_is_clamped_to_max_credit_and_zero_is_refused() {
        let (sub, _tx, _rx, credit) = open(1000).await;
        assert_eq!(sub.window(), 64);
        assert_eq!(credit, 64);
        let (conn, _rx) = test_handle(test_limits(), 8);
        assert!(matches!(
            Subscription::open(conn, "t", "g", 0).await,
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn acks_and_drops_reach_the_pacer() {
        let (mut sub, tx, _rx, _) = open(8).await;
        tx.try_send(raw(1)).unwrap();
        tx.try_send(raw(2)).unwrap();
        let d1 = sub.next().await.unwrap().unwrap();
        assert_eq!(
            (d1.seq(), d1.attempt(), d1.payload().as_ref()),
            (1, 1, &b"m1"[..])
        );
        d1.ack();
        let d2 = sub.next().await.unwrap().unwrap();
        assert_eq!(d2.into_payload(), Bytes::from_static(b"m2"));
        let batch = sub.shared.pacer.lock().unwrap().take().unwrap();
        assert_eq!(batch.acks, vec![1]);
        assert_eq!(
            batch.credit, 2,
            "the dropped delivery returns its credit unacked"
        );
    }

    #[tokio::test]
    async fn an_empty_poll_asks_for_a_flush_of_pending_acks() {
        let (mut sub, tx, _rx, _) = open(8).await;
        tx.try_send(raw(1)).unwrap();
        sub.next().await.unwrap().unwrap().ack();
        // Below the threshold (2): only the timer was asked for so far.
        let conn = sub.shared.conn.clone();
        assert!(
            tokio::time::timeout(Duration::from_millis(10), conn.flush_now.notified())
                .await
                .is_err()
        );
        assert!(futures::poll!(sub.next()).is_pending());
        tokio::time::timeout(Duration::from_secs(5), conn.flush_now.notified())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn end_error_follows_buffered_deliveries_then_none() {
        let (mut sub, tx, _rx, _) = open(8).await;
        tx.try_send(raw(1)).unwrap();
        *sub.shared.end.lock().unwrap() = Some(ClientError::GoingAway {
            reason: "bye".into(),
        });
        drop(tx);
        assert_eq!(sub.next().await.unwrap().unwrap().seq(), 1);
        assert!(matches!(
            sub.next().await,
            Some(Err(ClientError::GoingAway { .. }))
        ));
        assert!(sub.next().await.is_none());
        assert!(sub.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_unsubscribes_and_close_waits_for_the_answer() {
        let (sub, _tx, mut rx, _) = open(8).await;
        let id = sub.id();
        drop(sub);
        assert!(
            matches!(rx.recv().await, Some(Command::Unsubscribe { sub, reply: None }) if sub == id)
        );

        let (sub, _tx, mut rx, _) = open(8).await;
        let closing = tokio::spawn(sub.close());
        match rx.recv().await {
            Some(Command::Unsubscribe {
                reply: Some(reply), ..
            }) => reply.send(Ok(())).unwrap(),
            other => panic!("expected an unsubscribe, got {other:?}"),
        }
        closing.await.unwrap().unwrap();
        assert!(
            rx.recv().await.is_none(),
            "no second unsubscribe after close"
        );
    }
}
