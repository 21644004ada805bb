//! Broker-wide and per-connection bounds, each driven to its bound.

use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{
    ErrorCode, Frame, Hello, RejectReason, Subscribe, TopicSpec, PROTOCOL_VERSION,
};
use weir_tests::{RawClient, TestBroker};

/// Opens a connection, says Hello, and expects `Rejected{TooManyConnections}` naming `limit`
/// (with a retry hint), then the close.
async fn expect_connection_refused(addr: std::net::SocketAddr, limit: &str, value: u64) {
    let mut c = RawClient::connect_raw(addr).await;
    c.send(Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: None,
    }))
    .await;
    match c.recv_or_closed().await {
        Some(Frame::Rejected(r)) => {
            assert_eq!(r.reason, RejectReason::TooManyConnections);
            assert_eq!((r.limit.name.as_str(), r.limit.value), (limit, value));
            assert!(r.retry_after_ms.is_some());
        }
        other => panic!("expected Rejected(TooManyConnections), got {other:?}"),
    }
    assert!(c.recv_or_closed().await.is_none());
}

#[tokio::test]
async fn past_max_connections_a_client_gets_too_many_connections_and_others_keep_working() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections = 2).await;
    let mut a = RawClient::connect(broker.addr).await;
    let b = RawClient::connect(broker.addr).await;
    expect_connection_refused(broker.addr, "max_connections", 2).await;
    assert!(matches!(
        a.publish("t", "still fine").await,
        Frame::PublishOk(_)
    ));
    // A slot frees once a connection closes (asynchronously, so try until it is released).
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = RawClient::connect_raw(broker.addr).await;
        d.send(Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: None,
        }))
        .await;
        match d.recv_or_closed().await {
            Some(Frame::HelloOk(_)) => break,
            Some(Frame::Rejected(_)) | None => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn max_subscriptions_per_connection_is_enforced() {
    let broker = TestBroker::start_with(|c| c.limits.max_subscriptions = 2).await;
    let mut client = RawClient::connect(broker.addr).await;
    client.subscribe(1, "t", "g1", 1).await;
    client.subscribe(2, "t", "g2", 1).await;
    client
        .send(Frame::Subscribe(Subscribe {
            sub: 3,
            topic: "t".into(),
            group: "g3".into(),
            credit: 1,
            group_spec: Default::default(),
        }))
        .await;
    assert!(
        matches!(client.recv().await, Frame::Error(e) if e.req == 3 && e.code == ErrorCode::LimitExceeded)
    );
    client
        .send(Frame::Subscribe(Subscribe {
            sub: 1,
            topic: "t".into(),
            group: "g1".into(),
            credit: 1,
            group_spec: Default::default(),
        }))
        .await;
    assert!(
        matches!(client.recv().await, Frame::Error(e) if e.req == 1 && e.code == ErrorCode::SubscriptionExists)
    );
}

#[tokio::test]
async fn max_topics_refuses_creation_and_auto_creation() {
    let broker = TestBroker::start_with(|c| c.limits.max_topics = 2).await;
    let mut client = RawClient::connect(broker.addr).await;
    assert!(matches!(
        client.publish("one", "x").await,
        Frame::PublishOk(_)
    ));
    assert!(matches!(
        client
            .create_topic(TopicSpec {
                name: "two".into(),
                ..Default::default()
            })
            .await,
        Frame::TopicCreated(_)
    ));
    let third = client
        .create_topic(TopicSpec {
            name: "three".into(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(third, Frame::Error(ref e) if e.code == ErrorCode::LimitExceeded),
        "{third:?}"
    );
    match client.publish("four", "x").await {
        Frame::Rejected(r) => {
            assert_eq!((r.reason, r.limit.value), (RejectReason::TooManyTopics, 2))
        }
        other => panic!("expected TooManyTopics, got {other:?}"),
    }
    assert_eq!(client.list().await.len(), 2);
}

#[tokio::test]
async fn max_groups_per_topic_is_enforced() {
    let broker = TestBroker::start_with(|c| c.limits.max_groups_per_topic = 1).await;
    let mut client = RawClient::connect(broker.addr).await;
    client.subscribe(1, "t", "first", 1).await;
    client
        .send(Frame::Subscribe(Subscribe {
            sub: 2,
            topic: "t".into(),
            group: "second".into(),
            credit: 1,
            group_spec: Default::default(),
        }))
        .await;
    assert!(
        matches!(client.recv().await, Frame::Error(e) if e.req == 2 && e.code == ErrorCode::LimitExceeded)
    );
    client.subscribe(3, "t", "first", 1).await;
}

#[tokio::test]
async fn with_auto_create_off_an_unknown_topic_is_a_typed_error() {
    let broker = TestBroker::start_with(|c| c.limits.auto_create_topics = false).await;
    let mut client = RawClient::connect(broker.addr).await;
    assert!(
        matches!(client.publish("nope", "x").await, Frame::Error(e) if e.code == ErrorCode::UnknownTopic)
    );
    client
        .send(Frame::Subscribe(Subscribe {
            sub: 9,
            topic: "nope".into(),
            group: "g".into(),
            credit: 1,
            group_spec: Default::default(),
        }))
        .await;
    assert!(
        matches!(client.recv().await, Frame::Error(e) if e.req == 9 && e.code == ErrorCode::UnknownTopic)
    );
    assert!(matches!(
        client
            .create_topic(TopicSpec {
                name: "nope".into(),
                ..Default::default()
            })
            .await,
        Frame::TopicCreated(_)
    ));
    let seqs = client
        .publish_all("nope", [Bytes::from_static(b"now it exists")])
        .await;
    assert_eq!(seqs, vec![1]);
}

#[tokio::test]
async fn at_max_unconfirmed_the_broker_stops_reading_and_still_confirms_everything() {
    let broker = TestBroker::start_with(|c| c.limits.max_unconfirmed = 4).await;
    let mut client = RawClient::connect(broker.addr).await;
    let seqs = client
        .publish_all("paced", (0..500).map(|i| Bytes::from(vec![i as u8; 100])))
        .await;
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());
    let metrics = broker.broker.metrics();
    assert!(
        metrics.read_pauses.get() > 0,
        "500 pipelined publishes never hit the cap of 4"
    );
    assert_eq!(
        metrics.unconfirmed_high_water.get(),
        4,
        "a connection held more than max_unconfirmed"
    );
}

#[tokio::test]
async fn max_connections_per_ip_refuses_the_offender_only() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let _a = RawClient::connect(broker.addr).await;
    let _b = RawClient::connect(broker.addr).await;
    expect_connection_refused(broker.addr, "max_connections_per_ip", 2).await;
    assert_eq!(
        broker
            .broker
            .metrics()
            .refusals(RejectReason::TooManyConnections),
        1
    );
}
