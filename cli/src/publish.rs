//! `weir pub`: publish arguments or stdin lines through the publish window.

use std::collections::BTreeMap;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use weir_client::{
    Client, ClientError, Headers, PublishConfirm, PublishError, Publisher, RejectReason,
    RetryPolicy,
};

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

/// What the confirm collector counted.
#[derive(Debug, Default)]
struct Outcome {
    confirmed: u64,
    refused: u64,
    failed: u64,
    by_reason: BTreeMap<String, u64>,
}

pub async fn run(client: Client, args: PubArgs) -> anyhow::Result<ExitCode> {
    let mut publisher = client.publisher_with_window(args.window);
    if args.retry {
        publisher = publisher.with_retry(RetryPolicy::default());
    }
    // Confirms are awaited by a collector while publishing goes on; the channel holds at most
    // one window of them, so it never holds the publisher up for long.
    let (tx, rx) = mpsc::channel::<(u64, PublishConfirm)>(publisher.window());
    let collector = tokio::spawn(collect(rx, args.seqs));
    let mut n = 0u64;
    let topic = args.topic.as_str();
    let headers = &args.headers;
    if args.messages.is_empty() {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            if stdin.read_until(b'\n', &mut line).await? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            n += 1;
            let payload = Bytes::copy_from_slice(&line);
            let confirm = publish(&publisher, topic, headers, payload).await?;
            if tx.send((n, confirm)).await.is_err() {
                break;
            }
        }
    } else {
        for message in args.messages {
            n += 1;
            let confirm = publish(&publisher, topic, headers, message.into_bytes().into()).await?;
            if tx.send((n, confirm)).await.is_err() {
                break;
            }
        }
    }
    drop(tx);
    let outcome = collector.await?;
    println!("{} confirmed", outcome.confirmed);
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
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
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
    }
}

/// One line about a publish that was not confirmed, e.g. `refused: RateLimited
/// (messages_per_s=100), retry after 10 ms — this API key is over its rate limit; slow down`.
fn not_confirmed(e: &PublishError) -> String {
    match e {
        PublishError::Rejected {
            reason,
            limit,
            retry_after_ms,
        } => {
            let retry = retry_after_ms.map_or(String::new(), |ms| format!(", retry after {ms} ms"));
            format!(
                "refused: {reason:?} ({}={}){retry} — {}",
                limit.name,
                limit.value,
                meaning(*reason)
            )
        }
        other => format!("failed: {other}"),
    }
}

async fn collect(mut rx: mpsc::Receiver<(u64, PublishConfirm)>, print_seqs: bool) -> Outcome {
    let mut out = Outcome::default();
    while let Some((n, confirm)) = rx.recv().await {
        match confirm.await {
            Ok(seq) => {
                out.confirmed += 1;
                if print_seqs {
                    println!("{seq}");
                }
            }
            Err(e) => {
                let key = match &e {
                    PublishError::Rejected { reason, .. } => {
                        out.refused += 1;
                        format!("{reason:?}")
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
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use weir_client::Limit;

    use super::*;

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
