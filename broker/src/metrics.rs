//! The broker's measurements: counters and gauges (plain atomics, shared through an `Arc`),
//! histograms recorded at event time (prometheus-client [`Histogram`]s), and the time each kind
//! of worker spends working or waiting. Logged at shutdown, read by tests, and exported at
//! `GET /metrics` by [`crate::admin`], which reads these values at scrape time — nothing is
//! counted twice.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use weir_protocol::RejectReason;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that goes up and down (e.g. open connections).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The highest value ever observed.
#[derive(Debug, Default)]
pub struct HighWater(AtomicU64);

impl HighWater {
    /// Observes a value.
    pub fn observe(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }

    /// The highest value observed.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram of durations in seconds, recorded at event time: exponential buckets from 50 µs,
/// doubling up to ~13 s; anything slower lands in the `+Inf` bucket. Each observation takes the
/// histogram's lock for a few nanoseconds.
#[derive(Debug, Clone)]
pub struct Seconds(Histogram);

impl Default for Seconds {
    fn default() -> Self {
        Seconds(Histogram::new(exponential_buckets(50e-6, 2.0, 19)))
    }
}

impl Seconds {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    /// The underlying histogram, for the exposition.
    pub fn histogram(&self) -> &Histogram {
        &self.0
    }
}

/// A histogram of message counts (commit batch sizes), recorded at event time: buckets 1, 2,
/// 4 … 4096; larger counts (a `commit_max_batch` above 4096) land in the `+Inf` bucket.
#[derive(Debug, Clone)]
pub struct MessageCounts(Histogram);

impl Default for MessageCounts {
    fn default() -> Self {
        MessageCounts(Histogram::new(exponential_buckets(1.0, 2.0, 13)))
    }
}

impl MessageCounts {
    /// Records one count.
    pub fn observe(&self, count: u64) {
        self.0.observe(count as f64);
    }

    /// The underlying histogram, for the exposition.
    pub fn histogram(&self) -> &Histogram {
        &self.0
    }
}

/// Time every worker of one kind spent doing work and waiting for work, summed over those
/// workers, in whole microseconds (a `u64` of them lasts over 500 years of 1 000 workers).
#[derive(Debug, Default)]
pub struct WorkerTime {
    busy_us: Counter,
    idle_us: Counter,
}

impl WorkerTime {
    /// Time spent doing work.
    pub fn busy(&self) -> Duration {
        Duration::from_micros(self.busy_us.get())
    }

    /// Time spent waiting for work.
    pub fn idle(&self) -> Duration {
        Duration::from_micros(self.idle_us.get())
    }

    /// A stopwatch for one worker's loop, counting as busy from now.
    pub fn clock(&self) -> WorkClock<'_> {
        WorkClock {
            time: self,
            since: Instant::now(),
            waiting: false,
            carry: [Duration::ZERO; 2],
        }
    }
}

/// One worker's stopwatch: its loop calls [`waiting`](Self::waiting) before it waits for work
/// and [`working`](Self::working) once work arrives, and each call adds the span since the
/// previous one to busy or idle time — one `Instant::now()` and one atomic add per call. A span
/// is counted when it ends (a worker that waits an hour shows that hour when work arrives, or
/// when the clock is dropped); sub-microsecond remainders are carried to the next span, never
/// lost.
pub struct WorkClock<'a> {
    time: &'a WorkerTime,
    since: Instant,
    waiting: bool,
    /// Not yet counted: `[busy, idle]`, each under a microsecond.
    carry: [Duration; 2],
}

impl WorkClock<'_> {
    /// Work arrived: the span since the last call was idle. Returns the moment work arrived.
    pub fn working(&mut self) -> Instant {
        let now = Instant::now();
        self.mark_at(now, false);
        now
    }

    /// The worker starts waiting for work: the span since the last call was busy.
    pub fn waiting(&mut self) {
        self.mark_at(Instant::now(), true);
    }

    /// Ends the current span at `now`, counting it as busy or idle by the state it was in,
    /// then enters the waiting state if `waiting`, else the working one.
    fn mark_at(&mut self, now: Instant, waiting: bool) {
        let state = usize::from(self.waiting);
        let span = now.saturating_duration_since(self.since) + self.carry[state];
        let whole_us = span.as_micros() as u64;
        self.carry[state] = span - Duration::from_micros(whole_us);
        let counter = if self.waiting {
            &self.time.idle_us
        } else {
            &self.time.busy_us
        };
        counter.add(whole_us);
        self.since = now;
        self.waiting = waiting;
    }
}

