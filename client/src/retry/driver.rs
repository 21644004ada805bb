//! The retry machinery of one publisher: the state its clones share ([`Retrier`]), the
//! standing of one publish with the breaker and the budget ([`Ticket`]), and the loop that
//! re-publishes a refused message ([`drive`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{
    retryable, Backoff, BreakerState, CircuitBreaker, Pass, RetryBudget, RetryNotice, RetryPolicy,
    Verdict,
};
use crate::confirm::PublishConfirm;
use crate::error::{ClientError, PublishError};
use crate::message::Message;
use crate::window::Window;

/// The clock of the budget and the breaker: tokio's, so a test with a paused clock drives them
/// as it drives the backoff sleeps.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The retry state a publisher and its clones share.
#[derive(Debug)]
pub(crate) struct Retrier {
    policy: RetryPolicy,
    backoff: Backoff,
    state: Mutex<Guarded>,
    retries: AtomicU64,
    /// Where retry tasks run when the publish is not made from within a runtime (a
    /// `try_publish` from a plain thread); captured when the retrier was made, if it was made
    /// from within one.
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Debug)]
struct Guarded {
    budget: RetryBudget,
    breaker: CircuitBreaker,
    /// The latest retry scheduled (one, whatever the number of publishes retrying).
    last_retry: Option<RetryNotice>,
}

impl Retrier {
    pub fn new(policy: RetryPolicy) -> Arc<Retrier> {
        let state = Guarded {
            budget: RetryBudget::new(&policy, now()),
            breaker: CircuitBreaker::new(policy.breaker.clone()),
            last_retry: None,
        };
        Arc::new(Retrier {
            backoff: policy.backoff(),
            policy,
            state: Mutex::new(state),
            retries: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Guarded> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Retries sent so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The latest retry scheduled, if any.
    pub fn last_retry(&self) -> Option<RetryNotice> {
        self.lock().last_retry.clone()
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.lock().breaker.state(now())
    }

    /// Asks the breaker whether an original publish may go. Fails with
    /// [`ClientError::CircuitOpen`] while it is open (or half-open with its probe out).
    pub fn admit(self: &Arc<Self>) -> Result<Ticket, ClientError> {
        let pass = self
            .lock()
            .breaker
            .allow(now())
            .map_err(|retry_after| ClientError::CircuitOpen { retry_after })?;
        Ok(Ticket {
            retrier: self.clone(),
            pass: Some(pass),
            retry_slot: false,
        })
    }

    /// Counts an original publish handed to the connection, for the budget.
    fn sent(&self) {
        self.lock().budget.record_publish(now());
    }

    /// Takes a retry slot of the budget, or `None` past the budget.
    fn begin_retry(self: &Arc<Self>) -> Option<Ticket> {
        self.lock().budget.try_begin_retry(now()).then(|| Ticket {
            retrier: self.clone(),
            pass: None,
            retry_slot: true,
        })
    }

    /// Hands `first`, the confirm of a publish admitted with `ticket` and just sent, to a task
    /// that retries it per the policy; returns the confirm of the final outcome. Without a
    /// runtime to run that task on, returns `first` unchanged (no retries).
    pub fn retrying(
        self: &Arc<Self>,
        window: &Window,
        message: Message,
        first: PublishConfirm,
        ticket: Ticket,
    ) -> PublishConfirm {
        self.sent();
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone());
        let Some(runtime) = runtime else {
            return first;
        };
        let task = drive(window.clone(), self.clone(), message, first, ticket);
        PublishConfirm::retrying(runtime.spawn(task))
    }
}

/// One publish's standing with the breaker (its [`Pass`]) and the budget (a retry slot, for a
/// retry). Settled with the publish's outcome; dropped unsettled — the publish was never sent,
/// its future was cancelled, its task ended — it gives both back, so a half-open breaker never
/// waits for a probe that will not answer and the budget never leaks a slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    retrier: Arc<Retrier>,
    pass: Option<Pass>,
    retry_slot: bool,
}

impl Ticket {
    /// Asks the breaker for a pass for this retry, just before it is sent: `false` while the
    /// breaker is open.
    fn take_pass(&mut self) -> bool {
        match self.retrier.lock().breaker.allow(now()) {
            Ok(pass) => {
                self.pass = Some(pass);
                true
            }
            Err(_) => false,
        }
    }

