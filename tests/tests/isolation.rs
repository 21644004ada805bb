//! What one client cannot do to another: each case sets an offender to work — slow, idle,
//! lying about sizes or hostile — beside a healthy neighbour that publishes and consumes 500
//! of 500 messages with no refusal meanwhile. The offender gets the stated refusal or close;
//! the memory budget never passes its capacity; where memory is the point (the first three),
//! a real broker process's RSS stays under its budget plus a stated constant. Nothing here
//! asserts on speed.
//!
//! The admin endpoint's cases are in `isolation_admin.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use weir_protocol::*;
use weir_tests::{
    eventually, healthy_neighbour, scrape, BrokerProcess, Healthy, RawClient, TestBroker,
};

const MIB: u64 = 1024 * 1024;
/// Messages the healthy neighbour publishes and consumes in every case.
const N: usize = 500;
/// What a broker process's RSS may hold beyond its memory budget: its idle baseline (about
/// 33 MiB for the debug binary: runtime, thread stacks, sled and its cache), the buffers the
/// budget grants every connection (64 KiB each, ~90 connections here), the socket writers'
/// batches, and allocator slack (freed buffers stay in per-thread arenas).
const OUTSIDE_BUDGET: u64 = 72 * MIB;

fn assert_healthy(seen: Healthy) {
    assert_eq!(
        seen,
        Healthy {
            confirmed: N,
            refused: 0,
            consumed: N
        },
        "the healthy neighbour was refused or starved"
    );
}

/// A real broker process started with a config file, whose RSS is sampled until
/// [`Watched::assert_memory_held_within`].
struct Watched {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    _broker: Arc<BrokerProcess>,
    _dir: tempfile::TempDir,
}

