//! `weir pub`: publish arguments or stdin lines through the publish window.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_client::{
    BreakerState, Client, ClientError, ErrorCode, GroupInfo, Headers, PublishConfirm, PublishError,
    Publisher, RejectReason, RetryPolicy,
};

use super::{exit, signal};

/// Most refusals printed one by one; the rest are only counted.
const REFUSALS_SHOWN: u64 = 10;

/// Arguments of `weir pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// The topic to publish to.
    pub topic: String,
    /// Messages to publish, one per argument; when none, one per line of stdin.
    pub messages: Vec<String>,
    /// A header sent with every message, as NAME=VALUE (split at the first `=`; the value may
    /// be empty). Repeat for more; order is kept and names may repeat.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Most publishes unconfirmed at once (clamped to the broker's max_unconfirmed).
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Print each confirmed sequence number.
    #[arg(long)]
    pub seqs: bool,
    /// Retry refusals that waiting can fix (TopicFull, RateLimited, Overloaded) with the
    /// client's default retry policy: the broker's retry-after plus full-jitter backoff, up to
    /// 5 retries each, within a budget of 10 % of the publishes; while the circuit breaker is
    /// open, publishing pauses for its cool-down.
    #[arg(long)]
    pub retry: bool,
}

/// How long an interrupted `weir pub` waits for the confirms of what it sent.
const DRAIN_ON_SIGNAL: Duration = Duration::from_secs(10);

/// How often, at most, `weir pub` says on stderr which confirm it is still waiting for.
const WAITING_NOTICE: Duration = Duration::from_secs(1);

/// Most characters of a message shown when naming it on stderr.
const PREVIEW_CHARS: usize = 80;

/// What the confirm collector counted.
#[derive(Debug, Default)]
struct Outcome {
    confirmed: u64,
    refused: u64,
    failed: u64,
    by_reason: BTreeMap<String, u64>,
    /// The group the latest `TopicFull` named as holding the topic, if any did.
    held_by: Option<String>,
    /// The first message not confirmed (refused, failed, or still unanswered when the
    /// collector was stopped): its number and payload.
    first_unconfirmed: Option<(u64, Bytes)>,
}

/// One sent publish handed to the collector: its number (argument or line, from 1), payload
/// (to name it on stderr) and confirm.
type Sent = (u64, Bytes, PublishConfirm);

/// Runs `weir pub`. On SIGTERM or SIGINT it stops reading input, waits up to
/// [`DRAIN_ON_SIGNAL`] for the confirms of what it sent, prints `N of M confirmed` and the first
/// unconfirmed message on stderr, and exits 1.
pub async fn run(client: Client, args: PubArgs) -> anyhow::Result<ExitCode> {
    let mut publisher = client.publisher_with_window(args.window);
    if args.retry {
        publisher = publisher.with_retry(RetryPolicy::default());
    }
    let interrupted = CancellationToken::new();
    let signals = tokio::spawn({
        let (interrupted, signalled) = (interrupted.clone(), signal::interrupted());
        async move {
            signalled.await;
            interrupted.cancel();
        }
    });
    // Confirms are awaited by a collector while publishing goes on; the channel holds at most
    // one window of them, so it never holds the publisher up for long.
    let (tx, rx) = mpsc::channel::<Sent>(publisher.window());
    let stop_collector = CancellationToken::new();
    let mut collector = tokio::spawn(collect(
        rx,
        args.seqs,
        publisher.clone(),
        stop_collector.clone(),
    ));
    let n = send_all(&publisher, &args, &tx, &interrupted).await;
    drop(tx);
    let n = n?;
    let outcome = tokio::select! {
        outcome = &mut collector, if !interrupted.is_cancelled() => outcome?,
        () = interrupted.cancelled() => {
            let unit = if args.messages.is_empty() {
                "line"
            } else {
                "message"
            };
            return interrupted_summary(collector, stop_collector, n, unit).await;
        }
    };
    signals.abort();
    println!("{} confirmed", outcome.confirmed);
    let duplicates = client.duplicates();
    if duplicates > 0 {
        eprintln!(
            "weir: {duplicates} of them were duplicates (their weir-msg-id or producer stamp was \
             stored already): each confirmed with the first one's seq, nothing stored again"
        );
    }
    if publisher.retries() > 0 {
        eprintln!("weir: {} retries sent", publisher.retries());
    }
    if outcome.refused + outcome.failed > 0 {
        let reasons: Vec<String> = outcome
            .by_reason
            .iter()
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        eprintln!(
            "weir: {} of {n} publishes not confirmed ({})",
            outcome.refused + outcome.failed,
            reasons.join(", ")
        );
        if let Some(group) = &outcome.held_by {
            eprintln!(
                "weir: {}",
                full_topic_holder(&client, &args.topic, group).await
            );
        }
        let code = if outcome.failed > 0 {
            exit::ERROR
        } else {
            exit::REFUSED
        };
        return Ok(exit::exit(code));
    }
    Ok(exit::exit(exit::DONE))
}
/// Publishes every argument, or every stdin line, handing each confirm to the collector;
/// stops early, between messages, once `interrupted` is cancelled. Returns how many were sent.
async fn send_all(
    publisher: &Publisher,
    args: &PubArgs,
    tx: &mpsc::Sender<Sent>,
    interrupted: &CancellationToken,
) -> anyhow::Result<u64> {
    let mut n = 0u64;
    let mut lines =
        (args.messages.is_empty()).then(|| tokio::io::BufReader::new(tokio::io::stdin()));
    let mut arguments = args.messages.iter();
    let mut line = Vec::new();
    loop {
        let payload = match lines.as_mut() {
            Some(stdin) => {
                line.clear();
                let read = tokio::select! {
                    read = stdin.read_until(b'\n', &mut line) => read?,
                    () = interrupted.cancelled() => break,
                };
                if read == 0 {
                    break;
                }
                Bytes::copy_from_slice(strip_line_end(&line))
            }
            None => match arguments.next() {
                Some(message) => Bytes::copy_from_slice(message.as_bytes()),
                None => break,
            },
        };
        // Cancel-safe: a publish interrupted while it waits for a window slot was not sent.
        let confirm = tokio::select! {
            confirm = publish(publisher, &args.topic, &args.headers, payload.clone()) => confirm?,
            () = interrupted.cancelled() => break,
        };
        n += 1;
        // Not cancelled: the confirm of a sent publish must reach the collector.
        if tx.send((n, payload, confirm)).await.is_err() {
            break;
        }
    }
    Ok(n)
}

