//! A topic at its bound refuses publishes (policy `reject`) and accepts again once acks free room.

use bytes::Bytes;
use weir_protocol::{Ack, Frame, RejectReason, TopicSpec};
use weir_tests::wire::wait_for_topic;
use weir_tests::{RawClient, TestBroker};

fn spec(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        ..TopicSpec::default()
    }
}

#[tokio::test]
async fn the_101st_publish_is_refused_until_a_consumer_acks() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let created = client
        .create_topic(TopicSpec {
            max_messages: Some(100),
            ..spec("full")
        })
        .await;
    assert!(
        matches!(created, Frame::TopicCreated(ref c) if c.created && c.config.max_messages == 100),
        "{created:?}"
    );
    client
        .publish_all("full", (0..100).map(|i| Bytes::from(format!("m{i}"))))
        .await;

    match client.publish("full", "one too many").await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::TopicFull);
            assert_eq!(
                (r.limit.name.as_str(), r.limit.value),
                ("max_messages", 100)
            );
            assert!(
                r.retry_after_ms.is_some_and(|ms| ms > 0),
                "no retry hint: {r:?}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // The topic says which bound is refusing its publishers.
    let info = wait_for_topic(&mut client, "full", |_| true).await;
    let refusing = info.refusing.expect("a refusal just now is active");
    assert_eq!(
        (
            refusing.reason,
            refusing.limit.name.as_str(),
            refusing.last_second
        ),
        (RejectReason::TopicFull, "max_messages", 1)
    );

    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "full", "g", 10).await;
    let got = consumer.deliveries(10).await;
    consumer
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: got.iter().map(|d| d.seq).collect(),
        }))
        .await;
    // Once the acks are applied there is room for exactly 10 more.
    wait_for_topic(&mut client, "full", |t| t.depth == 90).await;
    let seqs = match client.publish("full", "fits again").await {
        Frame::PublishOk(ok) => vec![ok.seq],
        other => panic!("expected PublishOk, got {other:?}"),
    };
    assert_eq!(seqs, vec![101]);
    client
        .publish_all("full", (0..9).map(|i| Bytes::from(vec![i])))
        .await;
    assert!(matches!(
        client.publish("full", "full again").await,
        Frame::Rejected(_)
    ));
}

#[tokio::test]
async fn max_bytes_and_max_message_bytes_are_enforced() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let topic = TopicSpec {
        max_bytes: Some(1000),
        max_message_bytes: Some(600),
        ..spec("bytes")
    };
    assert!(matches!(
        client.create_topic(topic).await,
        Frame::TopicCreated(_)
    ));
    match client.publish("bytes", vec![0u8; 601]).await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::MessageTooLarge);
            assert_eq!(
                (r.limit.name.as_str(), r.limit.value, r.retry_after_ms),
                ("max_message_bytes", 600, None)
            );
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    client
        .publish_all(
            "bytes",
            [Bytes::from(vec![1u8; 600]), Bytes::from(vec![2u8; 400])],
        )
        .await;
    match client.publish("bytes", vec![3u8; 1]).await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::TopicFull);
            assert_eq!((r.limit.name.as_str(), r.limit.value), ("max_bytes", 1000));
        }
        other => panic!("expected TopicFull, got {other:?}"),
    }
    let info = client.list().await;
    assert_eq!((info[0].depth, info[0].bytes), (2, 1000));
}

#[tokio::test]
async fn creating_a_topic_is_idempotent_but_a_different_config_is_refused() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let first = client
        .create_topic(TopicSpec {
            max_messages: Some(5),
            ..spec("same")
        })
        .await;
    assert!(matches!(first, Frame::TopicCreated(ref c) if c.created));
    let again = client
        .create_topic(TopicSpec {
            max_messages: Some(5),
            ..spec("same")
        })
        .await;
    assert!(matches!(again, Frame::TopicCreated(ref c) if !c.created));
    let other = client
        .create_topic(TopicSpec {
            max_messages: Some(6),
            overflow: Some(weir_protocol::OverflowPolicy::DropOldest),
            ..spec("same")
        })
        .await;
    let Frame::Error(e) = other else {
        panic!("{other:?}")
    };
    assert_eq!(e.code, weir_protocol::ErrorCode::TopicExists);
    // It names each setting that differs, and only those.
    assert!(
        e.message.contains("max_messages is 5 (asked 6)"),
        "{}",
        e.message
    );
    assert!(e.message.contains("overflow is"), "{}", e.message);
    assert!(e.message.contains("(asked drop_oldest)"), "{}", e.message);
    assert!(!e.message.contains("max_bytes"), "{}", e.message);
    let bad = client.create_topic(spec("no/slashes")).await;
    assert!(
        matches!(bad, Frame::Error(ref e) if e.code == weir_protocol::ErrorCode::InvalidArgument),
        "{bad:?}"
    );
}
