//! Key-ordered groups (`ordering = "key"`): each `weir-key`'s messages are processed in order by
//! one member at a time; a member lost mid-key hands its messages over before their successors;
//! a nack keeps the key, dead-lettering frees it; the look-ahead bound holds; a v5 subscriber
//! joins a key-ordered group; `weir bench --ordering key` runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use weir_client::{Client, GroupOrdering, GroupSpec, KEY_HEADER};
use weir_protocol::{Ack, Credit, Deliver, Frame, Nack, TopicSpec};
use weir_tests::wire::header;
use weir_tests::{RawClient, TestBroker};

/// A group spec asking for key order.
fn keyed() -> GroupSpec {
    GroupSpec {
        ordering: Some(GroupOrdering::Key),
        ..GroupSpec::default()
    }
}

/// Publishes `(key, payload)` messages in order, the key as the `weir-key` header.
async fn publish_keyed(client: &mut RawClient, topic: &str, messages: &[(&str, &str)]) {
    for (key, payload) in messages {
        let headers = vec![(KEY_HEADER.to_string(), key.to_string())];
        match client
            .publish_with_headers(topic, headers, payload.to_string())
            .await
        {
            Frame::PublishOk(_) => {}
            other => panic!("expected PublishOk, got {other:?}"),
        }
    }
}

/// A v6 subscriber (subscription 1, credit 10) of group `g` of topic `t` created with
/// `spec`, after which `messages` are published in order by another connection.
async fn subscribed_then_published(
    broker: &TestBroker,
    spec: GroupSpec,
    messages: &[(&str, &str)],
) -> RawClient {
    let mut client = RawClient::connect_v6(broker.addr).await;
    client.subscribe_with(1, "t", "g", 10, spec).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publish_keyed(&mut publisher, "t", messages).await;
    client
}

/// The payload of a raw delivery as text.
fn text(d: &Deliver) -> String {
    String::from_utf8_lossy(&d.payload).into_owned()
}

/// The deliveries of the next frame, one or a batch (v6), as `Deliver`s.
async fn next_frame(client: &mut RawClient) -> Vec<Deliver> {
    match client.recv().await {
        Frame::Deliver(d) => vec![d],
        Frame::DeliverBatch(b) => b
            .messages
            .into_iter()
            .map(|m| Deliver {
                sub: b.sub,
                seq: m.seq,
                attempt: m.attempt,
                headers: m.headers,
                payload: m.payload,
            })
            .collect(),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// The next `n` deliveries, whether they come one per frame or batched (v6), as `Deliver`s.
async fn receive(client: &mut RawClient, n: usize) -> Vec<Deliver> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(next_frame(client).await);
    }
    assert_eq!(out.len(), n, "no more than expected: {out:?}");
    out
}

