//! The HTTP admin endpoint (axum, `admin.listen`, 127.0.0.1:7071 by default): liveness and
//! readiness for orchestrators, and the routes the operations modules add.
//!
//! - `GET /healthz` — 200 while the process serves HTTP (liveness);
//! - `GET /readyz` — 200 when the broker's storage is open and it is not shutting down, else
//!   503 (readiness: take it out of rotation while it drains);
//! - `GET /topics`, `GET /topics/{name}` — every topic, or one, as JSON (`topics`);
//! - `POST /topics/{name}/messages` — publish one message, answered once durable (`publish`).
//!
//! Bounds: at most `admin.max_connections` connections (accepting waits) and
//! `admin.max_concurrent_requests` requests in progress (503 + `Retry-After: 1` past it; see
//! `limits`); it shares the broker's runtime; every handler answers from in-memory state (or one
//! bounded publish), so a scrape never waits on disk.

mod limits;
mod metrics;
mod publish;
mod topics;

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::Broker;

pub use limits::PeerAddr;

/// The admin routes over `broker`, at most `admin.max_concurrent_requests` handled at once.
pub fn router(broker: Broker) -> Router {
    let requests = Arc::new(Semaphore::new(
        broker.config().admin.max_concurrent_requests.max(1) as usize,
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/topics", get(topics::list))
        .route("/topics/{name}", get(topics::show))
        .route("/topics/{name}/messages", publish::route(&broker))
        .with_state(broker)
        .layer(axum::middleware::from_fn_with_state(
            requests,
            limits::shed_over_limit,
        ))
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
    let max_connections = broker.config().admin.max_connections as usize;
    // The peer's address decides whether an HTTP publish may be anonymous (loopback only).
    let app = router(broker).into_make_service_with_connect_info::<PeerAddr>();
    let listener = limits::CappedListener::new(listener, max_connections);
    if let Err(e) = axum::serve(listener, app)
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
