//! `GET /metrics`: the broker's measurements in the OpenMetrics text format, encoded by
//! prometheus-client. A custom collector reads them at scrape time — counters and gauges from
//! the atomics of [`Metrics`] and from the admission gauges, per-topic and per-group series from
//! each topic's snapshot ([`Topic::info`](crate::topic::Topic::info),
//! [`Topic::counters`](crate::topic::Topic::counters)) — so nothing is counted twice;
//! the histograms are recorded at event time and encoded as they are.
//!
//! The names are fixed: dashboards are written against them. Counters carry the `_total`
//! suffix in the exposition; label values of `reason` are [`reason_label`]'s.
//!
//! Counters:
//! - `weir_messages_published_total{topic}` — messages committed (durable);
//! - `weir_messages_delivered_total{topic}` — deliveries sent, redeliveries included;
//! - `weir_messages_redelivered_total{topic}` — deliveries with attempt > 1;
//! - `weir_messages_acked_total{topic}` — acks, summed over the topic's groups;
//! - `weir_topic_publishes_rejected_total{topic}` — refusals of the topic's publishes;
//! - `weir_topic_dedup_duplicates_total`, `weir_topic_dedup_producers_evicted_total`,
//!   `weir_topic_dedup_ids_evicted_total`, `weir_topic_dedup_expired_total` — `{topic}`, what
//!   the topic's dedup window answered and forgot;
//! - `weir_messages_dropped_total{topic,reason="overflow"|"max_age"|"damaged"}` — `drop_oldest`
//!   evictions; messages older than the topic's `max_age`, removed; messages
//!   `weir topic repair` skipped with a damaged range;
//! - `weir_publishes_rejected_total{reason}` — every refusal, broker-wide;
//! - `weir_messages_nacked_total`, `weir_ack_timeouts_total`, `weir_key_waits_total`,
//!   `weir_key_lookahead_full_total`,
//!   `weir_messages_dead_lettered_total`, `weir_dead_letter_refused_total`,
//!   `weir_ephemeral_groups_deleted_total`,
//!   `weir_connections_refused_total`, `weir_protocol_errors_total`, `weir_read_pauses_total`,
//!   `weir_frames_shed_total`, `weir_publish_batch_frames_total`,
//!   `weir_deliver_batch_frames_total`, `weir_frame_read_timeouts_total`, `weir_storage_failures_total`,
//!   `weir_storage_damage_found_total`, `weir_state_flush_failures_total`,
//!   `weir_slow_consumers_closed_total`, `weir_idle_connections_closed_total`,
//!   `weir_replies_too_large_total`, `weir_reasons_truncated_total`,
//!   `weir_auth_failures_total`, `weir_auth_throttled_total`,
//!   `weir_tls_plaintext_refused_total`, `weir_tls_handshake_failures_total` — broker-wide, as [`Metrics`]
//!   documents them;
//! - `weir_operations_rejected_total{op}` — expensive operations refused at `ops_per_s`;
//! - `weir_forbidden_total{key,action}` — requests refused because the key (`anonymous`
//!   without one) may not take that action on that topic (see `crate::permissions`);
//! - `weir_admin_header_timeouts_total`, `weir_admin_body_timeouts_total` (408s),
//!   `weir_admin_idle_closed_total`, `weir_admin_idle_reclaimed_total`,
//!   `weir_admin_payloads_too_large_total` (413s) — the admin endpoint's own bounds (see
//!   `admin::connections`);
//! - `weir_stalls_total{kind="max_in_flight"|"no_credit"}` — one per `stall_warn_ms` of stall;
//! - `weir_worker_busy_seconds_total{worker}` and `weir_worker_idle_seconds_total{worker}`,
//!   `worker` = `writer`, `dispatcher` or `connection` — time doing work and waiting for work,
//!   summed over the workers of that kind (a span is counted when it ends).
//!
//! Gauges:
//! - `weir_topic_depth_messages`, `weir_topic_bytes`, `weir_topic_max_messages`,
//!   `weir_topic_max_bytes`, `weir_topic_parked_publishes`,
//!   `weir_topic_drain_messages_per_second` — `{topic}`, from the topic's snapshot;
//! - `weir_topic_dedup_producers`, `weir_topic_dedup_ids`, `weir_topic_dedup_memory_bytes` —
//!   `{topic}`, what the topic's dedup window remembers (bounded by `dedup.max_producers`,
//!   `dedup.max_ids`) and the memory it is charged for;
//! - `weir_topic_damaged`, `weir_topic_storage_full` — `{topic}`, 1 while the topic's storage is
//!   damaged or failed, or full (see `TopicHealth`);
//! - `weir_topic_refusing{topic,reason}` — 1 while that bound refuses the topic's publishes (a
//!   refusal in the last two seconds), absent otherwise;
//! - `weir_group_in_flight_messages`, `weir_group_pending_messages`, `weir_group_credit`,
//!   `weir_group_members`, `weir_group_dead_letter_held`, `weir_group_ephemeral` (1 for an
//!   ephemeral group, 0 for a durable one) — `{topic,group}`;
//! - `weir_group_oldest_unacked_seconds{topic,group}` — 0 with nothing in flight;
//! - `weir_connections_open`, `weir_memory_budget_used_bytes`,
//!   `weir_memory_budget_high_water_bytes`, `weir_memory_budget_capacity_bytes`,
//!   `weir_appends_queued`;
//! - `weir_memory_pool_used_bytes{pool}`, `weir_memory_pool_capacity_bytes{pool}` — the
//!   `inbound` and `outbound` halves of the budget;
//! - `weir_storage_used_bytes`, `weir_storage_max_bytes`, `weir_storage_free_bytes`,
//!   `weir_storage_min_free_bytes` — the disk budget.
//!
//! Histograms ([`Metrics`] says exactly what each measures): `weir_commit_duration_seconds`,
//! `weir_commit_batch_messages`, `weir_publish_confirm_seconds`, `weir_publish_deliver_seconds`.
//!
//! Bounds: a scrape holds each topic's lock only while it copies the topic's snapshot; its size
//! grows with topics × groups, at most `max_topics` × `max_groups_per_topic` series per group
//! metric.

