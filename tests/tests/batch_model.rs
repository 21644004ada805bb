//! A model test of every per-message guarantee under batching: random mixes of single
//! publishes, batches, oversized messages, a bound reached under `reject` or `drop_oldest`,
//! and consumption acked as ranges, against a real broker on one v5 connection. After each
//! step the broker's answers are checked against a model of the topic; at the end, what was
//! delivered, dropped and counted.
//!
//! Invariants checked: every publish id is answered exactly once; stored messages get the next
//! sequences in id order, none reused; each refusal names its own reason and bound; credit
//! brings exactly as many deliveries as granted, in sequence order, each with its own headers
//! and payload; every message `drop_oldest` evicted is announced in a `Gap` and never
//! delivered; the topic's depth, next sequence, refusal and drop counters equal the model's.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use weir_protocol::*;
use weir_tests::wire::RawClient;
use weir_tests::TestBroker;

/// Most bytes of a message the topic takes (`max_message_bytes`).
const MAX_MESSAGE_BYTES: u32 = 48;

#[derive(Debug, Clone)]
enum Op {
    /// One `Publish` of a payload of this size.
    Single(usize),
    /// One `PublishBatch` of payloads of these sizes.
    Batch(Vec<usize>),
    /// Grant credit for up to this many of the stored messages, take them, ack them as ranges.
    Consume(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let size = 0usize..60;
    prop_oneof![
        size.clone().prop_map(Op::Single),
        proptest::collection::vec(size, 1..10).prop_map(Op::Batch),
        (0usize..8).prop_map(Op::Consume),
    ]
}

/// What the broker should answer a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Stored(u64),
    Refused(RejectReason, String),
}

/// The topic as the test expects it.
struct Model {
    max_messages: u64,
    drop_oldest: bool,
    next_seq: u64,
    /// Stored and not yet delivered (nothing stays in flight between steps): seq → payload.
    ready: VecDeque<(u64, Bytes)>,
    dropped: BTreeSet<u64>,
    refused: u64,
}

impl Model {
    /// Applies one publish of `payload` as publish `id` (a header `id=<id>` rides along).
    fn publish(&mut self, id: u64, payload: &Bytes) -> Outcome {
        let size = payload.len() + "id".len() + id.to_string().len();
        if size > MAX_MESSAGE_BYTES as usize {
            self.refused += 1;
            return Outcome::Refused(RejectReason::MessageTooLarge, "max_message_bytes".into());
        }
        if !self.drop_oldest && self.ready.len() as u64 >= self.max_messages {
            self.refused += 1;
            return Outcome::Refused(RejectReason::TopicFull, "max_messages".into());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back((seq, payload.clone()));
        Outcome::Stored(seq)
    }

    /// `drop_oldest` after a commit: back within the bound.
    fn evict(&mut self) {
        while self.drop_oldest && self.ready.len() as u64 > self.max_messages {
            let (seq, _) = self.ready.pop_front().expect("over the bound");
            self.dropped.insert(seq);
        }
    }
}

/// Frames from the broker, sorted by kind as they arrive.
#[derive(Default)]
struct Seen {
    answers: BTreeMap<u64, Outcome>,
    deliveries: Vec<(u64, u32, Headers, Bytes)>,
    gaps: BTreeSet<u64>,
}

impl Seen {
    fn answer(&mut self, id: u64, outcome: Outcome) {
        let previous = self.answers.insert(id, outcome);
        assert!(previous.is_none(), "publish {id} answered twice");
    }

