//! The `weir` CLI as a new user meets it: exit codes, gaps, `--count`, a subscription the
//! broker ends, limits checked up front, an interrupted `weir pub`, and `weir bench` cleaning
//! up after itself. Each runs the real binary against a real broker.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use weir_client::Client;
use weir_tests::process::workspace_bin;
use weir_tests::TestBroker;

use crate::cli::{stdout, weir};

/// Longest a `weir` child may run in these tests before it is killed and the test fails.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

/// Starts `weir --server <addr> args...` with piped stdio (stdin left open for the caller).
fn spawn_weir(addr: std::net::SocketAddr, args: &[&str]) -> Child {
    Command::new(workspace_bin("weir"))
        .arg("--server")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir")
}

/// Waits for `child` to exit (killing it and failing after [`CHILD_LIMIT`]) and returns what
/// it printed.
async fn finish(child: Child) -> Output {
    weir_tests::process::output_within(child, CHILD_LIMIT, "weir").await
}

/// Sends `sig` to process `pid`.
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; the pid is our own child's.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `check` holds for topic `topic`'s description, asking the broker every 20 ms,
/// for at most 30 s.
async fn until_topic(
    client: &Client,
    topic: &str,
    what: &str,
    check: impl Fn(&weir_client::TopicDescription) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(d) = client.describe_topic(topic).await {
            if check(&d) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The members of group `group` in a topic description (0 when the group is absent).
fn members(d: &weir_client::TopicDescription, group: &str) -> u32 {
    d.info
        .groups
        .iter()
        .find(|g| g.name == group)
        .map_or(0, |g| g.members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_0_done_1_error_2_refused_64_usage() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let help = weir(addr, &["--help"], "").await;
    assert_eq!(help.status.code(), Some(0));
    assert!(
        stdout(&help).contains("Exit codes: 0 done, 1 error, 2 refused"),
        "{help:?}"
    );
    for usage in [
        &["pub"][..],
        &["no-such-command"],
        &["topic", "create", "t", "--max-bytes", "10XB"],
        &["sub", "t", "--group", "g", "--credit", "0"],
    ] {
        let out = weir(addr, usage, "").await;
        assert_eq!(out.status.code(), Some(64), "{usage:?}: {out:?}");
    }
    let created = weir(
        addr,
        &[
            "topic",
            "create",
            "tiny",
            "--max-messages",
            "1",
            "--max-bytes",
            "10MiB",
        ],
        "",
    )
    .await;
    assert_eq!(created.status.code(), Some(0), "{created:?}");
    assert!(
        stdout(&created).contains("max_bytes          10.0 MiB"),
        "sizes print with a unit: {created:?}"
    );
    assert_eq!(
        weir(addr, &["pub", "tiny", "a"], "").await.status.code(),
        Some(0)
    );
    let refused = weir(addr, &["pub", "tiny", "b"], "").await;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    // A port nothing listens on: bound, then let go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = weir(closed, &["topic", "list"], "").await;
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_unknown_topics_are_clear_errors() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let out = weir(addr, &["sub", "t", "--group", "g", "--credit", "5000"], "").await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        stderr(&out).contains("credit 5000 exceeds the broker's max_credit 1024"),
        "{out:?}"
    );
    let out = weir(addr, &["stats", "--once", "--topic", "nosuch"], "").await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("nosuch"), "{out:?}");
    assert!(stdout(&out).is_empty(), "no empty tables: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_count_never_takes_messages_it_will_not_print() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let messages: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let mut args = vec!["pub", "ten"];
    args.extend(messages.iter().map(String::as_str));
    let published = weir(addr, &args, "").await;
    assert!(published.status.success(), "{published:?}");
    let first = weir(
        addr,
        &["sub", "ten", "--group", "g", "--count", "2", "--seqs"],
        "",
    )
    .await;
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(stdout(&first), "1\t1\t1\n2\t1\t2\n");
    // A message the first subscription took and gave back comes again as attempt 2. Asking
    // for no more than it prints, and closing without returning credit, it can still take
    // up to its window (2) when an ack's credit goes out before it has printed its last
    // message (the library paces acks on its own); never more.
    let rest = weir(
        addr,
        &["sub", "ten", "--group", "g", "--count", "8", "--seqs"],
        "",
    )
    .await;
    assert_eq!(rest.status.code(), Some(0), "{rest:?}");
    let lines: Vec<(u64, u32)> = stdout(&rest)
        .lines()
        .map(|l| {
            let mut cols = l.split('\t');
            let seq = cols.next().unwrap().parse().unwrap();
            (seq, cols.next().unwrap().parse().unwrap())
        })
        .collect();
    let mut seqs: Vec<u64> = lines.iter().map(|(seq, _)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (3..=10).collect::<Vec<_>>(), "{rest:?}");
    let given_back = lines.iter().filter(|(_, attempt)| *attempt > 1).count();
    assert!(given_back <= 2, "{rest:?}");
    assert!(
        lines
            .iter()
            .filter(|(seq, _)| *seq > 4)
            .all(|(_, attempt)| *attempt == 1),
        "with the full credit of 100, the first subscription would have taken all ten: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_reports_a_gap_on_stderr_and_goes_on_or_stops_with_exit_on_gap() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let client = Client::connect(addr).await.unwrap();
    for (topic, exit_on_gap) in [("lossy", false), ("strict", true)] {
        let created = weir(
            addr,
            &[
                "topic",
                "create",
                topic,
                "--max-messages",
                "2",
                "--overflow",
                "drop_oldest",
            ],
            "",
        )
        .await;
        assert!(created.status.success(), "{created:?}");
        let mut args = vec![
            "sub", topic, "--group", "g", "--credit", "1", "--count", "2",
        ];
        if exit_on_gap {
            args.push("--exit-on-gap");
        }
        let sub = spawn_weir(addr, &args);
        until_topic(&client, topic, "the subscriber joined", |d| {
            members(d, "g") == 1
        })
        .await;
        // Stopped, the subscriber takes at most one message (its credit) while the topic, bound
        // at 2, evicts the oldest of the four: its group owes it a gap.
        signal(sub.id(), libc::SIGSTOP);
        let published = weir(addr, &["pub", topic, "one", "two", "three", "four"], "").await;
        assert!(published.status.success(), "{published:?}");
        until_topic(&client, topic, "two messages were dropped", |d| {
            d.info.dropped == 2
        })
        .await;
        signal(sub.id(), libc::SIGCONT);
        let out = finish(sub).await;
        let err = stderr(&out);
        assert!(
            err.contains("gap: messages ") && err.contains("were dropped (drop_oldest or max_age)"),
            "{out:?}"
        );
        if exit_on_gap {
            assert_eq!(out.status.code(), Some(1), "{out:?}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{out:?}");
            let printed = stdout(&out);
            assert_eq!(printed.lines().count(), 2, "{out:?}");
            assert!(
                printed.contains("three") || printed.contains("four"),
                "went on after the gap: {out:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_broker_ends_exits_1_saying_why() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let client = Client::connect(addr).await.unwrap();
    assert!(weir(addr, &["pub", "orders", "x"], "")
        .await
        .status
        .success());
    let sub = spawn_weir(addr, &["sub", "orders", "--group", "billing"]);
    until_topic(&client, "orders", "the subscriber joined", |d| {
        members(d, "billing") == 1
    })
    .await;
    let deleted = weir(
        addr,
        &["group", "delete", "orders", "billing", "--force"],
        "",
    )
    .await;
    assert!(deleted.status.success(), "{deleted:?}");
    let out = finish(sub).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains(
            "subscription ended by the broker: group billing of topic orders was deleted"
        ),
        "{out:?}"
    );
    assert_eq!(stdout(&out), "x\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_says_which_message_it_waits_for() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    create_and_publish(
        addr,
        &[
            "parked",
            "--max-messages",
            "1",
            "--overflow",
            "block",
            "--max-block-ms",
            "2500",
        ],
        "a",
    )
    .await;
    // Parked at the bound for 2.5 s, then refused: at least two notices a second apart.
    let out = weir(addr, &["pub", "parked", "b"], "").await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    let notices = err
        .lines()
        .filter(|l| l.contains("message 1 (\"b\") not confirmed after"))
        .count();
    assert!(notices >= 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_pub_prints_what_was_confirmed_and_all_of_it_is_stored() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let client = Client::connect(addr).await.unwrap();
    let mut publisher = spawn_weir(addr, &["pub", "long"]);
    let mut stdin = publisher.stdin.take().unwrap();
    // Feeds 1..=200000, one per line, until weir stops reading (then the write fails).
    let feeder = std::thread::spawn(move || {
        for i in 1..=200_000u32 {
            if writeln!(stdin, "{i}").is_err() {
                return;
            }
        }
    });
    until_topic(&client, "long", "some messages were stored", |d| {
        d.info.next_seq > 1000
    })
    .await;
    signal(publisher.id(), libc::SIGTERM);
    let out = finish(publisher).await;
    let _ = feeder.join();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    let summary = err
        .lines()
        .find_map(|l| l.strip_prefix("weir: interrupted: "))
        .unwrap_or_else(|| panic!("no summary: {err}"));
    let (confirmed, rest) = summary.split_once(" of ").expect("N of M");
    let confirmed: u64 = confirmed.parse().unwrap();
    let sent: u64 = rest.trim_end_matches(" confirmed").parse().unwrap();
    assert!(
        confirmed >= 1000 && confirmed <= sent && sent < 200_000,
        "{err}"
    );
    // Confirms come in order: the first line not confirmed is the next one.
    let next = confirmed + 1;
    let first_unconfirmed = if confirmed < sent {
        format!("first unconfirmed: line {next}: \"{next}\"")
    } else {
        format!("every line sent was confirmed; stopped before line {next}")
    };
    assert!(err.contains(&first_unconfirmed), "{err}");
    // Every message reported confirmed is stored, in order.
    let count = confirmed.to_string();
    let stored = weir(
        addr,
        &["sub", "long", "--group", "check", "--count", &count],
        "",
    )
    .await;
    assert_eq!(stored.status.code(), Some(0), "{stored:?}");
    let expected: String = (1..=confirmed).map(|i| format!("{i}\n")).collect();
    assert!(
        stdout(&stored) == expected,
        "the first {confirmed} lines are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_uses_a_fresh_topic_and_removes_it_unless_keep() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let client = Client::connect(addr).await.unwrap();
    let bench_topics = || async {
        let topics = client.list_topics().await.unwrap();
        topics
            .into_iter()
            .map(|t| t.config.name)
            .filter(|n| n.starts_with("bench-"))
            .collect::<Vec<_>>()
    };
    // The broker runs in this test's process: its pid is ours.
    let pid = std::process::id().to_string();
    let out = weir(
        addr,
        &["bench", "--msgs", "200", "--json", "--broker-pid", &pid],
        "",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    for field in [
        "client_us_per_msg",
        "client_cores",
        "broker_us_per_msg",
        "broker_cores",
    ] {
        assert!(json["cpu"][field].as_f64().is_some(), "cpu.{field}: {json}");
    }
    let first = json["topic"].as_str().unwrap().to_owned();
    assert!(first.starts_with("bench-"), "{json}");
    assert_eq!(
        bench_topics().await,
        Vec::<String>::new(),
        "removed after the run"
    );

    let out = weir(addr, &["bench", "--msgs", "200", "--json", "--keep"], "").await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let kept = json["topic"].as_str().unwrap().to_owned();
    assert_ne!(kept, first, "a fresh topic per run");
    assert_eq!(
        json["deliver"]["delivered"], 200,
        "nothing from earlier runs: {json}"
    );
    assert_eq!(bench_topics().await, std::slice::from_ref(&kept));
    assert!(stderr(&out).contains(&kept), "{out:?}");
    client.delete_topic(&kept, true).await.unwrap();

    // Interrupted: the topic goes too.
    let bench = spawn_weir(
        addr,
        &["bench", "--duration", "30", "--rate", "100", "--json"],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bench_topics().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bench never created its topic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(bench.id(), libc::SIGTERM);
    let out = finish(bench).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("interrupted"), "{out:?}");
    assert_eq!(
        bench_topics().await,
        Vec::<String>::new(),
        "removed after Ctrl-C"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_json_and_the_admin_endpoint_print_one_schema() {
    let broker = TestBroker::start().await;
    let addr = broker.addr;
    create_and_publish(
        addr,
        &["shape", "--max-bytes", "10MiB", "--overflow", "drop_oldest"],
        "one",
    )
    .await;
    let sub = weir(addr, &["sub", "shape", "--group", "g", "--count", "1"], "").await;
    assert!(sub.status.success(), "{sub:?}");
    let json = |out: &Output| -> serde_json::Value {
        assert!(out.status.success(), "{out:?}");
        serde_json::from_str(&stdout(out)).expect("JSON on stdout")
    };
    // A quiet topic: nothing but the decaying drain rate moves between two reads.
    fn steady(mut topic: serde_json::Value) -> serde_json::Value {
        assert!(topic["drain_per_s"].is_u64(), "{topic}");
        topic["drain_per_s"] = serde_json::Value::Null;
        topic
    }
    let list = json(&weir(addr, &["topic", "list", "--json"], "").await);
    let served = crate::http::get(&broker, "/topics").await.json();
    assert_eq!(list.as_object().map(|o| o.len()), Some(1), "{list}");
    assert_eq!(
        steady(list["topics"][0].clone()),
        steady(served["topics"][0].clone())
    );
    let info = json(&weir(addr, &["topic", "info", "shape", "--json"], "").await);
    let served = crate::http::get(&broker, "/topics/shape").await.json();
    assert_eq!(steady(info.clone()), steady(served));
    assert_eq!(
        info["bounds"]["max_bytes"],
        10 * 1024 * 1024,
        "bytes in JSON"
    );
    assert_eq!(info["overflow"], "drop_oldest");
    assert!(info["recent_drops"].is_array());
    let groups = json(&weir(addr, &["group", "list", "shape", "--json"], "").await);
    assert_eq!(groups, info["groups"]);
    let group = json(&weir(addr, &["group", "info", "shape", "g", "--json"], "").await);
    assert_eq!(group, info["groups"][0]);
}

/// `weir topic create ARGS…` (the topic's name first), then `weir pub TOPIC message`; asserts
/// both succeed.
async fn create_and_publish(addr: std::net::SocketAddr, create: &[&str], message: &str) {
    let args: Vec<&str> = ["topic", "create"].iter().chain(create).copied().collect();
    let created = weir(addr, &args, "").await;
    assert!(created.status.success(), "{created:?}");
    let published = weir(addr, &["pub", create[0], message], "").await;
    assert!(published.status.success(), "{published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_retry_says_which_refusal_it_retries_and_finishes_once_room_frees() {
    use std::io::{BufRead, BufReader};

    let broker = TestBroker::start().await;
    let addr = broker.addr;
    let created = weir(
        addr,
        &["topic", "create", "tight", "--max-messages", "1"],
        "",
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    assert!(weir(addr, &["pub", "tight", "first"], "")
        .await
        .status
        .success());

    let mut publisher = spawn_weir(addr, &["pub", "--retry", "tight", "second"]);
    let err = publisher.stderr.take().expect("piped stderr");
    let (lines, mut said) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let notice = tokio::time::timeout(CHILD_LIMIT, async {
        while let Some(line) = said.recv().await {
            if line.contains("not confirmed after") {
                return line;
            }
        }
        panic!("weir pub ended without saying what it waits for");
    })
    .await
    .expect("a waiting notice within the limit");
    assert!(
        notice.contains("message 1 (\"second\") not confirmed after")
            && notice.contains("latest refused: TopicFull (max_messages=1), retry after")
            && notice.contains("waits")
            && notice.contains("circuit breaker"),
        "{notice}"
    );

    // Room frees (the one stored message is consumed and acked): the retry is confirmed.
    let drained = weir(addr, &["sub", "tight", "--group", "g", "--count", "1"], "").await;
    assert_eq!(stdout(&drained), "first\n", "{drained:?}");
    let out = finish(publisher).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_disk_reports_synced_writes_and_leaves_no_file_even_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    // No broker is involved: the address is never used.
    let unused: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let out = weir(
        unused,
        &[
            "bench", "disk", "--dir", path, "--batch", "64KiB", "--total", "2MiB", "--json",
        ],
        "",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["total_bytes"], 2 * 1024 * 1024);
    assert!(report["syncs_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let bench = spawn_weir(
        unused,
        &[
            "bench", "disk", "--dir", path, "--batch", "4KiB", "--total", "1GiB",
        ],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(dir.path()).unwrap().count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scratch file never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(bench.id(), libc::SIGTERM);
    let out = finish(bench).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("interrupted"), "{out:?}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the scratch file is deleted"
    );
}
