//! Storage faults on a running broker (issue: storage faults): a full disk is a refusal that
//! ends by itself, a failed fdatasync fences the topic visibly until `repair`, and a record
//! damaged on disk stops its topic's groups at the damage, with subscribers told — while a
//! neighbouring topic keeps serving.

use std::path::{Path, PathBuf};

use weir_broker::storage::fault::{Fault, FaultyFs};
use weir_protocol::{ErrorCode, Frame, RejectReason, RepairTopic, TopicHealth, TopicSpec};
use weir_tests::wire::RawClient;
use weir_tests::TestBroker;

/// 100-byte payloads: one record is 126 bytes on disk, eight fill a 1 KiB segment.
const PAYLOAD: usize = 100;
const RECORD: u64 = 126;

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("message {i:05} ").into_bytes();
    p.resize(PAYLOAD, b'.');
    p
}

fn topic_dir(broker: &TestBroker, name: &str) -> PathBuf {
    broker.dir.path().join("topics").join(name)
}

async fn create(client: &mut RawClient, name: &str) {
    let spec = TopicSpec {
        name: name.into(),
        ..TopicSpec::default()
    };
    assert!(matches!(
        client.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
}

async fn publish_ok(client: &mut RawClient, topic: &str, i: u64) -> u64 {
    match client.publish(topic, payload(i)).await {
        Frame::PublishOk(ok) => ok.seq,
        other => panic!("publish {i} to {topic}: expected PublishOk, got {other:?}"),
    }
}

fn health(broker: &TestBroker, topic: &str) -> TopicHealth {
    broker.broker.topic(topic).expect("topic").health()
}

/// The payloads a new group reads from the start, `n` of them (a damage notice skipped).
async fn read_all(addr: std::net::SocketAddr, topic: &str, group: &str, n: usize) -> Vec<Vec<u8>> {
    read_until(addr, topic, group, |got| got.len() >= n).await
}

/// Subscribes and collects payloads until `done` says enough (damage notices are passed over).
async fn read_until(
    addr: std::net::SocketAddr,
    topic: &str,
    group: &str,
    done: impl Fn(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let mut c = RawClient::connect(addr).await;
    c.subscribe(1, topic, group, 100).await;
    let mut out = Vec::new();
    while !done(&out) {
        match c.recv().await {
            Frame::Deliver(d) => out.push(d.payload.to_vec()),
            Frame::Error(e) if e.code == ErrorCode::StorageDamaged => {}
            other => panic!("expected Deliver, got {other:?}"),
        }
    }
    out
}

/// Where topic `name` is damaged, and why; panics if it is not damaged.
fn damaged_at(broker: &TestBroker, name: &str) -> (u64, String) {
    match health(broker, name) {
        TopicHealth::Damaged { at_seq, reason } => (at_seq, reason),
        other => panic!("expected {name} damaged, got {other:?}"),
    }
}

/// The `dropped` count `topic info` shows for `name`.
async fn dropped(c: &mut RawClient, name: &str) -> u64 {
    c.list()
        .await
        .into_iter()
        .find(|t| t.config.name == name)
        .expect("listed")
        .dropped
}

/// Connects and checks the broker serves beside a damaged topic: [`payload`] `i` published to
/// `neighbour` gets seq `i + 1`. Returns the client.
async fn neighbour_serves(broker: &TestBroker, i: u64) -> RawClient {
    let mut c = RawClient::connect(broker.addr).await;
    assert_eq!(
        publish_ok(&mut c, "neighbour", i).await,
        i + 1,
        "the neighbour serves"
    );
    c
}

/// Sends `RepairTopic` for `name` and returns the answer, which must be `TopicRepaired`.
async fn repair(c: &mut RawClient, name: &str) -> weir_protocol::TopicRepaired {
    c.send(Frame::RepairTopic(RepairTopic {
        req: 99,
        name: name.into(),
    }))
    .await;
    match c.recv().await {
        Frame::TopicRepaired(r) if r.req == 99 => r,
        other => panic!("expected TopicRepaired for request 99, got {other:?}"),
    }
}

/// A broker on a [`FaultyFs`] (`tweak` adjusting its configuration), a client, the topics
/// `topic` and `neighbour` created, and [`payload`]s `1..=published` published to `topic`.
async fn faulty_broker(
    topic: &str,
    published: u64,
    tweak: impl FnOnce(&mut weir_broker::config::Config),
) -> (FaultyFs, TestBroker, RawClient) {
    let fs = FaultyFs::new();
    let broker = TestBroker::start_on(std::sync::Arc::new(fs.clone()), tweak).await;
    let mut c = RawClient::connect(broker.addr).await;
    create(&mut c, topic).await;
    create(&mut c, "neighbour").await;
    for i in 1..=published {
        publish_ok(&mut c, topic, i).await;
    }
    (fs, broker, c)
}

#[tokio::test]
async fn a_full_disk_refuses_with_storage_full_and_the_topic_serves_again_when_space_returns() {
    let (fs, broker, mut c) = faulty_broker("full", 0, |_| {}).await;
    publish_ok(&mut c, "full", 0).await;

    fs.fail_writes(&topic_dir(&broker, "full"), Some(Fault::NoSpace));
    match c.publish("full", payload(1)).await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::StorageFull);
            assert!(r.retry_after_ms.is_some(), "a full disk is worth retrying");
        }
        other => panic!("expected Rejected{{StorageFull}}, got {other:?}"),
    }
    assert_eq!(health(&broker, "full").state(), "full");
    assert_eq!(
        publish_ok(&mut c, "neighbour", 0).await,
        1,
        "the neighbour is unaffected"
    );

    fs.fail_writes(&topic_dir(&broker, "full"), None);
    assert_eq!(
        publish_ok(&mut c, "full", 2).await,
        2,
        "no restart needed; no seq skipped"
    );
    assert_eq!(health(&broker, "full"), TopicHealth::Healthy);
    let stored = read_all(broker.addr, "full", "g", 2).await;
    assert_eq!(
        stored,
        vec![payload(0), payload(2)],
        "the refused message was not stored"
    );
}

