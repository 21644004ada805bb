//! The `weir-broker` binary's command line: `--print-config` and refusing bad configuration.
//! (Also makes `cargo test` build the binary that the end-to-end tests spawn.)

use std::process::Command;

#[test]
fn print_config_shows_every_bound_with_flags_applied() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-broker"))
        .args(["--print-config", "--max-connections", "7"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let config: weir_broker::Config = toml::from_str(&text).unwrap();
    assert_eq!(config.limits.max_connections, 7);
    assert_eq!(config.listen.to_string(), "127.0.0.1:7070");
    for bound in [
        "max_frame_bytes",
        "max_unconfirmed",
        "max_credit",
        "max_in_flight",
        "max_messages",
        "max_bytes",
        "max_connection_memory_bytes",
        "slow_consumer_timeout_ms",
        "max_header_bytes",
        "max_topic_bytes",
        "min_free_bytes",
    ] {
        assert!(text.contains(bound), "{bound} missing from --print-config");
    }
    // The disk budget's default is taken from the free space and shown as taken.
    let max = config.storage.max_bytes.expect("storage.max_bytes shown");
    assert!(max > 0, "{max}");
}

#[test]
fn an_invalid_config_file_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, "[limits]\nmax_conections = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-broker"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir-broker"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read until the broker says it is listening (its first lines are startup logs).
    let mut seen = Vec::new();
    for line in BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(50)
    {
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            value.get("level").is_some() && value.get("message").is_some(),
            "{line}"
        );
        let listening = value["message"] == "listening";
        seen.push(value);
        if listening {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let listening = seen
        .iter()
        .find(|v| v["message"] == "listening")
        .expect("listening logged");
    assert!(
        listening["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{listening}"
    );
}
