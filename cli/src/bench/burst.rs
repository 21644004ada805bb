//! `weir bench burst`: a steady load, a burst of `--burst-factor` × that load, and the steady
//! load again — and how the topic's depth, the refusals and the latencies behave through it.
//!
//! **The sustainable rate** (`--baseline auto`, the default) is found first with a short probe
//! on its own fresh topic: the producer publishes as fast as its window allows for
//! `--probe-secs` while the consumer acks at full speed; the probe's capacity is the median,
//! after a 20 % warm-up, of the sampled confirm rate or delivery rate, whichever is lower, and
//! the baseline is `--probe-fraction` (70 %) of it, rounded down to two significant digits.
//!
//! **The consumer is the bottleneck by design.** It acks at `--consumer-capacity` × the
//! baseline (1.25 by default): at 1× it keeps up with room to spare, so the depth should hover
//! around what it holds in flight; at 2× it cannot, so the burst must be absorbed by the topic
//! (up to `--bound`) and then refused (or parked, or dropped, per `--policy`) — and once the
//! burst ends the spare 25 % drains the backlog. `--consumer-capacity max` acks as fast as
//! deliveries come instead, making the broker itself the bottleneck (the setting for the
//! DESIGN §7 publish→deliver targets).
//!
//! **Recovery** is the time from the end of the burst to the first depth sample back within
//! the baseline level: the highest depth sampled at 1× before the burst (after a warm-up), or
//! 1 % of the bound when that is higher.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use weir_client::{ClientOptions, OverflowPolicy};

use super::accounting::Accounting;
use super::cleanup::Created;
use super::common::{
    histogram, human_us, per_s, progress_bar, progress_enabled, run_id, BrokerUsage, Latency,
    STAMP_BYTES,
};
use super::load::{median_over, Phase, RetryAfterReport, SeriesPoint};
use super::overload::TopicConfigReport;
use super::plot::{column_of, series_csv, series_svg, sparkline, Span};
use super::scenario::{run_scenario, ScenarioFlags, ScenarioOutcome, ScenarioSpec};
use super::{Check, CheckKind};
use crate::size::format_size;

/// The steady rate: measured (`auto`) or given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Baseline {
    Auto,
    Rate(u64),
}

impl std::str::FromStr for Baseline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Baseline::Auto),
            n => match n.parse::<u64>() {
                Ok(r) if r >= 1 => Ok(Baseline::Rate(r)),
                _ => Err(format!("{n:?} is neither `auto` nor a rate ≥ 1 in msg/s")),
            },
        }
    }
}

/// How fast the consumer acks: a multiple of the baseline, or as fast as it can.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Capacity {
    Factor(f64),
    Max,
}

impl std::str::FromStr for Capacity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "max" => Ok(Capacity::Max),
            f => match f.parse::<f64>() {
                Ok(x) if x > 0.0 && x.is_finite() => Ok(Capacity::Factor(x)),
                _ => Err(format!(
                    "{f:?} is neither `max` nor a positive factor of the baseline"
                )),
            },
        }
    }
}

