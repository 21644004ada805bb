//! The admin endpoint's own bounds: at most `admin.max_connections` open connections (accepting
//! waits for one to close — the OS backlog holds the rest) and at most
//! `admin.max_concurrent_requests` requests being handled (the next gets `503` with
//! `Retry-After: 1` at once). With request bodies capped at `max_frame_bytes`, an HTTP client can
//! make the broker hold at most `max_concurrent_requests × max_frame_bytes` of bodies.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener that holds a slot per accepted connection and waits for a free slot before
/// accepting the next.
pub(crate) struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl CappedListener {
    /// `inner`, with at most `max_connections` connections open at once.
    pub(crate) fn new(inner: TcpListener, max_connections: usize) -> CappedListener {
        CappedListener {
            inner,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
        }
    }
}

/// An accepted connection and its slot, given back when the connection is dropped.
pub(crate) struct CappedIo {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Listener for CappedListener {
    type Io = CappedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedIo, SocketAddr) {
        // The semaphore is never closed.
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => unreachable!("the connection semaphore is never closed"),
        };
        let (io, addr) = Listener::accept(&mut self.inner).await;
        (CappedIo { io, _slot: slot }, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The peer's address, for handlers that need it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, CappedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> PeerAddr {
        PeerAddr(*stream.remote_addr())
    }
}

impl AsyncRead for CappedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Middleware: handles the request if one of the `max_concurrent_requests` slots is free,
/// else answers `503 Service Unavailable` with `Retry-After: 1` without reading it.
pub(crate) async fn shed_over_limit(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    match slots.try_acquire() {
        Ok(_slot) => next.run(request).await,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "admin.max_concurrent_requests reached: retry in a second\n",
        )
            .into_response(),
    }
}
