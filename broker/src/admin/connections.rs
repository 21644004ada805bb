//! The admin endpoint's connections: accepted, capped and timed here, each served by hyper's
//! HTTP/1 connection with the admin [`Router`] as its service.
//!
//! `axum::serve` has no header, body or idle timeouts, and hyper's own `header_read_timeout`
//! (hyper 1.12) cannot tell them apart: its timer starts when the connection opens *and again
//! when a kept-alive connection starts waiting for its next request*, so it would close every
//! idle kept-alive connection at the header timeout and leave `idle_timeout_ms` dead. It is
//! therefore switched off, and a watchdog per connection follows the connection's phase
//! instead:
//!
//! | phase | from | bound | at the bound |
//! |---|---|---|---|
//! | head: the request's headers are arriving | the connection getting its slot (first request), or the first byte after the previous answer (later requests) | `admin.header_read_timeout_ms` | the connection is closed (no answer), `weir_admin_header_timeouts_total` |
//! | busy: the request is being handled, its answer written | the headers complete | none here: the body has its own bound (below); handlers are bounded themselves | — |
//! | idle: kept alive, waiting for a request | the previous answer handed to hyper in full | `admin.idle_timeout_ms` | the connection is closed, `weir_admin_idle_closed_total` |
//! | idle, while a new connection waits for a slot at `admin.max_connections` | — | at once | the connection is closed, `weir_admin_idle_reclaimed_total` |
//!
//! The body of a request is bounded by `admin.body_read_timeout_ms` from its headers: a body
//! that has not all arrived by then fails the handler's read, and the request is answered
//! `408 Request Timeout` with `{"error"}` and `Connection: close`
//! (`weir_admin_body_timeouts_total`). A handler that does not read the body is not bounded by
//! it (hyper closes the connection rather than wait for an unread body).
//!
//! At most `admin.max_connections` connections are served at once: the next one is accepted
//! and waits for a slot (the OS backlog holds the rest), and while it waits, idle kept-alive
//! connections give theirs up. A client that sends nothing therefore holds a slot for at most
//! `header_read_timeout_ms`, and an idle one only until someone needs it.
//!
//! Approximations, each still bounded: bytes of a pipelined request that hyper read before the
//! previous answer was done start no head phase (the idle bound applies to them); an answer
//! counts as done once hyper holds all of it, so a client slow to read a large answer is
//! within the idle bound (and reclaimable) while hyper flushes it.
//!
//! Every request carries the peer's address (`ConnectInfo<PeerAddr>`), which decides whether
//! an anonymous client is allowed (loopback only). Every `413` answered is counted
//! (`weir_admin_payloads_too_large_total`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::responses::error_response;
use super::PeerAddr;
use crate::broker::Broker;
use crate::tls::TlsServer;

/// The timeouts of one admin connection, from `admin.*_timeout_ms`.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    body: Duration,
    idle: Duration,
}

/// Serves admin connections from `listener` with `app` until `shutdown` completes, then lets
/// each connection finish its request in progress (each phase stays bounded) and returns once
/// all are closed. With `tls`, each connection first passes the TLS handshake, within the
/// header timeout and holding its slot.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    broker: Broker,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let admin = &broker.config().admin;
    let timeouts = Timeouts {
        header: Duration::from_millis(admin.header_read_timeout_ms),
        body: Duration::from_millis(admin.body_read_timeout_ms),
        idle: Duration::from_millis(admin.idle_timeout_ms),
    };
    let slots = Arc::new(Semaphore::new(admin.max_connections.max(1) as usize));
    // True while an accepted connection waits for a slot: idle connections then close.
    let (waiting, _) = watch::channel(false);
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::error!(error = %e, "admin accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                waiting.send_replace(true);
                let slot = tokio::select! {
                    _ = &mut shutdown => break,
                    slot = slots.clone().acquire_owned() => slot,
                };
                waiting.send_replace(false);
                match slot {
                    Ok(slot) => slot,
                    Err(_) => unreachable!("the connection semaphore is never closed"),
                }
            }
        };
        while connections.try_join_next().is_some() {}
        let connection = Connection {
            app: app.clone(),
            broker: broker.clone(),
            peer,
            tls: tls.clone(),
            timeouts,
            waiting: waiting.subscribe(),
            stop: stop.clone(),
        };
        connections.spawn(connection.serve(socket, slot));
    }
    stop.cancel();
    while connections.join_next().await.is_some() {}
}

