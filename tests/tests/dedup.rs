//! Exactly once into a topic: a publish sent again with the same producer stamp or
//! `weir-msg-id` — after a cut connection, a broker restart or `SIGKILL`, over HTTP with an
//! `Idempotency-Key` — is answered with the first one's sequence and stores nothing, within the
//! topic's dedup window; the window's bounds (its length, `max_producers`) forget what they
//! must and count it.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use weir_protocol::{
    BatchMessage, Frame, Headers, ProducerStamp, PublishBatch, PublishOk, RejectReason,
    MSG_ID_HEADER,
};
use weir_tests::{eventually, scrape, BrokerProcess, RawClient, TestBroker};

fn stamp(id: u128, seq: u64) -> Option<ProducerStamp> {
    Some(ProducerStamp { id, seq })
}

fn ok(frame: Frame) -> PublishOk {
    match frame {
        Frame::PublishOk(ok) => ok,
        other => panic!("expected PublishOk, got {other:?}"),
    }
}

fn msg_id(id: &str) -> Headers {
    vec![(MSG_ID_HEADER.into(), id.into())]
}

/// The topic's depth as `client` lists it.
async fn depth(client: &mut RawClient, topic: &str) -> u64 {
    let topics = client.list().await;
    let info = topics.iter().find(|t| t.config.name == topic);
    info.map_or(0, |t| t.depth)
}

/// The first `n` messages stored in `topic`, read from the start by a fresh group on a v4
/// connection (one `Deliver` each).
async fn stored(addr: std::net::SocketAddr, topic: &str, n: usize) -> Vec<(u64, Bytes)> {
    let mut reader = RawClient::connect(addr).await;
    let got = reader.consume(90, topic, "check", n).await;
    got.into_iter().map(|d| (d.seq, d.payload)).collect()
}

#[tokio::test]
async fn a_publish_sent_again_after_its_connection_was_cut_is_stored_once() {
    let broker = TestBroker::start().await;
    let mut first = RawClient::connect_v6(broker.addr).await;
    // Sent, and the connection cut before its confirm is read.
    first
        .send(Frame::Publish(weir_protocol::Publish {
            id: 1,
            topic: "orders".into(),
            headers: Vec::new(),
            payload: Bytes::from_static(b"once"),
            producer: stamp(7, 0),
        }))
        .await;
    drop(first);
    let mut again = RawClient::connect_v6(broker.addr).await;
    let answer = ok(again
        .publish_stamped("orders", stamp(7, 0), Vec::new(), "once")
        .await);
    // Whichever arrived second is the duplicate: one copy either way.
    eventually("both sends answered by the window", || {
        broker
            .broker
            .topic("orders")
            .is_some_and(|t| t.counters().dedup.duplicates == 1)
    })
    .await;
    assert_eq!(depth(&mut again, "orders").await, 1);
    let copies = stored(broker.addr, "orders", 1).await;
    assert_eq!(copies, vec![(answer.seq, Bytes::from_static(b"once"))]);
    // A new number from the same producer is a new message.
    let next = ok(again
        .publish_stamped("orders", stamp(7, 1), Vec::new(), "twice")
        .await);
    assert!(!next.duplicate && next.seq > answer.seq, "{next:?}");
}

#[tokio::test]
async fn a_duplicate_is_answered_with_the_first_seq_and_flagged_on_v6_only() {
    let broker = TestBroker::start().await;
    let mut v6 = RawClient::connect_v6(broker.addr).await;
    let first = ok(v6.publish_stamped("t", stamp(1, 5), Vec::new(), "a").await);
    assert!(!first.duplicate);
    let again = ok(v6.publish_stamped("t", stamp(1, 5), Vec::new(), "a").await);
    assert_eq!((again.seq, again.duplicate), (first.seq, true));

    // An explicit id works from any protocol version; v4 sees the first seq, unflagged.
    let mut v4 = RawClient::connect(broker.addr).await;
    let by_id = ok(v4.publish_with_headers("t", msg_id("order-17"), "b").await);
    let by_id_again = ok(v4.publish_with_headers("t", msg_id("order-17"), "b").await);
    assert_eq!((by_id_again.seq, by_id_again.duplicate), (by_id.seq, false));
    let seen_by_v6 = ok(v6.publish_stamped("t", None, msg_id("order-17"), "b").await);
    assert_eq!((seen_by_v6.seq, seen_by_v6.duplicate), (by_id.seq, true));
    // A v4 client cannot send a stamp: the same bytes are two messages.
    ok(v4.publish("t", "c").await);
    ok(v4.publish("t", "c").await);
    assert_eq!(depth(&mut v6, "t").await, 4);
    assert_eq!(
        scrape(broker.admin_addr, "weir_topic_dedup_duplicates_total").await,
        Some(3.0)
    );
}