impl Watched {
    /// Starts `weir-broker` with `toml` as its config file and a fresh data directory.
    fn start(toml: &str) -> Watched {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("weir.toml");
        std::fs::write(&config, toml).unwrap();
        let broker = Arc::new(BrokerProcess::start(
            &dir.path().join("data"),
            &["--config", config.to_str().unwrap()],
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(broker.rss_bytes()));
        tokio::spawn({
            let (broker, stop, peak) = (broker.clone(), stop.clone(), peak.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(broker.rss_bytes(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Watched {
            addr: broker.addr,
            admin: broker.admin_addr(),
            stop,
            peak,
            _broker: broker,
            _dir: dir,
        }
    }

    /// Stops sampling and asserts the memory budget never passed `budget` (its high-water
    /// mark, from the broker's metrics) and the RSS peak stayed under it plus
    /// [`OUTSIDE_BUDGET`].
    async fn assert_memory_held_within(&self, budget: u64) {
        let high_water = scrape(self.admin, "weir_memory_budget_high_water_bytes")
            .await
            .expect("the high-water gauge") as u64;
        assert!(
            high_water <= budget,
            "the budget peaked at {high_water} bytes"
        );
        self.stop.store(true, Ordering::Relaxed);
        assert_rss_within(self.peak.load(Ordering::Relaxed), budget);
    }
}

fn assert_rss_within(peak: u64, budget: u64) {
    eprintln!(
        "broker RSS peaked at {} MiB (budget {} MiB)",
        peak / MIB,
        budget / MIB
    );
    assert!(
        peak < budget + OUTSIDE_BUDGET,
        "broker RSS peaked at {} MiB, over its budget ({} MiB) + the stated {} MiB",
        peak / MIB,
        budget / MIB,
        OUTSIDE_BUDGET / MIB
    );
}

/// Item 1: connections that announce large frames and send nothing more are charged for what
/// arrived (almost nothing); before `Hello` a large frame closes the connection at once; a frame
/// that stops arriving closes its connection after `frame_read_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcing_frames_charges_nothing_and_frames_that_stop_arriving_are_cut_off() {
    const BUDGET: u64 = 64 * MIB;
    const OFFENDERS: usize = 70;
    let toml = format!("[limits]\nmemory_budget_bytes = {BUDGET}\nframe_read_timeout_ms = 3000\n");
    let broker = Watched::start(&toml);
    let (addr, admin) = (broker.addr, broker.admin);

    // 70 authenticated connections announce a 4 MiB frame each and send nothing more.
    let mut offenders = Vec::new();
    for _ in 0..OFFENDERS {
        let mut client = RawClient::connect(addr).await;
        client
            .stream()
            .write_all(&(4 * MIB as u32).to_be_bytes())
            .await
            .unwrap();
        offenders.push(client);
    }
    // Before Hello, 64 KiB at most: a 4 MiB announcement is refused and closed at once.
    let mut early = RawClient::connect_raw(addr).await;
    early
        .stream()
        .write_all(&(4 * MIB as u32).to_be_bytes())
        .await
        .unwrap();
    match early.recv_or_closed().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::FrameTooLarge, "{e:?}"),
        other => panic!("expected FrameTooLarge before Hello, got {other:?}"),
    }
    // 280 MiB announced; what arrived is four bytes each, in buffers of a few KiB.
    let used = scrape(admin, "weir_memory_budget_used_bytes")
        .await
        .unwrap() as u64;
    assert!(
        used < OFFENDERS as u64 * 64 * 1024,
        "{used} bytes charged for {OFFENDERS} announced frames that never came"
    );

    let healthy = healthy_neighbour(addr, "victim", N, (None, None)).await;
    assert_healthy(healthy);

    // Each stalled frame closes its connection with FrameTimeout (after 3 s without a byte).
    for mut client in offenders {
        match client.recv_or_closed().await {
            Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::FrameTimeout, "{e:?}"),
            other => panic!("expected FrameTimeout, got {other:?}"),
        }
        assert!(client.recv_or_closed().await.is_none(), "then closed");
    }
    let timeouts = scrape(admin, "weir_frame_read_timeouts_total")
        .await
        .unwrap();
    assert!(
        timeouts >= OFFENDERS as f64,
        "{timeouts} frame read timeouts"
    );
    broker.assert_memory_held_within(BUDGET).await;
}

/// Item 2: a subscriber with 16 subscriptions at credit 1 024 that never reads its socket holds
/// at most its share; the rest waits in the log; publishers are never refused for it; its socket
/// accepting nothing for `slow_consumer_timeout` closes it and its messages go back to their
/// groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_holds_its_share_and_is_closed_losing_nothing() {
    const BUDGET: u64 = 64 * MIB;
    const SHARE: u64 = 16 * MIB;
    const MESSAGES: u64 = 200;
    let toml = format!(
        "[limits]\nmemory_budget_bytes = {BUDGET}\nmax_connection_memory_bytes = {SHARE}\nslow_consumer_timeout_ms = 2000\n[topic_defaults]\nmax_bytes = {}\n",
        512 * MIB
    );
    let broker = Watched::start(&toml);
    let (addr, admin) = (broker.addr, broker.admin);

    // 16 groups, each wanting every message: 16 × 200 MiB asked for by one connection.
    let mut reader = RawClient::connect(addr).await;
    for g in 0..16 {
        reader.subscribe(g + 1, "big", &format!("g{g}"), 1024).await;
    }
    let producer = tokio::spawn(async move {
        let mut publisher = RawClient::connect(addr).await;
        let payload = Bytes::from(vec![0x5A; MIB as usize]);
        let ids = (1..=MESSAGES).map(|id| (id, payload.clone()));
        publisher.feed_publishes("big", ids).await;
        let mut confirmed = 0;
        for _ in 0..MESSAGES {
            match publisher.recv().await {
                Frame::PublishOk(_) => confirmed += 1,
                other => panic!("a reader that stopped got a publisher refused: {other:?}"),
            }
        }
        confirmed
    });
    let healthy = healthy_neighbour(addr, "victim", N, (None, None)).await;
    assert_healthy(healthy);
    assert_eq!(producer.await.unwrap(), MESSAGES);

    // The reader's socket has accepted nothing for 2 s: it is closed.
    eventually_scraped(admin, "weir_slow_consumers_closed_total", |v| v >= 1.0).await;
    drop(reader);
    broker.assert_memory_held_within(BUDGET).await;
    // Nothing it held is lost: its group still has every message.
    let mut consumer = RawClient::connect(addr).await;
    let got = consumer.consume(1, "big", "g0", MESSAGES as usize).await;
    let mut seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>());
}

