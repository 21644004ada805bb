//! The client's retry policy against a real broker: retries honour the broker's hint and
//! succeed once room frees up, surface the refusal when nothing drains, and the circuit breaker
//! stops publishing into a broker that keeps refusing.

use std::time::Duration;

use futures::StreamExt;
use weir_client::{
    BreakerPolicy, BreakerState, Client, ClientError, PublishError, RejectReason, RetryPolicy,
    TopicSpec,
};
use weir_tests::TestBroker;

fn quick(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        max_retries,
        ..RetryPolicy::default()
    }
}

async fn full_topic(client: &Client, name: &str) {
    let spec = TopicSpec {
        name: name.into(),
        max_messages: Some(5),
        ..Default::default()
    };
    client.create_topic(spec).await.unwrap();
    let publisher = client.publisher();
    for i in 0..5 {
        publisher.publish_and_wait(name, vec![i]).await.unwrap();
    }
}

#[tokio::test]
async fn a_retried_publish_is_confirmed_once_a_consumer_frees_room() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 100).await;
    let client = Client::connect(broker.addr).await.unwrap();
    full_topic(&client, "retry").await;
    let publisher = client.publisher().with_retry(quick(1000));
    let confirm = publisher.publish("retry", "the sixth").await.unwrap();
    // Once the broker has refused it at least once, a consumer acks one message.
    let metrics = broker.broker.metrics().clone();
    while metrics.refusals(RejectReason::TopicFull) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut sub = client.subscribe("retry", "g", 1).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    first.ack();
    let seq = tokio::time::timeout(Duration::from_secs(20), confirm)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 6);
    assert!(publisher.retries() >= 1, "the publish was never retried");
}

#[tokio::test]
async fn when_nothing_drains_the_refusal_surfaces_after_the_allowed_retries() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 20).await;
    let client = Client::connect(broker.addr).await.unwrap();
    full_topic(&client, "stuck").await;
    let publisher = client.publisher().with_retry(quick(2));
    let outcome = publisher
        .publish("stuck", "never fits")
        .await
        .unwrap()
        .await;
    assert!(
        matches!(
            outcome,
            Err(PublishError::Rejected {
                reason: RejectReason::TopicFull,
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(publisher.retries(), 2);
    assert_eq!(
        broker.broker.metrics().refusals(RejectReason::TopicFull),
        3,
        "one publish, two retries"
    );
}

#[tokio::test]
async fn the_circuit_breaker_opens_after_consecutive_refusals_and_fails_fast() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 20).await;
    let client = Client::connect(broker.addr).await.unwrap();
    full_topic(&client, "storm").await;
    let breaker = BreakerPolicy {
        consecutive_failures: 3,
        cooldown: Duration::from_secs(60),
        ..BreakerPolicy::default()
    };
    let publisher = client.publisher().with_retry(RetryPolicy {
        max_retries: 0,
        breaker,
        ..quick(0)
    });
    for _ in 0..3 {
        let outcome = publisher.publish("storm", "refused").await.unwrap().await;
        assert!(
            matches!(outcome, Err(PublishError::Rejected { .. })),
            "{outcome:?}"
        );
    }
    assert!(matches!(
        publisher.breaker_state(),
        Some(BreakerState::Open { .. })
    ));
    let refusals_before = broker.broker.metrics().refusals(RejectReason::TopicFull);
    match publisher.publish("storm", "not even sent").await {
        Err(ClientError::CircuitOpen { retry_after }) => assert!(retry_after > Duration::ZERO),
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(
        broker.broker.metrics().refusals(RejectReason::TopicFull),
        refusals_before,
        "the open breaker sent nothing"
    );
}
