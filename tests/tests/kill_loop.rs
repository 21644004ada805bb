//! A real broker process `SIGKILL`ed again and again while a producer publishes and a
//! consumer group consumes and acks; after every restart both carry on.
//!
//! `WEIR_CRASH_ITERATIONS` kills (default 20), each at an event-driven point: once the producer
//! has had a seeded number of publishes confirmed since the restart and the consumer a seeded
//! number of deliveries (`WEIR_SIM_SEED` replays a run; the seed is printed). At the end the
//! group drains up to a sentinel (so every message whose ack a kill lost comes back to it, the
//! last runs' too), a fresh group reads everything still stored, and the checker asserts:
//!
//! - every confirmed payload is stored: delivered to the group at least once, or read by the
//!   fresh group from the earliest stored message;
//! - nothing unexpected: every payload delivered was published by this test;
//! - no sequence reused: one seq never maps to two payloads across the whole run (confirms and
//!   deliveries alike);
//! - duplicates are bounded: at each kill at most the credit window is delivered and unacked;
//!   every payload delivered twice was in flight at a kill or acked before one; the acks a kill
//!   loses are a suffix of that run's acks (group state is persisted as snapshots, every
//!   `state_flush_ms`, so how many is not bounded by the window: it is counted and printed);
//!   and the duplicates number at most those in flight plus those lost acks.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use weir_protocol::{Ack, Credit, Frame, GroupSpec, Publish, StartPosition, TopicSpec};
use weir_tests::{BrokerProcess, RawClient};

const TOPIC: &str = "killloop";
const GROUP: &str = "workers";
/// The consumer's credit window: at most this many deliveries unacked at any time.
const WINDOW: u32 = 32;
/// The consumer acks (and returns credit) once it holds this many, or when deliveries pause.
const ACK_BATCH: usize = 8;
const ACK_IDLE: Duration = Duration::from_millis(5);
/// The producer's bound on unanswered publishes.
const MAX_IN_FLIGHT: u64 = 32;
/// Bound on reaching a kill point, and on a client task noticing the kill.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// SplitMix64: a seeded, dependency-free generator for the kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Everything the clients saw over the whole run.
#[derive(Default)]
struct Seen {
    /// Every payload published (sent), confirmed or not.
    published: HashSet<String>,
    /// Confirmed publishes: seq → payload.
    confirmed: HashMap<u64, String>,
    /// Deliveries to the group: (run, seq, payload).
    delivered: Vec<(usize, u64, String)>,
    /// Acks sent, per run: payloads.
    acked: Vec<Vec<String>>,
    /// Delivered and not yet acked in the current run: seq → payload.
    unacked: HashMap<u64, String>,
    /// The unacked set at each kill.
    unacked_at_kill: Vec<Vec<String>>,
}

/// Publishes `kl-<n>` payloads in pipelined rounds of [`MAX_IN_FLIGHT`] until the connection
/// is lost, recording every one sent and every confirmation.
async fn produce(addr: SocketAddr, seen: Arc<Mutex<Seen>>, next: Arc<AtomicUsize>) {
    let mut client = RawClient::connect(addr).await;
    let mut id = 0u64;
    loop {
        let framed = client.framed_mut();
        let mut sent = HashMap::new();
        for _ in 0..MAX_IN_FLIGHT {
            id += 1;
            let n = next.fetch_add(1, Ordering::Relaxed);
            let payload = format!("kl-{n}");
            lock(&seen).published.insert(payload.clone());
            sent.insert(id, payload.clone());
            let publish = Publish {
                producer: None,
                id,
                topic: TOPIC.into(),
                headers: Vec::new(),
                payload: Bytes::from(payload),
            };
            if framed.feed(Frame::Publish(publish)).await.is_err() {
                return;
            }
        }
        if framed.flush().await.is_err() {
            return;
        }
        for _ in 0..MAX_IN_FLIGHT {
            match framed.next().await {
                Some(Ok(Frame::PublishOk(ok))) => {
                    let payload = sent.remove(&ok.id).expect("a confirm for a publish sent");
                    let mut seen = lock(&seen);
                    if let Some(before) = seen.confirmed.insert(ok.seq, payload.clone()) {
                        panic!(
                            "seq {} confirmed for {before} and again for {payload}",
                            ok.seq
                        );
                    }
                }
                Some(Ok(Frame::Rejected(_))) => {}
                Some(Ok(other)) => panic!("producer got an unexpected frame: {other:?}"),
                Some(Err(_)) | None => return,
            }
        }
    }
}