#[tokio::test]
async fn a_failed_fdatasync_fences_the_topic_until_repair_and_the_outcome_is_unknown() {
    let (fs, broker, mut c) = faulty_broker("fenced", 0, |_| {}).await;
    publish_ok(&mut c, "fenced", 0).await;

    fs.fail_syncs(&topic_dir(&broker, "fenced"), Some(Fault::Io));
    match c.publish("fenced", payload(1)).await {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::StorageFailed);
            assert!(e.message.contains("outcome unknown"), "{}", e.message);
        }
        other => panic!("expected Error{{StorageFailed}}, got {other:?}"),
    }
    assert_eq!(health(&broker, "fenced").state(), "failed");
    // The fd is not trusted again: even with the disk healthy, nothing is written until repair.
    fs.fail_syncs(&topic_dir(&broker, "fenced"), None);
    match c.publish("fenced", payload(2)).await {
        Frame::Rejected(r) => assert_eq!(r.reason, RejectReason::StorageDamaged),
        other => panic!("expected Rejected{{StorageDamaged}}, got {other:?}"),
    }
    assert_eq!(
        publish_ok(&mut c, "neighbour", 0).await,
        1,
        "the neighbour is unaffected"
    );
    let info = c.list().await;
    let shown = info
        .iter()
        .find(|t| t.config.name == "fenced")
        .expect("listed");
    assert_eq!(shown.health.state(), "failed", "topic info shows why");

    let r = repair(&mut c, "fenced").await;
    assert_eq!(r.health, TopicHealth::Healthy);
    // The failed publish was cut back to the last good sync (its publisher was told the
    // outcome was unknown, and a cut that fails would leave it deliverable); numbering resumes
    // past the reserved seqs, so its seq is never handed out again.
    let next = publish_ok(&mut c, "fenced", 3).await;
    assert!(next > 2, "the failed publish's seq is not reused: {next}");
    let stored = read_until(broker.addr, "fenced", "g", |got| {
        got.last() == Some(&payload(3))
    })
    .await;
    assert_eq!(stored.first(), Some(&payload(0)), "confirmed data kept");
    assert_eq!(stored.last(), Some(&payload(3)));
    assert!(
        !stored.contains(&payload(2)),
        "the refused publish was never stored"
    );
}

