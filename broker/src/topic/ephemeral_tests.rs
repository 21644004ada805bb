//! Ephemeral groups in a real topic (a broker opened on a temporary directory): never written
//! to the state store, deleted when their last member leaves, and a durable subscription
//! cannot turn one durable.

use std::sync::Arc;

use tokio::sync::mpsc;
use weir_protocol::{GroupConfig, GroupInfo, GroupSpec};

use super::Topic;
use crate::admission::budget::MemoryBudget;
use crate::broker::Broker;
use crate::config::Config;
use crate::group::MemberId;
use crate::outbox::Outbound;

/// A broker on `dir` (state flushed only when a test asks) with topic `t`.
async fn open(dir: &std::path::Path) -> (Broker, Arc<Topic>) {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    // Only the flushes a test makes, and no dependence on the machine's free space.
    config.storage.state_flush_ms = 3_600_000;
    config.storage.min_free_bytes = 1;
    let broker = Broker::open(config).await.expect("broker opens");
    let spec = weir_protocol::TopicSpec {
        name: "t".into(),
        ..Default::default()
    };
    let (topic, _) = broker.create_topic(spec).await.expect("topic created");
    (broker, topic)
}

/// Joins subscription `sub` to `group` (creating it ephemeral or durable); the receiver keeps
/// its outbox open.
fn join(topic: &Topic, group: &str, ephemeral: bool, sub: u64) -> mpsc::Receiver<Outbound> {
    let (tx, rx) = mpsc::channel(4);
    let spec = GroupSpec {
        ephemeral,
        ..GroupSpec::default()
    };
    let config = GroupConfig {
        ordering: weir_protocol::GroupOrdering::Shared,
        ack_timeout_ms: 30_000,
        max_attempts: 5,
        dead_letter_topic: "t.dlq".into(),
    };
    topic
        .join(
            group,
            (&spec, config),
            member(sub),
            (tx.clone(), tx),
            MemoryBudget::new(u64::MAX),
        )
        .expect("joined");
    rx
}

fn member(sub: u64) -> MemberId {
    MemberId { conn: 1, sub }
}

/// The topic's groups as `(name, ephemeral, members)`.
fn groups(topic: &Topic) -> Vec<(String, bool, u32)> {
    let info = topic.info();
    let view = |g: &GroupInfo| (g.name.clone(), g.ephemeral, g.members);
    info.groups.iter().map(view).collect()
}

#[tokio::test]
async fn a_state_flush_writes_durable_groups_and_skips_ephemeral_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, topic) = open(dir.path()).await;
    let _d = join(&topic, "durable", false, 1);
    let _e = join(&topic, "ephemeral", true, 2);
    assert_eq!(
        groups(&topic),
        [("durable".into(), false, 1), ("ephemeral".into(), true, 1)]
    );
    assert_eq!(
        topic.save_dirty_groups().unwrap(),
        1,
        "only the durable one"
    );
    let stored: Vec<String> = broker
        .env()
        .store
        .load_groups("t")
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(stored, ["durable"]);
    broker.close().await;
}

#[tokio::test]
async fn an_ephemeral_group_is_deleted_when_its_last_member_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, topic) = open(dir.path()).await;
    let deleted = || broker.metrics().ephemeral_groups_deleted.get();
    let _a = join(&topic, "tail", true, 1);
    let _b = join(&topic, "tail", true, 2);
    let _d = join(&topic, "durable", false, 3);
    topic.leave("tail", member(1));
    assert_eq!(
        groups(&topic),
        [("durable".into(), false, 1), ("tail".into(), true, 1)],
        "one member is left"
    );
    assert_eq!(deleted(), 0);
    topic.leave("tail", member(2));
    assert_eq!(groups(&topic), [("durable".into(), false, 1)]);
    assert_eq!(deleted(), 1);
    topic.leave("durable", member(3));
    assert_eq!(
        groups(&topic),
        [("durable".into(), false, 0)],
        "a durable group stays without members"
    );
    assert_eq!(deleted(), 1);
    broker.close().await;
}

#[tokio::test]
async fn a_durable_subscription_joins_an_ephemeral_group_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, topic) = open(dir.path()).await;
    let _e = join(&topic, "g", true, 1);
    let _d = join(&topic, "g", false, 2);
    let _x = join(&topic, "kept", false, 3);
    let _y = join(&topic, "kept", true, 4);
    assert_eq!(
        groups(&topic),
        [("g".into(), true, 2), ("kept".into(), false, 2)],
        "each group keeps the kind its first subscription gave it"
    );
    topic.leave("g", member(1));
    topic.leave("g", member(2));
    topic.leave("kept", member(3));
    topic.leave("kept", member(4));
    assert_eq!(groups(&topic), [("kept".into(), false, 0)]);
    broker.close().await;
}

#[tokio::test]
async fn a_forced_delete_of_an_ephemeral_group_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, topic) = open(dir.path()).await;
    let _e = join(&topic, "g", true, 1);
    let detached = topic.delete_group("g", true).expect("deleted");
    assert_eq!(detached.len(), 1);
    assert!(groups(&topic).is_empty());
    // The member was detached with the group: its leave finds nothing to do.
    topic.leave("g", member(1));
    assert_eq!(broker.metrics().ephemeral_groups_deleted.get(), 0);
    assert!(broker.env().store.load_groups("t").unwrap().is_empty());
    broker.close().await;
}
