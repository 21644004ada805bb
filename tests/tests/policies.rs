//! Overflow policies driven to their bounds: `reject` and `drop_oldest`.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{
    Ack, Credit, DescribeTopic, Frame, OverflowPolicy, Publish, RejectReason, TopicSpec,
};
use weir_tests::wire::wait_for_topic;
use weir_tests::{RawClient, TestBroker};

fn topic(name: &str, max_messages: u64, overflow: OverflowPolicy) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        max_messages: Some(max_messages),
        overflow: Some(overflow),
        ..TopicSpec::default()
    }
}

async fn retry_hint(client: &mut RawClient, topic: &str) -> u64 {
    match client.publish(topic, "over the bound").await {
        Frame::Rejected(r) if r.reason == RejectReason::TopicFull => {
            r.retry_after_ms.expect("a retry hint")
        }
        other => panic!("expected TopicFull, got {other:?}"),
    }
}

#[tokio::test]
async fn reject_hints_come_from_the_drain_rate_and_grow_when_nothing_drains() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 3_000).await;
    let mut client = RawClient::connect(broker.addr).await;
    assert!(matches!(
        client
            .create_topic(topic("hint", 100, OverflowPolicy::Reject))
            .await,
        Frame::TopicCreated(_)
    ));
    client
        .publish_all("hint", (0..100).map(|i| Bytes::from(vec![i as u8])))
        .await;
    // Nothing has ever drained: come back at the longest hint.
    assert_eq!(retry_hint(&mut client, "hint").await, 3_000);

    // A consumer drains 50 quickly; refill to the bound: the hint now reflects that rate.
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.consume(1, "hint", "g", 50).await;
    wait_for_topic(&mut client, "hint", |t| t.depth == 50).await;
    client
        .publish_all("hint", (0..50).map(|i| Bytes::from(vec![i as u8])))
        .await;
    let fast = retry_hint(&mut client, "hint").await;
    assert!(
        fast < 3_000,
        "a draining topic still got the no-drain hint: {fast} ms"
    );
    assert!(fast >= 1);
    let info = client.list().await;
    assert_eq!(info[0].rejected, 2, "per-topic refusal counter");
    assert_eq!(broker.broker.metrics().refusals(RejectReason::TopicFull), 2);
}

#[tokio::test]
async fn drop_oldest_keeps_the_bound_counts_every_eviction_and_tells_lagging_subscribers() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    assert!(matches!(
        client
            .create_topic(topic("lossy", 10, OverflowPolicy::DropOldest))
            .await,
        Frame::TopicCreated(_)
    ));
    // A lagging subscriber: takes 2, acks nothing.
    let mut lagging = RawClient::connect(broker.addr).await;
    lagging.subscribe(1, "lossy", "slow", 2).await;

    let payloads: Vec<Bytes> = (1..=30)
        .map(|i| Bytes::from(format!("message-{i}")))
        .collect();
    let seqs = client.publish_all("lossy", payloads).await;
    assert_eq!(
        seqs,
        (1..=30).collect::<Vec<_>>(),
        "drop_oldest accepts every publish"
    );

    let info = wait_for_topic(&mut client, "lossy", |t| t.next_seq == 31).await;
    assert_eq!(
        (info.depth, info.dropped),
        (10, 20),
        "kept at its bound; dropped = evicted"
    );
    assert_eq!(broker.broker.metrics().dropped.get(), 20);

    // The subscriber is told which messages its group will never get: 1..=20 (including the
    // two it held unacked), possibly in several notices.
    let mut missed = BTreeSet::new();
    let mut delivered = Vec::new();
    while missed.len() < 20 {
        match lagging.recv().await {
            Frame::Gap(g) => missed.extend(g.from..=g.to),
            Frame::Deliver(d) => delivered.push(d.seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        missed,
        (1..=20).collect(),
        "gap notices cover exactly the evicted range"
    );
    assert!(delivered.iter().all(|s| *s <= 2));
    // Acks of evicted messages are ignored; new credit delivers what is still stored.
    lagging
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: delivered.clone(),
        }))
        .await;
    lagging.send(Frame::Credit(Credit { sub: 1, n: 10 })).await;
    let rest = lagging.deliveries(10).await;
    assert_eq!(
        rest.iter().map(|d| d.seq).collect::<Vec<_>>(),
        (21..=30).collect::<Vec<_>>()
    );

    // Operators can read what was dropped.
    client
        .send(Frame::DescribeTopic(DescribeTopic {
            req: 77,
            name: "lossy".into(),
        }))
        .await;
    match client.recv().await {
        Frame::TopicDescription(d) => {
            assert_eq!(d.req, 77);
            assert_eq!(
                d.recent_drops.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (1..=20).collect::<Vec<_>>()
            );
            let first = &d.recent_drops[0];
            assert_eq!((first.bytes, first.reason.as_str()), (9, "overflow"));
            assert_eq!(first.head.as_deref(), Some(&b"message-1"[..]));
        }
        other => panic!("expected TopicDescription, got {other:?}"),
    }
}

