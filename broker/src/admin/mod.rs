//! The HTTP admin endpoint (axum, `admin.listen`, 127.0.0.1:7071 by default): liveness and
//! readiness for orchestrators, and the routes the operations modules add.
//!
//! - `GET /healthz` — 200 while the process serves HTTP (liveness);
//! - `GET /readyz` — 200 when the broker's storage is open and it is not shutting down, else
//!   503 (readiness: take it out of rotation while it drains);
//! - `GET /topics`, `GET /topics/{name}` — every topic, or one, as JSON (`topics`);
//! - `POST /topics/{name}/messages` — publish one message, answered once durable (`publish`).
//!
//! Authentication: with `[[keys]]` configured, every route but `/healthz` and `/readyz` needs
//! `Authorization: Bearer TOKEN` (`admin.public_metrics = true` opens `/metrics` to anyone);
//! without keys, those routes answer anonymous clients on loopback only (see `auth`). Each
//! route then applies the key's permissions: `monitor` for the GET routes (on every topic for
//! `/metrics`), `publish` for `POST /topics/{name}/messages`.
//!
//! Bounds: at most `admin.max_connections` connections (the next waits, and idle kept-alive
//! ones give up their slot for it); request headers within `admin.header_read_timeout_ms`
//! (else the connection is closed), bodies within `admin.body_read_timeout_ms` (else 408), an
//! idle kept-alive connection closed after `admin.idle_timeout_ms` (see `connections`);
//! `admin.max_concurrent_requests` requests in progress (503 + `Retry-After: 1` past it; see
//! `limits`); bodies over `max_frame_bytes` are 413; it shares the broker's runtime; every
//! handler answers from in-memory state (or one bounded publish), so a scrape never waits on
//! disk.

mod auth;
mod connections;
mod limits;
mod metrics;
mod publish;
mod responses;
mod topics;

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::Broker;

pub(crate) use limits::PeerAddr;

/// The admin routes over `broker`, at most `admin.max_concurrent_requests` handled at once,
/// every route but `/healthz`, `/readyz` (and `/metrics` if `admin.public_metrics`) behind
/// authentication. Handlers that check the peer's address expect `ConnectInfo<PeerAddr>` in
/// the request's extensions (as [`serve`] puts it); without it the peer counts as remote.
pub(crate) fn router(broker: Broker) -> Router {
    let admin = &broker.config().admin;
    let requests = Arc::new(Semaphore::new(admin.max_concurrent_requests.max(1) as usize));
    let metrics = Router::new().route("/metrics", get(metrics::scrape));
    let keyed = Router::new()
        .route("/topics", get(topics::list))
        .route("/topics/{name}", get(topics::show))
        .route("/topics/{name}/messages", publish::route(&broker));
    let (open, keyed) = if admin.public_metrics {
        (metrics, keyed)
    } else {
        let metrics = metrics.route_layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            auth::require_monitor_all,
        ));
        (Router::new(), keyed.merge(metrics))
    };
    let keyed = keyed.route_layer(axum::middleware::from_fn_with_state(
        broker.clone(),
        auth::require_key,
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(open)
        .merge(keyed)
        .with_state(broker)
        .layer(axum::middleware::from_fn_with_state(
            requests,
            limits::shed_over_limit,
        ))
}

/// Serves the admin endpoint on `listener` until `shutdown` completes, then stops accepting,
/// lets each connection finish the request in progress, and returns once all are closed. Its
/// connections are bounded as the `connections` module describes (count, header, body and idle
/// timeouts). Plaintext; see [`serve_with_tls`].
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with_tls(listener, broker, None, shutdown).await;
}

/// [`serve`], over TLS when `tls` is given: a connection must complete the TLS handshake
/// within `admin.header_read_timeout_ms`; one that speaks plain HTTP is closed (and counted).
pub async fn serve_with_tls(
    listener: TcpListener,
    broker: Broker,
    tls: Option<std::sync::Arc<crate::tls::TlsServer>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "admin endpoint serving");
    }
    let app = router(broker.clone());
    connections::serve(listener, app, broker, tls, shutdown).await;
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
