//! `weir bench` (no scenario): publishers and subscribers running concurrently against a
//! broker, measuring throughput and publish→confirm / publish→deliver latency.
//!
//! Each publisher and each subscriber has its own connection. Every payload starts with a
//! 16-byte stamp: the send time in nanoseconds of a monotonic clock shared by the whole process
//! ([`now_ns`]), then the run id, so subscribers measure publish→deliver latency and skip (but
//! ack) messages left in the topic by earlier runs — there are some only with `--topic`: by
//! default each run publishes to a fresh topic, `bench-<pid>-<random>`, deleted at its end
//! unless `--keep` (as is a `--topic` the run created). Group names are stable across runs
//! (`<group>` in shared mode, `<group>-<i>` in fan-out mode) so leftovers in a `--topic` drain
//! instead of piling up in abandoned groups.
//!
//! With `--topics N` the run is spread over N fresh topics (`bench-<pid>-<random>-<i>`), each
//! with `--pubs` publishers and `--subs` subscribers of its own; the report adds each topic's
//! confirmed and delivered rates and the lowest and highest of them. In fan-out mode every
//! subscriber is a group of its own: `--subs N --group-mode fanout` is fan-out to N groups per
//! topic, and the report names the number of groups and the lowest and highest rate one group
//! was delivered at. With `--idle-connections N`, N more connections are opened before the run
//! and held idle through it ([`super::idle`]).
//!
//! The run is bounded: by `--msgs` or `--duration`, and by `--timeout` (at least 10 s more than
//! `--duration`), after which everything stops and the partial results are reported with
//! `timed_out: true`. A progress bar (on stderr) follows the confirms when stdout is a terminal
//! and `--json` is not given.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use weir_client::{
    Client, ClientError, ClientOptions, GroupOrdering, GroupSpec, PublishError, Subscription,
    TopicSpec, KEY_HEADER,
};

use super::cleanup::Created;
use super::common::{
    connect, histogram, human_us, now_ns, payload, progress_bar, progress_enabled, read_proc,
    run_id, stamp, BrokerUsage, Latency, ProcReading, STAMP_BYTES,
};
use super::idle::{Idle, IdleReport};
use super::{BenchArgs, GroupMode};
use crate::size::format_size;

/// How long a subscriber waits for the broker to confirm its unsubscribe at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How much longer than `--duration` a run may take before it counts as timed out.
const DURATION_MARGIN: Duration = Duration::from_secs(10);

/// How long a stopped publisher waits for the answers to what it already sent (so every
/// publish of the run is settled at the broker before its topic is deleted: a publish still on
/// its way after the delete would create the topic again).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most topics one run spreads over (`--topics`; each is created, and removed at the end).
const MAX_TOPICS: usize = 32;

/// Distinct `weir-key` values published with `--ordering key` when `--keys` is not given.
const DEFAULT_KEYS: u32 = 64;

/// What one publisher measured.
pub(super) struct PubResult {
    pub(super) sent: u64,
    pub(super) confirmed: u64,
    pub(super) refusals: BTreeMap<String, u64>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) last_confirm_ns: u64,
    pub(super) latency: Histogram<u64>,
}

/// A publisher's results with the index of its topic.
type TopicPub = (usize, PubResult);

/// A subscriber's results with the index of its topic and its group.
type TopicSub = (usize, String, SubResult);

/// What one subscriber measured.
struct SubResult {
    delivered: u64,
    redelivered: u64,
    foreign: u64,
    last_delivery_ns: u64,
    error: Option<String>,
    latency: Histogram<u64>,
}

/// When subscribers should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Publishing goes on: the number to expect is not known yet.
    Unknown,
    /// Stop once this many messages of this run are delivered (per subscriber in fan-out mode,
    /// in total in shared mode).
    Count(u64),
    /// Stop now.
    Stop,
}

#[derive(Debug, Serialize)]
struct PublishReport {
    sent: u64,
    confirmed: u64,
    refused: u64,
    refusals: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed_s: f64,
    msgs_per_s: f64,
    mb_per_s: f64,
    /// The lowest and highest confirmed rate of one topic (msg/s).
    per_topic_min_msgs_per_s: f64,
    per_topic_max_msgs_per_s: f64,
    confirm_latency: Latency,
}

