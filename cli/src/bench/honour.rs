//! The producers of `weir bench overload --producers N [--honour-hint]`: N producers, each on
//! its own connection (its own [`Client`]), publishing into the scenario's one bounded topic.
//!
//! - **Windowed** (without `--honour-hint`): each runs today's producer ([`produce`]: its
//!   window, as fast as it allows or paced at `--rate`); their results are merged. Each keeps
//!   its own latency histograms (about 0.5 MiB), so at most [`MAX_WINDOWED_PRODUCERS`].
//! - **Honouring** ([`honouring`]): each publishes one message at a time (window 1, no retry
//!   policy). Refused with a retry-after hint, it sleeps exactly that long and sends the same
//!   message again; refused without one, it counts it and moves on after [`NO_HINT_PAUSE`];
//!   confirmed, it sends the next message at once. They record into one shared result, so up to
//!   [`MAX_PRODUCERS`] cost one set of histograms.
//!
//! Every producer stops at the end of the phases: a message whose retry would come later is
//! abandoned (counted), a publish outstanding then is awaited until `grace` has passed
//! (unresolved past it).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use weir_client::{Client, ClientError, ClientOptions, PublishError};

use super::common::{
    bump, now_ns, payload, raise_nofile, reason_name, record, Counters, SeqSet, STAMP_BYTES,
};
use super::load::{
    phase_at, produce, total_ns, PhaseOutcome, ProducerResult, ProducerSpec, RetryAfter,
};
use super::scenario::Producing;

/// Most producers of one run (one connection and one file descriptor each).
pub const MAX_PRODUCERS: usize = 10_000;
/// Most windowed producers of one run (each keeps its own histograms, about 0.5 MiB).
pub const MAX_WINDOWED_PRODUCERS: usize = 64;
/// After a refusal without a retry-after hint, an honouring producer waits this long and
/// moves on to its next message.
pub const NO_HINT_PAUSE: Duration = Duration::from_millis(100);
/// Connections being opened at once.
const OPEN_PARALLEL: usize = 64;
/// Longest one connection may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest opening all of them may take.
const OPEN_LIMIT: Duration = Duration::from_secs(300);
/// File descriptors kept free beside the producers' (the scenario's admin and consumer
/// connections, stdio, TLS files).
const SPARE_FDS: usize = 64;
/// Connections the scenario opens besides the producers': its admin and its consumer.
pub const OTHER_CONNECTIONS: usize = 2;

/// Opens `n` producer connections to `server`, a few at a time. Fails clearly, naming what to
/// raise, when the open-file limit cannot hold them or the broker refuses one (its
/// `limits.max_connections_per_ip`, 256 by default, and `limits.max_connections`, 1 024, must
/// hold `n` plus the scenario's [`OTHER_CONNECTIONS`]); the connections opened so far are closed
/// then.
pub async fn open(server: &str, options: &ClientOptions, n: usize) -> anyhow::Result<Vec<Client>> {
    anyhow::ensure!(
        (1..=MAX_PRODUCERS).contains(&n),
        "--producers must be between 1 and {MAX_PRODUCERS}"
    );
    let want = n + OTHER_CONNECTIONS + SPARE_FDS;
    if let Some(short) = raise_nofile(want as libc::rlim_t) {
        anyhow::bail!("--producers {n}: {short} (raise it: `ulimit -n {want}`)");
    }
    let mut attempts = futures::stream::iter(0..n)
        .map(|_| tokio::time::timeout(OPEN_TIMEOUT, Client::connect_with(server, options.clone())))
        .buffer_unordered(OPEN_PARALLEL);
    let deadline = Instant::now() + OPEN_LIMIT;
    let mut clients = Vec::with_capacity(n);
    while clients.len() < n {
        let k = clients.len();
        match tokio::time::timeout_at(deadline, attempts.next()).await {
            Ok(Some(Ok(Ok(client)))) => clients.push(client),
            Ok(Some(Ok(Err(e)))) => anyhow::bail!(
                "opening {n} producer connections: one failed when {k} were open: {e}{}",
                hint(&e, n)
            ),
            Ok(Some(Err(_))) => anyhow::bail!(
                "opening {n} producer connections: one was not open within {OPEN_TIMEOUT:?} when {k} were open"
            ),
            Ok(None) => break,
            Err(_) => anyhow::bail!(
                "opening {n} producer connections took more than {OPEN_LIMIT:?} ({k} opened)"
            ),
        }
    }
    Ok(clients)
}

