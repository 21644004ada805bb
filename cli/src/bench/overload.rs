//! `weir bench overload`: a producer publishing as fast as its window allows into a topic
//! bounded at `--bound` messages, while one consumer acks exactly `--consumer-rate` msg/s — once
//! per overflow policy, each on a fresh topic.
//!
//! Per policy it reports what was offered, confirmed, refused (with the publish→refusal latency
//! and the retry-after hints), dropped and lost (confirmed, then neither delivered nor stored:
//! see [`super::accounting`]), the broker's RSS and CPU before and after (`--broker-pid`), and a
//! verdict on the producer's experience: *paced* (`block`: confirms at the consumer's rate),
//! *refused* (`reject`: fast refusals with retry-after) or *dropped visibly* (`drop_oldest`).
//!
//! `--producers N` runs N producers, each on its own connection ([`super::honour`]); with
//! `--honour-hint` each publishes one message at a time and honours every retry-after hint
//! exactly, and the report says how many retries a second that brings against the topic's
//! drain rate (the consumer's measured ack rate): the retry herd the hints should spread.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use weir_client::{ClientOptions, OverflowPolicy, TopicConfig};

use super::accounting::Accounting;
use super::cleanup::Created;
use super::common::{
    histogram, human_us, per_s, progress_bar, progress_enabled, run_id, BrokerUsage, Latency,
};
use super::honour::{self, HonourTally};
use super::load::{rate_between, Phase, RetryAfterReport, SeriesPoint};
use super::scenario::{run_scenario_with, ScenarioFlags, ScenarioOutcome, ScenarioSpec};
use super::{Check, CheckKind};
use crate::size::{format_signed_size, format_size};

/// Which policies to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyChoice {
    Reject,
    Block,
    #[value(name = "drop_oldest", alias = "drop-oldest")]
    DropOldest,
    All,
}

impl PolicyChoice {
    fn policies(self) -> Vec<OverflowPolicy> {
        match self {
            PolicyChoice::Reject => vec![OverflowPolicy::Reject],
            PolicyChoice::Block => vec![OverflowPolicy::Block],
            PolicyChoice::DropOldest => vec![OverflowPolicy::DropOldest],
            PolicyChoice::All => vec![
                OverflowPolicy::Reject,
                OverflowPolicy::Block,
                OverflowPolicy::DropOldest,
            ],
        }
    }
}

/// Arguments of `weir bench overload`.
#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// Overflow policy to run (all: reject, block and drop_oldest, one after the other).
    #[arg(long, value_enum, default_value_t = PolicyChoice::All)]
    pub policy: PolicyChoice,
    /// Seconds the producer publishes, per policy.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// The topic's max_messages.
    #[arg(long, default_value_t = 10_000)]
    pub bound: u64,
    /// Acks per second of the one consumer while the producer runs.
    #[arg(long, default_value_t = 1000)]
    pub consumer_rate: u64,
    /// Payload size in bytes or with a unit (4KiB, 1MB) (at least 16: the stamp).
    #[arg(long, value_name = "SIZE", default_value = "1024", value_parser = crate::size::parse_size_usize)]
    pub size: usize,
    /// The producer's window of unconfirmed publishes (each producer's).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Pace the producer at this many msg/s (each producer; default: as fast as the window
    /// allows).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Producers, each on its own connection (the broker's limits.max_connections_per_ip and
    /// limits.max_connections must hold them plus 2). At most 64 without --honour-hint.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Each producer publishes one message at a time; refused with a retry-after hint, it
    /// sleeps exactly that long and sends the same message again (without a hint: the next
    /// one after 100 ms). Reports retries per second against the drain rate.
    #[arg(long, conflicts_with_all = ["window", "rate"])]
    pub honour_hint: bool,
    /// The consumer's window (credit).
    #[arg(long, default_value_t = 32)]
    pub credit: u32,
    /// The topic's knobs and the broker to watch.
    #[command(flatten)]
    pub flags: ScenarioFlags,
    /// After the producer stops, the consumer drains at full speed for at most this many
    /// seconds (0: stop at once and count what is stored).
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// Sample the topic's depth every this many milliseconds.
    #[arg(long, default_value_t = 500)]
    pub sample_ms: u64,
    /// Prefix of the topics created (`<prefix>-<policy>-<run id>`).
    #[arg(long, default_value = "bench-overload")]
    pub topic_prefix: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The verdict on how the producer was treated.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub claim: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What the verdict looks at.
