//! [`ClientOptions`]: how a [`crate::Client`] connects, and reconnects.

use std::time::Duration;

use weir_protocol::DEFAULT_MAX_FRAME_BYTES;

use crate::reconnect::ReconnectPolicy;
use crate::tls::TlsOptions;

/// How to connect. Every field has a default ([`ClientOptions::default`]); override with
/// struct-update syntax: `ClientOptions { token: Some(key), ..Default::default() }`. They apply
/// alike to every reconnect (see [`crate::Client`]).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The API key sent in `Hello`; `None` for anonymous access. Default `None`.
    pub token: Option<String>,
    /// How long the TCP connect may take before it fails with an
    /// [`std::io::ErrorKind::TimedOut`] [`crate::ClientError::Io`]. Default 10 s.
    pub connect_timeout: Duration,
    /// How long the broker may take to answer `Hello` before [`crate::ClientError::Handshake`].
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Capacity of the bounded queue of commands (publishes, admin requests, subscribes,
    /// unsubscribes, pings; acks and credit do not pass through it) from the handles to the
    /// connection task. When it is full, async callers wait and
    /// [`crate::Publisher::try_publish`] fails with [`crate::ClientError::WindowFull`]; it is
    /// also where they wait while the client reconnects. Default 1 024; at least 1.
    pub command_queue: usize,
    /// The largest frame accepted from the broker, in bytes, before the handshake; afterwards the
    /// larger of this and the broker's announced `max_frame_bytes`. A larger frame closes the
    /// connection with [`crate::ClientError::Codec`]. Default [`DEFAULT_MAX_FRAME_BYTES`]
    /// (4 MiB).
    pub max_frame_bytes: usize,
    /// Whether and how long the client reconnects after losing its connection (see
    /// [`ReconnectPolicy`]). Default [`ReconnectPolicy::default`]: on, 100 ms to 5 s of
    /// full-jitter backoff, giving up after 60 s.
    pub reconnect: ReconnectPolicy,
    /// Speak TLS to the broker (its wire port has `[tls]`), with these settings; `None`:
    /// plaintext. A TLS failure is [`crate::ClientError::Tls`]. Default `None`.
    pub tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            command_queue: 1024,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            reconnect: ReconnectPolicy::default(),
            tls: None,
        }
    }
}
