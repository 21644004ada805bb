//! `weir sub`: print one payload per line and ack it.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use weir_client::Client;

/// Arguments of `weir sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// The topic to subscribe to.
    pub topic: String,
    /// The group (durable subscription) to join.
    #[arg(long)]
    pub group: String,
    /// The subscription window: most messages outstanding at once.
    #[arg(long, default_value_t = 100)]
    pub credit: u32,
    /// Exit after this many messages (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Prefix each line with the sequence number and delivery attempt, tab-separated.
    #[arg(long)]
    pub seqs: bool,
}

pub async fn run(client: Client, args: SubArgs) -> anyhow::Result<ExitCode> {
    let mut sub = client
        .subscribe(&args.topic, &args.group, args.credit)
        .await?;
    let mut received = 0u64;
    if args.count == Some(0) {
        sub.close().await?;
        return Ok(ExitCode::SUCCESS);
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let item = tokio::select! {
            item = sub.next() => item,
            _ = &mut ctrl_c => break,
        };
        let delivery = match item {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(anyhow::anyhow!("subscription failed: {e}")),
            None => break,
        };
        let mut out = std::io::stdout().lock();
        let written = if args.seqs {
            write!(out, "{}\t{}\t", delivery.seq(), delivery.attempt())
        } else {
            Ok(())
        }
        .and_then(|()| out.write_all(String::from_utf8_lossy(delivery.payload()).as_bytes()))
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
        drop(out);
        if let Err(e) = written {
            // Not acked: the message is redelivered to the group.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
        delivery.ack();
        received += 1;
        if args.count == Some(received) {
            break;
        }
    }
    sub.close().await?;
    Ok(ExitCode::SUCCESS)
}
