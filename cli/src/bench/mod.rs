//! `weir bench`: load against a running broker.
//!
//! - `weir bench [flags]`: the throughput run — publishers and subscribers, `--msgs` or
//!   `--duration`, optional `--rate`; msg/s, MB/s, publish→confirm and publish→deliver
//!   percentiles ([`mod@run`]).
//! - `weir bench overload`: an unpaced producer against a bounded topic and a slow consumer,
//!   per overflow policy; offered / confirmed / refused / dropped / lost, refusal latency, broker
//!   RSS, and whether the producer was paced, refused or saw drops ([`overload`]).
//! - `weir bench burst`: 1× → `--burst-factor`× → 1× the sustainable rate; depth over time,
//!   latency per phase, recovery ([`burst`]).
//! - `weir bench noisy-neighbour`: a healthy tenant at a steady rate beside one offender (or
//!   each in turn): its latency, refusals and published == consumed beside the offender's own
//!   outcome and the broker's peak RSS ([`noisy`], [`offenders`]).
//! - `weir bench catch-up`: one subscriber starting a large backlog behind (optionally with a
//!   cold page cache): its read rate, the broker's RSS during it, and the disk's sequential read
//!   rate ([`catchup`]).
//! - `weir bench disk`: synced writes and the sequential read rate of a directory's disk
//!   ([`disk`]).
//! - The throughput run's `--topics N` spreads it over topics; `--idle-connections N` holds
//!   idle connections beside it ([`idle`]).
//!
//! Every scenario is bounded in time and memory: see [`load`] and [`scenario`]. Results print
//! as a human summary or, with `--json`, as one JSON document on stdout; a progress bar goes to
//! stderr when stdout is a terminal and `--json` is not given. Exit status: 0 when everything
//! checked passed and every performance target was met, 1 when a run was incomplete, a check
//! failed (`[FAIL]`), a target was missed (`[MISSED]`), or on errors.
//!
//! Every run works on topics of its own, fresh names per run (the throughput run's `--topic`
//! names one instead), and removes the topics it created when it ends — also on an error,
//! Ctrl-C or SIGTERM — unless `--keep` ([`cleanup`]).

mod accounting;
mod burst;
mod catchup;
mod cleanup;
mod common;
mod disk;
mod honour;
mod idle;
mod load;
mod noisy;
mod offenders;
mod overload;
mod plot;
mod run;
mod scenario;

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tokio::sync::watch;
use weir_client::{ClientOptions, FsyncPolicy, GroupOrdering};

/// How subscribers share the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupMode {
    /// Every subscriber in its own group: each sees every message.
    Fanout,
    /// All subscribers in one group: they share the messages.
    Shared,
}

