//! `weir group list|info|update|delete`: a topic's groups — their settings, delivery state, ack
//! timeouts and dead letters.

use std::process::ExitCode;

use clap::Subcommand;
use weir_client::{Client, GroupConfig, GroupInfo, GroupOrdering, GroupUpdate};
use weir_protocol::json::GroupView;

use super::layout::{aligned, kv};

/// `weir group` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List a topic's groups: kind (durable, or ephemeral: deleted when its last subscription
    /// leaves), members, credit, in flight, pending, age of the oldest unacked message, ack
    /// timeouts and dead letters so far, and settings.
    List {
        /// The topic.
        topic: String,
        /// Print the broker's answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe one group: settings (ack timeout, max attempts, dead-letter topic), members,
    /// credit, in flight, pending, age of the oldest unacked message, ack timeouts,
    /// dead-lettered and held for a full dead-letter topic.
    Info {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// Print the broker's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a group's settings live; settings not given keep their value. A new ack timeout
    /// applies to deliveries from now on (those in flight keep their deadline); a new max
    /// attempts decides at each message's next failure; a new dead-letter topic takes what is
    /// dead-lettered from now on. Prints the settings now.
    Update {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// How long a delivery may stay unacked before it is redelivered.
        #[arg(long, value_name = "MS")]
        ack_timeout_ms: Option<u64>,
        /// Deliveries of one message before it is dead-lettered.
        #[arg(long, value_name = "N")]
        max_attempts: Option<u32>,
        /// The dead-letter topic.
        #[arg(long, value_name = "TOPIC")]
        dead_letter: Option<String>,
    },
    /// Delete a group: its cursor and unacked messages (messages only it still needed leave the
    /// topic). Refused while members are attached, unless --force.
    Delete {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// Delete even with members attached (their subscriptions end).
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(client: Client, command: GroupCommand) -> anyhow::Result<ExitCode> {
    match command {
        GroupCommand::List { topic, json } => {
            let groups = client.describe_topic(&topic).await?.info.groups;
            if json {
                let views: Vec<GroupView> = groups.into_iter().map(GroupView::from).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print!("{}", table(&groups));
            }
        }
        GroupCommand::Info { topic, group, json } => {
            let groups = client.describe_topic(&topic).await?.info.groups;
            let g = groups
                .iter()
                .find(|g| g.name == group)
                .ok_or_else(|| anyhow::anyhow!("topic {topic} has no group {group}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&GroupView::from(g.clone()))?
                );
            } else {
                print!("{}", info(&topic, g));
            }
        }
        GroupCommand::Update {
            topic,
            group,
            ack_timeout_ms,
            max_attempts,
            dead_letter,
        } => {
            let update = GroupUpdate {
                ack_timeout_ms,
                max_attempts,
                dead_letter_topic: dead_letter,
            };
            if update.is_empty() {
                return Err(super::exit::usage(
                    "weir group update: name at least one setting to change (see --help)",
                ));
            }
            let config = client.update_group(&topic, &group, update).await?;
            println!("group {group} of topic {topic}: {}", settings(&config));
        }
        GroupCommand::Delete {
            topic,
            group,
            force,
        } => {
            client
                .delete_group(&topic, &group, force)
                .await
                .map_err(super::with_force_hint)?;
            println!("deleted group {group} of topic {topic}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A group's settings as `key=value` pairs; `ordering=key` last for a key-ordered group (a
/// shared one, the default, does not say).
fn settings(c: &GroupConfig) -> String {
    let ordering = match c.ordering {
        GroupOrdering::Shared => String::new(),
        other => format!(" ordering={}", other.as_str()),
    };
    format!(
        "ack_timeout_ms={} max_attempts={} dead_letter={}{ordering}",
        c.ack_timeout_ms, c.max_attempts, c.dead_letter_topic
    )
}

/// `durable`, or `ephemeral` for a group deleted when its last subscription leaves.
fn kind(g: &GroupInfo) -> &'static str {
    if g.ephemeral {
        "ephemeral"
    } else {
        "durable"
    }
}

/// The age of the oldest unacked message, in seconds, or `-` when nothing is unacked.
fn oldest_unacked(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".to_owned(),
        |ms| format!("{:.1} s", ms as f64 / 1000.0),
    )
}

/// One line about a group, as `weir topic info` prints each: state, then counters, then
/// settings, all `key=value`; an ephemeral group is marked after its name.
pub fn summary(g: &GroupInfo) -> String {
    let oldest = g
        .oldest_unacked_ms
        .map_or_else(|| "-".to_owned(), |ms| ms.to_string());
    format!(
        "group {}{}: members={} in_flight={} pending={} credit={} oldest_unacked_ms={oldest} \
         timed_out={} dead_lettered={} dead_letter_held={} {}",
        g.name,
        if g.ephemeral { " (ephemeral)" } else { "" },
        g.members,
        g.in_flight,
        g.pending,
        g.credit,
        g.timed_out,
        g.dead_lettered,
        g.dead_letter_held,
        settings(&g.config)
    )
}

/// `weir group info`: one `key value` line per setting, state and counter.
fn info(topic: &str, g: &GroupInfo) -> String {
    let held = if g.dead_letter_held > 0 {
        format!(
            "{} (the dead-letter topic refused them; retried until it takes them)",
            g.dead_letter_held
        )
    } else {
        "0".to_owned()
    };
    [
        kv("topic", topic),
        kv("group", &g.name),
        kv("kind", kind(g)),
        kv("ordering", g.config.ordering.as_str()),
        kv("ack_timeout_ms", g.config.ack_timeout_ms),
        kv("max_attempts", g.config.max_attempts),
        kv("dead_letter_topic", &g.config.dead_letter_topic),
        kv("members", g.members),
        kv("credit", g.credit),
        kv("in_flight", g.in_flight),
        kv("pending", g.pending),
        kv("oldest_unacked", oldest_unacked(g.oldest_unacked_ms)),
        kv("timed_out", g.timed_out),
        kv("dead_lettered", g.dead_lettered),
        kv("dead_letter_held", held),
    ]
    .concat()
}

/// `weir group list`: the groups as an aligned table.
fn table(groups: &[GroupInfo]) -> String {
    let header = [
        "NAME",
        "KIND",
        "MEMBERS",
        "CREDIT",
        "IN_FLIGHT",
        "PENDING",
        "OLDEST_UNACKED",
        "TIMED_OUT",
        "DEAD_LETTERED",
        "DL_HELD",
        "SETTINGS",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for g in groups {
        rows.push([
            g.name.clone(),
            kind(g).to_owned(),
            g.members.to_string(),
            g.credit.to_string(),
            g.in_flight.to_string(),
            g.pending.to_string(),
            oldest_unacked(g.oldest_unacked_ms),
            g.timed_out.to_string(),
            g.dead_lettered.to_string(),
            g.dead_letter_held.to_string(),
            settings(&g.config),
        ]);
    }
    aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn billing() -> GroupInfo {
        GroupInfo {
            name: "billing".into(),
            in_flight: 3,
            pending: 10,
            members: 2,
            credit: 97,
            config: GroupConfig {
                ordering: weir_protocol::GroupOrdering::Shared,
                ack_timeout_ms: 30_000,
                max_attempts: 5,
                dead_letter_topic: "orders.dlq".into(),
            },
            timed_out: 4,
            dead_lettered: 1,
            dead_letter_held: 2,
            oldest_unacked_ms: Some(1250),
            ephemeral: false,
        }
    }

    #[test]
    fn info_shows_settings_state_and_counters() {
        let text = info("orders", &billing());
        for expected in [
            "topic              orders\n",
            "group              billing\n",
            "kind               durable\n",
            "ack_timeout_ms     30000\n",
            "max_attempts       5\n",
            "dead_letter_topic  orders.dlq\n",
            "members            2\n",
            "credit             97\n",
            "in_flight          3\n",
            "pending            10\n",
            "oldest_unacked     1.2 s\n",
            "timed_out          4\n",
            "dead_lettered      1\n",
            "dead_letter_held   2 (the dead-letter topic refused them; retried until it takes them)\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let idle = GroupInfo {
            oldest_unacked_ms: None,
            dead_letter_held: 0,
            ..billing()
        };
        let text = info("orders", &idle);
        assert!(text.contains("oldest_unacked     -\n"), "{text}");
        assert!(text.contains("dead_letter_held   0\n"), "{text}");
        let tail = GroupInfo {
            ephemeral: true,
            ..billing()
        };
        assert!(info("orders", &tail).contains("kind               ephemeral\n"));
    }

    #[test]
    fn a_key_ordered_group_says_so() {
        let mut keyed = billing();
        keyed.config.ordering = GroupOrdering::Key;
        assert!(info("orders", &keyed).contains("ordering           key\n"));
        assert!(info("orders", &billing()).contains("ordering           shared\n"));
        assert!(summary(&keyed).ends_with("dead_letter=orders.dlq ordering=key"));
        assert!(summary(&billing()).ends_with("dead_letter=orders.dlq"));
    }

    #[test]
    fn summary_is_one_line_of_key_values() {
        assert_eq!(
            summary(&billing()),
            "group billing: members=2 in_flight=3 pending=10 credit=97 oldest_unacked_ms=1250 \
             timed_out=4 dead_lettered=1 dead_letter_held=2 ack_timeout_ms=30000 max_attempts=5 \
             dead_letter=orders.dlq"
        );
        let idle = GroupInfo {
            oldest_unacked_ms: None,
            ..billing()
        };
        assert!(summary(&idle).contains(" oldest_unacked_ms=- "));
        let tail = GroupInfo {
            ephemeral: true,
            ..billing()
        };
        assert!(summary(&tail).starts_with("group billing (ephemeral): members=2 "));
    }

    #[test]
    fn table_aligns_one_row_per_group() {
        let other = GroupInfo {
            name: "audit".into(),
            oldest_unacked_ms: None,
            ephemeral: true,
            ..GroupInfo::default()
        };
        let text = table(&[billing(), other]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(
            "NAME     KIND       MEMBERS  CREDIT  IN_FLIGHT  PENDING  OLDEST_UNACKED"
        ));
        assert!(
            lines[1].starts_with("billing  durable    2        97      3          10       1.2 s")
        );
        assert!(lines[1].ends_with("ack_timeout_ms=30000 max_attempts=5 dead_letter=orders.dlq"));
        assert!(lines[2].starts_with("audit    ephemeral  0        0       0          0        -"));
        assert_eq!(table(&[]).lines().count(), 1, "the header alone");
    }
}