use std::fmt;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use weir_protocol::{GroupInfo, TopicHealth, TopicInfo};

use crate::admission::Work;
use crate::broker::Broker;
use crate::metrics::{reason_label, Metrics, REASONS};
use crate::permissions::Action;
use crate::topic::TopicCounterSnapshot;

/// The content type of the exposition (OpenMetrics text, what prometheus-client encodes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: the whole exposition, encoded from in-memory state (no disk access).
pub async fn scrape(State(broker): State<Broker>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(broker)));
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(fmt::Error) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Reads every measurement of one broker when scraped.
struct Exposition(Broker);

impl fmt::Debug for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exposition")
    }
}

impl Collector for Exposition {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        let broker = &self.0;
        let topics: Vec<Snapshot> = broker
            .topics()
            .iter()
            .map(|t| (t.info(), t.counters()))
            .collect();
        let metrics = broker.metrics();
        broker_counters(&mut out, metrics)?;
        forbidden(&mut out, broker)?;
        topic_series(&mut out, &topics)?;
        group_series(&mut out, &topics)?;
        broker_gauges(&mut out, broker)?;
        histograms(&mut out, metrics)
    }
}

/// One topic as a scrape sees it.
type Snapshot = (TopicInfo, TopicCounterSnapshot);

/// The label set of an unlabelled series.
const NO_LABELS: [(&str, &str); 0] = [];