/// Arguments of `weir bench burst`.
#[derive(Debug, Args)]
pub struct BurstArgs {
    /// The steady rate in msg/s, or `auto` to measure the sustainable rate first (a short
    /// max-throughput probe; the baseline is --probe-fraction of it).
    #[arg(long, default_value = "auto")]
    pub baseline: Baseline,
    /// The burst's rate as a multiple of the baseline.
    #[arg(long, default_value_t = 2.0)]
    pub burst_factor: f64,
    /// Seconds at the baseline before the burst.
    #[arg(long, default_value_t = 10)]
    pub before: u64,
    /// Seconds of the burst.
    #[arg(long, default_value_t = 30)]
    pub burst: u64,
    /// Seconds at the baseline after the burst.
    #[arg(long, default_value_t = 20)]
    pub after: u64,
    /// Sample the topic's depth every this many milliseconds.
    #[arg(long, default_value_t = 250)]
    pub sample_ms: u64,
    /// The topic's max_messages.
    #[arg(long, default_value_t = 10_000)]
    pub bound: u64,
    /// The topic's overflow policy (reject, block, drop_oldest).
    #[arg(long, default_value = "reject")]
    pub policy: OverflowPolicy,
    /// The consumer's ack rate as a multiple of the baseline, or `max` (as fast as it can).
    #[arg(long, default_value = "1.25")]
    pub consumer_capacity: Capacity,
    /// Payload size in bytes or with a unit (4KiB, 1MB) (at least 16: the stamp).
    #[arg(long, value_name = "SIZE", default_value = "1024", value_parser = crate::size::parse_size_usize)]
    pub size: usize,
    /// The producer's window of unconfirmed publishes.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// The consumer's window (credit).
    #[arg(long, default_value_t = 128)]
    pub credit: u32,
    /// Seconds of the sustainable-rate probe (--baseline auto).
    #[arg(long, default_value_t = 3)]
    pub probe_secs: u64,
    /// The baseline's share of the probe's rate (--baseline auto).
    #[arg(long, default_value_t = 0.7)]
    pub probe_fraction: f64,
    /// After the run (and the probe), the consumer drains at full speed for at most this many
    /// seconds (0: stop at once and count what is stored).
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    /// The topic's knobs and the broker to watch.
    #[command(flatten)]
    pub flags: ScenarioFlags,
    /// Prefix of the topics created (`<prefix>-<run id>`, `<prefix>-probe-<run id>`).
    #[arg(long, default_value = "bench-burst")]
    pub topic_prefix: String,
    /// Write the sampled series as CSV to this file.
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
    /// Write a chart of depth and rates over time as SVG to this file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The capacity a probe measured, and the baseline picked from it.
pub fn pick_sustainable(confirmed_per_s: f64, delivered_per_s: f64, fraction: f64) -> u64 {
    let capacity = if delivered_per_s > 0.0 {
        confirmed_per_s.min(delivered_per_s)
    } else {
        confirmed_per_s
    };
    // The epsilon keeps float noise (1400 × 0.7 = 979.999…) from losing a step.
    floor_2_digits(capacity * fraction * (1.0 + 1e-9)).max(1)
}

/// Rounds down to two significant digits: 33 612 → 33 000, 987 → 980, 42 → 42.
fn floor_2_digits(x: f64) -> u64 {
    if !x.is_finite() || x < 1.0 {
        return 0;
    }
    let x = x as u64;
    let mut unit = 1u64;
    while x / unit >= 100 {
        unit *= 10;
    }
    x / unit * unit
}

/// The depth's return to its baseline level after the burst.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recovery {
    /// The highest depth sampled at 1× before the burst (after the warm-up).
    pub baseline_depth: u64,
    /// The level that counts as recovered: `baseline_depth`, or the floor given (1 % of the
    /// bound) when higher, so a near-empty baseline does not demand an exactly empty topic.
    pub threshold: u64,
    /// The highest depth sampled from the burst's start to the end of the after phase.
    pub peak_depth: u64,
    /// Time from the end of the burst to the first sample at or below `threshold`,
    /// within the after phase; `None`: not recovered by the end of the after phase.
    pub recovered_after_ms: Option<u64>,
}

/// Finds the recovery in `series`: see [`Recovery`]. `warmup_ms` of the before phase are
/// ignored (the consumer's window fills then).
pub fn recovery(
    series: &[SeriesPoint],
    floor: u64,
    warmup_ms: u64,
    burst_start_ms: u64,
    burst_end_ms: u64,
    after_end_ms: u64,
) -> Recovery {
    let mut baseline = series
        .iter()
        .filter(|p| p.t_ms >= warmup_ms && p.t_ms < burst_start_ms)
        .map(|p| p.depth)
        .max();
    if baseline.is_none() {
        // A before phase shorter than the warm-up: use all of it.
        baseline = series
            .iter()
            .filter(|p| p.t_ms < burst_start_ms)
            .map(|p| p.depth)
            .max();
    }
    let baseline_depth = baseline.unwrap_or(0);
    let threshold = baseline_depth.max(floor);
    let peak_depth = series
        .iter()
        .filter(|p| p.t_ms >= burst_start_ms && p.t_ms < after_end_ms)
        .map(|p| p.depth)
        .max()
        .unwrap_or(0);
    let recovered_after_ms = series
        .iter()
        .filter(|p| p.t_ms >= burst_end_ms && p.t_ms < after_end_ms)
        .find(|p| p.depth <= threshold)
        .map(|p| p.t_ms - burst_end_ms);
    Recovery {
        baseline_depth,
        threshold,
        peak_depth,
        recovered_after_ms,
    }
}