/// Flips one byte inside the payload of record `seq` of the segment starting at `base`.
fn damage_record(dir: &Path, base: u64, seq: u64) {
    let path = dir.join(format!("{base:020}.log"));
    let mut bytes = std::fs::read(&path).expect("segment");
    let at = ((seq - base) * RECORD + 26 + 10) as usize;
    bytes[at] ^= 0x55;
    std::fs::write(&path, bytes).expect("write back");
}

#[tokio::test]
async fn a_record_damaged_on_disk_stops_its_groups_there_tells_subscribers_and_refuses_publishes() {
    let (_, broker, mut c) = faulty_broker("damaged", 20, |c| {
        c.storage.segment_bytes = 1024;
        c.storage.tail_cache_bytes = 0;
    })
    .await;
    // Records 1..=8 are in the first (sealed) segment; damage record 4.
    damage_record(&topic_dir(&broker, "damaged"), 1, 4);

    let mut sub = RawClient::connect(broker.addr).await;
    sub.subscribe(9, "damaged", "g", 100).await;
    // Deliveries and notices travel in separate queues: the notice may come first.
    let (mut seqs, mut told) = (Vec::new(), None);
    while seqs.len() < 3 || told.is_none() {
        match sub.recv().await {
            Frame::Deliver(d) => seqs.push(d.seq),
            Frame::Error(e) => told = Some(e),
            other => panic!("expected deliveries and a damage notice, got {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2, 3], "everything before the damage is delivered");
    let e = told.expect("told");
    assert_eq!((e.req, e.code), (9, ErrorCode::StorageDamaged));
    assert!(e.message.contains("sequence 4"), "{}", e.message);
    assert!(
        sub.recv_within(std::time::Duration::from_millis(200))
            .await
            .is_none(),
        "nothing past the damage is delivered"
    );
    assert_eq!(damaged_at(&broker, "damaged").0, 4);
    match c.publish("damaged", payload(21)).await {
        Frame::Rejected(r) => assert_eq!(r.reason, RejectReason::StorageDamaged),
        other => panic!("expected Rejected{{StorageDamaged}}, got {other:?}"),
    }
    assert_eq!(publish_ok(&mut c, "neighbour", 0).await, 1);
    assert_eq!(
        read_all(broker.addr, "neighbour", "g", 1).await,
        vec![payload(0)]
    );
    let damage_found = weir_tests::scrape(broker.admin_addr, "weir_topic_damaged").await;
    assert_eq!(damage_found, Some(1.0));

    // `weir topic repair`: the damaged segment is quarantined, its range skipped with a Gap
    // counted as dropped, and the topic serves and takes publishes again.
    let repaired = repair(&mut c, "damaged").await;
    assert_eq!(repaired.health, TopicHealth::Healthy);
    assert_eq!(
        repaired.skipped,
        Some((4, 8)),
        "record 4 to the segment's end"
    );
    assert_eq!(repaired.quarantined.len(), 1);
    assert!(repaired.quarantined[0].starts_with("quarantine/00000000000000000001.log"));
    let kept = topic_dir(&broker, "damaged").join(&repaired.quarantined[0]);
    assert!(kept.is_file(), "the damaged file is kept in quarantine");
    let mut gap = None;
    let mut after = Vec::new();
    while after.len() < 12 {
        match sub.recv().await {
            Frame::Gap(g) => gap = Some((g.from, g.to)),
            Frame::Deliver(d) => after.push(d.seq),
            other => panic!("expected a Gap and deliveries, got {other:?}"),
        }
    }
    assert_eq!(gap, Some((4, 8)), "the group is told what was skipped");
    assert_eq!(
        after,
        (9..=20).collect::<Vec<_>>(),
        "everything past it is served"
    );
    assert_eq!(health(&broker, "damaged"), TopicHealth::Healthy);
    assert_eq!(
        dropped(&mut c, "damaged").await,
        5,
        "the skipped messages count as dropped"
    );
    let seq = publish_ok(&mut c, "damaged", 21).await;
    assert!(seq > 20, "no seq is handed out again: {seq}");
    match sub.recv().await {
        Frame::Deliver(d) => assert_eq!((d.seq, d.payload.to_vec()), (seq, payload(21))),
        other => panic!("expected the new message, got {other:?}"),
    }
    let damaged = weir_tests::scrape(broker.admin_addr, "weir_topic_damaged").await;
    assert_eq!(damaged, Some(0.0));
}

#[tokio::test]
async fn damage_found_at_start_is_contained_to_its_topic_and_its_files_are_kept() {
    let (_, broker, mut c) = faulty_broker("damaged", 20, |c| c.storage.segment_bytes = 1024).await;
    publish_ok(&mut c, "neighbour", 0).await;
    drop(c);
    let dir = topic_dir(&broker, "damaged");
    let mut broker = broker;
    broker.stop().await;
    // Records 9..=16 are in the second, sealed segment; damage record 11 in it and drop its
    // checkpoint, so the start-up scan meets the bad record with records after it.
    damage_record(&dir, 9, 11);
    std::fs::remove_file(dir.join(format!("{:020}.sealed", 9))).expect("checkpoint");
    let before: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let broker = broker.restart().await;

    assert_eq!(damaged_at(&broker, "damaged").0, 11);
    let got = read_all(broker.addr, "damaged", "g", 10).await;
    assert_eq!(
        got,
        (1..=10).map(payload).collect::<Vec<_>>(),
        "what precedes the damage is served"
    );
    let after: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before.len(), after.len(), "no file removed or cut");
    let mut c = neighbour_serves(&broker, 1).await;

    // Repaired, the topic skips 11..=16 and stays repaired across a restart (the hole is on
    // disk), numbering past everything it ever confirmed.
    let r = repair(&mut c, "damaged").await;
    assert_eq!(
        (r.skipped, r.health),
        (Some((11, 16)), TopicHealth::Healthy)
    );
    drop(c);
    let mut broker = broker;
    broker.stop().await;
    let broker = broker.restart().await;
    assert_eq!(health(&broker, "damaged"), TopicHealth::Healthy);
    let mut c = RawClient::connect(broker.addr).await;
    let seq = publish_ok(&mut c, "damaged", 21).await;
    assert!(seq > 20, "{seq}");
    let got = read_all(broker.addr, "damaged", "g2", 15).await;
    let want: Vec<Vec<u8>> = (1..=10).chain(17..=21).map(payload).collect();
    assert_eq!(got, want, "everything outside the skipped range, in order");
}

/// Polls the metric `name` until `want` holds for its value (bounded: 10 s).
async fn await_metric(broker: &TestBroker, name: &str, want: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = weir_tests::scrape(broker.admin_addr, name)
            .await
            .filter(|v| want(*v))
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached the value wanted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_failing_state_flush_is_shown_and_costs_at_most_redeliveries() {
    let (fs, broker, mut c) = faulty_broker("acks", 4, |c| {
        c.storage.state_flush_ms = 10;
    })
    .await;
    fs.fail_state_flushes(Some(Fault::Io));
    let mut sub = RawClient::connect(broker.addr).await;
    sub.subscribe(1, "acks", "g", 10).await;
    let seqs: Vec<u64> = sub.deliveries(4).await.iter().map(|d| d.seq).collect();
    sub.send(Frame::Ack(weir_protocol::Ack { sub: 1, seqs }))
        .await;
    await_metric(&broker, "weir_state_store_failing", |v| v == 1.0).await;
    let failures = await_metric(&broker, "weir_state_flush_failures_total", |v| v >= 1.0).await;
    assert!(failures >= 1.0);
    // Topics serve meanwhile: publishes are confirmed (the log is not the state store).
    assert_eq!(publish_ok(&mut c, "neighbour", 0).await, 1);
    assert_eq!(publish_ok(&mut c, "acks", 5).await, 5);

    // The disk comes back: the owed flush is made, and the gauge clears.
    fs.fail_state_flushes(None);
    await_metric(&broker, "weir_state_store_failing", |v| v == 0.0).await;
    drop((c, sub));
    let broker = broker.restart().await;
    // Nothing lost: the acked messages are not delivered again, the unacked one is.
    let mut sub = RawClient::connect(broker.addr).await;
    sub.subscribe(2, "acks", "g", 10).await;
    let d = sub.next_delivery().await;
    assert_eq!((d.seq, d.payload.to_vec()), (5, payload(5)));
    assert!(
        sub.recv_within(std::time::Duration::from_millis(200))
            .await
            .is_none(),
        "the acks made durable by the owed flush hold"
    );
}

#[tokio::test]
async fn a_read_error_while_delivering_is_damage_until_repair_finds_the_segment_readable() {
    let (fs, broker, mut c) = faulty_broker("sector", 3, |c| {
        c.storage.tail_cache_bytes = 0;
    })
    .await;
    fs.fail_reads(&topic_dir(&broker, "sector"), Some(Fault::Io));
    let mut sub = RawClient::connect(broker.addr).await;
    sub.subscribe(4, "sector", "g", 10).await;
    match sub.recv().await {
        Frame::Error(e) => assert_eq!((e.req, e.code), (4, ErrorCode::StorageDamaged)),
        other => panic!("expected the damage notice, got {other:?}"),
    }
    let (at_seq, reason) = damaged_at(&broker, "sector");
    assert_eq!(at_seq, 1);
    assert!(reason.contains("cannot read"), "{reason}");
    assert_eq!(publish_ok(&mut c, "neighbour", 0).await, 1);

    // The read error was transient: repair scans the segment, finds it whole, skips nothing.
    fs.fail_reads(&topic_dir(&broker, "sector"), None);
    let r = repair(&mut c, "sector").await;
    assert_eq!(
        (r.skipped, r.quarantined.len(), r.health),
        (None, 0, TopicHealth::Healthy)
    );
    let got: Vec<u64> = sub.deliveries(3).await.iter().map(|d| d.seq).collect();
    assert_eq!(got, [1, 2, 3]);
}

#[tokio::test]
async fn damage_in_checkpointed_segments_found_at_start_is_contained_and_repaired_range_by_range() {
    let (_, broker, c) = faulty_broker("damaged", 30, |c| c.storage.segment_bytes = 1024).await;
    drop(c);
    let dir = topic_dir(&broker, "damaged");
    let mut broker = broker;
    broker.stop().await;
    // Two bad records in two sealed segments whose checkpoints vouch for them: opening trusts
    // the checkpoints; reading every record back at start finds the first.
    damage_record(&dir, 1, 4);
    damage_record(&dir, 17, 19);
    let broker = broker.restart().await;
    assert_eq!(damaged_at(&broker, "damaged").0, 4);
    let mut c = RawClient::connect(broker.addr).await;
    assert_eq!(
        publish_ok(&mut c, "neighbour", 1).await,
        1,
        "the broker serves"
    );
    let r = repair(&mut c, "damaged").await;
    assert_eq!(r.skipped, Some((4, 8)));
    match r.health {
        TopicHealth::Damaged { at_seq, .. } => assert_eq!(at_seq, 19, "found next"),
        other => panic!("expected the next damage, got {other:?}"),
    }
    let r = repair(&mut c, "damaged").await;
    assert_eq!(
        (r.skipped, r.health),
        (Some((19, 24)), TopicHealth::Healthy)
    );
    let got = read_all(broker.addr, "damaged", "g", 19).await;
    let want: Vec<Vec<u8>> = (1..=3).chain(9..=18).chain(25..=30).map(payload).collect();
    assert_eq!(got, want);
    assert_eq!(
        dropped(&mut c, "damaged").await,
        5 + 6,
        "both skipped ranges count as dropped"
    );
}

#[tokio::test]
async fn an_unreadable_high_water_file_at_start_damages_only_its_topic_until_repair() {
    let (fs, broker, c) = faulty_broker("marked", 3, |_| {}).await;
    drop(c);
    let mark = topic_dir(&broker, "marked").join("high-water");
    let mut broker = broker;
    broker.stop().await;
    fs.fail_reads_of_file(&mark).expect("mark the file bad");
    let broker = broker.restart().await;
    let (at_seq, reason) = damaged_at(&broker, "marked");
    assert_eq!(at_seq, 4, "everything stored is served");
    assert!(reason.contains("high-water"), "{reason}");
    let mut c = neighbour_serves(&broker, 0).await;
    let r = repair(&mut c, "marked").await;
    assert!(
        r.quarantined[0].starts_with("quarantine/high-water"),
        "{r:?}"
    );
    assert_eq!((r.skipped, r.health), (None, TopicHealth::Healthy));
    let seq = publish_ok(&mut c, "marked", 4).await;
    assert!(
        seq > 4,
        "numbering resumes past a reservation window: {seq}"
    );
    let got = read_all(broker.addr, "marked", "g", 4).await;
    assert_eq!(got, (1..=4).map(payload).collect::<Vec<_>>());
}