    /// Reports the outcome of the publish.
    fn settle(mut self, verdict: Verdict) {
        let mut state = self.retrier.lock();
        if let Some(pass) = self.pass.take() {
            state.breaker.record(pass, verdict, now());
        }
        if std::mem::take(&mut self.retry_slot) {
            state.budget.end_retry();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.pass.is_none() && !self.retry_slot {
            return;
        }
        let mut state = self.retrier.lock();
        if let Some(pass) = self.pass.take() {
            state.breaker.cancel(pass);
        }
        if self.retry_slot {
            state.budget.end_retry();
        }
    }
}

/// Awaits a publish's outcome and re-publishes it (the same topic, headers and payload) while
/// the policy allows; returns the final outcome.
///
/// After a retryable refusal (see [`retryable`]), and while fewer than `max_retries` retries
/// were made: take a budget slot (none left: the refusal surfaces), sleep the backoff (the
/// broker's hint plus full jitter; the window slot is not held meanwhile), ask the breaker
/// (open: the refusal surfaces), then send again, waiting for a window slot like any publish.
pub(crate) async fn drive(
    window: Window,
    retrier: Arc<Retrier>,
    message: Message,
    first: PublishConfirm,
    mut ticket: Ticket,
) -> Result<u64, PublishError> {
    let mut outcome = first.await;
    let mut attempt = 0;
    loop {
        ticket.settle(Verdict::of(&outcome));
        let error = match outcome {
            Ok(seq) => return Ok(seq),
            Err(e) => e,
        };
        if !retryable(&error) || attempt >= retrier.policy.max_retries {
            return Err(error);
        }
        let Some(mut next) = retrier.begin_retry() else {
            return Err(error);
        };
        let hint = error.retry_after().unwrap_or_default();
        let delay = retrier.backoff.delay(attempt, hint, &mut rand::rng());
        retrier.lock().last_retry = Some(RetryNotice {
            refusal: error.clone(),
            delay,
            retry: attempt + 1,
        });
        tokio::time::sleep(delay).await;
        if !next.take_pass() {
            return Err(error);
        }
        attempt += 1;
        outcome = match window.send(message.clone()).await {
            Ok(confirm) => {
                retrier.retries.fetch_add(1, Ordering::Relaxed);
                confirm.await
            }
            Err(_) => Err(PublishError::ConnectionLost),
        };
        ticket = next;
    }
}

/// The publisher with retry on, against a connection whose publishes the test answers, on a
/// paused clock: every sleep is virtual, so the tests are exact and fast.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio::time::Instant as TokioInstant;
    use weir_protocol::{Limit, RejectReason};

    use super::*;
    use crate::connection::{test_handle, test_limits, Command};
    use crate::publisher::Publisher;
    use crate::retry::BreakerPolicy;

    fn refusal(reason: RejectReason, retry_after_ms: Option<u64>) -> PublishError {
        PublishError::Rejected {
            reason,
            limit: Limit::new("max_messages", 5),
            retry_after_ms,
            held_by: None,
        }
    }

    fn full(ms: u64) -> PublishError {
        refusal(RejectReason::TopicFull, Some(ms))
    }