#[derive(Debug, Serialize)]
struct DeliverReport {
    expected: u64,
    delivered: u64,
    redelivered: u64,
    skipped_from_earlier_runs: u64,
    errors: Vec<String>,
    elapsed_s: f64,
    msgs_per_s: f64,
    mb_per_s: f64,
    /// Groups delivered to, over all topics: `--subs` per topic in fan-out mode (each sees
    /// every message of its topic), one per topic in shared mode.
    groups: usize,
    /// The lowest and highest rate one group was delivered at (msg/s).
    per_group_min_msgs_per_s: f64,
    per_group_max_msgs_per_s: f64,
    deliver_latency: Latency,
}

/// One topic's share of the run.
#[derive(Debug, Serialize)]
struct TopicReport {
    name: String,
    confirmed: u64,
    publish_msgs_per_s: f64,
    /// Deliveries of this run's messages to all the topic's groups (none without subscribers).
    delivered: Option<u64>,
    deliver_msgs_per_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    /// The topic (the first one with `--topics`).
    topic: String,
    /// Topics the run was spread over (`--topics`).
    topics: usize,
    /// Publishers and subscribers per topic.
    pubs: usize,
    subs: usize,
    /// Publishers and subscribers in all, each on its own connection.
    publishers: usize,
    subscribers: usize,
    group_mode: GroupMode,
    /// The ordering of the groups the run created (`--ordering`).
    ordering: &'static str,
    /// Distinct `weir-key` values the messages carry (0: no header).
    keys: u32,
    msgs: u64,
    size: usize,
    window: usize,
    credit: u32,
    rate: Option<u64>,
    /// Seconds of publishing asked for with `--duration` (then `msgs` is the number sent).
    duration_s: Option<u64>,
    timed_out: bool,
    publish: PublishReport,
    deliver: Option<DeliverReport>,
    per_topic: Vec<TopicReport>,
    /// The connections held idle beside the run (`--idle-connections`).
    idle: Option<IdleReport>,
    cpu: CpuReport,
}

/// CPU spent from the first publish to the last delivery, per confirmed message and in cores
/// (CPU seconds per wall second): this CLI's (publishers and subscribers alike) and, with
/// `--broker-pid`, the broker's.
#[derive(Debug, Serialize)]
struct CpuReport {
    wall_s: f64,
    client_cpu_s: Option<f64>,
    client_us_per_msg: Option<f64>,
    client_cores: Option<f64>,
    broker_us_per_msg: Option<f64>,
    broker_cores: Option<f64>,
    broker: Option<BrokerUsage>,
}

impl CpuReport {
    /// From the CLI's readings `client` (before, after), the broker's `broker`, over `wall_s`
    /// seconds and `msgs` confirmed messages.
    fn new(
        client: (Option<ProcReading>, Option<ProcReading>),
        broker: Option<BrokerUsage>,
        wall_s: f64,
        msgs: u64,
    ) -> CpuReport {
        let per_msg = |cpu: f64| (msgs > 0).then(|| cpu * 1e6 / msgs as f64);
        let cores = |cpu: f64| (wall_s > 0.0).then(|| cpu / wall_s);
        let client_cpu_s = match client {
            (Some(b), Some(a)) => Some((a.cpu_s - b.cpu_s).max(0.0)),
            _ => None,
        };
        let broker_cpu_s = broker.as_ref().and_then(|b| b.cpu_s);
        CpuReport {
            wall_s,
            client_cpu_s,
            client_us_per_msg: client_cpu_s.and_then(per_msg),
            client_cores: client_cpu_s.and_then(cores),
            broker_us_per_msg: broker_cpu_s.and_then(per_msg),
            broker_cores: broker_cpu_s.and_then(cores),
            broker,
        }
    }

    /// `cpu  client 3.1 µs/msg (0.62 cores)  broker ...`, or `None` without any reading.
    fn line(&self) -> Option<String> {
        let part = |who: &str, us: Option<f64>, cores: Option<f64>| {
            us.zip(cores)
                .map(|(us, cores)| format!("{who} {us:.1} µs/msg ({cores:.2} cores)"))
        };
        let parts: Vec<String> = [
            part("client", self.client_us_per_msg, self.client_cores),
            part("broker", self.broker_us_per_msg, self.broker_cores),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| format!("cpu       {}\n", parts.join("  ")))
    }
}

