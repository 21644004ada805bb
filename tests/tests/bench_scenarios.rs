//! The scaling scenarios of `weir bench` at tiny sizes, against a real broker: a run spread over
//! several topics with fan-out groups, idle connections held beside a run (and refused at the
//! broker's bound), and catch-up from a backlog. Each asserts the JSON report's counts and that
//! the topics the bench created are gone; none asserts on speed.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use weir_client::Client;
use weir_tests::process::{output_within, workspace_bin};
use weir_tests::TestBroker;

/// Longest a `weir bench` child may run here before it is killed and the test fails.
const CHILD_LIMIT: Duration = Duration::from_secs(120);

/// Runs `weir --server <addr> args...` to its end (killed, and the test failed, past
/// [`CHILD_LIMIT`]).
pub(crate) async fn weir(addr: std::net::SocketAddr, args: &[&str]) -> Output {
    let child = Command::new(workspace_bin("weir"))
        .arg("--server")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    output_within(child, CHILD_LIMIT, "weir").await
}

/// Sends `sig` to `child`, then waits for it to exit (killed, and the test failed, past
/// [`CHILD_LIMIT`]).
async fn finish_after(child: std::process::Child, sig: libc::c_int) -> Output {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) has no memory effects; the pid is our own child's.
    unsafe { libc::kill(pid, sig) };
    output_within(child, CHILD_LIMIT, &format!("weir (signalled {sig})")).await
}

/// Asserts a bench run failed (exit 1, no report) naming `what` it was opening and the broker
/// `bound` that refused it; its connections are opened before any topic is created and closed
/// on the failure, so the broker takes new ones and no topic is left.
async fn refused_at_a_bound(out: &Output, addr: std::net::SocketAddr, what: &str, bound: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(what) && stderr.contains(bound),
        "names the bound: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no report: {out:?}");
    let client = Client::connect(addr).await.unwrap();
    assert_eq!(topics(&client).await, Vec::<String>::new());
}

