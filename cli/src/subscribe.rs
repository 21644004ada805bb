//! `weir sub`: print one payload per line and ack it — in a durable group (`--group`) or, by
//! default, in an ephemeral one the broker deletes when the subscription ends.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use weir_client::{
    Client, ClientError, Delivery, ErrorCode, GroupOrdering, GroupSpec, StartPosition,
};

use super::exit;

/// Arguments of `weir sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// The topic to subscribe to.
    pub topic: String,
    /// The group (durable subscription) to join, created if it does not exist; it stays after
    /// this command ends, holding the messages it has not acked. Without --group the
    /// subscription is ephemeral: a group of its own (`ephemeral-<hex>`, named on stderr) that
    /// the broker deletes when this command ends, so it holds nothing afterwards.
    #[arg(long)]
    pub group: Option<String>,
    /// The subscription window: most messages outstanding at once (1 to the broker's
    /// max_credit; more is refused, exit 64).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub credit: u32,
    /// Exit after printing this many messages (default: run until interrupted). Never asks the
    /// broker for more than it will still print; 0 exits at once without subscribing.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop at the first gap (messages the topic dropped — `drop_oldest` or `max_age` — before
    /// this group received them) and exit 1; by default gaps are reported on stderr and the
    /// subscription goes on.
    #[arg(long)]
    pub exit_on_gap: bool,
    /// Prefix each line with the sequence number and delivery attempt, tab-separated.
    #[arg(long)]
    pub seqs: bool,
    /// Prefix each line (after --seqs columns) with the message's headers and a tab:
    /// NAME=VALUE pairs joined by `;`, `-` when none; `\` escapes `\`, `;`, tab (`\t`), CR
    /// (`\r`) and LF (`\n`), and `=` in names.
    #[arg(long)]
    pub headers: bool,
    /// Where the group starts if this subscription creates it (an ephemeral one always does):
    /// earliest (the oldest message stored), latest (only messages published from now on: a
    /// tail) or a sequence number.
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
    /// The group's ordering, if this subscription creates it: shared (any member takes the
    /// next message) or key (messages with the same weir-key header go to one member at a
    /// time, in order; see the README's "Ordering by key"). Default: shared.
    #[arg(long, value_name = "shared|key")]
    pub ordering: Option<GroupOrdering>,
}

