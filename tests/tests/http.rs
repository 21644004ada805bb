//! The HTTP admin endpoint's topics and publish routes: `201` only once durable, refusals with
//! the status, `Retry-After` and JSON body of the bound that fired, authentication as on the
//! wire, and what `GET /topics/{name}` shows of a full topic.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use weir_broker::{ApiKey, RateConfig};
use weir_client::{Client, Delivery, OverflowPolicy, RejectReason, Subscription, TopicSpec};
use weir_tests::{eventually, TestBroker};

/// Longest any one HTTP exchange may take before the test fails (a hang, never a measurement).
pub(crate) const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// What the admin endpoint answered.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) www_authenticate: Option<String>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// An HTTP client that returns 4xx and 5xx answers instead of failing on them.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .into()
}

pub(crate) fn answer(mut response: ureq::http::Response<ureq::Body>) -> Answer {
    let header = |name: &str| {
        let value = response.headers().get(name)?;
        Some(value.to_str().expect("ASCII header").to_owned())
    };
    let (retry_after, www_authenticate) = (header("retry-after"), header("www-authenticate"));
    Answer {
        status: response.status().as_u16(),
        retry_after,
        www_authenticate,
        body: response.body_mut().read_to_string().expect("readable body"),
    }
}

/// `GET path` on the broker's admin endpoint.
pub(crate) async fn get(broker: &TestBroker, path: &str) -> Answer {
    let url = format!("http://{}{path}", broker.admin_addr);
    tokio::task::spawn_blocking(move || answer(agent().get(&url).call().expect("GET answered")))
        .await
        .expect("GET task")
}

/// `POST /topics/{topic}/messages` with `headers` and `body`.
async fn post(broker: &TestBroker, topic: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let url = format!("http://{}/topics/{topic}/messages", broker.admin_addr);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|&(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut request = agent().post(&url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        answer(request.send(&body[..]).expect("POST answered"))
    })
    .await
    .expect("POST task")
}

/// Asserts `answer` is `201 {"topic", "seq"}` for `topic`; returns the sequence.
fn created(answer: &Answer, topic: &str) -> u64 {
    assert_eq!(answer.status, 201, "{}", answer.body);
    let json = answer.json();
    assert_eq!(json["topic"], topic, "{json}");
    json["seq"].as_u64().expect("a numeric seq")
}

/// The next delivery; fails the test if none arrives in time or the stream ends or errs.
async fn next(sub: &mut Subscription) -> Delivery {
    let next = tokio::time::timeout(HTTP_TIMEOUT, sub.next()).await;
    next.expect("a delivery in time")
        .expect("stream open")
        .expect("delivery")
}

fn topic(name: &str) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        ..TopicSpec::default()
    }
}

pub(crate) fn key(name: &str, rate: Option<RateConfig>) -> ApiKey {
    ApiKey::with_token(name, &format!("token-{name}"), rate)
}

#[tokio::test]
async fn a_post_is_created_once_durable_and_consumed_with_its_headers() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    client.create_topic(topic("http-orders")).await.unwrap();
    let next_seq = get(&broker, "/topics/http-orders").await.json()["next_seq"].as_u64();

    let headers = [
        ("weir-header-trace", "abc"),
        ("Weir-Header-Tenant", "acme"),
        ("content-type", "application/octet-stream"),
    ];
    let first = created(
        &post(&broker, "http-orders", &headers, b"first").await,
        "http-orders",
    );
    let second = created(
        &post(&broker, "http-orders", &[], &[0, 255, 7]).await,
        "http-orders",
    );
    assert_eq!((Some(first), second), (next_seq, first + 1));
    let exposition = get(&broker, "/metrics").await.body;
    let confirms = exposition
        .lines()
        .find_map(|line| line.strip_prefix("weir_publish_confirm_seconds_count "))
        .map(str::trim);
    assert_eq!(
        confirms,
        Some("2"),
        "HTTP publishes are timed like wire ones"
    );

    let mut sub = client
        .subscribe("http-orders", "readers", 10)
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.seq(), d.payload().as_ref()), (first, &b"first"[..]));
    assert_eq!(d.header("trace"), Some("abc"));
    assert_eq!(d.header("tenant"), Some("acme"), "names arrive lowercase");
    assert_eq!(d.headers().len(), 2, "only weir-header-* become headers");
    d.ack();
    let d = next(&mut sub).await;
    assert_eq!((d.seq(), d.payload().as_ref()), (second, &[0, 255, 7][..]));
    assert!(d.headers().is_empty());
    d.ack();
}

