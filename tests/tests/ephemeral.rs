//! Ephemeral subscriptions (`weir sub TOPIC` without `--group`, `GroupSpec::ephemeral`,
//! `Client::subscribe_ephemeral`): the group is deleted when its last subscription leaves —
//! unsubscribe or connection close — so it holds nothing afterwards, and it is never persisted.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use weir_client::Client;
use weir_protocol::{
    Frame, GroupInfo, GroupSpec, OverflowPolicy, RejectReason, TopicInfo, TopicSpec, Unsubscribe,
};
use weir_tests::process::workspace_bin;
use weir_tests::wire::wait_for_topic;
use weir_tests::{scrape, RawClient, TestBroker};

use crate::cli::{stdout, weir};

/// An ephemeral group's settings (the broker's defaults otherwise).
fn ephemeral() -> GroupSpec {
    GroupSpec {
        ephemeral: true,
        ..GroupSpec::default()
    }
}

/// The group `name` of `info`, if there is one.
fn group<'a>(info: &'a TopicInfo, name: &str) -> Option<&'a GroupInfo> {
    info.groups.iter().find(|g| g.name == name)
}

/// A `reject` topic `name` of 4 messages, full because of ephemeral group `tail` alone: it
/// holds all 4 delivered and unacked, while durable group `durable` has acked them. Returns
/// the tail's connection (subscription 1) and another connection for publishing and asking.
async fn full_because_of_a_tail(broker: &TestBroker, name: &str) -> (RawClient, RawClient) {
    let mut admin = RawClient::connect(broker.addr).await;
    let created = admin
        .create_topic(TopicSpec {
            name: name.into(),
            max_messages: Some(4),
            overflow: Some(OverflowPolicy::Reject),
            ..TopicSpec::default()
        })
        .await;
    assert!(matches!(created, Frame::TopicCreated(_)), "{created:?}");
    let mut tail = RawClient::connect(broker.addr).await;
    tail.subscribe_with(1, name, "tail", 10, ephemeral()).await;
    admin
        .publish_all(name, (0..4).map(|i| Bytes::from(format!("m{i}"))))
        .await;
    assert_eq!(tail.deliveries(4).await.len(), 4);
    let mut durable = RawClient::connect(broker.addr).await;
    durable.consume(1, name, "durable", 4).await;
    let info = wait_for_topic(&mut admin, name, |t| {
        group(t, "durable").is_some_and(|g| g.in_flight == 0 && g.pending == 0)
    })
    .await;
    let tail_group = group(&info, "tail").expect("the tail's group");
    assert!(tail_group.ephemeral, "{tail_group:?}");
    assert_eq!(tail_group.in_flight, 4);
    assert!(!group(&info, "durable").unwrap().ephemeral);
    match admin.publish(name, "one too many").await {
        Frame::Rejected(r) => assert_eq!(r.reason, RejectReason::TopicFull),
        other => panic!("expected TopicFull, got {other:?}"),
    }
    (tail, admin)
}

/// Waits until topic `name` has no group `tail` and nothing stored, then publishes into it.
async fn tail_gone_and_room_again(admin: &mut RawClient, name: &str) {
    let info = wait_for_topic(admin, name, |t| group(t, "tail").is_none() && t.depth == 0).await;
    assert_eq!(info.groups.len(), 1, "the durable group stays: {info:?}");
    match admin.publish(name, "room again").await {
        Frame::PublishOk(_) => {}
        other => panic!("expected PublishOk, got {other:?}"),
    }
}

#[tokio::test]
async fn unsubscribing_deletes_an_ephemeral_group_and_frees_the_topic_it_held_full() {
    let broker = TestBroker::start().await;
    let (mut tail, mut admin) = full_because_of_a_tail(&broker, "unsub").await;
    tail.send(Frame::Unsubscribe(Unsubscribe { sub: 1 })).await;
    match tail.recv().await {
        Frame::Unsubscribed(u) => assert_eq!(u.sub, 1),
        other => panic!("expected Unsubscribed, got {other:?}"),
    }
    tail_gone_and_room_again(&mut admin, "unsub").await;
    assert_eq!(broker.broker.metrics().ephemeral_groups_deleted.get(), 1);
    assert_eq!(
        scrape(broker.admin_addr, "weir_ephemeral_groups_deleted_total").await,
        Some(1.0)
    );
    assert_eq!(
        scrape(broker.admin_addr, "weir_group_ephemeral").await,
        Some(0.0),
        "only the durable group is left"
    );
}

