//! Protocol v5 batches end to end: a `PublishBatch` is answered message by message (stored
//! runs by one `Confirmed`, each refusal by its own `Rejected`), deliveries come coalesced in
//! `DeliverBatch` frames that each cost one credit per delivery, `Settle` ranges settle
//! exactly what the subscription holds, a v4 client is never sent a batch, and the client
//! library coalesces pipelined publishes on its own.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use weir_client::{Client, ClientOptions};
use weir_protocol::*;
use weir_tests::wire::RawClient;
use weir_tests::{scrape, TestBroker};

/// A batch of `payloads` (with one header each, `i=<index>`) to `topic` from publish id
/// `first_id`.
fn batch(first_id: u64, topic: &str, payloads: &[Bytes]) -> Frame {
    Frame::PublishBatch(PublishBatch {
        producer: None,
        first_id,
        topic: topic.into(),
        messages: payloads
            .iter()
            .enumerate()
            .map(|(i, p)| BatchMessage::new(vec![("i".into(), i.to_string())], p.clone()))
            .collect(),
    })
}

fn payloads(n: usize, size: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
        .collect()
}

/// Deliveries from `DeliverBatch` and `Deliver` frames until `n` arrived: `(seq, attempt,
/// headers, payload)` in arrival order, and how many batch frames carried them.
async fn receive(client: &mut RawClient, sub: u64, n: usize) -> (Vec<BatchDelivery>, usize) {
    let (mut got, mut batches) = (Vec::new(), 0);
    while got.len() < n {
        match client.recv().await {
            Frame::DeliverBatch(b) => {
                assert_eq!(b.sub, sub);
                assert!(b.messages.len() > 1, "a lone delivery travels as a Deliver");
                batches += 1;
                got.extend(b.messages);
            }
            Frame::Deliver(d) => {
                assert_eq!(d.sub, sub);
                got.push(BatchDelivery::new(d.seq, d.attempt, d.headers, d.payload));
            }
            Frame::Subscribed(_) | Frame::Pong(_) => {}
            other => panic!("expected deliveries, got {other:?}"),
        }
    }
    (got, batches)
}

/// Creates `name` bounded at `max_messages` under `block`, parking for up to a minute.
async fn create_blocking(client: &mut RawClient, name: &str, max_messages: u64) {
    let spec = TopicSpec {
        name: name.into(),
        max_messages: Some(max_messages),
        overflow: Some(OverflowPolicy::Block),
        max_block_ms: Some(60_000),
        ..Default::default()
    };
    assert!(matches!(
        client.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
}

#[tokio::test]
async fn a_batch_is_stored_as_one_run_and_delivered_in_batches_one_credit_each() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect_v5(broker.addr).await;
    let sent = payloads(50, 100);
    publisher.send(batch(10, "orders", &sent)).await;
    assert_eq!(
        publisher.recv().await,
        Frame::Confirmed(Confirmed {
            first_id: 10,
            count: 50,
            first_seq: 1
        })
    );
    // Two batches in one socket write are confirmed as two runs, seqs following on.
    publisher.send(batch(60, "orders", &sent[..3])).await;
    publisher.send(batch(63, "orders", &sent[..2])).await;
    let mut confirmed = Vec::new();
    while confirmed.len() < 2 {
        match publisher.recv().await {
            Frame::Confirmed(c) => confirmed.push((c.first_id, c.count, c.first_seq)),
            other => panic!("expected Confirmed, got {other:?}"),
        }
    }
    assert_eq!(confirmed, vec![(60, 3, 51), (63, 2, 54)]);

    // A credit of 20 brings exactly 20, however they are framed.
    let mut consumer = RawClient::connect_v5(broker.addr).await;
    consumer.subscribe(1, "orders", "billing", 20).await;
    let (got, batches) = receive(&mut consumer, 1, 20).await;
    assert!(batches >= 1, "a backlog goes out in batch frames");
    assert_eq!(
        consumer.recv_within(Duration::from_millis(300)).await,
        None,
        "nothing past the credit"
    );
    for (i, d) in got.iter().enumerate() {
        assert_eq!((d.seq, d.attempt), (i as u64 + 1, 1));
        assert_eq!(d.headers, vec![("i".to_string(), i.to_string())]);
        assert_eq!(d.payload, sent[i], "payload of seq {}", d.seq);
    }
    // Acking 20 as ranges gives 20 credit back: the other 35 follow.
    consumer
        .send(Frame::Settle(Settle {
            sub: 1,
            ranges: vec![(1, 20)],
            how: Settlement::Ack,
        }))
        .await;
    consumer.send(Frame::Credit(Credit { sub: 1, n: 35 })).await;
    let (rest, _) = receive(&mut consumer, 1, 35).await;
    let seqs: Vec<u64> = rest.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, (21..=55).collect::<Vec<_>>());
    let batches = scrape(broker.admin_addr, "weir_deliver_batch_frames_total").await;
    assert!(batches.unwrap_or(0.0) >= 1.0, "counted: {batches:?}");
    let published = scrape(broker.admin_addr, "weir_messages_published_total").await;
    assert_eq!(published, Some(55.0), "each message counts as a publish");
}

