//! At-least-once delivery: ack deadlines, nack with delay, term, `max_attempts` and
//! dead-letter topics (origin headers, a full dead-letter topic holds, never drops), start
//! positions, group and topic deletion.

use std::time::Duration;

use weir_protocol::*;
use weir_tests::wire::{header, wait_for_topic};
use weir_tests::{RawClient, TestBroker};

/// Settings of a group whose deliveries time out after `ack_timeout_ms`.
fn spec(ack_timeout_ms: u64, max_attempts: u32) -> GroupSpec {
    GroupSpec {
        ack_timeout_ms: Some(ack_timeout_ms),
        max_attempts: Some(max_attempts),
        ..GroupSpec::default()
    }
}

/// Publishes with headers and returns the sequence, asserting it was confirmed.
async fn publish_with_headers(
    client: &mut RawClient,
    topic: &str,
    headers: Headers,
    payload: &'static [u8],
) -> u64 {
    match client.publish_with_headers(topic, headers, payload).await {
        Frame::PublishOk(ok) => ok.seq,
        other => panic!("expected PublishOk, got {other:?}"),
    }
}

/// Creates `name` bounded at one message (a dead-letter topic that fills at once).
async fn create_one_message_topic(admin: &mut RawClient, name: &str) {
    let spec = TopicSpec {
        name: name.into(),
        max_messages: Some(1),
        ..TopicSpec::default()
    };
    assert!(matches!(
        admin.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
}

/// Terms `seqs` of subscription 1 with `reason`.
async fn term(client: &mut RawClient, seqs: Vec<u64>, reason: impl Into<String>) {
    let reason = reason.into();
    client
        .send(Frame::Term(Term {
            sub: 1,
            seqs,
            reason,
        }))
        .await;
}

async fn deliver(client: &mut RawClient) -> Deliver {
    client.next_delivery().await
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts that `client` receives nothing for a while after the test advanced a paused broker
/// clock: a broker that expired a deadline or delay too early would send at once, one that is
/// right can send nothing until the next advance.
async fn assert_nothing_comes(client: &mut RawClient, what: &str) {
    if let Some(frame) = client.recv_within(ms(150)).await {
        panic!("{what}: {frame:?}");
    }
}

#[tokio::test]
async fn an_unacked_message_is_redelivered_once_per_timeout_then_dead_lettered_with_its_origin() {
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let headers = vec![("trace".to_string(), "abc".to_string())];
    let seq = publish_with_headers(&mut publisher, "jobs", headers, b"poison").await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer
        .subscribe_with(1, "jobs", "workers", 10, spec(200, 3))
        .await;
    for attempt in 1..=3 {
        let d = deliver(&mut consumer).await;
        assert_eq!((d.seq, d.attempt), (seq, attempt));
        // Its deadline is 200 ms of broker time after this delivery.
        broker.clock.advance(ms(199));
        assert_nothing_comes(&mut consumer, "a delivery before its ack timeout").await;
        broker.clock.advance(ms(1));
    }
    assert_nothing_comes(&mut consumer, "a fourth delivery after max_attempts").await;
    let mut reader = RawClient::connect(broker.addr).await;
    reader.subscribe(1, "jobs.dlq", "audit", 10).await;
    let dead = deliver(&mut reader).await;
    assert_eq!(&dead.payload[..], b"poison");
    assert_eq!(
        header(&dead, "trace"),
        Some("abc"),
        "its own headers are kept"
    );
    assert_eq!(header(&dead, "weir-origin-topic"), Some("jobs"));
    assert_eq!(
        header(&dead, "weir-origin-seq"),
        Some(seq.to_string().as_str())
    );
    assert_eq!(header(&dead, "weir-origin-group"), Some("workers"));
    assert_eq!(header(&dead, "weir-attempts"), Some("3"));
    assert_eq!(
        header(&dead, "weir-reason"),
        Some("ack timeout on attempt 3")
    );
    let info = wait_for_topic(&mut publisher, "jobs", |t| t.depth == 0).await;
    let g = &info.groups[0];
    assert_eq!(
        (g.timed_out, g.dead_lettered, g.dead_letter_held),
        (3, 1, 0)
    );
    let dlq = wait_for_topic(&mut publisher, "jobs.dlq", |_| true).await;
    assert_eq!(dlq.config.overflow, OverflowPolicy::Reject);
    assert_eq!(
        dlq.config.max_messages, info.config.max_messages,
        "the source's bounds"
    );
}

#[tokio::test]
async fn a_nacked_message_comes_back_no_sooner_than_its_delay() {
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher.publish("retry", &b"a"[..]).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer
        .subscribe_with(1, "retry", "g", 10, spec(10_000, 5))
        .await;
    let a = deliver(&mut consumer).await;
    consumer
        .send(Frame::Nack(Nack {
            sub: 1,
            seqs: vec![a.seq],
            delay_ms: 300,
        }))
        .await;
    assert!(
        consumer.ping().await.is_empty(),
        "nothing before the nack is applied"
    );
    broker.clock.advance(ms(299));
    assert_nothing_comes(&mut consumer, "a redelivery before the nack delay").await;
    broker.clock.advance(ms(1));
    let again = deliver(&mut consumer).await;
    assert_eq!((again.seq, again.attempt), (a.seq, 2));
    consumer
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: vec![a.seq],
        }))
        .await;
    let info = wait_for_topic(&mut publisher, "retry", |t| t.depth == 0).await;
    assert_eq!(info.groups[0].timed_out, 0);
}

