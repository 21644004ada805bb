//! [`ConnTask`]: the one background task per client that owns the socket — it writes what the
//! handles ask for in batches, reads and routes what the broker sends, and, when the connection
//! is lost, reconnects per the [`crate::ReconnectPolicy`] and sends again what must go again.
//!
//! Writes are batched: every frame is encoded straight into one write buffer, and the buffer is
//! written with one `write` per wake-up of the task, however many frames it holds. While the
//! buffer holds more than [`WRITE_HIGH_WATER`] bytes, the task takes no new commands, so the
//! queue fills and pressure reaches the callers. Reading never waits on writing: a broker that
//! has stopped reading (its unconfirmed-publish cap) still gets its confirms read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use weir_protocol::{CodecError, Frame, GoingAwayReason};

use super::handshake::{self, going_away, worth_retrying, Io, Session};
use super::outbox::Outbox;
use super::routing::{refuse_replay, Batching, Replay, Router};
use super::shared::{Command, ConnShared};
use crate::error::ClientError;
use crate::options::ClientOptions;
use crate::reconnect::{ConnectionState, Schedule};

/// While the write buffer holds more than this many bytes (256 KiB), the connection task takes
/// no new commands. One frame may overshoot it, so the buffer is bounded by this plus one frame.
pub(crate) const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Most commands the task takes per wake-up before it writes (and reads) again.
const COMMANDS_PER_WAKE: usize = 256;

/// How long a connection whose handles are all gone may take to write its last frames.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most frames the task decodes from already-buffered input per wake-up.
const FRAMES_PER_WAKE: usize = 256;

/// How long an ack (or nack, term, progress) may wait to be batched with others before the
/// task sends it anyway.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(5);

/// How publishes are coalesced on the connection of `session`.
fn batching(opts: &ClientOptions, session: &Session) -> Batching {
    Batching::new(opts, session.version, session.codec.max_frame_bytes())
}

/// Whether `e` is the end of a connection the broker closed as idle, which the task heals when
/// the next command needs the broker.
fn is_idle_close(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::GoingAway {
            reason: GoingAwayReason::Idle,
            ..
        }
    )
}

/// Whether `e` is a lost connection the task reconnects after (when reconnecting is on): the
/// broker went away (shutting down, slow consumer) or the socket ended or failed. Not a broken
/// protocol or a refusal, which another connection would meet again.
fn is_lost(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io(_) | ClientError::ConnectionLost | ClientError::GoingAway { .. }
    )
}

/// The connection task. See the module docs.
pub(crate) struct ConnTask {
    /// The live socket; `None` while reconnecting or disconnected.
    io: Option<Io>,
    out: Outbox,
    router: Router,
    cmd_rx: mpsc::Receiver<Command>,
    /// Some handle may still send commands (`cmd_rx` has not returned `None`).
    commands_open: bool,
    /// What the last connection left unanswered, to be sent again before any new command: at
    /// most the window of each publisher, the subscriptions, and the requests that were waiting.
    replay: VecDeque<Replay>,
    /// Where to (re)connect: the address given to [`crate::Client::connect`], resolved again at
    /// every attempt.
    addr: String,
    opts: ClientOptions,
    shared: Arc<ConnShared>,
    flush_deadline: Option<Instant>,
    /// When the publishes being coalesced go even if their batch is not full (`linger`).
    batch_deadline: Option<Instant>,
}

impl ConnTask {
    /// The task of a connection just opened (`session`) to `addr`.
    pub fn new(
        session: Session,
        addr: String,
        opts: ClientOptions,
        shared: Arc<ConnShared>,
        cmd_rx: mpsc::Receiver<Command>,
    ) -> ConnTask {
        let mut router = Router::new(opts.reconnect.is_enabled());
        router.set_batching(batching(&opts, &session));
        ConnTask {
            io: Some(session.io),
            out: Outbox::new(session.codec),
            router,
            cmd_rx,
            commands_open: true,
            replay: VecDeque::new(),
            addr,
            opts,
            shared,
            flush_deadline: None,
            batch_deadline: None,
        }
    }

