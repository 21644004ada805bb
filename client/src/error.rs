//! The client's error types: [`ClientError`] for anything the client or its connection can
//! fail at, and [`PublishError`] for the outcome of one publish that was sent.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use weir_protocol::{CodecError, ErrorCode, GoingAwayReason, Limit, RejectReason};

/// Why a client operation failed.
///
/// Cheap to clone: when a connection ends, every request waiting on it receives a clone of the
/// error that ended it (the i/o and codec errors are shared behind an [`Arc`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Connecting, reading or writing the socket failed (including a connect timeout, as
    /// [`io::ErrorKind::TimedOut`]).
    #[error("i/o error: {0}")]
    Io(Arc<io::Error>),
    /// The bytes exchanged with the broker are not valid frames (or a frame to send exceeds the
    /// frame size); the connection is closed.
    #[error("codec error: {0}")]
    Codec(Arc<CodecError>),
    /// The opening `Hello`/`HelloOk` exchange failed for a reason other than the typed ones
    /// below (the broker closed the connection, answered with an unexpected frame, or timed out).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The broker refused the token presented in `Hello` (`Error{code: Unauthorized}`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The broker does not speak this client's protocol version (`Error{code:
    /// UnsupportedVersion}`), or answered with a version this client does not speak.
    #[error("unsupported protocol version: {0}")]
    UnsupportedVersion(String),
    /// The broker refused the connection itself, e.g. at its `max_connections` bound
    /// ([`RejectReason::TooManyConnections`]); it closes the connection after saying so.
    #[error("connection refused by the broker: {reason:?} ({}={}){}", limit.name, limit.value, fmt_retry(*retry_after_ms))]
    ConnectionRejected {
        /// Why the broker refused.
        reason: RejectReason,
        /// The bound that fired.
        limit: Limit,
        /// When connecting again may succeed, if the broker said.
        retry_after_ms: Option<u64>,
    },
    /// The broker refused a request (other than a publish) at one of its bounds, e.g. creating a
    /// topic past `max_topics`.
    #[error("request rejected: {reason:?} ({}={}){}", limit.name, limit.value, fmt_retry(*retry_after_ms))]
    Rejected {
        /// Why the broker refused.
        reason: RejectReason,
        /// The bound that fired.
        limit: Limit,
        /// When retrying may succeed, if the broker said.
        retry_after_ms: Option<u64>,
    },
    /// [`crate::Publisher::try_publish`] found the publish window (or the connection's bounded
    /// command queue) full; nothing was sent. Await a confirm, or use
    /// [`crate::Publisher::publish`], which waits for a slot instead.
    #[error("publish window full")]
    WindowFull,
    /// The broker dropped messages `from..=to` (a `drop_oldest` topic at its bound, or messages
    /// past the topic's `max_age`) before this subscription's group received (or acked) them.
    /// Yielded by the subscription stream, which goes on.
    #[error("the broker dropped messages {from}..={to} before delivery (drop_oldest or max_age)")]
    MessagesDropped {
        /// First evicted sequence.
        from: u64,
        /// Last evicted sequence.
        to: u64,
    },
    /// The publisher's circuit breaker is open (see [`crate::Publisher::with_retry`]): the
    /// broker kept refusing, so this publisher sends nothing until the cool-down ends; then one
    /// probe goes, and its success closes the breaker. Returned by `publish`/`try_publish`
    /// before anything is sent.
    #[error("circuit breaker open; retry after {retry_after:?}")]
    CircuitOpen {
        /// How long until the breaker lets a probe through: the rest of the cool-down, or, while
        /// a probe is already out (half-open), the whole cool-down.
        retry_after: std::time::Duration,
    },
    /// The connection closed without the broker saying why (end of stream), or its task is gone.
    #[error("connection lost")]
    ConnectionLost,
    /// The broker closed the connection with `GoingAway`: it is shutting down, the connection
    /// was idle, or it read too slowly ([`GoingAwayReason`]).
    #[error("broker closed the connection ({reason:?}): {message}")]
    GoingAway {
        /// Why, for programs.
        reason: GoingAwayReason,
        /// The broker's explanation, for people.
        message: String,
    },
    /// The broker answered the request with a typed error frame.
    #[error("broker error {code:?}: {message}")]
    Broker {
        /// What kind of error.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// A sent publish failed; see [`PublishError`]. Only returned by the convenience methods
    /// that send and await in one call, such as [`crate::Publisher::publish_and_wait`].
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// An argument was refused before anything was sent (e.g. a subscription window of 0).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A subscription window above the broker's `max_credit` was asked for
    /// ([`crate::Client::subscribe`]); nothing was sent. Ask for at most `max_credit`.
    #[error("a subscription window of {asked} exceeds the broker's max_credit ({max_credit})")]
    CreditAboveLimit {
        /// The window asked for.
        asked: u32,
        /// The broker's `max_credit` ([`crate::ServerLimits::max_credit`]).
        max_credit: u32,
    },
    /// The peer at `addr` answered the handshake with HTTP: most likely the broker's admin
    /// port was given instead of its wire port.
    #[error(
        "{addr} answered with HTTP — is that the admin port? The wire port is {} by default",
        crate::DEFAULT_PORT
    )]
    HttpPeer {
        /// The address connected to, as given.
        addr: String,
    },
    /// The TLS session with the broker could not be set up ([`crate::ClientOptions::tls`]):
    /// the message says what failed — an unknown CA, a name mismatch, an expired certificate,
    /// a refused client certificate, an unreadable file (named). Not retried on reconnect.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection was lost and reconnecting gave up: every attempt failed for as long as
    /// [`crate::ReconnectPolicy`] allows. The client is closed with this error; `last` is the
    /// error of the last attempt (or the one that made retrying pointless, such as
    /// [`ClientError::Unauthorized`]).
    #[error("gave up reconnecting to {addr} after {elapsed:?} and {attempts} attempt(s): {last}")]
    ReconnectFailed {
        /// The broker's address, as given to [`crate::Client::connect`].
        addr: String,
        /// How long it tried, from the loss of the connection.
        elapsed: Duration,
        /// How many connections it attempted.
        attempts: u32,
        /// Why the last attempt failed.
        last: Arc<ClientError>,
    },
    /// The broker ended this subscription on its own because its group was deleted with
    /// `force` (`weir group delete --force`, [`crate::Client::delete_group`]) — or its whole
    /// topic was, which deletes its groups: the broker sends the same `Unsubscribed` for both.
    /// The last item of the subscription's stream.
    #[error("the broker ended the subscription to {topic}/{group}: the group (or its topic) was deleted")]
    GroupDeleted {
        /// The subscription's topic.
        topic: String,
        /// The subscription's group.
        group: String,
    },
    /// The broker broke the protocol (an answer to an unknown id, a delivery beyond the granted
    /// credit, a frame only clients send, ...). The connection (or, for a subscription's credit,
    /// that subscription) is closed.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => ClientError::Io(Arc::new(e)),
            other => ClientError::Codec(Arc::new(other)),
        }
    }
}

