//! `weir bench catch-up`: a subscriber that starts far behind. It publishes `--backlog`
//! messages (2 000 000 of 1 KiB by default) into a fresh topic bounded to hold exactly them,
//! with no subscriber; optionally drops the page cache (`--drop-caches`, root only: reported,
//! never fatal), so the backlog is read from the disk; then starts one subscriber at the
//! earliest message with a large credit window and measures its read rate (msg/s, MB/s) until
//! it has consumed the whole backlog. With `--broker-pid` it samples the broker's RSS every
//! 100 ms during the catch-up and reports it at the start, its peak and at the end — flat when
//! the broker streams the backlog from its segments instead of holding it — and the broker's
//! CPU. With `--disk-dir` it also measures the sequential read rate of the disk there (the
//! same code as `weir bench disk`), the ceiling to compare the catch-up rate with.
//!
//! Bounded: the topic holds at most `--backlog` messages; the publisher's window and the
//! subscriber's credit bound what is in flight; the set of sequence numbers seen is a bitmap
//! (one bit per message); the whole run stops at `--timeout`. The topic is removed at the end
//! unless `--keep`, also on Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use weir_client::{ClientOptions, FsyncPolicy, GroupSpec, StartPosition, TopicSpec};

use super::cleanup::Created;
use super::common::{
    connect, drop_caches, now_ns, peak_rss, per_s, progress_bar, progress_enabled, read_proc,
    run_id, stamp, BrokerUsage, SeqSet, STAMP_BYTES,
};
use super::disk::{sequential_read, SequentialRead};
use super::run::{publisher, PubSpec};
use super::{exit_code, Check, CheckKind};
use crate::size::{format_size, parse_size, parse_size_usize};

/// How often the broker's RSS is sampled during the catch-up.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// How long the subscriber waits for the broker to confirm its unsubscribe at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The group the subscriber reads in.
const GROUP: &str = "catch-up";