/// Runs the throughput benchmark; the topics it creates are recorded in `created`. When
/// `interrupt` turns true (Ctrl-C, SIGTERM) the run stops as at its deadline — publishers
/// stop sending and wait for the answers to what they sent, subscribers stop — and fails with
/// `interrupted`, so nothing of it is still on its way when its topic is deleted.
pub async fn run(
    server: &str,
    options: &ClientOptions,
    args: BenchArgs,
    created: &Created,
    mut interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.size >= STAMP_BYTES,
        "--size must be at least {STAMP_BYTES} bytes (the latency stamp)"
    );
    anyhow::ensure!(args.pubs >= 1, "--pubs must be at least 1");
    anyhow::ensure!(
        (1..=MAX_TOPICS).contains(&args.topics),
        "--topics must be 1 to {MAX_TOPICS}"
    );
    anyhow::ensure!(
        args.window >= 1 && args.credit >= 1,
        "--window and --credit must be at least 1"
    );
    let connect = || connect(server, options);
    let mut limit = Duration::from_secs(args.timeout);
    if let Some(d) = args.duration {
        limit = limit.max(Duration::from_secs(d) + DURATION_MARGIN);
    }

    let mut args = args;
    let names: Vec<String> = match (&args.topic, args.topics) {
        (Some(topic), _) => vec![topic.clone()],
        (None, 1) => vec![Created::fresh_name("bench")],
        (None, n) => {
            let base = Created::fresh_name("bench");
            (0..n).map(|i| format!("{base}-{i}")).collect()
        }
    };
    args.topic = Some(names[0].clone());
    let admin = connect().await?;
    // Before any topic is created: a broker or OS refusing them leaves nothing behind.
    let idle = match args.idle_connections {
        0 => None,
        n => {
            let own = names.len() * (args.pubs + args.subs) + 1;
            Some(Idle::open(server, options, n, own, interrupt.clone()).await?)
        }
    };
    let existing: Vec<String> = admin
        .list_topics()
        .await?
        .into_iter()
        .map(|t| t.config.name)
        .collect();
    for topic in names.iter().filter(|n| !existing.contains(n)) {
        created.add(topic)?;
        admin
            .create_topic(TopicSpec {
                name: topic.clone(),
                max_messages: args.max_messages,
                max_bytes: args.max_bytes,
                fsync: args.fsync,
                ..TopicSpec::default()
            })
            .await?;
    }
    // The deadline counts from here: opening thousands of idle connections is set-up.
    let deadline = tokio::time::Instant::now() + limit;
    let run_id = run_id();
    now_ns();

    // Subscribers first, so they are in place when the first message is published. Each topic
    // has its own target (its confirmed count) and delivered total.
    let mut targets = Vec::with_capacity(names.len());
    let mut sub_tasks = Vec::new();
    for (t, topic) in names.iter().enumerate() {
        let (target_tx, target_rx) = watch::channel(Target::Unknown);
        let target_tx = Arc::new(target_tx);
        let delivered_total = Arc::new(AtomicU64::new(0));
        for i in 0..args.subs {
            let group = match args.group_mode {
                GroupMode::Shared => args.group.clone(),
                GroupMode::Fanout => format!("{}-{i}", args.group),
            };
            let client = connect().await?;
            let spec = GroupSpec {
                ordering: Some(args.ordering),
                ..GroupSpec::default()
            };
            let sub = client
                .subscribe_with(topic, &group, args.credit, spec)
                .await?;
            let task = tokio::spawn(subscriber(
                sub,
                run_id,
                target_rx.clone(),
                target_tx.clone(),
                args.group_mode,
                delivered_total.clone(),
            ));
            sub_tasks.push((t, group, task));
        }
        targets.push(target_tx);
    }
    let stop_subscribers = |target: Target| {
        for tx in &targets {
            tx.send_replace(target);
        }
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let client_before = read_proc(std::process::id()).ok();
    let mut broker = args.broker_pid.map(BrokerUsage::start);
    let started = std::time::Instant::now();
    let start_ns = now_ns();
    let until = args
        .duration
        .map(|d| tokio::time::Instant::now() + Duration::from_secs(d));
    let answered = Arc::new(AtomicU64::new(0));
    let bar = match args.duration {
        Some(d) => progress_bar(progress_enabled(args.json), d, "s"),
        None => progress_bar(progress_enabled(args.json), args.msgs, "msgs"),
    };
    bar.set_prefix("bench");
    let ticker = tokio::spawn(tick_progress(
        bar.clone(),
        answered.clone(),
        args.duration.is_some(),
        stop_rx.clone(),
    ));
    let mut pub_tasks = Vec::new();
    let template = vec![0x5a; args.size - STAMP_BYTES];
    let keys = Arc::new(key_values(&args));
    let publishers = names.len() * args.pubs;
    for (t, topic) in names.iter().enumerate() {
        for i in 0..args.pubs {
            let g = (t * args.pubs + i) as u64;
            let n = match args.duration {
                Some(_) => u64::MAX,
                None => {
                    args.msgs / publishers as u64 + u64::from(g < args.msgs % publishers as u64)
                }
            };
            let client = connect().await?;
            let rate = args.rate.map(|r| r as f64 / publishers as f64);
            let task = tokio::spawn(publisher(
                client,
                PubSpec {
                    topic: topic.clone(),
                    n,
                    until,
                    template: template.clone(),
                    window: args.window,
                    run_id,
                    rate,
                    keys: keys.clone(),
                },
                answered.clone(),
                stop_rx.clone(),
            ));
            pub_tasks.push((t, task));
        }
    }

    let mut timed_out = false;
    let mut pub_results = Vec::new();
    for (t, task) in pub_tasks {
        let mut task = task;
        let result = tokio::select! {
            result = &mut task => result?,
            () = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                let _ = stop_tx.send(true);
                task.await?
            }
            _ = interrupt.wait_for(|stop| *stop) => {
                let _ = stop_tx.send(true);
                task.await?
            }
        };
        pub_results.push((t, result));
    }
    if *interrupt.borrow() {
        let _ = stop_tx.send(true);
        let _ = ticker.await;
        bar.finish_and_clear();
        stop_subscribers(Target::Stop);
        for (_, _, task) in sub_tasks {
            let _ = task.await;
        }
        if let Some(idle) = idle {
            idle.finish().await;
        }
        anyhow::bail!("interrupted");
    }
    let confirmed_on = |t: usize| -> u64 {
        pub_results
            .iter()
            .filter(|(pt, _)| *pt == t)
            .map(|(_, r)| r.confirmed)
            .sum()
    };
    let confirmed: u64 = pub_results.iter().map(|(_, r)| r.confirmed).sum();
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    bar.finish_and_clear();
    for (t, tx) in targets.iter().enumerate() {
        tx.send_replace(if timed_out {
            Target::Stop
        } else {
            Target::Count(confirmed_on(t))
        });
    }

    let mut sub_results = Vec::new();
    for (t, group, task) in sub_tasks {
        let mut task = task;
        let result = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(r) => r?,
            Err(_) => {
                timed_out = true;
                stop_subscribers(Target::Stop);
                task.await?
            }
        };
        sub_results.push((t, group, result));
    }

    let wall_s = started.elapsed().as_secs_f64();
    let client_after = read_proc(std::process::id()).ok();
    if let Some(b) = broker.as_mut() {
        b.finish(confirmed);
    }
    let idle = match idle {
        Some(idle) => Some(idle.finish().await),
        None => None,
    };
    let cpu = CpuReport::new((client_before, client_after), broker, wall_s, confirmed);
    let report = report(
        &args,
        server,
        timed_out,
        (start_ns, cpu),
        (&names, &pub_results, &sub_results),
        idle,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    let incomplete = report.timed_out
        || report.publish.refused + report.publish.errors > 0
        || report
            .deliver
            .as_ref()
            .is_some_and(|d| d.delivered < d.expected || !d.errors.is_empty())
        || report.idle.as_ref().is_some_and(|i| i.held < i.requested);
    Ok(super::exit_code(!incomplete, []))
}

