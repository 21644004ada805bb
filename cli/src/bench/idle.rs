//! `weir bench --idle-connections N`: connections opened before the throughput run and held
//! idle through it, to see what holding them costs the run (its p99 beside them).
//!
//! Each is a client connection of its own (`Hello` done, no subscription, no topic), opened
//! [`OPEN_PARALLEL`] at a time, each within [`OPEN_TIMEOUT`]. The broker closes a connection
//! that sends nothing for `idle_timeout` (announced in `HelloOk`), so one keeper task pings them
//! in turn, spaced evenly so that each is pinged every third of that timeout: about
//! `N / (idle_timeout / 3)` pings a second in all (25/s for 5 000 connections at the default
//! 10 minutes), never a burst. A ping is the least a connection can send to stay open and what
//! an idle application's client library does; a subscription would also keep it open, but would
//! add a topic, a group and per-consumer state at the broker — a subscriber, not an idle
//! connection.
//!
//! Opening fails the whole run, clearly and at once, on the first connection the broker refuses
//! (`max_connections`, `max_connections_per_ip`), on a failure of the OS (out of file
//! descriptors: the soft limit is first raised to the hard one), or when one takes longer than
//! [`OPEN_TIMEOUT`] or all of them longer than [`OPEN_LIMIT`]; the ones already open are closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_client::{Client, ClientError, ClientOptions, ReconnectPolicy};

use super::common::raise_nofile;

/// Connection attempts in progress at once.
const OPEN_PARALLEL: usize = 64;
/// Longest one connection (TCP, TLS, `Hello`) may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest opening all of them may take.
const OPEN_LIMIT: Duration = Duration::from_secs(300);
/// Longest one keep-alive ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest gap between two pings of the keeper (with very many connections or a very short
/// `idle_timeout`, a connection is pinged less often than a third of it: the report says so).
const MIN_PING_GAP: Duration = Duration::from_millis(1);
/// Most idle connections one run opens (one file descriptor each).
pub const MAX_IDLE: usize = 100_000;
/// File descriptors kept free beside the connections (the run's own, TLS files, stdio).
const SPARE_FDS: usize = 256;

/// What the idle connections did over the run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections asked for (`--idle-connections`).
    pub requested: usize,
    /// Connections opened before the run.
    pub opened: usize,
    /// Of those, still connected at the end without ever having been closed and reopened.
    pub held: usize,
    /// Seconds opening them took.
    pub open_s: f64,
    /// The broker's `idle_timeout` (from `HelloOk`), ms; 0 when it closes no idle connection.
    pub idle_timeout_ms: u64,
    /// The gap between two pings of one connection, ms (`None`: no pings needed).
    pub ping_every_ms: Option<u64>,
    /// Keep-alive pings answered.
    pub pings: u64,
    /// Keep-alive pings that failed or took longer than 10 s.
    pub ping_errors: u64,
}

/// Idle connections being held, with the task keeping them open.
pub struct Idle {
    clients: Arc<Vec<Client>>,
    requested: usize,
    open_s: f64,
    idle_timeout_ms: u64,
    ping_every: Option<Duration>,
    stop: watch::Sender<bool>,
    keeper: JoinHandle<(u64, u64)>,
}