    /// Ends a round of commands: with `linger` zero, the publishes being coalesced go now;
    /// otherwise they go when `linger` has passed since the first of them waited (or their
    /// batch fills).
    fn end_of_commands(&mut self) -> Result<(), ClientError> {
        if self.opts.linger.is_zero() {
            return self.router.flush_batch(&mut self.out);
        }
        if self.router.has_open_batch() {
            self.batch_deadline
                .get_or_insert_with(|| Instant::now() + self.opts.linger);
        } else {
            self.batch_deadline = None;
        }
        Ok(())
    }

    /// Runs the connection, across its reconnects, until it ends for good.
    pub async fn run(mut self) {
        let err = loop {
            let end = match self.run_loop().await {
                Ok(()) => break ClientError::ConnectionLost,
                Err(e) => e,
            };
            let idle_close = is_idle_close(&end);
            let reconnects = idle_close || (self.opts.reconnect.is_enabled() && is_lost(&end));
            if !reconnects {
                break end;
            }
            self.disconnect(&end, idle_close);
            if let Err(e) = self.heal(&end, idle_close).await {
                break e;
            }
        };
        match &err {
            ClientError::ConnectionLost => tracing::debug!("weir connection closed"),
            e => tracing::debug!(error = %e, "weir connection ended"),
        }
        self.shared.set_terminal(err.clone());
        self.cmd_rx.close();
        self.router.fail_all(&err);
        for replay in self.replay.drain(..) {
            refuse_replay(replay, &err);
        }
        // Commands still queued are dropped; their reply senders close, and the waiting handles
        // read the terminal error set above.
        while self.cmd_rx.try_recv().is_ok() {}
    }

    /// The socket is gone: takes back what must go again on the next one, ahead of anything
    /// still waiting from an earlier loss.
    fn disconnect(&mut self, end: &ClientError, idle_close: bool) {
        self.io = None;
        self.flush_deadline = None;
        self.batch_deadline = None;
        let taken = self.router.take_unanswered(end, idle_close);
        for replay in taken.into_iter().rev() {
            self.replay.push_front(replay);
        }
    }