impl Drop for WorkClock<'_> {
    /// Counts the span in progress.
    fn drop(&mut self) {
        self.mark_at(Instant::now(), self.waiting);
    }
}

/// Busy and idle time of each kind of worker.
#[derive(Debug, Default)]
pub struct Workers {
    /// The topics' group-commit writers.
    pub writer: WorkerTime,
    /// The topics' dispatchers.
    pub dispatcher: WorkerTime,
    /// The connection tasks (their read-and-apply loops; the socket writers are not counted).
    pub connection: WorkerTime,
}

impl Workers {
    /// Each kind with its name (the `worker` label of the exposition).
    pub fn by_kind(&self) -> [(&'static str, &WorkerTime); 3] {
        [
            ("writer", &self.writer),
            ("dispatcher", &self.dispatcher),
            ("connection", &self.connection),
        ]
    }
}

/// Every measurement of the broker.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages committed to a topic log.
    pub published: Counter,
    /// Publishes refused with `Rejected`, any reason.
    pub rejected: Counter,
    /// Publishes refused, by reason (indexed by [`reason_index`]).
    pub rejected_by_reason: [Counter; REASONS.len()],
    /// Messages evicted by `drop_oldest`.
    pub dropped: Counter,
    /// Publishes parked by the `block` policy.
    pub parked: Counter,
    /// Reports of a group stalled at `max_in_flight` (one per `stall_warn_ms` of stall).
    pub stalls_max_in_flight: Counter,
    /// Reports of a subscriber with no credit while messages wait (one per `stall_warn_ms`).
    pub stalls_no_credit: Counter,
    /// Deliveries sent to subscribers (including redeliveries).
    pub delivered: Counter,
    /// Deliveries with attempt > 1.
    pub redelivered: Counter,
    /// Messages acked.
    pub acked: Counter,
    /// Messages nacked (returned for redelivery after a delay, or dead-lettered).
    pub nacked: Counter,
    /// Deliveries that passed their ack deadline.
    pub ack_timeouts: Counter,
    /// Messages of key-ordered groups that waited because a message with their `weir-key` was
    /// in flight (each counted once).
    pub key_waits: Counter,
    /// Times a key-ordered group stopped reading new messages at `groups.key_lookahead`
    /// messages waiting for their keys.
    pub key_lookahead_full: Counter,
    /// Messages moved to a dead-letter topic.
    pub dead_lettered: Counter,
    /// Attempts to move a message to a dead-letter topic that it refused (full): the message
    /// stays in flight on its source and is retried.
    pub dead_letter_refused: Counter,
    /// Ephemeral groups deleted because their last subscription left (unsubscribed, or its
    /// connection closed).
    pub ephemeral_groups_deleted: Counter,
    /// Connections open now.
    pub connections: Gauge,
    /// Connections refused at `max_connections`.
    pub connections_refused: Counter,
    /// Connections closed for a protocol error (malformed or oversized frame, bad handshake).
    pub protocol_errors: Counter,
    /// Times a connection stopped reading its socket: it had `max_unconfirmed` publishes
    /// awaiting their commit, or held its whole memory share (TCP backpressure).
    pub read_pauses: Counter,
    /// Publishes shed unread — answered from their header, payload discarded as it arrived —
    /// because their connection's share or the budget had no room to buffer them, or because
    /// their header was larger than `max_header_bytes` allows.
    pub frames_shed: Counter,
    /// `PublishBatch` frames read (protocol v5); their messages count as publishes one by one.
    pub publish_batches: Counter,
    /// `DeliverBatch` frames written (protocol v5); their deliveries count one by one.
    pub deliver_batches: Counter,
    /// Connections closed because a frame stopped arriving part-way (`frame_read_timeout`).
    pub frame_read_timeouts: Counter,
    /// Commits that failed with an I/O error other than a full disk (the topic is fenced).
    pub storage_failures: Counter,
    /// Records found damaged (at start or when read for delivery).
    pub storage_damage_found: Counter,
    /// Periodic flushes of the state store (group cursors and acks) that failed.
    pub state_flush_failures: Counter,
    /// Whether the last periodic flush of the state store failed.
    pub state_store_failing: AtomicBool,
    /// Connections closed because their socket accepted nothing for
    /// `slow_consumer_timeout` while frames waited.
    pub slow_consumers_closed: Counter,
    /// Connections closed after `idle_timeout` with no subscription and no frame.
    pub idle_closed: Counter,
    /// Answers that did not fit in a frame, replaced by `Error{FrameTooLarge}`.
    pub replies_too_large: Counter,
    /// `Term` reasons cut to `max_reason_bytes`.
    pub reasons_truncated: Counter,
    /// Expensive operations refused at their key's `ops_per_s`, by operation (indexed like
    /// [`crate::work::Work::OPS`]).
    pub ops_rejected: [Counter; 4],
    /// Authentications refused (a missing or wrong token, an anonymous client off loopback).
    pub auth_failures: Counter,
    /// Connections refused before `Hello`, and admin requests answered `429`, because their
    /// address failed authentication more than `max_auth_failures_per_s` times in the current
    /// second.
    pub auth_throttled: Counter,
    /// Connections refused on a TLS port (wire or admin) because the client spoke plaintext.
    pub tls_plaintext_refused: Counter,
    /// TLS handshakes that failed or did not finish in time (wire or admin port): unknown
    /// CA, a missing or bad client certificate, a protocol error.
    pub tls_handshake_failures: Counter,
    /// Admin connections closed because a request's headers had not all arrived
    /// `admin.header_read_timeout_ms` after the connection opened (first request) or after the
    /// request's first byte (later requests).
    pub admin_header_timeouts: Counter,
    /// Admin requests answered `408 Request Timeout` (and their connections closed) because
    /// the body had not all arrived `admin.body_read_timeout_ms` after the headers.
    pub admin_body_timeouts: Counter,
    /// Kept-alive admin connections closed after `admin.idle_timeout_ms` without a new request.
    pub admin_idle_closed: Counter,
    /// Kept-alive admin connections closed while idle because a new connection was waiting
    /// for a slot at `admin.max_connections`.
    pub admin_idle_reclaimed: Counter,
    /// Admin requests answered `413 Payload Too Large`: a body over `max_frame_bytes`
    /// (announced by `Content-Length`, or sent) or over the topic's `max_message_bytes`.
    pub admin_too_large: Counter,
    /// The most unconfirmed publishes any connection has had at once (never above
    /// `max_unconfirmed`).
    pub unconfirmed_high_water: HighWater,
    /// Duration of each group commit: from handing the batch to the blocking pool until the
    /// write, the sync (per the topic's fsync policy) and the deletion of fully acked segments
    /// are done.
    pub commit_duration: Seconds,
    /// Messages per group commit (at most `commit_max_batch`).
    pub commit_batch: MessageCounts,
    /// From a publish being read off the wire (or received over HTTP) to its answer —
    /// `PublishOk`, `Rejected` or an error — being queued for the client. Record it with
    /// [`Metrics::observe_publish_confirm`].
    pub publish_confirm: Seconds,
    /// From a message's append (the start of the commit that stored it) to its first delivery
    /// to a group being queued for the subscriber's connection. Redeliveries are not recorded.
    pub publish_deliver: Seconds,
    /// Busy and idle time per kind of worker.
    pub workers: Workers,
}

