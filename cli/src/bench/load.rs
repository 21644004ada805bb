//! The moving parts of the overload and burst scenarios: a producer that publishes through a
//! window (as fast as it allows, or paced per phase), a consumer that acks at a paced rate (or
//! at full speed), and a sampler that reads the topic's depth on its own admin connection.
//!
//! Every part is bounded: the producer by its phases plus a grace period for outstanding
//! outcomes, the consumer and the sampler by a stop signal the scenario always sends (and the
//! sampler by its number of points). Nothing here queues without a bound: outstanding publishes
//! are at most the window, histograms are fixed-size, sequence sets are bitmaps bounded by
//! [`super::common::MAX_TRACKED_SEQS`], error lists keep the first [`MAX_ERRORS`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::watch;
use weir_client::{Client, ClientError, PublishError, Subscription, TopicInfo};

use super::common::{
    bump, histogram, now_ns, payload, reason_name, record, stamp, Counters, Pacer, SeqSet,
    STAMP_BYTES,
};

/// Most error messages kept per task (the rest are only counted).
pub const MAX_ERRORS: usize = 8;

/// One phase of a scenario: a name, a length, and the producer's rate during it (`None`: as
/// fast as the window allows).
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub duration: Duration,
    pub rate: Option<f64>,
}

/// The index of the phase that time `t_ns` (since the scenario's start) falls in; times past
/// the last phase belong to the last phase.
pub fn phase_at(phases: &[Phase], t_ns: u64) -> usize {
    let mut end = 0u64;
    for (i, p) in phases.iter().enumerate() {
        end = end.saturating_add(p.duration.as_nanos() as u64);
        if t_ns < end {
            return i;
        }
    }
    phases.len().saturating_sub(1)
}

/// The name of the phase at `t_ns`, or `"drain"` past the end of the last phase.
pub fn phase_name_at(phases: &[Phase], t_ns: u64) -> &'static str {
    if t_ns >= total_ns(phases) {
        "drain"
    } else {
        phases[phase_at(phases, t_ns)].name
    }
}

/// The length of all phases together, in nanoseconds.
pub fn total_ns(phases: &[Phase]) -> u64 {
    phases
        .iter()
        .map(|p| p.duration.as_nanos() as u64)
        .fold(0u64, u64::saturating_add)
}

/// What the producer of a scenario does.
#[derive(Debug, Clone)]
pub struct ProducerSpec {
    pub topic: String,
    pub size: usize,
    pub window: usize,
    pub run_id: u64,
    /// The scenario's t = 0 on the [`now_ns`] clock.
    pub start_ns: u64,
    pub phases: Vec<Phase>,
    /// How long to wait for the outcomes of outstanding publishes once publishing stops.
    pub grace: Duration,
    /// The topic's `next_seq` before the run: the base of the confirmed-sequence set.
    pub seq_base: u64,
}

/// What the producer saw during one phase (by send time).
#[derive(Debug)]
pub struct PhaseOutcome {
    pub offered: u64,
    pub confirmed: u64,
    pub refused: u64,
    pub errors: u64,
    /// Tokens of the phase's rate that could not be sent because the window was full (only for
    /// paced phases).
    pub not_offered: u64,
    /// Publish → confirm, ns.
    pub confirm: Histogram<u64>,
    /// Publish → refusal, ns.
    pub refusal: Histogram<u64>,
}

impl PhaseOutcome {
    /// Nothing seen yet.
    pub fn new() -> PhaseOutcome {
        PhaseOutcome {
            offered: 0,
            confirmed: 0,
            refused: 0,
            errors: 0,
            not_offered: 0,
            confirm: histogram(),
            refusal: histogram(),
        }
    }
}

/// The retry-after hints that came with refusals.
#[derive(Debug)]
pub struct RetryAfter {
    pub with_hint: u64,
    pub without_hint: u64,
    /// Hints in ms (as ns-free plain numbers; 0 recorded as 1).
    pub hist: Histogram<u64>,
    pub min_ms: Option<u64>,
}