#[tokio::test]
async fn each_message_of_a_batch_meets_its_own_bounds_and_gets_its_own_answer() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v5(broker.addr).await;
    let spec = TopicSpec {
        name: "bounded".into(),
        max_messages: Some(6),
        max_message_bytes: Some(100),
        overflow: Some(OverflowPolicy::Reject),
        ..Default::default()
    };
    assert!(matches!(
        client.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
    // Message 2 is too large for the topic; 7 fit its bound of 6; the last two do not.
    let mut sent = payloads(9, 10);
    sent[2] = Bytes::from(vec![b'x'; 101]);
    client.send(batch(100, "bounded", &sent)).await;
    let mut answers = Vec::new();
    while answers.len() < 9 {
        match client.recv().await {
            Frame::Confirmed(c) => {
                for i in 0..u64::from(c.count) {
                    answers.push((c.first_id + i, format!("seq {}", c.first_seq + i)));
                }
            }
            Frame::Rejected(r) => {
                assert!(r.retry_after_ms.is_some() || r.reason == RejectReason::MessageTooLarge);
                answers.push((r.id, format!("{:?} {}", r.reason, r.limit.name)));
            }
            other => panic!("expected answers, got {other:?}"),
        }
    }
    answers.sort();
    assert_eq!(
        answers,
        vec![
            (100, "seq 1".to_string()),
            (101, "seq 2".into()),
            (102, "MessageTooLarge max_message_bytes".into()),
            (103, "seq 3".into()),
            (104, "seq 4".into()),
            (105, "seq 5".into()),
            (106, "seq 6".into()),
            (107, "TopicFull max_messages".into()),
            (108, "TopicFull max_messages".into()),
        ],
        "every id answered once, refusals by their own reason and bound"
    );
    let info = client
        .list()
        .await
        .into_iter()
        .find(|t| t.config.name == "bounded")
        .unwrap();
    assert_eq!(
        (info.depth, info.rejected),
        (6, 3),
        "refusals counted per message"
    );
    // The stored ones are delivered with their own headers, the refused one left out.
    let mut consumer = RawClient::connect_v5(broker.addr).await;
    consumer.subscribe(1, "bounded", "g", 10).await;
    let (got, _) = receive(&mut consumer, 1, 6).await;
    let indexes: Vec<&str> = got.iter().map(|d| d.headers[0].1.as_str()).collect();
    assert_eq!(indexes, ["0", "1", "3", "4", "5", "6"]);
}

#[tokio::test]
async fn a_batch_to_a_topic_it_cannot_reach_is_refused_message_by_message() {
    let broker = TestBroker::start_with(|c| c.limits.auto_create_topics = false).await;
    let mut client = RawClient::connect_v5(broker.addr).await;
    client.send(batch(7, "missing", &payloads(3, 5))).await;
    for id in 7..10 {
        match client.recv().await {
            Frame::Error(e) => assert_eq!((e.req, e.code), (id, ErrorCode::UnknownTopic)),
            other => panic!("expected UnknownTopic for {id}, got {other:?}"),
        }
    }
    // Ids that would pass u64::MAX are refused whole, and nothing is stored.
    client
        .send(batch(u64::MAX - 1, "missing", &payloads(3, 5)))
        .await;
    match client.recv().await {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::InvalidArgument),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(client.list().await.len(), 0);
}

#[tokio::test]
async fn a_v4_client_speaks_v4_and_is_never_sent_a_batch() {
    let broker = TestBroker::start().await;
    let mut v5 = RawClient::connect_v5(broker.addr).await;
    v5.send(batch(1, "t", &payloads(30, 10))).await;
    assert!(matches!(v5.recv().await, Frame::Confirmed(c) if c.count == 30));
    // An empty batch is answered by nothing and auto-creates no topic.
    v5.send(batch(31, "ghost", &[])).await;
    assert_eq!(
        v5.ping().await,
        Vec::<Frame>::new(),
        "no answer to an empty batch"
    );
    assert_eq!(v5.list().await.len(), 1, "no topic ghost");

    let mut v4 = RawClient::connect_raw(broker.addr).await;
    v4.send(Frame::Hello(Hello {
        version: 4,
        token: None,
    }))
    .await;
    assert!(matches!(v4.recv().await, Frame::HelloOk(ok) if ok.version == 4));
    v4.subscribe(1, "t", "g", 30).await;
    for seq in 1..=30 {
        match v4.recv().await {
            Frame::Deliver(d) => assert_eq!(d.seq, seq),
            other => panic!("a v4 client gets Deliver frames only, got {other:?}"),
        }
    }
    // A batch frame from a v4 connection is answered, not applied.
    v4.send(batch(100, "t", &payloads(2, 10))).await;
    match v4.recv().await {
        Frame::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.contains("v5"), "{}", e.message);
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(v5.list().await[0].next_seq, 31, "nothing stored");
}

#[tokio::test]
async fn settle_ranges_touch_only_what_the_subscription_holds() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v5(broker.addr).await;
    client.send(batch(1, "t", &payloads(10, 10))).await;
    assert!(matches!(client.recv().await, Frame::Confirmed(c) if c.count == 10));
    client.subscribe(1, "t", "g", 6).await;
    let (got, _) = receive(&mut client, 1, 6).await;
    assert_eq!(got.last().map(|d| d.seq), Some(6));
    // Overlapping ranges, an inverted one and one reaching u64::MAX: seqs 1..=4 are acked
    // once each, 7.. are not held and are ignored.
    client
        .send(Frame::Settle(Settle {
            sub: 1,
            ranges: vec![(3, 4), (1, 3), (9, 2), (7, u64::MAX), (2, 2)],
            how: Settlement::Ack,
        }))
        .await;
    // Seq 5 fails: redelivered at once with attempt 2 (credit returned for the 5 settled).
    client
        .send(Frame::Settle(Settle {
            sub: 1,
            ranges: vec![(5, 5)],
            how: Settlement::Nack { delay_ms: 0 },
        }))
        .await;
    client.send(Frame::Credit(Credit { sub: 1, n: 1 })).await;
    let (again, _) = receive(&mut client, 1, 1).await;
    assert_eq!((again[0].seq, again[0].attempt), (5, 2));
    let acked = scrape(broker.admin_addr, "weir_messages_acked_total").await;
    assert_eq!(acked, Some(4.0));
    let nacked = scrape(broker.admin_addr, "weir_messages_nacked_total").await;
    assert_eq!(nacked, Some(1.0));
}

