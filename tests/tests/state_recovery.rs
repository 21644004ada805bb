//! The state store is recoverable from the data (DESIGN.md §4, "What storage promises when
//! the disk misbehaves"): topic directories carry manifests, a lost state store is rebuilt
//! from them, an unreadable one stops the broker naming `--rebuild-state`, deletes are
//! crash-safe tombstones, and a create never writes over a directory already there.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use weir_broker::storage::fault::{Fault, FaultyFs};
use weir_protocol::{Frame, TopicSpec};
use weir_tests::process::workspace_bin;
use weir_tests::{BrokerProcess, RawClient, TestBroker};

/// How long a broker may take to exit after SIGTERM or a failed start.
const EXIT_WAIT: Duration = Duration::from_secs(30);

fn spec(name: &str, max_messages: u64) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        max_messages: Some(max_messages),
        ..TopicSpec::default()
    }
}

async fn create(client: &mut RawClient, spec: TopicSpec) {
    match client.create_topic(spec).await {
        Frame::TopicCreated(_) => {}
        other => panic!("expected TopicCreated, got {other:?}"),
    }
}

/// Publishes `n` messages `<topic>-<i>` and returns them with their confirmed seqs.
async fn publish(client: &mut RawClient, topic: &str, n: usize) -> Vec<(u64, Bytes)> {
    let payloads: Vec<Bytes> = (0..n)
        .map(|i| Bytes::from(format!("{topic}-{i}")))
        .collect();
    let seqs = client.publish_all(topic, payloads.clone()).await;
    seqs.into_iter().zip(payloads).collect()
}

/// Reads every message of `topic` with a new group (from the earliest) and checks they are
/// exactly `expected`.
async fn assert_readable(client: &mut RawClient, sub: u64, topic: &str, expected: &[(u64, Bytes)]) {
    let got: Vec<(u64, Bytes)> = client
        .consume(sub, topic, &format!("new-{sub}"), expected.len())
        .await
        .into_iter()
        .map(|d| (d.seq, d.payload))
        .collect();
    assert_eq!(
        got, expected,
        "confirmed messages of {topic} lost or changed"
    );
}

/// Stops a broker process with SIGTERM; returns its log.
fn stop(broker: BrokerProcess) -> Vec<String> {
    broker.signal(libc::SIGTERM);
    let (status, log) = broker.wait(EXIT_WAIT);
    assert!(status.success(), "broker exited with {status}");
    log
}