/// Encodes one metric family: its descriptor (`kind` is a counter or a gauge), then one sample
/// per `(labels, value)`.
fn family<L, V>(
    out: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeCounterValue + EncodeGaugeValue,
{
    let mut metric = out.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        if kind == MetricType::Counter {
            ConstCounter::new(value).encode(sample)?;
        } else {
            ConstGauge::new(value).encode(sample)?;
        }
    }
    Ok(())
}

/// Broker-wide counters from [`Metrics`].
fn broker_counters(out: &mut DescriptorEncoder, m: &Metrics) -> fmt::Result {
    use MetricType::Counter;
    let plain = [
        (
            "weir_messages_nacked",
            "Messages nacked (redelivered after a delay, or dead-lettered).",
            m.nacked.get(),
        ),
        (
            "weir_ack_timeouts",
            "Deliveries that passed their ack deadline.",
            m.ack_timeouts.get(),
        ),
        (
            "weir_key_waits",
            "Messages of key-ordered groups that waited for a message with their weir-key.",
            m.key_waits.get(),
        ),
        (
            "weir_key_lookahead_full",
            "Times a key-ordered group stopped reading at groups.key_lookahead waiting messages.",
            m.key_lookahead_full.get(),
        ),
        (
            "weir_messages_dead_lettered",
            "Messages moved to a dead-letter topic.",
            m.dead_lettered.get(),
        ),
        (
            "weir_dead_letter_refused",
            "Moves a full dead-letter topic refused (the message stays in flight, retried).",
            m.dead_letter_refused.get(),
        ),
        (
            "weir_ephemeral_groups_deleted",
            "Ephemeral groups deleted because their last subscription left.",
            m.ephemeral_groups_deleted.get(),
        ),
        (
            "weir_connections_refused",
            "Connections refused at max_connections or max_connections_per_ip.",
            m.connections_refused.get(),
        ),
        (
            "weir_protocol_errors",
            "Connections closed for a protocol error.",
            m.protocol_errors.get(),
        ),
        (
            "weir_read_pauses",
            "Times a connection stopped reading at max_unconfirmed.",
            m.read_pauses.get(),
        ),
        (
            "weir_frames_shed",
            "Publishes shed unread: no memory to buffer them, or a header over max_header_bytes.",
            m.frames_shed.get(),
        ),
        (
            "weir_publish_batch_frames",
            "PublishBatch frames read (each message counts as a publish).",
            m.publish_batches.get(),
        ),
        (
            "weir_deliver_batch_frames",
            "DeliverBatch frames written (each delivery counts as a delivery).",
            m.deliver_batches.get(),
        ),
        (
            "weir_frame_read_timeouts",
            "Connections closed because a frame stopped arriving (frame_read_timeout).",
            m.frame_read_timeouts.get(),
        ),
        (
            "weir_storage_failures",
            "Commits failed by an I/O error other than a full disk (the topic is fenced).",
            m.storage_failures.get(),
        ),
        (
            "weir_storage_damage_found",
            "Times a topic's log was found damaged (at start or reading for delivery).",
            m.storage_damage_found.get(),
        ),
        (
            "weir_state_flush_failures",
            "Periodic flushes of the state store (group cursors, acks) that failed.",
            m.state_flush_failures.get(),
        ),
        (
            "weir_slow_consumers_closed",
            "Connections closed for accepting no bytes for slow_consumer_timeout.",
            m.slow_consumers_closed.get(),
        ),
        (
            "weir_idle_connections_closed",
            "Connections closed after idle_timeout with no subscription and no frame.",
            m.idle_closed.get(),
        ),
        (
            "weir_replies_too_large",
            "Answers that did not fit in a frame, replaced by Error{FrameTooLarge}.",
            m.replies_too_large.get(),
        ),
        (
            "weir_reasons_truncated",
            "Term reasons cut to max_reason_bytes.",
            m.reasons_truncated.get(),
        ),
        (
            "weir_auth_failures",
            "Authentications refused (missing or wrong token, anonymous off loopback).",
            m.auth_failures.get(),
        ),
        (
            "weir_auth_throttled",
            "Connections and admin requests refused at max_auth_failures_per_s.",
            m.auth_throttled.get(),
        ),
        (
            "weir_tls_plaintext_refused",
            "Connections refused on a TLS port because the client spoke plaintext.",
            m.tls_plaintext_refused.get(),
        ),
        (
            "weir_tls_handshake_failures",
            "TLS handshakes that failed or did not finish in time.",
            m.tls_handshake_failures.get(),
        ),
        (
            "weir_admin_header_timeouts",
            "Admin connections closed at admin.header_read_timeout_ms (headers incomplete).",
            m.admin_header_timeouts.get(),
        ),
        (
            "weir_admin_body_timeouts",
            "Admin requests answered 408 at admin.body_read_timeout_ms (body incomplete).",
            m.admin_body_timeouts.get(),
        ),
        (
            "weir_admin_idle_closed",
            "Kept-alive admin connections closed at admin.idle_timeout_ms.",
            m.admin_idle_closed.get(),
        ),
        (
            "weir_admin_idle_reclaimed",
            "Idle kept-alive admin connections closed for a connection waiting at admin.max_connections.",
            m.admin_idle_reclaimed.get(),
        ),
        (
            "weir_admin_payloads_too_large",
            "Admin requests answered 413 (body over max_frame_bytes or max_message_bytes).",
            m.admin_too_large.get(),
        ),
    ];
    for (name, help, value) in plain {
        family(out, (name, help, Counter), [(NO_LABELS, value)])?;
    }
    let rejected = REASONS.map(|r| ([("reason", reason_label(r))], m.refusals(r)));
    let help = "Publishes (and connections) refused, by reason.";
    family(out, ("weir_publishes_rejected", help, Counter), rejected)?;
    let ops = Work::OPS
        .iter()
        .zip(&m.ops_rejected)
        .map(|(op, n)| ([("op", op.label())], n.get()));
    let help = "Expensive operations refused at their key's ops_per_s, by operation.";
    family(out, ("weir_operations_rejected", help, Counter), ops)?;
    let stalls = [
        ([("kind", "max_in_flight")], m.stalls_max_in_flight.get()),
        ([("kind", "no_credit")], m.stalls_no_credit.get()),
    ];
    let help = "Stalls (at max_in_flight, or no credit while messages wait), per stall_warn_ms.";
    family(out, ("weir_stalls", help, Counter), stalls)?;
    let workers = m.workers.by_kind();
    let busy = workers.map(|(kind, t)| ([("worker", kind)], t.busy().as_secs_f64()));
    let help = "Seconds the workers of a kind spent doing work.";
    family(out, ("weir_worker_busy_seconds", help, Counter), busy)?;
    let idle = workers.map(|(kind, t)| ([("worker", kind)], t.idle().as_secs_f64()));
    let help = "Seconds the workers of a kind spent waiting for work.";
    family(out, ("weir_worker_idle_seconds", help, Counter), idle)
}