#[tokio::test]
async fn a_full_topic_answers_429_with_retry_after_and_shows_what_refuses() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let spec = TopicSpec {
        max_messages: Some(1),
        ..topic("http-full")
    };
    client.create_topic(spec).await.unwrap();
    created(&post(&broker, "http-full", &[], b"one").await, "http-full");

    let refused = post(&broker, "http-full", &[], b"two").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let body = refused.json();
    assert_eq!(body["reason"], "topic_full");
    assert_eq!(body["limit"], json!({"name": "max_messages", "value": 1}));
    assert!(body.get("held_by").is_none(), "no group holds it: {body}");
    let retry_ms = body["retry_after_ms"].as_u64().expect("a retry hint");
    let retry_s: u64 = refused
        .retry_after
        .as_deref()
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in whole seconds");
    assert_eq!(retry_s, retry_ms.div_ceil(1000).max(1));
    let metrics = broker.broker.metrics();
    assert_eq!(metrics.refusals(RejectReason::TopicFull), 1);

    let shown = get(&broker, "/topics/http-full").await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let info = shown.json();
    assert_eq!(info["name"], "http-full");
    assert_eq!(
        (info["depth"].as_u64(), info["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(info["bounds"]["max_messages"], 1);
    assert_eq!(
        (info["overflow"].as_str(), info["fsync"].as_str()),
        (Some("reject"), Some("batch"))
    );
    let refusing = &info["refusing"];
    assert_eq!(refusing["reason"], "topic_full", "{info}");
    assert_eq!(refusing["limit"]["name"], "max_messages");
    assert_eq!(refusing["last_second"], 1);

    let listed = get(&broker, "/topics").await.json();
    let names: Vec<&str> = listed["topics"]
        .as_array()
        .expect("a topic list")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["http-full"]);

    // A group that has not acked the stored message holds the topic: the refusal names it.
    let _billing = client.subscribe("http-full", "billing", 1).await.unwrap();
    let refused = post(&broker, "http-full", &[], b"three").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["held_by"], "billing");
}

#[tokio::test]
async fn a_group_shows_its_in_flight_messages_and_settings() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    client.create_topic(topic("http-groups")).await.unwrap();
    created(
        &post(&broker, "http-groups", &[], b"m").await,
        "http-groups",
    );
    let mut sub = client.subscribe("http-groups", "billing", 4).await.unwrap();
    let held = next(&mut sub).await;

    let info = get(&broker, "/topics/http-groups").await.json();
    let group = &info["groups"][0];
    assert_eq!(group["name"], "billing", "{info}");
    assert_eq!(
        (group["members"].as_u64(), group["in_flight"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(group["oldest_unacked_ms"].is_u64(), "{group}");
    assert_eq!(group["settings"]["dead_letter_topic"], "http-groups.dlq");
    assert!(info["refusing"].is_null());
    held.ack();
}

#[tokio::test]
async fn a_block_topic_holds_the_request_until_an_ack_makes_room() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let spec = TopicSpec {
        max_messages: Some(1),
        overflow: Some(OverflowPolicy::Block),
        max_block_ms: Some(60_000),
        ..topic("http-block")
    };
    client.create_topic(spec).await.unwrap();
    let first = created(
        &post(&broker, "http-block", &[], b"one").await,
        "http-block",
    );

    let parked = tokio::spawn({
        let url = format!("http://{}/topics/http-block/messages", broker.admin_addr);
        async move {
            tokio::task::spawn_blocking(move || {
                answer(agent().post(&url).send(&b"two"[..]).unwrap())
            })
            .await
            .unwrap()
        }
    });
    let topic = broker.broker.topic("http-block").expect("topic exists");
    eventually("the HTTP publish is parked", || topic.info().parked == 1).await;
    assert!(
        !parked.is_finished(),
        "a parked publish is not answered yet"
    );

    let mut sub = client.subscribe("http-block", "g", 1).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.seq(), first);
    d.ack();
    let second = created(&parked.await.unwrap(), "http-block");
    assert_eq!(second, first + 1);
    assert_eq!(next(&mut sub).await.payload().as_ref(), b"two");
}