/// A small seeded generator (xorshift64), so the members' ack pattern is random-ish but the
/// same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What the members of the ordering test saw of each key: the next index expected, and
/// whether a message of it is being processed.
#[derive(Default)]
struct KeyLog {
    next: u32,
    busy: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_process_each_of_50_keys_in_order_one_at_a_time() {
    const KEYS: u32 = 50;
    const PER_KEY: u32 = 20;
    const TOTAL: usize = (KEYS * PER_KEY) as usize;
    let broker = TestBroker::start().await;
    let publisher = Client::connect(broker.addr).await.unwrap();
    let log: Arc<Mutex<HashMap<u32, KeyLog>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Members ack nothing until every message is published, and their windows (3 × 64) hold
    // more than one message of each of the 50 keys: every key's second message must wait for
    // its first, whatever the speed of the box.
    let (published_tx, published_rx) = tokio::sync::watch::channel(false);
    let mut members = Vec::new();
    for m in 0..3u64 {
        let client = Client::connect(broker.addr).await.unwrap();
        let mut sub = client
            .subscribe_with("orders", "billing", 64, keyed())
            .await
            .unwrap();
        let (log, done, stop_tx, mut stop_rx) =
            (log.clone(), done.clone(), stop_tx.clone(), stop_rx.clone());
        let mut published_rx = published_rx.clone();
        members.push(tokio::spawn(async move {
            let _client = client;
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (m + 1));
            let mut held = Vec::new();
            let mut processed = 0usize;
            loop {
                // Take what has arrived; when nothing is ready (or at random) finish one held
                // message — a consumer working at its own uneven pace.
                let acking = *published_rx.borrow();
                let ready = if held.is_empty() || !acking || rng.below(3) > 0 {
                    sub.next().now_or_never()
                } else {
                    None
                };
                let next = match ready {
                    Some(next) => next,
                    None if !held.is_empty() && acking => {
                        let d: weir_client::Delivery = held.swap_remove(rng.below(held.len()));
                        let (key, index) = parse(d.payload());
                        {
                            let mut log = log.lock().unwrap();
                            let k = log.entry(key).or_default();
                            k.busy = false;
                            k.next = index + 1;
                        }
                        d.ack();
                        processed += 1;
                        if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == TOTAL {
                            stop_tx.send_replace(true);
                        }
                        continue;
                    }
                    None => tokio::select! {
                        next = sub.next() => next,
                        _ = published_rx.wait_for(|published| *published), if !acking => continue,
                        _ = stop_rx.wait_for(|stop| *stop) => break,
                    },
                };
                let d = next.expect("subscription open").expect("a delivery");
                let (key, index) = parse(d.payload());
                {
                    let mut log = log.lock().unwrap();
                    let k = log.entry(key).or_default();
                    assert!(!k.busy, "key {key}: two messages in flight at once");
                    assert_eq!(index, k.next, "key {key} out of order");
                    k.busy = true;
                }
                held.push(d);
            }
            processed
        }));
    }
    let publisher = publisher.publisher_with_window(256);
    let mut confirms = Vec::new();
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            let key = format!("k{k}");
            confirms.push(
                publisher
                    .publish_with_headers("orders", [(KEY_HEADER, key)], format!("{k}:{i}"))
                    .await
                    .unwrap(),
            );
        }
    }
    for c in confirms {
        c.await.unwrap();
    }
    published_tx.send_replace(true);
    let mut per_member = Vec::new();
    for m in members {
        per_member.push(m.await.expect("member saw every key in order"));
    }
    assert_eq!(per_member.iter().sum::<usize>(), TOTAL, "nothing lost");
    assert!(
        per_member.iter().all(|&n| n > 0),
        "keys are spread over the members: {per_member:?}"
    );
    let log = log.lock().unwrap();
    assert_eq!(log.len(), KEYS as usize);
    assert!(log.values().all(|k| k.next == PER_KEY && !k.busy));
    assert!(broker.broker.metrics().key_waits.get() > 0, "keys did wait");
}

/// `key:index` of a payload.
fn parse(payload: &[u8]) -> (u32, u32) {
    let text = std::str::from_utf8(payload).unwrap();
    let (key, index) = text.split_once(':').unwrap();
    (key.parse().unwrap(), index.parse().unwrap())
}

#[tokio::test]
async fn a_member_lost_mid_key_hands_its_messages_over_before_their_successors() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let mut a = RawClient::connect_v6(broker.addr).await;
    a.subscribe_with(1, "t", "g", 10, keyed()).await;
    let messages: Vec<(&str, String)> = (0..5)
        .flat_map(|i| [("a", format!("a{i}")), ("b", format!("b{i}"))])
        .collect();
    let borrowed: Vec<(&str, &str)> = messages.iter().map(|(k, p)| (*k, p.as_str())).collect();
    publish_keyed(&mut publisher, "t", &borrowed).await;
    let first: Vec<String> = receive(&mut a, 2).await.iter().map(text).collect();
    assert_eq!(first, ["a0", "b0"], "one message of each key");
    let mut b = RawClient::connect(broker.addr).await;
    b.subscribe(1, "t", "g", 10).await;
    drop(a);
    let mut seen: HashMap<String, Vec<(String, u32)>> = HashMap::new();
    for _ in 0..messages.len() {
        let d = receive(&mut b, 1).await.remove(0);
        let key = header(&d, KEY_HEADER).unwrap().to_string();
        seen.entry(key).or_default().push((text(&d), d.attempt));
        b.ack_and_credit(vec![d.seq]).await.unwrap();
    }
    for key in ["a", "b"] {
        let expected: Vec<(String, u32)> = (0..5)
            .map(|i| (format!("{key}{i}"), if i == 0 { 2 } else { 1 }))
            .collect();
        assert_eq!(seen[key], expected, "key {key}: handed over, then in order");
    }
}

