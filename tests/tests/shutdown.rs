//! Graceful shutdown in-process: it is bounded even when a client never reads.
//! (The signal-driven shutdown of the real binary is tested in `durability`.)

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Encoder;
use weir_protocol::{Frame, WeirCodec};
use weir_tests::{RawClient, TestBroker};

#[tokio::test]
async fn shutdown_completes_even_when_a_client_never_reads() {
    let mut broker = TestBroker::start_with(|c| c.limits.shutdown_grace_ms = 200).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publisher
        .publish_all("flood", (0..64).map(|_| Bytes::from(vec![1u8; 64 * 1024])))
        .await;

    // A client that takes 4 MiB of deliveries and a flood of pings, and reads none of it: its
    // socket and then its outbound queues fill, and the broker blocks writing to it.
    let mut stuck = RawClient::connect(broker.addr).await;
    stuck.subscribe(1, "flood", "g", 64).await;
    let mut pings = BytesMut::new();
    for nonce in 0..50_000u64 {
        WeirCodec::default()
            .encode(Frame::Ping(nonce), &mut pings)
            .unwrap();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stuck.stream().write_all(&pings)).await;

    let stopped = tokio::time::timeout(Duration::from_secs(30), broker.stop()).await;
    assert!(
        stopped.is_ok(),
        "shutdown hung on a client that never reads"
    );
    // The well-behaved publisher was told to go away.
    let mut saw_going_away = false;
    while let Some(frame) = publisher.recv_or_closed().await {
        saw_going_away |= matches!(frame, Frame::GoingAway(_));
    }
    assert!(saw_going_away);
}
