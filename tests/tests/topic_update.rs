//! `weir topic update` and `weir group update`: a live topic's bounds and policies, and a
//! group's settings, change without a restart, durably; a lowered bound refuses new publishes
//! until acks drain the topic below it, a raised one takes parked publishes at once; a lowered
//! `max_attempts` dead-letters at the next failure; a bad update, or a disk failing under it,
//! changes nothing.

use std::time::Duration;

use weir_broker::storage::fault::{Fault, FaultyFs};
use weir_protocol::{
    ErrorCode, Frame, FsyncPolicy, GroupConfig, GroupSpec, GroupUpdate, Nack, OverflowPolicy,
    RejectReason, TopicConfig, TopicSpec, TopicUpdate, UpdateGroup, UpdateTopic,
};
use weir_tests::wire::RawClient;
use weir_tests::TestBroker;

use crate::cli::{stdout, weir};

/// Creates `name` with `max_messages` and `overflow`, asserting it was created.
async fn create(c: &mut RawClient, name: &str, max_messages: u64, overflow: OverflowPolicy) {
    let spec = TopicSpec {
        name: name.into(),
        max_messages: Some(max_messages),
        overflow: Some(overflow),
        ..TopicSpec::default()
    };
    assert!(matches!(c.create_topic(spec).await, Frame::TopicCreated(_)));
}

/// Sends `UpdateTopic` and returns the answer (`TopicUpdated` or `Error`).
async fn update(c: &mut RawClient, name: &str, update: TopicUpdate) -> Frame {
    c.send(Frame::UpdateTopic(UpdateTopic {
        req: 77,
        name: name.into(),
        update,
    }))
    .await;
    c.recv().await
}

/// Sends `UpdateTopic`, which must be answered with `TopicUpdated`; returns the new config.
async fn updated(c: &mut RawClient, name: &str, u: TopicUpdate) -> TopicConfig {
    match update(c, name, u).await {
        Frame::TopicUpdated(t) if t.req == 77 => t.config,
        other => panic!("expected TopicUpdated, got {other:?}"),
    }
}

fn max_messages(n: u64) -> TopicUpdate {
    TopicUpdate {
        max_messages: Some(n),
        ..TopicUpdate::default()
    }
}

async fn publish_ok(c: &mut RawClient, topic: &str, payload: &'static [u8]) -> u64 {
    match c.publish(topic, payload).await {
        Frame::PublishOk(ok) => ok.seq,
        other => panic!("expected PublishOk, got {other:?}"),
    }
}

fn config_of(broker: &TestBroker, name: &str) -> TopicConfig {
    broker.broker.topic(name).expect("topic").config()
}

#[tokio::test]
async fn a_lowered_bound_refuses_until_acks_drain_below_it_and_a_raised_one_admits_at_once() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "orders", 10, OverflowPolicy::Reject).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "orders", "billing", 0).await;
    for _ in 0..5 {
        publish_ok(&mut c, "orders", b"m").await;
    }

    let config = updated(&mut c, "orders", max_messages(3)).await;
    assert_eq!(config.max_messages, 3);
    assert_eq!(config.overflow, OverflowPolicy::Reject, "the rest is kept");
    assert_eq!(
        broker.broker.topic("orders").unwrap().info().depth,
        5,
        "nothing stored is removed by the update"
    );
    match c.publish("orders", &b"over"[..]).await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::TopicFull);
            assert_eq!((r.limit.name.as_str(), r.limit.value), ("max_messages", 3));
        }
        other => panic!("expected Rejected at the new bound, got {other:?}"),
    }

    // Draining to 3 is not enough (one more would make 4); to 2 is.
    consumer
        .send(Frame::Credit(weir_protocol::Credit { sub: 1, n: 3 }))
        .await;
    let seqs: Vec<u64> = consumer.deliveries(3).await.iter().map(|d| d.seq).collect();
    consumer.ack_and_credit(seqs[..2].to_vec()).await.unwrap();
    weir_tests::wire::wait_for_topic(&mut c, "orders", |t| t.depth == 3).await;
    assert!(matches!(
        c.publish("orders", &b"over"[..]).await,
        Frame::Rejected(_)
    ));
    consumer.ack_and_credit(vec![seqs[2]]).await.unwrap();
    weir_tests::wire::wait_for_topic(&mut c, "orders", |t| t.depth == 2).await;
    publish_ok(&mut c, "orders", b"fits again").await;

    updated(&mut c, "orders", max_messages(100)).await;
    for _ in 0..10 {
        publish_ok(&mut c, "orders", b"raised").await;
    }
    assert_eq!(broker.broker.topic("orders").unwrap().info().depth, 13);
}