#[tokio::test]
async fn a_batch_whose_lengths_lie_closes_only_its_connection() {
    let broker = TestBroker::start().await;
    let mut healthy = RawClient::connect_v5(broker.addr).await;
    let mut liar = RawClient::connect_v5(broker.addr).await;
    // A batch announcing 2 payloads of 3 bytes with 5 bytes of payload after its header.
    let mut frame = bytes::BytesMut::new();
    let good = batch(
        1,
        "t",
        &[Bytes::from_static(b"abc"), Bytes::from_static(b"def")],
    );
    WeirCodec::default()
        .encode_frame(&good, &mut frame)
        .unwrap();
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) - 1;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame.truncate(frame.len() - 1);
    use tokio::io::AsyncWriteExt;
    liar.stream().write_all(&frame).await.unwrap();
    match liar.recv_or_closed().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::MalformedFrame),
        other => panic!("expected MalformedFrame, got {other:?}"),
    }
    assert_eq!(liar.recv_or_closed().await, None, "then closed");
    healthy.send(batch(1, "t", &payloads(2, 3))).await;
    assert!(matches!(healthy.recv().await, Frame::Confirmed(c) if c.count == 2));
    assert_eq!(
        healthy.list().await[0].depth,
        2,
        "nothing of the lie stored"
    );
}