/// Keeps the progress bar up to date until `stop`: publishes answered (count mode) or seconds
/// elapsed (duration mode).
async fn tick_progress(
    bar: indicatif::ProgressBar,
    answered: Arc<AtomicU64>,
    by_time: bool,
    mut stop: watch::Receiver<bool>,
) {
    let started = tokio::time::Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(200));
    while !*stop.borrow() {
        tokio::select! {
            _ = every.tick() => {}
            changed = stop.changed() => if changed.is_err() { break },
        }
        let n = answered.load(Ordering::Relaxed);
        if by_time {
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!("{n} answered"));
        } else {
            bar.set_position(n);
        }
    }
}

/// What one publisher does.
pub(super) struct PubSpec {
    pub(super) topic: String,
    /// Messages to publish (`u64::MAX` with a duration).
    pub(super) n: u64,
    /// Stop publishing at this instant (`--duration`).
    pub(super) until: Option<tokio::time::Instant>,
    pub(super) template: Vec<u8>,
    pub(super) window: usize,
    pub(super) run_id: u64,
    pub(super) rate: Option<f64>,
    /// The `weir-key` values to cycle over, one per message (none: no header).
    pub(super) keys: Arc<Vec<String>>,
}

/// How many distinct `weir-key` values the run publishes: `--keys`, by default
/// [`DEFAULT_KEYS`] with `--ordering key` and none (no header) otherwise.
fn key_count(args: &BenchArgs) -> u32 {
    match (args.keys, args.ordering) {
        (Some(n), _) => n,
        (None, GroupOrdering::Key) => DEFAULT_KEYS,
        (None, GroupOrdering::Shared) => 0,
    }
}