impl Metrics {
    /// Counts an expensive operation refused at its key's `ops_per_s`.
    pub fn op_refused(&self, op: crate::work::Work) {
        if let Some(i) = crate::work::Work::OPS.iter().position(|o| *o == op) {
            self.ops_rejected[i].add(1);
        }
    }
}

/// Every refusal reason, in the order of [`Metrics::rejected_by_reason`].
pub const REASONS: [RejectReason; 11] = [
    RejectReason::TopicFull,
    RejectReason::MessageTooLarge,
    RejectReason::TooManyConnections,
    RejectReason::TooManyTopics,
    RejectReason::ShuttingDown,
    RejectReason::RateLimited,
    RejectReason::Overloaded,
    RejectReason::StorageFull,
    RejectReason::StorageDamaged,
    RejectReason::SequenceTooOld,
    RejectReason::DuplicatePending,
];

/// The `reason` label value of a refusal in the exposition (snake_case).
pub fn reason_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::TopicFull => "topic_full",
        RejectReason::MessageTooLarge => "message_too_large",
        RejectReason::TooManyConnections => "too_many_connections",
        RejectReason::TooManyTopics => "too_many_topics",
        RejectReason::ShuttingDown => "shutting_down",
        RejectReason::RateLimited => "rate_limited",
        RejectReason::Overloaded => "overloaded",
        RejectReason::StorageFull => "storage_full",
        RejectReason::StorageDamaged => "storage_damaged",
        RejectReason::SequenceTooOld => "sequence_too_old",
        RejectReason::DuplicatePending => "duplicate_pending",
    }
}