#[tokio::test]
async fn progress_restarts_the_ack_deadline() {
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher.publish("slow", &b"b"[..]).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer
        .subscribe_with(1, "slow", "g", 10, spec(400, 5))
        .await;
    let b = deliver(&mut consumer).await;
    // Just before its deadline the consumer says it is still working on it.
    broker.clock.advance(ms(399));
    consumer
        .send(Frame::Progress(Progress {
            sub: 1,
            seqs: vec![b.seq],
        }))
        .await;
    assert!(
        consumer.ping().await.is_empty(),
        "no redelivery before the deadline"
    );
    // Past the original deadline (400 ms): the restarted one (399 + 400 ms) holds it.
    broker.clock.advance(ms(2));
    assert_nothing_comes(&mut consumer, "a redelivery past a restarted deadline").await;
    // Past the restarted deadline: redelivered, with the next attempt.
    broker.clock.advance(ms(398));
    let again = deliver(&mut consumer).await;
    assert_eq!((again.seq, again.attempt), (b.seq, 2));
    let info = wait_for_topic(&mut publisher, "slow", |t| t.groups[0].timed_out == 1).await;
    assert_eq!(
        info.groups[0].in_flight, 1,
        "in flight again, to the same consumer"
    );
}

#[tokio::test]
async fn term_dead_letters_at_once_and_a_full_dead_letter_topic_holds_the_message_in_flight() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect(broker.addr).await;
    create_one_message_topic(&mut admin, "orders.dlq").await;
    admin.publish("orders", &b"one"[..]).await;
    admin.publish("orders", &b"two"[..]).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "orders", "g", 10).await;
    let (one, two) = (deliver(&mut consumer).await, deliver(&mut consumer).await);
    term(&mut consumer, vec![one.seq, two.seq], "unparseable").await;
    // The dead-letter topic takes one; the other is held on its source, not dropped.
    let info = wait_for_topic(&mut admin, "orders", |t| {
        t.groups[0].dead_lettered == 1 && t.groups[0].dead_letter_held == 1
    })
    .await;
    assert_eq!(info.depth, 1, "the held message is still stored");
    assert!(broker.broker.metrics().dead_letter_refused.get() >= 1);
    // Draining the dead-letter topic lets the held message through.
    let mut reader = RawClient::connect(broker.addr).await;
    reader.subscribe(1, "orders.dlq", "audit", 10).await;
    let first = deliver(&mut reader).await;
    assert_eq!(header(&first, "weir-reason"), Some("unparseable"));
    reader
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: vec![first.seq],
        }))
        .await;
    let second = deliver(&mut reader).await;
    let mut origins = [
        header(&first, "weir-origin-seq").unwrap().to_string(),
        header(&second, "weir-origin-seq").unwrap().to_string(),
    ];
    origins.sort();
    assert_eq!(origins, [one.seq.to_string(), two.seq.to_string()]);
    let info = wait_for_topic(&mut admin, "orders", |t| t.depth == 0).await;
    assert_eq!(
        (
            info.groups[0].dead_lettered,
            info.groups[0].dead_letter_held
        ),
        (2, 0)
    );
}