/// One phase's numbers.
#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub name: &'static str,
    pub start_s: u64,
    pub end_s: u64,
    pub target_per_s: f64,
    /// Publishes sent, confirmed, refused and failed, by send time.
    pub offered: u64,
    pub confirmed: u64,
    pub refused: u64,
    pub errors: u64,
    /// Publishes the target rate called for that the producer could not send (window full).
    pub not_offered: u64,
    pub offered_per_s: f64,
    pub confirmed_per_s: f64,
    pub refused_per_s: f64,
    /// Median delivery rate sampled in the phase.
    pub delivered_per_s: Option<f64>,
    pub depth_max: u64,
    pub depth_median: Option<f64>,
    pub confirm_latency: Latency,
    pub refusal_latency: Latency,
    pub deliver_latency: Latency,
}

/// The probe that found the baseline.
#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub topic: String,
    pub secs: u64,
    pub confirmed_per_s: f64,
    pub delivered_per_s: f64,
    pub refused: u64,
    pub fraction: f64,
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct BurstReport {
    pub scenario: &'static str,
    pub server: String,
    pub run_id: String,
    pub topic: String,
    pub policy: &'static str,
    pub config: TopicConfigReport,
    pub baseline_mode: &'static str,
    pub baseline_per_s: u64,
    pub probe: Option<ProbeReport>,
    pub burst_factor: f64,
    pub burst_per_s: f64,
    /// The consumer's ack rate; `None`: as fast as it can.
    pub consumer_per_s: Option<f64>,
    pub bound: u64,
    pub size: usize,
    pub window: usize,
    pub credit: u32,
    pub sample_ms: u64,
    pub phases: Vec<PhaseReport>,
    pub recovery: Recovery,
    pub refusals: std::collections::BTreeMap<String, u64>,
    pub retry_after: RetryAfterReport,
    pub unresolved: u64,
    pub first_error: Option<String>,
    pub lost: u64,
    pub accounting: Accounting,
    pub drained: bool,
    pub broker: Option<BrokerUsage>,
    pub consumer_errors: Vec<String>,
    pub warnings: Vec<String>,
    pub checks: Vec<Check>,
    /// True when every correctness and behaviour check passed.
    pub ok: bool,
    pub series: Vec<SeriesPoint>,
}

