//! `max_age`: messages older than a topic's age bound leave it — counted, sampled with reason
//! `max_age`, announced with `Gap` to groups that had not acked them, their segments deleted —
//! on the broker's clock (paused here: the tests advance it, never sleep through an age), also
//! after a restart, live through `weir topic update`, and without touching other topics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{Ack, Credit, Deliver, Frame, TopicConfig, TopicSpec};
use weir_tests::{eventually, RawClient, TestBroker};

use crate::cli::{stdout, weir};

const SECOND: Duration = Duration::from_secs(1);

/// Creates `name` over a v6 connection (only v6 carries `max_age`) with an age bound of
/// `max_age_ms` (`None`: none); returns the effective configuration.
async fn create(c: &mut RawClient, name: &str, max_age_ms: Option<u64>) -> TopicConfig {
    let spec = TopicSpec {
        name: name.into(),
        max_age_ms,
        ..TopicSpec::default()
    };
    match c.create_topic(spec).await {
        Frame::TopicCreated(t) => t.config,
        other => panic!("expected TopicCreated, got {other:?}"),
    }
}

/// Publishes `payloads` one at a time (one commit each), returning their seqs.
async fn publish(c: &mut RawClient, topic: &str, payloads: &[&str]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for p in payloads {
        match c.publish(topic, Bytes::from(p.to_string())).await {
            Frame::PublishOk(ok) => seqs.push(ok.seq),
            other => panic!("expected PublishOk, got {other:?}"),
        }
    }
    seqs
}

/// Collects frames until `n` deliveries arrived: the seqs every `Gap` before or among them
/// covered, and the deliveries.
async fn gaps_then_deliveries(c: &mut RawClient, n: usize) -> (BTreeSet<u64>, Vec<Deliver>) {
    let (mut missed, mut delivered) = (BTreeSet::new(), Vec::new());
    while delivered.len() < n {
        match c.recv().await {
            Frame::Gap(g) => missed.extend(g.from..=g.to),
            Frame::Deliver(d) => delivered.push(d),
            other => panic!("expected Gap or Deliver, got {other:?}"),
        }
    }
    (missed, delivered)
}

fn seqs(ds: &[Deliver]) -> Vec<u64> {
    ds.iter().map(|d| d.seq).collect()
}

fn topic_dir(broker: &TestBroker, name: &str) -> PathBuf {
    broker.dir.path().join("topics").join(name)
}

/// The segment files (`<base seq>.log`) of a topic directory.
fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("topic directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .count()
}