#[tokio::test]
async fn the_client_coalesces_pipelined_publishes_and_resolves_every_confirm() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let publisher = client.publisher_with_window(1000);
    let mut confirms = Vec::new();
    for i in 0..1000 {
        confirms.push(publisher.publish("orders", format!("m{i}")).await.unwrap());
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        assert_eq!(
            confirm.await.unwrap(),
            i as u64 + 1,
            "confirm of publish {i}"
        );
    }
    let batches = scrape(broker.admin_addr, "weir_publish_batch_frames_total").await;
    assert!(
        batches.unwrap_or(0.0) >= 1.0,
        "publishes were coalesced: {batches:?}"
    );
    // Deliveries arrive in order whether they came batched or not, and acks as ranges
    // free the topic.
    let mut sub = client.subscribe("orders", "g", 256).await.unwrap();
    for i in 0..1000u64 {
        let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a delivery in time")
            .expect("open")
            .expect("delivery");
        assert_eq!(
            (d.seq(), d.payload().as_ref()),
            (i + 1, format!("m{i}").as_bytes())
        );
        d.ack();
    }
    sub.close().await.unwrap();
    let mut raw = RawClient::connect(broker.addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while raw.list().await[0].depth > 0 {
        assert!(tokio::time::Instant::now() < deadline, "acks never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The same through a client that speaks v4: no batch frames, the same answers.
    let before = scrape(broker.admin_addr, "weir_publish_batch_frames_total").await;
    let opts = ClientOptions {
        protocol_version: 4,
        ..Default::default()
    };
    let v4 = Client::connect_with(broker.addr, opts).await.unwrap();
    let publisher = v4.publisher_with_window(100);
    let mut confirms = Vec::new();
    for i in 0..100 {
        confirms.push(
            publisher
                .publish("orders", format!("v4-{i}"))
                .await
                .unwrap(),
        );
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        assert_eq!(confirm.await.unwrap(), 1001 + i as u64);
    }
    let after = scrape(broker.admin_addr, "weir_publish_batch_frames_total").await;
    assert_eq!(before, after, "a v4 client sends no batch");
}

#[tokio::test]
async fn publish_batch_answers_each_message_on_its_own() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let spec = TopicSpec {
        name: "six".into(),
        max_messages: Some(6),
        ..Default::default()
    };
    client.create_topic(spec).await.unwrap();
    let publisher = client.publisher();
    let confirms = publisher
        .publish_batch("six", (0..10).map(|i| format!("m{i}")))
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    for confirm in confirms {
        outcomes.push(match confirm.await {
            Ok(seq) => format!("seq {seq}"),
            Err(weir_client::PublishError::Rejected { reason, limit, .. }) => {
                format!("{reason:?} {}", limit.name)
            }
            Err(e) => panic!("unexpected {e}"),
        });
    }
    let mut expected: Vec<String> = (1..=6).map(|s| format!("seq {s}")).collect();
    expected.extend(std::iter::repeat_n("TopicFull max_messages".to_string(), 4));
    assert_eq!(outcomes, expected);
}

#[tokio::test]
async fn under_block_the_rest_of_a_batch_parks_in_order_and_is_confirmed_as_room_frees() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v5(broker.addr).await;
    create_blocking(&mut client, "blocking", 2).await;
    client.send(batch(1, "blocking", &payloads(4, 8))).await;
    assert_eq!(
        client.recv().await,
        Frame::Confirmed(Confirmed {
            first_id: 1,
            count: 2,
            first_seq: 1
        })
    );
    assert_eq!(
        client.recv_within(Duration::from_millis(200)).await,
        None,
        "3 and 4 park"
    );
    assert_eq!(client.list().await[0].parked, 2);
    // Each ack frees one place: the parked publishes follow in their order.
    let mut consumer = RawClient::connect_v5(broker.addr).await;
    consumer.subscribe(1, "blocking", "g", 4).await;
    let (got, _) = receive(&mut consumer, 1, 2).await;
    consumer
        .send(Frame::Settle(Settle {
            sub: 1,
            ranges: vec![(got[0].seq, got[1].seq)],
            how: Settlement::Ack,
        }))
        .await;
    let mut confirmed = Vec::new();
    while confirmed.len() < 2 {
        match client.recv().await {
            Frame::PublishOk(ok) => confirmed.push((ok.id, ok.seq)),
            other => panic!("expected PublishOk, got {other:?}"),
        }
    }
    assert_eq!(confirmed, vec![(3, 3), (4, 4)]);
}

