//! The accept loop: admits connections up to `max_connections`, refuses the rest with a typed
//! frame, and runs the graceful shutdown. With `[tls]`, each admitted connection first passes
//! the TLS handshake (see [`crate::tls`]); it holds its connection slot while it does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Encoder;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use weir_protocol::{Limit, RejectReason, WeirCodec};

use crate::admission::Work;
use crate::broker::{Broker, OpenError};
use crate::config::Config;
use crate::connection::{self, Stop};
use crate::reader::ReadHalf;
use crate::refusal::Refusal;
use crate::slots::ConnectionSlots;
use crate::tls::TlsServer;
use crate::writer::WriteHalf;

/// Refused connections being answered at once; past it, further ones are closed unanswered.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;
/// How long a refused connection is kept to deliver its `Rejected` frame.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// Opens the broker on `config.data_dir` and serves `listener` (and, unless disabled, the admin
/// endpoint on `config.admin.listen`) until `shutdown` completes.
///
/// Shutdown: stop accepting, stop planning deliveries, stop reading new frames, confirm the
/// publishes whose commit is in progress, send every client `GoingAway`, close the connections
/// (their unacked messages return to their groups), then stop the topic writers
/// (each after committing what is queued) and persist group state. Returns once everything is
/// on disk.
///
/// With `config.tls` set, its files are read first (an unusable one fails here, naming it) and
/// both ports serve TLS only; use [`run_with_tls`] to keep a handle for reloading them.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future,
) -> Result<(), OpenError> {
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(TlsServer::load(files)?)),
        None => None,
    };
    run_with_tls(listener, config, tls, shutdown).await
}

/// [`run`] with the TLS configuration of both ports given (`None`: plaintext), so that the
/// caller can [`TlsServer::reload`] it while the broker runs (the daemon does on SIGHUP).
pub async fn run_with_tls(
    listener: TcpListener,
    config: Config,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future,
) -> Result<(), OpenError> {
    let admin_listener = match config.admin.enabled.then_some(config.admin.listen) {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| OpenError::Admin { addr, source })?,
        ),
        None => None,
    };
    let broker = Broker::open(config).await?;
    let admin_stop = tokio_util::sync::CancellationToken::new();
    let admin = match admin_listener {
        Some(listener) => {
            let stop = admin_stop.clone();
            Some(tokio::spawn(crate::admin::serve_with_tls(
                listener,
                broker.clone(),
                tls.clone(),
                async move { stop.cancelled().await },
            )))
        }
        None => None,
    };
    serve_with_tls(listener, broker.clone(), tls, shutdown).await;
    broker.close().await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    info!("broker stopped");
    Ok(())
}

/// The accept loop for an already opened broker, in plaintext; returns after every connection
/// has closed.
pub async fn serve(listener: TcpListener, broker: Broker, shutdown: impl Future) {
    serve_with_tls(listener, broker, None, shutdown).await;
}

