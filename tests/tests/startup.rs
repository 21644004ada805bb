//! Starting the daemon as a new user would: errors that name what is wrong, at once.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use weir_tests::process::{broker_exits, workspace_bin};
use weir_tests::BrokerProcess;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_broker_on_the_same_data_dir_fails_at_once_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = BrokerProcess::start(dir.path(), &[]);
    let data = dir.path().to_str().unwrap();
    let second = broker_exits(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ]);
    assert_eq!(second.status.code(), Some(1));
    let err = stderr(&second);
    assert!(err.contains(data) && err.contains("in use"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    // The first one never noticed: it still serves. After a kill -9 the lock is free again.
    let (addr, pid) = (first.addr, first.pid());
    std::net::TcpStream::connect(addr).expect("the first broker still listens");
    first.kill9();
    let again = BrokerProcess::start(dir.path(), &[]);
    assert_ne!(again.pid(), pid);
}

#[test]
fn a_taken_port_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (flag, other) in [
        ("--listen", "--admin-listen"),
        ("--admin-listen", "--listen"),
    ] {
        let out = broker_exits(&[flag, &addr, other, "127.0.0.1:0", "--data-dir", data]);
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = stderr(&out);
        assert!(
            err.contains(&addr) && err.contains("in use"),
            "{flag}: {err}"
        );
    }
}

#[test]
fn host_names_and_missing_ports_are_taken_by_listen_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Command::new(workspace_bin("weir-broker"))
        .args([
            "--listen",
            "localhost:0",
            "--admin-listen",
            "localhost:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn weir-broker");
    let log = std::io::BufReader::new(broker.stdout.take().unwrap());
    // Read until it says where it listens (it exits, ending the lines, if it cannot start).
    let listening = std::io::BufRead::lines(log)
        .map_while(Result::ok)
        .find(|line| line.contains("listening"));
    let _ = broker.kill();
    let _ = broker.wait();
    let listening = listening.expect("weir-broker --listen localhost:0 did not start");
    assert!(listening.contains("addr=127.0.0.1:"), "{listening}");
    let out = broker_exits(&["--listen", "localhost", "--print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:7070\""), "{printed}");
    let out = broker_exits(&["--listen", "localhost:http", "--print-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("port"), "{}", stderr(&out));
}

#[test]
fn print_config_reads_back_unchanged_without_showing_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[[keys]]\nname = \"billing\"\ntoken = \"s3cret-billing\"\n\n[storage]\nmax_bytes = 1000000000\n",
    )
    .unwrap();
    let first = broker_exits(&["--config", config.to_str().unwrap(), "--print-config"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let printed = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("token_sha256"), "{printed}");
    let pasted = dir.path().join("printed.toml");
    std::fs::write(&pasted, &printed).unwrap();
    let second = broker_exits(&["--config", pasted.to_str().unwrap(), "--print-config"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(String::from_utf8_lossy(&second.stdout), printed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_started_from_printed_config_accepts_the_original_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[[keys]]\nname = \"billing\"\ntoken = \"s3cret-billing\"\n",
    )
    .unwrap();
    let printed = broker_exits(&["--config", config.to_str().unwrap(), "--print-config"]);
    let pasted = dir.path().join("printed.toml");
    std::fs::write(&pasted, &printed.stdout).unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &["--config", pasted.to_str().unwrap()]);
    let options = |token: &str| weir_client::ClientOptions {
        token: Some(token.into()),
        ..Default::default()
    };
    let client = weir_client::Client::connect_with(broker.addr, options("s3cret-billing"))
        .await
        .expect("the original token still authenticates");
    client.ping().await.unwrap();
    let wrong = weir_client::Client::connect_with(broker.addr, options("s3cret-other")).await;
    assert!(wrong.is_err());
}

/// Runs `weir-broker hash-token` with `stdin` and returns what it printed.
fn hash_token(stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(workspace_bin("weir-broker"))
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir-broker hash-token");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write the token");
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hashed_token_authenticates_and_no_token_reaches_the_logs() {
    let out = hash_token("s3cret-billing\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        line.starts_with("token_sha256 = \"") && !line.contains("s3cret"),
        "{line}"
    );
    let empty = hash_token("\n");
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    let keys = format!(
        "[[keys]]\nname = \"billing\"\n{line}\n[[keys]]\nname = \"audit\"\ntoken = \"s3cret-audit\"\n"
    );
    std::fs::write(&config, keys).unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let options = |token: &str| weir_client::ClientOptions {
        token: Some(token.into()),
        ..Default::default()
    };
    for token in ["s3cret-billing", "s3cret-audit"] {
        let client = weir_client::Client::connect_with(broker.addr, options(token))
            .await
            .expect("the key's token authenticates");
        client.ping().await.unwrap();
    }
    let wrong = weir_client::Client::connect_with(broker.addr, options("s3cret-guess")).await;
    assert!(wrong.is_err());

    broker.signal(libc::SIGTERM);
    let (status, logs) = broker.wait(Duration::from_secs(30));
    assert!(status.success(), "{logs:#?}");
    assert!(
        logs.iter().all(|l| !l.contains("s3cret")),
        "a token in the logs: {logs:#?}"
    );
    let warned: Vec<&String> = logs.iter().filter(|l| l.contains("in clear")).collect();
    assert_eq!(warned.len(), 1, "{logs:#?}");
    assert!(
        warned[0].contains("audit") && warned[0].contains("token_sha256"),
        "{warned:?}"
    );
}