/// The position of `reason` in [`REASONS`].
pub fn reason_index(reason: RejectReason) -> usize {
    REASONS.iter().position(|r| *r == reason).unwrap_or(0)
}

impl Metrics {
    /// Counts one refusal.
    pub fn refused(&self, reason: RejectReason) {
        self.rejected.add(1);
        self.rejected_by_reason[reason_index(reason)].add(1);
    }

    /// Refusals so far for `reason`.
    pub fn refusals(&self, reason: RejectReason) -> u64 {
        self.rejected_by_reason[reason_index(reason)].get()
    }

    /// Records the time from a publish being received to its answer being queued.
    pub fn observe_publish_confirm(&self, elapsed: Duration) {
        self.publish_confirm.observe(elapsed);
    }

    /// Logs every counter, and each kind of worker's busy and idle seconds, at info level (the
    /// histograms are in the exposition only).
    pub fn log_summary(&self) {
        let w = &self.workers;
        tracing::info!(
            published = self.published.get(),
            rejected = self.rejected.get(),
            dropped = self.dropped.get(),
            delivered = self.delivered.get(),
            redelivered = self.redelivered.get(),
            acked = self.acked.get(),
            nacked = self.nacked.get(),
            ack_timeouts = self.ack_timeouts.get(),
            key_waits = self.key_waits.get(),
            key_lookahead_full = self.key_lookahead_full.get(),
            dead_lettered = self.dead_lettered.get(),
            dead_letter_refused = self.dead_letter_refused.get(),
            ephemeral_groups_deleted = self.ephemeral_groups_deleted.get(),
            connections_refused = self.connections_refused.get(),
            read_pauses = self.read_pauses.get(),
            frames_shed = self.frames_shed.get(),
            publish_batches = self.publish_batches.get(),
            deliver_batches = self.deliver_batches.get(),
            protocol_errors = self.protocol_errors.get(),
            writer_busy_s = w.writer.busy().as_secs_f64(),
            writer_idle_s = w.writer.idle().as_secs_f64(),
            dispatcher_busy_s = w.dispatcher.busy().as_secs_f64(),
            dispatcher_idle_s = w.dispatcher.idle().as_secs_f64(),
            connection_busy_s = w.connection.busy().as_secs_f64(),
            connection_idle_s = w.connection.idle().as_secs_f64(),
            "broker counters"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_clock_splits_spans_and_carries_sub_microsecond_remainders() {
        let time = WorkerTime::default();
        let mut clock = time.clock();
        let start = clock.since;
        let at = |ns: u64| start + Duration::from_nanos(ns);
        clock.mark_at(at(1_500), true); // busy 1.5 µs: 1 counted, 0.5 carried
        clock.mark_at(at(4_500), false); // idle 3 µs
        clock.mark_at(at(5_000), true); // busy 0.5 µs + the 0.5 carried
        assert_eq!(time.busy(), Duration::from_micros(2));
        assert_eq!(time.idle(), Duration::from_micros(3));
        // Dropped while waiting: the span in progress is idle time.
        drop(clock);
        assert_eq!(time.busy(), Duration::from_micros(2));
        assert!(time.idle() >= Duration::from_micros(3));
    }

    #[test]
    fn every_reason_has_its_own_label_and_counter() {
        let metrics = Metrics::default();
        metrics.refused(RejectReason::Overloaded);
        for reason in REASONS {
            let expected = u64::from(reason == RejectReason::Overloaded);
            assert_eq!(metrics.refusals(reason), expected, "{reason:?}");
        }
        let labels: std::collections::BTreeSet<_> = REASONS.map(reason_label).into();
        assert_eq!(labels.len(), REASONS.len());
    }
}