    /// Sorts one frame from the broker.
    fn take(&mut self, frame: Frame) {
        match frame {
            Frame::PublishOk(ok) => self.answer(ok.id, Outcome::Stored(ok.seq)),
            Frame::Confirmed(c) => {
                for i in 0..u64::from(c.count) {
                    self.answer(c.first_id + i, Outcome::Stored(c.first_seq + i));
                }
            }
            Frame::Rejected(r) => self.answer(r.id, Outcome::Refused(r.reason, r.limit.name)),
            Frame::Deliver(d) => self
                .deliveries
                .push((d.seq, d.attempt, d.headers, d.payload)),
            Frame::DeliverBatch(b) => self.deliveries.extend(
                b.messages
                    .into_iter()
                    .map(|d| (d.seq, d.attempt, d.headers, d.payload)),
            ),
            Frame::Gap(g) => self.gaps.extend(g.from..=g.to),
            Frame::Subscribed(_) | Frame::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads frames until `done` holds (every frame checked as it comes).
async fn until(client: &mut RawClient, seen: &mut Seen, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_within(left).await {
            Some(frame) => seen.take(frame),
            None => panic!("timed out waiting for {what}"),
        }
    }
}

fn payload(size: usize, salt: u64) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| (salt as usize + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

async fn run(max_messages: u64, drop_oldest: bool, ops: Vec<Op>) {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v5(broker.addr).await;
    let overflow = match drop_oldest {
        true => OverflowPolicy::DropOldest,
        false => OverflowPolicy::Reject,
    };
    let spec = TopicSpec {
        name: "model".into(),
        max_messages: Some(max_messages),
        max_message_bytes: Some(MAX_MESSAGE_BYTES),
        overflow: Some(overflow),
        ..Default::default()
    };
    assert!(matches!(
        client.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
    client.subscribe(1, "model", "g", 0).await;
    let mut model = Model {
        max_messages,
        drop_oldest,
        next_seq: 1,
        ready: VecDeque::new(),
        dropped: BTreeSet::new(),
        refused: 0,
    };
    let mut seen = Seen::default();
    let mut expected: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut published: BTreeMap<u64, (u64, Bytes)> = BTreeMap::new();
    let mut next_id = 1000u64;
    for op in ops {
        let publishes: Vec<(u64, Bytes)> = match &op {
            Op::Single(size) => vec![(next_id, payload(*size, next_id))],
            Op::Batch(sizes) => sizes
                .iter()
                .enumerate()
                .map(|(i, size)| (next_id + i as u64, payload(*size, next_id + i as u64)))
                .collect(),
            Op::Consume(n) => {
                let n = (*n).min(model.ready.len());
                if n == 0 {
                    continue;
                }
                let before = seen.deliveries.len();
                client
                    .send(Frame::Credit(Credit {
                        sub: 1,
                        n: n as u32,
                    }))
                    .await;
                until(&mut client, &mut seen, "deliveries", |s| {
                    s.deliveries.len() >= before + n
                })
                .await;
                let mut seqs = Vec::new();
                for (seq, attempt, headers, body) in &seen.deliveries[before..] {
                    let (want, payload) = model.ready.pop_front().expect("a ready message");
                    assert_eq!((*seq, *attempt), (want, 1), "deliveries in sequence order");
                    let (id, sent) = &published[seq];
                    assert_eq!(body, sent, "payload of seq {seq}");
                    assert_eq!(payload, *sent);
                    assert_eq!(headers, &vec![("id".to_string(), id.to_string())]);
                    seqs.push(*seq);
                }
                let ranges = seq_ranges(&mut seqs);
                client
                    .send(Frame::Settle(Settle {
                        sub: 1,
                        ranges,
                        how: Settlement::Ack,
                    }))
                    .await;
                continue;
            }
        };
        for (id, body) in &publishes {
            let outcome = model.publish(*id, body);
            if let Outcome::Stored(seq) = outcome {
                published.insert(seq, (*id, body.clone()));
            }
            expected.insert(*id, outcome);
        }
        model.evict();
        let headers = |id: u64| vec![("id".to_string(), id.to_string())];
        let frame = match op {
            Op::Single(_) => Frame::Publish(Publish {
                producer: None,
                id: next_id,
                topic: "model".into(),
                headers: headers(next_id),
                payload: publishes[0].1.clone(),
            }),
            _ => Frame::PublishBatch(PublishBatch {
                producer: None,
                first_id: next_id,
                topic: "model".into(),
                messages: publishes
                    .iter()
                    .map(|(id, body)| BatchMessage::new(headers(*id), body.clone()))
                    .collect(),
            }),
        };
        client.send(frame).await;
        next_id += publishes.len() as u64;
        let last = next_id - 1;
        until(&mut client, &mut seen, "answers", |s| {
            (publishes[0].0..=last).all(|id| s.answers.contains_key(&id))
        })
        .await;
        for (id, _) in &publishes {
            assert_eq!(seen.answers[id], expected[id], "answer to publish {id}");
        }
    }
    // Every eviction announced, none delivered.
    until(&mut client, &mut seen, "gap notices", |s| {
        model.dropped.is_subset(&s.gaps)
    })
    .await;
    assert_eq!(seen.gaps, model.dropped, "gaps name exactly the evicted");
    for (seq, ..) in &seen.deliveries {
        assert!(!model.dropped.contains(seq), "evicted seq {seq} delivered");
    }
    let info = client.list().await.remove(0);
    assert_eq!(info.depth, model.ready.len() as u64, "depth");
    assert_eq!(info.next_seq, model.next_seq, "next sequence: none reused");
    assert_eq!(info.rejected, model.refused, "refusals counted per message");
    assert_eq!(
        info.dropped,
        model.dropped.len() as u64,
        "drops counted per message"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn batched_and_single_publishes_keep_every_per_message_guarantee(
        max_messages in 2u64..10,
        drop_oldest in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..14),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(max_messages, drop_oldest, ops));
    }
}