#[derive(Debug, Clone)]
pub struct VerdictInput {
    pub policy: OverflowPolicy,
    pub offered: u64,
    pub refused: u64,
    pub with_hint: u64,
    pub dropped: u64,
    pub lost: u64,
    /// Confirm rate over the second half of the run.
    pub steady_confirmed_per_s: Option<f64>,
    pub consumer_rate: f64,
}

/// A confirm rate this close to the consumer's counts as paced by it.
const PACED_TOLERANCE: f64 = 0.25;
/// At most this share of publishes refused still counts as "few refusals" for `block`.
const FEW_REFUSALS: f64 = 0.01;

/// Judges the producer's experience under `policy`.
pub fn verdict(i: &VerdictInput) -> Verdict {
    let pct = |n: u64| {
        if i.offered > 0 {
            100.0 * n as f64 / i.offered as f64
        } else {
            0.0
        }
    };
    let steady = i
        .steady_confirmed_per_s
        .map_or("n/a".to_string(), |r| format!("{r:.0}/s"));
    let paced = i
        .steady_confirmed_per_s
        .is_some_and(|r| (r - i.consumer_rate).abs() <= PACED_TOLERANCE * i.consumer_rate);
    match i.policy {
        OverflowPolicy::Block => {
            let few = (i.refused as f64) <= FEW_REFUSALS * i.offered as f64;
            Verdict {
                claim: "producer paced",
                ok: paced && few && i.lost == 0,
                detail: format!(
                    "steady confirm rate {steady} vs consumer {:.0}/s; {} refused ({:.2} %); lost {}",
                    i.consumer_rate,
                    i.refused,
                    pct(i.refused),
                    i.lost
                ),
            }
        }
        OverflowPolicy::Reject => Verdict {
            claim: "producer refused",
            ok: i.refused > 0 && i.with_hint == i.refused && i.lost == 0,
            detail: format!(
                "{} of {} publishes refused ({:.1} %), {} with retry-after; steady confirm rate {steady} vs consumer {:.0}/s; lost {}",
                i.refused,
                i.offered,
                pct(i.refused),
                i.with_hint,
                i.consumer_rate,
                i.lost
            ),
        },
        OverflowPolicy::DropOldest => Verdict {
            claim: "dropped visibly",
            ok: i.dropped > 0 && i.lost == 0,
            detail: format!(
                "{} evicted and counted by the broker; {} refused; lost {}",
                i.dropped, i.refused, i.lost
            ),
        },
    }
}

/// The effective topic configuration, as reported.
#[derive(Debug, Serialize)]
pub struct TopicConfigReport {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub overflow: &'static str,
    pub fsync: String,
    pub max_blocked_publishes: u32,
    pub max_block_ms: u64,
}

impl From<&TopicConfig> for TopicConfigReport {
    fn from(c: &TopicConfig) -> TopicConfigReport {
        TopicConfigReport {
            max_messages: c.max_messages,
            max_bytes: c.max_bytes,
            overflow: c.overflow.as_str(),
            fsync: c.fsync.to_string(),
            max_blocked_publishes: c.max_blocked_publishes,
            max_block_ms: c.max_block_ms,
        }
    }
}

/// One policy's results.
#[derive(Debug, Serialize)]
pub struct PolicyReport {
    pub policy: &'static str,
    pub topic: Option<String>,
    /// Why the run could not happen (e.g. the broker refused the topic's policy).
    pub error: Option<String>,
    pub config: Option<TopicConfigReport>,
    pub offered: u64,
    pub confirmed: u64,
    pub refused: u64,
    pub refusals: BTreeMap<String, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Publishes whose outcome never arrived (within max_block + 5 s of the end).
    pub unresolved: u64,
    /// Seconds the producer published.
    pub producing_s: f64,
    pub offered_per_s: f64,
    /// The window divided by the offered rate, ms: by Little's law, the time a publish spends
    /// queued behind the rest of a full window (in the client, the socket and the broker) —
    /// the floor of every latency measured here while the window stays full.
    pub window_wait_ms: f64,
    pub confirmed_per_s: f64,
    /// Confirm rate over the second half of the run (after the topic filled), from the samples.
    pub steady_confirmed_per_s: Option<f64>,
    /// Deliveries while the producer ran, and their rate.
    pub delivered_during_run: u64,
    pub delivered_per_s: f64,
    /// Deliveries including the drain.
    pub delivered_total: u64,
    pub redelivered: u64,
    /// Messages evicted by drop_oldest (broker's count for the topic).
    pub dropped: u64,
    /// Of which the consumer was told by gap notices (sequence numbers).
    pub dropped_notified: u64,
    /// Gap notices the consumer received.
    pub gap_notices: u64,
    /// Messages stored when the scenario ended.
    pub stored_at_end: Option<u64>,
    pub drained: bool,
    pub drain_ms: u64,
    /// Confirmed, then neither delivered nor stored nor evicted. Must be 0.
    pub lost: u64,
    pub accounting: Accounting,
    pub confirm_latency: Latency,
    pub refusal_latency: Latency,
    pub deliver_latency: Latency,
    pub retry_after: RetryAfterReport,
    pub max_depth: u64,
    pub max_parked: u64,
    /// With `--honour-hint`: the retries against the drain rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub honour: Option<HonourReport>,
    pub broker: Option<BrokerUsage>,
    pub consumer_errors: Vec<String>,
    pub warnings: Vec<String>,
    pub verdict: Option<Verdict>,
    pub checks: Vec<Check>,
    pub series: Vec<SeriesPoint>,
}