/// The run's `weir-key` values (see [`key_count`]).
fn key_values(args: &BenchArgs) -> Vec<String> {
    (0..key_count(args)).map(|k| format!("k{k}")).collect()
}

/// Publishes `spec.n` messages (or until `spec.until`) through a window, recording
/// publish→confirm latency; counts every answered publish in `answered`.
pub(super) async fn publisher(
    client: Client,
    spec: PubSpec,
    answered: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> PubResult {
    let PubSpec {
        topic,
        n,
        until,
        template,
        window,
        run_id,
        rate,
        keys,
    } = spec;
    let publisher = client.publisher_with_window(window);
    let mut r = PubResult {
        sent: 0,
        confirmed: 0,
        refusals: BTreeMap::new(),
        errors: 0,
        first_error: None,
        last_confirm_ns: 0,
        latency: histogram(),
    };
    let mut inflight = FuturesUnordered::new();
    let started = tokio::time::Instant::now();
    let record = |r: &mut PubResult, (sent_ns, outcome): (u64, Result<u64, PublishError>)| {
        let now = now_ns();
        answered.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(_) => {
                r.confirmed += 1;
                r.last_confirm_ns = now;
                let _ = r.latency.record(now.saturating_sub(sent_ns).max(1));
            }
            Err(PublishError::Rejected { reason, .. }) => {
                *r.refusals.entry(format!("{reason:?}")).or_default() += 1
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    };
    loop {
        while let Some(Some(outcome)) = inflight.next().now_or_never() {
            record(&mut r, outcome);
        }
        if *stop.borrow() {
            break;
        }
        if r.sent == n || until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            if inflight.is_empty() {
                break;
            }
            tokio::select! {
                Some(outcome) = inflight.next() => record(&mut r, outcome),
                _ = stop.changed() => {}
            }
            continue;
        }
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(r.sent as f64 / rate);
            if tokio::time::Instant::now() < due {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    Some(outcome) = inflight.next(), if !inflight.is_empty() => record(&mut r, outcome),
                    _ = stop.changed() => {}
                }
                continue;
            }
        }
        let body = payload(&template, run_id);
        let sent_ns = now_ns();
        let key = (!keys.is_empty()).then(|| keys[(r.sent % keys.len() as u64) as usize].as_str());
        let sent = match key {
            Some(key) => {
                publisher.try_publish_with_headers(&topic, [(KEY_HEADER, key)], body.clone())
            }
            None => publisher.try_publish(&topic, body.clone()),
        };
        let confirm = match sent {
            Ok(confirm) => confirm,
            Err(ClientError::WindowFull) if !inflight.is_empty() => {
                // Wait for a slot by waiting for a confirm; the stamp is taken again after.
                tokio::select! {
                    Some(outcome) = inflight.next() => record(&mut r, outcome),
                    _ = stop.changed() => {}
                }
                continue;
            }
            Err(ClientError::WindowFull) => match match key {
                Some(key) => {
                    publisher
                        .publish_with_headers(&topic, [(KEY_HEADER, key)], body)
                        .await
                }
                None => publisher.publish(&topic, body).await,
            } {
                Ok(confirm) => confirm,
                Err(e) => {
                    r.first_error.get_or_insert_with(|| e.to_string());
                    r.errors += 1;
                    break;
                }
            },
            Err(e) => {
                r.first_error.get_or_insert_with(|| e.to_string());
                r.errors += 1;
                break;
            }
        };
        r.sent += 1;
        inflight.push(confirm.map(move |outcome| (sent_ns, outcome)));
    }
    // Stopped (or done): settle what was sent, within SETTLE_TIMEOUT.
    let settle = async {
        while let Some(outcome) = inflight.next().await {
            record(&mut r, outcome);
        }
    };
    let _ = tokio::time::timeout(SETTLE_TIMEOUT, settle).await;
    r
}

