//! Bad input gets a typed error and closes that one connection; nobody else is affected.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use weir_protocol::{ErrorCode, Frame, Hello, ListTopics};
use weir_tests::{RawClient, TestBroker};

/// 64 KiB frames (and a message bound that fits in them).
fn small_frames(config: &mut weir_broker::Config) {
    config.limits.max_frame_bytes = 64 * 1024;
    config.topic_defaults.max_message_bytes = 32 * 1024;
}

/// Expects a typed error with `code`, then the connection closing.
async fn expect_error_then_close(client: &mut RawClient, code: ErrorCode) {
    match client.recv_or_closed().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, code, "{e:?}"),
        other => panic!("expected Error({code:?}), got {other:?}"),
    }
    assert!(
        client.recv_or_closed().await.is_none(),
        "connection stayed open after a bad frame"
    );
}

/// Publishes 1 000 messages on a healthy connection while `attack` runs on another, then
/// checks every one was confirmed and is consumable.
async fn healthy_client_is_unaffected_by<F, Fut>(attack: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let broker = TestBroker::start_with(small_frames).await;
    let mut good = RawClient::connect(broker.addr).await;
    let payloads: Vec<Bytes> = (0..1000)
        .map(|i| Bytes::from(format!("good-{i}")))
        .collect();
    let (seqs, ()) = tokio::join!(
        good.publish_all("safe", payloads.clone()),
        attack(broker.addr)
    );
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    let mut consumer = RawClient::connect(broker.addr).await;
    let got = consumer.consume(1, "safe", "g", 1000).await;
    assert_eq!(
        got.into_iter().map(|d| d.payload).collect::<Vec<_>>(),
        payloads
    );
}

#[tokio::test]
async fn garbage_bytes_get_malformed_frame_and_a_close() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    // A 10-byte body whose header length points past the frame, then noise.
    client
        .stream()
        .write_all(&[0, 0, 0, 10, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    expect_error_then_close(&mut client, ErrorCode::MalformedFrame).await;
}

#[tokio::test]
async fn an_unknown_frame_kind_is_malformed() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let mut body = BytesMut::new();
    body.put_u32(0); // length placeholder
    body.put_u32(1);
    body.put_u8(200); // no such frame variant
    let len = (body.len() - 4) as u32;
    body[..4].copy_from_slice(&len.to_be_bytes());
    client.stream().write_all(&body).await.unwrap();
    expect_error_then_close(&mut client, ErrorCode::MalformedFrame).await;
}

#[tokio::test]
async fn an_oversized_frame_gets_frame_too_large_and_a_close() {
    let broker = TestBroker::start_with(small_frames).await;
    let mut client = RawClient::connect(broker.addr).await;
    let mut bytes = BytesMut::new();
    bytes.put_u32(1024 * 1024);
    bytes.put_bytes(7, 100 * 1024);
    client.stream().write_all(&bytes).await.unwrap();
    expect_error_then_close(&mut client, ErrorCode::FrameTooLarge).await;
}

#[tokio::test]
async fn a_frame_before_hello_or_a_wrong_version_is_refused() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_raw(broker.addr).await;
    client
        .send(Frame::ListTopics(ListTopics {
            req: 1,
            after: None,
            limit: 0,
        }))
        .await;
    expect_error_then_close(&mut client, ErrorCode::HelloRequired).await;
    // Older than any the broker speaks: refused.
    let mut client = RawClient::connect_raw(broker.addr).await;
    client
        .send(Frame::Hello(Hello {
            version: weir_protocol::MIN_PROTOCOL_VERSION - 1,
            token: None,
        }))
        .await;
    expect_error_then_close(&mut client, ErrorCode::UnsupportedVersion).await;
    // Newer: answered with the highest version the broker speaks, for the client to accept
    // or refuse.
    let mut client = RawClient::connect_raw(broker.addr).await;
    client
        .send(Frame::Hello(Hello {
            version: 999,
            token: None,
        }))
        .await;
    match client.recv().await {
        Frame::HelloOk(ok) => assert_eq!(ok.version, weir_protocol::PROTOCOL_VERSION),
        other => panic!("expected HelloOk, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_and_oversized_frames_on_other_connections_do_not_disturb_a_healthy_one() {
    healthy_client_is_unaffected_by(|addr| async move {
        for round in 0..20 {
            let mut bad = RawClient::connect(addr).await;
            if round % 2 == 0 {
                bad.stream()
                    .write_all(b"\x00\x00\x00\x08garbage!")
                    .await
                    .unwrap();
                expect_error_then_close(&mut bad, ErrorCode::MalformedFrame).await;
            } else {
                bad.stream()
                    .write_all(&(10 * 1024 * 1024u32).to_be_bytes())
                    .await
                    .unwrap();
                expect_error_then_close(&mut bad, ErrorCode::FrameTooLarge).await;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn clients_vanishing_mid_frame_and_mid_stream_do_not_disturb_a_healthy_one() {
    healthy_client_is_unaffected_by(|addr| async move {
        for _ in 0..10 {
            // Half a publish frame, then gone.
            let mut half = RawClient::connect(addr).await;
            half.stream()
                .write_all(&[0, 0, 0, 200, 0, 0, 0, 10, 6])
                .await
                .unwrap();
            drop(half);
            // A subscriber that takes messages of its own group and vanishes without acking.
            // Each vanishing counts as an attempt: with more attempts than takers, no message
            // is dead-lettered (and so acked by "takers") before the healthy group exists.
            let mut taker = RawClient::connect(addr).await;
            let spec = weir_protocol::GroupSpec {
                max_attempts: Some(100),
                ..Default::default()
            };
            taker.subscribe_with(1, "safe", "takers", 50, spec).await;
            drop(taker);
        }
    })
    .await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_unauthorized_and_a_close_while_a_valid_key_works() {
    let broker = TestBroker::start_with(|c| {
        c.keys = vec![weir_broker::ApiKey::with_token("billing", "s3cret", None)];
    })
    .await;
    for token in [None, Some("wrong".to_string())] {
        let mut client = RawClient::connect_raw(broker.addr).await;
        client
            .send(Frame::Hello(Hello {
                version: weir_protocol::PROTOCOL_VERSION,
                token,
            }))
            .await;
        expect_error_then_close(&mut client, ErrorCode::Unauthorized).await;
    }
    let options = weir_client::ClientOptions {
        token: Some("s3cret".into()),
        ..Default::default()
    };
    let client = weir_client::Client::connect_with(broker.addr, options)
        .await
        .expect("a valid key connects");
    assert_eq!(
        client
            .publisher()
            .publish_and_wait("t", "ok")
            .await
            .unwrap(),
        1
    );
}