/// Polls a metric until `check` holds (at most the frame timeout).
async fn eventually_scraped(admin: SocketAddr, name: &str, check: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + weir_tests::wire::FRAME_TIMEOUT;
    loop {
        let value = scrape(admin, name).await.unwrap_or(0.0);
        if check(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Item 3: headers count. Publishes with too many headers, too many header bytes, or a 3 MiB
/// header are refused `MessageTooLarge` naming the bound — the 3 MiB one from its first bytes,
/// never buffered; more headers than the wire's ceiling close the connection; a topic with
/// `max_bytes` 1 024 stores no header-heavy message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bombs_are_refused_and_headers_count_against_every_bound() {
    const BUDGET: u64 = 64 * MIB;
    let broker = Watched::start(&format!("[limits]\nmemory_budget_bytes = {BUDGET}\n"));
    let addr = broker.addr;

    let offender = tokio::spawn(async move {
        let mut client = RawClient::connect(addr).await;
        let small = TopicSpec {
            name: "tiny".into(),
            max_message_bytes: Some(16),
            max_bytes: Some(1024),
            ..Default::default()
        };
        assert!(matches!(
            client.create_topic(small).await,
            Frame::TopicCreated(_)
        ));
        let refused_naming = |frame: Frame, bound: &str| match frame {
            Frame::Rejected(r) if r.reason == RejectReason::MessageTooLarge => {
                assert_eq!(r.limit.name, bound, "{r:?}");
            }
            other => panic!("expected MessageTooLarge naming {bound}, got {other:?}"),
        };
        for _ in 0..40 {
            let huge = vec![("k".to_string(), "v".repeat(3 * MIB as usize))];
            refused_naming(
                client.publish_with_headers("tiny", huge, "x").await,
                "max_header_bytes",
            );
            let many = vec![(String::new(), String::new()); 1_000];
            refused_naming(
                client.publish_with_headers("tiny", many, "x").await,
                "max_headers",
            );
            let over_message = vec![("k".to_string(), "v".repeat(20))];
            refused_naming(
                client.publish_with_headers("tiny", over_message, "").await,
                "max_message_bytes",
            );
        }
        // 65 000 empty headers: a header larger than any accepted, answered unread.
        let bomb = vec![(String::new(), String::new()); 65_000];
        refused_naming(
            client.publish_with_headers("tiny", bomb, "x").await,
            "max_header_bytes",
        );
        // More headers than the wire's ceiling in a small header: a malformed frame, closed.
        let bomb = vec![(String::new(), String::new()); 2_000];
        client
            .send(Frame::Publish(Publish {
                producer: None,
                id: 99,
                topic: "tiny".into(),
                headers: bomb,
                payload: Bytes::new(),
            }))
            .await;
        match client.recv_or_closed().await {
            Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::MalformedFrame),
            other => panic!("expected MalformedFrame, got {other:?}"),
        }
        assert!(client.recv_or_closed().await.is_none());
    });
    let healthy = healthy_neighbour(addr, "victim", N, (None, None)).await;
    assert_healthy(healthy);
    offender.await.unwrap();

    let mut client = RawClient::connect(addr).await;
    let tiny = weir_tests::wire::wait_for_topic(&mut client, "tiny", |_| true).await;
    assert_eq!(
        (tiny.depth, tiny.bytes),
        (0, 0),
        "nothing header-heavy stored"
    );
    broker.assert_memory_held_within(BUDGET).await;
}

/// Item 4: a `Term` reason is cut to `max_reason_bytes` (counted) before it is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_reasons_are_capped_before_they_are_kept() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let offender = tokio::spawn(async move {
        let mut client = RawClient::connect(addr).await;
        assert!(matches!(
            client.publish("t", "doomed").await,
            Frame::PublishOk(_)
        ));
        client.subscribe(1, "t", "g", 1).await;
        let d = client.deliveries(1).await.remove(0);
        let reason = "é".repeat(512 * 1024);
        client
            .send(Frame::Term(Term {
                sub: 1,
                seqs: vec![d.seq],
                reason,
            }))
            .await;
        client.subscribe(2, "t.dlq", "g", 1).await;
        client.deliveries(1).await.remove(0)
    });
    assert_healthy(healthy_neighbour(addr, "victim", N, (None, None)).await);
    let dead = offender.await.unwrap();
    let (_, reason) = dead
        .headers
        .iter()
        .find(|(n, _)| n == "weir-reason")
        .expect("a reason header");
    assert_eq!(
        reason.len(),
        1024,
        "cut at max_reason_bytes, on a character boundary"
    );
    assert!(reason.chars().all(|c| c == 'é'));
    assert_eq!(broker.broker.metrics().reasons_truncated.get(), 1);
}