/// Arguments of `weir bench`: the throughput run's flags, or a scenario.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// A scenario instead of the throughput run.
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    /// The topic (created if missing, with the --max-* bounds given). Default: a fresh topic
    /// per run, `bench-<pid>-<random>`.
    #[arg(long)]
    pub topic: Option<String>,
    /// Spread the run over this many fresh topics (at most 32), each with --pubs publishers
    /// and --subs subscribers of its own; not with --topic.
    #[arg(long, default_value_t = 1, conflicts_with = "topic")]
    pub topics: usize,
    /// Publishers per topic, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub pubs: usize,
    /// Subscribers per topic, each on its own connection (with --group-mode fanout, each in a
    /// group of its own: fan-out to this many groups).
    #[arg(long, default_value_t = 1)]
    pub subs: usize,
    /// Open this many more connections before the run and hold them idle through it (a ping
    /// each every third of the broker's idle_timeout); the run fails at once if the broker or
    /// the OS refuses one.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// Messages to publish in total (split between publishers).
    #[arg(long, default_value_t = 100_000)]
    pub msgs: u64,
    /// Publish for this many seconds instead of a number of messages.
    #[arg(long, conflicts_with = "msgs")]
    pub duration: Option<u64>,
    /// Payload size in bytes or with a unit (4KiB, 1MB) (at least 16: the stamp).
    #[arg(long, value_name = "SIZE", default_value = "1024", value_parser = crate::size::parse_size_usize)]
    pub size: usize,
    /// Each publisher's window of unconfirmed publishes.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Each subscriber's window (credit).
    #[arg(long, default_value_t = 256)]
    pub credit: u32,
    /// fanout: one group per subscriber; shared: one group for all.
    #[arg(long, value_enum, default_value_t = GroupMode::Shared)]
    pub group_mode: GroupMode,
    /// Group name (prefix, in fan-out mode).
    #[arg(long, default_value = "bench")]
    pub group: String,
    /// The ordering of the groups the run creates: shared, or key (each weir-key's messages
    /// to one member at a time, in order), to compare key-ordered throughput with a plain
    /// group's. A group that exists already keeps its own.
    #[arg(long, value_name = "shared|key", default_value = "shared")]
    pub ordering: GroupOrdering,
    /// Publish each message with a weir-key header, cycling over this many distinct keys
    /// (1 to 65 536). Default: 64 with --ordering key, no header otherwise.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub keys: Option<u32>,
    /// Total publish rate in msg/s (default: as fast as the windows allow).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Stop after this many seconds whatever is left (at least --duration + 10 s).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the topics the run created instead of deleting them at its end (their names go to
    /// stderr).
    #[arg(long, global = true)]
    pub keep: bool,
    /// max_messages of the topic when the bench creates it.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// max_bytes of the topic when the bench creates it: bytes or with a unit (10MiB, 1GB).
    #[arg(long, value_name = "SIZE", value_parser = crate::size::parse_size)]
    pub max_bytes: Option<u64>,
    /// fsync policy of the topic when the bench creates it (batch, interval:MS, never).
    #[arg(long)]
    pub fsync: Option<FsyncPolicy>,
    /// The broker's process id, to report its CPU per message and cores used (read from
    /// /proc, so the broker must run on this machine). The CLI's own CPU is always reported.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// A producer publishing as fast as it can into a bounded topic while one consumer acks at a
    /// fixed slow rate, once per overflow policy: offered, confirmed, refused, dropped, lost,
    /// refusal latency, broker RSS, and a verdict (paced / refused / dropped visibly).
    Overload(Box<overload::OverloadArgs>),
    /// The sustainable rate, then a burst of a multiple of it, then the rate again: depth over
    /// time, latency percentiles per phase, refusals, and the time to recover.
    Burst(Box<burst::BurstArgs>),
    /// A healthy tenant at a steady rate beside one offender (slowloris, non-reader,
    /// header-bomb, flood, idle-swarm; or none, or all in turn): its latency, refusals and
    /// published == consumed, what the offender was answered, broker peak RSS.
    NoisyNeighbour(Box<noisy::NoisyArgs>),
    /// The disk under a directory, no broker involved: synced writes of one batch size (a
    /// write and an fdatasync, as a commit under `fsync = "batch"`) per second and in MB/s,
    /// their latency, and the sequential read rate — the ceiling for a data directory there.
    Disk(Box<disk::DiskArgs>),
    /// One subscriber starting --backlog messages (2 000 000) behind, optionally with a cold
    /// page cache: its read rate until it has them all, the broker's RSS at its start, peak and
    /// end (--broker-pid), and the disk's sequential read rate to compare with (--disk-dir).
    CatchUp(Box<catchup::CatchUpArgs>),
}

/// Runs `weir bench`: the throughput run or a scenario, stopped early by Ctrl-C or SIGTERM
/// (an error, exit 1); then the topics it created are deleted unless `--keep`.
pub async fn run(
    server: &str,
    options: &ClientOptions,
    args: BenchArgs,
) -> anyhow::Result<ExitCode> {
    let created = cleanup::Created::new(args.keep);
    // Listening from the start, so a signal during set-up is caught too (not the default
    // action, which would leave the topics behind).
    let (interrupt_tx, interrupt) = watch::channel(false);
    let signalled = crate::signal::interrupted();
    let listener = tokio::spawn(async move {
        signalled.await;
        let _ = interrupt_tx.send(true);
    });
    let outcome = match args.scenario {
        // These stop by themselves on the signal, settling what they started first.
        None => run::run(server, options, args, &created, interrupt).await,
        Some(Scenario::Disk(a)) => disk::run(*a, interrupt).await,
        Some(Scenario::CatchUp(a)) => catchup::run(server, options, *a, &created, interrupt).await,
        Some(Scenario::Overload(a)) => {
            until_interrupted(overload::run(server, options, *a, &created), interrupt).await
        }
        Some(Scenario::Burst(a)) => {
            until_interrupted(burst::run(server, options, *a, &created), interrupt).await
        }
        Some(Scenario::NoisyNeighbour(a)) => {
            until_interrupted(noisy::run(server, options, *a, &created), interrupt).await
        }
    };
    listener.abort();
    match created.remove_all(server, options).await {
        Ok(kept) if !kept.is_empty() => {
            eprintln!("weir: kept topics (--keep): {}", kept.join(", "))
        }
        Ok(_) => {}
        Err(e) => eprintln!("weir: cleanup: {e:#}"),
    }
    outcome
}

