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
    ] {
        assert!(text.contains(bound), "{bound} missing from --print-config");
    }
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