#[tokio::test]
async fn messages_past_max_age_leave_counted_sampled_and_announced_with_a_gap() {
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut c = RawClient::connect_v6(broker.addr).await;
    let config = create(&mut c, "aged", Some(60_000)).await;
    assert_eq!(config.max_age_ms, Some(60_000));
    create(&mut c, "calm", None).await;
    // A group that takes nothing yet, and one that acks everything it gets.
    let mut lagging = RawClient::connect(broker.addr).await;
    lagging.subscribe(1, "aged", "lagging", 0).await;
    let mut keeping_up = RawClient::connect(broker.addr).await;
    keeping_up.subscribe(1, "aged", "keeping-up", 100).await;

    let old = publish(
        &mut c,
        "aged",
        &["old-1", "old-2", "old-3", "old-4", "old-5"],
    )
    .await;
    assert_eq!(old, [1, 2, 3, 4, 5]);
    publish(&mut c, "calm", &["calm-1", "calm-2", "calm-3"]).await;
    let acked = keeping_up.deliveries(5).await;
    keeping_up.ack_and_credit(seqs(&acked)).await.unwrap();
    keeping_up.ping().await;
    broker.clock.advance(30 * SECOND);
    let young = publish(&mut c, "aged", &["young-6", "young-7", "young-8"]).await;
    assert_eq!(young, [6, 7, 8]);
    let acked = keeping_up.deliveries(3).await;
    keeping_up.ack_and_credit(seqs(&acked)).await.unwrap();
    keeping_up.ping().await;

    // The old ones turn 60 s + 1 ms old; the young ones are 30 s + 1 ms old.
    broker.clock.advance(30 * SECOND + Duration::from_millis(1));
    let topic = broker.broker.topic("aged").unwrap();
    eventually("the five old messages expire", || topic.info().dropped == 5).await;
    let (info, drops) = topic.describe();
    assert_eq!((info.depth, info.next_seq), (3, 9), "the young ones stay");
    assert_eq!(
        drops.iter().map(|d| d.seq).collect::<Vec<_>>(),
        old,
        "the recent drops name them"
    );
    assert!(drops.iter().all(|d| d.reason == "max_age"), "{drops:?}");
    assert_eq!(broker.broker.metrics().dropped.get(), 5);
    let dropped = weir_tests::scrape(broker.admin_addr, "weir_messages_dropped_total").await;
    assert_eq!(dropped, Some(5.0));

    // The lagging group is told exactly what it lost, then gets the rest.
    lagging.send(Frame::Credit(Credit { sub: 1, n: 10 })).await;
    let (missed, delivered) = gaps_then_deliveries(&mut lagging, 3).await;
    assert_eq!(missed, old.iter().copied().collect());
    assert_eq!(seqs(&delivered), young);
    assert!(
        keeping_up
            .recv_within(Duration::from_millis(50))
            .await
            .is_none(),
        "a group that had acked them is told nothing"
    );

    // Held in flight, unacked, past the bound: removed too, and announced.
    broker.clock.advance(30 * SECOND);
    eventually("the young ones expire in flight", || {
        topic.info().dropped == 8
    })
    .await;
    match lagging.recv().await {
        Frame::Gap(g) => assert_eq!((g.from, g.to), (6, 8)),
        other => panic!("expected a Gap for the messages in flight, got {other:?}"),
    }
    lagging
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: young.clone(),
        }))
        .await;
    lagging.ping().await;
    assert_eq!(topic.info().depth, 0);

    // The neighbour without an age bound keeps everything, whatever the time.
    let calm = broker.broker.topic("calm").unwrap().info();
    assert_eq!((calm.depth, calm.dropped), (3, 0));
    let mut reader = RawClient::connect(broker.addr).await;
    reader.subscribe(1, "calm", "reader", 10).await;
    assert_eq!(seqs(&reader.deliveries(3).await), [1, 2, 3]);
}

#[tokio::test]
async fn a_group_never_reads_a_message_past_max_age() {
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut c = RawClient::connect_v6(broker.addr).await;
    create(&mut c, "fresh", Some(10_000)).await;
    publish(&mut c, "fresh", &["a", "b"]).await;
    broker.clock.advance(10 * SECOND);
    publish(&mut c, "fresh", &["c"]).await;
    // A group subscribing now is never handed an expired message, even if it subscribes
    // before the writer swept them: they expire before its deliveries are planned.
    let mut reader = RawClient::connect(broker.addr).await;
    reader.subscribe(1, "fresh", "late", 10).await;
    let (missed, delivered) = gaps_then_deliveries(&mut reader, 1).await;
    assert_eq!(seqs(&delivered), [3]);
    assert!(missed.iter().all(|s| [1, 2].contains(s)), "{missed:?}");
    assert_eq!(broker.broker.topic("fresh").unwrap().info().dropped, 2);
}

#[tokio::test]
async fn expired_segments_are_deleted_with_no_group_and_nothing_published() {
    let broker = TestBroker::start_paused_with(|c| c.storage.segment_bytes = 2048).await;
    let mut c = RawClient::connect_v6(broker.addr).await;
    create(&mut c, "logs", Some(5 * 60_000)).await;
    let payload = "x".repeat(300);
    let batch: Vec<&str> = (0..80).map(|_| payload.as_str()).collect();
    publish(&mut c, "logs", &batch).await;
    let dir = topic_dir(&broker, "logs");
    let before = (segments(&dir), weir_tests::dir_size(&dir));
    assert!(before.0 >= 5, "small segments: {before:?}");

    broker.clock.advance(5 * 60 * SECOND);
    let topic = broker.broker.topic("logs").unwrap();
    eventually("every message expires", || topic.info().depth == 0).await;
    assert_eq!(topic.info().dropped, 80);
    eventually("the sealed segments are deleted", || segments(&dir) == 1).await;
    let after = weir_tests::dir_size(&dir);
    assert!(
        after < before.1 / 3,
        "disk reclaimed: {} bytes before, {after} after",
        before.1
    );
    // The topic numbers on.
    assert_eq!(publish(&mut c, "logs", &["next"]).await, [81]);
}