/// Item 5: topic bounds have broker-wide ceilings; a tenant that fills its topics stops at its
/// own topic bounds while its neighbour keeps publishing; the disk budget refuses everyone
/// `StorageFull` before the filesystem is full, and takes work again once room returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_ceilings_and_the_disk_budget_bound_what_a_tenant_can_store() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_topic_bytes = 2 * MIB;
        c.limits.max_topic_messages = 100_000;
        c.storage.max_bytes = Some(16 * MIB);
        c.storage.segment_bytes = MIB;
        c.topic_defaults.max_bytes = MIB;
    })
    .await;
    let mut offender = RawClient::connect(broker.addr).await;
    for (spec, bound) in [
        (
            TopicSpec {
                name: "greedy".into(),
                max_bytes: Some(u64::MAX),
                ..Default::default()
            },
            "max_topic_bytes",
        ),
        (
            TopicSpec {
                name: "greedy".into(),
                max_messages: Some(1 << 40),
                ..Default::default()
            },
            "max_topic_messages",
        ),
    ] {
        match offender.create_topic(spec).await {
            Frame::Error(e) => {
                assert_eq!(e.code, ErrorCode::LimitExceeded);
                assert!(e.message.contains(bound), "{}", e.message);
            }
            other => panic!("expected LimitExceeded naming {bound}, got {other:?}"),
        }
    }
    // The offender fills its topic to the ceiling; its neighbour is untouched.
    let addr = broker.addr;
    let filler = tokio::spawn(async move {
        let payload = Bytes::from(vec![1u8; 64 * 1024]);
        let spec = TopicSpec {
            name: "greedy".into(),
            max_bytes: Some(2 * MIB),
            ..Default::default()
        };
        assert!(matches!(
            offender.create_topic(spec).await,
            Frame::TopicCreated(_)
        ));
        loop {
            match offender.publish("greedy", payload.clone()).await {
                Frame::PublishOk(_) => {}
                Frame::Rejected(r) => {
                    assert_eq!(
                        (r.reason, r.limit.name.as_str()),
                        (RejectReason::TopicFull, "max_bytes")
                    );
                    return offender;
                }
                other => panic!("{other:?}"),
            }
        }
    });
    assert_healthy(healthy_neighbour(addr, "victim", N, (None, None)).await);
    let mut offender = filler.await.unwrap();

    // Past the disk budget every publish is refused, with the bound and a retry hint.
    let payload = Bytes::from(vec![2u8; 256 * 1024]);
    let mut topic = 0;
    let refusal = loop {
        topic += 1;
        assert!(topic < 100, "16 MiB of disk budget never filled");
        let name = format!("fill-{topic}");
        match offender.publish(&name, payload.clone()).await {
            Frame::PublishOk(_) => {}
            Frame::Rejected(r) if r.reason == RejectReason::StorageFull => break r,
            Frame::Rejected(r) if r.reason == RejectReason::TopicFull => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(refusal.limit, Limit::new("storage.max_bytes", 16 * MIB));
    assert!(refusal.retry_after_ms.is_some());
    let disk = broker.broker.disk();
    assert!(disk.stored() <= 16 * MIB, "{} bytes stored", disk.stored());
    // Room returns as topics go: the next publish is taken.
    let mut admin = RawClient::connect(broker.addr).await;
    for t in 1..topic {
        admin
            .send(Frame::DeleteTopic(DeleteTopic {
                req: 1,
                name: format!("fill-{t}"),
                force: true,
            }))
            .await;
        assert!(matches!(admin.recv().await, Frame::TopicDeleted(_)));
    }
    assert!(matches!(
        offender.publish("after", payload).await,
        Frame::PublishOk(_)
    ));
}

/// Item 5, the filesystem side: below `storage.min_free_bytes` nothing is stored.
#[tokio::test]
async fn below_min_free_bytes_publishes_are_refused_before_anything_is_written() {
    let broker = TestBroker::start_with(|c| c.storage.min_free_bytes = u64::MAX / 2).await;
    let mut client = RawClient::connect(broker.addr).await;
    let segments = broker.dir.path().join("topics");
    let before = weir_tests::dir_size(&segments);
    match client.publish("t", vec![0u8; 4096]).await {
        Frame::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::StorageFull);
            assert_eq!(r.limit.name, "storage.min_free_bytes");
        }
        other => panic!("expected StorageFull, got {other:?}"),
    }
    assert!(
        weir_tests::dir_size(&segments) <= before + 4096,
        "nothing written"
    );
}

