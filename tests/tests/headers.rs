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
async fn headers_the_log_cannot_hold_are_refused_and_the_topic_stays_writable() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    // 65 536 empty headers fit easily in a frame (2 bytes each) but not in a log record.
    let too_many = vec![(String::new(), String::new()); 65_536];
    match client
        .publish_with_headers("bounded", too_many, "refused")
        .await
    {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::MessageTooLarge);
            assert_eq!(r.limit, Limit::new("max_headers", 65_535));
            assert_eq!(r.retry_after_ms, None);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let messages = messages();
    let seqs = publish(&mut client, "bounded", &messages).await;
    assert_eq!(seqs, (1..=messages.len() as u64).collect::<Vec<_>>());
    assert_delivered(&mut client, "bounded", "g", &seqs, &messages).await;
}