#[tokio::test]
async fn a_nack_keeps_the_key_and_dead_lettering_frees_it() {
    let broker = TestBroker::start().await;
    let spec = GroupSpec {
        max_attempts: Some(2),
        ..keyed()
    };
    let messages = [("a", "a0"), ("a", "a1"), ("b", "b0")];
    let mut client = subscribed_then_published(&broker, spec, &messages).await;
    let first = receive(&mut client, 2).await;
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), ["a0", "b0"]);
    let nack = |seq| {
        Frame::Nack(Nack {
            sub: 1,
            seqs: vec![seq],
            delay_ms: 0,
        })
    };
    client.send(nack(first[0].seq)).await;
    let again = receive(&mut client, 1).await.remove(0);
    assert_eq!(
        (text(&again), again.attempt),
        ("a0".into(), 2),
        "a0 again, not a1"
    );
    client.send(nack(again.seq)).await; // its last attempt: dead-lettered
    let next = receive(&mut client, 1).await.remove(0);
    assert_eq!(
        (text(&next), next.attempt),
        ("a1".into(), 1),
        "the key is free"
    );
    let mut dlq = RawClient::connect(broker.addr).await;
    let dead = dlq.consume(1, "t.dlq", "check", 1).await;
    assert_eq!(text(&dead[0]), "a0");
}

#[tokio::test]
async fn at_the_lookahead_bound_a_key_group_waits_for_the_blocked_key() {
    let broker = TestBroker::start_with(|c| c.groups.key_lookahead = 2).await;
    let messages = [
        ("h", "h0"),
        ("h", "h1"),
        ("c", "c0"),
        ("h", "h2"),
        ("h", "h3"),
        ("d", "d0"),
    ];
    let mut client = subscribed_then_published(&broker, keyed(), &messages).await;
    // h0 goes, h1 waits, c0 passes it, h2 waits: two waiting is the bound, so h3 stops the
    // group and d0 (a free key) is not reached.
    let first = receive(&mut client, 2).await;
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), ["h0", "c0"]);
    let metrics = broker.broker.metrics().clone();
    weir_tests::eventually("the bound is counted", || {
        metrics.key_lookahead_full.get() > 0
    })
    .await;
    assert_eq!(metrics.key_waits.get(), 2, "h1 and h2 wait");
    // Acking h0 frees h1; h3 can wait now, and d0 is reached.
    client.ack_and_credit(vec![first[0].seq]).await.unwrap();
    let next = receive(&mut client, 2).await;
    assert_eq!(next.iter().map(text).collect::<Vec<_>>(), ["h1", "d0"]);
    let mut rest = Vec::new();
    let mut last = next[0].seq;
    while rest.len() < 2 {
        client.ack_and_credit(vec![last]).await.unwrap();
        let d = receive(&mut client, 1).await.remove(0);
        last = d.seq;
        rest.push(text(&d));
    }
    assert_eq!(rest, ["h2", "h3"], "the hot key in order");
}