/// `weir_forbidden_total{key,action}`: every configured key's (and anonymous's) refused
/// actions, one series per key name and action (bounded by the config; keys sharing a name
/// are summed, so no series repeats).
fn forbidden(out: &mut DescriptorEncoder, broker: &Broker) -> fmt::Result {
    let mut by_key: std::collections::BTreeMap<&str, [u64; 4]> = Default::default();
    for access in broker.keys().accesses() {
        let counts = by_key.entry(access.name()).or_default();
        for (count, action) in counts.iter_mut().zip(Action::ALL) {
            *count += access.denied(action);
        }
    }
    let samples = by_key.iter().flat_map(|(key, counts)| {
        Action::ALL
            .iter()
            .zip(counts)
            .map(move |(action, count)| ([("key", *key), ("action", action.name())], *count))
    });
    let help = "Requests refused because the key may not take that action on that topic.";
    family(out, ("weir_forbidden", help, MetricType::Counter), samples)
}

/// A per-topic series read from the topic's snapshot: name, help, type, value.
type TopicSeries = (&'static str, &'static str, MetricType, fn(&Snapshot) -> u64);

/// Every per-topic series labelled by `topic` alone.
const TOPIC_SERIES: [TopicSeries; 20] = [
    (
        "weir_messages_published",
        "Messages committed (durable) to the topic.",
        MetricType::Counter,
        |(_, c)| c.published,
    ),
    (
        "weir_messages_delivered",
        "Deliveries sent to the topic's subscribers, redeliveries included.",
        MetricType::Counter,
        |(_, c)| c.delivered,
    ),
    (
        "weir_messages_redelivered",
        "Deliveries with attempt > 1.",
        MetricType::Counter,
        |(_, c)| c.redelivered,
    ),
    (
        "weir_messages_acked",
        "Messages acked, summed over the topic's groups.",
        MetricType::Counter,
        |(_, c)| c.acked,
    ),
    (
        "weir_topic_publishes_rejected",
        "Publishes to the topic refused, any reason.",
        MetricType::Counter,
        |(t, _)| t.rejected,
    ),
    (
        "weir_topic_depth_messages",
        "Messages stored (not yet acked by every group).",
        MetricType::Gauge,
        |(t, _)| t.depth,
    ),
    (
        "weir_topic_bytes",
        "Payload bytes stored.",
        MetricType::Gauge,
        |(t, _)| t.bytes,
    ),
    (
        "weir_topic_max_messages",
        "The topic's max_messages bound.",
        MetricType::Gauge,
        |(t, _)| t.config.max_messages,
    ),
    (
        "weir_topic_max_bytes",
        "The topic's max_bytes bound.",
        MetricType::Gauge,
        |(t, _)| t.config.max_bytes,
    ),
    (
        "weir_topic_parked_publishes",
        "Publishes parked by the block policy.",
        MetricType::Gauge,
        |(t, _)| t.parked,
    ),
    (
        "weir_topic_drain_messages_per_second",
        "Messages leaving the topic per second, lately.",
        MetricType::Gauge,
        |(t, _)| t.drain_per_s,
    ),
    (
        "weir_topic_damaged",
        "1 while the topic's log is damaged or its storage failed (publishes refused until repaired).",
        MetricType::Gauge,
        |(t, _)| u64::from(matches!(t.health, TopicHealth::Damaged { .. } | TopicHealth::Failed { .. })),
    ),
    (
        "weir_topic_storage_full",
        "1 while the topic's last commit found the disk full (publishes refused StorageFull).",
        MetricType::Gauge,
        |(t, _)| u64::from(matches!(t.health, TopicHealth::Full { .. })),
    ),
    (
        "weir_topic_dedup_duplicates",
        "Publishes answered as duplicates by the topic's dedup window (nothing stored).",
        MetricType::Counter,
        |(_, c)| c.dedup.duplicates,
    ),
    (
        "weir_topic_dedup_producers",
        "Producers the topic's dedup window remembers (at most dedup.max_producers).",
        MetricType::Gauge,
        |(_, c)| c.dedup_producers,
    ),
    (
        "weir_topic_dedup_ids",
        "Explicit message ids the topic's dedup window remembers (at most dedup.max_ids).",
        MetricType::Gauge,
        |(_, c)| c.dedup_ids,
    ),
    (
        "weir_topic_dedup_memory_bytes",
        "Bytes of the memory budget the topic's dedup window is charged for.",
        MetricType::Gauge,
        |(_, c)| c.dedup_memory_bytes,
    ),
    (
        "weir_topic_dedup_producers_evicted",
        "Producers the dedup window forgot at dedup.max_producers (least recently heard first).",
        MetricType::Counter,
        |(_, c)| c.dedup.producers_evicted,
    ),
    (
        "weir_topic_dedup_ids_evicted",
        "Message ids the dedup window forgot at dedup.max_ids (oldest first).",
        MetricType::Counter,
        |(_, c)| c.dedup.ids_evicted,
    ),
    (
        "weir_topic_dedup_expired",
        "Message ids and quiet producers the dedup window forgot at the end of dedup.window_ms.",
        MetricType::Counter,
        |(_, c)| c.dedup.expired,
    ),
];