/// The outcome of a publish that was handed to the connection and did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the publish at one of its bounds (`Rejected`): a full topic, an
    /// oversized message, a broker shutting down, ... The message was not stored.
    #[error("publish rejected: {reason:?} ({}={}){}{}", limit.name, limit.value, fmt_retry(*retry_after_ms), fmt_held_by(held_by.as_deref()))]
    Rejected {
        /// Why.
        reason: RejectReason,
        /// The bound that fired: its configuration name and value.
        limit: Limit,
        /// When retrying may succeed; `None` when retrying the same publish cannot help.
        retry_after_ms: Option<u64>,
        /// For `TopicFull`: the group holding the topic's oldest unacked message (its acks
        /// free room first); `None` when no group holds any, or for other reasons.
        held_by: Option<String>,
    },
    /// The broker answered with a typed error (e.g. [`ErrorCode::UnknownTopic`]). The message was
    /// not stored.
    #[error("broker error {code:?}: {message}")]
    Broker {
        /// What kind of error.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The encoded publish would exceed the broker's `max_frame_bytes`; it was refused locally
    /// and never sent.
    #[error("publish of {len} bytes exceeds the broker's frame limit of {max} bytes")]
    TooLarge {
        /// The encoded frame size (or the size at which encoding gave up).
        len: usize,
        /// The broker's `max_frame_bytes`.
        max: usize,
    },
    /// The connection closed before the broker answered. The publish may or may not have been
    /// stored (at-least-once: publishing again may store a duplicate).
    #[error("connection lost before the publish was confirmed")]
    ConnectionLost,
    /// The publish was not stored: it was waiting for a new connection — queued while the
    /// client reconnected, sent just before an idle close ([`crate::GoingAwayReason::Idle`]),
    /// or refused by a broker shutting down — and opening one failed (or the client's
    /// connection ended for good first) with this error, e.g. [`ClientError::ReconnectFailed`],
    /// or [`ClientError::Io`] when the broker is gone after an idle close with reconnecting off
    /// (then publishing again makes the client try to connect again). Publishing it again
    /// cannot store a duplicate.
    #[error("publish not sent: {0}")]
    NotSent(Arc<ClientError>),
}

