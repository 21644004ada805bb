//! `weir stats`: a live view of the broker's topics and their groups, like `top`.
//!
//! One row per topic — depth (and % of `max_messages`), bytes (and % of `max_bytes`), publish
//! rate, drain rate, parked, dropped and refused publishes, and the bound refusing publishes
//! right now — and under it one row per group: members, in flight, pending, credit, age of the
//! oldest unacked message, dead letters held. Redrawn every `--interval` until Ctrl-C; `--once`
//! prints one snapshot (`--json`: one JSON document, an array of [`TopicStats`]).
//!
//! Everything comes from `ListTopics` on the wire protocol. The publish rate is the growth of
//! the topic's `next_seq` between two samples, so `--once` takes two samples `--interval`
//! apart; it is `null` (`-`) only for a topic the earlier sample did not have (or that was
//! recreated in between). The drain rate is the broker's own measure (`drain_per_s`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_client::{Client, ClientError, ErrorCode, GroupInfo, TopicHealth, TopicInfo};
use weir_protocol::ActiveRefusal;

use super::layout::aligned;
use super::size::format_size;

/// The shortest `--interval`: each refresh is one `ListTopics` request to the broker.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Clears a terminal and moves the cursor home.
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// The arguments of `weir stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Seconds between refreshes, at least 0.1 (with --once: between the two samples the
    /// publish rate is measured over).
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// Show only this topic (one the broker does not have is an error, exit 1).
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,
    /// Print one snapshot and exit, instead of refreshing until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// With --once: print the snapshot as one JSON document (an array of topics).
    #[arg(long, requires = "once")]
    pub json: bool,
}

/// Parses `--interval`: a number of seconds, at least [`MIN_INTERVAL`].
fn parse_interval(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|d| *d >= MIN_INTERVAL)
        .ok_or_else(|| format!("{s:?} is not a number of seconds of at least 0.1"))
}

/// Runs `weir stats` against `client` (connected to `server`, named in the live header).
/// With `--topic`, a topic the broker does not have is an error (exit 1) naming it.
pub async fn run(client: Client, server: &str, args: StatsArgs) -> anyhow::Result<ExitCode> {
    if let Some(topic) = &args.topic {
        match client.describe_topic(topic).await {
            Err(ClientError::Broker {
                code: ErrorCode::UnknownTopic,
                ..
            }) => anyhow::bail!("no topic named {topic} on the broker"),
            other => {
                other?;
            }
        }
    }
    if args.once {
        let first = sample(&client, args.topic.as_deref()).await?;
        tokio::time::sleep(args.interval).await;
        let second = sample(&client, args.topic.as_deref()).await?;
        let rows = stats(Some(&first), &second);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print!("{}", table(&rows));
        }
        return Ok(ExitCode::SUCCESS);
    }
    tokio::select! {
        watched = watch(&client, server, &args) => match watched? {},
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
    }
}

/// Redraws the view every `--interval` (clearing the screen first when stdout is a terminal);
/// returns only on an error (the connection lost, stdout closed).
async fn watch(client: &Client, server: &str, args: &StatsArgs) -> anyhow::Result<Infallible> {
    let clear = if std::io::stdout().is_terminal() {
        CLEAR_SCREEN
    } else {
        ""
    };
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = None;
    loop {
        ticks.tick().await;
        let current = sample(client, args.topic.as_deref()).await?;
        let rows = stats(previous.as_ref(), &current);
        let heading = format!(
            "weir stats  {server}  every {:?}  {} topic(s)  (Ctrl-C to quit)\n\n",
            args.interval,
            rows.len()
        );
        let mut out = std::io::stdout().lock();
        out.write_all(format!("{clear}{heading}{}", table(&rows)).as_bytes())?;
        out.flush()?;
        previous = Some(current);
    }
}

/// The broker's topics (only `only`, when given) and when the answer arrived.
struct Sample {
    at: Instant,
    topics: Vec<TopicInfo>,
}