pub async fn run(
    server: &str,
    options: &ClientOptions,
    args: BurstArgs,
    created: &Created,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.size >= STAMP_BYTES,
        "--size must be at least {STAMP_BYTES} bytes (the latency stamp)"
    );
    anyhow::ensure!(
        args.before >= 1 && args.burst >= 1 && args.after >= 1,
        "--before, --burst and --after must be at least 1 s"
    );
    anyhow::ensure!(
        args.burst_factor > 0.0 && args.burst_factor.is_finite(),
        "--burst-factor must be positive"
    );
    anyhow::ensure!(
        args.probe_fraction > 0.0 && args.probe_fraction <= 1.0,
        "--probe-fraction must be in (0, 1]"
    );
    anyhow::ensure!(args.probe_secs >= 1, "--probe-secs must be at least 1");
    anyhow::ensure!(args.bound >= 1, "--bound must be at least 1");
    anyhow::ensure!(
        args.window >= 1 && args.credit >= 1,
        "--window and --credit must be at least 1"
    );
    anyhow::ensure!(args.sample_ms >= 10, "--sample-ms must be at least 10");
    let id = run_id();
    let show = progress_enabled(args.json);
    let suffix = format!("{:012x}", id & 0xffff_ffff_ffff);

    let (baseline, probe) = match args.baseline {
        Baseline::Rate(r) => (r, None),
        Baseline::Auto => {
            if show {
                eprintln!(
                    "burst: probing the sustainable rate for {} s",
                    args.probe_secs
                );
            }
            let probe = probe(server, options, created, &args, id, &suffix, show).await;
            let rate = pick_sustainable(
                probe.confirmed_per_s,
                probe.delivered_per_s,
                args.probe_fraction,
            );
            if let Some(e) = &probe.error {
                anyhow::bail!("the sustainable-rate probe failed: {e}");
            }
            anyhow::ensure!(
                rate >= 1,
                "the probe measured no throughput (confirmed {:.0}/s, delivered {:.0}/s)",
                probe.confirmed_per_s,
                probe.delivered_per_s
            );
            (rate, Some(probe))
        }
    };
    let burst_rate = baseline as f64 * args.burst_factor;
    let consumer_rate = match args.consumer_capacity {
        Capacity::Factor(f) => Some(baseline as f64 * f),
        Capacity::Max => None,
    };
    let phases = vec![
        Phase {
            name: "before",
            duration: Duration::from_secs(args.before),
            rate: Some(baseline as f64),
        },
        Phase {
            name: "burst",
            duration: Duration::from_secs(args.burst),
            rate: Some(burst_rate),
        },
        Phase {
            name: "after",
            duration: Duration::from_secs(args.after),
            rate: Some(baseline as f64),
        },
    ];
    if show {
        eprintln!(
            "burst: {baseline} msg/s for {} s, {burst_rate:.0} msg/s for {} s, {baseline} msg/s for {} s",
            args.before, args.burst, args.after
        );
    }
    let bar = progress_bar(show, args.before + args.burst + args.after, "s");
    bar.set_prefix("burst");
    let spec = ScenarioSpec {
        topic: args.flags.topic(
            format!("{}-{suffix}", args.topic_prefix),
            args.bound,
            args.policy,
        ),
        group: "bench-burst".into(),
        phases: phases.clone(),
        consumer_rate,
        credit: args.credit,
        size: args.size,
        window: args.window,
        sample_every: Duration::from_millis(args.sample_ms),
        drain: Duration::from_secs(args.drain),
        broker_pid: args.flags.broker_pid,
        run_id: id,
    };
    let outcome = run_scenario(server, options, (spec, created), bar.clone()).await;
    bar.finish_and_clear();
    let outcome = outcome?;
    let report = burst_report(
        server,
        &args,
        id,
        baseline,
        probe,
        consumer_rate,
        &phases,
        outcome,
    );
    if let Some(path) = &args.csv {
        std::fs::write(path, series_csv(&report.series))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "weir bench burst: {} msg/s, ×{} for {} s ({}), bound {}, policy {}",
            baseline, args.burst_factor, args.burst, report.topic, args.bound, report.policy
        );
        let spans = [Span {
            from_ms: args.before * 1000,
            to_ms: (args.before + args.burst) * 1000,
            label: format!("burst ×{}", args.burst_factor),
        }];
        std::fs::write(path, series_svg(&report.series, &title, args.bound, &spans))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(super::exit_code(report.ok, &report.checks))
}

/// Runs the sustainable-rate probe: see the module documentation.
async fn probe(
    server: &str,
    options: &ClientOptions,
    created: &Created,
    args: &BurstArgs,
    id: u64,
    suffix: &str,
    show: bool,
) -> ProbeReport {
    let topic = format!("{}-probe-{suffix}", args.topic_prefix);
    let spec = ScenarioSpec {
        topic: args
            .flags
            .topic(topic.clone(), args.bound, OverflowPolicy::Reject),
        group: "bench-burst".into(),
        phases: vec![Phase {
            name: "probe",
            duration: Duration::from_secs(args.probe_secs),
            rate: None,
        }],
        consumer_rate: None,
        credit: args.credit,
        size: args.size,
        window: args.window,
        sample_every: Duration::from_millis(250),
        drain: Duration::from_secs(args.drain),
        broker_pid: None,
        run_id: id,
    };
    let bar = progress_bar(show, args.probe_secs, "s");
    bar.set_prefix("probe");
    let outcome = run_scenario(server, options, (spec, created), bar.clone()).await;
    bar.finish_and_clear();
    let end_ms = args.probe_secs * 1000;
    let warmup_ms = end_ms / 5;
    match outcome {
        Ok(o) => ProbeReport {
            topic,
            secs: args.probe_secs,
            confirmed_per_s: median_over(&o.series, warmup_ms, end_ms, |p| p.confirmed_per_s)
                .unwrap_or(0.0),
            delivered_per_s: median_over(&o.series, warmup_ms, end_ms, |p| p.delivered_per_s)
                .unwrap_or(0.0),
            refused: o.producer.total(|p| p.refused),
            fraction: args.probe_fraction,
            error: None,
        },
        Err(e) => ProbeReport {
            topic,
            secs: args.probe_secs,
            confirmed_per_s: 0.0,
            delivered_per_s: 0.0,
            refused: 0,
            fraction: args.probe_fraction,
            error: Some(format!("{e:#}")),
        },
    }
}

