//! Unacked messages of a subscriber that leaves go back to its group, with attempt + 1 (on a
//! paused broker clock where timing matters: only the departure can return them).

use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{Ack, Frame, Unsubscribe};
use weir_tests::wire::wait_for_topic;
use weir_tests::{RawClient, TestBroker};

#[tokio::test]
async fn a_disconnected_member_s_unacked_messages_go_to_another_member_with_attempt_2() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher
        .publish_all("redeliver", (0..5).map(|i| Bytes::from(format!("m{i}"))))
        .await;

    let mut first = RawClient::connect(broker.addr).await;
    first.subscribe(1, "redeliver", "workers", 5).await;
    let taken = first.deliveries(5).await;
    assert!(taken.iter().all(|d| d.attempt == 1));
    drop(first); // disconnect without acking

    let mut second = RawClient::connect(broker.addr).await;
    second.subscribe(7, "redeliver", "workers", 10).await;
    let again = second.deliveries(5).await;
    let mut seqs: Vec<u64> = again.iter().map(|d| d.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, taken.iter().map(|d| d.seq).collect::<Vec<_>>());
    assert!(
        again.iter().all(|d| d.attempt == 2 && d.sub == 7),
        "{again:?}"
    );
    let payloads: Vec<Bytes> = again.iter().map(|d| d.payload.clone()).collect();
    assert!(taken.iter().all(|d| payloads.contains(&d.payload)));
}

#[tokio::test]
async fn unsubscribe_returns_unacked_messages_and_acked_ones_stay_acked() {
    // A paused clock: no ack deadline can pass, so every redelivery here is the unsubscribe's.
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher
        .publish_all("unsub", (0..4).map(|i| Bytes::from(vec![i])))
        .await;
    let mut client = RawClient::connect(broker.addr).await;
    client.subscribe(1, "unsub", "g", 4).await;
    client.deliveries(4).await;
    client
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: vec![1, 3],
        }))
        .await;
    client
        .send(Frame::Unsubscribe(Unsubscribe { sub: 1 }))
        .await;
    assert!(matches!(client.recv().await, Frame::Unsubscribed(u) if u.sub == 1));
    client.subscribe(2, "unsub", "g", 10).await;
    let again = client.deliveries(2).await;
    assert_eq!(
        again.iter().map(|d| (d.seq, d.attempt)).collect::<Vec<_>>(),
        vec![(2, 2), (4, 2)]
    );
    assert!(client
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());
    let info = wait_for_topic(&mut publisher, "unsub", |t| t.groups[0].in_flight == 2).await;
    assert_eq!(
        info.depth, 3,
        "seq 1 is acked by the only group and no longer stored"
    );
}

#[tokio::test]
async fn groups_fan_out_and_members_of_one_group_split_the_messages() {
    // A paused clock: no ack deadline can pass, so no message is delivered twice.
    let broker = TestBroker::start_paused_with(|_| {}).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let mut audit = RawClient::connect(broker.addr).await;
    let mut w1 = RawClient::connect(broker.addr).await;
    let mut w2 = RawClient::connect(broker.addr).await;
    audit.subscribe(1, "fan", "audit", 100).await;
    w1.subscribe(1, "fan", "work", 100).await;
    w2.subscribe(1, "fan", "work", 100).await;
    publisher
        .publish_all("fan", (0..40).map(|i| Bytes::from(vec![i])))
        .await;
    let all = audit.deliveries(40).await;
    assert_eq!(
        all.iter().map(|d| d.seq).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    wait_for_topic(&mut publisher, "fan", |t| {
        t.groups.iter().all(|g| g.in_flight == 40)
    })
    .await;
    let mut split = Vec::new();
    let mut counts = Vec::new();
    for w in [&mut w1, &mut w2] {
        let mut n = 0;
        while let Some(Frame::Deliver(d)) = w.recv_within(Duration::from_millis(200)).await {
            split.push(d.seq);
            n += 1;
        }
        counts.push(n);
    }
    split.sort_unstable();
    assert_eq!(
        split,
        (1..=40).collect::<Vec<_>>(),
        "each message exactly once across the group"
    );
    assert!(
        counts.iter().all(|&n| n > 0),
        "both members got work: {counts:?}"
    );
}
