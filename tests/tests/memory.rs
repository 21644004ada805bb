//! The memory budget: many publishers with large payloads against a slow consumer. The broker
//! refuses what it cannot hold (`Rejected{Overloaded}` naming `memory_budget_bytes`), its RSS
//! stays under the budget plus a stated constant, and nothing it confirmed is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_protocol::{Ack, Credit, Frame, RejectReason};
use weir_tests::{BrokerProcess, RawClient};

const MIB: u64 = 1024 * 1024;
/// The budget under test.
const BUDGET: u64 = 16 * MIB;
/// What the broker's RSS may hold beyond the budget, stated: its idle baseline (about 33 MiB
/// for the debug binary: runtime, thread stacks, sled and its cache), what the budget counts
/// but never refuses (each connection's first 64 KiB of read buffer, the consumer's credit of
/// deliveries: 4 × 256 KiB), and allocator slack (freed payloads stay in the allocator's
/// per-thread arenas). Read buffers, tail caches and queued deliveries are inside the budget.
const OUTSIDE_BUDGET: u64 = 72 * MIB;
const PUBLISHERS: u64 = 8;
const PER_PUBLISHER: u64 = 160;
const PAYLOAD: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_publishes_are_refused_rss_stays_bounded_and_nothing_confirmed_is_lost(
) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nmemory_budget_bytes = {BUDGET}\n[topic_defaults]\nmax_messages = 1000000\nmax_bytes = {}\n",
            4096 * MIB
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let broker = Arc::new(BrokerProcess::start(
        &data,
        &["--config", config.to_str().unwrap()],
    ));
    let addr = broker.addr;

    // A slow consumer: credit 4, acks one message every 20 ms.
    let mut consumer = RawClient::connect(addr).await;
    consumer.subscribe(1, "big", "slow", 4).await;
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer_task = {
        let (consumed, stop) = (consumed.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(Frame::Deliver(d)) =
                    consumer.recv_within(Duration::from_millis(50)).await
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    consumer
                        .send(Frame::Ack(Ack {
                            sub: 1,
                            seqs: vec![d.seq],
                        }))
                        .await;
                    consumer.send(Frame::Credit(Credit { sub: 1, n: 1 })).await;
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Sample the broker's RSS while the publishers run.
    let peak = Arc::new(AtomicU64::new(broker.rss_bytes()));
    let sampler = {
        let (broker, peak, stop) = (broker.clone(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(broker.rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let payload = Bytes::from(vec![0x5A; PAYLOAD]);
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut client = RawClient::connect(addr).await;
                let ids = (0..PER_PUBLISHER).map(|i| p * 1000 + i + 1);
                client
                    .feed_publishes("big", ids.map(|id| (id, payload.clone())))
                    .await;
                let (mut confirmed, mut refused) = (0u64, 0u64);
                for _ in 0..PER_PUBLISHER {
                    match client.recv().await {
                        Frame::PublishOk(_) => confirmed += 1,
                        Frame::Rejected(r) => {
                            assert_eq!(r.reason, RejectReason::Overloaded, "{r:?}");
                            assert_eq!(
                                (r.limit.name.as_str(), r.limit.value),
                                ("memory_budget_bytes", BUDGET)
                            );
                            assert!(r.retry_after_ms.is_some());
                            refused += 1;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                (confirmed, refused)
            })
        })
        .collect();
    let (mut confirmed, mut refused) = (0, 0);
    for p in publishers {
        let (c, r) = p.await.unwrap();
        confirmed += c;
        refused += r;
    }
    stop.store(true, Ordering::Relaxed);
    consumer_task.await.unwrap();
    sampler.await.unwrap();

    let peak = peak.load(Ordering::Relaxed);
    assert!(
        refused > 0,
        "{} MiB offered at once never hit a {} MiB budget",
        PUBLISHERS * PER_PUBLISHER / 4,
        BUDGET / MIB
    );
    assert!(confirmed > 0);
    assert!(
        peak < BUDGET + OUTSIDE_BUDGET,
        "broker RSS peaked at {} MiB, over the budget ({} MiB) + the stated {} MiB",
        peak / MIB,
        BUDGET / MIB,
        OUTSIDE_BUDGET / MIB
    );
    // Nothing confirmed is lost: every confirmed message was consumed or is still stored.
    let mut admin = RawClient::connect(addr).await;
    let info =
        weir_tests::wire::wait_for_topic(&mut admin, "big", |t| t.next_seq == confirmed + 1).await;
    let acked = consumed.load(Ordering::Relaxed);
    assert!(
        info.depth + acked >= confirmed,
        "depth {} + acked {acked} < confirmed {confirmed}",
        info.depth
    );
    eprintln!(
        "memory budget test: confirmed {confirmed}, refused {refused}, peak RSS {} MiB (budget {} MiB)",
        peak / MIB,
        BUDGET / MIB
    );
}
