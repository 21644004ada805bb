//! `weir topic create|list`.

use std::process::ExitCode;

use clap::Subcommand;
use weir_client::{
    Client, FsyncPolicy, OverflowPolicy, TopicConfig, TopicDescription, TopicInfo, TopicSpec,
};

/// `weir topic` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (idempotent for an identical configuration) and print its effective
    /// configuration. Bounds not given take the broker's defaults.
    Create(CreateArgs),
    /// List every topic: depth, bytes, bounds, policy and groups.
    List {
        /// Print the broker's answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe one topic: its configuration and policy, depth, counters (dropped, parked,
    /// rejected), groups, and the messages `drop_oldest` evicted most recently.
    Info {
        /// The topic.
        name: String,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The arguments of `weir topic create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The topic's name: 1–200 characters of [A-Za-z0-9._-].
    name: String,
    /// Most messages stored at once (ready and in flight alike).
    #[arg(long)]
    max_messages: Option<u64>,
    /// Most payload bytes stored at once.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Largest single payload accepted.
    #[arg(long)]
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
}

impl From<CreateArgs> for TopicSpec {
    fn from(a: CreateArgs) -> TopicSpec {
        TopicSpec {
            name: a.name,
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

pub async fn run(client: Client, command: TopicCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopicCommand::Create(args) => {
            let config = client.create_topic(args.into()).await?;
            print!("{}", describe(&config));
        }
        TopicCommand::Info { name, json } => {
            let d = client.describe_topic(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", info(&d));
            }
        }
        TopicCommand::List { json } => {
            let topics = client.list_topics().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&topics)?);
            } else {
                print!("{}", table(&topics));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A topic's effective configuration, one `key value` line per setting.
fn describe(c: &TopicConfig) -> String {
    format!(
        "topic              {}\nmax_messages       {}\nmax_bytes          {}\nmax_message_bytes  {}\noverflow           {}\nfsync              {}\n",
        c.name,
        c.max_messages,
        c.max_bytes,
        c.max_message_bytes,
        c.overflow.as_str(),
        c.fsync
    ) + &if c.overflow == weir_client::OverflowPolicy::Block {
        format!("max_blocked        {}\nmax_block_ms       {}\n", c.max_blocked_publishes, c.max_block_ms)
    } else {
        String::new()
    }
}

/// `weir topic info`: the configuration, then state, groups and recent drops.
fn info(d: &TopicDescription) -> String {
    use std::fmt::Write;
    let t = &d.info;
    let mut out = describe(&t.config);
    let _ = writeln!(
        out,
        "depth              {} ({})",
        t.depth,
        human_bytes(t.bytes)
    );
    let _ = writeln!(out, "next_seq           {}", t.next_seq);
    let _ = writeln!(out, "dropped            {}", t.dropped);
    let _ = writeln!(out, "parked             {}", t.parked);
    let _ = writeln!(out, "rejected           {}", t.rejected);
    for g in &t.groups {
        let _ = writeln!(
            out,
            "group {}: members={} in_flight={} pending={} credit={}",
            g.name, g.members, g.in_flight, g.pending, g.credit
        );
    }
    if !d.recent_drops.is_empty() {
        let _ = writeln!(out, "recent drops (oldest first):");
        for m in &d.recent_drops {
            let head = m.head.as_ref().map_or("-".to_string(), |h| {
                format!("{:?}", String::from_utf8_lossy(h))
            });
            let _ = writeln!(out, "  seq {} ({} B, {}) {head}", m.seq, m.bytes, m.reason);
        }
    }
    out
}

/// Bytes in a short human unit: `512 B`, `1.5 KiB`, `256 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The topic list as an aligned table.
fn table(topics: &[TopicInfo]) -> String {
    let header = ["NAME", "DEPTH", "BYTES", "BOUNDS", "POLICY", "GROUPS"].map(String::from);
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
            human_bytes(t.bytes),
            format!(
                "{} msgs / {} / {} each",
                c.max_messages,
                human_bytes(c.max_bytes),
                human_bytes(c.max_message_bytes.into())
            ),
            format!("{} fsync={}", c.overflow.as_str(), c.fsync),
            groups,
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_client::GroupInfo;

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(256 * 1024 * 1024), "256 MiB");
    }

    #[test]
    fn table_aligns_columns() {
        let topics = vec![TopicInfo {
            config: TopicConfig {
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
            dropped: 0,
            parked: 0,
            rejected: 0,
            groups: vec![GroupInfo {
                name: "billing".into(),
                in_flight: 1,
                pending: 2,
                members: 1,
                credit: 99,
            }],
        }];
        let t = table(&topics);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME    DEPTH  BYTES"));
        assert!(lines[1].starts_with("orders  3      30 B"));
        assert!(lines[1].contains("100000 msgs / 256 MiB / 1 MiB each"));
        assert!(lines[1].contains("reject fsync=batch"));
        assert!(lines[1].ends_with("billing(members=1 in_flight=1 pending=2 credit=99)"));
    }
}
