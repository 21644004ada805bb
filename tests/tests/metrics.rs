//! `GET /metrics`: the Prometheus (OpenMetrics) exposition counts exactly what the broker did —
//! publishes per topic, refusals per reason — and its gauges, histograms and worker times
//! describe the broker's state.

use std::time::Duration;

use bytes::Bytes;
use prometheus_parse::{Sample, Scrape, Value};
use weir_protocol::{Ack, Frame, RejectReason, TopicSpec};
use weir_tests::wire::FRAME_TIMEOUT;
use weir_tests::{RawClient, TestBroker};

/// Longest one HTTP exchange may take before the test fails (a hang, never a measurement).
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// One parsed scrape.
struct Exposition {
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of series `name` whose labels include `labels`, if it is exposed.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .find_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                Value::Histogram(_) | Value::Summary(_) => None,
            })
    }

    /// The value of series `name` with `labels`; panics if it is not exposed.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in the exposition"))
    }

    /// The value of the per-topic series `name` of `topic`.
    fn topic(&self, name: &str, topic: &str) -> f64 {
        self.value(name, &[("topic", topic)])
    }

    /// The value of the per-group series `name` of `topic`'s `group`.
    fn group(&self, name: &str, topic: &str, group: &str) -> f64 {
        self.value(name, &[("topic", topic), ("group", group)])
    }

    /// How many observations histogram `name` holds.
    fn count(&self, name: &str) -> f64 {
        self.value(&format!("{name}_count"), &[])
    }
}

/// Scrapes `GET /metrics` of `broker` and parses it with a Prometheus text-format parser.
async fn scrape(broker: &TestBroker) -> Exposition {
    let url = format!("http://{}/metrics", broker.admin_addr);
    let (status, content_type, body) = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .into();
        let mut response = agent.get(&url).call().expect("GET /metrics answered");
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ASCII header").to_owned());
        let body = response.body_mut().read_to_string().expect("text body");
        (response.status().as_u16(), content_type, body)
    })
    .await
    .expect("scrape task");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        content_type.as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        body.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF"
    );
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    let scrape = Scrape::parse(lines).expect("the exposition parses");
    Exposition {
        samples: scrape.samples,
    }
}

/// Scrapes until `check` holds (at most [`FRAME_TIMEOUT`]): for values recorded just after the
/// client could see the event (a histogram observed once its frame is queued).
async fn scrape_until(
    broker: &TestBroker,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let exposition = scrape(broker).await;
        if check(&exposition) {
            return exposition;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spec(name: &str, max_messages: u64) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        max_messages: Some(max_messages),
        ..TopicSpec::default()
    }
}