#[tokio::test]
async fn a_new_group_starts_where_its_first_subscriber_asks() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    for i in 0..5u8 {
        publisher.publish("events", vec![i]).await;
    }
    let mut latest = RawClient::connect(broker.addr).await;
    let start = |start| GroupSpec {
        start,
        ..GroupSpec::default()
    };
    latest
        .subscribe_with(1, "events", "latest", 10, start(StartPosition::Latest))
        .await;
    let mut from3 = RawClient::connect(broker.addr).await;
    from3
        .subscribe_with(1, "events", "from3", 10, start(StartPosition::Seq(3)))
        .await;
    let mut earliest = RawClient::connect(broker.addr).await;
    earliest
        .subscribe_with(1, "events", "earliest", 10, start(StartPosition::Earliest))
        .await;
    publisher.publish("events", vec![5]).await;
    let seqs = |ds: Vec<Deliver>| ds.into_iter().map(|d| d.seq).collect::<Vec<_>>();
    assert_eq!(seqs(latest.deliveries(1).await), vec![6]);
    assert_eq!(seqs(from3.deliveries(4).await), vec![3, 4, 5, 6]);
    assert_eq!(seqs(earliest.deliveries(6).await), vec![1, 2, 3, 4, 5, 6]);
    assert!(latest
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());
}

#[tokio::test]
async fn deleting_a_group_is_refused_while_attached_unless_forced() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect(broker.addr).await;
    admin.publish("t", &b"x"[..]).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(7, "t", "g", 10).await;
    deliver(&mut consumer).await;
    let delete = |force| {
        Frame::DeleteGroup(DeleteGroup {
            req: 9,
            topic: "t".into(),
            group: "g".into(),
            force,
        })
    };
    admin.send(delete(false)).await;
    assert!(matches!(admin.recv().await, Frame::Error(e) if e.code == ErrorCode::InUse));
    admin.send(delete(true)).await;
    assert_eq!(
        admin.recv().await,
        Frame::GroupDeleted(GroupDeleted { req: 9 })
    );
    assert_eq!(
        consumer.recv().await,
        Frame::Unsubscribed(Unsubscribed { sub: 7 })
    );
    admin.send(delete(true)).await;
    assert!(matches!(admin.recv().await, Frame::Error(e) if e.code == ErrorCode::UnknownGroup));
    // The group's unacked message no longer holds the topic; the same id can subscribe again,
    // and a group of that name starts afresh.
    let info = wait_for_topic(&mut admin, "t", |t| t.groups.is_empty()).await;
    assert_eq!(info.depth, 1, "no group acked it: kept up to the bound");
    consumer.subscribe(7, "t", "g", 10).await;
    assert_eq!(deliver(&mut consumer).await.attempt, 1);
}

