//! The `weir` binary's usage text names every command. (Also makes `cargo test` build the binary
//! that the end-to-end CLI tests in `tests/` run against a broker.)

use std::process::Command;

#[test]
fn help_lists_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["pub", "sub", "topic", "group", "bench", "stats"] {
        assert!(
            text.contains(command),
            "`weir --help` does not mention {command}:\n{text}"
        );
    }
}

#[test]
fn an_unreachable_server_is_a_clear_error_and_exit_1() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--server", "127.0.0.1:9", "topic", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
}
