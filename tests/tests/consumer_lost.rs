//! Consumers that vanish: a message whose consumers keep disappearing with it counts each loss
//! as an attempt and ends in the dead-letter topic (`weir-reason: consumer-lost`); a graceful
//! stop stops dispatch before it closes connections, so the messages in flight on closing
//! consumers are not handed to the next one, and come back after the restart.

use std::collections::BTreeMap;

use bytes::Bytes;
use weir_protocol::*;
use weir_tests::wire::{header, wait_for_topic};
use weir_tests::{RawClient, TestBroker};

/// Group settings: deliveries never time out during the test, `max_attempts` as given.
fn spec(max_attempts: u32) -> GroupSpec {
    GroupSpec {
        ack_timeout_ms: Some(600_000),
        max_attempts: Some(max_attempts),
        ..GroupSpec::default()
    }
}

async fn deliver(client: &mut RawClient) -> Deliver {
    client.next_delivery().await
}

#[tokio::test]
async fn a_message_that_keeps_losing_its_consumers_is_dead_lettered_as_consumer_lost() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let seq = match publisher.publish("crashy", &b"poison"[..]).await {
        Frame::PublishOk(ok) => ok.seq,
        other => panic!("expected PublishOk, got {other:?}"),
    };

    // Three consumers in turn take the message and vanish without acking it.
    for attempt in 1..=3 {
        let mut consumer = RawClient::connect(broker.addr).await;
        consumer
            .subscribe_with(1, "crashy", "workers", 10, spec(3))
            .await;
        let d = deliver(&mut consumer).await;
        assert_eq!((d.seq, d.attempt), (seq, attempt));
        drop(consumer);
    }
    // A fourth consumer is ready: a fourth delivery would go to it.
    let mut fourth = RawClient::connect(broker.addr).await;
    fourth
        .subscribe_with(1, "crashy", "workers", 10, spec(3))
        .await;

    let mut reader = RawClient::connect(broker.addr).await;
    reader.subscribe(1, "crashy.dlq", "audit", 10).await;
    let dead = deliver(&mut reader).await;
    assert_eq!(&dead.payload[..], b"poison");
    assert_eq!(header(&dead, "weir-reason"), Some("consumer-lost"));
    assert_eq!(header(&dead, "weir-attempts"), Some("3"));
    assert_eq!(header(&dead, "weir-origin-group"), Some("workers"));
    assert_eq!(
        header(&dead, "weir-origin-seq"),
        Some(seq.to_string().as_str())
    );
    let info = wait_for_topic(&mut publisher, "crashy", |t| t.depth == 0).await;
    let g = &info.groups[0];
    assert_eq!(
        (g.in_flight, g.dead_lettered, g.dead_letter_held),
        (0, 1, 0)
    );

    // No fourth delivery: the next thing the waiting consumer gets is a new message.
    let marker = match publisher.publish("crashy", &b"next"[..]).await {
        Frame::PublishOk(ok) => ok.seq,
        other => panic!("expected PublishOk, got {other:?}"),
    };
    let d = deliver(&mut fourth).await;
    assert_eq!((d.seq, d.attempt), (marker, 1), "{d:?}");
}

