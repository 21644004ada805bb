//! `weir sub`: print one payload per line and ack it.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;
use weir_client::{Client, GroupSpec, StartPosition};

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
    /// Prefix each line (after --seqs columns) with the message's headers and a tab:
    /// NAME=VALUE pairs joined by `;`, `-` when none; `\` escapes `\`, `;`, tab (`\t`), CR
    /// (`\r`) and LF (`\n`), and `=` in names.
    #[arg(long)]
    pub headers: bool,
    /// Where the group starts if this subscription creates it: earliest (the oldest message
    /// stored), latest (only messages published from now on) or a sequence number.
    #[arg(long, value_name = "earliest|latest|SEQ", default_value = "earliest", value_parser = parse_start)]
    pub start: StartPosition,
    /// The group's ack timeout, if this subscription creates it: an unacked delivery is
    /// redelivered after this long (default: the broker's).
    #[arg(long, value_name = "MS")]
    pub ack_timeout_ms: Option<u64>,
    /// The group's deliveries of one message before it is dead-lettered, if this subscription
    /// creates it (default: the broker's).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// The group's dead-letter topic, if this subscription creates it (default: TOPIC.dlq).
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter: Option<String>,
}

impl SubArgs {
    /// The settings the group gets if this subscription creates it.
    fn group_spec(&self) -> GroupSpec {
        GroupSpec {
            start: self.start,
            ack_timeout_ms: self.ack_timeout_ms,
            max_attempts: self.max_attempts,
            dead_letter_topic: self.dead_letter.clone(),
        }
    }

    /// The columns printed before a payload, each followed by a tab: sequence number and
    /// attempt (`--seqs`), then headers (`--headers`).
    fn prefix(&self, seq: u64, attempt: u32, headers: &[(String, String)]) -> String {
        let mut out = String::new();
        if self.seqs {
            out += &format!("{seq}\t{attempt}\t");
        }
        if self.headers {
            out += &show_headers(headers);
            out.push('\t');
        }
        out
    }
}

/// `earliest`, `latest` or a sequence number as a start position.
fn parse_start(arg: &str) -> Result<StartPosition, String> {
    match arg {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        seq => seq
            .parse()
            .map(StartPosition::Seq)
            .map_err(|_| format!("expected earliest, latest or a sequence number, got {arg:?}")),
    }
}

/// Headers as one column without tabs or line breaks (see [`SubArgs::headers`]).
fn show_headers(headers: &[(String, String)]) -> String {
    if headers.is_empty() {
        return "-".to_owned();
    }
    headers
        .iter()
        .map(|(name, value)| format!("{}={}", escape(name, true), escape(value, false)))
        .collect::<Vec<_>>()
        .join(";")
}

/// `text` with `\`, `;`, tab, CR and LF escaped by a backslash, and `=` too in a name.
fn escape(text: &str, name: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '=' if name => out.push_str("\\="),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

pub async fn run(client: Client, args: SubArgs) -> anyhow::Result<ExitCode> {
    let mut sub = client
        .subscribe_with(&args.topic, &args.group, args.credit, args.group_spec())
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
        let prefix = args.prefix(delivery.seq(), delivery.attempt(), delivery.headers());
        let mut out = std::io::stdout().lock();
        let written = out
            .write_all(prefix.as_bytes())
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: SubArgs,
    }

    fn parse(args: &[&str]) -> Result<SubArgs, clap::Error> {
        let argv = ["sub", "orders", "--group", "g"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn group_settings_come_from_the_flags_and_default_to_the_brokers() {
        assert_eq!(parse(&[]).unwrap().group_spec(), GroupSpec::default());
        let args = parse(&[
            "--start",
            "latest",
            "--ack-timeout-ms",
            "1500",
            "--max-attempts",
            "3",
            "--dead-letter",
            "orders.poison",
        ])
        .unwrap();
        assert_eq!(
            args.group_spec(),
            GroupSpec {
                start: StartPosition::Latest,
                ack_timeout_ms: Some(1500),
                max_attempts: Some(3),
                dead_letter_topic: Some("orders.poison".into()),
            }
        );
        assert_eq!(
            parse(&["--start", "42"]).unwrap().start,
            StartPosition::Seq(42)
        );
        assert_eq!(
            parse(&["--start", "earliest"]).unwrap().start,
            StartPosition::Earliest
        );
        assert!(parse(&["--start", "newest"]).is_err());
        assert!(parse(&["--max-attempts", "-1"]).is_err());
    }

    #[test]
    fn the_prefix_shows_seq_attempt_and_headers_as_asked() {
        let headers = [
            ("trace-id".to_owned(), "abc".to_owned()),
            ("note".to_owned(), "a=b;c\td\\".to_owned()),
            ("we=ird".to_owned(), "x\ny".to_owned()),
        ];
        assert_eq!(parse(&[]).unwrap().prefix(7, 2, &headers), "");
        assert_eq!(parse(&["--seqs"]).unwrap().prefix(7, 2, &headers), "7\t2\t");
        assert_eq!(
            parse(&["--seqs", "--headers"])
                .unwrap()
                .prefix(7, 2, &headers),
            "7\t2\ttrace-id=abc;note=a=b\\;c\\td\\\\;we\\=ird=x\\ny\t"
        );
        assert_eq!(parse(&["--headers"]).unwrap().prefix(7, 2, &[]), "-\t");
    }
}