/// `line` without its trailing `\n` or `\r\n`.
fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// After an interrupt: waits up to [`DRAIN_ON_SIGNAL`] for the confirms of the `sent`
/// publishes, then prints `N of M confirmed` and the first unconfirmed message (`line K` when
/// read from stdin, `message K` for arguments) on stderr — or, when every one sent was
/// confirmed, where the input stopped. Exit 1.
async fn interrupted_summary(
    mut collector: tokio::task::JoinHandle<Outcome>,
    stop_collector: CancellationToken,
    sent: u64,
    unit: &str,
) -> anyhow::Result<ExitCode> {
    let outcome = match tokio::time::timeout(DRAIN_ON_SIGNAL, &mut collector).await {
        Ok(outcome) => outcome?,
        Err(_) => {
            stop_collector.cancel();
            collector.await?
        }
    };
    eprintln!(
        "weir: interrupted: {} of {sent} confirmed",
        outcome.confirmed
    );
    match &outcome.first_unconfirmed {
        Some((n, payload)) => {
            eprintln!("weir: first unconfirmed: {unit} {n}: {}", preview(payload))
        }
        None => eprintln!(
            "weir: every {unit} sent was confirmed; stopped before {unit} {}",
            sent + 1
        ),
    }
    Ok(exit::exit(exit::ERROR))
}

/// `payload` quoted for stderr, cut after [`PREVIEW_CHARS`] characters.
fn preview(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut shown: String = text.chars().take(PREVIEW_CHARS).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

/// `NAME=VALUE` as a header: split at the first `=`; the name must not be empty.
fn parse_header(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {arg:?}")),
    }
}

/// Publishes one message with `headers`; while the retry breaker is open, waits out its
/// cool-down (a command line tool has nothing better to do) and publishes again.
async fn publish(
    publisher: &Publisher,
    topic: &str,
    headers: &Headers,
    payload: Bytes,
) -> Result<PublishConfirm, ClientError> {
    loop {
        let headers = headers.iter().cloned();
        match publisher
            .publish_with_headers(topic, headers, payload.clone())
            .await
        {
            Err(ClientError::CircuitOpen { retry_after }) => {
                eprintln!(
                    "weir: the broker keeps refusing; pausing {:.1} s (circuit breaker open)",
                    retry_after.as_secs_f64()
                );
                tokio::time::sleep(retry_after).await;
            }
            other => return other,
        }
    }
}

