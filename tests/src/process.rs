//! The real `weir-broker` binary as a child process, for tests where the process itself is the
//! point: `SIGKILL` (durability) and `SIGTERM` (graceful shutdown).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a broker process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a binary built by this workspace, next to the test executable's `deps/` folder.
/// `cargo test --workspace` builds `weir-broker` (its package has integration tests) and
/// `weir` before running any test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo test --workspace` (or `cargo build --bins`)",
        path.display()
    );
    path
}

/// Runs the client example `name` (built by `cargo test`) against the broker at `addr`;
/// asserts it exits 0 and returns what it printed.
pub async fn run_example(name: &str, addr: SocketAddr) -> String {
    let example = workspace_bin(&format!("examples/{name}"));
    let out =
        tokio::task::spawn_blocking(move || Command::new(example).arg(addr.to_string()).output())
            .await
            .expect("example task")
            .expect("run example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A running `weir-broker` process. Killed (SIGKILL) on drop if still running.
pub struct BrokerProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin endpoint listens, once it has said so (see [`BrokerProcess::admin_addr`]).
    admin: std::sync::Mutex<AdminAddr>,
    child: Child,
    log: Option<std::thread::JoinHandle<Vec<String>>>,
}

/// The admin endpoint's address: still to be read from the log, or known.
enum AdminAddr {
    Pending(std::sync::mpsc::Receiver<Option<SocketAddr>>),
    Known(SocketAddr),
}

/// Runs `weir-broker` with `args` (no listening flags added) and waits, at most 30 s, for it to
/// exit on its own — for starts that must fail, `--print-config` and `hash-token`-like runs;
/// returns what it printed. Kills it and panics past 30 s.
pub fn broker_exits(args: &[&str]) -> Output {
    let mut child = Command::new(workspace_bin("weir-broker"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir-broker");
    let deadline = Instant::now() + Duration::from_secs(30);
    // Polling a child process's exit: there is no event to await for it in std.
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weir-broker {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

impl BrokerProcess {
    /// Starts `weir-broker --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir <dir>`
    /// plus `args`, and waits for its "listening" log line to learn the port.
    pub fn start(data_dir: &Path, args: &[&str]) -> BrokerProcess {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), data_dir, args)
    }

    /// [`BrokerProcess::start`], listening on `listen` instead of a free port: to restart a
    /// broker on the port and data directory of one that was stopped, so its clients find it
    /// again (`BrokerProcess::start_at(old.addr, dir, &[])`).
    pub fn start_at(listen: SocketAddr, data_dir: &Path, args: &[&str]) -> BrokerProcess {
        let mut child = Command::new(workspace_bin("weir-broker"))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weir-broker");
        let stdout = child.stdout.take().expect("stdout");
        let (addr_tx, addr_rx) = std::sync::mpsc::sync_channel(1);
        let (admin_tx, admin_rx) = std::sync::mpsc::sync_channel(1);
        // Keeps reading so the child never blocks on a full pipe; returns every line at exit.
        let log = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let addr = || {
                    line.split("addr=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(|a| a.parse::<SocketAddr>().ok())
                };
                if line.contains("admin endpoint serving") {
                    if let Some(a) = addr() {
                        let _ = admin_tx.try_send(a);
                    }
                } else if line.contains("listening") {
                    if let Some(a) = addr() {
                        let _ = addr_tx.try_send(a);
                    }
                }
                lines.push(line);
            }
            lines
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(addr)) => break addr,
                Ok(None) => panic!("weir-broker printed an unparsable listen address"),
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("weir-broker exited during start: {status}");
                    }
                    assert!(
                        Instant::now() < deadline,
                        "weir-broker did not start listening in time"
                    );
                }
            }
        };
        BrokerProcess {
            addr,
            admin: std::sync::Mutex::new(AdminAddr::Pending(admin_rx)),
            child,
            log: Some(log),
        }
    }

    /// Where the admin endpoint listens; waits (at most the start timeout) for its log line.
    pub fn admin_addr(&self) -> SocketAddr {
        let mut admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if let AdminAddr::Pending(rx) = &*admin {
            let addr = rx
                .recv_timeout(START_TIMEOUT)
                .expect("weir-broker did not announce its admin endpoint")
                .expect("weir-broker printed an unparsable admin address");
            *admin = AdminAddr::Known(addr);
        }
        match &*admin {
            AdminAddr::Known(addr) => *addr,
            AdminAddr::Pending(_) => unreachable!("resolved above"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process's resident set size, in bytes (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// `SIGKILL`s the process and reaps it.
    pub fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits (at most `timeout`) for the process to exit; returns its status and its log.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("weir-broker did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let lines = self
            .log
            .take()
            .and_then(|log| log.join().ok())
            .unwrap_or_default();
        (status, lines)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` to exit and returns what it printed; past `limit` it is killed
/// (`SIGKILL`) and the test fails naming `what` — a test never waits on a child unbounded.
pub async fn output_within(child: Child, limit: Duration, what: &str) -> Output {
    let pid = child.id();
    let waited = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait for the child")),
    )
    .await;
    match waited {
        Ok(out) => out.expect("wait task"),
        Err(_) => {
            // SAFETY: kill(2) has no memory effects; the pid is our own child's.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{what} did not exit within {limit:?}");
        }
    }
}
