//! The admin endpoint under hostile clients: silent connections, stalled and oversized
//! bodies, idle kept-alive connections and guessed tokens each meet their bound, and all the
//! while a healthy neighbour's `GET /healthz` (and, where it applies, an HTTP publish) is
//! answered.
//!
//! Timeouts are small so the tests are fast; nothing asserts on speed — every wait is bounded
//! by [`HTTP_TIMEOUT`] only to turn a hang into a failure.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_broker::Config;
use weir_tests::TestBroker;

use crate::http::{agent, answer, key, Answer, HTTP_TIMEOUT};

/// Small admin bounds: four connections, 300 ms for headers, bodies and idleness.
fn bounded(c: &mut Config) {
    c.admin.max_connections = 4;
    c.admin.header_read_timeout_ms = 300;
    c.admin.body_read_timeout_ms = 300;
    c.admin.idle_timeout_ms = 300;
}

/// `method path` on the admin endpoint with `headers` and `body`, from a fresh connection.
async fn request(
    broker: &TestBroker,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let url = format!("http://{}{path}", broker.admin_addr);
    let method = method.to_owned();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|&(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let body = body.to_vec();
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let response = if method == "POST" {
            let mut request = agent.post(&url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send(&body[..])
        } else {
            let mut request = agent.get(&url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.call()
        };
        answer(response.unwrap_or_else(|e| panic!("{method} {url} answered: {e}")))
    })
    .await
    .expect("request task")
}

/// `GET path` without credentials.
async fn get(broker: &TestBroker, path: &str) -> Answer {
    request(broker, "GET", path, &[], b"").await
}

/// The healthy neighbour: `/healthz` is answered `200`.
async fn assert_healthy(broker: &TestBroker) {
    let health = get(broker, "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
}

/// The healthy neighbour's publish is stored (`201`).
async fn assert_publishes(broker: &TestBroker, topic: &str, headers: &[(&str, &str)]) {
    let path = format!("/topics/{topic}/messages");
    let published = request(broker, "POST", &path, headers, b"healthy").await;
    assert_eq!(published.status, 201, "{}", published.body);
}

/// A raw connection to the admin endpoint that has sent `text`.
async fn offender(broker: &TestBroker, text: &str) -> TcpStream {
    let mut stream = TcpStream::connect(broker.admin_addr).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    stream
}

/// Everything the server sends until it closes the connection (a read returns 0, or the
/// connection is reset); fails if it is still open after [`HTTP_TIMEOUT`].
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + HTTP_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the server did not close the connection; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// One whole response on a kept-alive raw connection (head, then `Content-Length` bytes).
async fn one_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(HTTP_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("readable");
        assert!(n > 0, "closed mid-response: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

/// The JSON body of a raw response.
fn json_body(response: &str) -> serde_json::Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("a whole head");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response:?}"))
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: weir\r\n\r\n";

#[tokio::test]
async fn silent_connections_filling_max_connections_are_closed_and_health_is_answered() {
    let broker = TestBroker::start_with(|c| {
        bounded(c);
        c.admin.idle_timeout_ms = 60_000;
    })
    .await;
    // Four connections take every slot: two send nothing, two stop mid-headers.
    let mut silent = Vec::new();
    for text in [
        "",
        "",
        "GET /healthz HTTP/1.1\r\n",
        "GET /healthz HTTP/1.1\r\nHost: w",
    ] {
        silent.push(offender(&broker, text).await);
    }

    // Accepted after all four, the neighbour is served only once one of them is closed.
    assert_healthy(&broker).await;
    let metrics = broker.broker.metrics();
    assert!(
        metrics.admin_header_timeouts.get() >= 1,
        "served with every slot taken"
    );
    for stream in &mut silent {
        let received = until_closed(stream).await;
        assert_eq!(received, "", "closed without an answer");
    }
    assert_eq!(metrics.admin_header_timeouts.get(), 4);
    assert_eq!(metrics.admin_idle_closed.get(), 0);
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn idle_kept_alive_connections_give_their_slot_to_a_waiting_one() {
    let broker = TestBroker::start_with(|c| {
        bounded(c);
        c.admin.idle_timeout_ms = 60_000;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = offender(&broker, HEALTHZ).await;
        assert!(one_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        idle.push(stream);
    }

    // Far sooner than idle_timeout_ms, the neighbour is served: idle connections yield.
    assert_healthy(&broker).await;
    let metrics = broker.broker.metrics();
    assert!(metrics.admin_idle_reclaimed.get() >= 1);
    assert_eq!(metrics.admin_idle_closed.get(), 0);
    assert_eq!(metrics.admin_header_timeouts.get(), 0);
    until_closed(&mut idle[0]).await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout_not_the_header_one() {
    let broker = TestBroker::start_with(|c| {
        bounded(c);
        c.admin.idle_timeout_ms = 1_500;
    })
    .await;
    let sent = Instant::now();
    let mut kept = offender(&broker, HEALTHZ).await;
    assert!(one_response(&mut kept).await.starts_with("HTTP/1.1 200"));
    assert_healthy(&broker).await;

    // Waiting for the next request is idleness, not a slow header: it outlives the 300 ms
    // header timeout (until 900 ms after the request was sent, well before 1 500 ms after
    // its answer), and the connection still serves a request.
    let mut buf = [0u8; 64];
    let window = Duration::from_millis(900).saturating_sub(sent.elapsed());
    let read = tokio::time::timeout(window, kept.read(&mut buf)).await;
    assert!(read.is_err(), "closed before the idle timeout: {read:?}");
    kept.write_all(HEALTHZ.as_bytes()).await.unwrap();
    assert!(one_response(&mut kept).await.starts_with("HTTP/1.1 200"));

    assert_eq!(until_closed(&mut kept).await, "");
    let metrics = broker.broker.metrics();
    assert_eq!(metrics.admin_idle_closed.get(), 1);
    assert_eq!(metrics.admin_header_timeouts.get(), 0);
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn a_post_announcing_a_huge_body_is_413_before_the_body_is_read() {
    let broker = TestBroker::start_with(|c| {
        bounded(c);
        c.admin.idle_timeout_ms = 60_000;
    })
    .await;
    let head =
        "POST /topics/huge/messages HTTP/1.1\r\nHost: weir\r\nContent-Length: 104857600\r\n\r\n";
    let mut huge = offender(&broker, head).await;
    assert_healthy(&broker).await;
    assert_publishes(&broker, "neighbour", &[]).await;

    // Answered without waiting for the body: a wait would have ended in 408 after 300 ms.
    let response = until_closed(&mut huge).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    let max_frame = u64::from(weir_broker::Config::default().limits.max_frame_bytes);
    assert_eq!(
        json_body(&response),
        json!({
            "reason": "message_too_large",
            "limit": {"name": "max_frame_bytes", "value": max_frame},
            "retry_after_ms": null
        })
    );
    let metrics = broker.broker.metrics();
    assert_eq!(metrics.admin_too_large.get(), 1);
    assert_eq!(metrics.admin_body_timeouts.get(), 0);
    assert!(
        broker.broker.topic("huge").is_none(),
        "refused before the topic is created"
    );
}

#[tokio::test]
async fn a_post_whose_body_stalls_is_408_and_its_connection_closed() {
    let broker = TestBroker::start_with(|c| {
        bounded(c);
        c.admin.idle_timeout_ms = 60_000;
    })
    .await;
    let head =
        "POST /topics/stalled/messages HTTP/1.1\r\nHost: weir\r\nContent-Length: 10\r\n\r\nabc";
    let mut stalled = offender(&broker, head).await;
    assert_healthy(&broker).await;
    assert_publishes(&broker, "neighbour", &[]).await;

    let response = until_closed(&mut stalled).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.to_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(json_body(&response)["error"].is_string(), "{response}");
    let metrics = broker.broker.metrics();
    assert_eq!(metrics.admin_body_timeouts.get(), 1);
    let stored = broker.broker.topic("stalled").map(|t| t.info().depth);
    assert!(matches!(stored, None | Some(0)), "stored {stored:?}");
    let exposition = get(&broker, "/metrics").await.body;
    assert!(
        exposition
            .lines()
            .any(|l| l == "weir_admin_body_timeouts_total 1"),
        "{exposition}"
    );
}

const KEYED_ROUTES: [&str; 3] = ["/topics", "/topics/x", "/metrics"];

#[tokio::test]
async fn with_keys_every_route_but_health_and_readiness_needs_a_key() {
    let broker = TestBroker::start_with(|c| {
        bounded(c);
        c.keys = vec![key("ops", None)];
        c.limits.max_auth_failures_per_s = 1_000;
    })
    .await;
    let right = [("authorization", "Bearer token-ops")];
    let wrong = [("authorization", "Bearer guess")];
    assert_publishes(&broker, "x", &right).await;

    for path in KEYED_ROUTES {
        let missing = get(&broker, path).await;
        assert_eq!(missing.status, 401, "{path}: {}", missing.body);
        assert_eq!(
            missing.www_authenticate.as_deref(),
            Some("Bearer"),
            "{path}"
        );
        assert!(missing.json()["error"].is_string(), "{path}");
        let guessed = request(&broker, "GET", path, &wrong, b"").await;
        assert_eq!(guessed.status, 403, "{path}: {}", guessed.body);
        assert!(guessed.json()["error"].is_string(), "{path}");
        let keyed = request(&broker, "GET", path, &right, b"").await;
        assert_eq!(keyed.status, 200, "{path}: {}", keyed.body);
    }
    assert_eq!(get(&broker, "/readyz").await.status, 200);
    assert_healthy(&broker).await;
}

#[tokio::test]
async fn public_metrics_opens_metrics_and_nothing_else() {
    let broker = TestBroker::start_with(|c| {
        bounded(c);
        c.keys = vec![key("ops", None)];
        c.admin.public_metrics = true;
    })
    .await;
    let scrape = get(&broker, "/metrics").await;
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(scrape.body.contains("weir_admin_header_timeouts_total"));
    for path in ["/topics", "/topics/x"] {
        let missing = get(&broker, path).await;
        assert_eq!(missing.status, 401, "{path}: {}", missing.body);
    }
    let publish = request(&broker, "POST", "/topics/x/messages", &[], b"m").await;
    assert_eq!(publish.status, 401, "{}", publish.body);
}

#[tokio::test]
async fn guessed_tokens_past_the_limit_are_429_until_the_second_is_over() {
    // A paused broker clock: the second cannot end while the test guesses.
    let broker = TestBroker::start_paused_with(|c| {
        bounded(c);
        c.keys = vec![key("ops", None)];
        c.limits.max_auth_failures_per_s = 3;
    })
    .await;
    let right = [("authorization", "Bearer token-ops")];
    let wrong = [("authorization", "Bearer guess")];

    // Three wrong tokens, then the right one: within the second it is refused before its
    // token is checked, and so is a fourth guess.
    for _ in 0..3 {
        let guessed = request(&broker, "GET", "/topics", &wrong, b"").await;
        assert_eq!(guessed.status, 403, "{}", guessed.body);
    }
    let early = request(&broker, "GET", "/topics", &right, b"").await;
    assert_eq!(early.status, 429, "{}", early.body);
    let throttled = request(&broker, "GET", "/topics", &wrong, b"").await;
    assert_eq!(throttled.status, 429, "{}", throttled.body);
    let body = throttled.json();
    assert_eq!(body["reason"], "rate_limited", "{body}");
    assert_eq!(
        body["limit"],
        json!({"name": "max_auth_failures_per_s", "value": 3})
    );
    assert_eq!(body["retry_after_ms"], 1_000, "the whole second is left");
    let retry_after: u64 = throttled
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert_eq!(retry_after, 1);
    assert!(broker.broker.metrics().auth_throttled.get() >= 1);
    // The neighbour's liveness is not behind authentication.
    assert_healthy(&broker).await;

    // 1 ms before the second is over the address still waits; then the right token from it
    // is answered again.
    broker.clock.advance(Duration::from_millis(999));
    let late = request(&broker, "GET", "/topics", &right, b"").await;
    assert_eq!(
        (late.status, late.json()["retry_after_ms"].as_u64()),
        (429, Some(1))
    );
    broker.clock.advance(Duration::from_millis(1));
    let keyed = request(&broker, "GET", "/topics", &right, b"").await;
    assert_eq!(keyed.status, 200, "{}", keyed.body);
}

#[tokio::test]
async fn stopping_closes_idle_admin_connections_at_once() {
    let mut broker = TestBroker::start_with(|c| {
        bounded(c);
        c.admin.idle_timeout_ms = 60_000;
    })
    .await;
    let mut kept = offender(&broker, HEALTHZ).await;
    assert!(one_response(&mut kept).await.starts_with("HTTP/1.1 200"));
    tokio::time::timeout(HTTP_TIMEOUT, broker.stop())
        .await
        .expect("the admin endpoint stops without waiting out idle connections");
    assert_eq!(until_closed(&mut kept).await, "");
    assert_eq!(broker.broker.metrics().admin_idle_closed.get(), 0);
}