    /// After a loss: connects again at once when something must go again (unanswered
    /// publishes, subscriptions), otherwise when the next command needs the broker (an
    /// unsubscribe does not: nothing is subscribed, so it is answered here). Handles wait in
    /// the bounded command queue meanwhile.
    ///
    /// With reconnecting on, it tries per the policy and gives up with
    /// [`ClientError::ReconnectFailed`], which ends the client. With it off (only an idle close
    /// gets here then), one attempt per need: a failed one fails what waited for it and every
    /// command queued by then with its error, and the next command tries again.
    ///
    /// Returns `Ok` once connected again; `Err(end)` when every handle is gone with nothing
    /// left to send.
    async fn heal(&mut self, end: &ClientError, idle_close: bool) -> Result<(), ClientError> {
        loop {
            if self.replay.is_empty() {
                self.shared.set_state(ConnectionState::Disconnected);
                let cmd = match self.commands_open {
                    true => self.cmd_rx.recv().await,
                    false => None,
                };
                match cmd {
                    None => {
                        self.commands_open = false;
                        return Err(end.clone());
                    }
                    Some(Command::Unsubscribe { reply, .. }) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(()));
                        }
                        continue;
                    }
                    Some(cmd) => self.replay.push_back(Replay::Command { cmd, sent: false }),
                }
            }
            match self.reconnect(end, idle_close).await {
                Ok(session) => {
                    self.router.set_batching(batching(&self.opts, &session));
                    self.io = Some(session.io);
                    self.out.reset(session.codec);
                    self.shared.set_limits(session.limits);
                    self.shared.count_reconnect();
                    self.shared.set_state(ConnectionState::Connected);
                    return Ok(());
                }
                Err(e) if !self.opts.reconnect.is_enabled() => {
                    tracing::debug!(error = %e, "weir reconnect failed");
                    for replay in self.replay.drain(..) {
                        refuse_replay(replay, &e);
                    }
                    // Only those queued now: a caller that keeps sending cannot hold the task here.
                    for _ in 0..self.cmd_rx.len() {
                        match self.cmd_rx.try_recv() {
                            Ok(cmd) => refuse_replay(Replay::Command { cmd, sent: false }, &e),
                            Err(_) => break,
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a new connection: one attempt with reconnecting off; otherwise attempts with
    /// backoff per the policy until one succeeds or it gives up.
    async fn reconnect(&self, end: &ClientError, idle_close: bool) -> Result<Session, ClientError> {
        let policy = self.opts.reconnect.clone();
        if !policy.is_enabled() {
            return handshake::connect(&self.addr, &self.opts).await;
        }
        let addr = self.addr.as_str();
        if idle_close {
            tracing::debug!(
                addr,
                "weir connection closed idle by the broker; reconnecting"
            );
        } else {
            tracing::warn!(addr, cause = %end, "weir connection lost; reconnecting");
        }
        let mut schedule = Schedule::new(policy, std::time::Instant::now());
        loop {
            let attempt = schedule.begin_attempt();
            let since = schedule.since();
            self.shared
                .set_state(ConnectionState::Reconnecting { attempt, since });
            tracing::debug!(addr, attempt, "weir reconnect attempt");
            let e = match handshake::connect(addr, &self.opts).await {
                Ok(session) => {
                    tracing::info!(addr, attempts = attempt, elapsed = ?since.elapsed(), "weir reconnected");
                    return Ok(session);
                }
                Err(e) => e,
            };
            let delay = match worth_retrying(&e) {
                true => {
                    let hint = match &e {
                        ClientError::ConnectionRejected {
                            retry_after_ms: Some(ms),
                            ..
                        } => Duration::from_millis(*ms),
                        _ => Duration::ZERO,
                    };
                    schedule.next_delay(std::time::Instant::now(), hint, &mut rand::rng())
                }
                false => None,
            };
            match delay {
                Some(delay) => {
                    tracing::debug!(addr, attempt, error = %e, ?delay, "weir reconnect attempt failed");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    let failed = ClientError::ReconnectFailed {
                        addr: self.addr.clone(),
                        elapsed: since.elapsed(),
                        attempts: attempt,
                        last: Arc::new(e),
                    };
                    tracing::warn!(error = %failed, "weir reconnecting gave up");
                    return Err(failed);
                }
            }
        }
    }

    async fn run_loop(&mut self) -> Result<(), ClientError> {
        loop {
            // What the last connection left unanswered goes first, before any new command.
            while self.router.going_away.is_none() && self.out.len() < WRITE_HIGH_WATER {
                match self.replay.pop_front() {
                    Some(Replay::Command { cmd, .. }) => {
                        self.router.on_command(cmd, &mut self.out)?
                    }
                    Some(Replay::Resubscribe(entry)) => {
                        self.router.resubscribe(entry, &mut self.out)?
                    }
                    None => break,
                }
            }
            self.end_of_commands()?;
            let finished = !self.commands_open && self.router.idle() && self.replay.is_empty();
            // After a GoingAway, new commands wait in the queue for the next connection.
            let accept = self.commands_open
                && self.replay.is_empty()
                && self.router.going_away.is_none()
                && self.out.len() < WRITE_HIGH_WATER;
            let Some(io) = self.io.as_mut() else {
                return Err(ClientError::ConnectionLost);
            };
            if finished {
                self.router.flush_batch(&mut self.out)?;
                // Every handle is gone and nothing waits for an answer: send what is left
                // (unsubscribes, final acks) and close, without waiting forever on a broker that
                // does not read.
                let goodbye = async {
                    io.writer.write_all(&self.out.buf).await?;
                    io.writer.flush().await?;
                    io.writer.shutdown().await
                };
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await;
                return Ok(());
            }
            let deadline = self.flush_deadline;
            let write = !self.out.buf.is_empty() || io.unflushed;
            tokio::select! {
                biased;
                written = handshake::write_or_flush(&mut io.writer, &mut self.out.buf), if write => {
                    match written {
                        Ok(Some(0)) => return Err(self.explain(std::io::ErrorKind::WriteZero.into())),
                        Ok(Some(_)) => io.unflushed = true,
                        Ok(None) => io.unflushed = false,
                        Err(e) => return Err(self.explain(e)),
                    }
                }
                frame = io.reader.next() => {
                    self.on_read(frame)?;
                    for _ in 0..FRAMES_PER_WAKE {
                        match self.next_buffered() {
                            Some(frame) => self.on_read(frame)?,
                            None => break,
                        }
                    }
                }
                cmd = self.cmd_rx.recv(), if accept => match cmd {
                    Some(cmd) => {
                        self.router.on_command(cmd, &mut self.out)?;
                        for _ in 0..COMMANDS_PER_WAKE {
                            if self.out.len() >= WRITE_HIGH_WATER {
                                break;
                            }
                            match self.cmd_rx.try_recv() {
                                Ok(cmd) => self.router.on_command(cmd, &mut self.out)?,
                                Err(_) => break,
                            }
                        }
                        self.end_of_commands()?;
                    }
                    None => {
                        self.commands_open = false;
                        self.router.flush_batch(&mut self.out)?;
                    }
                },
                _ = tokio::time::sleep_until(self.batch_deadline.unwrap_or_else(Instant::now)), if self.batch_deadline.is_some() => {
                    self.batch_deadline = None;
                    self.router.flush_batch(&mut self.out)?;
                }
                _ = self.shared.flush_now.notified() => self.flush_acks()?,
                _ = self.shared.flush_soon.notified(), if deadline.is_none() => {
                    self.flush_deadline = Some(Instant::now() + ACK_DELAY);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.flush_acks()?;
                }
            }
        }
    }

    /// Sends the pending acks (nacks, terms, progress) and credit of every subscription.
    fn flush_acks(&mut self) -> Result<(), ClientError> {
        self.flush_deadline = None;
        self.router.flush_acks(&mut self.out)
    }

    /// The error to report for a failed write: the broker usually said why it closed the
    /// connection (`Error`, `GoingAway`) just before, so frames already received are read first.
    fn explain(&mut self, e: std::io::Error) -> ClientError {
        for _ in 0..FRAMES_PER_WAKE {
            match self.next_buffered() {
                Some(Some(Ok(frame))) => {
                    if let Err(why) = self.route(frame) {
                        return why;
                    }
                }
                _ => break,
            }
        }
        match self.router.going_away.take() {
            Some(g) => going_away(g),
            None => e.into(),
        }
    }

    /// The next frame if it is already buffered (or the end of the socket, if it has ended).
    fn next_buffered(&mut self) -> Option<Option<Result<Frame, CodecError>>> {
        self.io.as_mut()?.reader.next().now_or_never()
    }

    /// Routes one frame from the broker, counting the publishes it answers as duplicates.
    fn route(&mut self, frame: Frame) -> Result<(), ClientError> {
        if let Frame::PublishOk(ok) = &frame {
            if ok.duplicate {
                self.shared.count_duplicate();
            }
        }
        self.router.on_frame(frame, &mut self.out)
    }

    fn on_read(&mut self, frame: Option<Result<Frame, CodecError>>) -> Result<(), ClientError> {
        match frame {
            Some(Ok(frame)) => self.route(frame),
            // The broker said why it closes; a reset after that is the same end.
            Some(Err(CodecError::Io(e))) => Err(match self.router.going_away.take() {
                Some(g) => going_away(g),
                None => e.into(),
            }),
            Some(Err(e)) => Err(e.into()),
            None => Err(match self.router.going_away.take() {
                Some(g) => going_away(g),
                None => ClientError::ConnectionLost,
            }),
        }
    }
}