#[tokio::test]
async fn deleting_a_topic_removes_its_messages_groups_and_files() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect(broker.addr).await;
    admin.publish("gone", &b"1"[..]).await;
    admin.publish("gone", &b"2"[..]).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "gone", "g", 10).await;
    let delete = |force| {
        Frame::DeleteTopic(DeleteTopic {
            req: 3,
            name: "gone".into(),
            force,
        })
    };
    admin.send(delete(false)).await;
    assert!(matches!(admin.recv().await, Frame::Error(e) if e.code == ErrorCode::InUse));
    admin.send(delete(true)).await;
    // The consumer may have got deliveries first; then it is told the subscription is over.
    loop {
        match consumer.recv().await {
            Frame::Deliver(_) => continue,
            other => {
                assert_eq!(other, Frame::Unsubscribed(Unsubscribed { sub: 1 }));
                break;
            }
        }
    }
    assert_eq!(
        admin.recv().await,
        Frame::TopicDeleted(TopicDeleted { req: 3 })
    );
    assert!(admin.list().await.iter().all(|t| t.config.name != "gone"));
    assert!(!broker.dir.path().join("topics").join("gone").exists());
    admin.send(delete(false)).await;
    assert!(matches!(admin.recv().await, Frame::Error(e) if e.code == ErrorCode::UnknownTopic));
    // A topic of the same name starts empty.
    assert!(matches!(admin.publish("gone", &b"3"[..]).await, Frame::PublishOk(ok) if ok.seq == 1));
    let broker = broker.restart().await;
    let mut admin = RawClient::connect(broker.addr).await;
    let info = wait_for_topic(&mut admin, "gone", |_| true).await;
    assert_eq!(
        (info.depth, info.groups.len()),
        (1, 0),
        "no group came back after restart"
    );
}

#[tokio::test]
async fn group_settings_nack_delays_and_pending_dead_letters_survive_a_restart() {
    let broker = TestBroker::start_paused_with(|c| c.groups.max_nack_delay_ms = 60_000).await;
    let mut admin = RawClient::connect(broker.addr).await;
    admin.publish("keep", &b"x"[..]).await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer
        .subscribe_with(1, "keep", "g", 10, spec(5_000, 2))
        .await;
    let d = deliver(&mut consumer).await;
    consumer
        .send(Frame::Nack(Nack {
            sub: 1,
            seqs: vec![d.seq],
            delay_ms: 60_000,
        }))
        .await;
    wait_for_topic(&mut admin, "keep", |t| {
        t.groups[0].pending == 1 && t.groups[0].in_flight == 0
    })
    .await;
    drop(consumer);
    let broker = broker.restart().await;
    let mut admin = RawClient::connect(broker.addr).await;
    let info = wait_for_topic(&mut admin, "keep", |_| true).await;
    let config = &info.groups[0].config;
    assert_eq!((config.ack_timeout_ms, config.max_attempts), (5_000, 2));
    assert_eq!(config.dead_letter_topic, "keep.dlq");
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "keep", "g", 10).await;
    // The delay is kept as a wall-clock time: the real time the restart took counts against
    // it, so the first advance leaves a wide margin.
    broker.clock.advance(Duration::from_secs(50));
    assert_nothing_comes(&mut consumer, "the nack delay did not survive the restart").await;
    broker.clock.advance(Duration::from_secs(10));
    let again = deliver(&mut consumer).await;
    assert_eq!((again.seq, again.attempt), (d.seq, 2));
}

#[tokio::test]
async fn a_dead_letter_appended_just_before_a_crash_is_not_moved_twice() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect(broker.addr).await;
    // The dead-letter topic already holds the copy the mover appended just before a "crash",
    // and is full, so the mover cannot append (or mark it moved) before the restart.
    create_one_message_topic(&mut admin, "x.dlq").await;
    admin.publish("x", &b"payload"[..]).await;
    let origin = vec![
        ("weir-origin-topic".to_string(), "x".to_string()),
        ("weir-origin-seq".to_string(), "1".to_string()),
        ("weir-origin-group".to_string(), "g".to_string()),
    ];
    publish_with_headers(&mut admin, "x.dlq", origin, b"payload").await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "x", "g", 10).await;
    let d = deliver(&mut consumer).await;
    term(&mut consumer, vec![d.seq], "bad").await;
    wait_for_topic(&mut admin, "x", |t| t.groups[0].dead_letter_held == 1).await;
    drop(consumer);
    let broker = broker.restart().await;
    let mut admin = RawClient::connect(broker.addr).await;
    let source = wait_for_topic(&mut admin, "x", |t| t.depth == 0).await;
    assert_eq!(source.groups[0].dead_letter_held, 0);
    let dlq = wait_for_topic(&mut admin, "x.dlq", |_| true).await;
    assert_eq!(dlq.depth, 1, "recorded as moved, not appended again");
    assert_eq!(broker.broker.metrics().dead_letter_refused.get(), 0);
}