/// Joins [`GROUP`] with [`WINDOW`] credit and acks what it receives, recording it in `seen`
/// under `run`, until the connection is lost.
async fn consume(addr: SocketAddr, seen: Arc<Mutex<Seen>>, run: usize, count: Arc<AtomicUsize>) {
    let mut client = RawClient::connect(addr).await;
    client.subscribe(1, TOPIC, GROUP, WINDOW).await;
    let mut pending: Vec<u64> = Vec::new();
    loop {
        let next = if pending.is_empty() {
            client.framed_mut().next().await
        } else {
            match tokio::time::timeout(ACK_IDLE, client.framed_mut().next()).await {
                Ok(next) => next,
                Err(_) => {
                    if ack(&mut client, &seen, run, std::mem::take(&mut pending))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            }
        };
        match next {
            Some(Ok(Frame::Deliver(d))) => {
                let payload = String::from_utf8_lossy(&d.payload).into_owned();
                {
                    let mut seen = lock(&seen);
                    seen.delivered.push((run, d.seq, payload.clone()));
                    seen.unacked.insert(d.seq, payload);
                    assert!(
                        seen.unacked.len() <= WINDOW as usize,
                        "{} deliveries unacked with a credit window of {WINDOW}",
                        seen.unacked.len()
                    );
                }
                count.fetch_add(1, Ordering::Relaxed);
                pending.push(d.seq);
                if pending.len() >= ACK_BATCH
                    && ack(&mut client, &seen, run, std::mem::take(&mut pending))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            Some(Ok(other)) => panic!("consumer got an unexpected frame: {other:?}"),
            Some(Err(_)) | None => return,
        }
    }
}

/// The group's last run (`run`): consumes and acks until the sentinel (`sentinel_seq`) comes,
/// recording every delivery in `seen`.
async fn drain(addr: SocketAddr, seen: &Mutex<Seen>, run: usize, sentinel_seq: u64) {
    lock(seen).acked.push(Vec::new());
    let mut client = RawClient::connect(addr).await;
    client.subscribe(1, TOPIC, GROUP, WINDOW).await;
    loop {
        let d = client.deliveries(1).await.remove(0);
        let payload = String::from_utf8_lossy(&d.payload).into_owned();
        {
            let mut seen = lock(seen);
            seen.delivered.push((run, d.seq, payload.clone()));
            seen.unacked.insert(d.seq, payload);
        }
        ack(&mut client, seen, run, vec![d.seq])
            .await
            .expect("the drain acks");
        if d.seq == sentinel_seq {
            return;
        }
    }
}

/// Acks `seqs` and returns as much credit. Recorded before it is sent: an ack the kill cut off
/// counts as sent (and lost).
async fn ack(
    client: &mut RawClient,
    seen: &Mutex<Seen>,
    run: usize,
    seqs: Vec<u64>,
) -> Result<(), ()> {
    {
        let mut seen = lock(seen);
        for seq in &seqs {
            if let Some(payload) = seen.unacked.remove(seq) {
                seen.acked[run].push(payload);
            }
        }
    }
    client.ack_and_credit(seqs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_lose_nothing_confirmed_and_never_reuse_a_seq() {
    let iterations: usize = std::env::var("WEIR_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("WEIR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    let replay = format!(
        "replay: WEIR_SIM_SEED={seed} WEIR_CRASH_ITERATIONS={iterations} cargo build -p \
         weir-broker && WEIR_SIM_SEED={seed} WEIR_CRASH_ITERATIONS={iterations} cargo test -p \
         weir-tests kill_loop"
    );
    eprintln!("kill loop: seed {seed}, {iterations} kills ({replay})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("weir.toml");
    // Small segments: rolls and reclaim happen between kills.
    std::fs::write(
        &config,
        "[storage]\nstate_flush_ms = 20\nsegment_bytes = 16384\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let next_payload = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    for run in 0..iterations {
        let broker = BrokerProcess::start(&data, &args);
        if run == 0 {
            let mut admin = RawClient::connect(broker.addr).await;
            let spec = TopicSpec {
                name: TOPIC.into(),
                max_messages: Some(1_000_000),
                ..TopicSpec::default()
            };
            let created = admin.create_topic(spec).await;
            assert!(matches!(created, Frame::TopicCreated(_)), "{created:?}");
        }
        lock(&seen).acked.push(Vec::new());
        let confirms_before = lock(&seen).confirmed.len();
        let delivered = Arc::new(AtomicUsize::new(0));
        let consumer = tokio::spawn(consume(broker.addr, seen.clone(), run, delivered.clone()));
        let producer = tokio::spawn(produce(broker.addr, seen.clone(), next_payload.clone()));
        let kill_confirms = 100 + (rng.next() % 900) as usize;
        let kill_deliveries = 10 + (rng.next() % 100) as usize;
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            let confirms = lock(&seen).confirmed.len() - confirms_before;
            let deliveries = delivered.load(Ordering::Relaxed);
            if confirms >= kill_confirms && deliveries >= kill_deliveries {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {run}: no kill point within {PHASE_TIMEOUT:?} ({confirms} confirms, \
                 {deliveries} deliveries since the restart)\n{replay}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        broker.kill9();
        for (what, task) in [("producer", producer), ("consumer", consumer)] {
            tokio::time::timeout(PHASE_TIMEOUT, task)
                .await
                .unwrap_or_else(|_| panic!("the {what} did not notice the kill\n{replay}"))
                .unwrap_or_else(|e| panic!("the {what} panicked: {e}\n{replay}"));
        }
        let mut s = lock(&seen);
        let unacked: Vec<String> = s.unacked.drain().map(|(_, p)| p).collect();
        s.unacked_at_kill.push(unacked);
    }

    // The final restart: a sentinel marks the end, the group drains, a fresh group reads
    // everything stored.
    let broker = BrokerProcess::start(&data, &args);
    let mut client = RawClient::connect(broker.addr).await;
    let sentinel = "kl-sentinel";
    lock(&seen).published.insert(sentinel.into());
    let sentinel_seq = match client.publish(TOPIC, sentinel).await {
        Frame::PublishOk(ok) => ok.seq,
        other => panic!("the sentinel was not confirmed: {other:?}\n{replay}"),
    };
    // The checker group first (it pins everything stored), then the group drains: every
    // message whose ack a kill lost comes back to it now, so lost acks can be judged for every
    // run, the last ones too.
    let mut reader = RawClient::connect(broker.addr).await;
    let spec = GroupSpec {
        start: StartPosition::Earliest,
        ..GroupSpec::default()
    };
    reader.subscribe_with(1, TOPIC, "checker", 500, spec).await;
    drain(broker.addr, &seen, iterations, sentinel_seq).await;
    let mut stored: Vec<(u64, String)> = Vec::new();
    loop {
        let d = reader.deliveries(1).await.remove(0);
        reader
            .send(Frame::Ack(Ack {
                sub: 1,
                seqs: vec![d.seq],
            }))
            .await;
        reader.send(Frame::Credit(Credit { sub: 1, n: 1 })).await;
        let payload = String::from_utf8_lossy(&d.payload).into_owned();
        stored.push((d.seq, payload));
        if d.seq == sentinel_seq {
            break;
        }
    }
    drop(broker);
    let elapsed = started.elapsed();

    // --- The checker.
    let seen = std::mem::take(&mut *lock(&seen));
    // No seq reused: one seq, one payload, whoever saw it.
    let mut payload_of: HashMap<u64, &str> = HashMap::new();
    let all = seen
        .confirmed
        .iter()
        .map(|(s, p)| (*s, p.as_str(), "confirmed"))
        .chain(
            seen.delivered
                .iter()
                .map(|(_, s, p)| (*s, p.as_str(), "delivered")),
        )
        .chain(stored.iter().map(|(s, p)| (*s, p.as_str(), "stored")))
        .chain(std::iter::once((sentinel_seq, sentinel, "confirmed")));
    for (seq, payload, how) in all {
        // Nothing unexpected.
        assert!(
            seen.published.contains(payload),
            "seq {seq} ({how}) carries {payload:?}, never published\n{replay}"
        );
        if let Some(before) = payload_of.insert(seq, payload) {
            assert_eq!(
                before, payload,
                "seq {seq} reused: {before:?} and {payload:?} ({how})\n{replay}"
            );
        }
    }
    // Every confirmed payload is stored.
    let delivered: HashSet<&str> = seen.delivered.iter().map(|(_, _, p)| p.as_str()).collect();
    let read: HashSet<&str> = stored.iter().map(|(_, p)| p.as_str()).collect();
    let mut lost: Vec<(u64, &str)> = seen
        .confirmed
        .iter()
        .filter(|(_, p)| !delivered.contains(p.as_str()) && !read.contains(p.as_str()))
        .map(|(s, p)| (*s, p.as_str()))
        .collect();
    lost.sort_unstable();
    assert!(
        lost.is_empty(),
        "{} of {} confirmed publishes are gone: first {:?}\n{replay}",
        lost.len(),
        seen.confirmed.len(),
        &lost[..lost.len().min(10)]
    );
    // Duplicates: each is explained by a kill, and bounded.
    let mut times: HashMap<&str, usize> = HashMap::new();
    for (_, _, p) in &seen.delivered {
        *times.entry(p.as_str()).or_default() += 1;
    }
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    let in_flight_at_kills: usize = seen.unacked_at_kill.iter().map(Vec::len).sum();
    for (k, unacked) in seen.unacked_at_kill.iter().enumerate() {
        assert!(
            unacked.len() <= WINDOW as usize,
            "kill {k}: {} unacked, window {WINDOW}",
            unacked.len()
        );
    }
    let explainable: HashSet<&str> = seen
        .unacked_at_kill
        .iter()
        .flatten()
        .chain(seen.acked.iter().flatten())
        .map(String::as_str)
        .collect();
    for (p, n) in &times {
        if *n > 1 {
            assert!(
                explainable.contains(p),
                "{p} delivered {n} times but neither in flight at a kill nor acked\n{replay}"
            );
            assert!(
                *n <= iterations + 1,
                "{p} delivered {n} times in {iterations} kills\n{replay}"
            );
        }
    }
    // Acks the broker lost at each kill (acked, then delivered again in a later run): the group
    // state is persisted as snapshots, so they are a suffix of that run's acks.
    let mut runs_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (run, _, p) in &seen.delivered {
        runs_of.entry(p.as_str()).or_default().push(*run);
    }
    let mut lost_acks = 0;
    for (k, acks) in seen.acked.iter().enumerate() {
        let lost: Vec<bool> = acks
            .iter()
            .map(|p| runs_of[p.as_str()].iter().any(|&r| r > k))
            .collect();
        let first_lost = lost.iter().position(|&l| l).unwrap_or(lost.len());
        if let Some(kept) = lost[first_lost..].iter().position(|&l| !l) {
            let of = |p: &str| -> Vec<(usize, u64)> {
                seen.delivered
                    .iter()
                    .filter(|(_, _, q)| q == p)
                    .map(|(r, s, _)| (*r, *s))
                    .collect()
            };
            panic!(
                "run {k}: ack #{first_lost} ({}, delivered {:?}) was lost but the later ack #{} \
                 ({}, delivered {:?}) survived the kill: group state not persisted as one \
                 snapshot\n{replay}",
                acks[first_lost],
                of(&acks[first_lost]),
                first_lost + kept,
                acks[first_lost + kept],
                of(&acks[first_lost + kept])
            );
        }
        lost_acks += lost.len() - first_lost;
    }
    assert!(
        duplicates <= in_flight_at_kills + lost_acks,
        "{duplicates} duplicate deliveries, more than the {in_flight_at_kills} in flight at \
         the kills plus the {lost_acks} acks they lost\n{replay}"
    );
    assert!(
        !seen.confirmed.is_empty() && !seen.delivered.is_empty(),
        "the run made no progress\n{replay}"
    );
    eprintln!(
        "kill loop: {iterations} kills in {elapsed:?}; {} published, {} confirmed, {} \
         deliveries to the group ({duplicates} duplicates: {in_flight_at_kills} in flight at \
         kills (window bound {}), {lost_acks} acks not yet persisted at kills), {} read back \
         by a fresh group",
        seen.published.len(),
        seen.confirmed.len(),
        seen.delivered.len(),
        WINDOW as usize * iterations,
        stored.len()
    );
}