/// What to raise after a failed connection.
fn hint(e: &ClientError, n: usize) -> String {
    match e {
        ClientError::ConnectionRejected { .. } => format!(
            " — the broker's limits.max_connections_per_ip (default 256) and limits.max_connections (default 1024) must hold the {} connections of this run: raise them in its config",
            n + OTHER_CONNECTIONS
        ),
        ClientError::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            " — out of file descriptors: raise `ulimit -n`".into()
        }
        _ => String::new(),
    }
}

/// Today's producer on each of `clients`, their results merged into one.
pub fn windowed(clients: Vec<Client>) -> Producing {
    Box::new(move |spec, counters, stop| {
        Box::pin(async move {
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|c| tokio::spawn(produce(c, spec.clone(), counters.clone(), stop.clone())))
                .collect();
            let mut merged = empty_result(&spec);
            for task in tasks {
                match task.await {
                    Ok(r) => merge(&mut merged, r),
                    Err(e) => {
                        merged
                            .first_error
                            .get_or_insert_with(|| format!("a producer task failed: {e}"));
                    }
                }
            }
            merged
        })
    })
}

/// What honouring producers counted beyond a [`ProducerResult`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HonourTally {
    /// Producers that ran.
    pub producers: usize,
    /// Publishes of a message for the first time.
    pub first_tries: u64,
    /// Publishes of a message again, after sleeping its retry-after hint.
    pub retries: u64,
    /// Messages given up because their retry would have come after the end of the run.
    pub abandoned: u64,
}

/// The honouring producer (see the module documentation) on each of `clients`, recording into
/// one result; what they counted besides lands in `tally` when they have all stopped.
pub fn honouring(clients: Vec<Client>, tally: Arc<Mutex<HonourTally>>) -> Producing {
    Box::new(move |spec, counters, stop| {
        Box::pin(async move {
            let spec = Arc::new(spec);
            let shared = Arc::new(Mutex::new(Shared {
                result: empty_result(&spec),
                tally: HonourTally {
                    producers: clients.len(),
                    ..HonourTally::default()
                },
            }));
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|c| {
                    tokio::spawn(honour_one(
                        c,
                        spec.clone(),
                        shared.clone(),
                        counters.clone(),
                        stop.clone(),
                    ))
                })
                .collect();
            for task in tasks {
                if let Err(e) = task.await {
                    lock(&shared)
                        .result
                        .first_error
                        .get_or_insert_with(|| format!("a producer task failed: {e}"));
                }
            }
            let mut s = lock(&shared);
            *tally.lock().unwrap_or_else(|p| p.into_inner()) = std::mem::take(&mut s.tally);
            std::mem::replace(&mut s.result, empty_result(&spec))
        })
    })
}