/// What producers honouring the retry-after hints did, against the topic's drain rate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HonourReport {
    /// Producers that ran, each on its own connection.
    pub producers: usize,
    /// The topic's drain rate: the consumer's deliveries per second while the producers ran.
    pub drain_per_s: f64,
    /// Publishes sent (first tries and retries), and per second.
    pub offered: u64,
    /// `offered` per second of the run.
    pub offered_per_s: f64,
    /// Messages sent for the first time.
    pub first_tries: u64,
    /// Messages sent again after sleeping their hint, and per second.
    pub retries: u64,
    /// `retries` per second of the run.
    pub retries_per_s: f64,
    /// `retries_per_s / drain_per_s`: how many retries the producers bring for each message
    /// the topic drains (`None` when nothing drained). A small multiple of 1 when the hints
    /// spread the producers; far above it, a retry storm.
    pub retries_per_drain: Option<f64>,
    /// Publishes confirmed per second of the run.
    pub confirmed_per_s: f64,
    /// Retry-after hints received, ms: the median (`None` without any hint).
    pub hint_p50_ms: Option<u64>,
    /// The 99th percentile of the hints, ms.
    pub hint_p99_ms: Option<u64>,
    /// The longest hint, ms.
    pub hint_max_ms: Option<u64>,
    /// Refusals without a hint (each producer moved on to its next message after 100 ms).
    pub refused_without_hint: u64,
    /// Messages given up at the end because their retry would have come after it.
    pub abandoned: u64,
}

/// Retries per second within this multiple of the drain rate meet the target of the retry-hint
/// issue ("a small multiple").
const RETRY_TARGET_MULTIPLE: f64 = 2.0;

impl HonourReport {
    /// The report of `tally`, with the producer's `retry_after` hints, over `producing_s`
    /// seconds in which the consumer drained `delivered` messages.
    pub fn new(
        tally: &HonourTally,
        result: &super::load::ProducerResult,
        producing_s: f64,
        delivered: u64,
    ) -> HonourReport {
        let drain_per_s = per_s(delivered, producing_s);
        let retries_per_s = per_s(tally.retries, producing_s);
        let hints = result.retry_after.report();
        HonourReport {
            producers: tally.producers,
            drain_per_s,
            offered: tally.first_tries + tally.retries,
            offered_per_s: per_s(tally.first_tries + tally.retries, producing_s),
            first_tries: tally.first_tries,
            retries: tally.retries,
            retries_per_s,
            retries_per_drain: (drain_per_s > 0.0).then(|| retries_per_s / drain_per_s),
            confirmed_per_s: per_s(result.total(|x| x.confirmed), producing_s),
            hint_p50_ms: hints.p50_ms,
            hint_p99_ms: hints.p99_ms,
            hint_max_ms: hints.max_ms,
            refused_without_hint: hints.without_hint,
            abandoned: tally.abandoned,
        }
    }

    /// The target check: retries per second within [`RETRY_TARGET_MULTIPLE`] of the drain rate.
    fn check(&self) -> Check {
        Check {
            name: format!("retries/s ≤ {RETRY_TARGET_MULTIPLE}× drain/s"),
            kind: CheckKind::Target,
            ok: self
                .retries_per_drain
                .is_some_and(|r| r <= RETRY_TARGET_MULTIPLE),
            detail: format!(
                "{} producers: {:.0} retries/s against {:.0} drained/s ({}); hints p50/p99/max {}",
                self.producers,
                self.retries_per_s,
                self.drain_per_s,
                self.retries_per_drain
                    .map_or("nothing drained".into(), |r| format!("{r:.2}×")),
                hint_ms(self)
            ),
        }
    }
}

