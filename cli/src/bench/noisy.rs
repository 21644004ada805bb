//! `weir bench noisy-neighbour`: a healthy tenant publishing at a steady rate to its own topic
//! and consuming it, beside one offender ([`super::offenders`]) — once per offender, the
//! tenant alone (`none`) first when `--offender all`.
//!
//! Per offender it reports the healthy tenant's publish→confirm and publish→deliver
//! percentiles, its refusals by reason, what it published and consumed (equal when the broker
//! kept its promise), the offender's own outcome (connections refused or closed, publishes
//! refused or shed, everything it was answered), and the broker's peak RSS over the run
//! (`--broker-pid`, sampled every 100 ms). Beside the baseline, each run shows the ratio of the
//! tenant's p50/p99 to the baseline's: on a shared machine the ratios mean more than the
//! absolute figures.
//!
//! The timeline of one offender, every step bounded:
//!
//! 1. the offender starts on its own thread and runtime and gets in place (connections open,
//!    topic filled: at most [`offenders::SETUP_LIMIT`]);
//! 2. the healthy tenant runs for `--duration` at `--rate` (the machinery of the overload
//!    scenario: a fresh topic, a windowed publisher, one subscription acking everything at
//!    full speed), then drains its topic for at most `--drain`;
//! 3. the offender is told to stop and closes its connections; the topics of the run are
//!    deleted; one second of quiet before the next offender.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use weir_client::{ClientOptions, OverflowPolicy, TopicSpec};

use super::cleanup::Created;
use super::common::{
    histogram, human_us, peak_rss, per_s, progress_bar, progress_enabled, run_id, BrokerUsage,
    Latency, STAMP_BYTES,
};
use super::load::Phase;
use super::offenders::{self, Ctx, Offender, OffenderConfig, OffenderOutcome};
use super::scenario::{run_scenario, ScenarioOutcome, ScenarioSpec};
use super::{Check, CheckKind};
use crate::size::{format_signed_size, format_size};