/// The per-topic series.
fn topic_series(out: &mut DescriptorEncoder, topics: &[Snapshot]) -> fmt::Result {
    for (name, help, kind, value) in TOPIC_SERIES {
        let samples = topics
            .iter()
            .map(|s| ([("topic", topic_name(s))], value(s)));
        family(out, (name, help, kind), samples)?;
    }
    let dropped = topics.iter().flat_map(|s| {
        let (damaged, aged) = (s.1.dropped_damaged, s.1.dropped_max_age);
        [
            (
                [("topic", topic_name(s)), ("reason", "overflow")],
                s.0.dropped.saturating_sub(damaged).saturating_sub(aged),
            ),
            ([("topic", topic_name(s)), ("reason", "max_age")], aged),
            ([("topic", topic_name(s)), ("reason", "damaged")], damaged),
        ]
    });
    let help = "Messages dropped: evicted by the drop_oldest policy (overflow), removed for \
                being older than the topic's max_age (max_age), or skipped with a damaged \
                range by `weir topic repair` (damaged).";
    family(
        out,
        ("weir_messages_dropped", help, MetricType::Counter),
        dropped,
    )?;
    let refusing = topics.iter().filter_map(|s| {
        let r = s.0.refusing.as_ref()?;
        Some((
            [("topic", topic_name(s)), ("reason", reason_label(r.reason))],
            1u64,
        ))
    });
    let help = "1 while a bound refuses the topic's publishes (refused in the last 2 s).";
    family(
        out,
        ("weir_topic_refusing", help, MetricType::Gauge),
        refusing,
    )
}