/// The hints' p50/p99/max, or `-` without any.
fn hint_ms(h: &HonourReport) -> String {
    match (h.hint_p50_ms, h.hint_p99_ms, h.hint_max_ms) {
        (Some(a), Some(b), Some(c)) => format!("{a}/{b}/{c} ms"),
        _ => "-".into(),
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct OverloadReport {
    pub scenario: &'static str,
    pub server: String,
    pub run_id: String,
    pub duration_s: u64,
    pub bound: u64,
    pub consumer_rate: u64,
    pub size: usize,
    pub window: usize,
    /// The producer's pace; `None`: as fast as the window allows.
    pub rate: Option<u64>,
    /// Producers, each on its own connection.
    pub producers: usize,
    /// Whether they published one at a time, honouring every retry-after hint.
    pub honour_hint: bool,
    pub credit: u32,
    pub drain_s: u64,
    /// True when every correctness and behaviour check passed.
    pub ok: bool,
    pub results: Vec<PolicyReport>,
}

pub async fn run(
    server: &str,
    options: &ClientOptions,
    args: OverloadArgs,
    created: &Created,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.size >= super::common::STAMP_BYTES,
        "--size must be at least {} bytes (the latency stamp)",
        super::common::STAMP_BYTES
    );
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 s");
    anyhow::ensure!(args.bound >= 1, "--bound must be at least 1");
    anyhow::ensure!(
        args.consumer_rate >= 1,
        "--consumer-rate must be at least 1"
    );
    anyhow::ensure!(
        args.window >= 1 && args.credit >= 1,
        "--window and --credit must be at least 1"
    );
    anyhow::ensure!(args.sample_ms >= 10, "--sample-ms must be at least 10");
    anyhow::ensure!(
        (1..=honour::MAX_PRODUCERS).contains(&args.producers),
        "--producers must be between 1 and {}",
        honour::MAX_PRODUCERS
    );
    anyhow::ensure!(
        args.honour_hint || args.producers <= honour::MAX_WINDOWED_PRODUCERS,
        "--producers is at most {} without --honour-hint (each windowed producer keeps its own histograms)",
        honour::MAX_WINDOWED_PRODUCERS
    );
    // Honouring producers publish one message at a time.
    let window = if args.honour_hint { 1 } else { args.window };
    let id = run_id();
    let show = progress_enabled(args.json);
    let mut results = Vec::new();
    for policy in args.policy.policies() {
        let bar = progress_bar(show, args.duration, "s");
        bar.set_prefix(policy.as_str());
        let spec = ScenarioSpec {
            topic: args.flags.topic(
                format!(
                    "{}-{}-{:012x}",
                    args.topic_prefix,
                    policy.as_str(),
                    id & 0xffff_ffff_ffff
                ),
                args.bound,
                policy,
            ),
            group: "bench-overload".into(),
            phases: vec![Phase {
                name: "run",
                duration: Duration::from_secs(args.duration),
                rate: args.rate.map(|r| r as f64),
            }],
            consumer_rate: Some(args.consumer_rate as f64),
            credit: args.credit,
            size: args.size,
            window,
            sample_every: Duration::from_millis(args.sample_ms),
            drain: Duration::from_secs(args.drain),
            broker_pid: args.flags.broker_pid,
            run_id: id,
        };
        let topic = spec.topic.name.clone();
        let tally = Arc::new(Mutex::new(HonourTally::default()));
        let producing = if args.honour_hint || args.producers > 1 {
            let clients = honour::open(server, options, args.producers).await?;
            Some(if args.honour_hint {
                honour::honouring(clients, tally.clone())
            } else {
                honour::windowed(clients)
            })
        } else {
            None
        };
        let outcome = run_scenario_with(server, options, (spec, created), producing, bar.clone());
        let report = match outcome.await {
            Ok(outcome) => {
                let tally = args
                    .honour_hint
                    .then(|| tally.lock().unwrap_or_else(|p| p.into_inner()).clone());
                policy_report(&args, policy, outcome, tally.as_ref())
            }
            Err(e) => failed_report(policy, topic, format!("{e:#}")),
        };
        bar.finish_and_clear();
        results.push(report);
    }
    let ok = results
        .iter()
        .all(|r| r.error.is_none() && r.checks.iter().all(|c| c.ok || c.kind == CheckKind::Target));
    let report = OverloadReport {
        scenario: "overload",
        server: server.to_owned(),
        run_id: format!("{id:016x}"),
        duration_s: args.duration,
        bound: args.bound,
        consumer_rate: args.consumer_rate,
        size: args.size,
        window,
        rate: args.rate,
        producers: args.producers,
        honour_hint: args.honour_hint,
        credit: args.credit,
        drain_s: args.drain,
        ok,
        results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(super::exit_code(
        ok,
        report.results.iter().flat_map(|r| &r.checks),
    ))
}

fn failed_report(policy: OverflowPolicy, topic: String, error: String) -> PolicyReport {
    let empty = Latency::of(&histogram());
    PolicyReport {
        policy: policy.as_str(),
        topic: Some(topic),
        error: Some(error),
        config: None,
        offered: 0,
        confirmed: 0,
        refused: 0,
        refusals: BTreeMap::new(),
        errors: 0,
        first_error: None,
        unresolved: 0,
        producing_s: 0.0,
        offered_per_s: 0.0,
        window_wait_ms: 0.0,
        confirmed_per_s: 0.0,
        steady_confirmed_per_s: None,
        delivered_during_run: 0,
        delivered_per_s: 0.0,
        delivered_total: 0,
        redelivered: 0,
        dropped: 0,
        dropped_notified: 0,
        gap_notices: 0,
        stored_at_end: None,
        drained: false,
        drain_ms: 0,
        lost: 0,
        accounting: super::accounting::account(
            &super::common::SeqSet::new(0),
            &super::common::SeqSet::new(0),
            &super::common::SeqSet::new(0),
            0..0,
            0,
        ),
        confirm_latency: empty.clone(),
        refusal_latency: empty.clone(),
        deliver_latency: empty,
        retry_after: RetryAfterReport {
            with_hint: 0,
            without_hint: 0,
            min_ms: None,
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
        },
        max_depth: 0,
        max_parked: 0,
        honour: None,
        broker: None,
        consumer_errors: Vec::new(),
        warnings: Vec::new(),
        verdict: None,
        checks: Vec::new(),
        series: Vec::new(),
    }
}

/// Refusals answered within this, at p99, meet the target of DESIGN §7.
const REFUSAL_P99_TARGET_US: f64 = 1000.0;
/// Broker RSS growth under this meets the target of the overload issue.
const RSS_GROWTH_TARGET_KIB: i64 = 64 * 1024;

fn policy_report(
    args: &OverloadArgs,
    policy: OverflowPolicy,
    o: ScenarioOutcome,
    tally: Option<&HonourTally>,
) -> PolicyReport {
    let p = &o.producer;
    // Every producer's window together: what can be in flight at once.
    let window = if args.honour_hint { 1 } else { args.window } * args.producers;
    let offered = p.total(|x| x.offered);
    let confirmed = p.total(|x| x.confirmed);
    let refused = p.total(|x| x.refused);
    let errors = p.total(|x| x.errors);
    let producing_s = (p.stopped_ms as f64 / 1e3).max(1e-3);
    // The second half of the run, plus half a sample: the sample just after the producer
    // stopped still counts only what the run confirmed.
    let run_ms = args.duration * 1000;
    let steady = rate_between(&o.series, run_ms / 2, run_ms + args.sample_ms / 2, |s| {
        s.confirmed_total
    });
    let mut confirm = histogram();
    let mut refusal = histogram();
    for ph in &p.phases {
        let _ = confirm.add(&ph.confirm);
        let _ = refusal.add(&ph.refusal);
    }
    let mut deliver = histogram();
    if let Some(c) = &o.consumer {
        for h in &c.deliver {
            let _ = deliver.add(h);
        }
    }
    let dropped = o.accounting.dropped_reported;
    let lost = o.accounting.lost;
    let v = verdict(&VerdictInput {
        policy,
        offered,
        refused,
        with_hint: p.retry_after.with_hint,
        dropped,
        lost,
        steady_confirmed_per_s: steady,
        consumer_rate: args.consumer_rate as f64,
    });
    let refusal_latency = Latency::of(&refusal);
    let consumer_errors = o
        .consumer
        .as_ref()
        .map(|c| c.errors.clone())
        .unwrap_or_else(|| vec!["the consumer's results are missing".into()]);
    let mut checks = vec![
        Check {
            name: "lost == 0".into(),
            kind: CheckKind::Correctness,
            ok: lost == 0 && o.accounting.complete,
            detail: format!(
                "{} confirmed: {} delivered, {} stored, {} evicted ({} notified by gaps), {} lost{}",
                o.accounting.confirmed,
                o.accounting.delivered,
                o.accounting.stored,
                o.accounting.evicted_notified + o.accounting.attributed_to_drops,
                o.accounting.evicted_notified,
                lost,
                if o.accounting.complete {
                    ""
                } else {
                    " (incomplete: untracked sequence numbers)"
                }
            ),
        },
        Check {
            name: "no errors".into(),
            kind: CheckKind::Correctness,
            ok: errors == 0 && p.unresolved == 0 && consumer_errors.is_empty(),
            detail: format!(
                "{errors} publish errors, {} unresolved, {} consumer errors{}",
                p.unresolved,
                consumer_errors.len(),
                p.first_error
                    .as_ref()
                    .or(consumer_errors.first())
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
        },
        Check {
            name: v.claim.into(),
            kind: CheckKind::Behaviour,
            ok: v.ok,
            detail: v.detail.clone(),
        },
    ];
    if refused > 0 {
        checks.push(Check {
            name: "refusal p99 < 1 ms".into(),
            kind: CheckKind::Target,
            ok: refusal_latency.p99_us < REFUSAL_P99_TARGET_US,
            detail: format!(
                "p50 {}, p99 {} (a full window alone queues each publish {:.2} ms: window / offered rate)",
                human_us(refusal_latency.p50_us),
                human_us(refusal_latency.p99_us),
                if offered > 0 {
                    window as f64 * 1e3 / per_s(offered, producing_s)
                } else {
                    0.0
                }
            ),
        });
    }
    if let Some(g) = o.broker.as_ref().and_then(|b| b.rss_growth_kib) {
        checks.push(Check {
            name: "broker RSS growth < 64 MiB".into(),
            kind: CheckKind::Target,
            ok: g < RSS_GROWTH_TARGET_KIB,
            detail: format_signed_size(g * 1024),
        });
    }
    let honour = tally.map(|t| HonourReport::new(t, p, producing_s, o.delivered_during_run));
    if let Some(h) = &honour {
        checks.push(h.check());
    }
    let c = &o.config;
    PolicyReport {
        policy: policy.as_str(),
        topic: Some(o.topic.clone()),
        error: None,
        config: Some(TopicConfigReport::from(c)),
        offered,
        confirmed,
        refused,
        refusals: p.refusals.clone(),
        errors,
        first_error: p.first_error.clone(),
        unresolved: p.unresolved,
        producing_s,
        offered_per_s: per_s(offered, producing_s),
        window_wait_ms: if offered > 0 {
            window as f64 * 1e3 / per_s(offered, producing_s)
        } else {
            0.0
        },
        confirmed_per_s: per_s(confirmed, producing_s),
        steady_confirmed_per_s: steady,
        delivered_during_run: o.delivered_during_run,
        delivered_per_s: per_s(o.delivered_during_run, producing_s),
        delivered_total: o.consumer.as_ref().map_or(0, |c| c.delivered),
        redelivered: o.consumer.as_ref().map_or(0, |c| c.redelivered),
        dropped,
        dropped_notified: o.consumer.as_ref().map_or(0, |c| c.gap_seqs.len()),
        gap_notices: o.consumer.as_ref().map_or(0, |c| c.gap_notices),
        stored_at_end: o.final_info.as_ref().map(|i| i.depth),
        drained: o.drained,
        drain_ms: o.drain_ms,
        lost,
        accounting: o.accounting.clone(),
        confirm_latency: Latency::of(&confirm),
        refusal_latency,
        deliver_latency: Latency::of(&deliver),
        retry_after: p.retry_after.report(),
        max_depth: o.series.iter().map(|s| s.depth).max().unwrap_or(0),
        max_parked: o.series.iter().map(|s| s.parked).max().unwrap_or(0),
        honour,
        broker: o.broker.clone(),
        consumer_errors,
        warnings: o
            .warnings
            .iter()
            .cloned()
            .chain(o.sampler_error.iter().map(|e| format!("sampler: {e}")))
            .collect(),
        verdict: Some(v),
        checks,
        series: o.series,
    }
}

/// How a row of the summary renders one policy's value.
type Cell = Box<dyn Fn(&PolicyReport) -> String>;

/// The rows of `--honour-hint`: retries against the drain rate.
fn honour_rows() -> Vec<(&'static str, Cell)> {
    let cell = |f: fn(&HonourReport) -> String| -> Cell {
        Box::new(move |c: &PolicyReport| c.honour.as_ref().map_or("-".into(), f))
    };
    vec![
        (
            "drain (delivered/s)",
            cell(|h| format!("{:.0}", h.drain_per_s)),
        ),
        (
            "offered (1st + retries)/s",
            cell(|h| format!("{:.0}", h.offered_per_s)),
        ),
        (
            "retries / per second",
            cell(|h| format!("{} / {:.0}", h.retries, h.retries_per_s)),
        ),
        (
            "  retries/s ÷ drain/s",
            cell(|h| {
                h.retries_per_drain
                    .map_or("n/a".into(), |r| format!("{r:.2}"))
            }),
        ),
        ("  hints p50/p99/max", cell(hint_ms)),
        ("confirmed/s", cell(|h| format!("{:.0}", h.confirmed_per_s))),
        (
            "no hint / abandoned",
            cell(|h| format!("{} / {}", h.refused_without_hint, h.abandoned)),
        ),
    ]
}

/// The human-readable form: one column per policy.
fn summary(r: &OverloadReport) -> String {
    let producers = match (r.producers, r.honour_hint) {
        (n, true) => format!("{n} producer(s) honouring retry-after hints (one publish at a time)"),
        (1, false) => format!(
            "producer {} (window {})",
            r.rate.map_or("unpaced".into(), |x| format!("at {x} msg/s")),
            r.window
        ),
        (n, false) => format!(
            "{n} producers {} (window {} each)",
            r.rate
                .map_or("unpaced".into(), |x| format!("at {x} msg/s each")),
            r.window
        ),
    };
    let mut s = format!(
        "weir bench overload {}: {producers} for {} s into a topic bounded at {} messages; one consumer acking {} msg/s (credit {}); {} payloads\n\n",
        r.server,
        r.duration_s,
        r.bound,
        r.consumer_rate,
        r.credit,
        format_size(r.size as u64)
    );
    let cols: Vec<&PolicyReport> = r.results.iter().collect();
    let row = |name: &str, f: &dyn Fn(&PolicyReport) -> String| {
        let mut line = format!("{name:<26}");
        for c in &cols {
            let v = if c.error.is_some() && !name.is_empty() {
                "-".to_string()
            } else {
                f(c)
            };
            line.push_str(&format!("{v:>22}"));
        }
        line.push('\n');
        line
    };
    s.push_str(&row("", &|c| c.policy.to_string()));
    let ms = |us: f64| human_us(us);
    let mut rows: Vec<(&str, Cell)> = vec![
        ("offered", Box::new(|c| c.offered.to_string())),
        (
            "  per second",
            Box::new(|c| format!("{:.0}", c.offered_per_s)),
        ),
        ("confirmed", Box::new(|c| c.confirmed.to_string())),
        (
            "  steady rate (2nd half)",
            Box::new(|c| {
                c.steady_confirmed_per_s
                    .map_or("n/a".into(), |r| format!("{r:.0}/s"))
            }),
        ),
        ("refused", Box::new(|c| c.refused.to_string())),
        (
            "  with retry-after",
            Box::new(|c| c.retry_after.with_hint.to_string()),
        ),
        (
            "  retry-after p50/max",
            Box::new(|c| match (c.retry_after.p50_ms, c.retry_after.max_ms) {
                (Some(a), Some(b)) => format!("{a}/{b} ms"),
                _ => "-".into(),
            }),
        ),
        ("dropped", Box::new(|c| c.dropped.to_string())),
        (
            "  told by gap notices",
            Box::new(|c| format!("{} ({} notices)", c.dropped_notified, c.gap_notices)),
        ),
        ("lost", Box::new(|c| c.lost.to_string())),
        (
            "errors / unresolved",
            Box::new(|c| format!("{} / {}", c.errors, c.unresolved)),
        ),
        (
            "delivered (run / total)",
            Box::new(|c| format!("{} / {}", c.delivered_during_run, c.delivered_total)),
        ),
        (
            "  per second (run)",
            Box::new(|c| format!("{:.0}", c.delivered_per_s)),
        ),
        (
            "stored at end",
            Box::new(|c| c.stored_at_end.map_or("?".into(), |d| d.to_string())),
        ),
        (
            "max depth / parked",
            Box::new(|c| format!("{} / {}", c.max_depth, c.max_parked)),
        ),
        (
            "refusal p50 / p99",
            Box::new(move |c| {
                if c.refusal_latency.count == 0 {
                    "-".into()
                } else {
                    format!(
                        "{} / {}",
                        ms(c.refusal_latency.p50_us),
                        ms(c.refusal_latency.p99_us)
                    )
                }
            }),
        ),
        (
            "  window / offered rate",
            Box::new(|c| format!("{:.2} ms", c.window_wait_ms)),
        ),
        (
            "confirm p50 / p99",
            Box::new(move |c| {
                format!(
                    "{} / {}",
                    ms(c.confirm_latency.p50_us),
                    ms(c.confirm_latency.p99_us)
                )
            }),
        ),
        (
            "deliver p50 / p99",
            Box::new(move |c| {
                format!(
                    "{} / {}",
                    ms(c.deliver_latency.p50_us),
                    ms(c.deliver_latency.p99_us)
                )
            }),
        ),
        (
            "broker RSS before → after",
            Box::new(
                |c| match c.broker.as_ref().and_then(|b| Some((b.before?, b.after?))) {
                    Some((b, a)) => format!(
                        "{} → {}",
                        format_size(b.rss_kib * 1024),
                        format_size(a.rss_kib * 1024)
                    ),
                    None => "n/a".into(),
                },
            ),
        ),
        (
            "broker CPU / offered msg",
            Box::new(|c| {
                c.broker
                    .as_ref()
                    .and_then(|b| b.cpu_us_per_offered)
                    .map_or("n/a".into(), |u| format!("{u:.1} µs"))
            }),
        ),
        (
            "verdict",
            Box::new(|c| {
                c.verdict.as_ref().map_or("-".into(), |v| {
                    format!("{} {}", v.claim, if v.ok { "✓" } else { "✗" })
                })
            }),
        ),
    ];
    if r.honour_hint {
        rows.extend(honour_rows());
    }
    for (name, f) in &rows {
        s.push_str(&row(name, f.as_ref()));
    }
    for c in &r.results {
        s.push_str(&format!("\n{}", c.policy));
        if let Some(t) = &c.topic {
            s.push_str(&format!(" (topic {t})"));
        }
        s.push_str(":\n");
        if let Some(e) = &c.error {
            s.push_str(&format!("  ERROR: {e}\n"));
            continue;
        }
        for (reason, n) in &c.refusals {
            s.push_str(&format!("  refused {reason}: {n}\n"));
        }
        for check in &c.checks {
            s.push_str(&format!("  {}\n", check.line()));
        }
        if let Some(b) = &c.broker {
            s.push_str(&format!("  {}\n", b.brief()));
        }
        for w in &c.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        for e in c.consumer_errors.iter().take(3) {
            s.push_str(&format!("  consumer error: {e}\n"));
        }
        if !c.accounting.lost_sample.is_empty() {
            s.push_str(&format!(
                "  first lost sequence numbers: {:?}\n",
                c.accounting.lost_sample
            ));
        }
    }
    s.push_str(if r.ok {
        "\nall correctness and behaviour checks passed\n"
    } else {
        "\nSOME CHECKS FAILED\n"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(policy: OverflowPolicy) -> VerdictInput {
        VerdictInput {
            policy,
            offered: 100_000,
            refused: 0,
            with_hint: 0,
            dropped: 0,
            lost: 0,
            steady_confirmed_per_s: Some(1000.0),
            consumer_rate: 1000.0,
        }
    }

    #[test]
    fn block_is_paced_when_confirms_follow_the_consumer() {
        let mut i = input(OverflowPolicy::Block);
        assert!(verdict(&i).ok);
        i.steady_confirmed_per_s = Some(1240.0);
        assert!(verdict(&i).ok, "within 25 %");
        i.steady_confirmed_per_s = Some(5000.0);
        assert!(!verdict(&i).ok, "confirms outrun the consumer: not paced");
        i.steady_confirmed_per_s = Some(1000.0);
        i.refused = 5000;
        assert!(!verdict(&i).ok, "5 % refused is not few");
        i.refused = 0;
        i.steady_confirmed_per_s = None;
        assert!(!verdict(&i).ok, "no measurement, no claim");
        assert_eq!(verdict(&i).claim, "producer paced");
    }

    #[test]
    fn reject_needs_refusals_with_hints_and_nothing_lost() {
        let mut i = input(OverflowPolicy::Reject);
        assert!(!verdict(&i).ok, "no refusals at all");
        i.refused = 80_000;
        i.with_hint = 80_000;
        assert!(verdict(&i).ok);
        assert_eq!(verdict(&i).claim, "producer refused");
        i.with_hint = 79_999;
        assert!(!verdict(&i).ok, "every refusal says when to come back");
        i.with_hint = 80_000;
        i.lost = 1;
        assert!(!verdict(&i).ok);
    }

    #[test]
    fn drop_oldest_needs_counted_drops_and_nothing_lost() {
        let mut i = input(OverflowPolicy::DropOldest);
        assert!(!verdict(&i).ok);
        i.dropped = 10;
        assert!(verdict(&i).ok);
        i.lost = 2;
        assert!(!verdict(&i).ok);
        assert_eq!(verdict(&i).claim, "dropped visibly");
    }

    #[test]
    fn policy_choice_expands() {
        assert_eq!(PolicyChoice::All.policies().len(), 3);
        assert_eq!(
            PolicyChoice::DropOldest.policies(),
            vec![OverflowPolicy::DropOldest]
        );
    }
}