/// Runs `bench` until it ends or `interrupt` turns true (then it is dropped: `interrupted`).
async fn until_interrupted(
    bench: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
    mut interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    tokio::select! {
        outcome = bench => outcome,
        _ = interrupt.wait_for(|stop| *stop) => Err(anyhow::anyhow!("interrupted")),
    }
}

/// The exit code of a run whose checks are `checks` (and that was `complete`): 0 when it was
/// complete and every check passed, targets included; else 1.
pub fn exit_code<'a>(complete: bool, checks: impl IntoIterator<Item = &'a Check>) -> ExitCode {
    let passed = complete && checks.into_iter().all(|c| c.ok);
    crate::exit::exit(if passed {
        crate::exit::DONE
    } else {
        crate::exit::ERROR
    })
}

/// What a check is about: a correctness property (nothing lost, no errors), a behaviour the
/// scenario exists to show (paced, refused, recovered), or a performance target (reported only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Correctness,
    Behaviour,
    Target,
}

/// One checked claim of a scenario report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    /// `[ok] name — detail`, with `FAIL` (or `MISSED` for a target) when not ok.
    pub fn line(&self) -> String {
        let mark = match (self.ok, self.kind) {
            (true, _) => "ok",
            (false, CheckKind::Target) => "MISSED",
            (false, _) => "FAIL",
        };
        format!("[{mark}] {} — {}", self.name, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Bench(BenchArgs),
    }

    fn bench(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut all = vec!["weir", "bench"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| match c.command {
            Top::Bench(b) => b,
        })
    }

    #[test]
    fn definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_throughput_run_keeps_its_flags() {
        let b = bench(&["--pubs", "2", "--msgs", "500", "--json"]).unwrap();
        assert!(b.scenario.is_none() && b.pubs == 2 && b.msgs == 500 && b.json);
        let b = bench(&["--duration", "5"]).unwrap();
        assert_eq!(b.duration, Some(5));
        assert!(
            b.topic.is_none() && !b.keep,
            "a fresh topic per run, removed"
        );
        let b = bench(&[
            "--topic",
            "mine",
            "--keep",
            "--max-bytes",
            "10MiB",
            "--size",
            "4KiB",
        ])
        .unwrap();
        assert_eq!(b.topic.as_deref(), Some("mine"));
        assert!(b.keep);
        assert_eq!((b.max_bytes, b.size), (Some(10 << 20), 4096));
        assert!(bench(&["--max-bytes", "10XB"]).is_err());
        assert!(
            bench(&["overload", "--keep"]).unwrap().keep,
            "--keep goes with every scenario"
        );
        assert!(bench(&["--duration", "5", "--msgs", "10"]).is_err());
    }

    #[test]
    fn overload_parses_with_its_defaults() {
        let b = bench(&["overload", "--policy", "reject", "--duration", "3"]).unwrap();
        match b.scenario {
            Some(Scenario::Overload(o)) => {
                assert_eq!(o.policy, overload::PolicyChoice::Reject);
                assert_eq!(
                    (o.duration, o.bound, o.consumer_rate, o.size, o.window),
                    (3, 10_000, 1000, 1024, 256)
                );
                assert_eq!(o.flags.max_block_ms, None);
            }
            other => panic!("{other:?}"),
        }
        let b = bench(&["overload", "--policy", "drop_oldest", "--broker-pid", "42"]).unwrap();
        assert!(matches!(b.scenario, Some(Scenario::Overload(ref o))
            if o.policy == overload::PolicyChoice::DropOldest && o.flags.broker_pid == Some(42)));
        assert!(
            bench(&["--pubs", "2", "overload"]).is_err(),
            "throughput flags do not mix with a scenario"
        );
    }

    #[test]
    fn burst_parses_baseline_and_capacity() {
        let b = bench(&["burst"]).unwrap();
        match b.scenario {
            Some(Scenario::Burst(a)) => {
                assert_eq!(a.baseline, burst::Baseline::Auto);
                assert_eq!(a.consumer_capacity, burst::Capacity::Factor(1.25));
                assert_eq!((a.before, a.burst, a.after, a.sample_ms), (10, 30, 20, 250));
                assert_eq!(a.policy, weir_client::OverflowPolicy::Reject);
            }
            other => panic!("{other:?}"),
        }
        let b = bench(&[
            "burst",
            "--baseline",
            "5000",
            "--consumer-capacity",
            "max",
            "--policy",
            "block",
            "--csv",
            "/tmp/x.csv",
        ])
        .unwrap();
        assert!(matches!(b.scenario, Some(Scenario::Burst(ref a))
            if a.baseline == burst::Baseline::Rate(5000) && a.consumer_capacity == burst::Capacity::Max));
        assert!(bench(&["burst", "--baseline", "fast"]).is_err());
    }

    #[test]
    fn noisy_neighbour_parses_with_its_defaults() {
        let b = bench(&["noisy-neighbour"]).unwrap();
        match b.scenario {
            Some(Scenario::NoisyNeighbour(a)) => {
                assert_eq!(a.offender, offenders::Offender::All);
                assert_eq!(a.duration, std::time::Duration::from_secs(20));
                assert_eq!((a.rate, a.size, a.window, a.credit), (2000, 1024, 256, 256));
                assert_eq!((a.slowloris_conns, a.swarm_conns), (70, 1000));
                assert_eq!(a.swarm_sources.len(), 4);
                assert_eq!(a.flood_overflow, weir_client::OverflowPolicy::DropOldest);
            }
            other => panic!("{other:?}"),
        }
        let b = bench(&[
            "noisy-neighbour",
            "--offender",
            "header-bomb",
            "--duration",
            "2s",
            "--broker-pid",
            "7",
            "--json",
        ])
        .unwrap();
        assert!(matches!(b.scenario, Some(Scenario::NoisyNeighbour(ref a))
            if a.offender == offenders::Offender::HeaderBomb
                && a.duration == std::time::Duration::from_secs(2)
                && a.broker_pid == Some(7) && a.json));
        assert!(bench(&["noisy-neighbour", "--offender", "rude"]).is_err());
    }

    #[test]
    fn scaling_flags_and_catch_up_parse_with_their_defaults() {
        let b = bench(&["--topics", "8", "--pubs", "8", "--idle-connections", "5000"]).unwrap();
        assert_eq!((b.topics, b.pubs, b.idle_connections), (8, 8, 5000));
        let b = bench(&[]).unwrap();
        assert_eq!((b.topics, b.idle_connections), (1, 0));
        assert!(
            bench(&["--topics", "2", "--topic", "mine"]).is_err(),
            "--topics makes fresh topics: not with --topic"
        );
        match bench(&["catch-up"]).unwrap().scenario {
            Some(Scenario::CatchUp(a)) => {
                assert_eq!((a.backlog, a.size, a.window), (2_000_000, 1024, 256));
                assert!(!a.drop_caches && a.disk_dir.is_none() && a.broker_pid.is_none());
                assert_eq!(a.disk_bytes, 1 << 30);
            }
            other => panic!("{other:?}"),
        }
        let b = bench(&[
            "catch-up",
            "--backlog",
            "2000",
            "--size",
            "4KiB",
            "--drop-caches",
            "--disk-dir",
            "/data",
            "--broker-pid",
            "9",
            "--keep",
        ])
        .unwrap();
        assert!(b.keep);
        assert!(matches!(b.scenario, Some(Scenario::CatchUp(ref a))
            if a.backlog == 2000 && a.size == 4096 && a.drop_caches
                && a.disk_dir.as_deref() == Some(std::path::Path::new("/data"))
                && a.broker_pid == Some(9)));
    }

    #[test]
    fn a_missed_target_or_an_incomplete_run_exits_1() {
        let check = |kind, ok| Check {
            name: "x".into(),
            kind,
            ok,
            detail: String::new(),
        };
        let met = [
            check(CheckKind::Correctness, true),
            check(CheckKind::Target, true),
        ];
        let missed = [
            check(CheckKind::Correctness, true),
            check(CheckKind::Target, false),
        ];
        assert_eq!(exit_code(true, &met), ExitCode::from(0));
        assert_eq!(exit_code(true, &missed), ExitCode::from(1));
        assert_eq!(exit_code(false, &met), ExitCode::from(1));
    }

    #[test]
    fn check_lines() {
        let c = Check {
            name: "lost == 0".into(),
            kind: CheckKind::Correctness,
            ok: false,
            detail: "3 lost".into(),
        };
        assert_eq!(c.line(), "[FAIL] lost == 0 — 3 lost");
        let t = Check {
            kind: CheckKind::Target,
            ..c.clone()
        };
        assert!(t.line().starts_with("[MISSED]"));
    }
}
