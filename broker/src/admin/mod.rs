//! The HTTP admin endpoint (axum, `admin.listen`, 127.0.0.1:7071 by default): liveness and
//! readiness for orchestrators, and the routes the operations modules add.
//!
//! - `GET /healthz` — 200 while the process serves HTTP (liveness);
//! - `GET /readyz` — 200 when the broker's storage is open and it is not shutting down, else
//!   503 (readiness: take it out of rotation while it drains).
//!
//! Bounds: it shares the broker's runtime; every handler answers from in-memory state (or one
//! bounded publish), so a scrape never waits on disk.

use std::future::Future;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::broker::Broker;

/// The admin routes over `broker`.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(broker)
}

/// Serves the admin endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin endpoint serving");
    }
    if let Err(e) = axum::serve(listener, router(broker))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn readyz(
    axum::extract::State(broker): axum::extract::State<Broker>,
) -> (StatusCode, &'static str) {
    if broker.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
