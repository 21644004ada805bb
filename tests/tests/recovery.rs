//! Restart recovers topics, groups, cursors and unacked messages; acked segments are deleted.

use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{Ack, Frame, TopicSpec};
use weir_tests::wire::wait_for_topic;
use weir_tests::{dir_size, wait_for_dir_size_at_most, RawClient, TestBroker};

#[tokio::test]
async fn a_restart_keeps_topics_cursors_acks_and_redelivers_what_was_in_flight() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let spec = TopicSpec {
        name: "kept".into(),
        max_messages: Some(500),
        ..TopicSpec::default()
    };
    assert!(matches!(
        client.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
    client
        .publish_all("kept", (1..=100).map(|i| Bytes::from(format!("m{i}"))))
        .await;
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "kept", "g", 60).await;
    let got = consumer.deliveries(60).await;
    // Ack the first 50; 51..=60 stay in flight across the restart.
    consumer
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: got[..50].iter().map(|d| d.seq).collect(),
        }))
        .await;
    wait_for_topic(&mut client, "kept", |t| t.depth == 50).await;
    drop((client, consumer));

    let broker = broker.restart().await;
    let mut client = RawClient::connect(broker.addr).await;
    let info = client.list().await;
    assert_eq!(info.len(), 1);
    assert_eq!(
        (info[0].config.max_messages, info[0].depth, info[0].next_seq),
        (500, 50, 101)
    );
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "kept", "g", 100).await;
    let after = consumer.deliveries(50).await;
    let mut seen: Vec<(u64, u32)> = after.iter().map(|d| (d.seq, d.attempt)).collect();
    seen.sort_unstable();
    let expected: Vec<(u64, u32)> = (51..=60)
        .map(|s| (s, 2))
        .chain((61..=100).map(|s| (s, 1)))
        .collect();
    assert_eq!(
        seen, expected,
        "acked messages came back, or in-flight ones lost their attempt count"
    );
    assert!(consumer
        .recv_within(Duration::from_millis(200))
        .await
        .is_none());
    // Sequence numbers continue after the restart.
    assert_eq!(
        client
            .publish_all("kept", [Bytes::from_static(b"next")])
            .await,
        vec![101]
    );
}

#[tokio::test]
async fn fully_acked_segments_are_deleted_from_disk() {
    let broker = TestBroker::start_with(|c| c.storage.segment_bytes = 64 * 1024).await;
    let mut client = RawClient::connect(broker.addr).await;
    let payloads: Vec<Bytes> = (0..2000).map(|_| Bytes::from(vec![7u8; 1024])).collect();
    for chunk in payloads.chunks(500) {
        client.publish_all("reclaim", chunk.to_vec()).await;
    }
    let topic_dir = broker.dir.path().join("topics").join("reclaim");
    let before = dir_size(&topic_dir);
    assert!(
        before > 2000 * 1024,
        "the log holds every message: {before} bytes"
    );

    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.consume(1, "reclaim", "g", 2000).await;
    wait_for_topic(&mut client, "reclaim", |t| t.depth == 0).await;
    // Segment deletion follows the acks asynchronously; at most the active segment (plus its
    // checkpoint files) may remain.
    let after = wait_for_dir_size_at_most(&topic_dir, 2 * 64 * 1024, Duration::from_secs(20)).await;
    assert!(
        after <= 2 * 64 * 1024,
        "acked data still on disk: {after} of {before} bytes"
    );
}