impl Idle {
    /// Opens `n` connections to `server` (reconnecting off: a connection lost stays lost and
    /// counts as not held) and starts pinging them; `others` is how many connections the run
    /// opens besides, for the open-file limit. Fails as described in the module documentation,
    /// or with `interrupted` when `interrupt` turns true while opening.
    pub async fn open(
        server: &str,
        options: &ClientOptions,
        n: usize,
        others: usize,
        mut interrupt: watch::Receiver<bool>,
    ) -> anyhow::Result<Idle> {
        anyhow::ensure!(
            n <= MAX_IDLE,
            "--idle-connections is at most {MAX_IDLE} (one file descriptor each)"
        );
        let want = n + others + SPARE_FDS;
        if let Some(short) = raise_nofile(want as libc::rlim_t) {
            anyhow::bail!(
                "--idle-connections {n}: {short} (raise it: `ulimit -n {want}`, or a lower --idle-connections)"
            );
        }
        let options = ClientOptions {
            reconnect: ReconnectPolicy::disabled(),
            ..options.clone()
        };
        let started = Instant::now();
        let mut attempts = futures::stream::iter(0..n)
            .map(|_| {
                tokio::time::timeout(OPEN_TIMEOUT, Client::connect_with(server, options.clone()))
            })
            .buffer_unordered(OPEN_PARALLEL);
        let deadline = tokio::time::Instant::now() + OPEN_LIMIT;
        let mut clients = Vec::with_capacity(n);
        while clients.len() < n {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, attempts.next()) => next,
                _ = interrupt.wait_for(|stop| *stop) => anyhow::bail!("interrupted"),
            };
            let k = clients.len();
            match next {
                Ok(Some(Ok(Ok(client)))) => clients.push(client),
                Ok(Some(Ok(Err(e)))) => anyhow::bail!(
                    "opening {n} idle connections: one failed when {k} were open: {e}{}",
                    hint(&e)
                ),
                Ok(Some(Err(_))) => anyhow::bail!(
                    "opening {n} idle connections: one was not open within {OPEN_TIMEOUT:?} when {k} were open"
                ),
                Ok(None) => break,
                Err(_) => anyhow::bail!(
                    "opening {n} idle connections took more than {OPEN_LIMIT:?} ({k} opened)"
                ),
            }
        }
        let open_s = started.elapsed().as_secs_f64();
        let idle_timeout_ms = clients.first().map_or(0, |c| c.limits().idle_timeout_ms);
        let ping_every = (idle_timeout_ms > 0 && !clients.is_empty())
            .then(|| Duration::from_millis(idle_timeout_ms / 3));
        let clients = Arc::new(clients);
        let (stop, stopped) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(clients.clone(), ping_every, stopped));
        Ok(Idle {
            clients,
            requested: n,
            open_s,
            idle_timeout_ms,
            ping_every,
            stop,
            keeper,
        })
    }

    /// Stops pinging, counts the connections still held, closes them all and reports.
    pub async fn finish(self) -> IdleReport {
        let _ = self.stop.send(true);
        let (pings, ping_errors) = self.keeper.await.unwrap_or((0, 0));
        let held = self
            .clients
            .iter()
            .filter(|c| c.is_connected() && c.reconnects() == 0)
            .count();
        let n = self.clients.len();
        // The gap between two pings of one connection: the keeper's step times the connections.
        let ping_every_ms = self
            .ping_every
            .map(|every| (step(every, n).as_secs_f64() * 1e3 * n as f64).round() as u64);
        IdleReport {
            requested: self.requested,
            opened: n,
            held,
            open_s: self.open_s,
            idle_timeout_ms: self.idle_timeout_ms,
            ping_every_ms,
            pings,
            ping_errors,
        }
    }
}

/// A hint after a failed connection: which bound or limit to raise.
fn hint(e: &ClientError) -> &'static str {
    match e {
        ClientError::ConnectionRejected { .. } => {
            " — the broker's limits.max_connections and limits.max_connections_per_ip must hold the idle connections and the run's"
        }
        ClientError::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            " — out of file descriptors: raise `ulimit -n`"
        }
        _ => "",
    }
}

/// The keeper's gap between two pings so that each of `n` connections is pinged every `every`
/// (at least [`MIN_PING_GAP`]).
fn step(every: Duration, n: usize) -> Duration {
    (every / n.max(1) as u32).max(MIN_PING_GAP)
}

/// Pings `clients` one after the other, spaced so each is pinged every `every`, until `stop`;
/// (answered, failed). With no `every` it only waits for `stop`.
async fn keep_alive(
    clients: Arc<Vec<Client>>,
    every: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> (u64, u64) {
    let (mut pings, mut errors) = (0, 0);
    let Some(every) = every else {
        let _ = stop.wait_for(|s| *s).await;
        return (pings, errors);
    };
    let gap = step(every, clients.len());
    // The first round starts one gap in: every connection has just said Hello.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + gap, gap);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for client in clients.iter().cycle() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        tokio::select! {
            answer = tokio::time::timeout(PING_TIMEOUT, client.ping()) => match answer {
                Ok(Ok(_)) => pings += 1,
                _ => errors += 1,
            },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    (pings, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_are_spread_over_a_third_of_the_idle_timeout() {
        // 5 000 connections, idle_timeout 10 min: a ping every 40 ms, each connection every 200 s.
        assert_eq!(
            step(Duration::from_secs(200), 5000),
            Duration::from_millis(40)
        );
        assert_eq!(step(Duration::from_millis(10), 1_000_000), MIN_PING_GAP);
        assert_eq!(step(Duration::from_secs(1), 0), Duration::from_secs(1));
    }
}
