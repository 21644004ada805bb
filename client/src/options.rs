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
    /// Most publishes coalesced into one `PublishBatch` frame (protocol v5): publishes waiting
    /// to be sent together, to one topic, go as one frame, each still answered on its own.
    /// Default 256; 1 sends every publish in its own frame. At most
    /// [`weir_protocol::MAX_BATCH_MESSAGES`].
    pub batch_max_messages: usize,
    /// Most payload and header bytes coalesced into one `PublishBatch` (and never past the
    /// broker's `max_frame_bytes`). Default 1 MiB.
    pub batch_max_bytes: usize,
    /// How long a batch that is not full may wait for more publishes before it is sent.
    /// Default zero: never wait; batch only what is already queued when the connection task
    /// writes.
    pub linger: Duration,
    /// The highest protocol version to speak: [`weir_protocol::PROTOCOL_VERSION`] (5, with
    /// batches) by default; 4 speaks the protocol without batch frames (a benchmark's A/B).
    /// A broker that speaks only an older version (at least
    /// [`weir_protocol::MIN_PROTOCOL_VERSION`]) is spoken to in it.
    pub protocol_version: u16,
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
            batch_max_messages: 256,
            batch_max_bytes: 1024 * 1024,
            linger: Duration::ZERO,
            protocol_version: weir_protocol::PROTOCOL_VERSION,
        }
    }
}