#[tokio::test]
async fn closing_the_connection_deletes_an_ephemeral_group_and_frees_the_topic() {
    let broker = TestBroker::start().await;
    let (tail, mut admin) = full_because_of_a_tail(&broker, "dropped").await;
    let view = crate::http::get(&broker, "/topics/dropped").await.json();
    let kinds: Vec<(&str, bool)> = view["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap(),
                g["ephemeral"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("durable", false), ("tail", true)], "{view}");
    assert_eq!(
        scrape(broker.admin_addr, "weir_group_ephemeral").await,
        Some(1.0)
    );
    drop(tail);
    tail_gone_and_room_again(&mut admin, "dropped").await;
    assert_eq!(broker.broker.metrics().ephemeral_groups_deleted.get(), 1);
}

#[tokio::test]
async fn an_ephemeral_group_stays_until_its_last_member_leaves() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect(broker.addr).await;
    admin.publish("pair", "m").await;
    let mut first = RawClient::connect(broker.addr).await;
    first
        .subscribe_with(1, "pair", "tail", 10, ephemeral())
        .await;
    let mut second = RawClient::connect(broker.addr).await;
    // Joining an existing group: its settings (and kind) are the first subscription's.
    second.subscribe(1, "pair", "tail", 10).await;
    first.send(Frame::Unsubscribe(Unsubscribe { sub: 1 })).await;
    loop {
        match first.recv().await {
            Frame::Unsubscribed(_) => break,
            // The message went to whichever member the broker picked first.
            Frame::Deliver(_) => {}
            other => panic!("expected Unsubscribed, got {other:?}"),
        }
    }
    let info = wait_for_topic(&mut admin, "pair", |_| true).await;
    let tail = group(&info, "tail").expect("the second member keeps it");
    assert_eq!((tail.members, tail.ephemeral), (1, true));
    drop(second);
    let info = wait_for_topic(&mut admin, "pair", |t| t.groups.is_empty()).await;
    assert_eq!(info.depth, 1, "a topic with no groups keeps its messages");
}

#[tokio::test]
async fn a_restart_forgets_an_ephemeral_group_and_keeps_a_durable_one() {
    let broker = TestBroker::start().await;
    let mut tail = RawClient::connect(broker.addr).await;
    tail.publish("kept", "m").await;
    tail.subscribe_with(1, "kept", "tail", 10, ephemeral())
        .await;
    let mut durable = RawClient::connect(broker.addr).await;
    durable.subscribe(1, "kept", "durable", 10).await;
    // Write the group state now (as the periodic flush does), with the tail still attached:
    // were it written, nothing would remove its record (its deletion on leaving does not
    // touch the state store).
    let topic = broker.broker.topic("kept").expect("topic kept");
    tokio::task::spawn_blocking(move || topic.save_dirty_groups().unwrap())
        .await
        .unwrap();
    // Closing them first spares the stop its grace period for open connections.
    drop((tail, durable));
    let broker = broker.restart().await;
    let mut client = RawClient::connect(broker.addr).await;
    let info = wait_for_topic(&mut client, "kept", |_| true).await;
    let names: Vec<&str> = info.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["durable"]);
}