/// Consumes deliveries and acks them, recording publish→deliver latency of this run's messages.
async fn subscriber(
    mut sub: Subscription,
    run_id: u64,
    mut target: watch::Receiver<Target>,
    target_tx: Arc<watch::Sender<Target>>,
    mode: GroupMode,
    total: Arc<AtomicU64>,
) -> SubResult {
    let mut r = SubResult {
        delivered: 0,
        redelivered: 0,
        foreign: 0,
        last_delivery_ns: 0,
        error: None,
        latency: histogram(),
    };
    loop {
        let reached = match *target.borrow() {
            Target::Stop => true,
            Target::Unknown => false,
            Target::Count(t) => match mode {
                GroupMode::Fanout => r.delivered >= t,
                GroupMode::Shared => total.load(Ordering::Relaxed) >= t,
            },
        };
        if reached {
            break;
        }
        tokio::select! {
            item = sub.next() => match item {
                Some(Ok(d)) => {
                    let now = now_ns();
                    match stamp(d.payload()) {
                        Some((ts, run)) if run == run_id => {
                            let _ = r.latency.record(now.saturating_sub(ts).max(1));
                            r.delivered += 1;
                            r.last_delivery_ns = now;
                            if d.attempt() > 1 {
                                r.redelivered += 1;
                            }
                            let sum = total.fetch_add(1, Ordering::Relaxed) + 1;
                            // Copy the target out first: sending while a `borrow()` is alive
                            // would deadlock on the watch's lock.
                            let current = *target.borrow();
                            if mode == GroupMode::Shared && matches!(current, Target::Count(t) if sum >= t) {
                                target_tx.send_replace(Target::Stop);
                            }
                        }
                        _ => r.foreign += 1,
                    }
                    d.ack();
                }
                Some(Err(e)) => {
                    r.error.get_or_insert_with(|| e.to_string());
                }
                None => break,
            },
            changed = target.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, sub.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            r.error.get_or_insert_with(|| format!("closing: {e}"));
        }
        Err(_) => {
            r.error.get_or_insert_with(|| {
                format!("closing: no Unsubscribed within {CLOSE_TIMEOUT:?}")
            });
        }
    }
    r
}

/// The lowest and highest of `rates` (0, 0 when empty).
fn spread(rates: impl IntoIterator<Item = f64>) -> (f64, f64) {
    rates
        .into_iter()
        .fold(None, |acc: Option<(f64, f64)>, r| {
            Some(acc.map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))))
        })
        .unwrap_or((0.0, 0.0))
}

