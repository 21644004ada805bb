//! One scenario run on a fresh topic: create it, start a consumer, a producer and a sampler,
//! run the producer's phases, let the consumer drain, stop everything, and account for every
//! confirmed message. Shared by `overload`, `burst` and the sustainable-rate probe.
//!
//! The timeline, every step bounded in time:
//!
//! 1. create the topic (unique name per run, recorded for removal: [`Created`]) and read its
//!    `next_seq`;
//! 2. subscribe (one consumer, a small credit window), open the producer's connection;
//! 3. run the phases (the producer stops publishing at their end, then waits at most `grace`
//!    for outstanding outcomes — for `block`, parked publishes resolve within `max_block_ms`);
//! 4. drain: the consumer acks at full speed until the topic's depth is 0 or `drain` has passed
//!    (`drain` 0: stop at once and count what is stored);
//! 5. stop the consumer (closing the subscription) and the sampler, describe the topic once
//!    more, read the broker's RSS/CPU.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_client::{ClientOptions, FsyncPolicy, OverflowPolicy, TopicConfig, TopicInfo, TopicSpec};

use super::accounting::{account, stored_range, Accounting};
use super::cleanup::Created;
use super::common::{connect, now_ns, BrokerUsage, Counters, SeqSet};
use super::load::{
    consume, produce, sample, topic_info, total_ns, ConsumerMode, ConsumerResult, ConsumerSpec,
    Phase, ProducerResult, ProducerSpec, SamplerSpec, SeriesPoint,
};

/// Flags every scenario shares: knobs of the topic under test and the broker to watch.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioFlags {
    /// block: max_blocked_publishes of the topic (default: the broker's).
    #[arg(long)]
    pub max_blocked_publishes: Option<u32>,
    /// block: max_block_ms of the topic (default: the broker's).
    #[arg(long)]
    pub max_block_ms: Option<u64>,
    /// fsync policy of the topics (batch, interval:MS, never; default: the broker's).
    #[arg(long)]
    pub fsync: Option<FsyncPolicy>,
    /// The broker's process id, to read its RSS and CPU from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

impl ScenarioFlags {
    /// The spec of topic `name`, bounded at `bound` messages with `policy`, with these knobs.
    pub fn topic(&self, name: String, bound: u64, policy: OverflowPolicy) -> TopicSpec {
        TopicSpec {
            name,
            max_messages: Some(bound),
            overflow: Some(policy),
            fsync: self.fsync,
            max_blocked_publishes: self.max_blocked_publishes,
            max_block_ms: self.max_block_ms,
            ..TopicSpec::default()
        }
    }
}

/// How long an admin request or a subscribe may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the drain checks the topic's depth.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// Extra time a task gets beyond its own bounds before the scenario gives up on it.
const TASK_MARGIN: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct ScenarioSpec {
    pub topic: TopicSpec,
    pub group: String,
    pub phases: Vec<Phase>,
    /// The consumer's ack rate while the phases run; `None`: full speed.
    pub consumer_rate: Option<f64>,
    pub credit: u32,
    pub size: usize,
    pub window: usize,
    pub sample_every: Duration,
    /// Longest drain after the phases; zero: none.
    pub drain: Duration,
    pub broker_pid: Option<u32>,
    pub run_id: u64,
}

/// What happened.
#[derive(Debug)]
pub struct ScenarioOutcome {
    pub topic: String,
    pub config: TopicConfig,
    pub producer: ProducerResult,
    pub consumer: Option<ConsumerResult>,
    pub series: Vec<SeriesPoint>,
    pub sampler_error: Option<String>,
    pub final_info: Option<TopicInfo>,
    /// Deliveries up to the moment the producer stopped (the drain excluded).
    pub delivered_during_run: u64,
    /// Whether the drain emptied the topic.
    pub drained: bool,
    pub drain_ms: u64,
    pub broker: Option<BrokerUsage>,
    pub accounting: Accounting,
    pub warnings: Vec<String>,
}

/// The producing side of a scenario in place of the one windowed [`produce`] on its own
/// connection: called once the topic exists and the consumer runs, with the producer's spec,
/// the shared counters and the stop signal. Its future must end within the phases plus
/// `spec.grace`, and stop when the signal turns true (the scenario sends it past those bounds,
/// as it does to the default producer).
pub type Producing = Box<
    dyn FnOnce(
            ProducerSpec,
            Arc<Counters>,
            watch::Receiver<bool>,
        ) -> BoxFuture<'static, ProducerResult>
        + Send,
>;

/// Runs `spec` against the broker at `server`, recording its topic in `created`. Fails only
/// when the scenario cannot start (connection, topic creation, subscribe); later problems are
/// reported in the outcome.
pub async fn run_scenario(
    server: &str,
    options: &ClientOptions,
    (spec, created): (ScenarioSpec, &Created),
    bar: ProgressBar,
) -> anyhow::Result<ScenarioOutcome> {
    run_scenario_with(server, options, (spec, created), None, bar).await
}