/// The name of a snapshot's topic (its `topic` label).
fn topic_name(s: &Snapshot) -> &str {
    &s.0.config.name
}

/// A per-group gauge read from the group's snapshot: name, help, value.
type GroupSeries = (&'static str, &'static str, fn(&GroupInfo) -> u64);

/// Every per-group gauge with an integer value.
const GROUP_SERIES: [GroupSeries; 6] = [
    (
        "weir_group_in_flight_messages",
        "Messages delivered to the group and not yet acked.",
        |g| g.in_flight,
    ),
    (
        "weir_group_pending_messages",
        "Messages stored and not yet delivered to the group.",
        |g| g.pending,
    ),
    (
        "weir_group_credit",
        "Credit granted by the group's members and not yet used.",
        |g| g.credit,
    ),
    (
        "weir_group_members",
        "Subscriptions attached to the group.",
        |g| u64::from(g.members),
    ),
    (
        "weir_group_dead_letter_held",
        "Messages held in flight because their dead-letter topic is full.",
        |g| g.dead_letter_held,
    ),
    (
        "weir_group_ephemeral",
        "1 for an ephemeral group (deleted when its last subscription leaves), 0 for a durable one.",
        |g| u64::from(g.ephemeral),
    ),
];

/// The per-group series.
fn group_series(out: &mut DescriptorEncoder, topics: &[Snapshot]) -> fmt::Result {
    let groups = || {
        topics.iter().flat_map(|s| {
            let topic = topic_name(s);
            s.0.groups
                .iter()
                .map(move |g| ([("topic", topic), ("group", g.name.as_str())], g))
        })
    };
    for (name, help, value) in GROUP_SERIES {
        let samples = groups().map(|(labels, g)| (labels, value(g)));
        family(out, (name, help, MetricType::Gauge), samples)?;
    }
    let oldest = groups().map(|(labels, g)| {
        let ms = g.oldest_unacked_ms.unwrap_or(0);
        (labels, ms as f64 / 1e3)
    });
    let help = "Age of the group's oldest unacked delivery (0 with nothing in flight).";
    family(
        out,
        ("weir_group_oldest_unacked_seconds", help, MetricType::Gauge),
        oldest,
    )
}