/// Item 6: an idle connection (no subscription, no frame) is closed with `GoingAway{Idle}`; one
/// with a subscription is not; past `max_connections` a newcomer gets
/// `Rejected{TooManyConnections}` before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_the_connection_bound_answers_newcomers() {
    let broker = TestBroker::start_with(|c| c.limits.idle_timeout_ms = 300).await;
    let mut idle = RawClient::connect(broker.addr).await;
    let mut subscribed = RawClient::connect(broker.addr).await;
    subscribed.subscribe(1, "kept", "g", 1).await;
    match idle.recv_or_closed().await {
        Some(Frame::GoingAway(g)) => assert_eq!(g.reason, GoingAwayReason::Idle),
        other => panic!("expected GoingAway{{Idle}}, got {other:?}"),
    }
    assert!(idle.recv_or_closed().await.is_none(), "then closed");
    // The subscribed connection outlived the idle one and still gets its messages.
    let mut publisher = RawClient::connect(broker.addr).await;
    assert!(matches!(
        publisher.publish("kept", "m").await,
        Frame::PublishOk(_)
    ));
    assert_eq!(subscribed.deliveries(1).await[0].payload, "m");
    assert!(broker.broker.metrics().idle_closed.get() >= 1);

    let broker = TestBroker::start_with(|c| c.limits.max_connections = 8).await;
    let addr = broker.addr;
    let metrics = broker.broker.metrics().clone();
    let neighbour = tokio::spawn(healthy_neighbour(addr, "victim", N, (None, None)));
    eventually("the neighbour's two connections are open", || {
        metrics.connections.get() == 2
    })
    .await;
    let mut swarm = Vec::new();
    for _ in 0..6 {
        swarm.push(RawClient::connect(addr).await);
    }
    let mut newcomer = RawClient::connect_raw(addr).await;
    match newcomer.recv_or_closed().await {
        Some(Frame::Rejected(r)) => {
            assert_eq!(r.reason, RejectReason::TooManyConnections);
            assert_eq!(r.limit, Limit::new("max_connections", 8));
        }
        other => panic!("expected Rejected{{TooManyConnections}}, got {other:?}"),
    }
    assert_healthy(neighbour.await.unwrap());
}

