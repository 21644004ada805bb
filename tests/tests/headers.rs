//! Message headers are stored with the message and delivered exactly as published — from the
//! tail cache while the broker runs, and from the log after a restart — and headers the log's
//! record format cannot hold are refused up front without harming the topic.

use bytes::Bytes;
use weir_protocol::{Deliver, Frame, Headers, Limit, RejectReason};
use weir_tests::{RawClient, TestBroker};

/// Headers from `(name, value)` pairs, in order.
fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|&(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// What the tests publish: with and without headers, repeated names, empty names and values,
/// non-ASCII text, an empty payload.
fn messages() -> Vec<(Headers, Bytes)> {
    vec![
        (Headers::new(), Bytes::from_static(b"no headers")),
        (
            headers(&[("trace-id", "abc-123"), ("content-type", "text/plain")]),
            Bytes::from_static(b"two headers"),
        ),
        (
            headers(&[("tag", "a"), ("tag", "b"), ("tag", "a")]),
            Bytes::from_static(b"repeated names, in order"),
        ),
        (
            headers(&[("", ""), ("ключ", "значение ✓ 🦀")]),
            Bytes::new(),
        ),
        (Headers::new(), Bytes::from(vec![0u8, 255, 7])),
    ]
}

/// Publishes `messages` one by one to `topic`, asserting each is confirmed; returns their
/// sequences.
async fn publish(client: &mut RawClient, topic: &str, messages: &[(Headers, Bytes)]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for (headers, payload) in messages {
        match client
            .publish_with_headers(topic, headers.clone(), payload.clone())
            .await
        {
            Frame::PublishOk(ok) => seqs.push(ok.seq),
            other => panic!("expected PublishOk, got {other:?}"),
        }
    }
    seqs
}

/// Subscribes a new group and asserts it is delivered exactly `messages`, published as `seqs`.
async fn assert_delivered(
    client: &mut RawClient,
    topic: &str,
    group: &str,
    seqs: &[u64],
    messages: &[(Headers, Bytes)],
) {
    client.subscribe(1, topic, group, 100).await;
    let mut got: Vec<Deliver> = client.deliveries(messages.len()).await;
    got.sort_by_key(|d| d.seq);
    let got: Vec<(u64, Headers, Bytes)> = got
        .into_iter()
        .map(|d| (d.seq, d.headers, d.payload))
        .collect();
    let want: Vec<(u64, Headers, Bytes)> = seqs
        .iter()
        .zip(messages)
        .map(|(&seq, (h, p))| (seq, h.clone(), p.clone()))
        .collect();
    assert_eq!(got, want, "group {group}");
}

#[tokio::test]
async fn headers_are_delivered_as_published_from_the_cache_and_from_the_log() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let messages = messages();
    let seqs = publish(&mut publisher, "headers", &messages).await;
    // Just committed: served from the tail cache.
    let mut consumer = RawClient::connect(broker.addr).await;
    assert_delivered(&mut consumer, "headers", "live", &seqs, &messages).await;
    drop((publisher, consumer));

    // After a restart the cache is empty: every message comes from the log.
    let broker = broker.restart().await;
    let mut consumer = RawClient::connect(broker.addr).await;
    assert_delivered(&mut consumer, "headers", "after-restart", &seqs, &messages).await;
    // And messages published after the restart carry theirs too, next to the old ones.
    let mut publisher = RawClient::connect(broker.addr).await;
    let more = vec![(headers(&[("after", "restart")]), Bytes::from_static(b"new"))];
    let more_seqs = publish(&mut publisher, "headers", &more).await;
    assert_eq!(more_seqs, vec![seqs[seqs.len() - 1] + 1]);
    let mut late = RawClient::connect(broker.addr).await;
    let all: Vec<_> = messages.iter().chain(&more).cloned().collect();
    let all_seqs: Vec<u64> = seqs.iter().chain(&more_seqs).copied().collect();
    assert_delivered(&mut late, "headers", "late", &all_seqs, &all).await;
}

#[tokio::test]
async fn headers_past_their_bounds_are_refused_and_the_topic_stays_writable() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let refused = |frame: Frame, bound: &str, value: u64| match frame {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::MessageTooLarge);
            assert_eq!(r.limit, Limit::new(bound, value));
            assert_eq!(r.retry_after_ms, None);
        }
        other => panic!("expected Rejected naming {bound}, got {other:?}"),
    };
    // One header more than limits.max_headers (64).
    let too_many = vec![(String::new(), String::new()); 65];
    let answer = client.publish_with_headers("bounded", too_many, "x").await;
    refused(answer, "max_headers", 64);
    // One byte of names and values more than limits.max_header_bytes (16 KiB).
    let too_long = vec![("k".to_string(), "v".repeat(16 * 1024))];
    let answer = client.publish_with_headers("bounded", too_long, "x").await;
    refused(answer, "max_header_bytes", 16 * 1024);
    // A 3 MiB header is answered from its first bytes, never buffered.
    let huge = vec![("k".to_string(), "v".repeat(3 << 20))];
    let answer = client.publish_with_headers("bounded", huge, "x").await;
    refused(answer, "max_header_bytes", 16 * 1024);
    assert_eq!(broker.broker.metrics().frames_shed.get(), 1);
    // Within the bounds, headers are stored and delivered as sent.
    let messages = messages();
    let seqs = publish(&mut client, "bounded", &messages).await;
    assert_eq!(seqs, (1..=messages.len() as u64).collect::<Vec<_>>());
    assert_delivered(&mut client, "bounded", "g", &seqs, &messages).await;
}

#[tokio::test]
async fn header_bytes_count_against_the_topic_s_bounds_and_its_shown_bytes() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let spec = weir_protocol::TopicSpec {
        name: "small".into(),
        max_message_bytes: Some(16),
        max_bytes: Some(1024),
        ..Default::default()
    };
    client.create_topic(spec).await;
    // An empty payload with 20 bytes of header is larger than max_message_bytes 16.
    let big_header = vec![("k".to_string(), "v".repeat(19))];
    match client.publish_with_headers("small", big_header, "").await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::MessageTooLarge);
            assert_eq!(r.limit, Limit::new("max_message_bytes", 16));
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // 64 messages of 6 bytes of header and 10 of payload fill max_bytes 1024 exactly.
    for _ in 0..64 {
        let header = vec![("key".to_string(), "val".to_string())];
        let answer = client
            .publish_with_headers("small", header, [0u8; 10].to_vec())
            .await;
        assert!(matches!(answer, Frame::PublishOk(_)), "{answer:?}");
    }
    let header = vec![("key".to_string(), "val".to_string())];
    match client
        .publish_with_headers("small", header, [0u8; 10].to_vec())
        .await
    {
        Frame::Rejected(r) => assert_eq!(r.limit, Limit::new("max_bytes", 1024)),
        other => panic!("expected the topic full, got {other:?}"),
    }
    let info = weir_tests::wire::wait_for_topic(&mut client, "small", |_| true).await;
    assert_eq!(
        (info.depth, info.bytes),
        (64, 1024),
        "header bytes are shown"
    );
}