#[tokio::test]
async fn a_v5_subscriber_joins_a_key_ordered_group() {
    let broker = TestBroker::start().await;
    let mut creator = RawClient::connect_v6(broker.addr).await;
    creator.subscribe_with(1, "t", "g", 1, keyed()).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    publish_keyed(
        &mut publisher,
        "t",
        &[("a", "a0"), ("a", "a1"), ("b", "b0")],
    )
    .await;
    assert_eq!(text(&receive(&mut creator, 1).await.remove(0)), "a0");
    let mut old = RawClient::connect_v5(broker.addr).await;
    old.subscribe(1, "t", "g", 10).await;
    drop(creator);
    let got = receive(&mut old, 2).await;
    let mut texts: Vec<String> = got.iter().map(text).collect();
    texts.sort();
    assert_eq!(texts, ["a0", "b0"], "a1 waits for a0 on the v5 member too");
    let a0 = got.iter().find(|d| text(d) == "a0").unwrap();
    old.send(Frame::Ack(Ack {
        sub: 1,
        seqs: vec![a0.seq],
    }))
    .await;
    old.send(Frame::Credit(Credit { sub: 1, n: 1 })).await;
    assert_eq!(text(&receive(&mut old, 1).await.remove(0)), "a1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_compares_a_key_ordered_group() {
    let broker = TestBroker::start().await;
    let mut admin = RawClient::connect_v6(broker.addr).await;
    let spec = TopicSpec {
        name: "keyed".into(),
        ..TopicSpec::default()
    };
    assert!(matches!(
        admin.create_topic(spec).await,
        Frame::TopicCreated(_)
    ));
    let args = [
        "bench",
        "--topic",
        "keyed",
        "--keep",
        "--ordering",
        "key",
        "--keys",
        "8",
        "--subs",
        "2",
        "--msgs",
        "400",
        "--size",
        "64",
        "--json",
    ];
    let out = crate::bench_scenarios::weir(broker.addr, &args).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json = crate::bench_scenarios::report(&out);
    assert_eq!(
        (json["ordering"].as_str(), json["keys"].as_u64()),
        (Some("key"), Some(8))
    );
    assert_eq!(json["deliver"]["delivered"], 400, "{json}");
    let topics = admin.list().await;
    let group = topics[0].groups.iter().find(|g| g.name == "bench").unwrap();
    assert_eq!(group.config.ordering, GroupOrdering::Key);
}

/// Consumes `n` messages on `client` (subscription 1), acking each as it comes, and returns
/// each key's payloads in the order received, with their attempts.
async fn consume_by_key(client: &mut RawClient, n: usize) -> HashMap<String, Vec<(String, u32)>> {
    let mut seen: HashMap<String, Vec<(String, u32)>> = HashMap::new();
    let mut got = 0;
    while got < n {
        let frame = next_frame(client).await;
        got += frame.len();
        for d in &frame {
            let key = header(d, KEY_HEADER).unwrap().to_string();
            seen.entry(key).or_default().push((text(d), d.attempt));
        }
        let seqs = frame.iter().map(|d| d.seq).collect();
        client.ack_and_credit(seqs).await.unwrap();
    }
    seen
}

#[tokio::test]
async fn keys_not_in_the_tail_cache_are_read_from_the_log() {
    let broker = TestBroker::start_with(|c| c.storage.tail_cache_bytes = 0).await;
    let mut publisher = RawClient::connect(broker.addr).await;
    let payloads: Vec<(String, String)> = (0..300)
        .map(|i| (format!("k{}", i % 3), format!("{}-{}", i % 3, i / 3)))
        .collect();
    let messages: Vec<(&str, &str)> = payloads
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_str()))
        .collect();
    publish_keyed(&mut publisher, "t", &messages).await;
    let mut client = RawClient::connect_v6(broker.addr).await;
    client.subscribe_with(1, "t", "g", 20, keyed()).await;
    let seen = consume_by_key(&mut client, 300).await;
    for k in 0..3 {
        let expected: Vec<(String, u32)> = (0..100).map(|i| (format!("{k}-{i}"), 1)).collect();
        assert_eq!(seen[&format!("k{k}")], expected, "key k{k} in order");
    }
}

#[tokio::test]
async fn waiting_messages_and_a_nacked_key_keep_their_order_across_a_restart() {
    let broker = TestBroker::start().await;
    let messages = [
        ("a", "a0"),
        ("a", "a1"),
        ("b", "b0"),
        ("a", "a2"),
        ("b", "b1"),
    ];
    let mut client = subscribed_then_published(&broker, keyed(), &messages).await;
    let first = receive(&mut client, 2).await;
    assert_eq!(first.iter().map(text).collect::<Vec<_>>(), ["a0", "b0"]);
    client
        .send(Frame::Nack(Nack {
            sub: 1,
            seqs: vec![first[0].seq],
            delay_ms: 60_000,
        }))
        .await;
    let mut admin = RawClient::connect(broker.addr).await;
    weir_tests::wire::wait_for_topic(&mut admin, "t", |t| t.groups[0].in_flight == 1).await;
    drop((client, admin));
    let broker = broker.restart().await;
    let mut client = RawClient::connect_v6(broker.addr).await;
    client.subscribe(1, "t", "g", 10).await;
    // b0 (in flight at the stop) comes back; a0 is nacked for a minute, so a1 and a2 wait.
    let back = receive(&mut client, 1).await.remove(0);
    assert_eq!((text(&back), back.attempt), ("b0".into(), 2));
    client.ack_and_credit(vec![back.seq]).await.unwrap();
    let next = receive(&mut client, 1).await.remove(0);
    assert_eq!(
        text(&next),
        "b1",
        "b's next; a's still wait for the nacked a0"
    );
    assert!(
        client
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing of key a passes its nacked message"
    );
}