/// [`run_scenario`] with `producing` (when given) in place of the one windowed producer.
pub async fn run_scenario_with(
    server: &str,
    options: &ClientOptions,
    (spec, created): (ScenarioSpec, &Created),
    producing: Option<Producing>,
    bar: ProgressBar,
) -> anyhow::Result<ScenarioOutcome> {
    let name = spec.topic.name.clone();
    let mut warnings = Vec::new();
    let admin = connect(server, options).await?;
    created.add(&name)?;
    let mut broker = spec.broker_pid.map(BrokerUsage::start);
    let config = tokio::time::timeout(REQUEST_TIMEOUT, admin.create_topic(spec.topic.clone()))
        .await
        .map_err(|_| anyhow::anyhow!("CreateTopic took more than {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("creating topic {name}"))?;
    if let Some(asked) = spec.topic.overflow {
        if config.overflow != asked {
            warnings.push(format!(
                "asked for overflow {} but the broker created the topic with {}",
                asked.as_str(),
                config.overflow.as_str()
            ));
        }
    }
    let initial = topic_info(&admin, &name, REQUEST_TIMEOUT).await?;
    let seq_base = initial.next_seq;

    let sub_client = connect(server, options).await?;
    let sub = tokio::time::timeout(
        REQUEST_TIMEOUT,
        sub_client.subscribe(&name, &spec.group, spec.credit),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Subscribe took more than {REQUEST_TIMEOUT:?}"))?
    .with_context(|| format!("subscribing to {name}"))?;
    let producing: Producing = match producing {
        Some(producing) => producing,
        None => {
            let client = connect(server, options).await?;
            Box::new(move |spec, counters, stop| Box::pin(produce(client, spec, counters, stop)))
        }
    };

    let counters = Arc::new(Counters::default());
    let start_ns = now_ns();
    let grace = Duration::from_millis(config.max_block_ms) + Duration::from_secs(5);
    let run_len = Duration::from_nanos(total_ns(&spec.phases));
    let max_points = ((run_len + grace + spec.drain + TASK_MARGIN).as_millis()
        / spec.sample_every.as_millis().max(1)) as usize
        + 16;

    let (stop_sampler, sampler_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample(
        admin.clone(),
        SamplerSpec {
            topic: name.clone(),
            start_ns,
            phases: spec.phases.clone(),
            every: spec.sample_every,
            max_points,
        },
        counters.clone(),
        sampler_rx,
        bar.clone(),
    ));
    let (mode_tx, mode_rx) = watch::channel(ConsumerMode::Paced);
    let consumer = tokio::spawn(consume(
        sub,
        ConsumerSpec {
            run_id: spec.run_id,
            start_ns,
            phases: spec.phases.clone(),
            rate: spec.consumer_rate,
            seq_base,
        },
        counters.clone(),
        mode_rx,
    ));
    let (stop_producer, producer_rx) = watch::channel(false);
    let producer_spec = ProducerSpec {
        topic: name.clone(),
        size: spec.size,
        window: spec.window,
        run_id: spec.run_id,
        start_ns,
        phases: spec.phases.clone(),
        grace,
        seq_base,
    };
    let mut producer = tokio::spawn(producing(producer_spec, counters.clone(), producer_rx));

    let producer = match tokio::time::timeout(run_len + grace + TASK_MARGIN, &mut producer).await {
        Ok(r) => r?,
        Err(_) => {
            warnings.push("the producer overran its bounds and was stopped".into());
            let _ = stop_producer.send(true);
            match tokio::time::timeout(TASK_MARGIN, &mut producer).await {
                Ok(r) => r?,
                Err(_) => {
                    producer.abort();
                    anyhow::bail!("the producer did not stop");
                }
            }
        }
    };
    drop(stop_producer);
    let delivered_during_run = counters.snapshot().delivered;

    // Drain: full speed until the topic is empty or the time is up.
    let drain_start = now_ns();
    let mut drained = false;
    if !spec.drain.is_zero() && !consumer.is_finished() {
        let _ = mode_tx.send(ConsumerMode::Full);
        let deadline = tokio::time::Instant::now() + spec.drain;
        loop {
            match topic_info(&admin, &name, REQUEST_TIMEOUT).await {
                Ok(i) if i.depth == 0 => {
                    drained = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    warnings.push(format!("during the drain: {e}"));
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline || consumer.is_finished() {
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
    let drain_ms = (now_ns() - drain_start) / 1_000_000;
    let _ = mode_tx.send(ConsumerMode::Stop);
    let consumer = join_within(consumer, TASK_MARGIN, "consumer", &mut warnings).await;
    let _ = stop_sampler.send(true);
    let (series, sampler_error) = join_within(sampler, TASK_MARGIN, "sampler", &mut warnings)
        .await
        .unwrap_or_default();

    let final_info = match topic_info(&admin, &name, REQUEST_TIMEOUT).await {
        Ok(i) => Some(i),
        Err(e) => {
            warnings.push(format!("final description of the topic: {e}"));
            None
        }
    };
    let offered = producer.total(|p| p.offered);
    if let Some(b) = broker.as_mut() {
        b.finish(offered);
    }
    let empty = SeqSet::new(seq_base);
    let delivered = consumer.as_ref().map_or(&empty, |c| &c.delivered_seqs);
    let evicted = consumer.as_ref().map_or(&empty, |c| &c.gap_seqs);
    let accounting = match &final_info {
        Some(info) => account(
            &producer.confirmed_seqs,
            delivered,
            evicted,
            stored_range(info.depth, info.next_seq),
            info.dropped.saturating_sub(initial.dropped),
        ),
        // Without the final state, nothing can be counted as stored: every undelivered
        // confirmed message shows as lost, and the warning says why.
        None => account(&producer.confirmed_seqs, delivered, evicted, 0..0, 0),
    };
    Ok(ScenarioOutcome {
        topic: name,
        config,
        producer,
        consumer,
        series,
        sampler_error,
        final_info,
        delivered_during_run,
        drained,
        drain_ms,
        broker,
        accounting,
        warnings,
    })
}

/// Awaits a task for at most `limit`; aborts it past that and notes it.
async fn join_within<T>(
    mut task: JoinHandle<T>,
    limit: Duration,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<T> {
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warnings.push(format!("the {what} task failed: {e}"));
            None
        }
        Err(_) => {
            task.abort();
            warnings.push(format!("the {what} did not stop within {limit:?}"));
            None
        }
    }
}