/// A summary of [`RetryAfter`], for reports.
#[derive(Debug, Clone, Serialize)]
pub struct RetryAfterReport {
    pub with_hint: u64,
    pub without_hint: u64,
    pub min_ms: Option<u64>,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl RetryAfter {
    /// No refusal seen yet.
    pub fn new() -> RetryAfter {
        RetryAfter {
            with_hint: 0,
            without_hint: 0,
            hist: Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid histogram bounds"),
            min_ms: None,
        }
    }

    pub fn report(&self) -> RetryAfterReport {
        let some = !self.hist.is_empty();
        RetryAfterReport {
            with_hint: self.with_hint,
            without_hint: self.without_hint,
            min_ms: self.min_ms,
            p50_ms: some.then(|| self.hist.value_at_quantile(0.5)),
            p99_ms: some.then(|| self.hist.value_at_quantile(0.99)),
            max_ms: some.then(|| self.hist.max()),
        }
    }
}

/// What the producer measured.
#[derive(Debug)]
pub struct ProducerResult {
    pub phases: Vec<PhaseOutcome>,
    pub refusals: BTreeMap<String, u64>,
    pub retry_after: RetryAfter,
    pub confirmed_seqs: SeqSet,
    /// Publishes whose outcome had not arrived when the grace period ended.
    pub unresolved: u64,
    pub first_error: Option<String>,
    /// When the last publish was sent, ns since the scenario's start.
    pub stopped_ms: u64,
}

impl ProducerResult {
    pub fn total<F: Fn(&PhaseOutcome) -> u64>(&self, f: F) -> u64 {
        self.phases.iter().map(f).sum()
    }
}

/// Publishes for the length of `spec.phases`, each phase as fast as the window allows or paced
/// at its rate, then waits up to `spec.grace` for the outcomes still outstanding. Stops early
/// when `stop` turns true or the connection fails.
pub async fn produce(
    client: Client,
    spec: ProducerSpec,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> ProducerResult {
    let publisher = client.publisher_with_window(spec.window);
    let template = vec![0x5a; spec.size.saturating_sub(STAMP_BYTES)];
    let mut r = ProducerResult {
        phases: spec.phases.iter().map(|_| PhaseOutcome::new()).collect(),
        refusals: BTreeMap::new(),
        retry_after: RetryAfter::new(),
        confirmed_seqs: SeqSet::new(spec.seq_base),
        unresolved: 0,
        first_error: None,
        stopped_ms: 0,
    };
    let end_ns = spec.start_ns + total_ns(&spec.phases);
    // The tokio instant of the scenario's start, to sleep until times on the now_ns clock.
    let base = tokio::time::Instant::now() - Duration::from_nanos(now_ns() - spec.start_ns);
    let at = |ns: u64| base + Duration::from_nanos(ns.saturating_sub(spec.start_ns));
    let first_rate = spec.phases.first().and_then(|p| p.rate).unwrap_or(1.0);
    let mut pacer = Pacer::new(first_rate, Pacer::default_slack(first_rate), spec.start_ns);
    let mut pacer_phase = 0usize;
    let mut skipped_seen = 0u64;
    let mut inflight = FuturesUnordered::new();
    let phases = spec.phases.clone();
    let start_ns = spec.start_ns;

    let record_outcome =
        |r: &mut ProducerResult, (sent_ns, outcome): (u64, Result<u64, PublishError>)| {
            let now = now_ns();
            let ph = &mut r.phases[phase_at(&phases, sent_ns.saturating_sub(start_ns))];
            match outcome {
                Ok(seq) => {
                    ph.confirmed += 1;
                    record(&mut ph.confirm, now.saturating_sub(sent_ns));
                    r.confirmed_seqs.insert(seq);
                    Counters::add(&counters.confirmed, 1);
                }
                Err(PublishError::Rejected {
                    reason,
                    retry_after_ms,
                    ..
                }) => {
                    ph.refused += 1;
                    record(&mut ph.refusal, now.saturating_sub(sent_ns));
                    bump(&mut r.refusals, reason_name(reason), 1);
                    match retry_after_ms {
                        Some(ms) => {
                            r.retry_after.with_hint += 1;
                            let _ = r.retry_after.hist.record(ms.clamp(1, 3_600_000));
                            r.retry_after.min_ms =
                                Some(r.retry_after.min_ms.map_or(ms, |m| m.min(ms)));
                        }
                        None => r.retry_after.without_hint += 1,
                    }
                    Counters::add(&counters.refused, 1);
                }
                Err(e) => {
                    ph.errors += 1;
                    r.first_error.get_or_insert_with(|| e.to_string());
                    Counters::add(&counters.errors, 1);
                }
            }
        };

    loop {
        while let Some(Some(outcome)) = inflight.next().now_or_never() {
            record_outcome(&mut r, outcome);
        }
        let now = now_ns();
        // A dropped sender means stop too (and would make `changed()` return at once).
        if now >= end_ns || *stop.borrow() || stop.has_changed().is_err() {
            break;
        }
        let phase = phase_at(&spec.phases, now - spec.start_ns);
        if let Some(rate) = spec.phases[phase].rate {
            if phase != pacer_phase {
                pacer.set_rate(rate);
                pacer_phase = phase;
            }
            let due = pacer.due(now);
            let skipped = pacer.skipped();
            r.phases[phase].not_offered += skipped - skipped_seen;
            skipped_seen = skipped;
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep_until(at(due.min(end_ns))) => {}
                    Some(outcome) = inflight.next(), if !inflight.is_empty() => {
                        record_outcome(&mut r, outcome)
                    }
                    _ = stop.changed() => {}
                }
                continue;
            }
        }
        let body = payload(&template, spec.run_id);
        let sent_ns = stamp(&body).map_or_else(now_ns, |(ts, _)| ts);
        match publisher.try_publish(&spec.topic, body) {
            Ok(confirm) => {
                pacer.take();
                r.phases[phase].offered += 1;
                Counters::add(&counters.offered, 1);
                inflight.push(confirm.map(move |outcome| (sent_ns, outcome)));
            }
            Err(ClientError::WindowFull) if !inflight.is_empty() => {
                tokio::select! {
                    Some(outcome) = inflight.next() => record_outcome(&mut r, outcome),
                    _ = tokio::time::sleep_until(at(end_ns)) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(ClientError::WindowFull) => {
                // The connection's command queue is full with nothing of ours outstanding:
                // give the connection task a moment.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => {
                r.phases[phase].errors += 1;
                r.first_error.get_or_insert_with(|| e.to_string());
                Counters::add(&counters.errors, 1);
                break;
            }
        }
    }
    r.stopped_ms = now_ns().saturating_sub(spec.start_ns) / 1_000_000;
    let grace_end = tokio::time::Instant::now() + spec.grace;
    while !inflight.is_empty() && !*stop.borrow() && stop.has_changed().is_ok() {
        tokio::select! {
            outcome = tokio::time::timeout_at(grace_end, inflight.next()) => match outcome {
                Ok(Some(outcome)) => record_outcome(&mut r, outcome),
                _ => break,
            },
            _ = stop.changed() => {}
        }
    }
    r.unresolved = inflight.len() as u64;
    r
}

/// How the consumer behaves now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConsumerMode {
    /// Ack at the spec's rate (or at full speed when it has none).
    Paced,
    /// Ack everything at once: drain the topic.
    Full,
    /// Close the subscription and return.
    Stop,
}

/// What the consumer of a scenario does.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub run_id: u64,
    pub start_ns: u64,
    pub phases: Vec<Phase>,
    /// Acks per second in [`ConsumerMode::Paced`]; `None`: as fast as deliveries come.
    pub rate: Option<f64>,
    /// The topic's `next_seq` before the run.
    pub seq_base: u64,
}

