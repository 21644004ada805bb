//! The admin endpoint's request bounds: at most `admin.max_concurrent_requests` requests being
//! handled (the next gets `503` with `Retry-After: 1` at once). The connection bounds
//! (`admin.max_connections` and the header, body and idle timeouts) are in
//! [`super::connections`]. With request bodies capped at `max_frame_bytes`, an HTTP client can
//! make the broker hold at most `max_concurrent_requests × max_frame_bytes` of bodies.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

/// The peer's address, for handlers that need it (`ConnectInfo<PeerAddr>`): every request
/// served by [`super::serve`] carries it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

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