/// Asks the broker for its topics.
async fn sample(client: &Client, only: Option<&str>) -> anyhow::Result<Sample> {
    let mut topics = client.list_topics().await?;
    topics.retain(|t| only.is_none_or(|name| t.config.name == name));
    Ok(Sample {
        at: Instant::now(),
        topics,
    })
}

/// One topic as `weir stats` shows it: the broker's snapshot plus the measured publish rate.
/// `--once --json` prints an array of these.
#[derive(Debug, Serialize)]
struct TopicStats<'a> {
    /// The topic's name.
    topic: &'a str,
    /// Messages stored.
    depth: u64,
    /// The topic's `max_messages`.
    max_messages: u64,
    /// `depth` as a whole percentage of `max_messages`, rounded down.
    depth_percent: u64,
    /// Payload bytes stored.
    bytes: u64,
    /// The topic's `max_bytes`.
    max_bytes: u64,
    /// `bytes` as a whole percentage of `max_bytes`, rounded down.
    bytes_percent: u64,
    /// Publishes accepted per second between the two latest samples (one decimal); `None`
    /// without an earlier sample of the topic.
    publish_per_s: Option<f64>,
    /// Messages leaving the topic per second, as the broker measures it.
    drain_per_s: u64,
    /// Publishes parked by the `block` policy now.
    parked: u64,
    /// Messages evicted by `drop_oldest` since the broker started.
    dropped: u64,
    /// Publishes refused since the broker started.
    rejected: u64,
    /// The bound refusing publishes now (refused within the last two seconds).
    refusing: Option<&'a ActiveRefusal>,
    /// The state of the topic's storage: healthy, full, failed or damaged (with why).
    storage: &'a TopicHealth,
    /// The topic's groups, as the broker describes them.
    groups: &'a [GroupInfo],
}

/// The rows of `current`, with publish rates measured against `previous`.
fn stats<'a>(previous: Option<&Sample>, current: &'a Sample) -> Vec<TopicStats<'a>> {
    let earlier: HashMap<&str, (u64, Instant)> = previous.map_or_else(HashMap::new, |p| {
        p.topics
            .iter()
            .map(|t| (t.config.name.as_str(), (t.next_seq, p.at)))
            .collect()
    });
    current
        .topics
        .iter()
        .map(|t| {
            let c = &t.config;
            TopicStats {
                topic: &c.name,
                depth: t.depth,
                max_messages: c.max_messages,
                depth_percent: percent(t.depth, c.max_messages),
                bytes: t.bytes,
                max_bytes: c.max_bytes,
                bytes_percent: percent(t.bytes, c.max_bytes),
                publish_per_s: earlier.get(c.name.as_str()).and_then(|&(seq, at)| {
                    per_second(seq, t.next_seq, current.at.saturating_duration_since(at))
                }),
                drain_per_s: t.drain_per_s,
                parked: t.parked,
                dropped: t.dropped,
                rejected: t.rejected,
                refusing: t.refusing.as_ref(),
                storage: &t.health,
                groups: &t.groups,
            }
        })
        .collect()
}

/// `part` as a whole percentage of `whole`, rounded down (so 100 means full).
fn percent(part: u64, whole: u64) -> u64 {
    part.saturating_mul(100) / whole.max(1)
}

/// How fast a counter grew from `before` to `now` over `elapsed`, to one decimal; `None` when
/// it went backwards (the topic was recreated) or no time passed.
fn per_second(before: u64, now: u64, elapsed: Duration) -> Option<f64> {
    let grown = now.checked_sub(before)?;
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| (grown as f64 / secs * 10.0).round() / 10.0)
}