#[tokio::test]
async fn during_the_shutdown_grace_batches_are_refused_per_message_and_settle_ranges_apply() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect_v5(broker.addr).await;
    client.send(batch(1, "graceful", &payloads(2, 4))).await;
    assert!(matches!(client.recv().await, Frame::Confirmed(c) if c.count == 2));
    client.subscribe(1, "graceful", "g", 2).await;
    let (held, _) = receive(&mut client, 1, 2).await;
    let stopping = tokio::spawn(async move {
        let mut broker = broker;
        broker.stop().await;
        broker
    });
    // Probe until the stop has begun: then each message of a batch is refused `ShuttingDown`
    // (the connection is still read: it holds deliveries).
    let mut id = 100;
    'probe: loop {
        client.send(batch(id, "probe", &payloads(2, 4))).await;
        let mut answered = 0;
        while answered < 2 {
            match client.recv().await {
                Frame::Confirmed(c) => answered += c.count,
                Frame::Rejected(r) if r.reason == RejectReason::ShuttingDown => {
                    assert!((id..id + 2).contains(&r.id));
                    answered += 1;
                    if answered == 2 {
                        break 'probe;
                    }
                }
                other => panic!("expected answers to the probe, got {other:?}"),
            }
        }
        id += 2;
    }
    client
        .send(Frame::Settle(Settle {
            sub: 1,
            ranges: vec![(held[0].seq, held[1].seq)],
            how: Settlement::Ack,
        }))
        .await;
    while let Some(frame) = client.recv_or_closed().await {
        assert!(matches!(frame, Frame::GoingAway(_)), "{frame:?}");
    }
    let broker = stopping.await.expect("the broker stops").restart().await;
    let mut admin = RawClient::connect(broker.addr).await;
    let info = weir_tests::wire::wait_for_topic(&mut admin, "graceful", |_| true).await;
    assert_eq!(
        info.depth, 0,
        "the range ack made during the grace was kept"
    );
}

