//! The client library end to end: publish window, confirms, ack-paced subscriptions, typed
//! refusals, and the README's quickstart example.

use std::time::Duration;

use futures::StreamExt;
use weir_client::{
    Client, ClientError, Delivery, PublishError, RejectReason, Subscription, TopicSpec,
};
use weir_tests::TestBroker;

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
    let refused = publisher
        .publish("tiny", "no room")
        .await
        .unwrap()
        .await
        .unwrap_err();
    match &refused {
        PublishError::Rejected {
            reason,
            limit,
            retry_after_ms,
        } => {
            assert_eq!(*reason, RejectReason::TopicFull);
            assert_eq!((limit.name.as_str(), limit.value), ("max_messages", 3));
            assert!(retry_after_ms.is_some());
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(refused.retry_after().is_some());
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