/// Where a connection is in its request cycle (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's headers, since then.
    Head(Instant),
    /// A request is being handled or answered.
    Busy,
    /// Kept alive with no request, since then.
    Idle(Instant),
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Expired {
    Header,
    Idle,
    Reclaimed,
}

/// One accepted connection, before it is served.
struct Connection {
    app: Router,
    broker: Broker,
    peer: SocketAddr,
    /// The TLS configuration of the admin port, when it serves TLS.
    tls: Option<Arc<TlsServer>>,
    timeouts: Timeouts,
    waiting: watch::Receiver<bool>,
    stop: CancellationToken,
}

impl Connection {
    /// Serves the connection until it closes, its watchdog closes it, or the server stops
    /// (then the request in progress is finished first); `slot` is given back at the end.
    async fn serve(mut self, socket: TcpStream, slot: OwnedSemaphorePermit) {
        let mut cert_names = Vec::new();
        let socket: Box<dyn Io> = match &self.tls {
            None => Box::new(socket),
            Some(tls) => {
                let accept = tls.accept(
                    socket,
                    self.peer,
                    "admin",
                    self.timeouts.header,
                    self.broker.metrics(),
                );
                let stream = tokio::select! {
                    stream = accept => stream,
                    _ = self.stop.cancelled() => None,
                };
                match stream {
                    Some(stream) => {
                        cert_names = crate::tls::peer_names(&stream);
                        Box::new(stream)
                    }
                    None => return drop(slot),
                }
            }
        };
        let (phase, mut phases) = watch::channel(Phase::Head(Instant::now()));
        let phase = Arc::new(phase);
        let io = TokioIo::new(Tracked {
            io: socket,
            phase: phase.clone(),
        });
        let exchange = Exchange {
            app: self.app.clone(),
            broker: self.broker.clone(),
            peer: self.peer,
            cert_names: CertNames(cert_names.into()),
            body_timeout: self.timeouts.body,
            phase,
        };
        let service = hyper::service::service_fn(move |request| exchange.clone().run(request));
        let mut http = hyper::server::conn::http1::Builder::new();
        // The watchdog bounds the headers; hyper's timer would also cut idle connections.
        http.header_read_timeout(None);
        let mut connection = Box::pin(http.serve_connection(io, service));
        let mut stopping = false;
        let expired = loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "admin connection failed");
                    }
                    break None;
                }
                why = watchdog(&mut phases, &mut self.waiting, self.timeouts) => break Some(why),
                _ = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        };
        if let Some(why) = expired {
            let metrics = self.broker.metrics();
            let counter = match why {
                Expired::Header => &metrics.admin_header_timeouts,
                Expired::Idle => &metrics.admin_idle_closed,
                Expired::Reclaimed => &metrics.admin_idle_reclaimed,
            };
            counter.add(1);
            tracing::debug!(peer = %self.peer, ?why, "admin connection closed");
        }
        // Dropping the connection closes the socket; then the slot is free.
        drop(connection);
        drop(slot);
    }
}