impl SubArgs {
    /// The settings the group gets if this subscription creates it.
    fn group_spec(&self) -> GroupSpec {
        GroupSpec {
            ordering: self.ordering,
            start: self.start,
            ack_timeout_ms: self.ack_timeout_ms,
            max_attempts: self.max_attempts,
            dead_letter_topic: self.dead_letter.clone(),
            ephemeral: self.group.is_none(),
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

/// How often the deadlines of printed messages held unacked by `--count` are restarted
/// ([`Delivery::progress`]), so the group does not redeliver them while the last ones arrive.
const HOLD_REFRESH: Duration = Duration::from_secs(1);

/// Runs `weir sub`: prints and acks until `--count` messages were printed, Ctrl-C, or the
/// subscription ends (exit 1 with the reason, see [`ended_by_broker`]).
///
/// With `--count N` the CLI never asks for more messages than it will still print: the window
/// is `min(--credit, N)`, and once acking a printed message would let the broker deliver more
/// than are still wanted, printed messages are held (unacked, their deadlines restarted every
/// [`HOLD_REFRESH`]) and acked together at the end. So while it runs no message is delivered,
/// left unprinted and returned to the group with an attempt spent. (The client library grants
/// the credit of those final acks just before it unsubscribes, which can still let the broker
/// slip in up to a window of messages that go back to the group; closing without granting
/// credit is the library's to fix.)
pub async fn run(client: Client, args: SubArgs) -> anyhow::Result<ExitCode> {
    let max_credit = client.limits().max_credit;
    if args.credit > max_credit {
        return Err(exit::usage(format!(
            "credit {} exceeds the broker's max_credit {max_credit}",
            args.credit
        )));
    }
    if args.count == Some(0) {
        return Ok(exit::exit(exit::DONE));
    }
    let window = window(args.credit, args.count);
    let mut sub = match &args.group {
        Some(group) => {
            client
                .subscribe_with(&args.topic, group, window, args.group_spec())
                .await?
        }
        None => {
            let sub = client
                .subscribe_ephemeral(&args.topic, window, args.group_spec())
                .await?;
            eprintln!(
                "weir: ephemeral group {} (deleted when this subscription ends; use --group for a durable one)",
                sub.group()
            );
            sub
        }
    };
    let group = sub.group().to_owned();
    // Printed and not acked yet: at most `window` deliveries (see `run`).
    let mut held: Vec<Delivery> = Vec::with_capacity(window as usize);
    let mut printed = 0u64;
    let mut refresh = tokio::time::interval(HOLD_REFRESH);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let code = loop {
        let item = tokio::select! {
            item = sub.next() => item,
            _ = refresh.tick() => {
                held.iter().for_each(Delivery::progress);
                continue;
            }
            _ = &mut ctrl_c => break exit::DONE,
        };
        let delivery = match item {
            Some(Ok(d)) => d,
            Some(Err(ClientError::MessagesDropped { from, to })) => {
                eprintln!("weir: gap: messages {from}..={to} were dropped (drop_oldest or max_age) before group {group} received them");
                if args.exit_on_gap {
                    break exit::ERROR;
                }
                continue;
            }
            Some(Err(ClientError::GroupDeleted { topic, group })) => {
                finish(held);
                eprintln!(
                    "weir: subscription ended by the broker: group {group} of topic {topic} was deleted"
                );
                return Ok(exit::exit(exit::ERROR));
            }
            Some(Err(e)) => {
                finish(held);
                return Err(anyhow::anyhow!("subscription failed: {e}"));
            }
            None => {
                finish(held);
                eprintln!(
                    "weir: {}",
                    ended_by_broker(&client, &args.topic, &group).await
                );
                return Ok(exit::exit(exit::ERROR));
            }
        };
        if let Err(e) = print(&args, &delivery) {
            // Not acked: the message is redelivered to the group.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break exit::DONE;
            }
            finish(held);
            return Err(e.into());
        }
        printed += 1;
        match args.count {
            Some(count) if u64::from(window) - held.len() as u64 > count - printed => {
                held.push(delivery)
            }
            _ => delivery.ack(),
        }
        if args.count == Some(printed) {
            break exit::DONE;
        }
    };
    finish(held);
    sub.close().await?;
    Ok(exit::exit(code))
}

/// The subscription window: `credit`, but never more than `count` messages.
fn window(credit: u32, count: Option<u64>) -> u32 {
    count.map_or(credit, |n| credit.min(u32::try_from(n).unwrap_or(u32::MAX)))
}

/// Acks the printed messages held back by `--count`.
fn finish(held: Vec<Delivery>) {
    held.into_iter().for_each(Delivery::ack);
}

/// Writes one delivery as a line on stdout: the `--seqs`/`--headers` columns, then the payload
/// (lossy UTF-8).
fn print(args: &SubArgs, delivery: &Delivery) -> std::io::Result<()> {
    let prefix = args.prefix(delivery.seq(), delivery.attempt(), delivery.headers());
    let mut out = std::io::stdout().lock();
    out.write_all(prefix.as_bytes())?;
    out.write_all(String::from_utf8_lossy(delivery.payload()).as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Why a subscription ended without the CLI asking: the topic or the group is gone (asked of
/// the broker, within a few seconds), else that the broker ended it.
// The client library yields a typed `GroupDeleted` for a group (or topic) deleted under the
// subscription; this is for an end without one.
async fn ended_by_broker(client: &Client, topic: &str, group: &str) -> String {
    let ask = tokio::time::timeout(Duration::from_secs(5), client.describe_topic(topic)).await;
    match ask {
        Ok(Ok(d)) if !d.info.groups.iter().any(|g| g.name == group) => {
            format!("subscription ended by the broker: group {group} of topic {topic} was deleted")
        }
        Ok(Err(ClientError::Broker {
            code: ErrorCode::UnknownTopic,
            ..
        })) => format!("subscription ended by the broker: topic {topic} was deleted"),
        _ => "the broker ended the subscription".to_owned(),
    }
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
    fn without_a_group_the_subscription_is_ephemeral_and_starts_at_the_earliest() {
        let args = Cli::try_parse_from(["sub", "orders"]).unwrap().args;
        assert_eq!(args.group, None);
        assert_eq!(
            args.group_spec(),
            GroupSpec {
                ephemeral: true,
                ..GroupSpec::default()
            }
        );
        assert_eq!(args.group_spec().start, StartPosition::Earliest);
        let tail = Cli::try_parse_from(["sub", "orders", "--start", "latest"])
            .unwrap()
            .args;
        assert_eq!(tail.group_spec().start, StartPosition::Latest);
        assert!(tail.group_spec().ephemeral);
        assert_eq!(parse(&[]).unwrap().group.as_deref(), Some("g"));
        assert!(!parse(&[]).unwrap().group_spec().ephemeral, "durable");
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
                ordering: None,
                start: StartPosition::Latest,
                ack_timeout_ms: Some(1500),
                max_attempts: Some(3),
                dead_letter_topic: Some("orders.poison".into()),
                ephemeral: false,
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
        let ordering = |arg: &str| parse(&["--ordering", arg]).map(|a| a.group_spec().ordering);
        assert_eq!(ordering("key").unwrap(), Some(GroupOrdering::Key));
        assert_eq!(ordering("shared").unwrap(), Some(GroupOrdering::Shared));
        assert!(ordering("fifo").is_err());
    }

    #[test]
    fn the_window_never_exceeds_the_count() {
        assert_eq!(window(100, Some(2)), 2);
        assert_eq!(window(100, None), 100);
        assert_eq!(window(5, Some(1 << 40)), 5);
        assert!(parse(&["--credit", "0"]).is_err());
        assert!(parse(&["--exit-on-gap"]).unwrap().exit_on_gap);
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