#[tokio::test]
async fn a_graceful_stop_hands_no_in_flight_message_to_another_consumer_and_restart_redelivers_them(
) {
    const MESSAGES: u64 = 20;
    const CONSUMERS: u64 = 4;
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher
        .publish_all("churn", (0..MESSAGES).map(|i| Bytes::from(format!("m{i}"))))
        .await;

    // Each consumer takes its share, then grants credit to spare: were dispatch still running
    // while the others close, their messages could go to it. `max_attempts = 1`: a message
    // the stop counted as lost would be dead-lettered.
    let share = MESSAGES / CONSUMERS;
    let mut consumers = Vec::new();
    let mut held: BTreeMap<u64, usize> = BTreeMap::new();
    for c in 0..CONSUMERS {
        let mut consumer = RawClient::connect(broker.addr).await;
        consumer
            .subscribe_with(c, "churn", "workers", share as u32, spec(1))
            .await;
        for d in consumer.deliveries(share as usize).await {
            assert_eq!(d.attempt, 1);
            assert!(held.insert(d.seq, c as usize).is_none(), "{d:?} twice");
        }
        consumers.push(consumer);
    }
    for (c, consumer) in consumers.iter_mut().enumerate() {
        consumer
            .send(Frame::Credit(Credit {
                sub: c as u64,
                n: MESSAGES as u32,
            }))
            .await;
    }
    // The first consumer acks two of its messages: they are done for good.
    let acked: Vec<u64> = held
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(s, _)| *s)
        .take(2)
        .collect();
    consumers[0]
        .send(Frame::Ack(Ack {
            sub: 0,
            seqs: acked.clone(),
        }))
        .await;
    let in_flight = MESSAGES - acked.len() as u64;
    wait_for_topic(&mut publisher, "churn", |t| {
        let g = &t.groups[0];
        g.in_flight == in_flight && g.credit == CONSUMERS * MESSAGES
    })
    .await;

    let stopping = tokio::spawn(async move {
        let mut broker = broker;
        broker.stop().await;
        broker
    });
    // From here on every consumer is closed by the stop; none may see any delivery again.
    for consumer in &mut consumers {
        while let Some(frame) = consumer.recv_or_closed().await {
            match frame {
                Frame::Deliver(d) => {
                    panic!(
                        "delivered during the shutdown: seq {} attempt {}",
                        d.seq, d.attempt
                    )
                }
                Frame::GoingAway(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let broker = stopping.await.expect("the broker stops");

    // After the restart every message in flight at the stop comes back, once, attempt 2;
    // nothing was dead-lettered, and acked messages stay acked.
    let broker = broker.restart().await;
    let mut admin = RawClient::connect(broker.addr).await;
    let topics = admin.list().await;
    assert!(
        topics.iter().all(|t| t.config.name != "churn.dlq"),
        "nothing dead-lettered: {topics:?}"
    );
    let info = wait_for_topic(&mut admin, "churn", |_| true).await;
    assert_eq!(
        (info.depth, info.groups[0].dead_letter_held),
        (in_flight, 0)
    );
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer
        .subscribe_with(9, "churn", "workers", 2 * MESSAGES as u32, spec(1))
        .await;
    let again = consumer.deliveries(in_flight as usize).await;
    let mut seqs: Vec<u64> = again.iter().map(|d| d.seq).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = held
        .keys()
        .copied()
        .filter(|s| !acked.contains(s))
        .collect();
    assert_eq!(seqs, expected);
    assert!(again.iter().all(|d| d.attempt == 2), "{again:?}");
    // Nothing else is due: the next delivery is a new message.
    let marker = match admin.publish("churn", &b"next"[..]).await {
        Frame::PublishOk(ok) => ok.seq,
        other => panic!("expected PublishOk, got {other:?}"),
    };
    let d = deliver(&mut consumer).await;
    assert_eq!((d.seq, d.attempt), (marker, 1), "{d:?}");
}

#[tokio::test]
async fn acks_sent_during_the_shutdown_grace_are_applied_and_survive_the_restart() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher
        .publish_all("graceful", (0..4).map(|i| Bytes::from(format!("m{i}"))))
        .await;
    drop(publisher);
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer
        .subscribe_with(1, "graceful", "workers", 4, spec(5))
        .await;
    let held: Vec<u64> = consumer.deliveries(4).await.iter().map(|d| d.seq).collect();

    let stopping = tokio::spawn(async move {
        let mut broker = broker;
        broker.stop().await;
        broker
    });
    // Probe until the stop has begun: a publish on this connection is then refused
    // `ShuttingDown` — the connection is still read, since it holds deliveries.
    let mut probe = 0u64;
    loop {
        probe += 1;
        consumer
            .send(Frame::Publish(Publish {
                producer: None,
                id: probe,
                topic: "probe".into(),
                headers: Headers::new(),
                payload: Bytes::from_static(b"probe"),
            }))
            .await;
        match consumer.recv_or_closed().await {
            Some(Frame::PublishOk(_)) => continue,
            Some(Frame::Rejected(r)) if r.reason == RejectReason::ShuttingDown => break,
            other => panic!("expected PublishOk, then Rejected{{ShuttingDown}}: {other:?}"),
        }
    }
    // Settled during the grace: three acked, one nacked for later.
    consumer
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: held[..3].to_vec(),
        }))
        .await;
    consumer
        .send(Frame::Nack(Nack {
            sub: 1,
            seqs: vec![held[3]],
            delay_ms: 0,
        }))
        .await;
    // With nothing held, the connection ends well before the grace does.
    while let Some(frame) = consumer.recv_or_closed().await {
        match frame {
            Frame::GoingAway(_) => {}
            other => panic!("nothing is delivered during the stop: {other:?}"),
        }
    }
    let broker = stopping.await.expect("the broker stops");
    let broker = broker.restart().await;
    let mut admin = RawClient::connect(broker.addr).await;
    let info = wait_for_topic(&mut admin, "graceful", |_| true).await;
    assert_eq!(info.depth, 1, "the acks made during the grace were kept");
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer
        .subscribe_with(2, "graceful", "workers", 4, spec(5))
        .await;
    let d = deliver(&mut consumer).await;
    assert_eq!((d.seq, d.attempt), (held[3], 2), "{d:?}");
}