/// Publish→deliver p99 targets of DESIGN §7 (with the consumer at full speed).
const DELIVER_P99_STEADY_US: f64 = 2000.0;
const DELIVER_P99_BURST_US: f64 = 5000.0;
/// Recovery "within seconds".
const RECOVERY_TARGET_MS: u64 = 5000;

#[allow(clippy::too_many_arguments)]
fn burst_report(
    server: &str,
    args: &BurstArgs,
    id: u64,
    baseline: u64,
    probe: Option<ProbeReport>,
    consumer_per_s: Option<f64>,
    phases: &[Phase],
    o: ScenarioOutcome,
) -> BurstReport {
    let p = &o.producer;
    let mut start_s = 0;
    let mut phase_reports = Vec::new();
    for (i, ph) in phases.iter().enumerate() {
        let secs = ph.duration.as_secs();
        let (from_ms, to_ms) = (start_s * 1000, (start_s + secs) * 1000);
        let out = &p.phases[i];
        let depths: Vec<&SeriesPoint> = o
            .series
            .iter()
            .filter(|s| s.t_ms >= from_ms && s.t_ms < to_ms)
            .collect();
        let deliver = o
            .consumer
            .as_ref()
            .map_or_else(histogram, |c| c.deliver[i].clone());
        phase_reports.push(PhaseReport {
            name: ph.name,
            start_s,
            end_s: start_s + secs,
            target_per_s: ph.rate.unwrap_or(0.0),
            offered: out.offered,
            confirmed: out.confirmed,
            refused: out.refused,
            errors: out.errors,
            not_offered: out.not_offered,
            offered_per_s: per_s(out.offered, secs as f64),
            confirmed_per_s: per_s(out.confirmed, secs as f64),
            refused_per_s: per_s(out.refused, secs as f64),
            delivered_per_s: median_over(&o.series, from_ms, to_ms, |s| s.delivered_per_s),
            depth_max: depths.iter().map(|s| s.depth).max().unwrap_or(0),
            depth_median: median_over(&o.series, from_ms, to_ms, |s| s.depth as f64),
            confirm_latency: Latency::of(&out.confirm),
            refusal_latency: Latency::of(&out.refusal),
            deliver_latency: Latency::of(&deliver),
        });
        start_s += secs;
    }
    let burst_start_ms = args.before * 1000;
    let burst_end_ms = (args.before + args.burst) * 1000;
    let after_end_ms = burst_end_ms + args.after * 1000;
    let rec = recovery(
        &o.series,
        args.bound / 100,
        (burst_start_ms / 5).min(2000),
        burst_start_ms,
        burst_end_ms,
        after_end_ms,
    );
    let consumer_errors = o
        .consumer
        .as_ref()
        .map(|c| c.errors.clone())
        .unwrap_or_else(|| vec!["the consumer's results are missing".into()]);
    let errors = p.total(|x| x.errors);
    let lost = o.accounting.lost;
    let before = &phase_reports[0];
    let burst = &phase_reports[1];
    let mut checks = vec![
        Check {
            name: "lost == 0".into(),
            kind: if args.policy == OverflowPolicy::DropOldest {
                CheckKind::Behaviour
            } else {
                CheckKind::Correctness
            },
            ok: lost == 0 && o.accounting.complete,
            detail: format!(
                "{} confirmed: {} delivered, {} stored, {} evicted ({} notified by gaps), {} lost",
                o.accounting.confirmed,
                o.accounting.delivered,
                o.accounting.stored,
                o.accounting.evicted_notified + o.accounting.attributed_to_drops,
                o.accounting.evicted_notified,
                lost
            ),
        },
        Check {
            name: "no errors".into(),
            kind: CheckKind::Correctness,
            ok: errors == 0 && p.unresolved == 0 && consumer_errors.is_empty(),
            detail: format!(
                "{errors} publish errors, {} unresolved, {} consumer errors",
                p.unresolved,
                consumer_errors.len()
            ),
        },
        Check {
            name: "depth low at 1×".into(),
            kind: CheckKind::Behaviour,
            ok: before
                .depth_median
                .is_some_and(|d| d <= args.bound as f64 / 10.0),
            detail: format!(
                "median depth before the burst {} (bound {})",
                before
                    .depth_median
                    .map_or("n/a".into(), |d| format!("{d:.0}")),
                args.bound
            ),
        },
        Check {
            name: "no refusals at 1× before the burst".into(),
            kind: CheckKind::Behaviour,
            ok: before.refused == 0,
            detail: format!(
                "{} refused before, {} during, {} after the burst",
                before.refused, burst.refused, phase_reports[2].refused
            ),
        },
        Check {
            name: "recovered after the burst".into(),
            kind: CheckKind::Behaviour,
            ok: rec.recovered_after_ms.is_some(),
            detail: match rec.recovered_after_ms {
                Some(ms) => format!(
                    "depth back to ≤ {} within {:.2} s (peak {})",
                    rec.threshold,
                    ms as f64 / 1e3,
                    rec.peak_depth
                ),
                None => format!(
                    "depth still above {} at the end of the after phase (peak {})",
                    rec.threshold, rec.peak_depth
                ),
            },
        },
        Check {
            name: "recovered within 5 s".into(),
            kind: CheckKind::Target,
            ok: rec
                .recovered_after_ms
                .is_some_and(|ms| ms <= RECOVERY_TARGET_MS),
            detail: rec.recovered_after_ms.map_or("not recovered".into(), |ms| {
                format!("{:.2} s", ms as f64 / 1e3)
            }),
        },
        Check {
            name: format!("{}× offered in full", args.burst_factor),
            kind: CheckKind::Target,
            ok: burst.not_offered as f64 <= 0.01 * (burst.offered + burst.not_offered) as f64,
            detail: format!(
                "{:.0}/s offered of {:.0}/s ({} not sent: the window was full)",
                burst.offered_per_s, burst.target_per_s, burst.not_offered
            ),
        },
    ];
    if consumer_per_s.is_none() {
        checks.push(Check {
            name: "deliver p99 < 2 ms at 1×".into(),
            kind: CheckKind::Target,
            ok: before.deliver_latency.p99_us < DELIVER_P99_STEADY_US,
            detail: human_us(before.deliver_latency.p99_us),
        });
        checks.push(Check {
            name: "deliver p99 < 5 ms through the burst".into(),
            kind: CheckKind::Target,
            ok: burst.deliver_latency.p99_us < DELIVER_P99_BURST_US,
            detail: human_us(burst.deliver_latency.p99_us),
        });
    }
    let ok = checks.iter().all(|c| c.ok || c.kind == CheckKind::Target);
    let c = &o.config;
    BurstReport {
        scenario: "burst",
        server: server.to_owned(),
        run_id: format!("{id:016x}"),
        topic: o.topic.clone(),
        policy: c.overflow.as_str(),
        config: TopicConfigReport::from(c),
        baseline_mode: match args.baseline {
            Baseline::Auto => "auto",
            Baseline::Rate(_) => "given",
        },
        baseline_per_s: baseline,
        probe,
        burst_factor: args.burst_factor,
        burst_per_s: baseline as f64 * args.burst_factor,
        consumer_per_s,
        bound: args.bound,
        size: args.size,
        window: args.window,
        credit: args.credit,
        sample_ms: args.sample_ms,
        phases: phase_reports,
        recovery: rec,
        refusals: p.refusals.clone(),
        retry_after: p.retry_after.report(),
        unresolved: p.unresolved,
        first_error: p.first_error.clone(),
        lost,
        accounting: o.accounting.clone(),
        drained: o.drained,
        broker: o.broker.clone(),
        consumer_errors,
        warnings: o
            .warnings
            .iter()
            .cloned()
            .chain(o.sampler_error.iter().map(|e| format!("sampler: {e}")))
            .collect(),
        checks,
        ok,
        series: o.series,
    }
}