/// Completes when the connection has stayed too long in its phase: headers incomplete
/// `timeouts.header` after they started, idle for `timeouts.idle`, or idle while `waiting`
/// says a new connection needs a slot. Never completes while a request is busy.
async fn watchdog(
    phases: &mut watch::Receiver<Phase>,
    waiting: &mut watch::Receiver<bool>,
    timeouts: Timeouts,
) -> Expired {
    loop {
        let phase = *phases.borrow_and_update();
        match phase {
            Phase::Head(since) => tokio::select! {
                _ = tokio::time::sleep_until(since + timeouts.header) => return Expired::Header,
                _ = phases.changed() => {}
            },
            Phase::Busy => {
                if phases.changed().await.is_err() {
                    // The connection dropped its service: it is closing anyway.
                    std::future::pending::<()>().await;
                }
            }
            Phase::Idle(since) => tokio::select! {
                _ = tokio::time::sleep_until(since + timeouts.idle) => return Expired::Idle,
                Ok(_) = waiting.wait_for(|w| *w) => return Expired::Reclaimed,
                _ = phases.changed() => {}
            },
        }
    }
}

/// A connection's byte stream: the TCP socket, or the TLS stream over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The socket, noting the first byte of a request that arrives on an idle connection (its
/// header phase starts then).
struct Tracked {
    io: Box<dyn Io>,
    phase: Arc<watch::Sender<Phase>>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.phase.send_if_modified(|phase| match phase {
                Phase::Idle(_) => {
                    *phase = Phase::Head(Instant::now());
                    true
                }
                Phase::Head(_) | Phase::Busy => false,
            });
        }
        read
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The DNS names of the client certificate the admin port's TLS handshake verified (mutual
/// TLS; empty otherwise), in each request's extensions: they may name the request's key
/// ([`super::auth::require_key`]).
#[derive(Debug, Clone, Default)]
pub(super) struct CertNames(pub(super) Arc<[String]>);

/// One request of a connection, through the router: busy from its headers until its answer
/// has been handed to hyper.
#[derive(Clone)]
struct Exchange {
    app: Router,
    broker: Broker,
    peer: SocketAddr,
    cert_names: CertNames,
    body_timeout: Duration,
    phase: Arc<watch::Sender<Phase>>,
}

impl Exchange {
    /// Handles `request` with the router, its body bounded by `body_timeout`; a body that
    /// timed out makes the answer `408` with `Connection: close`.
    async fn run(self, request: Request<Incoming>) -> Result<Response<Answer>, Infallible> {
        self.phase.send_replace(Phase::Busy);
        let timed_out = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + self.body_timeout;
        let mut request = request.map(|body| TimedBody {
            body,
            deadline,
            sleep: None,
            timed_out: timed_out.clone(),
        });
        request
            .extensions_mut()
            .insert(ConnectInfo(PeerAddr(self.peer)));
        request.extensions_mut().insert(self.cert_names.clone());
        let mut app = self.app;
        let response = match tower::Service::call(&mut app, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let metrics = self.broker.metrics();
        let response = if timed_out.load(Ordering::Relaxed) {
            metrics.admin_body_timeouts.add(1);
            tracing::debug!(peer = %self.peer, "admin request body timed out");
            let ms = self.body_timeout.as_millis();
            let message = format!("the request body did not arrive within {ms} ms");
            let mut response = error_response(StatusCode::REQUEST_TIMEOUT, message);
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
            response
        } else {
            response
        };
        if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
            metrics.admin_too_large.add(1);
        }
        let idle_on_drop = IdleOnDrop(self.phase);
        Ok(response.map(|body| Answer {
            body,
            _idle_on_drop: idle_on_drop,
        }))
    }
}

/// A request body that fails once `deadline` passes before it has all arrived, noting it in
/// `timed_out`. Data that has arrived is always read first.
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

/// The error of a request body that did not arrive within `admin.body_read_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimeout;

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Marks the connection idle when dropped (hyper drops an answer's body once it has taken all
/// of it).
struct IdleOnDrop(Arc<watch::Sender<Phase>>);

impl Drop for IdleOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(Phase::Idle(Instant::now()));
    }
}

/// An answer's body; the connection turns idle when hyper lets go of it.
struct Answer {
    body: axum::body::Body,
    _idle_on_drop: IdleOnDrop,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
