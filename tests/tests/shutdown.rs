//! Graceful shutdown in-process: it is bounded even when a client never reads.
//! (The signal-driven shutdown of the real binary is tested in `durability`.)

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Encoder;
use weir_protocol::{Frame, WeirCodec};
use weir_tests::{RawClient, TestBroker};

#[tokio::test]
async fn shutdown_completes_even_when_a_client_never_reads() {
    let mut broker = TestBroker::start_with(|c| c.limits.shutdown_grace_ms = 200).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher
        .publish_all("flood", (0..64).map(|_| Bytes::from(vec![1u8; 64 * 1024])))
        .await;

    // A client that takes 4 MiB of deliveries and a flood of pings, and reads none of it: its
    // socket and then its outbound queues fill, and the broker blocks writing to it.
    let mut stuck = RawClient::connect(broker.addr).await;
    stuck.subscribe(1, "flood", "g", 64).await;
    let mut pings = BytesMut::new();
    for nonce in 0..50_000u64 {
        WeirCodec::default()
            .encode(Frame::Ping(nonce), &mut pings)
            .unwrap();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stuck.stream().write_all(&pings)).await;

    let stopped = tokio::time::timeout(Duration::from_secs(30), broker.stop()).await;
    assert!(
        stopped.is_ok(),
        "shutdown hung on a client that never reads"
    );
    // The well-behaved publisher was told to go away.
    let mut saw_going_away = false;
    while let Some(frame) = publisher.recv_or_closed().await {
        saw_going_away |= matches!(frame, Frame::GoingAway(_));
    }
    assert!(saw_going_away);
}

#[tokio::test]
async fn parked_publishes_are_refused_with_shutting_down_when_the_broker_stops() {
    let mut broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let spec = weir_protocol::TopicSpec {
        name: "parked".into(),
        max_messages: Some(1),
        overflow: Some(weir_protocol::OverflowPolicy::Block),
        max_block_ms: Some(600_000),
        ..Default::default()
    };
    assert!(matches!(
        client.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
    client
        .publish_all("parked", [Bytes::from_static(b"fills it")])
        .await;
    for id in 100..103 {
        let publish = weir_protocol::Publish {
            producer: None,
            id,
            topic: "parked".into(),
            payload: Bytes::from_static(b"waits"),
            headers: Vec::new(),
        };
        client.send(Frame::Publish(publish)).await;
    }
    let mut admin = RawClient::connect(broker.addr).await;
    weir_tests::wire::wait_for_topic(&mut admin, "parked", |t| t.parked == 3).await;
    drop(admin);
    let stopping = tokio::spawn(async move { broker.stop().await });
    let mut refused = Vec::new();
    let mut going_away = false;
    while let Some(frame) = client.recv_or_closed().await {
        match frame {
            Frame::Rejected(r) if r.reason == weir_protocol::RejectReason::ShuttingDown => {
                refused.push(r.id)
            }
            Frame::GoingAway(_) => going_away = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    refused.sort_unstable();
    assert_eq!(refused, vec![100, 101, 102]);
    assert!(going_away);
    stopping.await.unwrap();
}