/// The honouring producers' one result.
struct Shared {
    result: ProducerResult,
    tally: HonourTally,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A result with nothing recorded, for `spec`'s phases.
fn empty_result(spec: &ProducerSpec) -> ProducerResult {
    ProducerResult {
        phases: spec.phases.iter().map(|_| PhaseOutcome::new()).collect(),
        refusals: Default::default(),
        retry_after: RetryAfter::new(),
        confirmed_seqs: SeqSet::new(spec.seq_base),
        unresolved: 0,
        first_error: None,
        stopped_ms: 0,
    }
}

/// Adds `r` to `into`.
fn merge(into: &mut ProducerResult, r: ProducerResult) {
    for (a, b) in into.phases.iter_mut().zip(&r.phases) {
        a.offered += b.offered;
        a.confirmed += b.confirmed;
        a.refused += b.refused;
        a.errors += b.errors;
        a.not_offered += b.not_offered;
        let _ = a.confirm.add(&b.confirm);
        let _ = a.refusal.add(&b.refusal);
    }
    for (reason, n) in r.refusals {
        bump(&mut into.refusals, reason, n);
    }
    let (a, b) = (&mut into.retry_after, &r.retry_after);
    a.with_hint += b.with_hint;
    a.without_hint += b.without_hint;
    let _ = a.hist.add(&b.hist);
    a.min_ms = match (a.min_ms, b.min_ms) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    into.confirmed_seqs.union(&r.confirmed_seqs);
    into.unresolved += r.unresolved;
    if into.first_error.is_none() {
        into.first_error = r.first_error;
    }
    into.stopped_ms = into.stopped_ms.max(r.stopped_ms);
}

/// Records a refusal's hint in `r`.
fn record_hint(r: &mut RetryAfter, hint_ms: Option<u64>) {
    match hint_ms {
        Some(ms) => {
            r.with_hint += 1;
            let _ = r.hist.record(ms.clamp(1, 3_600_000));
            r.min_ms = Some(r.min_ms.map_or(ms, |m| m.min(ms)));
        }
        None => r.without_hint += 1,
    }
}

/// One honouring producer on `client`, until the end of the phases or `stop`.
async fn honour_one(
    client: Client,
    spec: Arc<ProducerSpec>,
    shared: Arc<Mutex<Shared>>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let publisher = client.publisher_with_window(1);
    let template = vec![0x5a; spec.size.saturating_sub(STAMP_BYTES)];
    // The tokio instants of the end of the phases and of the grace after them.
    let end = Instant::now()
        + Duration::from_nanos((spec.start_ns + total_ns(&spec.phases)).saturating_sub(now_ns()));
    let grace_end = end + spec.grace;
    let stopping = |stop: &watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
    // A refused message waiting for its retry: abandoned if the run ends first.
    let mut retry_pending = false;
    'messages: while Instant::now() < end && !stopping(&stop) {
        let body = payload(&template, spec.run_id);
        loop {
            let sent = tokio::select! {
                sent = publisher.publish(&spec.topic, body.clone()) => sent,
                _ = tokio::time::sleep_until(end) => break 'messages,
                _ = stop.changed() => break 'messages,
            };
            let sent_ns = now_ns();
            let phase = phase_at(&spec.phases, sent_ns.saturating_sub(spec.start_ns));
            let confirm = match sent {
                Ok(confirm) => confirm,
                Err(e) => {
                    // The connection has ended: this producer is done.
                    let mut s = lock(&shared);
                    s.result.phases[phase].errors += 1;
                    s.result.first_error.get_or_insert_with(|| e.to_string());
                    Counters::add(&counters.errors, 1);
                    break 'messages;
                }
            };
            Counters::add(&counters.offered, 1);
            {
                let mut s = lock(&shared);
                s.result.phases[phase].offered += 1;
                if std::mem::take(&mut retry_pending) {
                    s.tally.retries += 1;
                } else {
                    s.tally.first_tries += 1;
                }
            }
            let outcome = tokio::select! {
                outcome = tokio::time::timeout_at(grace_end, confirm) => outcome.ok(),
                _ = stop.changed() => None,
            };
            match settle(&shared, &counters, (phase, sent_ns), outcome, end) {
                Next::Message => continue 'messages,
                // Honoured exactly: the same message again once the hint has passed.
                Next::Retry(wake) => {
                    retry_pending = true;
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = stop.changed() => break 'messages,
                    }
                }
                // Nothing says when: the next message after a pause.
                Next::Pause => {
                    tokio::select! {
                        _ = tokio::time::sleep_until((Instant::now() + NO_HINT_PAUSE).min(end)) => {}
                        _ = stop.changed() => {}
                    }
                    continue 'messages;
                }
                Next::Stop => break 'messages,
            }
        }
    }
    let stopped_ms = (now_ns().saturating_sub(spec.start_ns) / 1_000_000)
        .min(total_ns(&spec.phases) / 1_000_000);
    let mut s = lock(&shared);
    s.result.stopped_ms = s.result.stopped_ms.max(stopped_ms);
    s.tally.abandoned += u64::from(retry_pending);
}

/// What an honouring producer does after a publish's outcome.
enum Next {
    /// Publish the next message at once.
    Message,
    /// Publish the same message again at this instant.
    Retry(Instant),
    /// Publish the next message after [`NO_HINT_PAUSE`].
    Pause,
    /// Stop publishing.
    Stop,
}