#[tokio::test]
async fn a_batch_sent_again_is_answered_message_by_message_and_only_the_new_part_stored() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v6(broker.addr).await;
    let batch = |first_id: u64, first_seq: u64, n: u64| {
        Frame::PublishBatch(PublishBatch {
            first_id,
            topic: "b".into(),
            messages: (0..n)
                .map(|i| {
                    let number = first_seq.wrapping_add(i);
                    BatchMessage::new(Vec::new(), Bytes::from(format!("m{number}")))
                })
                .collect(),
            producer: stamp(42, first_seq),
        })
    };
    client.send(batch(100, 10, 5)).await;
    let first_seq = match client.recv().await {
        Frame::Confirmed(c) => {
            assert_eq!((c.first_id, c.count), (100, 5));
            c.first_seq
        }
        other => panic!("expected Confirmed, got {other:?}"),
    };
    // Producer seqs 13..18: 13 and 14 are duplicates, 15..18 new.
    client.send(batch(200, 13, 5)).await;
    let mut answers = HashMap::new();
    while answers.len() < 5 {
        match client.recv().await {
            Frame::PublishOk(ok) => {
                answers.insert(ok.id, (ok.seq, ok.duplicate));
            }
            Frame::Confirmed(c) => {
                for i in 0..u64::from(c.count) {
                    answers.insert(c.first_id + i, (c.first_seq + i, false));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answers[&200], (first_seq + 3, true));
    assert_eq!(answers[&201], (first_seq + 4, true));
    assert!(!answers[&202].1 && answers[&202].0 == first_seq + 5);
    assert_eq!(depth(&mut client, "b").await, 8);
    // Producer numbers that would pass u64::MAX: the batch is refused whole, nothing stored.
    client.send(batch(300, u64::MAX - 1, 3)).await;
    match client.recv().await {
        Frame::Error(e) => {
            assert_eq!(
                (e.req, e.code),
                (300, weir_protocol::ErrorCode::InvalidArgument)
            );
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(depth(&mut client, "b").await, 8);
}

#[tokio::test]
async fn a_sequence_older_than_the_window_keeps_is_refused_clearly() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v6(broker.addr).await;
    // Every other number: each its own run; past 16 runs the oldest are forgotten.
    for i in 0..20u64 {
        let answer = ok(client
            .publish_stamped("old", stamp(3, 2 * i), Vec::new(), "x")
            .await);
        assert!(!answer.duplicate);
    }
    match client
        .publish_stamped("old", stamp(3, 0), Vec::new(), "x")
        .await
    {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::SequenceTooOld);
            assert_eq!(r.limit.name, "dedup_window_ms");
            assert_eq!(r.retry_after_ms, None, "retrying cannot help");
        }
        other => panic!("expected SequenceTooOld, got {other:?}"),
    }
    // A hole left between remembered numbers (a refused message's) is filled by its retry.
    let filled = ok(client
        .publish_stamped("old", stamp(3, 37), Vec::new(), "y")
        .await);
    assert!(!filled.duplicate);
    assert_eq!(depth(&mut client, "old").await, 21);
}

#[tokio::test]
async fn the_window_survives_a_restart_rebuilt_from_the_log() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v6(broker.addr).await;
    let first = ok(client
        .publish_stamped("r", stamp(9, 0), Vec::new(), "a")
        .await);
    let by_id = ok(client.publish_stamped("r", None, msg_id("k"), "b").await);
    drop(client);
    let broker = broker.restart().await;
    let mut client = RawClient::connect_v6(broker.addr).await;
    let again = ok(client
        .publish_stamped("r", stamp(9, 0), Vec::new(), "a")
        .await);
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    let again = ok(client.publish_stamped("r", None, msg_id("k"), "b").await);
    assert_eq!((again.seq, again.duplicate), (by_id.seq, true));
    assert_eq!(depth(&mut client, "r").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_survives_sigkill_of_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = RawClient::connect_v6(broker.addr).await;
    let mut seqs = Vec::new();
    for i in 0..50 {
        let answer = client
            .publish_stamped("k", stamp(5, i), msg_id(&format!("id-{i}")), "x")
            .await;
        seqs.push(ok(answer).seq);
    }
    drop(client);
    broker.kill9();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = RawClient::connect_v6(broker.addr).await;
    for (i, seq) in seqs.iter().enumerate().rev().take(20) {
        let answer = client
            .publish_stamped("k", stamp(5, i as u64), Vec::new(), "x")
            .await;
        assert_eq!(ok(answer).seq, *seq, "producer seq {i}");
        let answer = client
            .publish_stamped("k", None, msg_id(&format!("id-{i}")), "x")
            .await;
        assert_eq!(ok(answer).seq, *seq, "id-{i}");
    }
    assert_eq!(depth(&mut client, "k").await, 50);
}

#[tokio::test]
async fn past_the_window_or_max_producers_a_publish_is_stored_again_and_that_is_counted() {
    let broker = TestBroker::start_paused_with(|c| {
        c.dedup.window_ms = 1_000;
        c.dedup.max_producers = 2;
    })
    .await;
    let mut client = RawClient::connect_v6(broker.addr).await;
    let first = ok(client
        .publish_stamped("w", stamp(1, 0), Vec::new(), "a")
        .await);
    ok(client
        .publish_stamped("w", stamp(2, 0), Vec::new(), "b")
        .await);
    ok(client
        .publish_stamped("w", stamp(3, 0), Vec::new(), "c")
        .await);
    // Producer 1, heard from least recently, was forgotten for producer 3.
    let again = ok(client
        .publish_stamped("w", stamp(1, 0), Vec::new(), "a")
        .await);
    assert!(!again.duplicate && again.seq != first.seq, "{again:?}");
    // Producer 1 for 3, then (heard from again) producer 2 for 1.
    assert_eq!(
        scrape(
            broker.admin_addr,
            "weir_topic_dedup_producers_evicted_total"
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        scrape(broker.admin_addr, "weir_topic_dedup_producers").await,
        Some(2.0)
    );
    // Within the window an id is remembered; past it, it is stored again.
    let by_id = ok(client.publish_stamped("w", None, msg_id("x"), "d").await);
    broker.clock.advance(Duration::from_millis(999));
    let within = ok(client.publish_stamped("w", None, msg_id("x"), "d").await);
    assert_eq!((within.seq, within.duplicate), (by_id.seq, true));
    broker.clock.advance(Duration::from_millis(2));
    let past = ok(client.publish_stamped("w", None, msg_id("x"), "d").await);
    assert!(!past.duplicate && past.seq > by_id.seq, "{past:?}");
    let expired = scrape(broker.admin_addr, "weir_topic_dedup_expired_total").await;
    assert!(expired.is_some_and(|n| n >= 1.0), "{expired:?}");
    assert_eq!(depth(&mut client, "w").await, 6);
}

#[tokio::test]
async fn an_idempotency_key_over_http_stores_once() {
    let broker = TestBroker::start().await;
    let post = |key: &'static str| {
        let url = format!("http://{}/topics/h/messages", broker.admin_addr);
        tokio::task::spawn_blocking(move || {
            let mut response = ureq::post(&url)
                .header("Idempotency-Key", key)
                .send(&b"body"[..])
                .expect("answered");
            let status = response.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
            (status, body)
        })
    };
    let (status, first) = post("pay-1").await.unwrap();
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["duplicate"], false);
    let (status, again) = post("pay-1").await.unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["seq"], &again["duplicate"]),
        (&first["seq"], &serde_json::json!(true))
    );
    // The key is the message's weir-msg-id: a wire publish with it is a duplicate too.
    let mut client = RawClient::connect_v6(broker.addr).await;
    let wire = ok(client
        .publish_stamped("h", None, msg_id("pay-1"), "body")
        .await);
    assert_eq!(Some(wire.seq), first["seq"].as_u64());
    assert!(wire.duplicate);
    let (status, _) = post("pay-2").await.unwrap();
    assert_eq!(status, 201);
    assert_eq!(depth(&mut client, "h").await, 2);
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Step {
    /// Producer `p` publishes its next number.
    New(u8),
    /// Producer `p` sends again its `back`-th latest number (if it has one).
    Again(u8, u8),
    /// The broker restarts.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3).prop_map(Step::New),
        3 => ((0u8..3), (0u8..8)).prop_map(|(p, back)| Step::Again(p, back)),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Interleaved producers sending new numbers and old ones again across restarts: every
    /// number is stored once, a number sent again is answered with its first sequence, and
    /// the topic holds exactly the distinct messages.
    #[test]
    fn interleaved_producers_with_duplicates_and_restarts_store_each_message_once(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let mut broker = TestBroker::start().await;
            let mut client = RawClient::connect_v6(broker.addr).await;
            let mut sent: Vec<Vec<u64>> = vec![Vec::new(); 3]; // topic seq of each number
            for step in steps {
                match step {
                    Step::Restart => {
                        drop(client);
                        broker = broker.restart().await;
                        client = RawClient::connect_v6(broker.addr).await;
                    }
                    Step::New(p) => {
                        let numbers = &mut sent[p as usize];
                        let n = numbers.len() as u64;
                        let answer = ok(client
                            .publish_stamped("m", stamp(u128::from(p) + 1, n), Vec::new(), format!("{p}-{n}"))
                            .await);
                        assert!(!answer.duplicate, "{p}-{n} is new");
                        numbers.push(answer.seq);
                    }
                    Step::Again(p, back) => {
                        let numbers = &sent[p as usize];
                        let Some(n) = numbers.len().checked_sub(1 + back as usize) else {
                            continue;
                        };
                        let answer = ok(client
                            .publish_stamped("m", stamp(u128::from(p) + 1, n as u64), Vec::new(), format!("{p}-{n}"))
                            .await);
                        assert_eq!((answer.seq, answer.duplicate), (numbers[n], true), "{p}-{n} again");
                    }
                }
            }
            let distinct: usize = sent.iter().map(Vec::len).sum();
            assert_eq!(depth(&mut client, "m").await, distinct as u64);
        });
    }
}

