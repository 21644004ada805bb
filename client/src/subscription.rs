//! [`Subscription`]: a stream of [`Delivery`]s from one group of one topic, paced by the app's
//! acks (and nacks and terms).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use weir_protocol::{GroupSpec, Headers};

use crate::connection::{Command, ConnHandle, SubItem, SubShared, SUB_ERROR_SLOTS};
use crate::error::ClientError;
use crate::pacing::{AckPacer, Wake};

/// A subscription: a [`Stream`] of the messages the broker delivers to it.
///
/// **Pacing.** The subscription has a window of `w` messages ([`Subscription::window`]): it opens
/// with `w` credit, and as the app finishes deliveries — [`Delivery::ack`], [`Delivery::nack`],
/// [`Delivery::term`], or dropping them — the client tells the broker and returns the same
/// amount of credit, batched: when `max(1, w/4)` are pending, whenever the stream is polled with
/// nothing buffered, and otherwise within 5 ms. The broker therefore never has more than `w`
/// messages outstanding towards it (credit + buffered + held by the app), and a slow app slows
/// the broker's deliveries instead of filling memory.
///
/// **Batching.** A batch costs one `Ack` frame, one `Nack` per distinct delay, one `Term` per
/// distinct reason, one `Progress` ([`Delivery::progress`]) and one `Credit`, whatever the number
/// of deliveries in it (up to 16 384 sequence numbers per frame): 100 000 acks a second with a
/// window of 1 024 cost about 400 `Ack` frames a second, not 100 000.
///
/// **Buffer.** Deliveries wait in a bounded channel of `w` (+4 for notices) items; it cannot
/// overflow while the broker respects credit. A broker that delivers beyond the granted credit
/// ends the stream with [`ClientError::Protocol`].
///
/// **Items.** `Ok(Delivery)` per message; `Err(e)` for a problem the broker reported about the
/// subscription (the stream continues unless it ends right after); after the connection or the
/// subscription ends with an error, a final `Err` and then `None`. A subscription the broker
/// ended on its own because its group (or topic) was deleted with `force` ends with
/// [`ClientError::GroupDeleted`], then `None`.
///
/// **Reconnects.** The stream does not end when the client loses its connection and reconnects
/// (see [`crate::Client`]): the subscription opens again on the new connection — same id,
/// topic, group and window — and deliveries resume. Its credit there is the window minus the
/// deliveries the app still holds (or has buffered) from the lost connection; those can no
/// longer be acked (see [`Delivery`]) and the broker redelivers them, so a message may arrive
/// twice. The stream ends with an error only when reconnecting gives up
/// ([`ClientError::ReconnectFailed`]), when reconnecting is off, or when the broker refuses the
/// subscription on the new connection (e.g. its topic is gone). An ephemeral subscription
/// ([`crate::Client::subscribe_ephemeral`]) lost its group with the connection: it creates it
/// again after the last message it received, so nothing is replayed and its unfinished
/// deliveries from the lost connection are not redelivered.
///
/// **Dropped messages.** When a `drop_oldest` topic evicts messages, or messages pass their
/// topic's `max_age`, before this subscription's group received (or acked) them, the broker says so (a `Gap` notice, which takes no credit) and the stream
/// yields `Err(`[`ClientError::MessagesDropped`]`{from, to})`, then goes on; the running count is
/// [`Subscription::dropped`]. Notices are never lost: at most 2 wait in the buffer, and further
/// ones are merged into one range (`min(from)..=max(to)`) that is yielded first on the next poll,
/// possibly ahead of deliveries already buffered.
///
/// **Closing.** [`Subscription::close`] unsubscribes and waits for the broker's answer; dropping
/// the subscription unsubscribes best effort. Either way, acks, nacks and terms already made are
/// sent first, and every message delivered and not finished returns to the group and is
/// redelivered.
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
        group_spec: GroupSpec,
    ) -> Result<Self, ClientError> {
        if window == 0 {
            return Err(ClientError::InvalidArgument(
                "a subscription window must be at least 1".into(),
            ));
        }
        let max_credit = conn.shared.limits().max_credit;
        if window > max_credit {
            return Err(ClientError::CreditAboveLimit {
                asked: window,
                max_credit,
            });
        }
        let id = conn.shared.next_sub_id();
        let shared = Arc::new(SubShared::new(id, window, conn.shared.clone()));
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
            group_spec,
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

    /// The window: the most messages outstanding towards this subscription at once (at most
    /// the broker's `max_credit`).
    pub fn window(&self) -> u32 {
        self.window
    }

    /// How many messages the broker dropped (`drop_oldest`, `max_age`) before this subscription's
    /// group received them. Each eviction also comes through the stream as
    /// [`ClientError::MessagesDropped`], after which the stream goes on.
    pub fn dropped(&self) -> u64 {
        self.shared
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Unsubscribes and waits for the broker to confirm. Acks, nacks and terms made before are
    /// sent first; deliveries not finished (including any still buffered) are redelivered to the
    /// group.
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
                headers: raw.headers,
                payload: raw.payload,
                epoch: raw.epoch,
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
/// Finish it once, with one of:
///
/// | call | on the broker | credit |
/// |---|---|---|
/// | [`Delivery::ack`] | done: never redelivered to the group | returned |
/// | [`Delivery::nack`]`(delay)` | redelivered (attempt + 1) after `delay`; dead-lettered instead if this was its `max_attempts`-th delivery | returned |
/// | [`Delivery::term`]`(reason)` | moved to the group's dead-letter topic now, whatever its attempt, with `reason` as its `weir-reason` header | returned |
/// | dropping it (or [`Delivery::into_payload`]) | nothing is sent: redelivered (attempt + 1) after the group's ack timeout, or at once when the subscription closes | returned |
///
/// [`Delivery::progress`] (any number of times before finishing) restarts its ack deadline, for
/// work that takes longer than the group's ack timeout; it returns no credit. All of them are
/// batched with the subscription's acks (see [`Subscription`]). Made after the subscription
/// closed, none is sent: the broker returns the message to the group anyway.
///
/// **After a reconnect**, a delivery received on the lost connection can no longer be acked:
/// the broker returned it to the group (counting it as an attempt) when that connection ended,
/// and redelivers it. Finishing it is then a no-op on the wire — ack, nack, term and progress
/// send nothing — except that its credit returns to the subscription, as for any delivery.
#[derive(Debug)]
pub struct Delivery {
    seq: u64,
    attempt: u32,
    headers: Headers,
    payload: Bytes,
    /// The connection it came from, as its subscription's pacer counts them: finished after a
    /// reconnect, it sends nothing.
    epoch: u64,
    /// `None` once finished.
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

    /// The headers the message was published with, in order (names may repeat); empty when it
    /// had none.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The value of the first header named `name`, or `None` when there is none.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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
    pub fn ack(self) {
        let seq = self.seq;
        self.finish(|pacer| pacer.ack(seq));
    }

    /// Gives the message back for redelivery after at least `delay` (in whole milliseconds,
    /// rounded up; the broker caps it at its `max_nack_delay_ms`, 15 min by default). On the
    /// message's `max_attempts`-th delivery the broker dead-letters it instead. Its credit
    /// returns to the subscription as with [`Delivery::ack`], and the nack is batched with the
    /// acks (one `Nack` frame per distinct delay in a batch).
    pub fn nack(self, delay: Duration) {
        let (seq, delay_ms) = (self.seq, millis_at_least(delay));
        self.finish(|pacer| pacer.nack(seq, delay_ms));
    }

    /// Declares the message unprocessable: the broker moves it to the group's dead-letter topic
    /// now, whatever its attempt, keeping `reason` (cut to its first 1 024 bytes) as the
    /// dead-lettered message's `weir-reason` header. Its credit returns to the subscription as
    /// with [`Delivery::ack`], and the term is batched with the acks (one `Term` frame per
    /// distinct reason in a batch).
    pub fn term(self, reason: impl Into<String>) {
        let (seq, reason) = (self.seq, reason.into());
        self.finish(|pacer| pacer.term(seq, reason));
    }

    /// Tells the broker the app is still working on the message: its ack deadline restarts
    /// (the group's `ack_timeout_ms` from when the broker receives it). The delivery stays with
    /// the app, so no credit is returned. Sent with the next batch (within 5 ms); calls repeated
    /// before then are sent once.
    pub fn progress(&self) {
        if let Some(sub) = &self.sub {
            let (seq, epoch) = (self.seq, self.epoch);
            pace(sub, |pacer| match pacer.epoch() == epoch {
                true => pacer.progress(seq),
                false => Wake::Nothing,
            });
        }
    }

    /// Ends the delivery, recorded in the subscription's pacer by `record` — or, for a delivery
    /// of a connection since lost, as released: its credit returns and nothing is sent (the
    /// broker returned it to the group when that connection ended).
    fn finish(mut self, record: impl FnOnce(&mut AckPacer) -> Wake) {
        if let Some(sub) = self.sub.take() {
            let epoch = self.epoch;
            pace(&sub, |pacer| match pacer.epoch() == epoch {
                true => record(pacer),
                false => pacer.release(),
            });
        }
    }
}

impl Drop for Delivery {
    /// Unfinished: its credit returns, nothing is acked (see the table on [`Delivery`]).
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            pace(&sub, AckPacer::release);
        }
    }
}

