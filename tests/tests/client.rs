//! The client library end to end: publish window, confirms, ack-paced subscriptions, typed
//! refusals, the README's quickstart example, and reconnecting after an idle close.

use std::time::Duration;

use futures::StreamExt;
use weir_client::{
    Client, ClientError, Delivery, GoingAwayReason, PublishError, RejectReason, Subscription,
    TopicSpec,
};
use weir_tests::{eventually, TestBroker};

/// The next delivery; fails the test if none arrives in 20 s or the stream ends or errs.
async fn next(sub: &mut Subscription) -> Delivery {
    let next = tokio::time::timeout(Duration::from_secs(20), sub.next()).await;
    next.expect("a delivery within 20 s")
        .expect("stream open")
        .expect("delivery")
}

#[tokio::test]
async fn publish_subscribe_ack_round_trip_paced_by_acks() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let publisher = client.publisher();
    let mut confirms = Vec::new();
    for i in 0..100 {
        confirms.push(
            publisher
                .publish("orders", format!("order-{i}"))
                .await
                .unwrap(),
        );
    }
    let mut seqs = Vec::new();
    for confirm in confirms {
        seqs.push(confirm.await.unwrap());
    }
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());

    // A window of 10 drains 100 messages only because acks return credit.
    let mut sub = client.subscribe("orders", "billing", 10).await.unwrap();
    for i in 0..100u64 {
        let delivery = next(&mut sub).await;
        assert_eq!((delivery.seq(), delivery.attempt()), (i + 1, 1));
        assert_eq!(delivery.payload(), format!("order-{i}").as_bytes());
        delivery.ack();
    }
    sub.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let topics = client.list_topics().await.unwrap();
        if topics[0].depth == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks never applied: {topics:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_groups_each_get_every_message() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    // Both groups exist before anything is acked: retention is "acked by every group".
    let mut subs = Vec::new();
    for group in ["audit", "search"] {
        subs.push((group, client.subscribe("events", group, 5).await.unwrap()));
    }
    let publisher = client.publisher();
    for i in 0..20 {
        publisher
            .publish_and_wait("events", format!("e{i}"))
            .await
            .unwrap();
    }
    for (group, mut sub) in subs {
        let mut got = Vec::new();
        while got.len() < 20 {
            let d = next(&mut sub).await;
            got.push(d.seq());
            d.ack();
        }
        assert_eq!(got, (1..=20).collect::<Vec<_>>(), "group {group}");
    }
}

// current_thread: the connection task cannot run (and free a slot) between the try_publish calls.
#[tokio::test(flavor = "current_thread")]
async fn try_publish_fails_fast_with_window_full_and_publish_waits_for_a_slot() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let publisher = client.publisher_with_window(2);
    let a = publisher.try_publish("w", "a").unwrap();
    let b = publisher.try_publish("w", "b").unwrap();
    assert!(matches!(
        publisher.try_publish("w", "c"),
        Err(ClientError::WindowFull)
    ));
    // publish() waits for a slot instead of failing, and gets one once a confirm arrives.
    let c = tokio::time::timeout(Duration::from_secs(20), publisher.publish("w", "c"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.await.unwrap(), b.await.unwrap(), c.await.unwrap()),
        (1, 2, 3)
    );
}

/// Publishes to `topic`, which must refuse; returns the refusal.
async fn refused_publish(publisher: &weir_client::Publisher, topic: &str) -> PublishError {
    let confirm = publisher.publish(topic, "no room").await.unwrap();
    confirm.await.unwrap_err()
}