/// What a refusal means for the person at the terminal.
fn meaning(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::TopicFull => "the topic is at its bound; consumers must ack to make room",
        RejectReason::RateLimited => "this API key is over its rate limit; slow down",
        RejectReason::Overloaded => {
            "the broker is overloaded (memory budget or storage latency); back off"
        }
        RejectReason::MessageTooLarge => "the message is larger than the topic accepts",
        RejectReason::TooManyTopics => {
            "publishing would create a topic past the broker's max_topics"
        }
        RejectReason::TooManyConnections => "the broker is at its connection limit",
        RejectReason::ShuttingDown => "the broker is shutting down",
        RejectReason::StorageFull => {
            "the broker's disk budget is spent; consumers must ack (or topics be deleted) to free it"
        }
        RejectReason::StorageDamaged => {
            "the topic's storage is damaged or failed a write; an operator must run `weir topic repair`"
        }
        RejectReason::SequenceTooOld => {
            "the producer sequence is older than the topic's dedup window remembers; not stored"
        }
        RejectReason::DuplicatePending => {
            "a publish with the same id is still being stored; retry to learn its sequence"
        }
    }
}

/// The group a `TopicFull` named as holding `topic` (its oldest unacked message is kept until
/// that group acks it), with what it holds when the topic can be described within 5 s.
async fn full_topic_holder(client: &Client, topic: &str, group: &str) -> String {
    let ask = tokio::time::timeout(Duration::from_secs(5), client.describe_topic(topic));
    let groups = match ask.await {
        Ok(Ok(d)) => d.info.groups,
        _ => Vec::new(),
    };
    match groups.iter().find(|g| g.name == group) {
        Some(g) => holding(topic, g),
        None => format!("topic {topic} is held by group {group}"),
    }
}

/// `topic is held by group G: ...` — what group `g` holds.
fn holding(topic: &str, g: &GroupInfo) -> String {
    let oldest = g
        .oldest_unacked_ms
        .map(|ms| format!(", oldest unacked {:.1} s", ms as f64 / 1000.0))
        .unwrap_or_default();
    format!(
        "topic {topic} is held by group {}: {} in flight and {} not yet delivered{oldest}, {} member(s)",
        g.name, g.in_flight, g.pending, g.members
    )
}

/// One line about a publish that was not confirmed, e.g. `refused: RateLimited
/// (messages_per_s=100), retry after 10 ms — this API key is over its rate limit; slow down`.
fn not_confirmed(e: &PublishError) -> String {
    match e {
        PublishError::Rejected {
            reason,
            limit,
            retry_after_ms,
            held_by,
        } => {
            let retry = retry_after_ms.map_or(String::new(), |ms| format!(", retry after {ms} ms"));
            let held = held_by
                .as_ref()
                .map_or(String::new(), |g| format!(", held by group {g}"));
            format!(
                "refused: {reason:?} ({}={}){retry}{held} — {}",
                limit.name,
                limit.value,
                meaning(*reason)
            )
        }
        PublishError::Broker {
            code: ErrorCode::Forbidden,
            message,
        } => format!("refused: {message}"),
        other => format!("failed: {other}"),
    }
}

/// Awaits the confirms in the order sent, counting and reporting refusals; while one is
/// still unanswered after [`WAITING_NOTICE`], says so on stderr (at most once a
/// [`WAITING_NOTICE`]). Once `stop` is cancelled, the confirm it awaits counts as the first
/// unconfirmed (unless an earlier one was) and it returns.
async fn collect(
    mut rx: mpsc::Receiver<Sent>,
    print_seqs: bool,
    publisher: Publisher,
    stop: CancellationToken,
) -> Outcome {
    let mut out = Outcome::default();
    while let Some((n, payload, mut confirm)) = rx.recv().await {
        let waiting_since = tokio::time::Instant::now();
        let mut notices = tokio::time::interval_at(waiting_since + WAITING_NOTICE, WAITING_NOTICE);
        let outcome = loop {
            tokio::select! {
                outcome = &mut confirm => break Some(outcome),
                _ = notices.tick() => {
                    eprintln!("weir: {}", waiting(n, &payload, waiting_since.elapsed(), &publisher));
                }
                () = stop.cancelled() => break None,
            }
        };
        let Some(outcome) = outcome else {
            out.first_unconfirmed.get_or_insert((n, payload));
            break;
        };
        match outcome {
            Ok(seq) => {
                out.confirmed += 1;
                if print_seqs {
                    println!("{seq}");
                }
            }
            Err(e) => {
                let key = match &e {
                    PublishError::Rejected {
                        reason, held_by, ..
                    } => {
                        out.refused += 1;
                        if held_by.is_some() {
                            out.held_by.clone_from(held_by);
                        }
                        format!("{reason:?}")
                    }
                    // The key may not publish to the topic: a refusal (exit 2), not a failure.
                    PublishError::Broker {
                        code: ErrorCode::Forbidden,
                        ..
                    } => {
                        out.refused += 1;
                        "Forbidden".to_owned()
                    }
                    PublishError::Broker { code, .. } => {
                        out.failed += 1;
                        format!("{code:?}")
                    }
                    PublishError::TooLarge { .. } => {
                        out.failed += 1;
                        "TooLarge".to_owned()
                    }
                    PublishError::ConnectionLost => {
                        out.failed += 1;
                        "ConnectionLost".to_owned()
                    }
                    PublishError::NotSent(_) => {
                        out.failed += 1;
                        "NotSent".to_owned()
                    }
                };
                *out.by_reason.entry(key).or_default() += 1;
                let shown = out.refused + out.failed;
                if shown <= REFUSALS_SHOWN {
                    eprintln!("weir: message {n} {}", not_confirmed(&e));
                } else if shown == REFUSALS_SHOWN + 1 {
                    eprintln!("weir: (further refusals are only counted)");
                }
                out.first_unconfirmed.get_or_insert((n, payload));
            }
        }
    }
    out
}