/// Records something in the subscription's pacer and wakes the connection task as it asks.
fn pace(sub: &SubShared, record: impl FnOnce(&mut AckPacer) -> Wake) {
    let wake = match sub.pacer.lock() {
        Ok(mut pacer) => record(&mut pacer),
        Err(_) => return,
    };
    sub.conn.wake(wake);
}

/// `delay` in whole milliseconds, rounded up (a nack delay is a minimum), saturating at
/// `u64::MAX`.
fn millis_at_least(delay: Duration) -> u64 {
    u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
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
        let opening = tokio::spawn(Subscription::open(
            conn,
            "t",
            "g",
            window,
            GroupSpec::default(),
        ));
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
            headers: Headers::new(),
            payload: Bytes::from(format!("m{seq}")),
            epoch: 0,
        })
    }

    /// Takes the subscription's pending batch, as the connection task's flush does.
    fn flushed(sub: &Subscription) -> crate::pacing::Batch {
        sub.shared.pacer.lock().unwrap().take().unwrap()
    }

    #[tokio::test]
    async fn a_window_above_max_credit_is_refused_not_cut_and_zero_is_refused() {
        let (sub, _tx, _rx, credit) = open(64).await;
        assert_eq!(
            (sub.window(), credit),
            (64, 64),
            "max_credit itself is fine"
        );
        let (conn, mut rx) = test_handle(test_limits(), 8);
        let refused = Subscription::open(conn, "t", "g", 1000, GroupSpec::default()).await;
        match refused {
            Err(e @ ClientError::CreditAboveLimit { .. }) => {
                assert!(
                    matches!(
                        e,
                        ClientError::CreditAboveLimit {
                            asked: 1000,
                            max_credit: 64
                        }
                    ),
                    "{e:?}"
                );
                assert_eq!(
                    e.to_string(),
                    "a subscription window of 1000 exceeds the broker's max_credit (64)"
                );
            }
            other => panic!("expected CreditAboveLimit, got {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "nothing was sent");
        let (conn, _rx) = test_handle(test_limits(), 8);
        assert!(matches!(
            Subscription::open(conn, "t", "g", 0, GroupSpec::default()).await,
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn the_group_spec_goes_with_the_subscribe() {
        let (conn, mut rx) = test_handle(test_limits(), 8);
        let spec = GroupSpec {
            ordering: None,
            start: weir_protocol::StartPosition::Seq(42),
            ack_timeout_ms: Some(1500),
            max_attempts: Some(3),
            dead_letter_topic: Some("orders.poison".into()),
            ephemeral: true,
        };
        let _opening = tokio::spawn(Subscription::open(conn, "t", "g", 8, spec.clone()));
        match rx.recv().await.unwrap() {
            Command::Subscribe { group_spec, .. } => assert_eq!(group_spec, spec),
            other => panic!("expected a subscribe, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn headers_are_delivered_in_order() {
        let (mut sub, tx, _rx, _) = open(8).await;
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        tx.try_send(Ok(RawDelivery {
            seq: 1,
            attempt: 2,
            headers: vec![pair("k", "first"), pair("other", "x"), pair("k", "second")],
            payload: Bytes::from_static(b"m"),
            epoch: 0,
        }))
        .unwrap();
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(d.attempt(), 2);
        assert_eq!(d.headers().len(), 3);
        assert_eq!(d.headers()[2], pair("k", "second"));
        assert_eq!(d.header("k"), Some("first"), "the first of repeated names");
        assert_eq!(d.header("missing"), None);
        tx.try_send(raw(2)).unwrap();
        assert!(sub.next().await.unwrap().unwrap().headers().is_empty());
    }

    #[tokio::test]
    async fn nack_and_term_return_credit_like_ack_and_progress_does_not() {
        let (mut sub, tx, _rx, _) = open(64).await;
        for seq in 1..=5 {
            tx.try_send(raw(seq)).unwrap();
        }
        let d1 = sub.next().await.unwrap().unwrap();
        d1.progress();
        d1.progress();
        d1.nack(Duration::from_micros(1500));
        let d2 = sub.next().await.unwrap().unwrap();
        d2.term("unparseable");
        sub.next().await.unwrap().unwrap().ack();
        drop(sub.next().await.unwrap().unwrap());
        let d5 = sub.next().await.unwrap().unwrap();
        d5.progress();
        let batch = flushed(&sub);
        assert_eq!(batch.credit, 4, "ack, nack, term and drop each return one");
        assert_eq!(batch.acks, vec![3]);
        assert_eq!(batch.nacks, [(2, vec![1])].into(), "1.5 ms rounds up");
        assert_eq!(batch.terms, [("unparseable".to_owned(), vec![2])].into());
        assert_eq!(batch.progress, [1, 5].into());
        drop(d5);
        assert_eq!(flushed(&sub).credit, 1);
    }

    #[tokio::test]
    async fn a_nack_at_the_threshold_asks_for_an_immediate_flush() {
        // Window 4: the threshold is 1, so every finish asks for a flush now.
        let (mut sub, tx, _rx, _) = open(4).await;
        tx.try_send(raw(1)).unwrap();
        let conn = sub.shared.conn.clone();
        sub.next().await.unwrap().unwrap().nack(Duration::ZERO);
        tokio::time::timeout(Duration::from_secs(5), conn.flush_now.notified())
            .await
            .unwrap();
        assert_eq!(flushed(&sub).nacks, [(0, vec![1])].into());
    }

    #[tokio::test]
    async fn a_term_reason_is_cut_to_1024_bytes() {
        let (mut sub, tx, _rx, _) = open(8).await;
        tx.try_send(raw(1)).unwrap();
        sub.next().await.unwrap().unwrap().term("x".repeat(2000));
        let reason = flushed(&sub).terms.into_keys().next().unwrap();
        assert_eq!(reason.len(), 1024);
    }

    /// After a reconnect (the pacer's new epoch), finishing a delivery of the lost connection
    /// sends nothing — no ack, nack, term or progress — and only returns its credit.
    #[tokio::test]
    async fn finishing_a_delivery_of_a_lost_connection_only_returns_its_credit() {
        let (mut sub, tx, _rx, _) = open(8).await;
        for seq in 1..=3 {
            tx.try_send(raw(seq)).unwrap();
        }
        let d1 = sub.next().await.unwrap().unwrap();
        let d2 = sub.next().await.unwrap().unwrap();
        let d3 = sub.next().await.unwrap().unwrap();
        // What the connection task does when it moves the subscription to a new connection.
        assert_eq!(sub.shared.pacer.lock().unwrap().renew(), (1, 0));
        d1.progress();
        d1.ack();
        d2.nack(Duration::ZERO);
        d3.term("unparseable");
        let expected = crate::pacing::Batch {
            credit: 3,
            ..Default::default()
        };
        assert_eq!(flushed(&sub), expected);
    }

    #[test]
    fn nack_delays_round_up_to_whole_milliseconds() {
        assert_eq!(millis_at_least(Duration::ZERO), 0);
        assert_eq!(millis_at_least(Duration::from_nanos(1)), 1);
        assert_eq!(millis_at_least(Duration::from_millis(250)), 250);
        assert_eq!(millis_at_least(Duration::from_micros(250_001)), 251);
        assert_eq!(millis_at_least(Duration::MAX), u64::MAX);
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
            reason: weir_protocol::GoingAwayReason::ShuttingDown,
            message: "bye".into(),
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