#[tokio::test]
async fn expiry_applies_after_a_restart_from_the_commit_times_on_disk() {
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut c = RawClient::connect_v6(broker.addr).await;
    create(&mut c, "kept", Some(60_000)).await;
    let mut lagging = RawClient::connect(broker.addr).await;
    lagging.subscribe(1, "kept", "lagging", 0).await;
    let old = publish(&mut c, "kept", &["o1", "o2", "o3", "o4"]).await;
    broker.clock.advance(40 * SECOND);
    drop((c, lagging));

    let broker = broker.restart().await;
    let mut c = RawClient::connect_v6(broker.addr).await;
    let mut lagging = RawClient::connect(broker.addr).await;
    lagging.subscribe(1, "kept", "lagging", 0).await;
    let young = publish(&mut c, "kept", &["y5"]).await;
    assert_eq!(young, [5]);
    broker.clock.advance(20 * SECOND);
    let topic = broker.broker.topic("kept").unwrap();
    eventually("the messages from before the restart expire", || {
        topic.info().dropped == 4
    })
    .await;
    assert_eq!(topic.info().depth, 1);
    lagging.send(Frame::Credit(Credit { sub: 1, n: 10 })).await;
    let (missed, delivered) = gaps_then_deliveries(&mut lagging, 1).await;
    assert_eq!(missed, old.into_iter().collect());
    assert_eq!(seqs(&delivered), young);
}

#[tokio::test]
async fn weir_topic_update_sets_and_removes_max_age_live() {
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let addr = broker.addr;
    let mut c = RawClient::connect_v6(addr).await;
    create(&mut c, "live", None).await;
    publish(&mut c, "live", &["1", "2", "3"]).await;
    broker.clock.advance(20 * SECOND);
    let topic = broker.broker.topic("live").unwrap();
    assert_eq!(topic.info().depth, 3, "no age bound: nothing expires");

    let out = weir(addr, &["topic", "update", "live", "--max-age", "10s"], "").await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("max_age            10s\n"),
        "{}",
        stdout(&out)
    );
    assert_eq!(topic.config().max_age_ms, Some(10_000));
    eventually("the messages already older expire at once", || {
        topic.info().dropped == 3
    })
    .await;
    let out = weir(addr, &["topic", "info", "live", "--json"], "").await;
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["bounds"]["max_age_ms"], 10_000);
    assert!(json["recent_drops"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["reason"] == "max_age"));
    let listed = crate::http::get(&broker, "/topics").await;
    let json: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    assert_eq!(json["topics"][0]["bounds"]["max_age_ms"], 10_000);
    let table = stdout(&weir(addr, &["topic", "list"], "").await);
    assert!(table.contains("max age 10s"), "{table}");

    let out = weir(addr, &["topic", "update", "live", "--max-age", "none"], "").await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("max_age            none\n"));
    assert_eq!(topic.config().max_age_ms, None);
    publish(&mut c, "live", &["4", "5"]).await;
    broker.clock.advance(3600 * SECOND);
    let mut reader = RawClient::connect(addr).await;
    reader.subscribe(1, "live", "reader", 10).await;
    assert_eq!(
        seqs(&reader.deliveries(2).await),
        [4, 5],
        "with the bound removed, an hour-old message is still read"
    );
    assert_eq!(topic.info().dropped, 3);

    // The new bound survives a restart.
    let out = weir(addr, &["topic", "update", "live", "--max-age", "2m"], "").await;
    assert!(out.status.success(), "{out:?}");
    // Our handle to the topic keeps the state store open: let go of it first.
    drop(topic);
    let broker = broker.restart().await;
    let config = broker.broker.topic("live").unwrap().config();
    assert_eq!(config.max_age_ms, Some(120_000));
}