/// Arguments of `weir bench noisy-neighbour`.
#[derive(Debug, Args)]
pub struct NoisyArgs {
    /// The offender beside the healthy tenant (all: none first, then each in turn).
    #[arg(long, value_enum, default_value_t = Offender::All)]
    pub offender: Offender,
    /// How long the healthy tenant publishes beside each offender (`20`, `20s`, `1500ms`).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The healthy tenant's publish rate, msg/s.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// The healthy tenant's payload size in bytes or with a unit (4KiB, 1MB) (at least 16: the stamp).
    #[arg(long, value_name = "SIZE", default_value = "1024", value_parser = crate::size::parse_size_usize)]
    pub size: usize,
    /// The healthy tenant's window of unconfirmed publishes.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// The healthy tenant's subscription window (credit).
    #[arg(long, default_value_t = 256)]
    pub credit: u32,
    /// After publishing, the healthy tenant drains its topic for at most this many seconds.
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// The broker's process id, to read its RSS (peak over each run) and CPU from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// slowloris: connections dripping one byte per second.
    #[arg(long, default_value_t = 70)]
    pub slowloris_conns: usize,
    /// idle-swarm: connections to open and hold idle.
    #[arg(long, default_value_t = 1000)]
    pub swarm_conns: usize,
    /// idle-swarm: source addresses to spread the connections over (used when the broker is
    /// on loopback).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"
    )]
    pub swarm_sources: Vec<IpAddr>,
    /// non-reader: 256 KiB messages its producer publishes before it stops reading.
    #[arg(long, default_value_t = 200)]
    pub non_reader_msgs: u64,
    /// flood: the publisher's window (clamped to the broker's max_unconfirmed).
    #[arg(long, default_value_t = 1024)]
    pub flood_window: usize,
    /// flood: overflow policy of its topic (drop_oldest keeps the broker storing).
    #[arg(long, default_value = "drop_oldest")]
    pub flood_overflow: OverflowPolicy,
    /// Prefix of the topics created (`<prefix>-<who>-<run id>`).
    #[arg(long, default_value = "bench-noisy")]
    pub topic_prefix: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `20`, `20s` or `1500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1000)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (20, 20s or 1500ms)"))?;
    Ok(Duration::from_millis(n.saturating_mul(unit_ms)))
}

/// The healthy tenant's figures beside one offender.
#[derive(Debug, Clone, Serialize)]
pub struct Healthy {
    pub topic: String,
    /// Why the tenant could not run (it could not connect, create its topic, subscribe).
    pub error: Option<String>,
    /// Publishes sent.
    pub published: u64,
    pub confirmed: u64,
    pub refused: u64,
    pub refusals: BTreeMap<String, u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Publishes whose outcome never arrived.
    pub unresolved: u64,
    /// Publishes of the rate never sent: the window was full when they were due, or the
    /// tenant's own loop ran late (a starved client) — either way, the tenant was slowed.
    pub not_offered: u64,
    pub published_per_s: f64,
    /// Distinct messages delivered and acked.
    pub consumed: u64,
    pub redelivered: u64,
    /// consumed == published, nothing refused, nothing lost.
    pub consumed_all: bool,
    /// Confirmed, then neither delivered nor stored.
    pub lost: u64,
    pub drained: bool,
    pub confirm_latency: Latency,
    pub deliver_latency: Latency,
    pub consumer_errors: Vec<String>,
}

/// The tenant's figures over the baseline's (`none` in the same invocation).
#[derive(Debug, Clone, Serialize)]
pub struct VsAlone {
    pub confirm_p50: f64,
    pub confirm_p99: f64,
    pub deliver_p50: f64,
    pub deliver_p99: f64,
}

/// The broker's memory and CPU over one offender's run (setup, tenant, cleanup).
#[derive(Debug, Clone, Serialize)]
pub struct BrokerReport {
    /// Highest VmRSS sampled every 100 ms over the run, KiB.
    pub peak_rss_kib: Option<u64>,
    /// That peak less the VmRSS when the run started, KiB: what this run added (the broker's
    /// allocator keeps what earlier runs grew to, so later runs start higher).
    pub peak_rss_growth_kib: Option<i64>,
    pub usage: BrokerUsage,
}

/// One offender's run.
#[derive(Debug, Clone, Serialize)]
pub struct OffenderRun {
    pub offender: &'static str,
    pub healthy: Healthy,
    pub vs_alone: Option<VsAlone>,
    #[serde(rename = "offender_outcome")]
    pub outcome: OffenderOutcome,
    pub broker: Option<BrokerReport>,
    pub warnings: Vec<String>,
    pub checks: Vec<Check>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct NoisyReport {
    pub scenario: &'static str,
    pub server: String,
    pub run_id: String,
    pub duration_s: f64,
    pub rate: u64,
    pub size: usize,
    pub window: usize,
    pub credit: u32,
    /// True when every correctness and behaviour check passed.
    pub ok: bool,
    pub runs: Vec<OffenderRun>,
}

/// How long an offender may take to stop and report.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// Quiet between two offenders.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the broker's RSS is sampled.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// Share of the rate the tenant may fail to offer (window full) and still count as unslowed.
const RATE_TOLERANCE: f64 = 0.01;
/// The tenant's p99 beside an offender within this multiple of its p99 alone meets the target.
const P99_RATIO_TARGET: f64 = 2.0;

pub async fn run(
    server: &str,
    options: &ClientOptions,
    args: NoisyArgs,
    created: &Created,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.size >= STAMP_BYTES,
        "--size must be at least {STAMP_BYTES} bytes (the latency stamp)"
    );
    anyhow::ensure!(
        args.duration >= Duration::from_millis(100),
        "--duration must be at least 100ms"
    );
    anyhow::ensure!(args.rate >= 1, "--rate must be at least 1");
    anyhow::ensure!(
        args.window >= 1 && args.credit >= 1,
        "--window and --credit must be at least 1"
    );
    let addr = tokio::net::lookup_host(server)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve {server}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{server} resolves to no address"))?;
    let id = run_id();
    let show = progress_enabled(args.json);
    let mut runs: Vec<OffenderRun> = Vec::new();
    let offenders = args.offender.expand();
    for (i, offender) in offenders.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(SETTLE).await;
        }
        let bar = progress_bar(show, args.duration.as_secs().max(1), "s");
        bar.set_prefix(offender.name());
        let mut r = run_one(
            (server, addr),
            options,
            created,
            &args,
            *offender,
            id,
            bar.clone(),
        )
        .await;
        bar.finish_and_clear();
        if let Some(base) = runs.iter().find(|r| r.offender == Offender::None.name()) {
            r.vs_alone = vs_alone(&base.healthy, &r.healthy);
            if let Some(v) = &r.vs_alone {
                r.checks.push(Check {
                    name: format!("deliver p99 within {P99_RATIO_TARGET}× alone"),
                    kind: CheckKind::Target,
                    ok: v.deliver_p99 <= P99_RATIO_TARGET,
                    detail: format!(
                        "{} vs {} alone ({:.2}×); confirm p99 {:.2}×",
                        human_us(r.healthy.deliver_latency.p99_us),
                        human_us(base.healthy.deliver_latency.p99_us),
                        v.deliver_p99,
                        v.confirm_p99
                    ),
                });
            }
        }
        runs.push(r);
    }
    let ok = runs
        .iter()
        .all(|r| r.checks.iter().all(|c| c.ok || c.kind == CheckKind::Target));
    let report = NoisyReport {
        scenario: "noisy-neighbour",
        server: server.to_owned(),
        run_id: format!("{id:016x}"),
        duration_s: args.duration.as_secs_f64(),
        rate: args.rate,
        size: args.size,
        window: args.window,
        credit: args.credit,
        ok,
        runs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(super::exit_code(
        ok,
        report.runs.iter().flat_map(|r| &r.checks),
    ))
}

/// `this / base`, or `None` when the base is 0.
fn ratio(this: f64, base: f64) -> Option<f64> {
    (base > 0.0).then(|| this / base)
}

fn vs_alone(base: &Healthy, h: &Healthy) -> Option<VsAlone> {
    if h.error.is_some() || base.error.is_some() {
        return None;
    }
    Some(VsAlone {
        confirm_p50: ratio(h.confirm_latency.p50_us, base.confirm_latency.p50_us)?,
        confirm_p99: ratio(h.confirm_latency.p99_us, base.confirm_latency.p99_us)?,
        deliver_p50: ratio(h.deliver_latency.p50_us, base.deliver_latency.p50_us)?,
        deliver_p99: ratio(h.deliver_latency.p99_us, base.deliver_latency.p99_us)?,
    })
}

async fn run_one(
    (server, addr): (&str, SocketAddr),
    options: &ClientOptions,
    created: &Created,
    args: &NoisyArgs,
    offender: Offender,
    id: u64,
    bar: indicatif::ProgressBar,
) -> OffenderRun {
    let mut warnings = Vec::new();
    let mut usage = args.broker_pid.map(BrokerUsage::start);
    let (stop_rss, rss_rx) = watch::channel(false);
    let rss = args
        .broker_pid
        .map(|pid| tokio::spawn(peak_rss(pid, RSS_EVERY, rss_rx)));

    // 1. The offender, in place.
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let outcome_rx = offenders::spawn(
        Ctx {
            offender,
            server: server.to_owned(),
            addr,
            options: options.clone(),
            created: created.clone(),
            config: OffenderConfig {
                slowloris_conns: args.slowloris_conns,
                swarm_conns: args.swarm_conns,
                swarm_sources: args.swarm_sources.clone(),
                non_reader_msgs: args.non_reader_msgs,
                flood_window: args.flood_window,
                flood_overflow: args.flood_overflow,
                topic_prefix: args.topic_prefix.clone(),
                run_id: id,
            },
        },
        ready_tx,
        stop_rx,
    );
    match tokio::time::timeout(offenders::SETUP_LIMIT + Duration::from_secs(5), ready_rx).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => warnings.push("the offender could not get in place".into()),
        Err(_) => warnings.push(format!(
            "the offender was not in place after {:?}; the tenant ran anyway",
            offenders::SETUP_LIMIT
        )),
    }

    // 2. The healthy tenant.
    let topic = format!(
        "{}-healthy-{}-{:012x}",
        args.topic_prefix,
        offender.name(),
        id & 0xffff_ffff_ffff
    );
    let spec = ScenarioSpec {
        topic: TopicSpec {
            name: topic.clone(),
            ..TopicSpec::default()
        },
        group: "healthy".into(),
        phases: vec![Phase {
            name: "run",
            duration: args.duration,
            rate: Some(args.rate as f64),
        }],
        consumer_rate: None,
        credit: args.credit,
        size: args.size,
        window: args.window,
        sample_every: Duration::from_millis(500),
        drain: Duration::from_secs(args.drain),
        broker_pid: None,
        run_id: id ^ (offender as u64 + 1).rotate_left(48),
    };
    let healthy = match run_scenario(server, options, (spec, created), bar).await {
        Ok(o) => {
            warnings.extend(o.warnings.iter().cloned());
            healthy_report(&topic, &o)
        }
        Err(e) => failed_healthy(&topic, format!("{e:#}")),
    };

    // 3. The offender stops and closes its connections; the run's topics go.
    let _ = stop_tx.send(true);
    let outcome = match tokio::time::timeout(STOP_LIMIT, outcome_rx).await {
        Ok(Ok(o)) => o,
        Ok(Err(_)) | Err(_) => {
            warnings.push(format!("the offender did not report within {STOP_LIMIT:?}"));
            let mut o = OffenderOutcome::empty(offender);
            o.error = Some("no outcome".into());
            o
        }
    };
    match created.remove_all(server, options).await {
        Ok(kept) if !kept.is_empty() => {
            warnings.push(format!("kept topics (--keep): {}", kept.join(", ")))
        }
        Ok(_) => {}
        Err(e) => warnings.push(format!("cleanup: {e:#}")),
    }
    let _ = stop_rss.send(true);
    let peak = match rss {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    if let Some(u) = usage.as_mut() {
        u.finish(healthy.published + outcome.sent);
        // Broker CPU per message makes no sense here (offenders send more than messages).
        u.cpu_us_per_offered = None;
    }
    let broker = usage.map(|usage| BrokerReport {
        peak_rss_kib: peak,
        peak_rss_growth_kib: peak
            .zip(usage.before)
            .map(|(p, b)| p as i64 - b.rss_kib as i64),
        usage,
    });
    let checks = checks(args, &healthy);
    OffenderRun {
        offender: offender.name(),
        healthy,
        vs_alone: None,
        outcome,
        broker,
        warnings,
        checks,
    }
}

fn healthy_report(topic: &str, o: &ScenarioOutcome) -> Healthy {
    let p = &o.producer;
    let published = p.total(|x| x.offered);
    let confirmed = p.total(|x| x.confirmed);
    let refused = p.total(|x| x.refused);
    let errors = p.total(|x| x.errors);
    let mut confirm = histogram();
    for ph in &p.phases {
        let _ = confirm.add(&ph.confirm);
    }
    let mut deliver = histogram();
    let (consumed, redelivered, consumer_errors) = match &o.consumer {
        Some(c) => {
            for h in &c.deliver {
                let _ = deliver.add(h);
            }
            (c.delivered_seqs.len(), c.redelivered, c.errors.clone())
        }
        None => (0, 0, vec!["the consumer's results are missing".into()]),
    };
    let lost = o.accounting.lost;
    Healthy {
        topic: topic.to_owned(),
        error: None,
        published,
        confirmed,
        refused,
        refusals: p.refusals.clone(),
        errors,
        first_error: p.first_error.clone(),
        unresolved: p.unresolved,
        not_offered: p.total(|x| x.not_offered),
        published_per_s: per_s(published, (p.stopped_ms as f64 / 1e3).max(1e-3)),
        consumed,
        redelivered,
        consumed_all: consumed == published && confirmed == published && lost == 0,
        lost,
        drained: o.drained,
        confirm_latency: Latency::of(&confirm),
        deliver_latency: Latency::of(&deliver),
        consumer_errors,
    }
}

fn failed_healthy(topic: &str, error: String) -> Healthy {
    let empty = Latency::of(&histogram());
    Healthy {
        topic: topic.to_owned(),
        error: Some(error),
        published: 0,
        confirmed: 0,
        refused: 0,
        refusals: BTreeMap::new(),
        errors: 0,
        first_error: None,
        unresolved: 0,
        not_offered: 0,
        published_per_s: 0.0,
        consumed: 0,
        redelivered: 0,
        consumed_all: false,
        lost: 0,
        drained: false,
        confirm_latency: empty.clone(),
        deliver_latency: empty,
        consumer_errors: Vec::new(),
    }
}

fn checks(args: &NoisyArgs, h: &Healthy) -> Vec<Check> {
    if let Some(e) = &h.error {
        return vec![Check {
            name: "healthy tenant ran".into(),
            kind: CheckKind::Behaviour,
            ok: false,
            detail: e.clone(),
        }];
    }
    let expected = args.rate as f64 * args.duration.as_secs_f64();
    vec![
        Check {
            name: "healthy tenant never refused".into(),
            kind: CheckKind::Behaviour,
            ok: h.refused == 0 && h.errors == 0 && h.unresolved == 0,
            detail: format!(
                "{} refused{}, {} errors, {} unresolved{}",
                h.refused,
                if h.refusals.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", join_counts(&h.refusals))
                },
                h.errors,
                h.unresolved,
                h.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
        },
        Check {
            name: "healthy consumed == published".into(),
            kind: CheckKind::Correctness,
            ok: h.consumed_all && h.consumer_errors.is_empty(),
            detail: format!(
                "published {}, confirmed {}, consumed {}, lost {}{}",
                h.published,
                h.confirmed,
                h.consumed,
                h.lost,
                h.consumer_errors
                    .first()
                    .map(|e| format!(" (consumer: {e})"))
                    .unwrap_or_default()
            ),
        },
        Check {
            name: "healthy tenant kept its rate".into(),
            kind: CheckKind::Target,
            ok: (h.not_offered as f64) <= RATE_TOLERANCE * expected,
            detail: format!(
                "{} of {expected:.0} publishes skipped, their window full or the tenant's own loop late ({:.0}/s offered)",
                h.not_offered, h.published_per_s
            ),
        },
    ]
}

/// `a: 1, b: 2`.
fn join_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a row of the summary renders one run.
type Cell = Box<dyn Fn(&OffenderRun) -> String>;

/// The human-readable form: one column per offender, then each offender's details.
fn summary(r: &NoisyReport) -> String {
    let mut s = format!(
        "weir bench noisy-neighbour {}: healthy tenant at {} msg/s × {} for {:.1} s (window {}, credit {}) beside each offender\n\n",
        r.server, r.rate, format_size(r.size as u64), r.duration_s, r.window, r.credit
    );
    let row = |name: &str, f: &dyn Fn(&OffenderRun) -> String| {
        let mut line = format!("{name:<28}");
        for c in &r.runs {
            line.push_str(&format!("{:>22}", f(c)));
        }
        line.push('\n');
        line
    };
    s.push_str(&row("", &|c| c.offender.to_string()));
    let lat = |l: &Latency| format!("{} / {}", human_us(l.p50_us), human_us(l.p99_us));
    let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}×"));
    let rows: Vec<(&str, Cell)> = vec![
        (
            "published / consumed",
            Box::new(|c| format!("{} / {}", c.healthy.published, c.healthy.consumed)),
        ),
        (
            "  equal",
            Box::new(|c| if c.healthy.consumed_all { "yes" } else { "NO" }.into()),
        ),
        ("refused", Box::new(|c| c.healthy.refused.to_string())),
        (
            "confirm p50 / p99",
            Box::new(move |c| lat(&c.healthy.confirm_latency)),
        ),
        (
            "deliver p50 / p99",
            Box::new(move |c| lat(&c.healthy.deliver_latency)),
        ),
        (
            "  p99 vs alone (conf/del)",
            Box::new(move |c| match &c.vs_alone {
                Some(v) => format!("{} / {}", x(Some(v.confirm_p99)), x(Some(v.deliver_p99))),
                None => "-".into(),
            }),
        ),
        (
            "offender: conns open/ref.",
            Box::new(|c| {
                format!(
                    "{} / {}",
                    c.outcome.connections_opened, c.outcome.connections_refused
                )
            }),
        ),
        (
            "  closed by broker",
            Box::new(|c| c.outcome.closed_by_broker.to_string()),
        ),
        (
            "  sent / refused",
            Box::new(|c| format!("{} / {}", c.outcome.sent, c.outcome.refused)),
        ),
        (
            "broker peak RSS",
            Box::new(|c| {
                c.broker
                    .as_ref()
                    .and_then(|b| b.peak_rss_kib)
                    .map_or("n/a".into(), |k| format_size(k * 1024))
            }),
        ),
        (
            "  growth over the run",
            Box::new(|c| {
                c.broker
                    .as_ref()
                    .and_then(|b| b.peak_rss_growth_kib)
                    .map_or("n/a".into(), |k| format_signed_size(k * 1024))
            }),
        ),
    ];
    for (name, f) in &rows {
        s.push_str(&row(name, f.as_ref()));
    }
    for c in &r.runs {
        s.push_str(&format!("\n{}:\n", c.offender));
        let h = &c.healthy;
        if let Some(e) = &h.error {
            s.push_str(&format!("  healthy tenant ERROR: {e}\n"));
        } else {
            s.push_str(&format!(
                "  healthy: published {}, confirmed {}, consumed {} — {}\n",
                h.published,
                h.confirmed,
                h.consumed,
                if h.consumed_all {
                    "consumed all it published"
                } else {
                    "consumed NOT equal to published"
                }
            ));
            s.push_str(&format!(
                "  healthy confirm: {}\n",
                h.confirm_latency.brief()
            ));
            s.push_str(&format!(
                "  healthy deliver: {}\n",
                h.deliver_latency.brief()
            ));
            if !h.refusals.is_empty() {
                s.push_str(&format!(
                    "  healthy refused: {}\n",
                    join_counts(&h.refusals)
                ));
            }
        }
        if c.outcome.offender != "none" {
            s.push_str(&format!("  offender: {}\n", c.outcome.brief()));
            if !c.outcome.answers.is_empty() {
                s.push_str(&format!(
                    "  offender was answered: {}\n",
                    join_counts(&c.outcome.answers)
                ));
            }
            if !c.outcome.refused_connections.is_empty() {
                s.push_str(&format!(
                    "  offender's refused connections: {}\n",
                    join_counts(&c.outcome.refused_connections)
                ));
            }
            for n in &c.outcome.notes {
                s.push_str(&format!("  offender note: {n}\n"));
            }
        }
        for check in &c.checks {
            s.push_str(&format!("  {}\n", check.line()));
        }
        if let Some(b) = &c.broker {
            s.push_str(&format!("  {}\n", b.usage.brief()));
        }
        for w in &c.warnings {
            s.push_str(&format!("  warning: {w}\n"));
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

    #[test]
    fn durations_parse_with_or_without_a_unit() {
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn ratios_need_a_baseline() {
        assert_eq!(ratio(3.0, 1.5), Some(2.0));
        assert_eq!(ratio(3.0, 0.0), None);
    }
}