fn report(
    args: &BenchArgs,
    server: &str,
    timed_out: bool,
    (start_ns, cpu): (u64, CpuReport),
    (names, pubs, subs): (&[String], &[TopicPub], &[TopicSub]),
    idle: Option<IdleReport>,
) -> Report {
    let mb = |msgs: u64, secs: f64| {
        if secs > 0.0 {
            msgs as f64 * args.size as f64 / secs / 1e6
        } else {
            0.0
        }
    };
    let rate = |msgs: u64, secs: f64| if secs > 0.0 { msgs as f64 / secs } else { 0.0 };
    let secs_to = |last_ns: u64| last_ns.saturating_sub(start_ns) as f64 / 1e9;

    let mut confirm_latency = histogram();
    let mut refusals = BTreeMap::new();
    for (_, p) in pubs {
        let _ = confirm_latency.add(&p.latency);
        for (reason, n) in &p.refusals {
            *refusals.entry(reason.clone()).or_default() += n;
        }
    }
    let confirmed: u64 = pubs.iter().map(|(_, p)| p.confirmed).sum();
    let last_confirm = pubs
        .iter()
        .map(|(_, p)| p.last_confirm_ns)
        .max()
        .unwrap_or(start_ns);
    let pub_secs = secs_to(last_confirm);

    // Each topic: what its publishers confirmed and its subscribers were delivered.
    let per_topic: Vec<TopicReport> = names
        .iter()
        .enumerate()
        .map(|(t, name)| {
            let mine = pubs.iter().filter(|(pt, _)| *pt == t).map(|(_, p)| p);
            let confirmed: u64 = mine.clone().map(|p| p.confirmed).sum();
            let last = mine.map(|p| p.last_confirm_ns).max().unwrap_or(start_ns);
            let subs: Vec<&SubResult> = subs
                .iter()
                .filter(|(st, _, _)| *st == t)
                .map(|(_, _, s)| s)
                .collect();
            let delivered: u64 = subs.iter().map(|s| s.delivered).sum();
            let last_delivery = subs
                .iter()
                .map(|s| s.last_delivery_ns)
                .max()
                .unwrap_or(start_ns);
            TopicReport {
                name: name.clone(),
                confirmed,
                publish_msgs_per_s: rate(confirmed, secs_to(last)),
                delivered: (!subs.is_empty()).then_some(delivered),
                deliver_msgs_per_s: (!subs.is_empty())
                    .then(|| rate(delivered, secs_to(last_delivery))),
            }
        })
        .collect();
    let (topic_min, topic_max) = spread(per_topic.iter().map(|t| t.publish_msgs_per_s));
    let publish = PublishReport {
        sent: pubs.iter().map(|(_, p)| p.sent).sum(),
        confirmed,
        refused: refusals.values().sum(),
        refusals,
        errors: pubs.iter().map(|(_, p)| p.errors).sum(),
        first_error: pubs.iter().find_map(|(_, p)| p.first_error.clone()),
        elapsed_s: pub_secs,
        msgs_per_s: rate(confirmed, pub_secs),
        mb_per_s: mb(confirmed, pub_secs),
        per_topic_min_msgs_per_s: topic_min,
        per_topic_max_msgs_per_s: topic_max,
        confirm_latency: Latency::of(&confirm_latency),
    };

    let deliver = (!subs.is_empty()).then(|| {
        let mut latency = histogram();
        // Per group (topic, name): delivered, last delivery.
        let mut groups: BTreeMap<(usize, &str), (u64, u64)> = BTreeMap::new();
        for (t, group, s) in subs {
            let _ = latency.add(&s.latency);
            let g = groups.entry((*t, group.as_str())).or_default();
            g.0 += s.delivered;
            g.1 = g.1.max(s.last_delivery_ns);
        }
        let (group_min, group_max) =
            spread(groups.values().map(|&(n, last)| rate(n, secs_to(last))));
        let delivered: u64 = subs.iter().map(|(_, _, s)| s.delivered).sum();
        let last = subs
            .iter()
            .map(|(_, _, s)| s.last_delivery_ns)
            .max()
            .unwrap_or(start_ns);
        let secs = secs_to(last);
        DeliverReport {
            expected: match args.group_mode {
                GroupMode::Fanout => confirmed * args.subs as u64,
                GroupMode::Shared => confirmed,
            },
            delivered,
            redelivered: subs.iter().map(|(_, _, s)| s.redelivered).sum(),
            skipped_from_earlier_runs: subs.iter().map(|(_, _, s)| s.foreign).sum(),
            errors: subs
                .iter()
                .filter_map(|(_, _, s)| s.error.clone())
                .collect(),
            elapsed_s: secs,
            msgs_per_s: rate(delivered, secs),
            mb_per_s: mb(delivered, secs),
            groups: groups.len(),
            per_group_min_msgs_per_s: group_min,
            per_group_max_msgs_per_s: group_max,
            deliver_latency: Latency::of(&latency),
        }
    });

    Report {
        server: server.to_owned(),
        topic: args.topic.clone().unwrap_or_default(),
        topics: names.len(),
        pubs: args.pubs,
        subs: args.subs,
        publishers: names.len() * args.pubs,
        subscribers: names.len() * args.subs,
        group_mode: args.group_mode,
        ordering: args.ordering.as_str(),
        keys: key_count(args),
        msgs: match args.duration {
            Some(_) => pubs.iter().map(|(_, p)| p.sent).sum(),
            None => args.msgs,
        },
        size: args.size,
        window: args.window,
        credit: args.credit,
        rate: args.rate,
        duration_s: args.duration,
        timed_out,
        publish,
        deliver,
        per_topic,
        idle,
        cpu,
    }
}

fn latency_line(name: &str, l: &Latency) -> String {
    if l.count == 0 {
        return format!("          {name}  (no samples)\n");
    }
    format!(
        "          {name}  p50 {}  p99 {}  p99.9 {}  max {}\n",
        human_us(l.p50_us),
        human_us(l.p99_us),
        human_us(l.p999_us),
        human_us(l.max_us)
    )
}