/// [`serve`], over TLS when `tls` is given: a connection that does not complete the TLS
/// handshake within `hello_timeout_ms` (or speaks plaintext) is closed without a frame.
pub async fn serve_with_tls(
    listener: TcpListener,
    broker: Broker,
    tls: Option<Arc<TlsServer>>,
    shutdown: impl Future,
) {
    let limits = &broker.config().limits;
    let max = limits.max_connections as usize;
    let slots = ConnectionSlots::new(limits.max_connections, limits.max_connections_per_ip);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS));
    let stop = Stop::default();
    let connections = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, max_connections = max, "listening");
    }
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
                error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        if let Err(wait) = broker
            .auth_failures()
            .check_at(peer.ip(), broker.clock().now())
        {
            broker.metrics().auth_throttled.add(1);
            let per_s = broker.auth_failures().per_second();
            let refusal = Refusal::new(
                RejectReason::RateLimited,
                Limit::new("max_auth_failures_per_s", u64::from(per_s)),
                Some(wait.as_millis().max(1) as u64),
            );
            debug!(%peer, "connection refused: too many failed authentications");
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                let (broker, tls) = (broker.clone(), tls.clone());
                connections.spawn(async move {
                    refuse(socket, peer, tls.as_deref(), &broker, refusal).await;
                    drop(permit);
                });
            }
            continue;
        }
        match slots.try_acquire(peer.ip()) {
            Ok(slot) => {
                let (broker, stop, tls) = (broker.clone(), stop.clone(), tls.clone());
                connections.spawn(async move {
                    let opened = tokio::select! {
                        opened = open(socket, peer, tls.as_deref(), &broker) => opened,
                        () = stop.graceful.cancelled() => None,
                    };
                    if let Some((socket, cert_names)) = opened {
                        connection::serve(broker, socket, peer, cert_names, stop).await;
                    }
                    drop(slot);
                });
            }
            Err(limit) => {
                broker.metrics().connections_refused.add(1);
                broker.metrics().refused(RejectReason::TooManyConnections);
                debug!(%peer, limit = %limit.name, value = limit.value, "connection refused");
                let refusal = Refusal::new(RejectReason::TooManyConnections, limit, Some(1000));
                // At most one line per second, however many connections are refused.
                let now = std::time::Instant::now();
                broker
                    .admission()
                    .log_refusal_at(Work::Connect, "-", &refusal, now);
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    let (broker, tls) = (broker.clone(), tls.clone());
                    connections.spawn(async move {
                        refuse(socket, peer, tls.as_deref(), &broker, refusal).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    info!("shutting down: stopping dispatch, then closing connections");
    drop(listener);
    // Dispatch stops first: a closing consumer's unacked messages then wait in their groups
    // for the restart instead of going to another consumer that is about to close too.
    broker.env().stopping.cancel();
    stop.graceful.cancel();
    broker.refuse_parked();
    connections.close();
    // Connections confirm what is being committed (within shutdown_grace_ms) and linger briefly
    // so their GoingAway arrives; one that is still open after that is stuck on its peer.
    let grace =
        Duration::from_millis(broker.config().limits.shutdown_grace_ms) + Duration::from_secs(2);
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "connections still open after the shutdown grace; closing them"
        );
        stop.hard.cancel();
        connections.wait().await;
    }
}

/// The read and write halves of an admitted connection: the TCP socket's or, with `tls`, the
/// TLS stream's once the handshake is done within `hello_timeout_ms`, with the DNS names of
/// the client certificate it verified (mutual TLS; see [`crate::tls::peer_names`]). `None`:
/// the handshake failed (counted and logged by [`TlsServer::accept`]).
async fn open(
    socket: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<&TlsServer>,
    broker: &Broker,
) -> Option<((ReadHalf, WriteHalf), Vec<String>)> {
    let _ = socket.set_nodelay(true);
    let Some(tls) = tls else {
        let (read, write) = socket.into_split();
        return Some(((Box::new(read), Box::new(write)), Vec::new()));
    };
    let timeout = Duration::from_millis(broker.config().limits.hello_timeout_ms);
    let stream = tls
        .accept(socket, peer, "wire", timeout, broker.metrics())
        .await?;
    let names = crate::tls::peer_names(&stream);
    let (read, write) = tokio::io::split(stream);
    Some(((Box::new(read), Box::new(write)), names))
}

/// Answers a connection refused before its `Hello` — over `max_connections` (or
/// `max_connections_per_ip`), or from an address over `max_auth_failures_per_s` — with its
/// `Rejected` frame naming the limit, and closes it. On a TLS port the frame goes over TLS,
/// the handshake included in [`REFUSAL_LINGER`].
async fn refuse(
    socket: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<&TlsServer>,
    broker: &Broker,
    refusal: Refusal,
) {
    match tls {
        None => answer_refusal(socket, refusal).await,
        Some(tls) => {
            let metrics = broker.metrics();
            if let Some(stream) = tls
                .accept(socket, peer, "wire", REFUSAL_LINGER, metrics)
                .await
            {
                answer_refusal(stream, refusal).await;
            }
        }
    }
}

/// Writes `refusal`'s frame to `socket` and closes it, within [`REFUSAL_LINGER`].
async fn answer_refusal(mut socket: impl AsyncRead + AsyncWrite + Unpin, refusal: Refusal) {
    let frame = refusal.into_frame(0);
    let mut buf = BytesMut::new();
    if WeirCodec::default().encode(frame, &mut buf).is_err() {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        socket.write_all(&buf).await?;
        socket.shutdown().await?;
        // Drain the client's Hello so closing does not reset the connection under our answer.
        let mut scratch = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut socket, &mut scratch).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}