/// A publish still unanswered after `waited`, for stderr: with retries, the latest refusal
/// being retried (reason, limit, hint, which retry and its delay), how many retries the
/// publisher has sent so far and its breaker's state.
fn waiting(n: u64, payload: &[u8], waited: Duration, publisher: &Publisher) -> String {
    let what = format!(
        "message {n} ({}) not confirmed after {:.0} s",
        preview(payload),
        waited.as_secs_f64()
    );
    let Some(policy) = publisher.retry_policy() else {
        return format!("{what}; still waiting for the broker's answer");
    };
    let latest = match publisher.last_retry() {
        Some(r) => format!(
            "latest {}; retry {} of {} waits {} ms",
            not_confirmed(&r.refusal),
            r.retry,
            policy.max_retries,
            r.delay.as_millis()
        ),
        None => "no refusal retried yet".to_owned(),
    };
    format!(
        "{what}; {latest}; {} retries sent so far by this publisher; circuit breaker {}",
        publisher.retries(),
        match publisher.breaker_state() {
            Some(BreakerState::Open { .. }) => "open",
            Some(BreakerState::HalfOpen) => "half-open",
            Some(BreakerState::Closed) | None => "closed",
        }
    )
}

#[cfg(test)]
mod tests {
    use weir_client::Limit;

    use super::*;

    #[test]
    fn the_holding_group_is_described_with_what_it_holds() {
        let g = GroupInfo {
            name: "slow".into(),
            in_flight: 2,
            pending: 5,
            members: 1,
            oldest_unacked_ms: Some(42_000),
            ..GroupInfo::default()
        };
        assert_eq!(
            holding("orders", &g),
            "topic orders is held by group slow: 2 in flight and 5 not yet delivered, oldest \
             unacked 42.0 s, 1 member(s)"
        );
    }

    #[test]
    fn headers_split_at_the_first_equals_sign() {
        let header = |name: &str, value: &str| Ok((name.to_owned(), value.to_owned()));
        assert_eq!(parse_header("trace-id=abc"), header("trace-id", "abc"));
        assert_eq!(parse_header("q=a=b"), header("q", "a=b"));
        assert_eq!(parse_header("empty="), header("empty", ""));
        assert!(parse_header("=value").is_err());
        assert!(parse_header("no-equals").is_err());
    }

    #[test]
    fn every_refusal_names_reason_limit_hint_and_meaning() {
        let refused = |reason, name, value, retry_after_ms| PublishError::Rejected {
            reason,
            limit: Limit::new(name, value),
            retry_after_ms,
            held_by: None,
        };
        assert_eq!(
            not_confirmed(&refused(
                RejectReason::RateLimited,
                "messages_per_s",
                100,
                Some(10)
            )),
            "refused: RateLimited (messages_per_s=100), retry after 10 ms — this API key is over \
             its rate limit; slow down"
        );
        assert_eq!(
            not_confirmed(&refused(RejectReason::Overloaded, "memory_budget_bytes", 1 << 20, Some(250))),
            "refused: Overloaded (memory_budget_bytes=1048576), retry after 250 ms — the broker is \
             overloaded (memory budget or storage latency); back off"
        );
        assert!(not_confirmed(&refused(
            RejectReason::TopicFull,
            "max_messages",
            1000,
            Some(100)
        ))
        .starts_with("refused: TopicFull (max_messages=1000), retry after 100 ms — "));
        let held = PublishError::Rejected {
            reason: RejectReason::TopicFull,
            limit: Limit::new("max_messages", 1000),
            retry_after_ms: Some(100),
            held_by: Some("billing".into()),
        };
        assert!(not_confirmed(&held).starts_with(
            "refused: TopicFull (max_messages=1000), retry after 100 ms, held by group billing — "
        ));
        assert_eq!(
            not_confirmed(&refused(RejectReason::MessageTooLarge, "max_message_bytes", 5, None)),
            "refused: MessageTooLarge (max_message_bytes=5) — the message is larger than the topic \
             accepts"
        );
        assert_eq!(
            not_confirmed(&PublishError::ConnectionLost),
            "failed: connection lost before the publish was confirmed"
        );
    }
}