/// Fills a broker with two topics (non-default settings), a group that acked part of one,
/// and returns what was confirmed per topic.
async fn populate(addr: std::net::SocketAddr) -> (Vec<(u64, Bytes)>, Vec<(u64, Bytes)>) {
    let mut client = RawClient::connect(addr).await;
    create(&mut client, spec("orders", 5000)).await;
    create(&mut client, spec("audit", 700)).await;
    let orders = publish(&mut client, "orders", 300).await;
    let audit = publish(&mut client, "audit", 20).await;
    client.consume(1, "orders", "billing", 100).await;
    (orders, audit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_store_is_rebuilt_from_manifests_and_the_lost_groups_reported() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let (orders, audit) = populate(broker.addr).await;
    stop(broker);

    std::fs::remove_dir_all(dir.path().join("state")).unwrap();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = RawClient::connect(broker.addr).await;
    let topics = client.list().await;
    let bounds: Vec<(String, u64, u64)> = topics
        .iter()
        .map(|t| (t.config.name.clone(), t.config.max_messages, t.next_seq))
        .collect();
    assert_eq!(
        bounds,
        [("audit".into(), 700, 21), ("orders".into(), 5000, 301)],
        "topics came back without their settings or their seqs"
    );
    assert_readable(&mut client, 1, "orders", &orders).await;
    assert_readable(&mut client, 2, "audit", &audit).await;
    // Seqs continue; they are never reused.
    let mut publisher = RawClient::connect(broker.addr).await;
    assert_eq!(publish(&mut publisher, "orders", 1).await[0].0, 301);
    drop((client, publisher));
    let log = stop(broker);
    for topic in ["orders", "audit"] {
        assert!(
            log.iter().any(|l| l.contains("WARN")
                && l.contains("restored from its manifest")
                && l.contains(topic)
                && l.contains("cursors")),
            "no WARN reported {topic}'s lost group cursors: {log:#?}"
        );
    }
    assert!(
        log.iter()
            .any(|l| l.contains("broker state recovered") && l.contains("restored_from_manifest=2")),
        "the start-up line does not count the restored topics: {log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_state_store_stops_the_broker_until_rebuild_state() {
    // sled refuses to open this one (its `conf` is junk too).
    junk_state_then_rebuild(overwrite_with_junk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_store_sled_reads_as_empty_is_not_taken_for_a_new_one() {
    // sled opens this one as an empty store: only Weir's marker tells it from a new one.
    junk_state_then_rebuild(|state| {
        let db = state.join("db");
        let len = std::fs::metadata(&db).unwrap().len() as usize;
        std::fs::write(
            &db,
            (0..len).map(|i| (i * 7 + 13) as u8).collect::<Vec<u8>>(),
        )
        .unwrap();
    })
    .await;
}

/// Populates a broker, damages its state store with `junk` while it is stopped, checks the
/// broker then refuses to start (naming the store and `--rebuild-state`) and that
/// `--rebuild-state` brings every topic and message back.
async fn junk_state_then_rebuild(junk: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let (orders, audit) = populate(broker.addr).await;
    stop(broker);

    let state = dir.path().join("state");
    junk(&state);

    let out = Command::new(workspace_bin("weir-broker"))
        .args(["--listen", "127.0.0.1:0", "--no-admin", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run weir-broker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started over a junk state store");
    assert!(
        stderr.contains(&state.display().to_string()) && stderr.contains("--rebuild-state"),
        "stderr does not name the state store and the fix: {stderr}"
    );
    // Nothing was touched: the topics are all still there for the rebuild.
    assert!(dir.path().join("topics/orders/topic.manifest").is_file());

    let broker = BrokerProcess::start(dir.path(), &["--rebuild-state"]);
    let mut client = RawClient::connect(broker.addr).await;
    let names: Vec<(String, u64)> = client
        .list()
        .await
        .into_iter()
        .map(|t| (t.config.name, t.config.max_messages))
        .collect();
    assert_eq!(names, [("audit".into(), 700), ("orders".into(), 5000)]);
    assert_readable(&mut client, 1, "orders", &orders).await;
    assert_readable(&mut client, 2, "audit", &audit).await;
    drop(client);
    stop(broker);
    let aside: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.broken-"))
        .collect();
    assert_eq!(aside.len(), 1, "the broken store was not kept aside");
}

/// Overwrites every file of the state store with junk of the same length.
fn overwrite_with_junk(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            overwrite_with_junk(&path);
        } else {
            let len = std::fs::metadata(&path).unwrap().len().max(64) as usize;
            let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
            std::fs::write(&path, junk).unwrap();
        }
    }
}

#[tokio::test]
async fn a_delete_interrupted_after_its_tombstone_is_finished_at_start() {
    let mut broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    create(&mut client, spec("gone", 100)).await;
    publish(&mut client, "gone", 3).await;
    client.consume(1, "gone", "g", 1).await;
    drop(client);
    broker.stop().await;

    // The crash point: the directory renamed to its tombstone, the state not yet deleted.
    let topics = broker.dir.path().join("topics");
    std::fs::rename(topics.join("gone"), topics.join("gone@deleted-1-0")).unwrap();

    let broker = broker.restart().await;
    assert!(
        std::fs::read_dir(&topics).unwrap().next().is_none(),
        "the tombstone was not removed"
    );
    let mut client = RawClient::connect(broker.addr).await;
    assert!(
        client.list().await.is_empty(),
        "the deleted topic came back"
    );
    // Re-created (auto-create on publish), it starts afresh: seq 1, no old group, no old message.
    let new = publish(&mut client, "gone", 1).await;
    assert_eq!(new[0].0, 1);
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "gone", "g", 10).await;
    let got = consumer.deliveries(1).await;
    assert_eq!((got[0].seq, &got[0].payload), (new[0].0, &new[0].1));
    assert!(consumer
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());
}

#[tokio::test]
async fn a_delete_then_recreate_gets_a_new_incarnation_at_seq_1() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    create(&mut client, spec("again", 100)).await;
    publish(&mut client, "again", 3).await;
    let manifest = broker.dir.path().join("topics/again/topic.manifest");
    let before = std::fs::read(&manifest).unwrap();
    client
        .send(Frame::DeleteTopic(weir_protocol::DeleteTopic {
            req: 1,
            name: "again".into(),
            force: false,
        }))
        .await;
    assert!(matches!(client.recv().await, Frame::TopicDeleted(_)));
    create(&mut client, spec("again", 100)).await;
    assert_eq!(publish(&mut client, "again", 1).await[0].0, 1);
    let after = std::fs::read(&manifest).unwrap();
    assert_ne!(
        before, after,
        "the re-created topic kept the old incarnation"
    );
    let entries = std::fs::read_dir(broker.dir.path().join("topics"))
        .unwrap()
        .count();
    assert_eq!(entries, 1, "a tombstone was left behind");
}

#[tokio::test]
async fn create_over_an_existing_directory_restores_it_and_never_writes_over_it() {
    // A topic made elsewhere, its directory then dropped into a running broker's data dir.
    let mut origin = TestBroker::start().await;
    let mut client = RawClient::connect(origin.addr).await;
    create(&mut client, spec("moved", 50)).await;
    let confirmed = publish(&mut client, "moved", 3).await;
    drop(client);
    origin.stop().await;

    let broker = TestBroker::start().await;
    let topics = broker.dir.path().join("topics");
    copy_dir(
        &origin.dir.path().join("topics/moved"),
        &topics.join("moved"),
    );
    let mut client = RawClient::connect(broker.addr).await;
    // Auto-create (a publish) adopts the directory: its settings, its messages, its seqs.
    assert_eq!(publish(&mut client, "moved", 1).await[0].0, 4);
    let info = client.list().await;
    assert_eq!((info[0].config.max_messages, info[0].depth), (50, 4));
    assert_readable(&mut client, 1, "moved", &confirmed).await;

    // A directory with messages but no manifest is neither adopted nor written over.
    let stray = topics.join("stray");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("00000000000000000001.log"), b"old bytes").unwrap();
    assert!(
        !matches!(
            client.create_topic(spec("stray", 10)).await,
            Frame::TopicCreated(_)
        ),
        "created over a directory holding messages"
    );
    assert_eq!(
        std::fs::read(stray.join("00000000000000000001.log")).unwrap(),
        b"old bytes"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_create_whose_manifest_cannot_be_made_durable_fails_and_can_be_retried() {
    let fs = FaultyFs::new();
    let broker = TestBroker::start_on(std::sync::Arc::new(fs.clone()), |_| {}).await;
    let topics = broker.dir.path().join("topics");
    let mut client = RawClient::connect(broker.addr).await;
    fs.fail_syncs(&topics, Some(Fault::Io));
    assert!(
        !matches!(
            client.create_topic(spec("t", 10)).await,
            Frame::TopicCreated(_)
        ),
        "created a topic whose manifest was never synced"
    );
    assert!(client.list().await.is_empty());
    assert!(
        !topics.join("t").exists(),
        "the half-made directory was left"
    );
    fs.fail_syncs(&topics, None);
    create(&mut client, spec("t", 10)).await;
    assert_eq!(publish(&mut client, "t", 1).await[0].0, 1);
    drop(client);
    let broker = broker.restart().await;
    let mut client = RawClient::connect(broker.addr).await;
    let info = client.list().await;
    assert_eq!((info[0].config.max_messages, info[0].next_seq), (10, 2));
}