/// What the consumer measured.
#[derive(Debug)]
pub struct ConsumerResult {
    /// Deliveries of this run's messages (redeliveries included).
    pub delivered: u64,
    pub delivered_seqs: SeqSet,
    /// Sequence numbers the broker said it evicted before delivering them (`drop_oldest` gap
    /// notices, [`ClientError::MessagesDropped`]).
    pub gap_seqs: SeqSet,
    /// Gap notices received.
    pub gap_notices: u64,
    pub redelivered: u64,
    /// Deliveries whose payload was not stamped by this run (acked and otherwise ignored).
    pub foreign: u64,
    /// Publish → deliver per phase (by send time), ns.
    pub deliver: Vec<Histogram<u64>>,
    pub errors: Vec<String>,
    pub error_count: u64,
    /// The stream ended (connection or subscription closed) before the consumer was told to stop.
    pub ended_early: bool,
}

/// How long closing a subscription may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Consumes `sub`, acking at the spec's rate while `mode` is `Paced`, at full speed while it is
/// `Full`, until it is `Stop` (or the stream ends).
pub async fn consume(
    mut sub: Subscription,
    spec: ConsumerSpec,
    counters: Arc<Counters>,
    mut mode: watch::Receiver<ConsumerMode>,
) -> ConsumerResult {
    let mut r = ConsumerResult {
        delivered: 0,
        delivered_seqs: SeqSet::new(spec.seq_base),
        gap_seqs: SeqSet::new(spec.seq_base),
        gap_notices: 0,
        redelivered: 0,
        foreign: 0,
        deliver: spec.phases.iter().map(|_| histogram()).collect(),
        errors: Vec::new(),
        error_count: 0,
        ended_early: false,
    };
    let base = tokio::time::Instant::now() - Duration::from_nanos(now_ns() - spec.start_ns);
    let at = |ns: u64| base + Duration::from_nanos(ns.saturating_sub(spec.start_ns));
    let mut pacer = spec
        .rate
        .map(|rate| Pacer::new(rate, Pacer::default_slack(rate), spec.start_ns));
    loop {
        let current = *mode.borrow();
        if current == ConsumerMode::Stop {
            break;
        }
        tokio::select! {
            item = sub.next() => match item {
                Some(Ok(d)) => {
                    let now = now_ns();
                    match stamp(d.payload()) {
                        Some((ts, run)) if run == spec.run_id => {
                            let ph = phase_at(&spec.phases, ts.saturating_sub(spec.start_ns));
                            record(&mut r.deliver[ph], now.saturating_sub(ts));
                            r.delivered += 1;
                            r.delivered_seqs.insert(d.seq());
                            if d.attempt() > 1 {
                                r.redelivered += 1;
                            }
                            Counters::add(&counters.delivered, 1);
                        }
                        _ => r.foreign += 1,
                    }
                    if let (ConsumerMode::Paced, Some(p)) = (current, pacer.as_mut()) {
                        let due = p.due(now);
                        p.take();
                        if due > now {
                            // Hold the delivery until its token; a mode change cuts the wait.
                            tokio::select! {
                                _ = tokio::time::sleep_until(at(due)) => {}
                                _ = mode.changed() => {}
                            }
                        }
                    }
                    d.ack();
                }
                Some(Err(ClientError::MessagesDropped { from, to })) => {
                    // Not an error: drop_oldest telling us what we will never receive.
                    r.gap_notices += 1;
                    r.gap_seqs.insert_range(from, to);
                }
                Some(Err(e)) => {
                    r.error_count += 1;
                    if r.errors.len() < MAX_ERRORS {
                        r.errors.push(e.to_string());
                    }
                }
                None => {
                    r.ended_early = true;
                    break;
                }
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    if !r.ended_early {
        match tokio::time::timeout(CLOSE_TIMEOUT, sub.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                r.error_count += 1;
                if r.errors.len() < MAX_ERRORS {
                    r.errors.push(format!("closing: {e}"));
                }
            }
            Err(_) => {
                r.error_count += 1;
                if r.errors.len() < MAX_ERRORS {
                    r.errors
                        .push(format!("closing: no Unsubscribed within {CLOSE_TIMEOUT:?}"));
                }
            }
        }
    }
    r
}

/// One sample of a scenario's topic and counters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesPoint {
    /// Time since the scenario's start, ms.
    pub t_ms: u64,
    pub phase: &'static str,
    /// Messages stored in the topic (ready and in flight).
    pub depth: u64,
    /// Publishes parked by the `block` policy.
    pub parked: u64,
    /// The broker's count of refused publishes to the topic, since it started.
    pub broker_rejected: u64,
    /// The broker's count of messages evicted by `drop_oldest`, since it started.
    pub broker_dropped: u64,
    pub offered_per_s: f64,
    pub confirmed_per_s: f64,
    pub refused_per_s: f64,
    pub delivered_per_s: f64,
    /// Confirms received so far in the scenario.
    pub confirmed_total: u64,
    /// Deliveries so far in the scenario.
    pub delivered_total: u64,
}

/// Describes `topic` (`DescribeTopic`), within `limit`.
pub async fn topic_info(admin: &Client, topic: &str, limit: Duration) -> anyhow::Result<TopicInfo> {
    let description = tokio::time::timeout(limit, admin.describe_topic(topic))
        .await
        .map_err(|_| anyhow::anyhow!("DescribeTopic took more than {limit:?}"))??;
    Ok(description.info)
}

/// What the sampler does.
#[derive(Debug, Clone)]
pub struct SamplerSpec {
    pub topic: String,
    pub start_ns: u64,
    pub phases: Vec<Phase>,
    pub every: Duration,
    /// The most points kept (the series' bound); sampling stops there.
    pub max_points: usize,
}

/// Samples the topic's depth and the counters' rates every `spec.every` until `stop`, at most
/// `spec.max_points` times. Returns the series and the first sampling error, if any. Drives the
/// progress bar (position in seconds since the start) on the way.
pub async fn sample(
    admin: Client,
    spec: SamplerSpec,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    bar: ProgressBar,
) -> (Vec<SeriesPoint>, Option<String>) {
    let mut series = Vec::with_capacity(spec.max_points.min(100_000));
    let mut error = None;
    let mut ticker = tokio::time::interval(spec.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut prev = (now_ns(), counters.snapshot());
    let limit = spec.every.max(Duration::from_secs(1));
    while series.len() < spec.max_points && !*stop.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
        }
        let info = topic_info(&admin, &spec.topic, limit).await;
        let now = now_ns();
        let c = counters.snapshot();
        let secs = now.saturating_sub(prev.0) as f64 / 1e9;
        let rate = |a: u64, b: u64| {
            if secs > 0.0 {
                a.saturating_sub(b) as f64 / secs
            } else {
                0.0
            }
        };
        let t_ns = now.saturating_sub(spec.start_ns);
        let (depth, parked, rejected, dropped) = match &info {
            Ok(i) => (i.depth, i.parked, i.rejected, i.dropped),
            Err(e) => {
                error.get_or_insert_with(|| e.to_string());
                continue;
            }
        };
        series.push(SeriesPoint {
            t_ms: t_ns / 1_000_000,
            phase: phase_name_at(&spec.phases, t_ns),
            depth,
            parked,
            broker_rejected: rejected,
            broker_dropped: dropped,
            offered_per_s: rate(c.offered, prev.1.offered),
            confirmed_per_s: rate(c.confirmed, prev.1.confirmed),
            refused_per_s: rate(c.refused, prev.1.refused),
            delivered_per_s: rate(c.delivered, prev.1.delivered),
            confirmed_total: c.confirmed,
            delivered_total: c.delivered,
        });
        prev = (now, c);
        bar.set_position(t_ns / 1_000_000_000);
        bar.set_message(format!(
            "{} offered {} confirmed {} refused {} delivered, depth {depth}",
            c.offered, c.confirmed, c.refused, c.delivered
        ));
    }
    (series, error)
}