/// The view: a topic table whose rows are each followed by their groups' rows, indented (the
/// group columns aligned across all groups, under a second header line).
fn table(rows: &[TopicStats]) -> String {
    let mut topics = vec![[
        "TOPIC", "DEPTH", "BYTES", "PUB/S", "DRAIN/S", "PARKED", "DROPPED", "REJECTED", "STORAGE",
        "REFUSING",
    ]
    .map(String::from)];
    let mut groups = vec![[
        "GROUP",
        "MEMBERS",
        "IN_FLIGHT",
        "PENDING",
        "CREDIT",
        "OLDEST_UNACKED",
        "DL_HELD",
    ]
    .map(String::from)];
    for t in rows {
        topics.push([
            t.topic.to_owned(),
            format!("{} ({}%)", t.depth, t.depth_percent),
            format!("{} ({}%)", format_size(t.bytes), t.bytes_percent),
            t.publish_per_s
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
            t.drain_per_s.to_string(),
            t.parked.to_string(),
            t.dropped.to_string(),
            t.rejected.to_string(),
            match t.storage.damaged_at() {
                Some(at) => format!("damaged@{at}"),
                None => t.storage.state().to_owned(),
            },
            t.refusing.map_or_else(|| "-".to_owned(), refusal),
        ]);
        groups.extend(t.groups.iter().map(|g| {
            [
                g.name.clone(),
                g.members.to_string(),
                g.in_flight.to_string(),
                g.pending.to_string(),
                g.credit.to_string(),
                g.oldest_unacked_ms.map_or_else(
                    || "-".to_owned(),
                    |ms| format!("{:?}", Duration::from_millis(ms)),
                ),
                g.dead_letter_held.to_string(),
            ]
        }));
    }
    let topics = aligned(&topics);
    let groups = aligned(&groups);
    let (mut topic_lines, mut group_lines) = (topics.lines(), groups.lines());
    let mut out = String::new();
    let mut line = |text: Option<&str>, indent: &str| {
        out.push_str(indent);
        out.push_str(text.unwrap_or_default());
        out.push('\n');
    };
    line(topic_lines.next(), "");
    line(group_lines.next(), "  ");
    for t in rows {
        line(topic_lines.next(), "");
        for _ in t.groups {
            line(group_lines.next(), "  ");
        }
    }
    out
}