#[tokio::test]
async fn bad_max_age_flags_are_refused_with_the_accepted_forms() {
    let broker = TestBroker::start().await;
    for args in [
        &["topic", "create", "t", "--max-age", "10"][..],
        &["topic", "create", "t", "--max-age", "1.5h"][..],
        &["topic", "update", "t", "--max-age", "5w"][..],
        &["topic", "update", "t", "--max-age", "soon"][..],
    ] {
        let out = weir(broker.addr, args, "").await;
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ms, s, m, h, d"), "{args:?}: {err}");
    }
    assert!(broker.broker.topic("t").is_none(), "nothing was created");
    let out = weir(
        broker.addr,
        &["topic", "create", "t", "--max-age", "7d"],
        "",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("max_age            7d\n"));
}

#[tokio::test]
async fn a_v5_client_sees_the_v5_layout_and_a_v6_client_sees_max_age() {
    let broker = TestBroker::start().await;
    let mut v6 = RawClient::connect_v6(broker.addr).await;
    create(&mut v6, "aged", Some(90_000)).await;
    let mut v5 = RawClient::connect_v5(broker.addr).await;
    let old = v5.list().await;
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].config.name, "aged");
    assert_eq!(old[0].config.max_age_ms, None, "not laid out for v5");
    let spec = TopicSpec {
        name: "plain".into(),
        ..TopicSpec::default()
    };
    match v5.create_topic(spec).await {
        Frame::TopicCreated(t) => assert_eq!(t.config.name, "plain"),
        other => panic!("expected TopicCreated, got {other:?}"),
    }
    // The v5 connection is still in step: it reads its next answer.
    assert_eq!(v5.list().await.len(), 2);
    // Re-creating the aged topic from v5 (which cannot say max_age) gets it as it is.
    let again = TopicSpec {
        name: "aged".into(),
        ..TopicSpec::default()
    };
    match v5.create_topic(again).await {
        Frame::TopicCreated(t) => assert!(!t.created, "{t:?}"),
        other => panic!("expected TopicCreated, got {other:?}"),
    }
    let topics = v6.list().await;
    let ages: Vec<_> = topics
        .iter()
        .map(|t| (t.config.name.as_str(), t.config.max_age_ms))
        .collect();
    assert_eq!(ages, [("aged", Some(90_000)), ("plain", None)]);
}

#[tokio::test]
async fn commit_times_past_what_the_topic_remembers_are_read_back_and_expire_exactly() {
    // More commits, each in its own millisecond, than the topic remembers times of (256):
    // the rest are read back from the records once the first ones have expired.
    const N: u64 = 300;
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut c = RawClient::connect_v6(broker.addr).await;
    create(&mut c, "many", Some(10_000)).await;
    for i in 1..=N {
        assert_eq!(publish(&mut c, "many", &["m"]).await, [i]);
        broker.clock.advance(Duration::from_millis(1));
    }
    // Message i was committed (i - 1) ms after the first; now is N ms after it. Move to where
    // messages 1..=280 are 10 s old or more, and 281..=300 are not.
    broker
        .clock
        .advance(Duration::from_millis(10_000 + 279 - N));
    let topic = broker.broker.topic("many").unwrap();
    eventually("messages 1..=280 expire", || topic.info().dropped >= 280).await;
    let (info, drops) = topic.describe();
    assert_eq!((info.dropped, info.depth), (280, 20), "not one too many");
    assert_eq!(drops.last().map(|d| d.seq), Some(280));
    broker.clock.advance(Duration::from_millis(20));
    eventually("the rest expire", || topic.info().dropped == N).await;
    assert_eq!(topic.info().depth, 0);
}