    /// A breaker that never opens, for tests about the budget.
    fn no_breaker() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: u32::MAX,
            failure_ratio: 2.0,
            ..BreakerPolicy::default()
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            ..RetryPolicy::default()
        }
    }

    fn publisher(window: usize, policy: RetryPolicy) -> (Publisher, mpsc::Receiver<Command>) {
        let (conn, rx) = test_handle(test_limits(), 1024);
        (Publisher::new(conn, window).with_retry(policy), rx)
    }

    /// Answers the next publish (the window slot is freed with the command, as the connection
    /// task frees it when the broker answers).
    async fn answer(rx: &mut mpsc::Receiver<Command>, outcome: Result<u64, PublishError>) {
        match rx.recv().await.expect("a publish") {
            Command::Publish { reply, .. } => {
                let _ = reply.send(outcome);
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    /// Answers every publish with `outcome` until the publisher is gone; returns how many.
    fn always(
        mut rx: mpsc::Receiver<Command>,
        outcome: Result<u64, PublishError>,
    ) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(cmd) = rx.recv().await {
                if let Command::Publish { reply, .. } = cmd {
                    n += 1;
                    let _ = reply.send(outcome.clone());
                }
            }
            n
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_publish_is_retried_no_sooner_than_the_hint_and_confirmed() {
        let (publisher, mut rx) = publisher(4, policy());
        let confirm = publisher.publish("t", "m").await.unwrap();
        answer(&mut rx, Err(full(200))).await;
        let refused_at = TokioInstant::now();
        match rx.recv().await.unwrap() {
            Command::Publish { message, reply, .. } => {
                let waited = refused_at.elapsed();
                assert!(
                    waited >= Duration::from_millis(200) && waited <= Duration::from_millis(210),
                    "hint 200 ms + jitter ≤ 10 ms, waited {waited:?}"
                );
                assert_eq!(
                    (message.topic.as_str(), message.payload.as_ref()),
                    ("t", &b"m"[..])
                );
                reply.send(Ok(9)).unwrap();
            }
            other => panic!("expected the retry, got {other:?}"),
        }
        assert_eq!(confirm.await, Ok(9));
        assert_eq!(publisher.retries(), 1);
        assert_eq!(publisher.in_flight(), 0);
        assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_retry_names_its_refusal_delay_and_number() {
        let (publisher, mut rx) = publisher(4, policy());
        assert!(publisher.last_retry().is_none());
        let confirm = publisher.publish("t", "m").await.unwrap();
        answer(&mut rx, Err(full(200))).await;
        answer(&mut rx, Err(full(300))).await;
        // The second retry is sent once its delay is over: the notice was set before it.
        let Command::Publish { reply, .. } = rx.recv().await.unwrap() else {
            panic!("expected the second retry");
        };
        let notice = publisher.last_retry().expect("a retry was scheduled");
        assert_eq!(notice.retry, 2);
        assert_eq!(notice.refusal, full(300));
        assert!(
            notice.delay >= Duration::from_millis(300)
                && notice.delay <= Duration::from_millis(300) + policy().cap,
            "{notice:?}"
        );
        reply.send(Ok(3)).unwrap();
        assert_eq!(confirm.await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_resends_the_same_headers() {
        let (publisher, mut rx) = publisher(4, policy());
        let headers = [("trace-id", "abc"), ("trace-id", "def"), ("k", "v")];
        let expected: Vec<(String, String)> = headers
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let confirms = [
            publisher
                .publish_with_headers("t", headers, "m")
                .await
                .unwrap(),
            publisher
                .try_publish_with_headers("t", headers, "n")
                .unwrap(),
        ];
        for _ in 0..2 {
            answer(&mut rx, Err(full(10))).await;
        }
        for seq in 1..=2 {
            match rx.recv().await.unwrap() {
                Command::Publish { message, reply, .. } => {
                    assert_eq!(message.headers, expected);
                    reply.send(Ok(seq)).unwrap();
                }
                other => panic!("expected a retry, got {other:?}"),
            }
        }
        let [first, second] = confirms;
        assert!(matches!((first.await, second.await), (Ok(_), Ok(_))));
        assert_eq!(publisher.retries(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_waiting_cannot_fix_surface_at_once() {
        for error in [
            refusal(RejectReason::MessageTooLarge, None),
            refusal(RejectReason::ShuttingDown, Some(100)),
            refusal(RejectReason::TopicFull, None),
            PublishError::ConnectionLost,
        ] {
            let (publisher, mut rx) = publisher(4, policy());
            let confirm = publisher.publish("t", "m").await.unwrap();
            answer(&mut rx, Err(error.clone())).await;
            assert_eq!(confirm.await, Err(error));
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(rx.try_recv().is_err(), "nothing was sent again");
            assert_eq!(publisher.retries(), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn after_max_retries_the_last_refusal_surfaces() {
        let (publisher, rx) = publisher(
            4,
            RetryPolicy {
                max_retries: 3,
                ..policy()
            },
        );
        let answered = always(rx, Err(full(50)));
        let started = TokioInstant::now();
        let outcome = publisher.publish("t", "m").await.unwrap().await;
        assert_eq!(outcome, Err(full(50)));
        assert_eq!(publisher.retries(), 3);
        assert!(started.elapsed() >= Duration::from_millis(150), "3 hints");
        drop(publisher);
        assert_eq!(answered.await.unwrap(), 4, "one publish and three retries");
    }

    /// 200 publishes into a broker that refuses everything, each allowed 100 retries: the
    /// budget lets at most 10 % of them (20) be retried, and every refusal surfaces.
    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_in_a_refusal_storm() {
        let policy = RetryPolicy {
            max_retries: 100,
            budget_floor: 5,
            budget_ratio: 0.1,
            budget_window: Duration::from_secs(3600),
            breaker: no_breaker(),
            ..policy()
        };
        let (publisher, rx) = publisher(16, policy);
        let answered = always(rx, Err(full(10)));
        let mut confirms = Vec::new();
        for i in 0..200u32 {
            confirms.push(publisher.publish("t", i.to_string()).await.unwrap());
        }
        for confirm in confirms {
            assert!(matches!(
                confirm.await,
                Err(PublishError::Rejected {
                    reason: RejectReason::TopicFull,
                    ..
                })
            ));
        }
        let retries = publisher.retries();
        assert!((1..=20).contains(&retries), "{retries} retries");
        drop(publisher);
        assert_eq!(answered.await.unwrap() as u64, 200 + retries);
    }

    /// Ten publishes refused at once with a long hint: two may wait for a retry, the other
    /// eight surface immediately.
    #[tokio::test(start_paused = true)]
    async fn at_most_max_concurrent_retries_wait_at_once() {
        let policy = RetryPolicy {
            max_retries: 1,
            max_concurrent_retries: 2,
            budget_floor: 1000,
            breaker: no_breaker(),
            ..policy()
        };
        let (publisher, mut rx) = publisher(16, policy);
        let mut confirms = Vec::new();
        for i in 0..10u32 {
            confirms.push(publisher.publish("t", i.to_string()).await.unwrap());
        }
        for _ in 0..10 {
            answer(&mut rx, Err(full(1000))).await;
        }
        // Let every driver task see its refusal (virtual time moves only once all are idle).
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut waiting = Vec::new();
        for mut confirm in confirms {
            match futures::FutureExt::now_or_never(&mut confirm) {
                Some(outcome) => assert_eq!(outcome, Err(full(1000))),
                None => waiting.push(confirm),
            }
        }
        assert_eq!(
            waiting.len(),
            2,
            "two retries wait, eight refusals surfaced at once"
        );
        // The two retries go out after the hint; refused again, they surface too.
        answer(&mut rx, Err(full(1000))).await;
        answer(&mut rx, Err(full(1000))).await;
        for confirm in waiting {
            assert_eq!(confirm.await, Err(full(1000)));
        }
        assert_eq!(publisher.retries(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_fails_fast_probes_once_and_closes() {
        let cooldown = Duration::from_secs(1);
        let policy = RetryPolicy {
            max_retries: 0,
            breaker: BreakerPolicy {
                consecutive_failures: 3,
                cooldown,
                ..BreakerPolicy::default()
            },
            ..policy()
        };
        let (publisher, mut rx) = publisher(4, policy);
        for _ in 0..3 {
            let confirm = publisher.publish("t", "m").await.unwrap();
            answer(&mut rx, Err(full(10))).await;
            assert!(confirm.await.is_err());
        }
        assert!(matches!(
            publisher.breaker_state(),
            Some(BreakerState::Open { .. })
        ));
        assert!(matches!(
            publisher.publish("t", "m").await,
            Err(ClientError::CircuitOpen { retry_after }) if retry_after == cooldown
        ));
        assert!(matches!(
            publisher.try_publish("t", "m"),
            Err(ClientError::CircuitOpen { .. })
        ));
        assert!(rx.try_recv().is_err(), "nothing sent while open");

        tokio::time::advance(cooldown).await;
        assert_eq!(publisher.breaker_state(), Some(BreakerState::HalfOpen));
        let probe = publisher.publish("t", "probe").await.unwrap();
        assert!(
            matches!(
                publisher.try_publish("t", "m"),
                Err(ClientError::CircuitOpen { .. })
            ),
            "one probe at a time"
        );
        answer(&mut rx, Ok(1)).await;
        assert_eq!(probe.await, Ok(1));
        assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
        assert!(publisher.try_publish("t", "m").is_ok());
    }

    /// A half-open breaker's probe that is never sent (window full, publish future cancelled)
    /// or whose answer says nothing about load does not leave the breaker waiting forever.
    #[tokio::test(start_paused = true)]
    async fn a_probe_that_goes_nowhere_does_not_wedge_the_breaker() {
        let cooldown = Duration::from_secs(1);
        let policy = RetryPolicy {
            max_retries: 0,
            breaker: BreakerPolicy {
                consecutive_failures: 1,
                cooldown,
                ..BreakerPolicy::default()
            },
            ..policy()
        };
        let (publisher, mut rx) = publisher(1, policy);
        // Open the breaker: a publish whose answer is lost is a failure.
        let lost = publisher.publish("t", "lost").await.unwrap();
        drop(rx.recv().await.unwrap());
        assert_eq!(lost.await, Err(PublishError::ConnectionLost));
        assert!(matches!(
            publisher.breaker_state(),
            Some(BreakerState::Open { .. })
        ));
        tokio::time::advance(cooldown).await;

        // The probe is out: nothing else goes, however it asks.
        let probe = publisher.publish("t", "probe").await.unwrap();
        assert!(matches!(
            publisher.try_publish("t", "x"),
            Err(ClientError::CircuitOpen { .. })
        ));
        // Probe 1 is answered with a refusal that waiting cannot fix: the broker is alive.
        answer(&mut rx, Err(refusal(RejectReason::MessageTooLarge, None))).await;
        assert!(probe.await.is_err());
        assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));

        // Open it again, then let probes fail to be sent.
        let confirm = publisher.publish("t", "m").await.unwrap();
        answer(&mut rx, Err(full(10))).await;
        assert!(confirm.await.is_err());
        tokio::time::advance(cooldown).await;
        // Take the window's one slot with a publish of a clone without retry.
        let slot_taker = publisher
            .without_retry()
            .publish("t", "slot")
            .await
            .unwrap();
        let held = rx.recv().await.unwrap();
        assert!(matches!(
            publisher.try_publish("t", "x"),
            Err(ClientError::WindowFull)
        ));
        // The probe pass of that try_publish was given back: a publish may probe, and waits for
        // the slot; cancelled while waiting, it gives its pass back too.
        let waiting = publisher.publish("t", "y");
        assert!(tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .is_err());
        assert_eq!(publisher.breaker_state(), Some(BreakerState::HalfOpen));
        drop(held);
        assert!(slot_taker.await.is_err());
        let probe = publisher.publish("t", "z").await.unwrap();
        answer(&mut rx, Ok(3)).await;
        assert_eq!(probe.await, Ok(3));
        assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
    }

    /// While a refused publish waits for its retry, the breaker opens: the retry is not sent,
    /// and the refusal surfaces.
    #[tokio::test(start_paused = true)]
    async fn retries_waiting_give_up_when_the_breaker_opens() {
        let policy = RetryPolicy {
            breaker: BreakerPolicy {
                consecutive_failures: 2,
                cooldown: Duration::from_secs(60),
                ..BreakerPolicy::default()
            },
            ..policy()
        };
        let (publisher, mut rx) = publisher(4, policy);
        let a = publisher.publish("t", "a").await.unwrap();
        let b = publisher.publish("t", "b").await.unwrap();
        answer(&mut rx, Err(full(100))).await;
        answer(&mut rx, Err(full(100))).await;
        assert_eq!(a.await, Err(full(100)));
        assert_eq!(b.await, Err(full(100)));
        assert!(rx.try_recv().is_err());
        assert_eq!(publisher.retries(), 0);
    }
}