#[tokio::test]
async fn a_publish_the_disk_refused_or_failed_is_stored_once_when_sent_again() {
    use weir_broker::storage::fault::{Fault, FaultyFs};
    let fs = FaultyFs::new();
    let broker = TestBroker::start_on(std::sync::Arc::new(fs.clone()), |_| {}).await;
    let dir = broker.dir.path().join("topics").join("d");
    let mut client = RawClient::connect_v6(broker.addr).await;
    let first = ok(client
        .publish_stamped("d", stamp(4, 0), Vec::new(), "m0")
        .await);

    // A full disk: refused, nothing stored, the window forgets it — its resend is stored.
    fs.fail_writes(&dir, Some(Fault::NoSpace));
    match client
        .publish_stamped("d", stamp(4, 1), Vec::new(), "m1")
        .await
    {
        Frame::Rejected(r) => assert_eq!(r.reason, RejectReason::StorageFull),
        other => panic!("expected StorageFull, got {other:?}"),
    }
    fs.fail_writes(&dir, None);
    let m1 = ok(client
        .publish_stamped("d", stamp(4, 1), Vec::new(), "m1")
        .await);
    assert!(!m1.duplicate, "the refused one was not stored: {m1:?}");

    // A failed fdatasync: the outcome is unknown and the topic is fenced until repair, which
    // cuts the unsynced record; sent again, it is stored (once), and the earlier ones are
    // still answered as duplicates.
    fs.fail_syncs(&dir, Some(Fault::Io));
    match client
        .publish_stamped("d", stamp(4, 2), Vec::new(), "m2")
        .await
    {
        Frame::Error(e) => assert_eq!(e.code, weir_protocol::ErrorCode::StorageFailed),
        other => panic!("expected StorageFailed, got {other:?}"),
    }
    fs.fail_syncs(&dir, None);
    client
        .send(Frame::RepairTopic(weir_protocol::RepairTopic {
            req: 77,
            name: "d".into(),
        }))
        .await;
    assert!(matches!(client.recv().await, Frame::TopicRepaired(_)));
    let m2 = ok(client
        .publish_stamped("d", stamp(4, 2), Vec::new(), "m2")
        .await);
    let again = ok(client
        .publish_stamped("d", stamp(4, 0), Vec::new(), "m0")
        .await);
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    let again = ok(client
        .publish_stamped("d", stamp(4, 2), Vec::new(), "m2")
        .await);
    assert_eq!((again.seq, again.duplicate), (m2.seq, true));
    assert_eq!(depth(&mut client, "d").await, 3);
    let stored: Vec<Bytes> = stored(broker.addr, "d", 3)
        .await
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        stored,
        ["m0", "m1", "m2"].map(|p| Bytes::from_static(p.as_bytes()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_pub_sent_twice_with_one_msg_id_stores_once_and_says_so() {
    let broker = TestBroker::start().await;
    let args = ["pub", "ids", "--header", "weir-msg-id=order-1", "order 1"];
    let first = crate::cli::weir(broker.addr, &args, "").await;
    assert!(first.status.success(), "{first:?}");
    assert!(first.stderr.is_empty(), "{first:?}");
    let again = crate::cli::weir(broker.addr, &args, "").await;
    assert!(again.status.success(), "{again:?}");
    assert_eq!(crate::cli::stdout(&again).trim(), "1 confirmed");
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("1 of them were duplicates"), "{said}");
    let mut client = RawClient::connect(broker.addr).await;
    assert_eq!(depth(&mut client, "ids").await, 1);
}