#[tokio::test]
async fn drop_oldest_on_a_topic_without_groups_also_keeps_its_bound() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let spec = TopicSpec {
        max_bytes: Some(1000),
        max_message_bytes: Some(100),
        ..topic("lossy-bytes", 1000, OverflowPolicy::DropOldest)
    };
    assert!(matches!(
        client.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
    client
        .publish_all("lossy-bytes", (0..25).map(|_| Bytes::from(vec![0u8; 100])))
        .await;
    let info = client.list().await;
    assert_eq!(
        (info[0].depth, info[0].bytes, info[0].dropped),
        (10, 1000, 15)
    );
}

fn blocking(name: &str, max_messages: u64, max_blocked: u32, max_block_ms: u64) -> TopicSpec {
    TopicSpec {
        max_blocked_publishes: Some(max_blocked),
        max_block_ms: Some(max_block_ms),
        ..topic(name, max_messages, OverflowPolicy::Block)
    }
}

/// Sends publishes without waiting for answers; returns their ids.
async fn send_publishes(client: &mut RawClient, topic: &str, first_id: u64, n: u64) -> Vec<u64> {
    let ids: Vec<u64> = (first_id..first_id + n).collect();
    for &id in &ids {
        client
            .send(Frame::Publish(Publish {
                producer: None,
                id,
                topic: topic.into(),
                payload: Bytes::from(format!("p{id}")),
                headers: Vec::new(),
            }))
            .await;
    }
    ids
}

#[tokio::test]
async fn block_parks_publishes_and_confirms_each_exactly_when_a_consumer_acks() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect(broker.addr).await;
    assert!(matches!(
        admin.create_topic(blocking("paced", 5, 100, 60_000)).await,
        Frame::TopicCreated(_)
    ));
    let mut producer = RawClient::connect(broker.addr).await;
    producer
        .publish_all("paced", (0..5).map(|i| Bytes::from(vec![i])))
        .await;
    send_publishes(&mut producer, "paced", 1000, 3).await;
    wait_for_topic(&mut admin, "paced", |t| t.parked == 3).await;
    assert!(
        producer
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "a parked publish was answered"
    );

    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "paced", "g", 5).await;
    let got = consumer.deliveries(5).await;
    for (k, d) in got.iter().take(3).enumerate() {
        consumer
            .send(Frame::Ack(Ack {
                sub: 1,
                seqs: vec![d.seq],
            }))
            .await;
        // Each ack frees one slot: exactly one parked publish is confirmed, in order.
        match producer.recv().await {
            Frame::PublishOk(ok) => assert_eq!((ok.id, ok.seq), (1000 + k as u64, 6 + k as u64)),
            other => panic!("expected PublishOk, got {other:?}"),
        }
        assert!(
            producer
                .recv_within(Duration::from_millis(100))
                .await
                .is_none(),
            "more than one confirm per ack"
        );
    }
    let info = wait_for_topic(&mut admin, "paced", |t| t.parked == 0).await;
    assert_eq!((info.depth, info.rejected), (5, 0));
}

#[tokio::test]
async fn block_refuses_after_max_block_and_past_max_blocked_publishes() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    assert!(matches!(
        client.create_topic(blocking("stuck", 2, 2, 300)).await,
        Frame::TopicCreated(_)
    ));
    client
        .publish_all(
            "stuck",
            [Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        )
        .await;
    send_publishes(&mut client, "stuck", 100, 3).await;
    // The third parked one does not fit in the parking queue: refused at once.
    match client.recv().await {
        Frame::Rejected(r) => {
            assert_eq!((r.id, r.reason), (102, RejectReason::TopicFull));
            assert_eq!(
                (r.limit.name.as_str(), r.limit.value),
                ("max_blocked_publishes", 2)
            );
        }
        other => panic!("expected a parking-full refusal, got {other:?}"),
    }
    // Nobody drains: the two parked ones are refused once max_block_ms passes.
    for id in [100, 101] {
        match client.recv().await {
            Frame::Rejected(r) => {
                assert_eq!((r.id, r.reason), (id, RejectReason::TopicFull));
                assert_eq!(
                    (r.limit.name.as_str(), r.limit.value),
                    ("max_block_ms", 300)
                );
                assert!(r.retry_after_ms.is_some());
            }
            other => panic!("expected a max_block refusal, got {other:?}"),
        }
    }
    assert_eq!(
        client.list().await[0].depth,
        2,
        "refused publishes were not stored"
    );
}

#[tokio::test]
async fn a_blocked_topic_does_not_delay_another_topic_on_the_same_connection() {
    // max_unconfirmed 4 and 10 parked publishes: if parked ones counted against the cap, the
    // broker would stop reading this socket and the publish to `fast` would never be read.
    let broker = TestBroker::start_with(|c| c.limits.max_unconfirmed = 4).await;
    let mut client = RawClient::connect(broker.addr).await;
    assert!(matches!(
        client.create_topic(blocking("slow", 1, 100, 60_000)).await,
        Frame::TopicCreated(_)
    ));
    client
        .publish_all("slow", [Bytes::from_static(b"fills it")])
        .await;
    send_publishes(&mut client, "slow", 100, 10).await;
    let mut admin = RawClient::connect(broker.addr).await;
    wait_for_topic(&mut admin, "slow", |t| t.parked == 10).await;
    match client.publish("fast", "not held back").await {
        Frame::PublishOk(ok) => assert_eq!(ok.seq, 1),
        other => panic!("expected the other topic's confirm, got {other:?}"),
    }
}
