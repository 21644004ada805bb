//! `weir pub`: publish arguments or stdin lines through the publish window.

use std::collections::BTreeMap;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use weir_client::{Client, PublishConfirm, PublishError};

/// Most refusals printed one by one; the rest are only counted.
const REFUSALS_SHOWN: u64 = 10;

/// Arguments of `weir pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// The topic to publish to.
    pub topic: String,
    /// Messages to publish, one per argument; when none, one per line of stdin.
    pub messages: Vec<String>,
    /// Most publishes unconfirmed at once (clamped to the broker's max_unconfirmed).
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Print each confirmed sequence number.
    #[arg(long)]
    pub seqs: bool,
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
    let publisher = client.publisher_with_window(args.window);
    // Confirms are awaited by a collector while publishing goes on; the channel holds at most
    // one window of them, so it never holds the publisher up for long.
    let (tx, rx) = mpsc::channel::<(u64, PublishConfirm)>(publisher.window());
    let collector = tokio::spawn(collect(rx, args.seqs));
    let mut n = 0u64;
    let topic = args.topic.as_str();
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
            let confirm = publisher
                .publish(topic, Bytes::copy_from_slice(&line))
                .await?;
            if tx.send((n, confirm)).await.is_err() {
                break;
            }
        }
    } else {
        for message in args.messages {
            n += 1;
            let confirm = publisher.publish(topic, message.into_bytes()).await?;
            if tx.send((n, confirm)).await.is_err() {
                break;
            }
        }
    }
    drop(tx);
    let outcome = collector.await?;
    println!("{} confirmed", outcome.confirmed);
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
                };
                *out.by_reason.entry(key).or_default() += 1;
                let shown = out.refused + out.failed;
                if shown <= REFUSALS_SHOWN {
                    eprintln!("weir: message {n}: {e}");
                } else if shown == REFUSALS_SHOWN + 1 {
                    eprintln!("weir: (further refusals are only counted)");
                }
            }
        }
    }
    out
}
