//! Harness for Weir's end-to-end tests: a broker in this process ([`TestBroker`]), the real
//! `weir-broker` binary in a child process ([`BrokerProcess`]) for kill and signal tests, and
//! a raw protocol client ([`RawClient`]) for exact wire-level assertions.
//!
//! Every broker binds `127.0.0.1:0` and keeps its data in a temporary directory.

pub mod process;
pub mod wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weir_broker::{Broker, Clock, Config};

pub use process::BrokerProcess;
pub use wire::RawClient;

/// Waits until `check` holds, re-checking every few milliseconds; panics naming `what` after
/// [`wire::FRAME_TIMEOUT`]. For state with no event to await (a gauge going down).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wire::FRAME_TIMEOUT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A configuration for tests: data in `dir`, port 0, state flushed often.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.storage.state_flush_ms = 20;
    // Tests must not depend on the test machine's free disk space.
    config.storage.min_free_bytes = 16 * 1024 * 1024;
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

/// A broker running inside the test process on a free loopback port.
pub struct TestBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its HTTP admin endpoint listens.
    pub admin_addr: SocketAddr,
    /// Its data directory (kept across [`TestBroker::restart`]).
    pub dir: Arc<TempDir>,
    /// The broker itself, for its counters and topic state.
    pub broker: Broker,
    /// The broker's clock (kept across restarts): real time, or paused
    /// ([`TestBroker::start_paused_with`]) — then ack deadlines, nack delays and rate windows
    /// pass only when the test calls `clock.advance(..)`.
    pub clock: Clock,
    config: Config,
    /// The file layer its topics write through (kept across restarts).
    fs: weir_broker::storage::fs::Fs,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// Starts a broker with the test defaults.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker after `tweak` adjusts the test defaults.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        Self::start_on(weir_broker::storage::fs::os(), tweak).await
    }

    /// Starts a broker on a paused clock ([`Clock::paused`]), after `tweak` adjusts the test
    /// defaults: its ack deadlines, nack delays and rate windows stand still until the test
    /// advances [`TestBroker::clock`], so a test waits for an event, never for time to pass.
    pub async fn start_paused_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
        Self::start_timed(weir_broker::storage::fs::os(), Clock::paused(), tweak).await
    }

    /// Starts a broker whose topic files go through `fs` (a fault-injecting layer), after
    /// `tweak` adjusts the test defaults.
    pub async fn start_on(
        fs: weir_broker::storage::fs::Fs,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        Self::start_timed(fs, Clock::system(), tweak).await
    }

    /// Starts a broker with files through `fs` and time from `clock`, after `tweak`.
    async fn start_timed(
        fs: weir_broker::storage::fs::Fs,
        clock: Clock,
        tweak: impl FnOnce(&mut Config),
    ) -> TestBroker {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Self::launch(dir, config, fs, clock).await
    }

    async fn launch(
        dir: Arc<TempDir>,
        config: Config,
        fs: weir_broker::storage::fs::Fs,
        clock: Clock,
    ) -> TestBroker {
        let listener = TcpListener::bind(config.listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .expect("bind admin");
        let admin_addr = admin_listener.local_addr().expect("admin address");
        let broker = Broker::open_on(config.clone(), fs.clone(), clock.clone())
            .await
            .expect("broker opens");
        let handle = broker.clone();
        // What `server::run` does, keeping a handle to the broker for assertions.
        let task = tokio::spawn(async move {
            let admin_stop = tokio_util::sync::CancellationToken::new();
            let admin = tokio::spawn(weir_broker::admin::serve(admin_listener, broker.clone(), {
                let stop = admin_stop.clone();
                async move { stop.cancelled().await }
            }));
            weir_broker::server::serve(listener, broker.clone(), async {
                let _ = stop.await;
            })
            .await;
            broker.close().await;
            admin_stop.cancel();
            let _ = admin.await;
        });
        TestBroker {
            addr,
            admin_addr,
            dir,
            broker: handle,
            clock,
            config,
            fs,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Shuts the broker down gracefully and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("broker task");
        }
    }

    /// Stops the broker and starts a new one on the same data directory (on a new port).
    pub async fn restart(self) -> TestBroker {
        self.restart_with(|_| {}).await
    }

    /// Stops the broker and starts a new one on the same data directory (and the same clock)
    /// after `tweak` adjusts its configuration.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> TestBroker {
        self.stop().await;
        let (dir, mut config, fs) = (self.dir.clone(), self.config.clone(), self.fs.clone());
        let clock = self.clock.clone();
        tweak(&mut config);
        // Our handle keeps the state store (and its file lock) open: let go of it first.
        drop(self);
        Self::launch(dir, config, fs, clock).await
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Total bytes of the files under `dir` (recursively); panics if `dir` itself cannot be read,
/// so a wrong path never passes as "empty". Entries deleted while it looks (the broker
/// reclaims segments asynchronously) are skipped, not an error.
pub fn dir_size(dir: &Path) -> u64 {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read directory {}: {e}", dir.display()));
    entries_size(entries)
}

fn entries_size(entries: std::fs::ReadDir) -> u64 {
    entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(path, meta)| {
            if meta.is_dir() {
                std::fs::read_dir(path).map_or(0, entries_size)
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Polls [`dir_size`] until it is at most `bound` or `timeout` passes; returns the last size
/// measured (the caller asserts on it, so a failure shows how far off it was). For waiting on
/// asynchronous segment deletion.
pub async fn wait_for_dir_size_at_most(
    dir: &Path,
    bound: u64,
    timeout: std::time::Duration,
) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let size = dir_size(dir);
        if size <= bound || tokio::time::Instant::now() >= deadline {
            return size;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What a healthy tenant saw: publishes confirmed and refused, messages consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Healthy {
    /// Publishes answered `PublishOk`.
    pub confirmed: usize,
    /// Publishes answered anything else.
    pub refused: usize,
    /// Messages delivered (and acked) to its subscriber.
    pub consumed: usize,
}

/// A healthy neighbour: one connection publishes `n` small messages to `topic`, one at a time,
/// while another subscribes (group `healthy`, credit 50) and consumes every one, acking as it
/// goes. Connects with `token`, from `source` (a loopback address) when given. Panics if any
/// step takes longer than [`wire::FRAME_TIMEOUT`] — so an offender that starves it fails the
/// test instead of hanging it.
pub async fn healthy_neighbour(
    addr: std::net::SocketAddr,
    topic: &str,
    n: usize,
    (token, source): (Option<&str>, Option<std::net::IpAddr>),
) -> Healthy {
    use weir_protocol::{Ack, Credit, Frame};
    let connect = || async move {
        let mut client = match source {
            Some(ip) => RawClient::connect_raw_from(addr, ip).await,
            None => RawClient::connect_raw(addr).await,
        };
        client.hello(token).await;
        match client.recv().await {
            Frame::HelloOk(_) => client,
            other => panic!("the healthy neighbour could not connect: {other:?}"),
        }
    };
    let mut subscriber = connect().await;
    subscriber.subscribe(1, topic, "healthy", 50).await;
    let consumer = async move {
        let mut consumed = 0;
        while consumed < n {
            let d = subscriber.deliveries(1).await.remove(0);
            subscriber
                .send(Frame::Ack(Ack {
                    sub: 1,
                    seqs: vec![d.seq],
                }))
                .await;
            subscriber
                .send(Frame::Credit(Credit { sub: 1, n: 1 }))
                .await;
            consumed += 1;
        }
        consumed
    };
    let mut publisher = connect().await;
    let producer = async move {
        let (mut confirmed, mut refused) = (0, 0);
        for i in 0..n {
            match publisher.publish(topic, format!("healthy-{i}")).await {
                Frame::PublishOk(_) => confirmed += 1,
                other => {
                    eprintln!("healthy neighbour refused: {other:?}");
                    refused += 1;
                }
            }
        }
        (confirmed, refused)
    };
    let ((confirmed, refused), consumed) = tokio::join!(producer, consumer);
    Healthy {
        confirmed,
        refused,
        consumed,
    }
}

/// The sum of every series named `name` (without suffixes such as `_total` added) in the
/// broker's `GET /metrics` at `admin`, read over a plain HTTP/1.0 request; `None` if absent.
pub async fn scrape(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let request = "GET /metrics HTTP/1.0\r\nHost: weir\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(wire::FRAME_TIMEOUT, stream.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