#[tokio::test]
async fn raising_a_block_topics_bound_confirms_its_parked_publishes() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "jobs", 1, OverflowPolicy::Block).await;
    publish_ok(&mut c, "jobs", b"first").await;
    let mut parked = RawClient::connect(broker.addr).await;
    let payloads = [(1, "second".into()), (2, "third".into())];
    parked.feed_publishes("jobs", payloads).await;
    weir_tests::wire::wait_for_topic(&mut c, "jobs", |t| t.parked == 2).await;
    assert!(
        parked
            .recv_within(Duration::from_millis(50))
            .await
            .is_none(),
        "parked publishes are not answered while the topic is full"
    );

    updated(&mut c, "jobs", max_messages(3)).await;
    for expected in [2, 3] {
        match parked.recv().await {
            Frame::PublishOk(ok) => assert_eq!(ok.seq, expected),
            other => panic!("expected the parked publish confirmed, got {other:?}"),
        }
    }
    let info = broker.broker.topic("jobs").unwrap().info();
    assert_eq!((info.depth, info.parked), (3, 0));
}

#[tokio::test]
async fn lowering_a_drop_oldest_bound_evicts_down_to_it_at_the_next_publish_visibly() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "ticks", 10, OverflowPolicy::DropOldest).await;
    for _ in 0..6 {
        publish_ok(&mut c, "ticks", b"t").await;
    }
    updated(&mut c, "ticks", max_messages(2)).await;
    assert_eq!(broker.broker.topic("ticks").unwrap().info().depth, 6);
    publish_ok(&mut c, "ticks", b"newest").await;
    let info = broker.broker.topic("ticks").unwrap().info();
    assert_eq!((info.depth, info.dropped), (2, 5), "evicted and counted");
}

#[tokio::test]
async fn an_update_survives_a_restart_and_creating_with_the_old_settings_names_the_differences() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "kept", 10, OverflowPolicy::Reject).await;
    let changed = TopicUpdate {
        max_messages: Some(20),
        max_bytes: Some(1 << 20),
        overflow: Some(OverflowPolicy::DropOldest),
        fsync: Some(FsyncPolicy::IntervalMs(50)),
        ..TopicUpdate::default()
    };
    let config = updated(&mut c, "kept", changed).await;
    publish_ok(&mut c, "kept", b"before restart").await;
    drop(c);

    let broker = broker.restart().await;
    assert_eq!(config_of(&broker, "kept"), config);
    let mut c = RawClient::connect(broker.addr).await;
    let spec = TopicSpec {
        name: "kept".into(),
        max_messages: Some(10),
        overflow: Some(OverflowPolicy::Reject),
        ..TopicSpec::default()
    };
    match c.create_topic(spec).await {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::TopicExists);
            assert!(e.message.contains("max_messages is 20 (asked 10)"), "{e:?}");
        }
        other => panic!("expected TopicExists, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_update_is_refused_with_its_reason_and_changes_nothing() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_topic_messages = 1_000;
        c.topic_defaults.max_messages = 1_000;
    })
    .await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "t", 10, OverflowPolicy::Reject).await;
    let before = config_of(&broker, "t");
    let cases = [
        (
            "nosuch",
            max_messages(5),
            ErrorCode::UnknownTopic,
            "unknown topic",
        ),
        (
            "t",
            TopicUpdate::default(),
            ErrorCode::InvalidArgument,
            "changes nothing",
        ),
        (
            "t",
            max_messages(0),
            ErrorCode::InvalidArgument,
            "at least 1",
        ),
        (
            "t",
            TopicUpdate {
                max_bytes: Some(10),
                max_message_bytes: Some(100),
                ..TopicUpdate::default()
            },
            ErrorCode::InvalidArgument,
            "could never be stored",
        ),
        (
            "t",
            max_messages(1_001),
            ErrorCode::LimitExceeded,
            "max_topic_messages",
        ),
    ];
    for (name, u, code, says) in cases {
        match update(&mut c, name, u.clone()).await {
            Frame::Error(e) => {
                assert_eq!(e.code, code, "{u:?}: {e:?}");
                assert!(e.message.contains(says), "{u:?}: {e:?}");
            }
            other => panic!("{u:?}: expected Error, got {other:?}"),
        }
    }
    assert_eq!(config_of(&broker, "t"), before);
    publish_ok(&mut c, "t", b"still serving").await;
}