#[tokio::test]
async fn with_linger_a_publish_waits_for_company_and_a_lone_one_still_goes() {
    let broker = TestBroker::start().await;
    let opts = ClientOptions {
        linger: Duration::from_secs(1),
        ..Default::default()
    };
    let client = Client::connect_with(broker.addr, opts).await.unwrap();
    let publisher = client.publisher();
    // Two publishes 20 ms apart: without a linger each would leave in its own frame as soon
    // as it was queued; with one they share a batch.
    let first = publisher.try_publish("lingering", "one").unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = publisher.try_publish("lingering", "two").unwrap();
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (1, 2));
    let batches = scrape(broker.admin_addr, "weir_publish_batch_frames_total").await;
    assert_eq!(batches, Some(1.0), "two publishes, one frame");
    // A lone publish still goes, once the linger has passed.
    let seq = publisher
        .publish_and_wait("lingering", "alone")
        .await
        .unwrap();
    assert_eq!(seq, 3);
}

#[tokio::test]
async fn a_batch_meeting_its_connections_memory_share_is_refused_per_message_and_the_neighbour_goes_on(
) {
    const KIB: u64 = 1024;
    let broker = TestBroker::start_with(|c| {
        c.limits.max_frame_bytes = (128 * KIB) as u32;
        c.limits.max_connection_memory_bytes = 256 * KIB;
        c.topic_defaults.max_message_bytes = (64 * KIB) as u32;
    })
    .await;
    let mut client = RawClient::connect_v5(broker.addr).await;
    create_blocking(&mut client, "held", 1).await;
    // Parked publishes keep their memory: batches of 6 × 16 KiB fill the 256 KiB share.
    let (mut confirmed, mut overloaded, mut sent) = (Vec::new(), 0, 0u64);
    for round in 0..4u64 {
        let first = 1 + round * 6;
        client
            .send(batch(first, "held", &payloads(6, 16 * 1024)))
            .await;
        sent += 6;
    }
    // What is answered now: the one that fit, and the refusals; the rest stay parked.
    while let Some(frame) = client.recv_within(Duration::from_millis(500)).await {
        match frame {
            Frame::Confirmed(c) => confirmed.extend(c.first_id..c.first_id + u64::from(c.count)),
            Frame::PublishOk(ok) => confirmed.push(ok.id),
            Frame::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::Overloaded, "{r:?}");
                assert_eq!(r.limit.name, "max_connection_memory_bytes", "{r:?}");
                assert!(r.retry_after_ms.is_some());
                overloaded += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(overloaded > 0, "the share refused some messages");
    let parked = client.list().await[0].parked;
    assert_eq!(
        confirmed.len() as u64 + overloaded + parked,
        sent,
        "every message confirmed, refused or parked: {confirmed:?}, {overloaded}, {parked}"
    );
    // A neighbour on its own connection publishes and consumes as if nothing happened.
    let healthy = weir_tests::healthy_neighbour(broker.addr, "neighbour", 50, (None, None)).await;
    assert_eq!(
        (healthy.confirmed, healthy.refused, healthy.consumed),
        (50, 0, 50)
    );
    // Consuming the held topic unparks the rest in order; each is confirmed.
    let mut consumer = RawClient::connect_v5(broker.addr).await;
    consumer.subscribe(1, "held", "g", 1).await;
    let mut stored = 0;
    while stored < confirmed.len() as u64 + parked {
        let (got, _) = receive(&mut consumer, 1, 1).await;
        consumer
            .send(Frame::Settle(Settle {
                sub: 1,
                ranges: vec![(got[0].seq, got[0].seq)],
                how: Settlement::Ack,
            }))
            .await;
        consumer.send(Frame::Credit(Credit { sub: 1, n: 1 })).await;
        stored += 1;
    }
    let mut later = 0;
    while (later as u64) < parked {
        match client.recv().await {
            Frame::PublishOk(_) => later += 1,
            other => panic!("expected the parked ones confirmed, got {other:?}"),
        }
    }
}