#[tokio::test]
async fn a_message_at_the_largest_size_a_topic_takes_is_delivered_and_dead_lettered_within_a_frame()
{
    const MAX_FRAME: u32 = 65_536;
    let mut limits = weir_broker::config::Limits {
        max_frame_bytes: MAX_FRAME,
        ..Default::default()
    };
    limits.max_unauthenticated_frame_bytes = MAX_FRAME;
    let ceiling = weir_broker::config::max_message_bytes_ceiling(&limits);
    let broker = TestBroker::start_with(|c| {
        c.limits = limits.clone();
        c.topic_defaults.max_message_bytes = ceiling;
    })
    .await;
    let mut client = RawClient::connect(broker.addr).await;
    // The size counts the payload and the header names and values.
    let message = |size: u32| Publish {
        producer: None,
        id: 1,
        topic: "t".into(),
        headers: vec![("h".to_string(), "v".repeat(10_000))],
        payload: vec![0u8; size as usize - 10_001].into(),
    };
    client.send(Frame::Publish(message(ceiling + 1))).await;
    match client.recv().await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::MessageTooLarge);
            assert_eq!(
                (r.limit.name.as_str(), r.limit.value),
                ("max_message_bytes", u64::from(ceiling))
            );
            assert_eq!(r.retry_after_ms, None);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let largest = message(ceiling);
    client.send(Frame::Publish(largest.clone())).await;
    assert!(matches!(client.recv().await, Frame::PublishOk(ok) if ok.seq == 1));
    client.subscribe(1, "t", "g", 1).await;
    let d = deliver(&mut client).await;
    assert_eq!(
        (&d.headers, d.payload.len()),
        (&largest.headers, largest.payload.len())
    );
    // Dead-lettered with the longest reason a client can give: its copy, origin headers
    // added, still fits in a frame and is delivered.
    term(
        &mut client,
        vec![d.seq],
        "x".repeat(100_000).chars().take(40_000).collect::<String>(),
    )
    .await;
    client.subscribe(2, "t.dlq", "g", 1).await;
    let dead = deliver(&mut client).await;
    assert_eq!(dead.payload, largest.payload);
    let reason = dead
        .headers
        .iter()
        .find(|(n, _)| n == "weir-reason")
        .unwrap();
    assert_eq!(reason.1.len(), 1024, "reasons are cut at max_reason_bytes");
    let mut buf = bytes::BytesMut::new();
    WeirCodec::new(MAX_FRAME as usize)
        .encode_frame(&Frame::Deliver(dead), &mut buf)
        .expect("the dead letter's delivery fits in a frame");
    assert_eq!(broker.broker.metrics().replies_too_large.get(), 0);
}

#[tokio::test]
async fn a_topic_with_the_longest_name_subscribes_and_dead_letters_to_its_default_topic() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect(broker.addr).await;
    let name = "n".repeat(weir_broker::config::MAX_NAME_BYTES);
    assert!(matches!(
        admin
            .create_topic(TopicSpec {
                name: name.clone(),
                ..TopicSpec::default()
            })
            .await,
        Frame::TopicCreated(_)
    ));
    publish_with_headers(&mut admin, &name, Headers::new(), b"poison").await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, &name, "g", 10).await;
    let d = deliver(&mut consumer).await;
    term(&mut consumer, vec![d.seq], "bad").await;
    let dlq = weir_broker::config::default_dead_letter_topic(&name);
    assert!(dlq.len() <= weir_broker::config::MAX_NAME_BYTES && dlq.ends_with(".dlq"));
    let info = wait_for_topic(&mut admin, &dlq, |t| t.depth == 1).await;
    assert_eq!(info.config.name, dlq);
}