/// Broker-wide gauges: connections, the memory budget and its halves, the disk budget, queued
/// appends.
fn broker_gauges(out: &mut DescriptorEncoder, broker: &Broker) -> fmt::Result {
    let admission = broker.admission();
    let budget = admission.budget();
    let halves = [
        ("inbound", admission.inbound()),
        ("outbound", admission.outbound()),
    ];
    let used = halves.map(|(pool, b)| ([("pool", pool)], b.used()));
    let help = "Bytes held in each half of the memory budget (inbound: reads, publishes, caches; outbound: deliveries).";
    family(
        out,
        ("weir_memory_pool_used_bytes", help, MetricType::Gauge),
        used,
    )?;
    let capacity = halves.map(|(pool, b)| ([("pool", pool)], b.capacity()));
    let help = "The capacity of each half of the memory budget.";
    family(
        out,
        ("weir_memory_pool_capacity_bytes", help, MetricType::Gauge),
        capacity,
    )?;
    let disk = broker.disk();
    let gauges = [
        (
            "weir_connections_open",
            "Client connections open.",
            broker.metrics().connections.get(),
        ),
        (
            "weir_memory_budget_used_bytes",
            "Bytes held against the memory budget.",
            budget.used(),
        ),
        (
            "weir_memory_budget_high_water_bytes",
            "The most bytes ever held against the memory budget at once.",
            budget.high_water(),
        ),
        (
            "weir_memory_budget_capacity_bytes",
            "The memory budget (limits.memory_budget_bytes).",
            budget.capacity(),
        ),
        (
            "weir_appends_queued",
            "Appends waiting for their commit, all topics.",
            admission.overload().queued_now(),
        ),
        (
            "weir_storage_used_bytes",
            "Bytes the topics' logs take on disk.",
            disk.stored(),
        ),
        (
            "weir_storage_max_bytes",
            "The disk budget for message data (storage.max_bytes).",
            disk.max_bytes(),
        ),
        (
            "weir_storage_free_bytes",
            "Free space on the data directory's filesystem, as last measured.",
            disk.free(),
        ),
        (
            "weir_storage_min_free_bytes",
            "Free space the broker leaves on the filesystem (storage.min_free_bytes).",
            disk.min_free(),
        ),
        (
            "weir_state_store_failing",
            "1 while the last periodic flush of the state store failed.",
            u64::from(
                broker
                    .metrics()
                    .state_store_failing
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        ),
    ];
    for (name, help, value) in gauges {
        family(out, (name, help, MetricType::Gauge), [(NO_LABELS, value)])?;
    }
    Ok(())
}

/// The histograms, as recorded.
fn histograms(out: &mut DescriptorEncoder, m: &Metrics) -> fmt::Result {
    let all = [
        (
            "weir_commit_duration_seconds",
            "One group commit: write, sync (per fsync policy), acked segments deleted.",
            m.commit_duration.histogram(),
        ),
        (
            "weir_commit_batch_messages",
            "Messages per group commit.",
            m.commit_batch.histogram(),
        ),
        (
            "weir_publish_confirm_seconds",
            "From a publish received to its answer (ok, refused or failed) queued.",
            m.publish_confirm.histogram(),
        ),
        (
            "weir_publish_deliver_seconds",
            "From a message's append to its first delivery to a group being queued.",
            m.publish_deliver.histogram(),
        ),
    ];
    for (name, help, histogram) in all {
        let metric = out.encode_descriptor(name, help, None, histogram.metric_type())?;
        histogram.encode(metric)?;
    }
    Ok(())
}