/// The human-readable form of a report.
fn summary(r: &Report) -> String {
    let mut s = format!(
        "weir bench {} {}: {} pub(s) × window {}, {} sub(s) ({}{}) × credit {}{}, {} msgs × {}{}{}\n",
        r.server,
        if r.topics == 1 {
            format!("topic={}", r.topic)
        } else {
            format!("{} topics ({}, ...)", r.topics, r.topic)
        },
        r.pubs,
        r.window,
        r.subs,
        match r.group_mode {
            GroupMode::Fanout => "fanout",
            GroupMode::Shared => "shared",
        },
        match (r.ordering, r.keys) {
            ("key", n) => format!(", ordering key over {n} keys"),
            (_, 0) => String::new(),
            (_, n) => format!(", {n} keys"),
        },
        r.credit,
        if r.topics == 1 { "" } else { " per topic" },
        r.msgs,
        format_size(r.size as u64),
        r.rate.map(|x| format!(" at {x} msg/s")).unwrap_or_default(),
        r.duration_s
            .map(|d| format!(" in {d} s"))
            .unwrap_or_default(),
    );
    let p = &r.publish;
    s.push_str(&format!(
        "publish   {} confirmed, {} refused, {} errors in {:.3} s  →  {:.0} msg/s  {:.1} MB/s\n",
        p.confirmed, p.refused, p.errors, p.elapsed_s, p.msgs_per_s, p.mb_per_s
    ));
    for (reason, n) in &p.refusals {
        s.push_str(&format!("          refused {reason}: {n}\n"));
    }
    if let Some(e) = &p.first_error {
        s.push_str(&format!("          first error: {e}\n"));
    }
    if r.topics > 1 {
        s.push_str(&format!(
            "          per topic {:.0} to {:.0} msg/s\n",
            p.per_topic_min_msgs_per_s, p.per_topic_max_msgs_per_s
        ));
    }
    s.push_str(&latency_line("publish→confirm", &p.confirm_latency));
    if let Some(d) = &r.deliver {
        s.push_str(&format!(
            "deliver   {} of {} delivered ({} redelivered, {} from earlier runs skipped) in {:.3} s  →  {:.0} msg/s  {:.1} MB/s\n",
            d.delivered, d.expected, d.redelivered, d.skipped_from_earlier_runs, d.elapsed_s, d.msgs_per_s, d.mb_per_s
        ));
        if d.groups > 1 {
            s.push_str(&format!(
                "          {} groups, each delivered {:.0} to {:.0} msg/s\n",
                d.groups, d.per_group_min_msgs_per_s, d.per_group_max_msgs_per_s
            ));
        }
        for e in &d.errors {
            s.push_str(&format!("          error: {e}\n"));
        }
        s.push_str(&latency_line("publish→deliver", &d.deliver_latency));
    }
    if let Some(i) = &r.idle {
        s.push_str(&format!(
            "idle      {} of {} connections opened in {:.1} s, {} held to the end; {} pings ({} failed){}\n",
            i.opened,
            i.requested,
            i.open_s,
            i.held,
            i.pings,
            i.ping_errors,
            i.ping_every_ms
                .map(|ms| format!(", each connection every {:.1} s", ms as f64 / 1e3))
                .unwrap_or_default()
        ));
    }
    if let Some(line) = r.cpu.line() {
        s.push_str(&line);
    }
    if r.timed_out {
        s.push_str("TIMED OUT: results are partial\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_reported_per_message_and_in_cores() {
        let reading = |cpu_s| ProcReading {
            rss_kib: 0,
            hwm_kib: 0,
            cpu_s,
            cpu_sys_s: 0.0,
        };
        let cpu = CpuReport::new((Some(reading(1.0)), Some(reading(1.5))), None, 2.0, 100_000);
        assert_eq!(cpu.client_cpu_s, Some(0.5));
        assert_eq!(cpu.client_us_per_msg, Some(5.0));
        assert_eq!(cpu.client_cores, Some(0.25));
        assert_eq!(cpu.broker_us_per_msg, None);
        assert_eq!(
            cpu.line().unwrap(),
            "cpu       client 5.0 µs/msg (0.25 cores)\n"
        );
        let none = CpuReport::new((None, None), None, 2.0, 0);
        assert!(none.line().is_none());
    }
}
