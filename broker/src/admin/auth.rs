//! Authentication of the admin routes, one middleware for all of them ([`require_key`]).
//!
//! Every route but `/healthz` and `/readyz` (and `/metrics` with `admin.public_metrics = true`)
//! goes through it. The client authenticates as on the wire: `Authorization: Bearer TOKEN`
//! when `[[keys]]` are configured; without keys, anonymously from loopback only.
//!
//! | request | status | body |
//! |---|---|---|
//! | from an address that failed more than `max_auth_failures_per_s` times this second (checked before the token) | 429, `Retry-After` in whole seconds (at least 1) | `{"reason": "rate_limited", "limit": {"name": "max_auth_failures_per_s", "value"}, "retry_after_ms"}` |
//! | no bearer token while keys are configured | 401, `WWW-Authenticate: Bearer` | `{"error"}` |
//! | a wrong token, or anonymous from a non-loopback address (a failed authentication) | 403 | `{"error"}` |
//! | a valid key (or anonymous on loopback) | the route's answer; the handler finds the [`Identity`](crate::keys::Identity) in the request's extensions | |
//! | a valid key without the permission the route needs (`monitor` on the topic for `GET /topics/{name}`, on every topic for `/metrics`; `publish` for `POST /topics/{name}/messages`) | 403 | `{"error", "action", "topic"}` |
//!
//! `GET /topics` lists only the topics the key may `monitor`. Refusals count in
//! `weir_forbidden_total{key,action}` and are logged at most once a second per key, as on the
//! wire.
//!
//! Failed authentications count in `broker.auth_failures()` like failed `Hello`s, and are
//! logged at most once a second; a missing token does not count (it is how a client learns it
//! needs one).

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;
use weir_protocol::{Limit, RejectReason};

use super::connections::CertNames;
use super::responses::{error_response, forbidden_response, refusal_response};
use super::PeerAddr;
use crate::broker::Broker;
use crate::keys::{AuthError, Identity};
use crate::permissions::Action;
use crate::refusal::Refusal;

/// Middleware: passes the request on with its [`Identity`](crate::keys::Identity) in its extensions if its address
/// is not over `max_auth_failures_per_s` and it authenticates; else answers `429`, `401` or
/// `403` (see the module table) without running the handler.
pub(super) async fn require_key(
    State(broker): State<Broker>,
    peer: Option<Extension<ConnectInfo<PeerAddr>>>,
    cert_names: Option<Extension<CertNames>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = peer_ip(peer);
    let cert_names = cert_names.map(|Extension(names)| names).unwrap_or_default();
    let failures = broker.auth_failures();
    if let Err(wait) = failures.check_at(peer, broker.clock().now()) {
        broker.metrics().auth_throttled.add(1);
        return refusal_response(Refusal::new(
            RejectReason::RateLimited,
            Limit::new("max_auth_failures_per_s", u64::from(failures.per_second())),
            Some(wait.as_millis().max(1) as u64),
        ));
    }
    let token = bearer_token(request.headers());
    match broker.keys().authenticate(token, &cert_names.0, peer) {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(AuthError::BadToken) if token.is_none() => {
            tracing::debug!(%peer, "admin request without a bearer token");
            let message = "a bearer token is required (Authorization: Bearer TOKEN)";
            let mut response = error_response(StatusCode::UNAUTHORIZED, message.into());
            let challenge = HeaderValue::from_static("Bearer");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
            response
        }
        Err(e) => {
            broker.auth_failed(peer, &e);
            error_response(StatusCode::FORBIDDEN, e.to_string())
        }
    }
}

/// Middleware for routes about the whole broker (`/metrics`, keyed): the request's key needs
/// `monitor` on every topic (a `topics = "*"` rule), since the answer shows every topic; else
/// `403 {"error", "action": "monitor", "topic": "*"}`.
pub(super) async fn require_monitor_all(
    State(broker): State<Broker>,
    Extension(identity): Extension<Identity>,
    request: Request,
    next: Next,
) -> Response {
    if identity.access.grants().allows_everywhere(Action::Monitor) {
        return next.run(request).await;
    }
    let now = broker.clock().now();
    forbidden_response(&identity.access.refuse(Action::Monitor, "*", now))
}

/// The client's address. A request whose peer is unknown (the router served without connect
/// info) counts as remote, so it is never anonymous.
fn peer_ip(peer: Option<Extension<ConnectInfo<PeerAddr>>>) -> IpAddr {
    peer.map_or(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        |Extension(ConnectInfo(PeerAddr(addr)))| addr.ip(),
    )
}

/// The token of an `Authorization: Bearer TOKEN` header, if there is one.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_scheme_carries_a_token() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            headers
        };
        assert_eq!(bearer_token(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&with("Basic abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
