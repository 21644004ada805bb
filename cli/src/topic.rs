//! `weir topic create|update|list|info|delete|repair`.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use weir_client::{
    Client, FsyncPolicy, OverflowPolicy, TopicConfig, TopicDescription, TopicInfo, TopicSpec,
    TopicUpdate,
};

use super::duration::{format_max_age, parse_max_age};
use super::group;
use super::layout::{aligned, kv};
use super::size::{format_size, parse_size, parse_size_u32};
use weir_protocol::json::{TopicListView, TopicView};

/// `weir topic` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (idempotent for an identical configuration) and print its effective
    /// configuration. Bounds not given take the broker's defaults.
    Create(CreateArgs),
    /// Change a live topic's bounds and policies; settings not given keep their value. A bound
    /// lowered below what the topic holds removes nothing: it refuses (reject) or parks
    /// (block) publishes until acks drain it below the new bound; under drop_oldest the next
    /// publish evicts down to it. A new or lower --max-age removes the messages older than it
    /// at once (counted as dropped). Prints the configuration now.
    Update(UpdateArgs),
    /// List every topic: depth, bytes, what its bounds refused or dropped, bounds, policy and
    /// groups.
    List {
        /// Print the broker's answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe one topic: its configuration and policy, depth, counters (dropped, parked,
    /// rejected), groups (settings, delivery state, timeouts, dead letters), and the messages
    /// `drop_oldest` evicted most recently.
    Info {
        /// The topic.
        name: String,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic with its messages and groups. Refused while subscribers are attached,
    /// unless --force.
    Delete {
        /// The topic.
        name: String,
        /// Delete even with subscribers attached (their subscriptions end).
        #[arg(long)]
        force: bool,
    },
    /// Repair a topic whose storage failed a write (reopens and re-verifies its log) or is
    /// damaged (moves the damaged segment to `quarantine/`, skips the damaged range: its
    /// subscribers get a `Gap`, the messages count as dropped) — see `storage` in
    /// `weir topic info`.
    Repair {
        /// The topic.
        name: String,
    },
}

/// The arguments of `weir topic create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The topic's name: 1–200 characters of [A-Za-z0-9._-].
    name: String,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// The arguments of `weir topic update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The topic.
    name: String,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// A topic's settings, as `create` and `update` take them.
#[derive(Debug, clap::Args)]
pub struct SettingsArgs {
    /// Most messages stored at once (ready and in flight alike).
    #[arg(long)]
    max_messages: Option<u64>,
    /// Most payload bytes stored at once: bytes, or with a unit (10MiB, 1GB; KB/MB/GB are
    /// powers of 1000, KiB/MiB/GiB of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// Largest single payload accepted: bytes, or with a unit (1MiB, 64KiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size_u32)]
    max_message_bytes: Option<u32>,
    /// What happens at the bound: reject, block or drop_oldest.
    #[arg(long)]
    overflow: Option<OverflowPolicy>,
    /// `block` policy: most publishes parked at once.
    #[arg(long)]
    max_blocked_publishes: Option<u32>,
    /// `block` policy: longest a publish stays parked, in milliseconds.
    #[arg(long)]
    max_block_ms: Option<u64>,
    /// When appends reach the disk: batch, interval:MS or never.
    #[arg(long)]
    fsync: Option<FsyncPolicy>,
    /// Oldest a stored message may be, from its commit: a whole number with a unit (500ms,
    /// 30s, 10m, 12h, 7d). Older messages are removed, counted as dropped (reason max_age),
    /// and groups that had not acked them get a Gap. none (or 0): no age bound.
    #[arg(long, value_name = "DURATION", value_parser = parse_max_age)]
    max_age: Option<u64>,
}

impl From<SettingsArgs> for TopicUpdate {
    fn from(a: SettingsArgs) -> TopicUpdate {
        TopicUpdate {
            max_age_ms: a.max_age,
            max_messages: a.max_messages,
            max_bytes: a.max_bytes,
            max_message_bytes: a.max_message_bytes,
            overflow: a.overflow,
            fsync: a.fsync,
            max_blocked_publishes: a.max_blocked_publishes,
            max_block_ms: a.max_block_ms,
        }
    }
}

impl From<CreateArgs> for TopicSpec {
    fn from(a: CreateArgs) -> TopicSpec {
        let s = TopicUpdate::from(a.settings);
        TopicSpec {
            max_age_ms: s.max_age_ms,
            name: a.name,
            max_messages: s.max_messages,
            max_bytes: s.max_bytes,
            max_message_bytes: s.max_message_bytes,
            overflow: s.overflow,
            fsync: s.fsync,
            max_blocked_publishes: s.max_blocked_publishes,
            max_block_ms: s.max_block_ms,
        }
    }
}

pub async fn run(client: Client, command: TopicCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopicCommand::Create(args) => {
            let config = client.create_topic(args.into()).await?;
            print!("{}", describe(&config));
        }
        TopicCommand::Update(UpdateArgs { name, settings }) => {
            let update = TopicUpdate::from(settings);
            if update.is_empty() {
                return Err(super::exit::usage(
                    "weir topic update: name at least one setting to change (see --help)",
                ));
            }
            let config = client.update_topic(&name, update).await?;
            print!("{}", describe(&config));
            // Best effort: the update is done; a key with `manage` but not `monitor` on the
            // topic may not describe it, and that must not turn a success into a failure.
            if let Ok(now) = client.describe_topic(&name).await {
                if let Some(note) = over_new_bound(&now.info) {
                    eprintln!("weir: {note}");
                }
            }
        }
        TopicCommand::Info { name, json } => {
            let d = client.describe_topic(&name).await?;
            if json {
                println!("{}", info_json(&d)?);
            } else {
                print!("{}", info(&d, SystemTime::now()));
            }
        }
        TopicCommand::List { json } => {
            let topics = client.list_topics().await?;
            if json {
                println!("{}", list_json(&topics)?);
            } else {
                print!("{}", table(&topics));
            }
        }
        TopicCommand::Delete { name, force } => {
            client
                .delete_topic(&name, force)
                .await
                .map_err(super::with_force_hint)?;
            println!("deleted topic {name}");
        }
        TopicCommand::Repair { name } => {
            let repaired = client.repair_topic(&name).await?;
            if let Some((from, to)) = repaired.skipped {
                println!("skipped sequences {from}..={to}");
            }
            for file in &repaired.quarantined {
                println!("quarantined {file}");
            }
            println!("topic {name}: storage {}", repaired.health.state());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// When a topic holds more than its bounds allow (a bound lowered below its depth), what that
/// means for publishes until it drains.
fn over_new_bound(t: &TopicInfo) -> Option<String> {
    let c = &t.config;
    let over = if t.depth > c.max_messages {
        format!(
            "{} messages, above max_messages {}",
            t.depth, c.max_messages
        )
    } else if t.bytes > c.max_bytes {
        format!(
            "{}, above max_bytes {}",
            format_size(t.bytes),
            format_size(c.max_bytes)
        )
    } else {
        return None;
    };
    let then = match c.overflow {
        OverflowPolicy::Reject => "publishes are refused (TopicFull) until acks drain it below",
        OverflowPolicy::Block => "publishes wait (block) until acks drain it below",
        OverflowPolicy::DropOldest => "the next publish evicts the oldest messages down to it",
    };
    Some(format!("topic {} holds {over}: {then} the bound", c.name))
}

/// A topic's effective configuration, one `key value` line per setting. The `block` policy's
/// bounds are shown whatever the policy, marked when another policy makes them unused.
fn describe(c: &TopicConfig) -> String {
    let unused = if c.overflow == OverflowPolicy::Block {
        ""
    } else {
        " (block policy only)"
    };
    [
        kv("topic", &c.name),
        kv("max_messages", c.max_messages),
        kv("max_bytes", format_size(c.max_bytes)),
        kv("max_message_bytes", format_size(c.max_message_bytes.into())),
        kv("overflow", c.overflow.as_str()),
        kv("fsync", c.fsync),
        kv(
            "max_blocked",
            format!("{}{unused}", c.max_blocked_publishes),
        ),
        kv("max_block_ms", format!("{}{unused}", c.max_block_ms)),
        kv("max_age", format_max_age(c.max_age_ms)),
    ]
    .concat()
}

/// `weir topic info`: the configuration, then state, counters, groups and recent drops (their
/// age taken against `now`).
fn info(d: &TopicDescription, now: SystemTime) -> String {
    use std::fmt::Write;
    let t = &d.info;
    let mut out = describe(&t.config);
    out += &kv("depth", format!("{} ({})", t.depth, format_size(t.bytes)));
    out += &kv("next_seq", t.next_seq);
    out += &kv("dropped", t.dropped);
    out += &kv("parked", t.parked);
    out += &kv("rejected", t.rejected);
    out += &kv(
        "storage",
        match t.health.reason() {
            Some(reason) => format!("{} ({reason})", t.health.state()),
            None => t.health.state().to_owned(),
        },
    );
    if t.groups.is_empty() {
        out += &kv("groups", "-");
    }
    for g in &t.groups {
        let _ = writeln!(out, "{}", group::summary(g));
    }
    if !d.recent_drops.is_empty() {
        let _ = writeln!(
            out,
            "recent drops ({}, oldest first):",
            d.recent_drops.len()
        );
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for m in &d.recent_drops {
            let head = m.head.as_ref().map_or_else(
                || "(payload not in memory)".to_owned(),
                |h| show_head(h, m.bytes),
            );
            let age = now_ms.saturating_sub(m.dropped_at_ms) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "  seq {} ({} B, {}) {head}, {age:.1} s ago",
                m.seq, m.bytes, m.reason
            );
        }
    }
    out
}

/// The first bytes of a dropped payload: quoted text when they are UTF-8, hex otherwise, with
/// `…` when the payload (`len` bytes) was longer.
fn show_head(head: &[u8], len: u32) -> String {
    let more = if (head.len() as u64) < u64::from(len) {
        "…"
    } else {
        ""
    };
    match std::str::from_utf8(head) {
        Ok(text) => format!("{text:?}{more}"),
        Err(_) => format!("hex {}{more}", hex(head)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `weir topic info --json`: the topic as [`TopicView`] with its recent drops — what
/// `GET /topics/{name}` serves.
fn info_json(d: &TopicDescription) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&TopicView::from(d.clone()))?)
}

/// `weir topic list --json`: every topic as [`TopicListView`] — what `GET /topics` serves.
fn list_json(topics: &[TopicInfo]) -> anyhow::Result<String> {
    let topics = topics.iter().cloned().map(TopicView::from).collect();
    Ok(serde_json::to_string_pretty(&TopicListView { topics })?)
}

/// The topic list as an aligned table.
fn table(topics: &[TopicInfo]) -> String {
    let header = [
        "NAME", "DEPTH", "BYTES", "DROPPED", "PARKED", "REJECTED", "BOUNDS", "POLICY", "GROUPS",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for t in topics {
        let c = &t.config;
        let groups = if t.groups.is_empty() {
            "-".to_owned()
        } else {
            t.groups
                .iter()
                .map(|g| {
                    format!(
                        "{}(members={} in_flight={} pending={} credit={})",
                        g.name, g.members, g.in_flight, g.pending, g.credit
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push([
            c.name.clone(),
            t.depth.to_string(),
            format_size(t.bytes),
            t.dropped.to_string(),
            t.parked.to_string(),
            t.rejected.to_string(),
            format!(
                "{} msgs / {} / {} each{}",
                c.max_messages,
                format_size(c.max_bytes),
                format_size(c.max_message_bytes.into()),
                c.max_age_ms.map_or_else(String::new, |ms| format!(
                    " / max age {}",
                    format_max_age(Some(ms))
                ))
            ),
            format!("{} fsync={}", c.overflow.as_str(), c.fsync),
            groups,
        ]);
    }
    aligned(&rows)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use weir_client::GroupInfo;

    fn config(overflow: OverflowPolicy) -> TopicConfig {
        TopicConfig {
            max_age_ms: None,
            name: "lossy".into(),
            max_messages: 2,
            max_bytes: 1024,
            max_message_bytes: 512,
            overflow,
            fsync: FsyncPolicy::Batch,
            max_blocked_publishes: 8,
            max_block_ms: 5000,
        }
    }

    fn description(overflow: OverflowPolicy) -> TopicDescription {
        let drop = |seq, bytes, head: &'static [u8], dropped_at_ms| weir_client::DroppedMessage {
            seq,
            bytes,
            head: Some(bytes::Bytes::from_static(head)),
            reason: "overflow".into(),
            dropped_at_ms,
        };
        TopicDescription {
            req: 1,
            info: TopicInfo {
                groups_omitted: 0,
                config: config(overflow),
                depth: 2,
                bytes: 6,
                next_seq: 5,
                groups: vec![],
                dropped: 3,
                parked: 1,
                rejected: 7,
                drain_per_s: 0,
                refusing: None,
                health: Default::default(),
            },
            recent_drops: vec![
                drop(1, 3, b"one", 10_000),
                drop(2, 100, b"a long payload's first bytes", 11_500),
                drop(3, 4, &[0, 159, 146, 150], 12_000),
                weir_client::DroppedMessage {
                    head: None,
                    ..drop(4, 9, b"", 12_000)
                },
            ],
        }
    }

    #[test]
    fn info_shows_config_counters_and_recent_drops_as_text_or_hex() {
        let now = UNIX_EPOCH + Duration::from_millis(14_000);
        let text = info(&description(OverflowPolicy::DropOldest), now);
        for expected in [
            "overflow           drop_oldest\n",
            "max_blocked        8 (block policy only)\n",
            "max_block_ms       5000 (block policy only)\n",
            "max_age            none\n",
            "depth              2 (6 B)\n",
            "dropped            3\n",
            "parked             1\n",
            "rejected           7\n",
            "groups             -\n",
            "recent drops (4, oldest first):\n",
            "  seq 1 (3 B, overflow) \"one\", 4.0 s ago\n",
            "  seq 2 (100 B, overflow) \"a long payload's first bytes\"…, 2.5 s ago\n",
            "  seq 3 (4 B, overflow) hex 009f9296, 2.0 s ago\n",
            "  seq 4 (9 B, overflow) (payload not in memory), 2.0 s ago\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let block = info(&description(OverflowPolicy::Block), now);
        assert!(block.contains("max_blocked        8\nmax_block_ms       5000\n"));
        let mut aged = description(OverflowPolicy::Reject);
        aged.info.config.max_age_ms = Some(600_000);
        assert!(info(&aged, now).contains("max_age            10m\n"));
    }

    #[test]
    fn max_age_flags_reach_the_spec_and_the_update() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            topic: TopicCommand,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.topic);
        let Ok(TopicCommand::Create(create)) = parse(&["weir", "create", "t", "--max-age", "10m"])
        else {
            panic!("create parses");
        };
        assert_eq!(TopicSpec::from(create).max_age_ms, Some(600_000));
        let Ok(TopicCommand::Update(update)) = parse(&["weir", "update", "t", "--max-age", "none"])
        else {
            panic!("update parses");
        };
        let update = TopicUpdate::from(update.settings);
        assert_eq!(update.max_age_ms, Some(0), "none removes the bound");
        assert!(!update.is_empty());
        let err = parse(&["weir", "update", "t", "--max-age", "10"])
            .expect_err("a number without a unit is refused");
        assert!(err.to_string().contains("ms, s, m, h, d"), "{err}");
    }

    #[test]
    fn info_shows_each_groups_settings_state_and_dead_letters() {
        let mut d = description(OverflowPolicy::Reject);
        d.info.groups = vec![GroupInfo {
            name: "billing".into(),
            in_flight: 1,
            members: 1,
            config: weir_client::GroupConfig {
                ordering: weir_protocol::GroupOrdering::Shared,
                ack_timeout_ms: 30_000,
                max_attempts: 5,
                dead_letter_topic: "lossy.dlq".into(),
            },
            timed_out: 2,
            dead_lettered: 3,
            oldest_unacked_ms: Some(40),
            ..GroupInfo::default()
        }];
        let text = info(&d, UNIX_EPOCH);
        assert!(
            text.contains(
                "group billing: members=1 in_flight=1 pending=0 credit=0 oldest_unacked_ms=40 \
                 timed_out=2 dead_lettered=3 dead_letter_held=0 ack_timeout_ms=30000 \
                 max_attempts=5 dead_letter=lossy.dlq\n"
            ),
            "{text}"
        );
        assert!(!text.contains("groups             -"));
    }

    #[test]
    fn info_json_shows_heads_as_text_and_hex() {
        let text = info_json(&description(OverflowPolicy::DropOldest)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let drops = json["recent_drops"].as_array().unwrap();
        assert_eq!(drops[0]["head"], "one");
        assert_eq!(drops[0]["head_hex"], "6f6e65");
        assert_eq!(drops[2]["head"], "\u{0}\u{fffd}\u{fffd}\u{fffd}");
        assert_eq!(drops[2]["head_hex"], "009f9296");
        assert!(drops[3]["head"].is_null());
        assert_eq!(json["dropped"], 3);
        assert_eq!(json["overflow"], "drop_oldest");
        assert!(
            text.find("\"seq\"") < text.find("\"head\""),
            "fields keep their order"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let topics = vec![TopicInfo {
            groups_omitted: 0,
            config: TopicConfig {
                max_age_ms: None,
                name: "orders".into(),
                max_messages: 100_000,
                max_bytes: 256 * 1024 * 1024,
                max_message_bytes: 1024 * 1024,
                overflow: OverflowPolicy::Reject,
                fsync: FsyncPolicy::Batch,
                max_blocked_publishes: 8,
                max_block_ms: 1000,
            },
            depth: 3,
            bytes: 30,
            next_seq: 4,
            dropped: 12,
            parked: 0,
            rejected: 345,
            drain_per_s: 0,
            refusing: None,
            health: Default::default(),
            groups: vec![GroupInfo {
                name: "billing".into(),
                in_flight: 1,
                pending: 2,
                members: 1,
                credit: 99,
                ..GroupInfo::default()
            }],
        }];
        let t = table(&topics);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME    DEPTH  BYTES"));
        assert!(lines[0].starts_with("NAME    DEPTH  BYTES  DROPPED  PARKED  REJECTED  BOUNDS"));
        assert!(lines[1].starts_with("orders  3      30 B   12       0       345       100000"));
        assert!(lines[1].contains("100000 msgs / 256.0 MiB / 1.0 MiB each"));
        assert!(lines[1].contains("reject fsync=batch"));
        assert!(!lines[1].contains("max age"), "no age bound, nothing shown");
        let mut aged = topics.clone();
        aged[0].config.max_age_ms = Some(90_000);
        assert!(table(&aged).contains("1.0 MiB each / max age 90s"));
        assert!(lines[1].ends_with("billing(members=1 in_flight=1 pending=2 credit=99)"));
    }
}