/// Records the `outcome` of a publish sent at `sent_ns` during `phase` (`None`: none came
/// within the grace, or the producer was told to stop) and says what comes next; a retry that
/// would come at or after `end` is abandoned.
fn settle(
    shared: &Mutex<Shared>,
    counters: &Counters,
    (phase, sent_ns): (usize, u64),
    outcome: Option<Result<u64, PublishError>>,
    end: Instant,
) -> Next {
    let since_sent = now_ns().saturating_sub(sent_ns);
    let mut s = lock(shared);
    let s = &mut *s;
    let ph = &mut s.result.phases[phase];
    match outcome {
        None => {
            s.result.unresolved += 1;
            Next::Stop
        }
        Some(Ok(seq)) => {
            ph.confirmed += 1;
            record(&mut ph.confirm, since_sent);
            s.result.confirmed_seqs.insert(seq);
            Counters::add(&counters.confirmed, 1);
            Next::Message
        }
        Some(Err(PublishError::Rejected {
            reason,
            retry_after_ms,
            ..
        })) => {
            ph.refused += 1;
            record(&mut ph.refusal, since_sent);
            bump(&mut s.result.refusals, reason_name(reason), 1);
            record_hint(&mut s.result.retry_after, retry_after_ms);
            Counters::add(&counters.refused, 1);
            match retry_after_ms.map(|ms| Instant::now() + Duration::from_millis(ms)) {
                Some(wake) if wake >= end => {
                    s.tally.abandoned += 1;
                    Next::Stop
                }
                Some(wake) => Next::Retry(wake),
                None => Next::Pause,
            }
        }
        Some(Err(e)) => {
            ph.errors += 1;
            s.result.first_error.get_or_insert_with(|| e.to_string());
            Counters::add(&counters.errors, 1);
            Next::Message
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::load::Phase;

    fn spec() -> ProducerSpec {
        ProducerSpec {
            topic: "t".into(),
            size: 64,
            window: 1,
            run_id: 1,
            start_ns: 0,
            phases: vec![Phase {
                name: "run",
                duration: Duration::from_secs(1),
                rate: None,
            }],
            grace: Duration::from_secs(1),
            seq_base: 100,
        }
    }

    #[test]
    fn merging_adds_counts_hints_and_sequence_numbers() {
        let s = spec();
        let mut a = empty_result(&s);
        let mut b = empty_result(&s);
        a.phases[0].offered = 3;
        a.phases[0].confirmed = 2;
        a.confirmed_seqs.insert(100);
        a.confirmed_seqs.insert(101);
        record_hint(&mut a.retry_after, Some(7));
        bump(&mut a.refusals, "topic_full".into(), 1);
        b.phases[0].offered = 2;
        b.phases[0].confirmed = 1;
        b.confirmed_seqs.insert(102);
        record_hint(&mut b.retry_after, Some(3));
        record_hint(&mut b.retry_after, None);
        bump(&mut b.refusals, "topic_full".into(), 2);
        b.unresolved = 1;
        b.first_error = Some("boom".into());
        b.stopped_ms = 900;
        merge(&mut a, b);
        assert_eq!((a.phases[0].offered, a.phases[0].confirmed), (5, 3));
        assert_eq!(
            a.confirmed_seqs.iter().collect::<Vec<_>>(),
            vec![100, 101, 102]
        );
        let hints = a.retry_after.report();
        assert_eq!((hints.with_hint, hints.without_hint), (2, 1));
        assert_eq!((hints.min_ms, hints.max_ms), (Some(3), Some(7)));
        assert_eq!(a.refusals["topic_full"], 3);
        assert_eq!(a.unresolved, 1);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        assert_eq!(a.stopped_ms, 900);
    }

    #[test]
    fn a_refused_connection_names_the_limits_to_raise() {
        let e = ClientError::ConnectionRejected {
            reason: weir_client::RejectReason::TooManyConnections,
            limit: weir_client::Limit::new("max_connections_per_ip", 256),
            retry_after_ms: None,
        };
        let h = hint(&e, 1000);
        assert!(
            h.contains("limits.max_connections_per_ip") && h.contains("1002"),
            "{h}"
        );
    }
}
