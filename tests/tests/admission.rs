//! Admission control before any topic: per-key rate limits and per-operation limits refuse
//! only the offender, with the bucket's refill time. Rate windows run on the broker's clock:
//! these tests pause it, so refills happen exactly when the test advances it.

use bytes::Bytes;
use weir_broker::{ApiKey, RateConfig};
use weir_protocol::{Frame, Hello, RejectReason, Subscribe, PROTOCOL_VERSION};
use weir_tests::{RawClient, TestBroker};

fn key(name: &str, rate: Option<RateConfig>) -> ApiKey {
    ApiKey::with_token(name, &format!("token-{name}"), rate)
}

async fn connect_as(addr: std::net::SocketAddr, name: &str) -> RawClient {
    let mut client = RawClient::connect_raw(addr).await;
    client
        .send(Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: Some(format!("token-{name}")),
        }))
        .await;
    assert!(matches!(client.recv().await, Frame::HelloOk(_)));
    client
}

#[tokio::test]
async fn a_key_over_its_rate_is_refused_with_the_refill_time_while_another_key_is_not() {
    let slow = RateConfig {
        messages_per_s: 10,
        messages_burst: 5,
        ..RateConfig::default()
    };
    let broker =
        TestBroker::start_paused_with(|c| c.keys = vec![key("a", Some(slow)), key("b", None)])
            .await;
    let mut a = connect_as(broker.addr, "a").await;
    let mut b = connect_as(broker.addr, "b").await;
    // Both keys publish 20 pipelined messages at the same time.
    for client in [&mut a, &mut b] {
        client
            .feed_publishes(
                "shared",
                (1..=20u64).map(|id| (id, Bytes::from(vec![id as u8]))),
            )
            .await;
    }
    let (mut a_ok, mut a_refused) = (0, 0);
    for _ in 0..20 {
        match a.recv().await {
            Frame::PublishOk(_) => a_ok += 1,
            Frame::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::RateLimited);
                assert_eq!(
                    (r.limit.name.as_str(), r.limit.value),
                    ("messages_per_s", 10)
                );
                // One token refills in 100 ms at 10/s, and the paused clock refills nothing.
                assert_eq!(r.retry_after_ms, Some(100));
                a_refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (a_ok, a_refused),
        (5, 15),
        "key a: its burst, then refusals"
    );
    for _ in 0..20 {
        assert!(
            matches!(b.recv().await, Frame::PublishOk(_)),
            "key b was refused for key a's rate"
        );
    }
    assert_eq!(
        broker.broker.metrics().refusals(RejectReason::RateLimited),
        a_refused
    );
    // 100 ms later by the broker's clock one token is back, and one only.
    broker.clock.advance(std::time::Duration::from_millis(100));
    assert!(matches!(
        a.publish("shared", "again").await,
        Frame::PublishOk(_)
    ));
    assert!(matches!(
        a.publish("shared", "too soon").await,
        Frame::Rejected(r) if r.retry_after_ms == Some(100)
    ));
}

#[tokio::test]
async fn expensive_operations_have_their_own_rate_limit() {
    let rate = RateConfig {
        ops_per_s: 1,
        ops_burst: 2,
        ..RateConfig::default()
    };
    let broker = TestBroker::start_paused_with(|c| c.default_rate = rate).await;
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
    match client.recv().await {
        Frame::Rejected(r) => {
            assert_eq!((r.id, r.reason), (3, RejectReason::RateLimited));
            assert_eq!((r.limit.name.as_str(), r.limit.value), ("ops_per_s", 1));
            assert_eq!(r.retry_after_ms, Some(1000));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Publishing is a different bucket: unaffected.
    assert!(matches!(
        client.publish("t", "fine").await,
        Frame::PublishOk(_)
    ));
    let mut subs: Vec<u64> = client.deliveries(2).await.iter().map(|d| d.sub).collect();
    subs.sort_unstable();
    assert_eq!(subs, [1, 2], "each group got the message");
    // A second later by the broker's clock the refused subscribe goes through.
    broker.clock.advance(std::time::Duration::from_secs(1));
    client.subscribe(3, "t", "g3", 1).await;
}

#[tokio::test]
async fn more_queued_appends_than_the_overload_threshold_are_refused_as_overloaded() {
    let broker = TestBroker::start_with(|c| c.limits.overload_queued_appends = 1).await;
    let mut client = RawClient::connect(broker.addr).await;
    // 50 pipelined publishes arrive faster than one fdatasync: with at most one append queued
    // broker-wide, the rest of a burst is refused until the commit completes.
    client
        .feed_publishes("q", (1..=50u64).map(|id| (id, Bytes::from(vec![id as u8]))))
        .await;
    let (mut ok, mut overloaded) = (0, 0);
    for _ in 0..50 {
        match client.recv().await {
            Frame::PublishOk(_) => ok += 1,
            Frame::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::Overloaded);
                assert_eq!(
                    (r.limit.name.as_str(), r.limit.value),
                    ("overload_queued_appends", 1)
                );
                overloaded += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        ok >= 1 && overloaded >= 1,
        "{ok} confirmed, {overloaded} refused"
    );
    assert_eq!(
        client.list().await[0].depth,
        ok,
        "exactly the confirmed ones are stored"
    );
}
