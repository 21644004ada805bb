//! Credit: the broker never has more messages outstanding to a subscriber than it granted.

use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{Ack, Credit, ErrorCode, Frame};
use weir_tests::wire::wait_for_topic;
use weir_tests::{RawClient, TestBroker};

#[tokio::test]
async fn a_subscriber_that_never_acks_gets_exactly_its_credit_and_acking_5_brings_exactly_5() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let mut subscriber = RawClient::connect(broker.addr).await;
    subscriber.subscribe(1, "credit", "g", 10).await;
    publisher
        .publish_all("credit", (0..100).map(|i| Bytes::from(format!("m{i}"))))
        .await;

    let first = subscriber.deliveries(10).await;
    assert_eq!(
        first.iter().map(|d| d.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    // The broker's own books agree: 10 in flight, no credit left, 90 waiting.
    let info = wait_for_topic(&mut publisher, "credit", |t| t.groups[0].in_flight == 10).await;
    assert_eq!((info.groups[0].credit, info.groups[0].pending), (0, 90));
    assert!(
        subscriber
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "an 11th message arrived"
    );

    // Ack 5 and return 5 credit, as the client library does on the app's acks.
    subscriber
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: (1..=5).collect(),
        }))
        .await;
    subscriber
        .send(Frame::Credit(Credit { sub: 1, n: 5 }))
        .await;
    let more = subscriber.deliveries(5).await;
    assert_eq!(
        more.iter().map(|d| d.seq).collect::<Vec<_>>(),
        (11..=15).collect::<Vec<_>>()
    );
    let info = wait_for_topic(&mut publisher, "credit", |t| t.groups[0].in_flight == 10).await;
    assert_eq!(info.groups[0].pending, 85);
    assert!(
        subscriber
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "more than 5 arrived"
    );
}

#[tokio::test]
async fn acks_alone_do_not_grant_credit() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let mut subscriber = RawClient::connect(broker.addr).await;
    subscriber.subscribe(1, "acks", "g", 3).await;
    publisher
        .publish_all("acks", (0..10).map(|i| Bytes::from(vec![i])))
        .await;
    subscriber.deliveries(3).await;
    subscriber
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: vec![1, 2, 3],
        }))
        .await;
    let info = wait_for_topic(&mut publisher, "acks", |t| t.groups[0].in_flight == 0).await;
    assert_eq!(info.groups[0].credit, 0);
    assert!(subscriber
        .recv_within(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn credit_past_max_credit_is_refused_with_a_typed_error() {
    let broker = TestBroker::start_with(|c| c.limits.max_credit = 50).await;
    let mut client = RawClient::connect(broker.addr).await;
    client
        .send(Frame::Subscribe(weir_protocol::Subscribe {
            sub: 1,
            topic: "t".into(),
            group: "g".into(),
            credit: 51,
            group_spec: Default::default(),
        }))
        .await;
    match client.recv().await {
        Frame::Error(e) => assert_eq!((e.req, e.code), (1, ErrorCode::LimitExceeded)),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    client.subscribe(2, "t", "g", 40).await;
    client.send(Frame::Credit(Credit { sub: 2, n: 11 })).await;
    match client.recv().await {
        Frame::Error(e) => assert_eq!((e.req, e.code), (2, ErrorCode::LimitExceeded)),
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
    // Exactly up to the bound is fine.
    client.send(Frame::Credit(Credit { sub: 2, n: 10 })).await;
    let info = wait_for_topic(&mut client, "t", |t| t.groups[0].credit == 50).await;
    assert_eq!(info.groups[0].members, 1);
}

#[tokio::test]
async fn a_group_never_has_more_than_max_in_flight_across_its_members() {
    let broker = TestBroker::start_with(|c| c.limits.max_in_flight = 100).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let mut a = RawClient::connect(broker.addr).await;
    let mut b = RawClient::connect(broker.addr).await;
    a.subscribe(1, "inflight", "g", 200).await;
    b.subscribe(1, "inflight", "g", 200).await;
    publisher
        .publish_all(
            "inflight",
            (0..300u32).map(|i| Bytes::from(i.to_be_bytes().to_vec())),
        )
        .await;
    let info = wait_for_topic(&mut publisher, "inflight", |t| t.groups[0].in_flight == 100).await;
    assert_eq!(info.groups[0].pending, 200);
    // Counted on the subscribers' side: what each received and has not acked.
    let mut held: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    for (client, held) in [&mut a, &mut b].into_iter().zip(&mut held) {
        while let Some(frame) = client.recv_within(Duration::from_millis(200)).await {
            let Frame::Deliver(d) = frame else {
                panic!("expected Deliver, got {frame:?}")
            };
            held.push(d.seq);
        }
    }
    assert_eq!(
        held[0].len() + held[1].len(),
        100,
        "subscribers together saw more (or fewer) than max_in_flight unacked messages"
    );
    assert!(
        !held[0].is_empty() && !held[1].is_empty(),
        "both members got work"
    );
    // Acking 50 lets exactly 50 more out, to whichever member has credit.
    let (acker, acked) = if held[0].len() >= 50 {
        (&mut a, &held[0])
    } else {
        (&mut b, &held[1])
    };
    acker
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: acked[..50].to_vec(),
        }))
        .await;
    wait_for_topic(&mut publisher, "inflight", |t| t.groups[0].pending == 150).await;
    let mut more = 0;
    for client in [&mut a, &mut b] {
        while let Some(frame) = client.recv_within(Duration::from_millis(200)).await {
            assert!(matches!(frame, Frame::Deliver(_)), "{frame:?}");
            more += 1;
        }
    }
    assert_eq!(more, 50, "one delivery per ack, never past max_in_flight");
}

/// Polls a counter until it is positive (at most 20 s).
async fn eventually_positive(read: impl Fn() -> u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stalls_at_max_in_flight_and_at_zero_credit_are_reported_not_silent() {
    let broker = TestBroker::start_with(|c| {
        c.limits.stall_warn_ms = 200;
        c.limits.max_in_flight = 3;
    })
    .await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher
        .publish_all("stall", (0..10).map(|i| Bytes::from(vec![i])))
        .await;
    // Group "full": 3 in flight (its max), never acked.
    let mut full = RawClient::connect(broker.addr).await;
    full.subscribe(1, "stall", "full", 10).await;
    full.deliveries(3).await;
    // Group "starved": took its 1 credit, grants no more while 9 wait.
    let mut starved = RawClient::connect(broker.addr).await;
    starved.subscribe(1, "stall", "starved", 1).await;
    starved.deliveries(1).await;
    let metrics = broker.broker.metrics().clone();
    eventually_positive(
        || metrics.stalls_max_in_flight.get(),
        "a group stuck at max_in_flight",
    )
    .await;
    eventually_positive(
        || metrics.stalls_no_credit.get(),
        "a subscriber with no credit",
    )
    .await;
}
