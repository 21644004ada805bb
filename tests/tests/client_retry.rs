//! The client's retry policy against a real broker: retries honour the broker's hint and
//! succeed once room frees up, surface the refusal when nothing drains, ride out a rate limit,
//! and the circuit breaker stops publishing into a broker that keeps refusing — then lets one
//! probe through and closes again once the broker accepts.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use weir_broker::{ApiKey, RateConfig};
use weir_client::{
    BreakerPolicy, BreakerState, Client, ClientError, ClientOptions, PublishError, RejectReason,
    RetryPolicy, TopicSpec,
};
use weir_tests::TestBroker;

/// Short backoffs, so the tests spend their time on the broker's hints.
fn quick(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(5),
        cap: Duration::from_millis(50),
        max_retries,
        ..RetryPolicy::default()
    }
}

/// Awaits `f`, failing the test after 20 s instead of hanging it.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// Creates topic `name` with room for 5 messages, and fills it.
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

/// Waits until the broker has refused at least one more publish as `TopicFull` than `before`.
async fn refused_since(broker: &TestBroker, before: u64) {
    let metrics = broker.broker.metrics().clone();
    within(async {
        while metrics.refusals(RejectReason::TopicFull) <= before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Subscribes to `topic` and acks its first message, freeing one slot.
async fn ack_one(client: &Client, topic: &str) {
    let mut sub = client.subscribe(topic, "g", 1).await.unwrap();
    within(sub.next()).await.unwrap().unwrap().ack();
    sub.close().await.unwrap();
}

#[tokio::test]
async fn a_retried_publish_is_confirmed_once_a_consumer_frees_room() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 100).await;
    let client = Client::connect(broker.addr).await.unwrap();
    full_topic(&client, "retry").await;
    let publisher = client.publisher().with_retry(quick(1000));
    let confirm = publisher.publish("retry", "the sixth").await.unwrap();
    // Once the broker has refused it at least once, a consumer acks one message.
    refused_since(&broker, 0).await;
    ack_one(&client, "retry").await;
    assert_eq!(within(confirm).await, Ok(6));
    assert!(publisher.retries() >= 1, "the publish was never retried");
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
}

#[tokio::test]
async fn when_nothing_drains_the_refusal_surfaces_after_the_allowed_retries() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 20).await;
    let client = Client::connect(broker.addr).await.unwrap();
    full_topic(&client, "stuck").await;
    let publisher = client.publisher().with_retry(quick(2));
    let outcome = within(publisher.publish("stuck", "never fits").await.unwrap()).await;
    assert!(
        matches!(
            outcome,
            Err(PublishError::Rejected {
                reason: RejectReason::TopicFull,
                retry_after_ms: Some(_),
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
async fn when_nothing_drains_the_budget_ends_the_retries() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 10).await;
    let client = Client::connect(broker.addr).await.unwrap();
    full_topic(&client, "budget").await;
    // Many attempts allowed, but a budget of 3 retries per window (one publish earns none).
    let publisher = client.publisher().with_retry(RetryPolicy {
        budget_floor: 3,
        ..quick(1000)
    });
    let outcome = within(publisher.publish("budget", "never fits").await.unwrap()).await;
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
    assert_eq!(publisher.retries(), 3);
}

#[tokio::test]
async fn the_circuit_breaker_opens_fails_fast_then_probes_and_closes() {
    let broker = TestBroker::start_with(|c| c.limits.max_retry_after_ms = 20).await;
    let client = Client::connect(broker.addr).await.unwrap();
    full_topic(&client, "storm").await;
    let cooldown = Duration::from_millis(300);
    let breaker = BreakerPolicy {
        consecutive_failures: 3,
        cooldown,
        ..BreakerPolicy::default()
    };
    let publisher = client.publisher().with_retry(RetryPolicy {
        breaker,
        ..quick(0)
    });
    for _ in 0..3 {
        let outcome = within(publisher.publish("storm", "refused").await.unwrap()).await;
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
        Err(ClientError::CircuitOpen { retry_after }) => {
            assert!(retry_after > Duration::ZERO && retry_after <= cooldown)
        }
        other => panic!("expected CircuitOpen, got {other:?}"),
    }
    assert_eq!(
        broker.broker.metrics().refusals(RejectReason::TopicFull),
        refusals_before,
        "the open breaker sent nothing"
    );

    // Room frees up; after the cool-down one probe goes through, and its success closes the
    // breaker.
    ack_one(&client, "storm").await;
    tokio::time::sleep(cooldown).await;
    assert_eq!(publisher.breaker_state(), Some(BreakerState::HalfOpen));
    let probe = publisher.publish("storm", "probe").await.unwrap();
    assert_eq!(within(probe).await, Ok(6));
    assert_eq!(publisher.breaker_state(), Some(BreakerState::Closed));
}

#[tokio::test]
async fn rate_limited_publishes_are_retried_after_the_refill_and_all_confirmed() {
    let slow = RateConfig {
        messages_per_s: 20,
        messages_burst: 5,
        ..RateConfig::default()
    };
    let key = ApiKey::with_token("slow", "token-slow", Some(slow));
    let broker = TestBroker::start_with(|c| c.keys = vec![key]).await;
    let options = ClientOptions {
        token: Some("token-slow".into()),
        ..Default::default()
    };
    let client = Client::connect_with(broker.addr, options).await.unwrap();
    // 20 publishes at once against a bucket of 5 refilling at 20/s: most are refused at first.
    // A budget and breaker loose enough for that, each publish retried as often as it takes.
    let publisher = client.publisher().with_retry(RetryPolicy {
        budget_floor: 1000,
        breaker: BreakerPolicy {
            consecutive_failures: u32::MAX,
            failure_ratio: 2.0,
            ..BreakerPolicy::default()
        },
        ..quick(1000)
    });
    let mut confirms = Vec::new();
    for i in 0..20u8 {
        confirms.push(publisher.publish("paced", vec![i]).await.unwrap());
    }
    let mut seqs = Vec::new();
    for confirm in confirms {
        seqs.push(within(confirm).await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    assert!(publisher.retries() >= 1);
    assert!(broker.broker.metrics().refusals(RejectReason::RateLimited) >= 1);
}

#[tokio::test]
async fn the_readme_retry_example_runs_against_a_broker() {
    let broker = TestBroker::start().await;
    let stdout = weir_tests::process::run_example("retry", broker.addr).await;
    for line in [
        "stored as seq 1\n",
        "stored as seq 10\n",
        "breaker: Some(Closed)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
