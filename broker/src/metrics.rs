//! The broker's counters: what was published, refused, delivered and acked, and how long
//! commits take. Plain atomics, shared through an `Arc`; logged at shutdown and read by tests.
//! (The operations issue exports them to Prometheus.)

use std::sync::atomic::{AtomicU64, Ordering};

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

/// Count, sum and maximum of a duration in microseconds.
#[derive(Debug, Default)]
pub struct LatencyStat {
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl LatencyStat {
    /// Records one observation.
    pub fn record(&self, us: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// `(count, mean µs, max µs)`.
    pub fn summary(&self) -> (u64, u64, u64) {
        let count = self.count.load(Ordering::Relaxed);
        let mean = self
            .sum_us
            .load(Ordering::Relaxed)
            .checked_div(count)
            .unwrap_or(0);
        (count, mean, self.max_us.load(Ordering::Relaxed))
    }
}

/// Every counter of the broker.
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
    /// Messages moved to a dead-letter topic.
    pub dead_lettered: Counter,
    /// Attempts to move a message to a dead-letter topic that it refused (full): the message
    /// stays in flight on its source and is retried.
    pub dead_letter_refused: Counter,
    /// Connections open now.
    pub connections: Gauge,
    /// Connections refused at `max_connections`.
    pub connections_refused: Counter,
    /// Connections closed for a protocol error (malformed or oversized frame, bad handshake).
    pub protocol_errors: Counter,
    /// Times a connection stopped reading its socket because it had `max_unconfirmed`
    /// publishes awaiting their commit (TCP backpressure).
    pub read_pauses: Counter,
    /// Frames shed unread — header decoded, payload discarded as it arrived — because they
    /// would have grown a read buffer while the memory budget was over its capacity.
    pub frames_shed: Counter,
    /// The most unconfirmed publishes any connection has had at once (never above
    /// `max_unconfirmed`).
    pub unconfirmed_high_water: HighWater,
    /// Duration of each group commit (write + sync).
    pub commit_latency_us: LatencyStat,
}

/// Every refusal reason, in the order of [`Metrics::rejected_by_reason`].
pub const REASONS: [RejectReason; 7] = [
    RejectReason::TopicFull,
    RejectReason::MessageTooLarge,
    RejectReason::TooManyConnections,
    RejectReason::TooManyTopics,
    RejectReason::ShuttingDown,
    RejectReason::RateLimited,
    RejectReason::Overloaded,
];

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

    /// Logs every counter at info level.
    pub fn log_summary(&self) {
        let (commits, mean_us, max_us) = self.commit_latency_us.summary();
        tracing::info!(
            published = self.published.get(),
            rejected = self.rejected.get(),
            dropped = self.dropped.get(),
            delivered = self.delivered.get(),
            redelivered = self.redelivered.get(),
            acked = self.acked.get(),
            nacked = self.nacked.get(),
            ack_timeouts = self.ack_timeouts.get(),
            dead_lettered = self.dead_lettered.get(),
            dead_letter_refused = self.dead_letter_refused.get(),
            connections_refused = self.connections_refused.get(),
            read_pauses = self.read_pauses.get(),
            frames_shed = self.frames_shed.get(),
            protocol_errors = self.protocol_errors.get(),
            commits,
            commit_mean_us = mean_us,
            commit_max_us = max_us,
            "broker counters"
        );
    }
}