/// Arguments of `weir bench catch-up`.
#[derive(Debug, Args)]
pub struct CatchUpArgs {
    /// Messages published before the subscriber starts (the topic is bounded to hold exactly
    /// them).
    #[arg(long, default_value_t = 2_000_000)]
    pub backlog: u64,
    /// Payload size in bytes or with a unit (4KiB) (at least 16: the stamp).
    #[arg(long, value_name = "SIZE", default_value = "1024", value_parser = parse_size_usize)]
    pub size: usize,
    /// The publisher's window of unconfirmed publishes while filling the backlog.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// The subscriber's credit (at most the broker's max_credit: lowered to it).
    #[arg(long, default_value_t = 8192)]
    pub credit: u32,
    /// fsync policy of the topic (batch, interval:MS, never).
    #[arg(long)]
    pub fsync: Option<FsyncPolicy>,
    /// Drop the page cache before the subscriber starts, so the backlog comes from the disk
    /// (writes /proc/sys/vm/drop_caches: root only; whether it worked is reported, never fatal).
    #[arg(long)]
    pub drop_caches: bool,
    /// Also measure the sequential read rate of the disk under this directory (put it where
    /// the broker's data directory is), after the catch-up: a scratch file of --disk-bytes,
    /// read cold with --drop-caches.
    #[arg(long)]
    pub disk_dir: Option<PathBuf>,
    /// Size of that scratch file: bytes or with a unit.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub disk_bytes: u64,
    /// The broker's process id, to sample its RSS and CPU during the catch-up (from /proc: the
    /// broker must run on this machine).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Stop after this many seconds whatever is left (filling and catching up together).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Filling the backlog.
#[derive(Debug, Serialize)]
struct FillReport {
    sent: u64,
    confirmed: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed_s: f64,
    msgs_per_s: f64,
    mb_per_s: f64,
}

/// The page cache dropped (or not) before the catch-up.
#[derive(Debug, Serialize)]
struct DropCachesReport {
    requested: bool,
    done: bool,
    error: Option<String>,
}

/// Reading the backlog.
#[derive(Debug, Serialize)]
struct CatchUpReport {
    credit: u32,
    /// Distinct messages of the backlog delivered (and acked).
    delivered: u64,
    /// Deliveries past the first of a message (redeliveries).
    redelivered: u64,
    /// From the subscribe to the first delivery, ms.
    first_delivery_ms: Option<f64>,
    /// From the subscribe to the last message of the backlog.
    elapsed_s: f64,
    msgs_per_s: f64,
    mb_per_s: f64,
    /// The broker's CPU per message read, microseconds (`--broker-pid`).
    broker_us_per_msg: Option<f64>,
    error: Option<String>,
}

/// The broker's RSS during the catch-up, KiB.
#[derive(Debug, Serialize)]
struct RssReport {
    /// Before the backlog was published.
    before_fill_kib: Option<u64>,
    /// When the subscriber started.
    start_kib: Option<u64>,
    /// The highest reading, every 100 ms, during the catch-up.
    peak_kib: Option<u64>,
    /// When it had consumed the backlog.
    end_kib: Option<u64>,
    /// Peak less start: what the catch-up added.
    peak_growth_kib: Option<i64>,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    server: String,
    topic: String,
    backlog: u64,
    size: usize,
    timed_out: bool,
    fill: FillReport,
    drop_caches: DropCachesReport,
    catch_up: CatchUpReport,
    rss: Option<RssReport>,
    /// The broker's CPU during the catch-up (per message: per message read).
    broker: Option<BrokerUsage>,
    /// The disk's sequential read rate (`--disk-dir`).
    disk: Option<SequentialRead>,
    disk_error: Option<String>,
    /// Catch-up MB/s over the disk's sequential read MB/s.
    read_vs_disk: Option<f64>,
    checks: Vec<Check>,
}

/// Runs the scenario; the topic it creates is recorded in `created`. Stops (an error,
/// `interrupted`) when `interrupt` turns true.
pub async fn run(
    server: &str,
    options: &ClientOptions,
    args: CatchUpArgs,
    created: &Created,
    mut interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.size >= STAMP_BYTES,
        "--size must be at least {STAMP_BYTES} bytes (the latency stamp)"
    );
    anyhow::ensure!(args.backlog >= 1, "--backlog must be at least 1");
    anyhow::ensure!(
        args.window >= 1 && args.credit >= 1,
        "--window and --credit must be at least 1"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let topic = Created::fresh_name("bench-catchup");
    let admin = connect(server, options).await?;
    created.add(&topic)?;
    admin
        .create_topic(TopicSpec {
            name: topic.clone(),
            max_messages: Some(args.backlog),
            max_bytes: Some(args.backlog.saturating_mul(args.size as u64)),
            max_message_bytes: Some(u32::try_from(args.size)?),
            fsync: args.fsync,
            ..TopicSpec::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating {topic} to hold the backlog: {e}"))?;
    let run_id = run_id();
    now_ns();
    let before_fill = args.broker_pid.and_then(|pid| read_proc(pid).ok());

    // 1. The backlog, with nobody reading.
    let (stop_tx, stop_rx) = watch::channel(false);
    let answered = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(progress_enabled(args.json), args.backlog, "msgs");
    bar.set_prefix("fill");
    let filling = tokio::spawn(publisher(
        connect(server, options).await?,
        PubSpec {
            topic: topic.clone(),
            n: args.backlog,
            until: None,
            template: vec![0x5a; args.size - STAMP_BYTES],
            window: args.window,
            run_id,
            rate: None,
            keys: Default::default(),
        },
        answered.clone(),
        stop_rx,
    ));
    let fill_started = now_ns();
    let mut timed_out = false;
    let mut every = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(filling);
    let fill = loop {
        tokio::select! {
            result = &mut filling => break result?,
            _ = every.tick() => bar.set_position(answered.load(Ordering::Relaxed)),
            () = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                let _ = stop_tx.send(true);
            }
            _ = interrupt.wait_for(|s| *s) => {
                let _ = stop_tx.send(true);
                let _ = (&mut filling).await;
                bar.finish_and_clear();
                anyhow::bail!("interrupted");
            }
        }
    };
    bar.finish_and_clear();
    let fill_s = fill.last_confirm_ns.saturating_sub(fill_started) as f64 / 1e9;
    let fill_report = FillReport {
        sent: fill.sent,
        confirmed: fill.confirmed,
        refused: fill.refusals.values().sum(),
        errors: fill.errors,
        first_error: fill.first_error.clone().or_else(|| {
            fill.refusals
                .iter()
                .next()
                .map(|(reason, n)| format!("{n} refused: {reason}"))
        }),
        elapsed_s: fill_s,
        msgs_per_s: per_s(fill.confirmed, fill_s),
        mb_per_s: per_s(fill.confirmed, fill_s) * args.size as f64 / 1e6,
    };

    // 2. A cold cache, if asked and allowed.
    let drop_report = if args.drop_caches {
        let outcome = tokio::task::spawn_blocking(drop_caches).await?;
        DropCachesReport {
            requested: true,
            done: outcome.is_ok(),
            error: outcome.err(),
        }
    } else {
        DropCachesReport {
            requested: false,
            done: false,
            error: None,
        }
    };

    // 3. One subscriber from the earliest message, until it has the whole backlog.
    let mut broker = args.broker_pid.map(BrokerUsage::start);
    let (stop_rss, rss_rx) = watch::channel(false);
    let sampler = args
        .broker_pid
        .map(|pid| tokio::spawn(peak_rss(pid, RSS_EVERY, rss_rx)));
    let client = connect(server, options).await?;
    let credit = args.credit.min(client.limits().max_credit.max(1));
    let bar = progress_bar(progress_enabled(args.json), fill.confirmed, "msgs");
    bar.set_prefix("catch-up");
    let started = Instant::now();
    let mut reading = Reading {
        seen: SeqSet::new(0),
        redelivered: 0,
        first: None,
        last: None,
        error: None,
    };
    if !timed_out {
        tokio::select! {
            outcome = read_backlog(&client, &topic, credit, fill.confirmed, run_id, (started, &mut reading, &bar)) => {
                if let Err(e) = outcome {
                    reading.error.get_or_insert(format!("{e:#}"));
                }
            }
            () = tokio::time::sleep_until(deadline) => timed_out = true,
            _ = interrupt.wait_for(|s| *s) => {
                bar.finish_and_clear();
                anyhow::bail!("interrupted");
            }
        }
    }
    bar.finish_and_clear();
    let _ = stop_rss.send(true);
    let peak = match sampler {
        Some(task) => task.await.ok().flatten(),
        None => None,
    };
    let delivered = reading.seen.len();
    if let Some(b) = broker.as_mut() {
        b.finish(delivered);
    }
    // Per message read, not offered: reported as such below.
    let broker_us_per_msg = broker.as_mut().and_then(|b| b.cpu_us_per_offered.take());
    let read_s = reading.last.map_or(0.0, |d| d.as_secs_f64());
    let catch_up = CatchUpReport {
        credit,
        delivered,
        redelivered: reading.redelivered,
        first_delivery_ms: reading.first.map(|d| d.as_secs_f64() * 1e3),
        elapsed_s: read_s,
        msgs_per_s: per_s(delivered, read_s),
        mb_per_s: per_s(delivered, read_s) * args.size as f64 / 1e6,
        broker_us_per_msg,
        error: reading.error,
    };
    let rss = broker.as_ref().map(|b| {
        let start = b.before.map(|r| r.rss_kib);
        RssReport {
            before_fill_kib: before_fill.map(|r| r.rss_kib),
            start_kib: start,
            peak_kib: peak,
            end_kib: b.after.map(|r| r.rss_kib),
            peak_growth_kib: peak.zip(start).map(|(p, s)| p as i64 - s as i64),
        }
    });

    // 4. The disk's own sequential read rate, after the catch-up so it does not disturb it.
    let (disk, disk_error) = match &args.disk_dir {
        None => (None, None),
        Some(dir) => {
            let stop = Arc::new(AtomicBool::new(false));
            let mut measuring = tokio::task::spawn_blocking({
                let (dir, stop) = (dir.clone(), stop.clone());
                let (total, cold) = (args.disk_bytes, args.drop_caches);
                move || sequential_read(&dir, total, cold, &stop)
            });
            tokio::select! {
                outcome = &mut measuring => match outcome? {
                    Ok(d) => (Some(d), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                },
                _ = interrupt.wait_for(|s| *s) => {
                    // Its scratch file is deleted before it returns.
                    stop.store(true, Ordering::Relaxed);
                    let _ = measuring.await;
                    anyhow::bail!("interrupted");
                }
            }
        }
    };
    let read_vs_disk = disk
        .as_ref()
        .filter(|d| d.read_mb_per_s > 0.0)
        .map(|d| catch_up.mb_per_s / d.read_mb_per_s);

    let checks = checks(args.backlog, &fill_report, &catch_up);
    let complete = !timed_out && checks.iter().all(|c| c.ok);
    let report = Report {
        scenario: "catch-up",
        server: server.to_owned(),
        topic,
        backlog: args.backlog,
        size: args.size,
        timed_out,
        fill: fill_report,
        drop_caches: drop_report,
        catch_up,
        rss,
        broker,
        disk,
        disk_error,
        read_vs_disk,
        checks,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(exit_code(complete, &report.checks))
}

/// What the subscriber has read so far.
struct Reading {
    /// Sequence numbers of this run's messages delivered (a bitmap, one bit per message).
    seen: SeqSet,
    redelivered: u64,
    /// Since the subscribe: the first delivery, the last new message.
    first: Option<Duration>,
    last: Option<Duration>,
    error: Option<String>,
}

/// Subscribes from the earliest message and reads (acking each) until `want` distinct
/// messages of run `run_id` are in; `r` holds what was read when it returns or is dropped.
async fn read_backlog(
    client: &weir_client::Client,
    topic: &str,
    credit: u32,
    want: u64,
    run_id: u64,
    (started, r, bar): (Instant, &mut Reading, &indicatif::ProgressBar),
) -> anyhow::Result<()> {
    let spec = GroupSpec {
        start: StartPosition::Earliest,
        ..GroupSpec::default()
    };
    let mut sub = client.subscribe_with(topic, GROUP, credit, spec).await?;
    while r.seen.len() < want {
        let Some(item) = sub.next().await else {
            anyhow::bail!("the subscription ended after {} messages", r.seen.len());
        };
        let d = item?;
        r.first.get_or_insert_with(|| started.elapsed());
        if matches!(stamp(d.payload()), Some((_, run)) if run == run_id) {
            if r.seen.insert(d.seq()) {
                r.last = Some(started.elapsed());
                if r.seen.len() % 4096 == 0 {
                    bar.set_position(r.seen.len());
                }
            } else {
                r.redelivered += 1;
            }
        }
        d.ack();
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, sub.close()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => anyhow::bail!("closing: {e}"),
        Err(_) => anyhow::bail!("closing: no Unsubscribed within {CLOSE_TIMEOUT:?}"),
    }
}

/// Everything published was stored, and everything stored was read back, once each.
fn checks(backlog: u64, fill: &FillReport, read: &CatchUpReport) -> Vec<Check> {
    vec![
        Check {
            name: "backlog stored".into(),
            kind: CheckKind::Correctness,
            ok: fill.confirmed == backlog && fill.refused + fill.errors == 0,
            detail: format!(
                "{} of {backlog} confirmed, {} refused, {} errors{}",
                fill.confirmed,
                fill.refused,
                fill.errors,
                fill.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
        },
        Check {
            name: "backlog read".into(),
            kind: CheckKind::Correctness,
            ok: read.delivered == fill.confirmed && read.error.is_none(),
            detail: format!(
                "{} of {} delivered ({} redelivered){}",
                read.delivered,
                fill.confirmed,
                read.redelivered,
                read.error
                    .as_ref()
                    .map(|e| format!("; {e}"))
                    .unwrap_or_default()
            ),
        },
    ]
}

/// The report as text.
fn summary(r: &Report) -> String {
    let kib = |k: Option<u64>| k.map_or("?".into(), |k| format_size(k * 1024));
    let mut s = format!(
        "weir bench catch-up {} topic={}: a backlog of {} × {}\n",
        r.server,
        r.topic,
        r.backlog,
        format_size(r.size as u64)
    );
    let f = &r.fill;
    s.push_str(&format!(
        "fill      {} confirmed in {:.1} s  →  {:.0} msg/s  {:.1} MB/s\n",
        f.confirmed, f.elapsed_s, f.msgs_per_s, f.mb_per_s
    ));
    if r.drop_caches.requested {
        s.push_str(&match &r.drop_caches.error {
            None => "cache     page cache dropped\n".to_string(),
            Some(e) => format!("cache     not dropped: {e}\n"),
        });
    }
    let c = &r.catch_up;
    s.push_str(&format!(
        "catch-up  {} read in {:.1} s (credit {}, first after {})  →  {:.0} msg/s  {:.1} MB/s\n",
        c.delivered,
        c.elapsed_s,
        c.credit,
        c.first_delivery_ms
            .map_or("-".into(), |ms| format!("{ms:.1} ms")),
        c.msgs_per_s,
        c.mb_per_s
    ));
    if let Some(rss) = &r.rss {
        s.push_str(&format!(
            "rss       before fill {}, start {}, peak {}, end {}\n",
            kib(rss.before_fill_kib),
            kib(rss.start_kib),
            kib(rss.peak_kib),
            kib(rss.end_kib)
        ));
    }
    if let Some(b) = &r.broker {
        s.push_str(&format!("          {}", b.brief()));
        if let Some(us) = c.broker_us_per_msg {
            s.push_str(&format!(", {us:.1} µs per message read"));
        }
        s.push('\n');
    }
    if let Some(d) = &r.disk {
        s.push_str(&format!(
            "disk      {} read in order at {:.1} MB/s ({}){}\n",
            d.dir.display(),
            d.read_mb_per_s,
            if d.cache_dropped {
                "cold"
            } else {
                "page cache not dropped"
            },
            r.read_vs_disk
                .map(|x| format!(": the catch-up read at {:.0} % of it", x * 100.0))
                .unwrap_or_default()
        ));
    }
    if let Some(e) = &r.disk_error {
        s.push_str(&format!("disk      {e}\n"));
    }
    for check in &r.checks {
        s.push_str(&check.line());
        s.push('\n');
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
    fn checks_want_every_message_stored_and_read_once() {
        let fill = |confirmed, refused| FillReport {
            sent: confirmed + refused,
            confirmed,
            refused,
            errors: 0,
            first_error: None,
            elapsed_s: 1.0,
            msgs_per_s: 0.0,
            mb_per_s: 0.0,
        };
        let read = |delivered| CatchUpReport {
            credit: 1,
            delivered,
            redelivered: 0,
            first_delivery_ms: None,
            elapsed_s: 1.0,
            msgs_per_s: 0.0,
            mb_per_s: 0.0,
            broker_us_per_msg: None,
            error: None,
        };
        assert!(checks(10, &fill(10, 0), &read(10)).iter().all(|c| c.ok));
        assert!(!checks(10, &fill(9, 1), &read(9))[0].ok);
        assert!(!checks(10, &fill(10, 0), &read(9))[1].ok);
    }
}