#[tokio::test]
async fn a_payload_over_max_message_bytes_is_413_without_a_retry_hint() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let spec = TopicSpec {
        max_message_bytes: Some(16),
        ..topic("http-small")
    };
    client.create_topic(spec).await.unwrap();

    let refused = post(&broker, "http-small", &[], &[b'x'; 17]).await;
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(
        refused.json(),
        json!({
            "reason": "message_too_large",
            "limit": {"name": "max_message_bytes", "value": 16},
            "retry_after_ms": null
        })
    );
    assert_eq!(refused.retry_after, None);
    created(
        &post(&broker, "http-small", &[], &[b'x'; 16]).await,
        "http-small",
    );
}

#[tokio::test]
async fn headers_count_over_http_too() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_headers = 2;
        c.limits.max_header_bytes = 64;
    })
    .await;
    let client = Client::connect(broker.addr).await.unwrap();
    let spec = TopicSpec {
        max_message_bytes: Some(16),
        ..topic("http-headers")
    };
    client.create_topic(spec).await.unwrap();
    let refused_naming = |answer: Answer, bound: &str, value: u64| {
        assert_eq!(answer.status, 413, "{}", answer.body);
        assert_eq!(
            answer.json()["limit"],
            json!({"name": bound, "value": value})
        );
    };
    // Header bytes count against max_message_bytes: 10 of payload and 8 of header.
    let answer = post(
        &broker,
        "http-headers",
        &[("weir-header-k", "1234567")],
        &[1; 10],
    )
    .await;
    refused_naming(answer, "max_message_bytes", 16);
    let three = [
        ("weir-header-a", "1"),
        ("weir-header-b", "2"),
        ("weir-header-c", "3"),
    ];
    refused_naming(
        post(&broker, "http-headers", &three, b"x").await,
        "max_headers",
        2,
    );
    let long = "v".repeat(64);
    refused_naming(
        post(&broker, "http-headers", &[("weir-header-k", &long)], b"x").await,
        "max_header_bytes",
        64,
    );
    created(
        &post(&broker, "http-headers", &[("weir-header-k", "v")], &[1; 14]).await,
        "http-headers",
    );
}

#[tokio::test]
async fn a_body_over_max_frame_bytes_is_413_naming_the_frame_limit() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_frame_bytes = 64 * 1024;
        c.topic_defaults.max_message_bytes = 1024;
    })
    .await;
    let refused = post(&broker, "http-frames", &[], &vec![0u8; 64 * 1024 + 1]).await;
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(
        refused.json()["limit"],
        json!({"name": "max_frame_bytes", "value": 65536})
    );
    let metrics = broker.broker.metrics();
    assert_eq!(metrics.refusals(RejectReason::MessageTooLarge), 1);
}

#[tokio::test]
async fn an_unknown_topic_is_404_when_auto_create_is_off() {
    let broker = TestBroker::start_with(|c| c.limits.auto_create_topics = false).await;
    let published = post(&broker, "nowhere", &[], b"lost?").await;
    assert_eq!(published.status, 404, "{}", published.body);
    assert_eq!(published.json(), json!({"error": "unknown topic nowhere"}));
    let shown = get(&broker, "/topics/nowhere").await;
    assert_eq!(shown.status, 404, "{}", shown.body);
    assert_eq!(shown.json()["error"], "unknown topic nowhere");
    assert!(broker.broker.topic("nowhere").is_none());
}