/// Item 8: every reply fits in a frame — listings page, a description too large is cut and says
/// so — and an answer that cannot be encoded is answered with `Error{FrameTooLarge}` for that
/// request, the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_fits_a_frame_and_one_that_cannot_is_answered_with_an_error() {
    const FRAME: u32 = 8 * 1024;
    let broker = TestBroker::start_with(|c| {
        c.limits.max_frame_bytes = FRAME;
        c.limits.max_unauthenticated_frame_bytes = FRAME;
        c.limits.max_header_bytes = 4 * 1024;
        c.limits.max_subscriptions = 64;
        c.topic_defaults.max_message_bytes = 4 * 1024;
        c.default_rate.ops_per_s = 100_000;
        c.default_rate.ops_burst = 100_000;
    })
    .await;
    let addr = broker.addr;
    let neighbour = tokio::spawn(healthy_neighbour(addr, "victim", N, (None, None)));
    let mut client = RawClient::connect(addr).await;
    for i in 0..300 {
        let spec = TopicSpec {
            name: format!("{}-{i:03}", "t".repeat(150)),
            ..Default::default()
        };
        assert!(matches!(
            client.create_topic(spec).await,
            Frame::TopicCreated(_)
        ));
    }
    let (mut pages, mut after, mut names) = (0, None, Vec::new());
    loop {
        let page = client.list_page(after, 0).await;
        pages += 1;
        let next = page.next.clone();
        names.extend(page.topics.iter().map(|t| t.config.name.clone()));
        let mut buf = bytes::BytesMut::new();
        WeirCodec::new(FRAME as usize)
            .encode_frame(&Frame::TopicList(page), &mut buf)
            .expect("each page fits the frame limit");
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert!(
        pages > 1 && names.len() == 301,
        "{pages} pages, {} topics",
        names.len()
    );
    // 64 groups with long names do not fit one description: it is cut, and says how many.
    for g in 0..64 {
        client
            .subscribe(g + 1, "crowded", &format!("{}-{g}", "g".repeat(190)), 0)
            .await;
    }
    client
        .send(Frame::DescribeTopic(DescribeTopic {
            req: 7,
            name: "crowded".into(),
        }))
        .await;
    match client.recv().await {
        Frame::TopicDescription(d) => {
            assert!(d.info.groups_omitted > 0);
            assert_eq!(d.info.groups.len() + d.info.groups_omitted as usize, 64);
        }
        other => panic!("expected a description, got {other:?}"),
    }
    assert_healthy(neighbour.await.unwrap());

    // A message stored under a larger frame limit cannot be delivered under a smaller one:
    // its delivery is answered with an error naming it, and the connection lives on.
    assert!(matches!(
        client.publish("big", vec![7u8; 3 * 1024]).await,
        Frame::PublishOk(_)
    ));
    drop(client);
    let broker = broker
        .restart_with(|c| {
            c.limits.max_frame_bytes = 2 * 1024;
            c.limits.max_unauthenticated_frame_bytes = 2 * 1024;
            c.limits.max_header_bytes = 256;
            c.limits.max_reason_bytes = 64;
            c.topic_defaults.max_message_bytes = 512;
        })
        .await;
    let mut client = RawClient::connect(broker.addr).await;
    client.subscribe(1, "big", "g", 1).await;
    match client.recv().await {
        Frame::Error(e) => {
            assert_eq!((e.code, e.req), (ErrorCode::FrameTooLarge, 1), "{e:?}");
        }
        other => panic!("expected Error{{FrameTooLarge}}, got {other:?}"),
    }
    client.send(Frame::Ping(5)).await;
    assert_eq!(
        client.recv().await,
        Frame::Pong(5),
        "the connection lives on"
    );
    assert!(broker.broker.metrics().replies_too_large.get() >= 1);
}

