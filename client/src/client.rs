//! [`Client`]: a handle to one broker connection, with the admin requests, and the way to make
//! [`Publisher`]s and [`Subscription`]s on it.

use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::sync::oneshot;
use weir_protocol::{
    Frame, ServerLimits, TopicConfig, TopicDescription, TopicInfo, TopicSpec,
    DEFAULT_MAX_FRAME_BYTES,
};

use crate::connection::{self, AdminRequest, Command, ConnHandle};
use crate::error::ClientError;
use crate::publisher::Publisher;
use crate::subscription::Subscription;

/// How to connect. Every field has a default ([`ClientOptions::default`]); override with
/// struct-update syntax: `ClientOptions { token: Some(key), ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The API key sent in `Hello`; `None` for anonymous access. Default `None`.
    pub token: Option<String>,
    /// How long the TCP connect may take before it fails with an
    /// [`std::io::ErrorKind::TimedOut`] [`ClientError::Io`]. Default 10 s.
    pub connect_timeout: Duration,
    /// How long the broker may take to answer `Hello` before [`ClientError::Handshake`].
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Capacity of the bounded queue of commands (publishes, admin requests, subscribes,
    /// unsubscribes, pings; acks and credit do not pass through it) from the handles to the
    /// connection task. When it is full, async
    /// callers wait and [`Publisher::try_publish`] fails with [`ClientError::WindowFull`].
    /// Default 1 024; at least 1.
    pub command_queue: usize,
    /// The largest frame accepted from the broker, in bytes, before the handshake; afterwards the
    /// larger of this and the broker's announced `max_frame_bytes`. A larger frame closes the
    /// connection with [`ClientError::Codec`]. Default [`DEFAULT_MAX_FRAME_BYTES`] (4 MiB).
    pub max_frame_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            command_queue: 1024,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// A connection to a Weir broker.
///
/// Cheap to clone: every clone is a handle to the same connection, whose background task (spawned
/// on the current tokio runtime by [`Client::connect`]) owns the socket. The connection closes
/// once every handle — clients, publishers, subscriptions — is dropped and nothing waits for an
/// answer, or when the broker closes it; after that every request fails with the error that
/// ended it ([`Client::closed_reason`]).
#[derive(Debug, Clone)]
pub struct Client {
    conn: ConnHandle,
}

impl Client {
    /// Connects to the broker at `addr` with default [`ClientOptions`] (anonymous).
    ///
    /// Fails with [`ClientError::Io`] when the TCP connection fails, and with the handshake
    /// errors of [`Client::connect_with`].
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects to the broker at `addr` with `options`, and performs the `Hello` handshake.
    ///
    /// Fails with [`ClientError::Unauthorized`] or [`ClientError::UnsupportedVersion`] when the
    /// broker refuses the token or version, with [`ClientError::ConnectionRejected`] when it is at
    /// its connection bound, and with [`ClientError::Handshake`] for anything else that goes
    /// wrong before `HelloOk` (within [`ClientOptions::handshake_timeout`]).
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let conn = connection::open(addr, &options).await?;
        Ok(Client { conn })
    }

    /// The limits the broker announced when the connection opened.
    pub fn limits(&self) -> &ServerLimits {
        &self.conn.shared.limits
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.conn.shared.is_closed()
    }

    /// The error that ended the connection, or `None` while it is open.
    pub fn closed_reason(&self) -> Option<ClientError> {
        self.is_closed().then(|| self.conn.shared.error())
    }

    /// Creates a topic (idempotent for an identical specification) and returns its effective
    /// configuration; bounds left `None` take the broker's defaults.
    ///
    /// Fails with [`ClientError::Broker`] (e.g. `TopicExists` for a different configuration,
    /// `InvalidArgument` for a bad name or bound) or [`ClientError::Rejected`] at a broker bound.
    pub async fn create_topic(&self, spec: TopicSpec) -> Result<TopicConfig, ClientError> {
        match self.request(AdminRequest::CreateTopic(spec)).await? {
            Frame::TopicCreated(t) => Ok(t.config),
            other => Err(ClientError::Protocol(format!(
                "CreateTopic answered with {}",
                other.name()
            ))),
        }
    }

    /// Describes every topic (at most the broker's `max_topics`), sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        match self.request(AdminRequest::ListTopics).await? {
            Frame::TopicList(t) => Ok(t.topics),
            other => Err(ClientError::Protocol(format!(
                "ListTopics answered with {}",
                other.name()
            ))),
        }
    }

    /// Describes one topic: its snapshot and the sample of messages `drop_oldest` evicted most
    /// recently (at most 100). Fails with [`ClientError::Broker`] (`UnknownTopic`).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        match self
            .request(AdminRequest::DescribeTopic(name.to_owned()))
            .await?
        {
            Frame::TopicDescription(d) => Ok(d),
            other => Err(ClientError::Protocol(format!(
                "DescribeTopic answered with {}",
                other.name()
            ))),
        }
    }

    /// Sends a `Ping` and returns the round-trip time until its `Pong`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.conn.send(Command::Ping { reply }).await?;
        rx.await.map_err(|_| self.conn.shared.error())?
    }

    /// A publisher with the default window: `min(1024, limits().max_unconfirmed)` unconfirmed
    /// publishes. See [`Publisher`].
    pub fn publisher(&self) -> Publisher {
        self.publisher_with_window(1024)
    }

    /// A publisher with a window of `window` unconfirmed publishes, clamped to
    /// `1..=limits().max_unconfirmed` (beyond the broker's cap the extra publishes would only
    /// wait in the socket). See [`Publisher`].
    pub fn publisher_with_window(&self, window: usize) -> Publisher {
        let cap = (self.limits().max_unconfirmed as usize).max(1);
        Publisher::new(self.conn.clone(), window.clamp(1, cap))
    }

    /// Joins `group` of `topic` with a window of `window` messages and returns the stream of its
    /// deliveries once the broker has answered `Subscribed`.
    ///
    /// `window` is clamped to `limits().max_credit`: it is the subscription's initial credit and
    /// the most messages ever outstanding towards it (granted credit + buffered + held by the app
    /// unacked). A `window` of 0 fails with [`ClientError::InvalidArgument`]. Fails with
    /// [`ClientError::Broker`] when the broker refuses (unknown topic, `max_subscriptions`, ...).
    pub async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        window: u32,
    ) -> Result<Subscription, ClientError> {
        Subscription::open(self.conn.clone(), topic, group, window).await
    }

    async fn request(&self, request: AdminRequest) -> Result<Frame, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.conn.send(Command::Request { request, reply }).await?;
        rx.await.map_err(|_| self.conn.shared.error())?
    }
}