/// The average rate of a cumulative `total` between the first point at or after `from_ms`
/// and the last point at or before `to_ms`; `None` with fewer than two such points.
pub fn rate_between(
    series: &[SeriesPoint],
    from_ms: u64,
    to_ms: u64,
    total: impl Fn(&SeriesPoint) -> u64,
) -> Option<f64> {
    let first = series
        .iter()
        .find(|p| p.t_ms >= from_ms && p.t_ms <= to_ms)?;
    let last = series
        .iter()
        .rev()
        .find(|p| p.t_ms >= from_ms && p.t_ms <= to_ms)?;
    (last.t_ms > first.t_ms).then(|| {
        total(last).saturating_sub(total(first)) as f64 * 1e3 / (last.t_ms - first.t_ms) as f64
    })
}

/// The median of `field` over the points with `from_ms <= t_ms < to_ms`, or `None` when there
/// are none.
pub fn median_over(
    series: &[SeriesPoint],
    from_ms: u64,
    to_ms: u64,
    field: impl Fn(&SeriesPoint) -> f64,
) -> Option<f64> {
    let mut v: Vec<f64> = series
        .iter()
        .filter(|p| p.t_ms >= from_ms && p.t_ms < to_ms)
        .map(field)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases() -> Vec<Phase> {
        vec![
            Phase {
                name: "before",
                duration: Duration::from_secs(10),
                rate: Some(1000.0),
            },
            Phase {
                name: "burst",
                duration: Duration::from_secs(30),
                rate: Some(2000.0),
            },
            Phase {
                name: "after",
                duration: Duration::from_secs(20),
                rate: Some(1000.0),
            },
        ]
    }

    #[test]
    fn phase_splitting() {
        let p = phases();
        let s = 1_000_000_000u64;
        assert_eq!(phase_at(&p, 0), 0);
        assert_eq!(phase_at(&p, 10 * s - 1), 0);
        assert_eq!(phase_at(&p, 10 * s), 1);
        assert_eq!(phase_at(&p, 39 * s), 1);
        assert_eq!(phase_at(&p, 40 * s), 2);
        assert_eq!(phase_at(&p, 100 * s), 2, "past the end: the last phase");
        assert_eq!(total_ns(&p), 60 * s);
        assert_eq!(phase_name_at(&p, 45 * s), "after");
        assert_eq!(phase_name_at(&p, 60 * s), "drain");
        assert_eq!(phase_at(&[], 5), 0);
    }

    fn point(t_ms: u64, confirmed_per_s: f64) -> SeriesPoint {
        SeriesPoint {
            t_ms,
            phase: "run",
            depth: 0,
            parked: 0,
            broker_rejected: 0,
            broker_dropped: 0,
            offered_per_s: 0.0,
            confirmed_per_s,
            refused_per_s: 0.0,
            delivered_per_s: 0.0,
            confirmed_total: t_ms,
            delivered_total: 0,
        }
    }

    #[test]
    fn rate_between_two_samples() {
        // confirmed_total = t_ms: 1000/s.
        let s: Vec<_> = [0, 500, 1000, 1500, 2100]
            .into_iter()
            .map(|t| point(t, 0.0))
            .collect();
        assert_eq!(
            rate_between(&s, 400, 2000, |p| p.confirmed_total),
            Some(1000.0)
        );
        assert_eq!(rate_between(&s, 1600, 2000, |p| p.confirmed_total), None);
    }

    #[test]
    fn median_over_a_window() {
        let s: Vec<_> = [(0, 50_000.0), (500, 990.0), (1000, 1010.0), (1500, 1000.0)]
            .into_iter()
            .map(|(t, c)| point(t, c))
            .collect();
        assert_eq!(
            median_over(&s, 500, 2000, |p| p.confirmed_per_s),
            Some(1000.0)
        );
        assert_eq!(median_over(&s, 5000, 6000, |p| p.confirmed_per_s), None);
    }
}
