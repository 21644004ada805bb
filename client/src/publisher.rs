//! [`Publisher`]: a bounded window of unconfirmed publishes, and [`PublishConfirm`], the future
//! of one publish's outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::{Headers, ProducerStamp};

pub use crate::confirm::PublishConfirm;
use crate::connection::ConnHandle;
use crate::error::ClientError;
use crate::message::Message;
use crate::retry::driver::Retrier;
use crate::retry::{BreakerState, RetryNotice, RetryPolicy};
use crate::window::Window;

/// Collects `(name, value)` pairs into [`Headers`], in order.
fn collect_headers<K: Into<String>, V: Into<String>>(
    headers: impl IntoIterator<Item = (K, V)>,
) -> Headers {
    headers
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// Publishes messages through a bounded window of unconfirmed publishes.
///
/// Each publish takes one slot of the window when it is handed to the connection and gives it
/// back when the broker answers (`PublishOk`, `Rejected` or `Error`) or the connection ends —
/// whether or not anyone awaits its [`PublishConfirm`]. At the bound,
/// [`Publisher::publish`] waits for a slot (pressure reaches the app) and
/// [`Publisher::try_publish`] fails at once with [`ClientError::WindowFull`].
///
/// Refusals surface in the confirm; [`Publisher::with_retry`] retries the ones that waiting can
/// fix.
///
/// Messages may carry headers ([`Publisher::publish_with_headers`]): `(name, value)` pairs,
/// stored and delivered with the message ([`crate::Delivery::headers`]) and resent unchanged by
/// retries. They travel in the frame, so they count against the broker's `max_frame_bytes` (a
/// publish over it fails with [`crate::PublishError::TooLarge`] and is never sent).
///
/// Clones share one window (and, with retry on, one retry budget and circuit breaker). Create
/// independent windows with [`crate::Client::publisher`].
///
/// **Reconnects.** A publisher shares its client's connection, and its window outlives the
/// connection's losses (see [`crate::Client`]): while the client reconnects, publishes wait for
/// a slot and in the command queue as usual. Publishes sent and not yet answered when the
/// connection was lost keep their window slots and are resent on the new connection first, in
/// their order — never more than the window. Their confirms resolve there. **Exactly once into
/// the topic** (protocol v6): each publish carries this publisher's producer id and its
/// number (see [`Publisher::with_producer`]), and its resend carries the same ones, so a
/// publish whose confirm was lost with the connection — stored already, or still being
/// stored — is answered with its first sequence instead of being stored again, within the
/// topic's dedup window (2 minutes by default), across broker restarts too. Against a v4 or
/// v5 broker the stamp is not sent and such a resend may store the message a second time (at
/// most the window's worth of duplicates per loss). If reconnecting gives up, the
/// confirms of publishes that had been sent resolve to [`crate::PublishError::ConnectionLost`]
/// (maybe stored), those never sent to [`crate::PublishError::NotSent`] with the reason.
#[derive(Debug, Clone)]
pub struct Publisher {
    window: Window,
    /// Set by [`Publisher::with_retry`].
    retry: Option<Arc<Retrier>>,
    /// The producer id and the next number, shared by clones.
    producer: Arc<Producer>,
}

/// A publisher's identity to the broker's dedup window: its id and the number its next
/// message gets.
#[derive(Debug)]
struct Producer {
    id: u128,
    next_seq: AtomicU64,
}

impl Publisher {
    pub(crate) fn new(conn: ConnHandle, size: usize) -> Self {
        Publisher {
            window: Window::new(conn, size),
            retry: None,
            producer: Arc::new(Producer {
                id: rand::random(),
                next_seq: AtomicU64::new(0),
            }),
        }
    }

    /// This publisher, sharing its window, as producer `id` whose next message is number
    /// `next_seq`: for a producer that restarts and must be recognised as the same one.
    ///
    /// **Exactly once into a topic.** Every message a publisher sends carries its producer id
    /// and its number, and a retry or a resend after a reconnect carries the same ones, so the
    /// broker stores it once within the topic's dedup window (2 minutes by default) and
    /// answers the copy with the first one's sequence. A publisher gets a random id; a
    /// producer that restarts and resends what it had not seen confirmed sets its id again
    /// here, with `next_seq` the number of the first message it resends (the numbers it used
    /// are in [`Publisher::producer`]; keeping them is the producer's job). Numbers must not
    /// be reused for different messages while the window remembers them: such a message is
    /// answered as a duplicate and not stored.
    pub fn with_producer(mut self, id: u128, next_seq: u64) -> Publisher {
        self.producer = Arc::new(Producer {
            id,
            next_seq: AtomicU64::new(next_seq),
        });
        self
    }

    /// This publisher's producer id and the number its next message gets (see
    /// [`Publisher::with_producer`]).
    pub fn producer(&self) -> (u128, u64) {
        (
            self.producer.id,
            self.producer.next_seq.load(Ordering::Relaxed),
        )
    }

    /// `message` numbered as this producer's next.
    fn stamped(&self, mut message: Message) -> Message {
        let seq = self.producer.next_seq.fetch_add(1, Ordering::Relaxed);
        message.producer = Some(ProducerStamp {
            id: self.producer.id,
            seq,
        });
        message
    }

    /// This publisher, sharing its window, with refused publishes retried per `policy` (see
    /// [`crate::retry`] for what is retried and [`RetryPolicy`] for the defaults):
    ///
    /// - a refusal that waiting can fix (`TopicFull`, `RateLimited`, `Overloaded`, with a
    ///   retry-after hint) is published again after the broker's hint plus a full-jitter
    ///   backoff, up to `max_retries` times;
    /// - past the retry budget (a fraction of recent publishes, and `max_concurrent_retries`
    ///   at once), or after the last attempt, the refusal surfaces in the confirm at once;
    /// - while the circuit breaker is open, [`Publisher::publish`] and
    ///   [`Publisher::try_publish`] fail at once with [`ClientError::CircuitOpen`], and
    ///   retries that were waiting give up with their refusal.
    ///
    /// **The window.** A retry takes a window slot like any publish, so retries never exceed
    /// the window; the slot is not held during the backoff (the refused publish gave it back
    /// when the broker answered), and a retry waits for a free one like
    /// [`Publisher::publish`] does.
    ///
    /// **The confirm.** The returned [`PublishConfirm`] resolves to the final outcome. The
    /// retries run on a task of the current tokio runtime (one per publish awaiting its
    /// outcome), so they go on if the confirm is dropped. From outside any runtime, when this
    /// publisher was also made outside one, publishes are not retried.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Publisher {
        self.retry = Some(Retrier::new(policy));
        self
    }

    /// This publisher (sharing its window) without retries.
    #[cfg(test)]
    pub(crate) fn without_retry(&self) -> Publisher {
        Publisher {
            retry: None,
            ..self.clone()
        }
    }

    /// The retry policy set by [`Publisher::with_retry`], if any.
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_deref().map(Retrier::policy)
    }

    /// How many retries this publisher and its clones have sent (0 without retry).
    pub fn retries(&self) -> u64 {
        self.retry.as_ref().map_or(0, |r| r.retries())
    }

    /// The latest retry this publisher (or a clone) scheduled: the refusal it answers, its
    /// delay and its number — for saying what an unconfirmed publish waits for. `None` without
    /// retry, or before the first retry.
    pub fn last_retry(&self) -> Option<RetryNotice> {
        self.retry.as_ref().and_then(|r| r.last_retry())
    }

    /// The circuit breaker's state now, when retrying is on (`None` otherwise).
    pub fn breaker_state(&self) -> Option<BreakerState> {
        self.retry.as_ref().map(|r| r.breaker_state())
    }

    /// The window: the most publishes of this publisher unconfirmed at once.
    pub fn window(&self) -> usize {
        self.window.size()
    }

    /// Publishes sent (or being sent) and not yet answered by the broker.
    pub fn in_flight(&self) -> usize {
        self.window.in_flight()
    }

    /// Sends `payload` to `topic` once the window has a free slot, and returns the future of
    /// its confirm. Returns once the publish is queued for sending, not when it is confirmed.
    ///
    /// Waits while the window (or the connection's command queue) is full. Cancel-safe: if the
    /// returned future is dropped before it completes, nothing was sent. Fails with the
    /// connection's terminal error once the connection has ended (an idle close is no such end:
    /// the publish is queued and reconnects), and with [`ClientError::CircuitOpen`] while the
    /// breaker of [`Publisher::with_retry`] is open.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishConfirm, ClientError> {
        self.publish_message(Message::new(topic, Headers::new(), payload.into()))
            .await
    }

    /// [`Publisher::publish`] with headers: `(name, value)` pairs, kept in order (names may
    /// repeat), stored and delivered with the message and resent unchanged by retries. E.g.
    /// `publisher.publish_with_headers("orders", [("trace-id", "abc")], body)`.
    ///
    /// Waits and fails as [`Publisher::publish`] does; headers making the publish larger than
    /// the broker's `max_frame_bytes` fail its confirm with [`crate::PublishError::TooLarge`].
    pub async fn publish_with_headers<K: Into<String>, V: Into<String>>(
        &self,
        topic: &str,
        headers: impl IntoIterator<Item = (K, V)>,
        payload: impl Into<Bytes>,
    ) -> Result<PublishConfirm, ClientError> {
        self.publish_message(Message::new(
            topic,
            collect_headers(headers),
            payload.into(),
        ))
        .await
    }

    async fn publish_message(&self, message: Message) -> Result<PublishConfirm, ClientError> {
        let message = self.stamped(message);
        let Some(retrier) = &self.retry else {
            return self.window.send(message).await;
        };
        // Dropped unsettled (the send fails or this future is cancelled), the ticket gives its
        // breaker pass back.
        let ticket = retrier.admit()?;
        let confirm = self.window.send(message.clone()).await?;
        Ok(retrier.retrying(&self.window, message, confirm, ticket))
    }

    /// Publishes every payload of `payloads` to `topic`, in order, and returns their confirms
    /// in that order: for a caller with a batch in hand. They are handed to the connection back
    /// to back, so it sends them in `PublishBatch` frames (up to
    /// [`crate::ClientOptions::batch_max_messages`] each; protocol v5). Each message keeps its
    /// own answer: its confirm resolves to its sequence or to its own refusal (a batch that
    /// meets a topic's bound is confirmed up to it and refused past it).
    ///
    /// Waits for window slots as [`Publisher::publish`] does, one per message: a batch larger
    /// than the window is sent as confirms free slots. On an error (the connection ended, the
    /// breaker is open) the messages before it are sent and their confirms are dropped; their
    /// outcome is theirs.
    pub async fn publish_batch<P: Into<Bytes>>(
        &self,
        topic: &str,
        payloads: impl IntoIterator<Item = P>,
    ) -> Result<Vec<PublishConfirm>, ClientError> {
        let payloads = payloads.into_iter();
        let mut confirms = Vec::with_capacity(payloads.size_hint().0);
        for payload in payloads {
            confirms.push(self.publish(topic, payload).await?);
        }
        Ok(confirms)
    }

    /// Like [`Publisher::publish`], but never waits: fails with [`ClientError::WindowFull`] when
    /// the window has no free slot or the connection's command queue is full (nothing is sent
    /// then), with [`ClientError::CircuitOpen`] while the retry breaker is open, and with the
    /// terminal error when the connection has ended.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishConfirm, ClientError> {
        self.try_publish_message(Message::new(topic, Headers::new(), payload.into()))
    }

    /// [`Publisher::try_publish`] with headers, as [`Publisher::publish_with_headers`] sends
    /// them. Never waits: fails with [`ClientError::WindowFull`] as `try_publish` does.
    pub fn try_publish_with_headers<K: Into<String>, V: Into<String>>(
        &self,
        topic: &str,
        headers: impl IntoIterator<Item = (K, V)>,
        payload: impl Into<Bytes>,
    ) -> Result<PublishConfirm, ClientError> {
        self.try_publish_message(Message::new(
            topic,
            collect_headers(headers),
            payload.into(),
        ))
    }

    fn try_publish_message(&self, message: Message) -> Result<PublishConfirm, ClientError> {
        let message = self.stamped(message);
        let ticket = self.retry.as_ref().map(|r| r.admit()).transpose()?;
        // With retry on, the message is kept for the retries.
        let retained = ticket.as_ref().map(|_| message.clone());
        let confirm = self.window.try_send(message)?;
        Ok(match (&self.retry, ticket, retained) {
            (Some(retrier), Some(ticket), Some(message)) => {
                retrier.retrying(&self.window, message, confirm, ticket)
            }
            _ => confirm,
        })
    }

    /// Publishes and waits for the outcome: the message's sequence number once durable.
    ///
    /// A refusal comes back as [`ClientError::Publish`]; waiting for a window slot as in
    /// [`Publisher::publish`].
    pub async fn publish_and_wait(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        Ok(self.publish(topic, payload).await?.await?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::connection::{test_handle, test_limits, Command};
    use crate::error::PublishError;

    fn reply_to(cmd: Command, outcome: Result<u64, PublishError>) {
        match cmd {
            // The permit is dropped with the command, as the connection task drops it once
            // the broker has answered.
            Command::Publish { reply, .. } => {
                let _ = reply.send(outcome);
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn try_publish_fails_fast_at_the_window_and_recovers_on_confirm() {
        let (conn, mut rx) = test_handle(test_limits(), 16);
        let publisher = Publisher::new(conn, 2);
        let first = publisher.try_publish("t", "a").unwrap();
        let _second = publisher.try_publish("t", "b").unwrap();
        assert_eq!(publisher.in_flight(), 2);
        assert!(matches!(
            publisher.try_publish("t", "c"),
            Err(ClientError::WindowFull)
        ));

        reply_to(rx.recv().await.unwrap(), Ok(7));
        assert_eq!(first.await, Ok(7));
        assert_eq!(publisher.in_flight(), 1);
        assert!(publisher.try_publish("t", "c").is_ok());
        assert!(matches!(
            publisher.try_publish("t", "d"),
            Err(ClientError::WindowFull)
        ));
    }

    #[tokio::test]
    async fn each_publish_is_numbered_by_its_producer_and_a_retry_keeps_its_number() {
        let (conn, mut rx) = test_handle(test_limits(), 16);
        let publisher = Publisher::new(conn.clone(), 8);
        let other = Publisher::new(conn, 8);
        let stamp_of = |cmd: Command| match cmd {
            Command::Publish { message, .. } => message.producer.expect("stamped"),
            other => panic!("expected a publish, got {other:?}"),
        };
        let _a = publisher.publish("t", "a").await.unwrap();
        let _b = publisher.clone().publish("t", "b").await.unwrap();
        let (a, b) = (
            stamp_of(rx.recv().await.unwrap()),
            stamp_of(rx.recv().await.unwrap()),
        );
        assert_eq!(
            (a.id, a.seq, b.id, b.seq),
            (a.id, 0, a.id, 1),
            "clones share the numbering"
        );
        let _c = other.publish("t", "c").await.unwrap();
        assert_ne!(
            stamp_of(rx.recv().await.unwrap()).id,
            a.id,
            "another producer"
        );
        let restarted = Publisher::new(test_handle(test_limits(), 16).0, 8).with_producer(a.id, 2);
        assert_eq!(restarted.producer(), (a.id, 2));

        // A retried publish goes again with the number it had.
        let retrying = publisher.clone().with_retry(crate::RetryPolicy::default());
        let confirm = retrying.publish("t", "d").await.unwrap();
        let Command::Publish { message, reply, .. } = rx.recv().await.unwrap() else {
            panic!("expected a publish")
        };
        let first = message.producer;
        let refusal = PublishError::Rejected {
            reason: weir_protocol::RejectReason::TopicFull,
            limit: weir_protocol::Limit::new("max_messages", 1),
            retry_after_ms: Some(1),
            held_by: None,
        };
        let _ = reply.send(Err(refusal));
        let retried = stamp_of(rx.recv().await.unwrap());
        assert_eq!((Some(retried), retried.seq), (first, 2));
        drop(confirm);
    }

    #[tokio::test]
    async fn publish_waits_for_a_slot() {
        let (conn, mut rx) = test_handle(test_limits(), 16);
        let publisher = Publisher::new(conn, 1);
        let _first = publisher.publish("t", "a").await.unwrap();
        let waiting = publisher.publish("t", "b");
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err()
        );
        // A refusal frees the slot just as a confirm does.
        let refusal = PublishError::Rejected {
            reason: weir_protocol::RejectReason::TopicFull,
            limit: weir_protocol::Limit::new("max_messages", 1),
            retry_after_ms: Some(10),
            held_by: None,
        };
        reply_to(rx.recv().await.unwrap(), Err(refusal));
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        reply_to(rx.recv().await.unwrap(), Ok(2));
        assert_eq!(second.await, Ok(2));
    }

    #[tokio::test]
    async fn headers_reach_the_connection_in_order_and_plain_publishes_have_none() {
        let (conn, mut rx) = test_handle(test_limits(), 16);
        let publisher = Publisher::new(conn, 4);
        let _a = publisher
            .publish_with_headers("t", [("b", "2"), ("a", "1"), ("b", "3")], "x")
            .await
            .unwrap();
        let _b = publisher
            .try_publish_with_headers("t", vec![("k".to_owned(), String::new())], "y")
            .unwrap();
        let _c = publisher.publish("t", "z").await.unwrap();
        let mut sent = Vec::new();
        for _ in 0..3 {
            match rx.recv().await.unwrap() {
                Command::Publish { message, .. } => sent.push(message.headers),
                other => panic!("expected a publish, got {other:?}"),
            }
        }
        let pairs = |p: &[(&str, &str)]| -> Headers {
            p.iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        assert_eq!(
            sent,
            [
                pairs(&[("b", "2"), ("a", "1"), ("b", "3")]),
                pairs(&[("k", "")]),
                Headers::new()
            ]
        );
    }

    #[tokio::test]
    async fn a_full_command_queue_is_window_full_for_try_publish() {
        let (conn, _rx) = test_handle(test_limits(), 1);
        let publisher = Publisher::new(conn, 4);
        let _a = publisher.try_publish("t", "a").unwrap();
        assert!(matches!(
            publisher.try_publish("t", "b"),
            Err(ClientError::WindowFull)
        ));
        assert_eq!(
            publisher.in_flight(),
            1,
            "the refused publish gave its slot back"
        );
    }

    #[tokio::test]
    async fn confirm_of_a_dropped_publish_is_connection_lost() {
        let (conn, mut rx) = test_handle(test_limits(), 4);
        let publisher = Publisher::new(conn, 4);
        let confirm = publisher.publish("t", "a").await.unwrap();
        drop(rx.recv().await.unwrap());
        assert_eq!(confirm.await, Err(PublishError::ConnectionLost));
        assert_eq!(publisher.in_flight(), 0);
        drop(rx);
        assert!(matches!(
            publisher.publish("t", "b").await,
            Err(ClientError::ConnectionLost)
        ));
    }
}