#[tokio::test]
async fn a_disk_failing_under_an_update_changes_nothing_and_the_neighbour_is_unaffected() {
    let fs = FaultyFs::new();
    let broker = TestBroker::start_on(std::sync::Arc::new(fs.clone()), |_| {}).await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "t", 10, OverflowPolicy::Reject).await;
    create(&mut c, "neighbour", 10, OverflowPolicy::Reject).await;
    let before = config_of(&broker, "t");

    let dir = broker.dir.path().join("topics").join("t");
    fs.fail_writes(&dir, Some(Fault::Io));
    match update(&mut c, "t", max_messages(5)).await {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Internal);
            assert!(e.message.contains("settings are unchanged"), "{e:?}");
        }
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(config_of(&broker, "t"), before);
    publish_ok(&mut c, "neighbour", b"unaffected").await;
    updated(&mut c, "neighbour", max_messages(5)).await;

    fs.fail_writes(&dir, None);
    assert_eq!(updated(&mut c, "t", max_messages(5)).await.max_messages, 5);
    drop(c);
    let broker = broker.restart().await;
    assert_eq!(config_of(&broker, "t").max_messages, 5);
    assert_eq!(config_of(&broker, "neighbour").max_messages, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_topic_update_prints_the_new_settings_and_says_when_the_topic_is_over_them() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let created = weir(addr, &["topic", "create", "t", "--max-messages", "10"], "").await;
    assert!(created.status.success(), "{created:?}");
    let published = weir(addr, &["pub", "t"], "a\nb\nc\n").await;
    assert!(published.status.success(), "{published:?}");

    let out = weir(
        addr,
        &[
            "topic",
            "update",
            "t",
            "--max-messages",
            "2",
            "--max-bytes",
            "1MiB",
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let printed = stdout(&out);
    assert!(printed.contains("max_messages       2"), "{out:?}");
    assert!(printed.contains("max_bytes          1.0 MiB"), "{out:?}");
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("holds 3 messages, above max_messages 2")
            && warned.contains("refused (TopicFull) until acks drain it below"),
        "{out:?}"
    );
    let refused = weir(addr, &["pub", "t", "d"], "").await;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    for usage in [
        &["topic", "update", "t"][..],
        &["topic", "update", "t", "--max-messages", "0"],
    ] {
        let out = weir(addr, usage, "").await;
        assert_eq!(out.status.code(), Some(64), "{usage:?}: {out:?}");
    }
    let unknown = weir(
        addr,
        &["topic", "update", "nosuch", "--max-messages", "5"],
        "",
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert_eq!(config_of(&broker, "t").max_messages, 2);
}

/// Sends `UpdateGroup` and returns the answer (`GroupUpdated` or `Error`).
async fn update_group(c: &mut RawClient, topic: &str, group: &str, update: GroupUpdate) -> Frame {
    c.send(Frame::UpdateGroup(UpdateGroup {
        req: 78,
        topic: topic.into(),
        group: group.into(),
        update,
    }))
    .await;
    c.recv().await
}

fn group_config(broker: &TestBroker, topic: &str, group: &str) -> GroupConfig {
    let info = broker.broker.topic(topic).expect("topic").info();
    let g = info.groups.into_iter().find(|g| g.name == group);
    g.expect("group").config
}

#[tokio::test]
async fn a_groups_lowered_max_attempts_dead_letters_at_the_next_failure_and_survives_a_restart() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "orders", 100, OverflowPolicy::Reject).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    let spec = GroupSpec {
        ack_timeout_ms: Some(60_000),
        max_attempts: Some(5),
        ..GroupSpec::default()
    };
    consumer
        .subscribe_with(1, "orders", "billing", 10, spec)
        .await;
    publish_ok(&mut c, "orders", b"poison").await;
    let first = consumer.next_delivery().await;

    let lowered = GroupUpdate {
        max_attempts: Some(1),
        ..GroupUpdate::default()
    };
    match update_group(&mut c, "orders", "billing", lowered).await {
        Frame::GroupUpdated(g) => {
            assert_eq!((g.req, g.config.max_attempts), (78, 1));
            assert_eq!(g.config.ack_timeout_ms, 60_000, "the rest is kept");
        }
        other => panic!("expected GroupUpdated, got {other:?}"),
    }
    consumer
        .send(Frame::Nack(Nack {
            sub: 1,
            seqs: vec![first.seq],
            delay_ms: 0,
        }))
        .await;
    // Attempt 1 of (now) 1: dead-lettered, where 5 would have redelivered it.
    let dlq = weir_tests::wire::wait_for_topic(&mut c, "orders.dlq", |t| t.depth == 1).await;
    assert_eq!(dlq.depth, 1);
    let billing = group_config(&broker, "orders", "billing");
    assert_eq!(billing.max_attempts, 1);
    drop((c, consumer));

    let broker = broker.restart().await;
    assert_eq!(group_config(&broker, "orders", "billing"), billing);
}