#[tokio::test]
async fn a_full_topic_is_a_typed_refusal_with_a_retry_hint() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let spec = TopicSpec {
        name: "tiny".into(),
        max_messages: Some(3),
        ..Default::default()
    };
    assert_eq!(client.create_topic(spec).await.unwrap().max_messages, 3);
    let publisher = client.publisher();
    for i in 0..3 {
        publisher.publish_and_wait("tiny", vec![i]).await.unwrap();
    }
    let refused = refused_publish(&publisher, "tiny").await;
    match &refused {
        PublishError::Rejected {
            reason,
            limit,
            retry_after_ms,
            held_by,
        } => {
            assert_eq!(*reason, RejectReason::TopicFull);
            assert_eq!((limit.name.as_str(), limit.value), ("max_messages", 3));
            assert!(retry_after_ms.is_some());
            assert_eq!(*held_by, None, "no group: the bound alone holds the topic");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(refused.retry_after().is_some());

    // Two groups: "fast" acks the first message, "slow" acks nothing. The refusal names the
    // group holding the oldest unacked message.
    let mut fast = client.subscribe("tiny", "fast", 1).await.unwrap();
    let mut slow = client.subscribe("tiny", "slow", 1).await.unwrap();
    fast.next().await.unwrap().unwrap().ack();
    let _held = slow.next().await.unwrap().unwrap();
    let fast_acked = || async {
        let d = client.describe_topic("tiny").await.unwrap();
        // 3 stored: acked, fast holds the other two (in flight or not yet delivered).
        d.info
            .groups
            .iter()
            .any(|g| g.name == "fast" && g.in_flight + g.pending == 2)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !fast_acked().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fast's ack never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = refused_publish(&publisher, "tiny").await;
    match refused {
        PublishError::Rejected { held_by, .. } => assert_eq!(held_by.as_deref(), Some("slow")),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dropped_subscription_s_messages_are_redelivered_with_attempt_2() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let publisher = client.publisher();
    for i in 0..5 {
        publisher.publish_and_wait("jobs", vec![i]).await.unwrap();
    }
    {
        let other = Client::connect(broker.addr).await.unwrap();
        let mut sub = other.subscribe("jobs", "workers", 5).await.unwrap();
        for _ in 0..5 {
            let d = next(&mut sub).await;
            assert_eq!(d.attempt(), 1);
            drop(d); // never acked
        }
    } // the second client disconnects
    let mut sub = client.subscribe("jobs", "workers", 5).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = next(&mut sub).await;
        seen.push((d.seq(), d.attempt()));
        d.ack();
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=5).map(|s| (s, 2)).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_readme_quickstart_example_runs_against_a_broker() {
    let broker = TestBroker::start().await;
    let stdout = weir_tests::process::run_example("quickstart", broker.addr).await;
    for line in ["stored as seq 3", "got seq 1: one", "got seq 3: three"] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[tokio::test]
async fn a_subscriber_of_a_drop_oldest_topic_is_told_what_it_missed_and_carries_on() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let spec = TopicSpec {
        name: "ticks".into(),
        max_messages: Some(5),
        overflow: Some(weir_client::OverflowPolicy::DropOldest),
        ..Default::default()
    };
    client.create_topic(spec).await.unwrap();
    let mut sub = client.subscribe("ticks", "ui", 1).await.unwrap();
    let publisher = client.publisher();
    publisher.publish_and_wait("ticks", "t1").await.unwrap();
    let first = next(&mut sub).await; // held unacked: the group lags
    for i in 2..=20 {
        publisher
            .publish_and_wait("ticks", format!("t{i}"))
            .await
            .unwrap();
    }
    // The stream reports the evicted range (in one or more notices), then goes on.
    let mut missed = 0;
    while missed < 15 {
        match tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap()
            .unwrap()
        {
            Err(ClientError::MessagesDropped { from, to }) => missed += to - from + 1,
            other => panic!("expected MessagesDropped, got {other:?}"),
        }
    }
    assert_eq!(
        (missed, sub.dropped()),
        (15, 15),
        "seqs 1..=15 were evicted"
    );
    first.ack();
    let d = next(&mut sub).await;
    assert_eq!((d.seq(), d.payload().as_ref()), (16, &b"t16"[..]));
}

/// Options with reconnecting off (`weir_client::ReconnectPolicy::disabled`): the behaviour
/// these tests pin down; reconnecting is tested in `reconnect.rs`.
fn reconnecting_off() -> weir_client::ClientOptions {
    weir_client::ClientOptions {
        reconnect: weir_client::ReconnectPolicy::disabled(),
        ..Default::default()
    }
}

/// A broker that closes connections idle for 200 ms.
async fn idle_closing_broker() -> TestBroker {
    TestBroker::start_with(|c| c.limits.idle_timeout_ms = 200).await
}

/// Every idle close was followed by exactly one new connection, on top of the first one.
/// Asserted while a subscription pins the live connection, so no idle close can be pending.
fn one_reconnect_per_idle_close(broker: &TestBroker) {
    let metrics = broker.broker.metrics();
    let idle_closed = metrics.idle_closed.get();
    assert!(idle_closed >= 1, "the broker closed the client as idle");
    assert_eq!(
        broker.broker.connections_served(),
        1 + idle_closed,
        "one connection, then one per idle close"
    );
}

#[tokio::test]
async fn after_an_idle_close_the_next_operations_reconnect_without_an_error() {
    let broker = idle_closing_broker().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let publisher = client.publisher();
    let metrics = broker.broker.metrics().clone();
    eventually("the broker closes the idle connection", || {
        metrics.idle_closed.get() == 1
    })
    .await;
    assert!(
        !client.is_closed(),
        "an idle close does not close the client"
    );
    assert!(client.closed_reason().is_none());

    // A publisher made before the close, then an admin request, then a subscribe.
    assert_eq!(
        publisher.publish_and_wait("orders", "one").await.unwrap(),
        1
    );
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].config.name, "orders");
    let mut sub = client.subscribe("orders", "billing", 10).await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!((delivery.seq(), &delivery.payload()[..]), (1, &b"one"[..]));
    delivery.ack();
    assert!(client.is_connected());
    one_reconnect_per_idle_close(&broker);
}

#[tokio::test]
async fn several_tasks_needing_the_connection_after_an_idle_close_share_one_reconnect() {
    let broker = idle_closing_broker().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let publishers = [client.publisher(), client.publisher()];
    let metrics = broker.broker.metrics().clone();
    eventually("the broker closes the idle connection", || {
        metrics.idle_closed.get() == 1
    })
    .await;
    eventually("the client sees the close", || !client.is_connected()).await;

    let start = std::sync::Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        // Clones of the publishers made before the close, and one made after.
        let publisher = match i % 3 {
            0 => client.publisher(),
            n => publishers[n - 1].clone(),
        };
        let start = start.clone();
        tasks.spawn(async move {
            start.wait().await;
            publisher
                .publish_and_wait("orders", format!("m{i}"))
                .await
                .map(|_| ())
        });
    }
    for _ in 0..2 {
        let (client, start) = (client.clone(), start.clone());
        tasks.spawn(async move {
            start.wait().await;
            client.list_topics().await.map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let _pin = client.subscribe("orders", "billing", 1).await.unwrap();
    one_reconnect_per_idle_close(&broker);
    assert_eq!(client.list_topics().await.unwrap()[0].depth, 8);
}

#[tokio::test]
async fn a_broker_shutting_down_is_not_reconnected_to_with_reconnecting_off() {
    let mut broker = TestBroker::start().await;
    let client = Client::connect_with(broker.addr, reconnecting_off())
        .await
        .unwrap();
    let publisher = client.publisher();
    broker.stop().await;
    let shutting_down = |e: &ClientError| {
        matches!(
            e,
            ClientError::GoingAway {
                reason: GoingAwayReason::ShuttingDown,
                ..
            }
        )
    };
    let err = client.list_topics().await.unwrap_err();
    assert!(shutting_down(&err), "{err}");
    assert!(client.is_closed());
    assert!(client.closed_reason().as_ref().is_some_and(shutting_down));
    let err = publisher.publish("orders", "x").await.unwrap_err();
    assert!(shutting_down(&err), "{err}");
    assert_eq!(broker.broker.connections_served(), 1);
}

#[tokio::test]
async fn a_reconnect_to_a_broker_gone_after_an_idle_close_fails_with_its_error() {
    let mut broker = idle_closing_broker().await;
    let client = Client::connect_with(broker.addr, reconnecting_off())
        .await
        .unwrap();
    let metrics = broker.broker.metrics().clone();
    eventually("the broker closes the idle connection", || {
        metrics.idle_closed.get() == 1
    })
    .await;
    broker.stop().await;

    let refused = |e: &ClientError| matches!(e, ClientError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
    let err = client.list_topics().await.unwrap_err();
    assert!(refused(&err), "{err}");
    assert!(!client.is_closed(), "the next operation tries again");
    // A publish waits for its own attempt, and its confirm says it was never sent.
    let confirm = client.publisher().publish("orders", "x").await.unwrap();
    match confirm.await {
        Err(PublishError::NotSent(e)) => assert!(refused(&e), "{e}"),
        other => panic!("expected NotSent, got {other:?}"),
    }
    let err = client.ping().await.unwrap_err();
    assert!(refused(&err), "{err}");
}