/// An active refusal: reason, the bound that fired, and refusals in the last second.
fn refusal(r: &ActiveRefusal) -> String {
    format!(
        "{:?} {}={} ({}/s)",
        r.reason, r.limit.name, r.limit.value, r.last_second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_client::{FsyncPolicy, Limit, OverflowPolicy, RejectReason, TopicConfig};

    fn topic(name: &str, depth: u64, next_seq: u64) -> TopicInfo {
        TopicInfo {
            groups_omitted: 0,
            config: TopicConfig {
                max_age_ms: None,
                name: name.into(),
                max_messages: 3,
                max_bytes: 1024 * 1024,
                max_message_bytes: 1024,
                overflow: OverflowPolicy::Reject,
                fsync: FsyncPolicy::Batch,
                max_blocked_publishes: 8,
                max_block_ms: 1000,
            },
            depth,
            bytes: 1536,
            next_seq,
            groups: vec![],
            dropped: 0,
            parked: 0,
            rejected: 0,
            drain_per_s: 0,
            refusing: None,
            health: Default::default(),
        }
    }

    /// A full `orders` topic refusing publishes, with one group; and an idle `audit` topic.
    fn busy() -> Vec<TopicInfo> {
        let mut orders = topic("orders", 3, 31);
        orders.rejected = 9;
        orders.drain_per_s = 4;
        orders.refusing = Some(ActiveRefusal {
            reason: RejectReason::TopicFull,
            limit: Limit::new("max_messages", 3),
            retry_after_ms: Some(750),
            age_ms: 20,
            last_second: 7,
        });
        orders.groups = vec![GroupInfo {
            name: "billing".into(),
            members: 2,
            in_flight: 1,
            pending: 2,
            credit: 99,
            oldest_unacked_ms: Some(1250),
            dead_letter_held: 5,
            ..GroupInfo::default()
        }];
        let mut audit = topic("audit", 0, 1);
        audit.health = TopicHealth::Damaged {
            at_seq: 4,
            reason: "crc mismatch".into(),
        };
        vec![orders, audit]
    }

    fn sample(at: Instant, topics: Vec<TopicInfo>) -> Sample {
        Sample { at, topics }
    }

    #[test]
    fn the_interval_is_a_number_of_seconds_of_at_least_a_tenth() {
        assert_eq!(parse_interval("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "0.05", "-1", "NaN", "inf", "1s", ""] {
            assert!(parse_interval(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_publish_rate_is_the_growth_of_next_seq_between_samples() {
        let t0 = Instant::now();
        let before = sample(t0, vec![topic("orders", 0, 11), topic("gone", 0, 1)]);
        let after = sample(
            t0 + Duration::from_secs(2),
            vec![
                topic("orders", 3, 31),
                topic("gone", 0, 0),
                topic("new", 0, 5),
            ],
        );
        let rows = stats(Some(&before), &after);
        let rates: Vec<_> = rows.iter().map(|r| (r.topic, r.publish_per_s)).collect();
        assert_eq!(
            rates,
            [("orders", Some(10.0)), ("gone", None), ("new", None)]
        );
        assert!(stats(None, &after)
            .iter()
            .all(|r| r.publish_per_s.is_none()));
        assert_eq!(per_second(0, 1, Duration::from_secs(3)), Some(0.3));
        assert_eq!(per_second(0, 1, Duration::ZERO), None);
    }

    #[test]
    fn fill_is_a_whole_percentage_rounded_down() {
        assert_eq!(percent(3, 3), 100);
        assert_eq!(percent(2, 3), 66);
        assert_eq!(percent(0, 3), 0);
        assert_eq!(percent(u64::MAX, 1), u64::MAX, "saturates");
        assert_eq!(percent(5, 0), 500, "a zero bound cannot divide by zero");
    }

    #[test]
    fn the_table_puts_each_topics_groups_under_it() {
        let t0 = Instant::now();
        let before = sample(t0, vec![topic("orders", 0, 21)]);
        let after = sample(t0 + Duration::from_secs(1), busy());
        let text = table(&stats(Some(&before), &after));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("TOPIC   DEPTH     BYTES"), "{text}");
        assert!(
            lines[0].ends_with("REJECTED  STORAGE    REFUSING"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("  GROUP    MEMBERS  IN_FLIGHT  PENDING  CREDIT"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("orders  3 (100%)  1.5 KiB (0%)  10.0"),
            "{text}"
        );
        assert!(
            lines[2].ends_with("9         healthy    TopicFull max_messages=3 (7/s)"),
            "{text}"
        );
        assert_eq!(
            lines[3],
            "  billing  2        1          2        99      1.25s           5"
        );
        assert!(
            lines[4].starts_with("audit   0 (0%)    1.5 KiB (0%)  -"),
            "{text}"
        );
        assert!(lines[4].ends_with(" damaged@4  -"), "no refusal: {text}");
        assert_eq!(table(&[]).lines().count(), 2, "the headers alone");
    }

    #[test]
    fn json_is_an_array_of_topics_with_rates_refusal_and_groups() {
        let t0 = Instant::now();
        let before = sample(t0, vec![topic("orders", 0, 1)]);
        let after = sample(t0 + Duration::from_secs(2), busy());
        let json = serde_json::to_value(stats(Some(&before), &after)).unwrap();
        let orders = &json[0];
        assert_eq!(orders["topic"], "orders");
        assert_eq!(orders["depth"], 3);
        assert_eq!(orders["max_messages"], 3);
        assert_eq!(orders["depth_percent"], 100);
        assert_eq!(orders["bytes"], 1536);
        assert_eq!(orders["publish_per_s"], 15.0);
        assert_eq!(orders["drain_per_s"], 4);
        assert_eq!(orders["rejected"], 9);
        assert_eq!(orders["refusing"]["reason"], "topic_full");
        assert_eq!(orders["refusing"]["limit"]["name"], "max_messages");
        assert_eq!(orders["refusing"]["limit"]["value"], 3);
        assert_eq!(orders["refusing"]["last_second"], 7);
        assert_eq!(orders["groups"][0]["name"], "billing");
        assert_eq!(orders["groups"][0]["oldest_unacked_ms"], 1250);
        assert_eq!(orders["groups"][0]["dead_letter_held"], 5);
        assert!(
            json[1]["publish_per_s"].is_null(),
            "audit was not sampled before"
        );
        assert!(json[1]["refusing"].is_null());
    }
}