/// Columns of the depth sparkline.
const SPARK_WIDTH: usize = 72;

fn summary(r: &BurstReport) -> String {
    let mut s = format!(
        "weir bench burst {} topic={}: policy {}, bound {}, {}, window {}, credit {}\n",
        r.server,
        r.topic,
        r.policy,
        r.bound,
        format_size(r.size as u64),
        r.window,
        r.credit
    );
    match &r.probe {
        Some(p) => s.push_str(&format!(
            "baseline {} msg/s: {:.0}% of the probe's capacity ({} s: {:.0} confirmed/s, {:.0} delivered/s, {} refused)\n",
            r.baseline_per_s,
            p.fraction * 100.0,
            p.secs,
            p.confirmed_per_s,
            p.delivered_per_s,
            p.refused
        )),
        None => s.push_str(&format!("baseline {} msg/s (given)\n", r.baseline_per_s)),
    }
    s.push_str(&format!(
        "burst ×{} = {:.0} msg/s; consumer {}\n\n",
        r.burst_factor,
        r.burst_per_s,
        r.consumer_per_s
            .map_or("at full speed".into(), |c| format!("acks {c:.0} msg/s"))
    ));
    s.push_str(&format!(
        "{:<7}{:>9}{:>10}{:>11}{:>13}{:>9}{:>10}{:>15}   {:<33} {}\n",
        "phase",
        "time",
        "target/s",
        "offered/s",
        "confirmed/s",
        "refused",
        "not sent",
        "depth max/med",
        "confirm p50 / p99 / p99.9",
        "deliver p50 / p99 / p99.9"
    ));
    let lat = |l: &Latency| {
        if l.count == 0 {
            "-".to_string()
        } else {
            format!(
                "{} / {} / {}",
                human_us(l.p50_us),
                human_us(l.p99_us),
                human_us(l.p999_us)
            )
        }
    };
    for p in &r.phases {
        s.push_str(&format!(
            "{:<7}{:>9}{:>10.0}{:>11.0}{:>13.0}{:>9}{:>10}{:>15}   {:<33} {}\n",
            p.name,
            format!("{}–{} s", p.start_s, p.end_s),
            p.target_per_s,
            p.offered_per_s,
            p.confirmed_per_s,
            p.refused,
            p.not_offered,
            format!(
                "{}/{}",
                p.depth_max,
                p.depth_median.map_or("-".into(), |d| format!("{d:.0}"))
            ),
            lat(&p.confirm_latency),
            lat(&p.deliver_latency),
        ));
    }
    for p in &r.phases {
        if p.refusal_latency.count > 0 {
            s.push_str(&format!(
                "refusals {:<6} {}\n",
                p.name,
                p.refusal_latency.brief()
            ));
        }
    }
    let run: Vec<&SeriesPoint> = r.series.iter().filter(|p| p.phase != "drain").collect();
    if !run.is_empty() {
        let depths: Vec<u64> = run.iter().map(|p| p.depth).collect();
        let max = depths.iter().copied().max().unwrap_or(0);
        s.push_str(&format!(
            "\ndepth  {}  (max {max})\n",
            sparkline(&depths, SPARK_WIDTH)
        ));
        let mut marks: Vec<char> = vec![' '; depths.len().min(SPARK_WIDTH)];
        let first = |name: &str| run.iter().position(|p| p.phase == name);
        for name in ["burst", "after"] {
            if let Some(i) = first(name) {
                if let Some(m) = marks.get_mut(column_of(i, depths.len(), SPARK_WIDTH)) {
                    *m = '^';
                }
            }
        }
        s.push_str(&format!(
            "       {}  (^ burst starts, ^ burst ends)\n",
            marks.iter().collect::<String>()
        ));
    }
    s.push_str(&format!(
        "\nrecovery: {}\n",
        match r.recovery.recovered_after_ms {
            Some(ms) => format!(
                "depth back to ≤ {} (the highest at 1×: {}) {:.2} s after the burst; peak {}",
                r.recovery.threshold,
                r.recovery.baseline_depth,
                ms as f64 / 1e3,
                r.recovery.peak_depth
            ),
            None => format!(
                "NOT back to ≤ {} within the after phase (the highest at 1×: {}; peak {})",
                r.recovery.threshold, r.recovery.baseline_depth, r.recovery.peak_depth
            ),
        }
    ));
    for (reason, n) in &r.refusals {
        s.push_str(&format!("refused {reason}: {n}\n"));
    }
    if let Some(b) = &r.broker {
        s.push_str(&format!("{}\n", b.brief()));
    }
    for c in &r.checks {
        s.push_str(&format!("{}\n", c.line()));
    }
    for w in &r.warnings {
        s.push_str(&format!("warning: {w}\n"));
    }
    for e in r.consumer_errors.iter().take(3) {
        s.push_str(&format!("consumer error: {e}\n"));
    }
    if let Some(e) = &r.first_error {
        s.push_str(&format!("first publish error: {e}\n"));
    }
    s.push_str(if r.ok {
        "all correctness and behaviour checks passed\n"
    } else {
        "SOME CHECKS FAILED\n"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustainable_rate_is_a_round_share_of_the_slower_side() {
        assert_eq!(pick_sustainable(50_000.0, 48_000.0, 0.7), 33_000);
        assert_eq!(pick_sustainable(48_000.0, 0.0, 0.7), 33_000);
        assert_eq!(pick_sustainable(1_400.0, 2_000.0, 0.7), 980);
        assert_eq!(pick_sustainable(50.0, 60.0, 0.5), 25);
        assert_eq!(pick_sustainable(0.0, 0.0, 0.7), 1);
        assert_eq!(floor_2_digits(987_654.0), 980_000);
        assert_eq!(floor_2_digits(0.5), 0);
    }

    fn point(t_ms: u64, depth: u64) -> SeriesPoint {
        SeriesPoint {
            t_ms,
            phase: "x",
            depth,
            parked: 0,
            broker_rejected: 0,
            broker_dropped: 0,
            offered_per_s: 0.0,
            confirmed_per_s: 0.0,
            refused_per_s: 0.0,
            delivered_per_s: 0.0,
            confirmed_total: 0,
            delivered_total: 0,
        }
    }

    #[test]
    fn recovery_is_the_first_sample_back_at_the_baseline_level() {
        // Warm-up spike at 0 ignored; baseline max 40; burst 1000–3000 ms; after until 5000.
        let depths = [
            (0, 500),
            (500, 30),
            (750, 40),
            (1000, 200),
            (2000, 10_000),
            (3000, 10_000),
            (3500, 4000),
            (4000, 35),
            (4500, 50),
            (6000, 0),
        ];
        let s: Vec<_> = depths.iter().map(|&(t, d)| point(t, d)).collect();
        let r = recovery(&s, 0, 400, 1000, 3000, 5000);
        assert_eq!(r.baseline_depth, 40);
        assert_eq!(r.threshold, 40);
        assert_eq!(r.peak_depth, 10_000);
        assert_eq!(r.recovered_after_ms, Some(1000));
        // Never back within the after phase (the drain sample at 6000 does not count).
        let s: Vec<_> = depths
            .iter()
            .map(|&(t, d)| point(t, if (3000..5000).contains(&t) { 9000 } else { d }))
            .collect();
        assert_eq!(
            recovery(&s, 0, 400, 1000, 3000, 5000).recovered_after_ms,
            None
        );
        // A floor above the baseline counts 9000 as recovered at once.
        let r = recovery(&s, 9000, 400, 1000, 3000, 5000);
        assert_eq!((r.threshold, r.recovered_after_ms), (9000, Some(0)));
        // A before phase shorter than the warm-up still gives a baseline.
        assert_eq!(recovery(&s, 0, 5000, 1000, 3000, 5000).baseline_depth, 500);
    }

    #[test]
    fn baseline_and_capacity_parse() {
        assert_eq!("auto".parse::<Baseline>(), Ok(Baseline::Auto));
        assert_eq!("5000".parse::<Baseline>(), Ok(Baseline::Rate(5000)));
        assert!("0".parse::<Baseline>().is_err());
        assert_eq!("max".parse::<Capacity>(), Ok(Capacity::Max));
        assert_eq!("1.25".parse::<Capacity>(), Ok(Capacity::Factor(1.25)));
        assert!("-1".parse::<Capacity>().is_err());
    }
}