/// Equal when of the same kind with equal fields; two [`PublishError::NotSent`] are equal when
/// their errors are the same one or read the same (a [`ClientError`] has no equality of its own).
impl PartialEq for PublishError {
    fn eq(&self, other: &Self) -> bool {
        use PublishError::*;
        match (self, other) {
            (
                Rejected {
                    reason,
                    limit,
                    retry_after_ms,
                    held_by,
                },
                Rejected {
                    reason: r,
                    limit: l,
                    retry_after_ms: a,
                    held_by: h,
                },
            ) => (reason, limit, retry_after_ms, held_by) == (r, l, a, h),
            (
                Broker { code, message },
                Broker {
                    code: c,
                    message: m,
                },
            ) => (code, message) == (c, m),
            (TooLarge { len, max }, TooLarge { len: l, max: m }) => (len, max) == (l, m),
            (ConnectionLost, ConnectionLost) => true,
            (NotSent(a), NotSent(b)) => Arc::ptr_eq(a, b) || a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for PublishError {}

impl PublishError {
    /// The broker's retry-after hint, for a [`PublishError::Rejected`] that has one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PublishError::Rejected {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }
}

fn fmt_held_by(group: Option<&str>) -> String {
    group.map_or_else(String::new, |g| format!(", held by group {g}"))
}

fn fmt_retry(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!(", retry after {ms} ms"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_display_names_limit_and_retry() {
        let e = PublishError::Rejected {
            reason: RejectReason::TopicFull,
            limit: Limit::new("max_messages", 10),
            retry_after_ms: Some(250),
            held_by: Some("billing".into()),
        };
        assert_eq!(
            e.to_string(),
            "publish rejected: TopicFull (max_messages=10), retry after 250 ms, held by group billing"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        let e = PublishError::Rejected {
            reason: RejectReason::MessageTooLarge,
            limit: Limit::new("max_message_bytes", 5),
            retry_after_ms: None,
            held_by: None,
        };
        assert_eq!(
            e.to_string(),
            "publish rejected: MessageTooLarge (max_message_bytes=5)"
        );
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn not_sent_says_why_and_compares_by_its_error() {
        let refused = || ClientError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        let a = PublishError::NotSent(Arc::new(refused()));
        assert_eq!(a, PublishError::NotSent(Arc::new(refused())));
        assert_ne!(
            a,
            PublishError::NotSent(Arc::new(ClientError::ConnectionLost))
        );
        assert_ne!(a, PublishError::ConnectionLost);
        assert!(
            a.to_string().starts_with("publish not sent: i/o error"),
            "{a}"
        );
    }

    #[test]
    fn codec_io_errors_become_io() {
        let e: ClientError = CodecError::Io(io::Error::other("boom")).into();
        assert!(matches!(e, ClientError::Io(_)));
        let e: ClientError = CodecError::Malformed("x".into()).into();
        assert!(matches!(e, ClientError::Codec(_)));
    }
}