/// Item 9: admission in one order for every path — a publish that would auto-create a topic
/// pays `ops_per_s`; a refused operation is counted under that operation; rate tokens spent on a
/// publish the topic then refuses are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_charges_auto_create_and_gives_tokens_back_on_later_refusals() {
    let broker = TestBroker::start_with(|c| {
        let key = |name: &str, rate| weir_broker::ApiKey::with_token(name, name, rate);
        let tight = weir_broker::RateConfig {
            ops_per_s: 1,
            ops_burst: 2,
            messages_per_s: 1,
            messages_burst: 5,
            ..Default::default()
        };
        c.keys = vec![key("offender", Some(tight)), key("neighbour", None)];
    })
    .await;
    let addr = broker.addr;
    let neighbour = tokio::spawn(healthy_neighbour(
        addr,
        "victim",
        N,
        (Some("neighbour"), None),
    ));
    let mut offender = RawClient::connect_as(addr, Some("offender")).await;
    assert!(matches!(
        offender.publish("new-1", "x").await,
        Frame::PublishOk(_)
    ));
    assert!(matches!(
        offender.publish("new-2", "x").await,
        Frame::PublishOk(_)
    ));
    match offender.publish("new-3", "x").await {
        Frame::Rejected(r) => {
            assert_eq!(
                (r.reason, r.limit.name.as_str()),
                (RejectReason::RateLimited, "ops_per_s")
            );
        }
        other => panic!("a third auto-create passed ops_per_s: {other:?}"),
    }
    assert!(broker.broker.topic("new-3").is_none(), "nothing created");
    // A subscribe refused at ops_per_s is counted as a subscribe, not as a publish.
    let publishes_refused = broker.broker.metrics().rejected.get();
    offender
        .send(Frame::Subscribe(Subscribe {
            sub: 1,
            topic: "new-1".into(),
            group: "g".into(),
            credit: 1,
            group_spec: GroupSpec::default(),
        }))
        .await;
    assert!(matches!(offender.recv().await, Frame::Rejected(r) if r.limit.name == "ops_per_s"));
    assert_eq!(
        broker.broker.metrics().ops_rejected[0].get(),
        1,
        "one subscribe"
    );
    assert_eq!(broker.broker.metrics().rejected.get(), publishes_refused);
    // Publishes new-1 refuses (full) cost no tokens: with 3 of the burst of 5 left, ten refusals
    // later the key can still publish.
    let full = TopicSpec {
        name: "full".into(),
        max_messages: Some(1),
        ..Default::default()
    };
    let mut admin = RawClient::connect_as(addr, Some("neighbour")).await;
    assert!(matches!(
        admin.create_topic(full).await,
        Frame::TopicCreated(_)
    ));
    assert!(matches!(
        offender.publish("full", "1").await,
        Frame::PublishOk(_)
    ));
    for _ in 0..10 {
        match offender.publish("full", "more").await {
            Frame::Rejected(r) => assert_eq!(r.reason, RejectReason::TopicFull, "{r:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        offender.publish("new-1", "y").await,
        Frame::PublishOk(_)
    ));
    assert_healthy(neighbour.await.unwrap());
}

/// Item 10: an address that fails authentication more than `max_auth_failures_per_s` times a
/// second has its next connections refused before `Hello`; another address is not affected.
/// On a paused broker clock the window cannot move while the guesses run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address() {
    let broker = TestBroker::start_paused_with(|c| {
        c.limits.max_auth_failures_per_s = 10;
        c.keys = vec![weir_broker::ApiKey::with_token("good", "good", None)];
    })
    .await;
    let addr = broker.addr;
    let other: IpAddr = [127, 0, 0, 2].into();
    let neighbour = tokio::spawn(healthy_neighbour(
        addr,
        "victim",
        N,
        (Some("good"), Some(other)),
    ));
    let (mut unauthorized, mut throttled) = (0, 0);
    for guess in 0..1_000 {
        if throttled > 0 {
            break;
        }
        let mut client = RawClient::connect_raw(addr).await;
        client.hello(Some(&format!("guess-{guess}"))).await;
        match client.recv_or_closed().await {
            Some(Frame::Error(e)) if e.code == ErrorCode::Unauthorized => unauthorized += 1,
            Some(Frame::Rejected(r)) => {
                assert_eq!(r.reason, RejectReason::RateLimited);
                assert_eq!(r.limit, Limit::new("max_auth_failures_per_s", 10));
                assert_eq!(r.retry_after_ms, Some(1000), "the whole second is left");
                throttled += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (unauthorized, throttled),
        (10, 1),
        "10 guesses in the second, then refused"
    );
    // Once the second is over the address may try again.
    broker.clock.advance(Duration::from_secs(1));
    let mut client = RawClient::connect_raw(addr).await;
    client.hello(Some("good")).await;
    assert!(matches!(client.recv().await, Frame::HelloOk(_)));
    let m = broker.broker.metrics();
    assert_eq!(m.auth_failures.get(), unauthorized);
    assert_eq!(m.auth_throttled.get(), throttled);
    assert_healthy(neighbour.await.unwrap());
}