/// The JSON report `out` printed on stdout.
pub(crate) fn report(out: &Output) -> serde_json::Value {
    serde_json::from_str(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {out:?}"))
}

/// The names of the topics the broker has.
async fn topics(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.config.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spreads_over_topics_and_fans_out_to_groups() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let out = weir(
        broker.addr,
        &[
            "bench",
            "--topics",
            "2",
            "--pubs",
            "2",
            "--subs",
            "3",
            "--group-mode",
            "fanout",
            "--msgs",
            "400",
            "--size",
            "64",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json = report(&out);
    assert_eq!(json["topics"], 2, "{json}");
    assert_eq!(
        (json["publishers"].as_u64(), json["subscribers"].as_u64()),
        (Some(4), Some(6)),
        "--pubs and --subs are per topic: {json}"
    );
    assert_eq!(json["publish"]["confirmed"], 400, "{json}");
    let deliver = &json["deliver"];
    assert_eq!(deliver["groups"], 6, "3 groups on each of 2 topics: {json}");
    assert_eq!(deliver["expected"], 400 * 3, "{json}");
    assert_eq!(deliver["delivered"], 400 * 3, "{json}");
    let per_topic = json["per_topic"].as_array().expect("per_topic");
    assert_eq!(per_topic.len(), 2, "{json}");
    for t in per_topic {
        assert_eq!(t["confirmed"], 200, "split evenly: {json}");
        assert_eq!(
            t["delivered"],
            200 * 3,
            "every group sees its topic's: {json}"
        );
    }
    assert_ne!(per_topic[0]["name"], per_topic[1]["name"]);
    let p = &json["publish"];
    assert!(
        p["per_topic_min_msgs_per_s"].as_f64().unwrap()
            <= p["per_topic_max_msgs_per_s"].as_f64().unwrap(),
        "{json}"
    );
    assert!(
        deliver["per_group_min_msgs_per_s"].as_f64().unwrap() > 0.0,
        "every group was delivered to: {json}"
    );
    assert_eq!(
        topics(&client).await,
        Vec::<String>::new(),
        "both topics removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_holds_idle_connections_through_the_run() {
    // An idle_timeout much shorter than the run: only the keep-alive pings hold them.
    let broker = TestBroker::start_with(|c| c.limits.idle_timeout_ms = 600).await;
    let client = Client::connect(broker.addr).await.unwrap();
    let out = weir(
        broker.addr,
        &[
            "bench",
            "--idle-connections",
            "20",
            "--duration",
            "2",
            "--rate",
            "100",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json = report(&out);
    let idle = &json["idle"];
    assert_eq!(idle["requested"], 20, "{json}");
    assert_eq!(idle["opened"], 20, "{json}");
    assert_eq!(idle["held"], 20, "{json}");
    assert_eq!(idle["ping_errors"], 0, "{json}");
    assert_eq!(idle["idle_timeout_ms"], 600, "{json}");
    assert_eq!(
        idle["ping_every_ms"], 200,
        "a third of the idle timeout: {json}"
    );
    assert!(idle["pings"].as_u64().unwrap() >= 20, "{json}");
    let confirmed = json["publish"]["confirmed"].as_u64().unwrap();
    assert!(confirmed > 0, "{json}");
    assert_eq!(json["publish"]["sent"].as_u64(), Some(confirmed), "{json}");
    assert_eq!(
        json["deliver"]["delivered"].as_u64(),
        Some(confirmed),
        "{json}"
    );
    assert!(
        json["deliver"]["deliver_latency"]["p99_us"].is_number(),
        "{json}"
    );
    assert_eq!(topics(&client).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_fails_clearly_when_the_broker_refuses_idle_connections() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections = 10).await;
    let out = weir(
        broker.addr,
        &[
            "bench",
            "--idle-connections",
            "20",
            "--msgs",
            "10",
            "--json",
        ],
    )
    .await;
    refused_at_a_bound(&out, broker.addr, "idle connections", "max_connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_fails_clearly_when_idle_connections_exceed_the_open_file_limit() {
    let broker = TestBroker::start().await;
    // A shell lowers the open-file limit (soft and hard) to 64, then becomes `weir`.
    let weir_bin = workspace_bin("weir");
    let addr = broker.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
            .arg(weir_bin)
            .args(["--server", &addr, "bench", "--idle-connections", "100"])
            .args(["--msgs", "10", "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("run weir under sh")
    });
    let out = tokio::time::timeout(CHILD_LIMIT, out)
        .await
        .expect("weir gives up at once")
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("open-file limit 64") && stderr.contains("ulimit -n"),
        "names the limit and the fix: {stderr}"
    );
    let client = Client::connect(broker.addr).await.unwrap();
    assert_eq!(topics(&client).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_catch_up_reads_the_whole_backlog_and_reports_rss() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let disk = tempfile::tempdir().unwrap();
    // The broker runs in this test's process: its pid is ours.
    let pid = std::process::id().to_string();
    let out = weir(
        broker.addr,
        &[
            "bench",
            "catch-up",
            "--backlog",
            "2000",
            "--size",
            "512",
            "--broker-pid",
            &pid,
            "--disk-dir",
            disk.path().to_str().unwrap(),
            "--disk-bytes",
            "1MiB",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json = report(&out);
    assert_eq!(json["scenario"], "catch-up");
    assert_eq!(json["backlog"], 2000);
    assert_eq!(json["fill"]["confirmed"], 2000, "{json}");
    assert_eq!(json["fill"]["refused"], 0, "{json}");
    assert_eq!(json["catch_up"]["delivered"], 2000, "{json}");
    assert_eq!(json["catch_up"]["redelivered"], 0, "{json}");
    assert!(json["catch_up"]["msgs_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(json["drop_caches"]["requested"], false);
    for field in ["before_fill_kib", "start_kib", "peak_kib", "end_kib"] {
        assert!(
            json["rss"][field].as_u64().is_some_and(|k| k > 0),
            "rss.{field}: {json}"
        );
    }
    assert!(
        json["rss"]["peak_kib"].as_u64() >= json["rss"]["start_kib"].as_u64(),
        "{json}"
    );
    assert_eq!(json["disk"]["bytes"], 1024 * 1024, "{json}");
    assert!(json["disk"]["read_mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(json["read_vs_disk"].is_number(), "{json}");
    assert_eq!(
        std::fs::read_dir(disk.path()).unwrap().count(),
        0,
        "the disk's scratch file is gone"
    );
    assert!(json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["ok"] == true));
    assert_eq!(topics(&client).await, Vec::<String>::new(), "topic removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_catch_up_removes_its_topic_when_interrupted() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let child = Command::new(workspace_bin("weir"))
        .arg("--server")
        .arg(broker.addr.to_string())
        .args([
            "bench",
            "catch-up",
            "--backlog",
            "5000000",
            "--size",
            "64",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let depth = client
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.config.name.starts_with("bench-catchup-"))
            .map_or(0, |t| t.depth);
        if depth > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bench never filled its topic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = finish_after(child, libc::SIGTERM).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted"),
        "{out:?}"
    );
    assert_eq!(topics(&client).await, Vec::<String>::new(), "topic removed");
}

/// The field `key` of `v` as a number (the test fails naming it when it is not one).
fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_overload_with_producers_honouring_the_hint_counts_their_retries() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.addr).await.unwrap();
    let out = weir(
        broker.addr,
        &[
            "bench",
            "overload",
            "--producers",
            "8",
            "--honour-hint",
            "--duration",
            "2",
            "--bound",
            "50",
            "--consumer-rate",
            "200",
            "--size",
            "64",
            "--drain",
            "5",
            "--json",
        ],
    )
    .await;
    // Targets (refusal latency, retries against the drain) may be missed: exit 1 with a report.
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let json = report(&out);
    assert_eq!(
        (json["producers"].as_u64(), json["honour_hint"].as_bool()),
        (Some(8), Some(true)),
        "{json}"
    );
    assert_eq!(json["window"], 1, "one publish at a time: {json}");
    let results = json["results"].as_array().expect("results");
    let policies: Vec<_> = results.iter().map(|r| r["policy"].clone()).collect();
    assert_eq!(policies, ["reject", "block", "drop_oldest"], "{json}");
    for r in results {
        let policy = r["policy"].as_str().unwrap();
        assert!(r["error"].is_null(), "{policy}: {r}");
        let h = &r["honour"];
        assert_eq!(h["producers"], 8, "{policy}: {h}");
        // Every publish sent is a first try or a retry; every hinted refusal was retried or
        // abandoned at the end (nothing was left unresolved).
        assert_eq!(num(r, "unresolved"), 0, "{policy}: {r}");
        assert_eq!(num(h, "offered"), num(r, "offered"), "{policy}: {r}");
        assert_eq!(
            num(h, "offered"),
            num(h, "first_tries") + num(h, "retries"),
            "{policy}: {h}"
        );
        let hints = &r["retry_after"];
        assert_eq!(
            num(r, "refused"),
            num(hints, "with_hint") + num(hints, "without_hint"),
            "{policy}: {r}"
        );
        assert_eq!(
            num(hints, "with_hint"),
            num(h, "retries") + num(h, "abandoned"),
            "{policy}: {r}"
        );
        assert_eq!(num(h, "refused_without_hint"), num(hints, "without_hint"));
        if num(hints, "with_hint") > 0 {
            for q in ["hint_p50_ms", "hint_p99_ms", "hint_max_ms"] {
                assert!(h[q].as_u64().is_some(), "{policy}: {q} reported: {h}");
            }
        }
        let ratio = h["retries_per_drain"].as_f64().expect("a drain rate");
        assert!(ratio.is_finite() && ratio >= 0.0, "{policy}: {h}");
        assert!(h["drain_per_s"].as_f64().unwrap() > 0.0, "{policy}: {h}");
        assert!(h["confirmed_per_s"].is_number(), "{policy}: {h}");
        assert!(
            r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"].as_str().unwrap().starts_with("retries/s")),
            "{policy}: the retry target is checked: {r}"
        );
        // The scenario's accounting still holds.
        let acc = &r["accounting"];
        assert_eq!(num(r, "lost"), 0, "{policy}: {r}");
        assert_eq!(num(acc, "confirmed"), num(r, "confirmed"), "{policy}: {r}");
        if policy != "drop_oldest" {
            assert_eq!(
                num(acc, "confirmed"),
                num(acc, "delivered") + num(acc, "stored"),
                "{policy}: confirmed == delivered + stored: {acc}"
            );
        }
    }
    // A topic bounded at 50 draining 200/s cannot take what 8 producers offer: reject refuses
    // them, each refusal with a hint.
    let reject = &results[0];
    assert!(num(&reject["retry_after"], "with_hint") > 0, "{reject}");
    assert_eq!(num(&reject["retry_after"], "without_hint"), 0, "{reject}");
    assert_eq!(
        topics(&client).await,
        Vec::<String>::new(),
        "topics removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_overload_fails_clearly_when_the_broker_refuses_producer_connections() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections_per_ip = 5).await;
    let out = weir(
        broker.addr,
        &[
            "bench",
            "overload",
            "--producers",
            "8",
            "--honour-hint",
            "--duration",
            "1",
            "--json",
        ],
    )
    .await;
    refused_at_a_bound(
        &out,
        broker.addr,
        "producer connections",
        "max_connections_per_ip",
    )
    .await;
}