#[tokio::test]
async fn a_bad_group_update_is_refused_with_its_reason_and_changes_nothing() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, "t", 10, OverflowPolicy::Reject).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "t", "g", 1).await;
    let before = group_config(&broker, "t", "g");
    let attempts = |n| GroupUpdate {
        max_attempts: Some(n),
        ..GroupUpdate::default()
    };
    let own_dlq = GroupUpdate {
        dead_letter_topic: Some("t".into()),
        ..GroupUpdate::default()
    };
    let cases = [
        (
            "nosuch",
            "g",
            attempts(2),
            ErrorCode::UnknownTopic,
            "unknown topic",
        ),
        (
            "t",
            "nosuch",
            attempts(2),
            ErrorCode::UnknownGroup,
            "no group nosuch",
        ),
        (
            "t",
            "g",
            GroupUpdate::default(),
            ErrorCode::InvalidArgument,
            "changes nothing",
        ),
        (
            "t",
            "g",
            attempts(0),
            ErrorCode::InvalidArgument,
            "at least 1",
        ),
        (
            "t",
            "g",
            own_dlq,
            ErrorCode::InvalidArgument,
            "its own dead-letter topic",
        ),
    ];
    for (topic, group, u, code, says) in cases {
        match update_group(&mut c, topic, group, u.clone()).await {
            Frame::Error(e) => {
                assert_eq!(e.code, code, "{u:?}: {e:?}");
                assert!(e.message.contains(says), "{u:?}: {e:?}");
            }
            other => panic!("{u:?}: expected Error, got {other:?}"),
        }
    }
    assert_eq!(group_config(&broker, "t", "g"), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_group_update_prints_the_groups_settings_now() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let mut consumer = RawClient::connect(addr).await;
    consumer.subscribe(1, "t", "g", 1).await;
    let out = weir(
        addr,
        &[
            "group",
            "update",
            "t",
            "g",
            "--max-attempts",
            "3",
            "--ack-timeout-ms",
            "2500",
        ],
        "",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out),
        "group g of topic t: ack_timeout_ms=2500 max_attempts=3 dead_letter=t.dlq\n"
    );
    let usage = weir(addr, &["group", "update", "t", "g"], "").await;
    assert_eq!(usage.status.code(), Some(64), "{usage:?}");
    let unknown = weir(
        addr,
        &["group", "update", "t", "nosuch", "--max-attempts", "3"],
        "",
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert_eq!(group_config(&broker, "t", "g").max_attempts, 3);
}
