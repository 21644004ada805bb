//! The handshake: the first frame must be a `Hello` of this protocol version with a valid key
//! (or none, from where anonymous is allowed: loopback, or `[anonymous] allow_from`); the
//! identity it gives carries the key's permissions; the answer is `HelloOk` with the limits
//! the broker enforces, or an error, and the connection closes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weir_protocol::{
    ErrorCode, Frame, HelloOk, ServerLimits, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

use super::answers::error;
use super::{Connection, End};
use crate::broker::Broker;
use crate::reader::{FrameReader, Read};

/// The broker's limits as announced to clients.
fn server_limits(broker: &Broker) -> ServerLimits {
    let l = &broker.config().limits;
    ServerLimits {
        max_frame_bytes: l.max_frame_bytes,
        max_unconfirmed: l.max_unconfirmed,
        max_credit: l.max_credit,
        max_subscriptions: l.max_subscriptions,
        max_headers: l.max_headers,
        max_header_bytes: l.max_header_bytes,
        idle_timeout_ms: l.idle_timeout_ms,
    }
}

impl Connection {
    /// Waits (at most `hello_timeout`) for the `Hello` and answers it; `Err` ends the
    /// connection (no `Hello` in time, a bad key, another version, another frame).
    pub(super) async fn handshake(
        &mut self,
        frames: &mut FrameReader,
        shutdown: &CancellationToken,
    ) -> Result<(), End> {
        let timeout = Duration::from_millis(self.broker.config().limits.hello_timeout_ms);
        let first = tokio::select! {
            first = tokio::time::timeout(timeout, frames.next()) => match first {
                Ok(first) => first,
                Err(_) => {
                    debug!(conn = self.id, "no Hello in time");
                    return Err(End::Closed);
                }
            },
            () = shutdown.cancelled() => return Err(End::Closed),
        };
        // A shed publish is still not a Hello.
        let first = first.map(|read| {
            read.map(|r| match r {
                Read::Frame(frame) => frame,
                Read::Shed(unread, _) => Frame::Publish(weir_protocol::Publish {
                    producer: None,
                    id: unread.first_id,
                    topic: unread.topic,
                    headers: Vec::new(),
                    payload: bytes::Bytes::new(),
                }),
            })
        });
        match first {
            Some(Ok(Frame::Hello(hello))) if hello.version >= MIN_PROTOCOL_VERSION => {
                // The highest version both speak: a v4 client is never sent a v5 frame.
                self.version = hello.version.min(PROTOCOL_VERSION);
                match self.broker.keys().authenticate(
                    hello.token.as_deref(),
                    &self.cert_names,
                    self.peer.ip(),
                ) {
                    Ok(identity) => {
                        debug!(conn = self.id, key = %identity.name, "authenticated");
                        frames.authenticated(self.version);
                        self.key = Some(self.broker.admission().limits_for(&identity));
                        self.identity = Some(identity);
                        let limits = server_limits(&self.broker);
                        self.spoken
                            .store(self.version, std::sync::atomic::Ordering::Relaxed);
                        self.send(Frame::HelloOk(HelloOk {
                            version: self.version,
                            limits,
                        }))
                        .await
                    }
                    Err(e) => {
                        self.broker.auth_failed(self.peer.ip(), &e);
                        self.send(error(0, ErrorCode::Unauthorized, e.to_string()))
                            .await?;
                        Err(End::ProtocolError)
                    }
                }
            }
            Some(Ok(Frame::Hello(hello))) => {
                warn!(
                    conn = self.id,
                    version = hello.version,
                    "unsupported protocol version"
                );
                let msg = format!(
                    "protocol version {} is not supported (this broker speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})",
                    hello.version
                );
                self.send(error(0, ErrorCode::UnsupportedVersion, msg))
                    .await?;
                Err(End::ProtocolError)
            }
            Some(Ok(other)) => {
                self.send(error(
                    0,
                    ErrorCode::HelloRequired,
                    format!("expected Hello, got {}", other.name()),
                ))
                .await?;
                Err(End::ProtocolError)
            }
            Some(Err(e)) => Err(self.read_error(e).await),
            None => Err(End::Closed),
        }
    }
}
