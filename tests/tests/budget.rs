//! Every broker-held buffer draws from the one memory budget: deliveries waiting for a slow
//! reader, read buffers, tail caches. Over the budget, publishes are refused with
//! `Rejected{Overloaded}` naming `memory_budget_bytes` — a large one shed unread — and they
//! pass again once the memory drains. (The RSS side is in `memory.rs`.)

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use weir_protocol::{Ack, Frame, RejectReason};
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

fn assert_memory_refusal(frame: &Frame) {
    let Frame::Rejected(r) = frame else {
        panic!("expected Rejected, got {frame:?}")
    };
    assert_eq!(r.reason, RejectReason::Overloaded, "{r:?}");
    assert_eq!(
        (r.limit.name.as_str(), r.limit.value),
        ("memory_budget_bytes", BUDGET)
    );
    assert!(r.retry_after_ms.is_some_and(|ms| ms > 0), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_waiting_for_a_slow_reader_count_against_the_budget() {
    let broker = broker().await;
    let budget = broker.broker.admission().budget().clone();
    // A subscriber that asks for a lot and then does not read its socket.
    let mut reader = RawClient::connect(broker.addr).await;
    reader.subscribe(1, "t", "g", 1000).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let payload = Bytes::from(vec![7u8; MESSAGE]);
    let mut confirmed = Vec::new();
    let refusal = loop {
        assert!(
            confirmed.len() < 400,
            "100 MiB of deliveries never filled a 4 MiB budget"
        );
        match publisher.publish("t", payload.clone()).await {
            Frame::PublishOk(ok) => confirmed.push(ok.seq),
            other => break other,
        }
    };
    // The topic has room and nothing awaits a commit: the deliveries hold the memory.
    assert_memory_refusal(&refusal);
    eventually("deliveries are charged past the budget", || {
        budget.used() > BUDGET
    })
    .await;
    // Over the budget, a large publish is shed: answered from its header, payload discarded.
    let shed_before = broker.broker.metrics().frames_shed.get();
    assert_memory_refusal(&publisher.publish("t", payload.clone()).await);
    assert_eq!(broker.broker.metrics().frames_shed.get(), shed_before + 1);
    // A small one is read whole and refused by admission the same way.
    assert_memory_refusal(&publisher.publish("t", vec![1u8; 100]).await);
    assert_eq!(broker.broker.metrics().frames_shed.get(), shed_before + 1);
    // Refused before the topic, yet counted and shown as the topic's refusals.
    let info = broker.broker.topic("t").unwrap().info();
    assert!(info.rejected >= 3, "{info:?}");
    let refusing = info.refusing.expect("refusing now");
    assert_eq!(refusing.limit.name, "memory_budget_bytes");

    // The reader catches up: every confirmed message arrives, the budget drains, publishes
    // pass again.
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
        budget.used() < MIB
    })
    .await;
    assert!(matches!(
        publisher.publish("t", payload.clone()).await,
        Frame::PublishOk(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_buffer_draws_from_the_budget_and_gives_it_back() {
    let broker = broker().await;
    let budget = broker.broker.admission().budget().clone();
    let baseline = budget.used();
    let mut client = RawClient::connect(broker.addr).await;
    // Half of a 1 MiB publish frame: the broker reserves the whole frame's buffer.
    let announced: u32 = MIB as u32;
    let stream = client.stream();
    stream.write_all(&announced.to_be_bytes()).await.unwrap();
    stream
        .write_all(&vec![0u8; MIB as usize / 2])
        .await
        .unwrap();
    eventually("the frame's buffer is charged", || {
        budget.used() >= baseline + MIB
    })
    .await;
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
        held > 0 && held <= BUDGET / 2,
        "caches hold {held} bytes of a {BUDGET}-byte budget"
    );
}
