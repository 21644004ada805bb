//! Every broker-held buffer draws from the one memory budget: deliveries waiting for a slow
//! reader (the outbound half, and the reader's own share), read buffers and tail caches (the
//! inbound half). A reader that stops holds its share and no more: the rest waits in the log
//! and nobody is refused. (Refusals at the inbound half, and the RSS side, are in `memory.rs`;
//! the per-connection isolation cases are in `isolation.rs`.)

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use weir_protocol::{Ack, Frame};
use weir_tests::{eventually, RawClient, TestBroker};

const MIB: u64 = 1024 * 1024;
const BUDGET: u64 = 4 * MIB;
const MESSAGE: usize = 256 * 1024;

async fn broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.limits.memory_budget_bytes = BUDGET;
        c.limits.max_frame_bytes = (MIB + 4096) as u32;
        c.limits.max_credit = 1000;
        c.storage.tail_cache_bytes = 0;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_a_reader_that_stops_hold_at_most_its_share_and_wait_in_the_log() {
    let broker = broker().await;
    let admission = broker.broker.admission().clone();
    // The share is at most half the budget: 2 MiB here.
    let share = BUDGET / 2;
    // A subscriber that asks for a lot and then does not read its socket.
    let mut reader = RawClient::connect(broker.addr).await;
    reader.subscribe(1, "t", "g", 1000).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let payload = Bytes::from(vec![7u8; MESSAGE]);
    // 25 MiB for a reader that takes nothing: every publish is confirmed, none refused.
    let mut confirmed = Vec::new();
    for _ in 0..100 {
        match publisher.publish("t", payload.clone()).await {
            Frame::PublishOk(ok) => confirmed.push(ok.seq),
            other => panic!("a reader that stopped made a publisher wait or fail: {other:?}"),
        }
        assert!(
            admission.outbound().used() <= share,
            "deliveries hold {} bytes, over the reader's share",
            admission.outbound().used()
        );
    }
    assert!(admission.outbound().high_water() <= share);
    assert!(
        admission.budget().high_water() <= BUDGET,
        "the budget peaked at {}",
        admission.budget().high_water()
    );
    assert_eq!(
        broker.broker.metrics().rejected.get(),
        0,
        "nothing was refused"
    );

    // The reader catches up: every confirmed message arrives, in order, and the memory drains.
    let delivered = reader.deliveries(confirmed.len()).await;
    let seqs: Vec<u64> = delivered.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, confirmed, "nothing confirmed is lost");
    reader
        .send(Frame::Ack(Ack {
            sub: 1,
            seqs: seqs.clone(),
        }))
        .await;
    eventually("the delivered payloads are given back", || {
        admission.outbound().used() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_buffer_is_charged_for_what_arrived_not_for_what_was_announced() {
    let broker = broker().await;
    let budget = broker.broker.admission().budget().clone();
    let baseline = budget.used();
    let mut client = RawClient::connect(broker.addr).await;
    // A 1 MiB frame is announced, and a quarter of it sent.
    let announced: u32 = MIB as u32;
    let sent = MIB / 4;
    let stream = client.stream();
    stream.write_all(&announced.to_be_bytes()).await.unwrap();
    stream.write_all(&vec![0u8; sent as usize]).await.unwrap();
    eventually("what arrived is charged", || {
        budget.used() >= baseline + sent
    })
    .await;
    // It grows by at most what arrived (and the small-frame buffer's chunk): far from what
    // was announced.
    let charged = budget.used() - baseline;
    assert!(
        charged <= 2 * sent + 64 * 1024 && charged < u64::from(announced),
        "{charged} bytes charged for {sent} received, {announced} announced"
    );
    drop(client);
    eventually("the closed connection's buffer is given back", || {
        budget.used() <= baseline
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_caches_take_at_most_half_the_budget_and_never_cause_a_refusal() {
    let broker = TestBroker::start_with(|c| {
        c.limits.memory_budget_bytes = BUDGET;
        c.limits.max_frame_bytes = (MIB + 4096) as u32;
        c.storage.tail_cache_bytes = 8 * MIB;
    })
    .await;
    let budget = broker.broker.admission().budget().clone();
    let mut publisher = RawClient::connect(broker.addr).await;
    // 16 MiB committed into caches allowed 8 MiB each, with no consumer: every publish passes.
    for topic in ["a", "b"] {
        for _ in 0..32 {
            let answer = publisher.publish(topic, vec![1u8; MESSAGE]).await;
            assert!(matches!(answer, Frame::PublishOk(_)), "{answer:?}");
        }
    }
    let held = budget.used();
    assert!(
        held > 0 && held <= BUDGET / 4,
        "caches hold {held} bytes of a {BUDGET}-byte budget: at most half its inbound half"
    );
}