/// Starts `weir --server <addr> args...` and returns it once it has printed its first stderr
/// line (returned too): `weir sub` without `--group` prints the ephemeral group's name as soon
/// as it has subscribed.
async fn spawn_until_first_stderr_line(
    addr: SocketAddr,
    args: &[&str],
) -> (std::process::Child, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let start = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(workspace_bin("weir"))
            .arg("--server")
            .arg(addr.to_string())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let mut line = String::new();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        stderr.read_line(&mut line).unwrap();
        (child, line)
    });
    tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .expect("weir subscribes within 60 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_sub_without_a_group_is_ephemeral_and_leaves_no_group() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let published = weir(addr, &["pub", "orders", "first", "second"], "").await;
    assert!(published.status.success(), "{published:?}");
    let sub = weir(addr, &["sub", "orders", "--count", "2"], "").await;
    assert_eq!(sub.status.code(), Some(0), "{sub:?}");
    assert_eq!(stdout(&sub), "first\nsecond\n", "from the earliest stored");
    let stderr = String::from_utf8_lossy(&sub.stderr);
    assert!(
        stderr.starts_with("weir: ephemeral group ephemeral-")
            && stderr.contains(
                " (deleted when this subscription ends; use --group for a durable one)\n"
            ),
        "{stderr}"
    );
    let list = weir(addr, &["group", "list", "orders", "--json"], "").await;
    assert!(list.status.success(), "{list:?}");
    assert_eq!(stdout(&list).trim(), "[]", "no group left behind");
    // With --group it stays, marked durable. (The tail acked the first two, and they left the
    // topic: every group that existed had acked them.)
    let published = weir(addr, &["pub", "orders", "third"], "").await;
    assert!(published.status.success(), "{published:?}");
    let durable = weir(addr, &["sub", "orders", "--group", "g", "--count", "1"], "").await;
    assert_eq!(durable.status.code(), Some(0), "{durable:?}");
    assert_eq!(stdout(&durable), "third\n");
    assert!(durable.stderr.is_empty(), "{durable:?}");
    let list = weir(addr, &["group", "list", "orders"], "").await;
    let text = stdout(&list);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().nth(1).unwrap().starts_with("g     durable "),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_sub_start_latest_prints_only_what_is_published_after_it_subscribed() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let published = weir(addr, &["pub", "news", "old"], "").await;
    assert!(published.status.success(), "{published:?}");
    let (child, line) =
        spawn_until_first_stderr_line(addr, &["sub", "news", "--start", "latest", "--count", "1"])
            .await;
    assert!(line.starts_with("weir: ephemeral group "), "{line}");
    let published = weir(addr, &["pub", "news", "new"], "").await;
    assert!(published.status.success(), "{published:?}");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()),
    )
    .await
    .expect("weir sub exits within 60 s")
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "new\n");
    let client = Client::connect(addr).await.unwrap();
    let groups = client.describe_topic("news").await.unwrap().info.groups;
    assert!(groups.is_empty(), "{groups:?}");
}

#[tokio::test]
async fn subscribe_ephemeral_receives_and_closing_or_dropping_removes_the_group() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let publisher = client.publisher();
    for m in ["a", "b"] {
        let confirm = publisher.publish("lib", m).await.unwrap();
        confirm.await.unwrap();
    }
    let mut sub = client
        .subscribe_ephemeral("lib", 10, GroupSpec::default())
        .await
        .unwrap();
    let name = sub.group().to_owned();
    assert!(name.starts_with("ephemeral-"), "{name}");
    for expected in ["a", "b"] {
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(d.payload().as_ref(), expected.as_bytes());
        d.ack();
    }
    let groups = client.describe_topic("lib").await.unwrap().info.groups;
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].name.as_str(), groups[0].ephemeral),
        (name.as_str(), true)
    );
    sub.close().await.unwrap();
    let groups = client.describe_topic("lib").await.unwrap().info.groups;
    assert!(groups.is_empty(), "closed: {groups:?}");

    let dropped = client
        .subscribe_ephemeral("lib", 10, GroupSpec::default())
        .await
        .unwrap();
    assert_ne!(dropped.group(), name, "each gets a group of its own");
    drop(dropped);
    let topic = broker.broker.topic("lib").expect("topic lib");
    weir_tests::eventually("the dropped subscription's group is gone", || {
        topic.info().groups.is_empty()
    })
    .await;
    assert_eq!(broker.broker.metrics().ephemeral_groups_deleted.get(), 2);
}