#[tokio::test]
async fn with_keys_a_missing_token_is_401_and_a_wrong_one_403() {
    let broker = TestBroker::start_with(|c| c.keys = vec![key("http", None)]).await;
    let missing = post(&broker, "keyed", &[], b"m").await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.www_authenticate.as_deref(), Some("Bearer"));
    assert!(missing.json()["error"].is_string());

    let wrong = post(&broker, "keyed", &[("authorization", "Bearer nope")], b"m").await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);

    let right = post(
        &broker,
        "keyed",
        &[("authorization", "Bearer token-http")],
        b"m",
    )
    .await;
    created(&right, "keyed");
}

#[tokio::test]
async fn a_key_over_its_rate_is_429_rate_limited() {
    let once = RateConfig {
        messages_per_s: 1,
        messages_burst: 1,
        ..RateConfig::default()
    };
    let broker = TestBroker::start_with(|c| c.keys = vec![key("slow", Some(once))]).await;
    let auth = [("authorization", "Bearer token-slow")];
    created(&post(&broker, "rated", &auth, b"1").await, "rated");
    let refused = post(&broker, "rated", &auth, b"2").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let body = refused.json();
    assert_eq!(body["reason"], "rate_limited");
    assert_eq!(body["limit"], json!({"name": "messages_per_s", "value": 1}));
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
}

#[tokio::test]
async fn readiness_and_liveness_answer_200() {
    let broker = TestBroker::start().await;
    assert_eq!(get(&broker, "/readyz").await.status, 200);
    assert_eq!(get(&broker, "/healthz").await.status, 200);
    assert_eq!(get(&broker, "/topics").await.json(), json!({"topics": []}));
}

/// Sends a raw HTTP/1.1 request head (and `body`) and reads the first response line, or `None`
/// if none arrives within `wait`.
async fn first_line(
    stream: &mut tokio::net::TcpStream,
    request: &str,
    wait: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().map(str::to_owned)
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: weir\r\n\r\n";

#[tokio::test]
async fn past_max_concurrent_requests_a_request_gets_503_with_retry_after_at_once() {
    let broker = TestBroker::start_with(|c| c.admin.max_concurrent_requests = 1).await;
    let mut slow = tokio::net::TcpStream::connect(broker.admin_addr)
        .await
        .unwrap();
    // A publish whose body never finishes holds the only request slot.
    let head =
        "POST /topics/t/messages HTTP/1.1\r\nHost: weir\r\nContent-Length: 100\r\n\r\npartial";
    assert!(first_line(&mut slow, head, Duration::from_millis(100))
        .await
        .is_none());
    let mut other = tokio::net::TcpStream::connect(broker.admin_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    other.write_all(HEALTHZ.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = other.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    // Once the slow client goes, its slot is given back (polled: nothing to await).
    drop(slow);
    let mut again = tokio::net::TcpStream::connect(broker.admin_addr)
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..100 {
        let line = first_line(&mut again, HEALTHZ, Duration::from_secs(5))
            .await
            .unwrap();
        if line.contains("200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "requests pass again once the slow one is gone");
}

#[tokio::test]
async fn past_max_connections_the_next_connection_waits_until_one_closes() {
    let broker = TestBroker::start_with(|c| {
        c.admin.max_connections = 1;
        c.admin.header_read_timeout_ms = 60_000;
    })
    .await;
    let mut first = tokio::net::TcpStream::connect(broker.admin_addr)
        .await
        .unwrap();
    // `first` stays open mid-request (an idle kept-alive connection would give up its slot):
    // the second connection is not served...
    let partial = "GET /healthz HTTP/1.1\r\nHost: weir\r\n";
    assert!(first_line(&mut first, partial, Duration::from_millis(100))
        .await
        .is_none());
    let mut second = tokio::net::TcpStream::connect(broker.admin_addr)
        .await
        .unwrap();
    assert!(
        first_line(&mut second, HEALTHZ, Duration::from_millis(300))
            .await
            .is_none(),
        "served past admin.max_connections"
    );
    // ...until the first one closes.
    drop(first);
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200"));
}