#[tokio::test]
async fn publishes_deliveries_and_acks_are_counted_exactly_and_the_gauges_follow() {
    let broker = TestBroker::start().await;
    let mut producer = RawClient::connect(broker.addr).await;
    let created = producer.create_topic(spec("metered", 1_000)).await;
    assert!(matches!(created, Frame::TopicCreated(_)), "{created:?}");
    let before = scrape(&broker).await;
    let published_before = before.topic("weir_messages_published_total", "metered");

    let payloads: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("m{i:03}"))).collect();
    producer.publish_all("metered", payloads).await;

    let after = scrape_until(&broker, "every confirm is observed", |e| {
        e.count("weir_publish_confirm_seconds") >= 100.0
    })
    .await;
    assert_eq!(
        after.topic("weir_messages_published_total", "metered") - published_before,
        100.0
    );
    assert_eq!(after.count("weir_publish_confirm_seconds"), 100.0);
    assert_eq!(after.topic("weir_topic_depth_messages", "metered"), 100.0);
    assert_eq!(after.topic("weir_topic_bytes", "metered"), 400.0);
    assert_eq!(after.topic("weir_topic_max_messages", "metered"), 1_000.0);
    let commits = after.count("weir_commit_duration_seconds");
    assert!(
        (1.0..=100.0).contains(&commits),
        "100 publishes take 1 to 100 commits, not {commits}"
    );
    assert_eq!(after.count("weir_commit_batch_messages"), commits);
    assert_eq!(
        after.value("weir_commit_batch_messages_sum", &[]),
        100.0,
        "the batches hold every message once"
    );
    assert_eq!(after.value("weir_appends_queued", &[]), 0.0);
    let used = after.value("weir_memory_budget_used_bytes", &[]);
    let capacity = after.value("weir_memory_budget_capacity_bytes", &[]);
    assert_eq!(
        capacity,
        broker.broker.config().limits.memory_budget_bytes as f64
    );
    assert!(
        (400.0..=capacity).contains(&used),
        "the tail cache holds the 400 payload bytes within the budget: {used}"
    );

    // A subscriber takes 30 and holds them unacked: the group's gauges say so.
    let mut consumer = RawClient::connect(broker.addr).await;
    consumer.subscribe(1, "metered", "billing", 30).await;
    let delivered = consumer.deliveries(30).await;
    let held = scrape_until(&broker, "every first delivery is observed", |e| {
        e.count("weir_publish_deliver_seconds") >= 30.0
    })
    .await;
    assert_eq!(held.count("weir_publish_deliver_seconds"), 30.0);
    assert_eq!(held.topic("weir_messages_delivered_total", "metered"), 30.0);
    assert_eq!(
        held.topic("weir_messages_redelivered_total", "metered"),
        0.0
    );
    let group = |name| held.group(name, "metered", "billing");
    assert_eq!(group("weir_group_in_flight_messages"), 30.0);
    assert_eq!(group("weir_group_credit"), 0.0);
    assert_eq!(group("weir_group_pending_messages"), 70.0);
    assert_eq!(group("weir_group_members"), 1.0);
    assert!(group("weir_group_oldest_unacked_seconds") >= 0.0);
    assert_eq!(held.value("weir_connections_open", &[]), 2.0);

    // Acks are counted per topic; the messages leave the topic.
    let seqs = delivered.iter().map(|d| d.seq).collect();
    consumer.send(Frame::Ack(Ack { sub: 1, seqs })).await;
    let acked = scrape_until(&broker, "the 30 acks are applied", |e| {
        e.topic("weir_messages_acked_total", "metered") >= 30.0
    })
    .await;
    assert_eq!(acked.topic("weir_messages_acked_total", "metered"), 30.0);
    assert_eq!(acked.topic("weir_topic_depth_messages", "metered"), 70.0);
    assert_eq!(
        acked.group("weir_group_in_flight_messages", "metered", "billing"),
        0.0
    );

    // Every kind of worker reports its busy and idle time; the writer's commits were work.
    let writer = [("worker", "writer")];
    let workers = scrape_until(&broker, "the writer's commits count as busy time", |e| {
        e.value("weir_worker_busy_seconds_total", &writer) > 0.0
    })
    .await;
    for worker in ["writer", "dispatcher", "connection"] {
        for name in [
            "weir_worker_busy_seconds_total",
            "weir_worker_idle_seconds_total",
        ] {
            let seconds = workers.value(name, &[("worker", worker)]);
            assert!(seconds >= 0.0, "{name}{{worker={worker}}} = {seconds}");
        }
    }
}

#[tokio::test]
async fn a_refused_publish_is_counted_once_under_its_reason() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let created = client.create_topic(spec("tiny", 1)).await;
    assert!(matches!(created, Frame::TopicCreated(_)), "{created:?}");
    assert!(matches!(
        client.publish("tiny", "fits").await,
        Frame::PublishOk(_)
    ));
    let before = scrape(&broker).await;
    let topic_full = [("reason", "topic_full")];
    let refused_before = before.value("weir_publishes_rejected_total", &topic_full);

    match client.publish("tiny", "one too many").await {
        Frame::Rejected(r) => assert_eq!(r.reason, RejectReason::TopicFull),
        other => panic!("expected Rejected, got {other:?}"),
    }

    let after = scrape_until(&broker, "both answers are observed", |e| {
        e.count("weir_publish_confirm_seconds") >= 2.0
    })
    .await;
    assert_eq!(
        after.value("weir_publishes_rejected_total", &topic_full) - refused_before,
        1.0
    );
    assert_eq!(
        after.topic("weir_topic_publishes_rejected_total", "tiny"),
        1.0
    );
    assert_eq!(
        after.count("weir_publish_confirm_seconds"),
        2.0,
        "the refusal's answer is timed like a confirm"
    );
    for reason in ["rate_limited", "overloaded", "message_too_large"] {
        assert_eq!(
            after.value("weir_publishes_rejected_total", &[("reason", reason)]),
            0.0
        );
    }
    assert_eq!(after.topic("weir_messages_published_total", "tiny"), 1.0);
}
