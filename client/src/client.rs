//! [`Client`]: a handle to one broker connection, with the admin requests, and the way to make
//! [`Publisher`]s and [`Subscription`]s on it.

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use weir_protocol::{
    Frame, GroupConfig, GroupSpec, GroupUpdate, ServerLimits, TopicConfig, TopicDescription,
    TopicInfo, TopicRepaired, TopicSpec, TopicUpdate,
};

use crate::addr::ToBrokerAddr;
use crate::connection::{self, AdminRequest, Command, ConnHandle};
use crate::error::ClientError;
pub use crate::options::ClientOptions;
use crate::publisher::Publisher;
use crate::reconnect::ConnectionState;
use crate::subscription::Subscription;

/// A connection to a Weir broker.
///
/// Cheap to clone: every clone is a handle to the same connection, whose background task (spawned
/// on the current tokio runtime by [`Client::connect`]) owns the socket. The connection closes
/// once every handle — clients, publishers, subscriptions — is dropped and nothing waits for an
/// answer, or when the broker closes it; after that every request fails with the error that
/// ended it ([`Client::closed_reason`]).
///
/// **Reconnecting.** When the broker closes the connection (`GoingAway`: shutting down, slow
/// consumer) or it is lost (reset, end of stream, i/o error), the client reconnects to the
/// same address (resolved again) with the same [`ClientOptions`], per
/// [`ClientOptions::reconnect`] ([`crate::ReconnectPolicy`]: on by default, full-jitter backoff
/// from 100 ms to 5 s, giving up after 60 s). Meanwhile every handle keeps working: operations
/// wait in the bounded command queue ([`ClientOptions::command_queue`]; at the bound they wait
/// as usual, and [`Publisher::try_publish`] fails with [`ClientError::WindowFull`]). On the
/// new connection, first and in their order:
///
/// - publishes sent and not confirmed are resent, within their publisher's window (each keeps
///   its slot): **at-least-once** — one whose confirm was lost may be stored twice; so are
///   publishes the broker refused with `ShuttingDown` as it stopped (never stored), instead of
///   failing with that refusal;
/// - subscriptions open again (same topic, group, window) and their streams go on (see
///   [`Subscription`]); deliveries of the lost connection can no longer be acked (the broker
///   redelivers them);
/// - admin requests and pings that were unanswered fail with the error that ended the
///   connection (the broker may have acted on them; the caller decides), as new ones wait.
///
/// With something to resend or a subscription, the client reconnects at once; otherwise when
/// the next operation needs the broker. If reconnecting gives up, the client is closed with
/// [`ClientError::ReconnectFailed`] (naming the address, how long it tried and the last error);
/// a confirm of a publish that had been sent then resolves to
/// [`crate::PublishError::ConnectionLost`] (maybe stored), one never sent to
/// [`crate::PublishError::NotSent`]. Watch it with [`Client::state`],
/// [`Client::watch_state`] and [`Client::reconnects`]; the client logs a `warn` when it starts
/// reconnecting, a `debug` per attempt, an `info` when reconnected.
///
/// **Idle close.** A broker closes a connection that has no subscription and sends nothing for
/// its `idle_timeout` ([`ServerLimits::idle_timeout_ms`], default 10 min) with
/// `GoingAway{Idle}`. The client reconnects when the next operation needs the broker, and
/// exactly one reconnect happens however many handles need it at once. Anything sent just as
/// the broker closed was never read by it (the broker closes as idle only after answering
/// every frame it read), so it is all sent again, requests included, without any risk of
/// duplicates.
///
/// **Reconnecting off** ([`crate::ReconnectPolicy::disabled`]): any end other than an idle
/// close is final, and the error that caused it is every later operation's. An idle close is
/// still healed with one attempt when the next operation needs the broker; if it fails, that
/// operation and every one waiting for it fail with its error ([`ClientError::Io`],
/// [`ClientError::ConnectionRejected`], ...; a publish's confirm with
/// [`crate::PublishError::NotSent`]), and the next operation tries again.
#[derive(Debug, Clone)]
pub struct Client {
    conn: ConnHandle,
}

impl Client {
    /// Connects to the broker at `addr` with default [`ClientOptions`] (anonymous): a
    /// `"host:port"` string (a host name or an IP address), a bare host for the default port
    /// 7070 ([`crate::DEFAULT_PORT`]), or a [`std::net::SocketAddr`] (see [`ToBrokerAddr`]).
    ///
    /// Fails with [`ClientError::Io`] when the TCP connection fails, and with the handshake
    /// errors of [`Client::connect_with`]. The first connection is tried once: reconnecting
    /// applies to a connection that was established.
    pub async fn connect(addr: impl ToBrokerAddr) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects to the broker at `addr` with `options`, and performs the `Hello` handshake.
    ///
    /// Fails with [`ClientError::Unauthorized`] or [`ClientError::UnsupportedVersion`] when the
    /// broker refuses the token or version, with [`ClientError::ConnectionRejected`] when it is at
    /// its connection bound, and with [`ClientError::Handshake`] for anything else that goes
    /// wrong before `HelloOk` (within [`ClientOptions::handshake_timeout`]). A peer that
    /// answers with HTTP (the broker's admin port, 7071 by default, given by mistake) fails
    /// with [`ClientError::HttpPeer`].
    pub async fn connect_with(
        addr: impl ToBrokerAddr,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let conn = connection::open(addr.to_broker_addr(), &options).await?;
        Ok(Client { conn })
    }

    /// The limits the broker announced in the `HelloOk` of the live connection: after a
    /// reconnect, those of the new connection; between the loss and the reconnect, those of the
    /// connection that was lost. A copy: later reconnects do not change it.
    pub fn limits(&self) -> ServerLimits {
        self.conn.shared.limits()
    }

    /// Whether the connection has ended for good: every further operation fails with
    /// [`Client::closed_reason`]. A loss the client reconnects after is not such an end, nor
    /// is an idle close (the next operation reconnects): both report `false` — but reconnecting
    /// giving up is. See [`Client::is_connected`] for whether a socket is open now.
    pub fn is_closed(&self) -> bool {
        self.conn.shared.is_closed()
    }

    /// The error that ended the connection for good, or `None` while operations can still
    /// succeed — including while the client reconnects, or after an idle close.
    pub fn closed_reason(&self) -> Option<ClientError> {
        self.is_closed().then(|| self.conn.shared.error())
    }

    /// Whether a socket to the broker is open now, past its handshake: `false` while
    /// reconnecting, from an idle close until the reconnect that the next operation makes, and
    /// once the connection has ended for good. A snapshot, for monitoring: the broker may close
    /// the socket the moment after.
    pub fn is_connected(&self) -> bool {
        self.conn.shared.is_connected()
    }

    /// The connection's state now: connected, reconnecting (which attempt, since when),
    /// disconnected until the next operation needs the broker, or closed. A snapshot.
    pub fn state(&self) -> ConnectionState {
        self.conn.shared.state()
    }

    /// A receiver of the connection's state, to await its changes
    /// ([`watch::Receiver::changed`], [`watch::Receiver::wait_for`]). It holds the latest state
    /// only: a change it did not see in time is replaced by the next.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.conn.shared.watch_state()
    }

    /// How many times the client has reconnected (after a loss or an idle close) since
    /// [`Client::connect`]. Shared by every clone.
    pub fn reconnects(&self) -> u64 {
        self.conn.shared.reconnects()
    }

    /// How many publishes the broker answered as duplicates since [`Client::connect`] (their
    /// producer stamp or `weir-msg-id` was in the topic's dedup window: nothing was stored, and
    /// their confirm resolved to the first one's sequence). A resend after a lost connection
    /// whose original was stored counts here. Shared by every clone.
    pub fn duplicates(&self) -> u64 {
        self.conn.shared.duplicates()
    }

    /// Creates a topic (idempotent for an identical specification) and returns its effective
    /// configuration; bounds left `None` take the broker's defaults.
    ///
    /// Like every admin request, while the client reconnects it waits for the new connection
    /// (see [`Client`]), and fails with [`ClientError::ReconnectFailed`] if reconnecting gives
    /// up; unanswered when the connection is lost, it fails with the error that ended it.
    ///
    /// Fails with [`ClientError::Broker`] (e.g. `TopicExists` for a different configuration,
    /// `InvalidArgument` for a bad name or bound) or [`ClientError::Rejected`] at a broker bound.
    pub async fn create_topic(&self, spec: TopicSpec) -> Result<TopicConfig, ClientError> {
        match self.request(AdminRequest::CreateTopic(spec)).await? {
            Frame::TopicCreated(t) => Ok(t.config),
            other => Err(unexpected("CreateTopic", &other)),
        }
    }

    /// Describes every topic (at most the broker's `max_topics`), sorted by name. The broker
    /// answers in pages that each fit in one frame; this asks for pages until the list is
    /// complete (a topic created or deleted meanwhile may or may not appear).
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        let mut topics = Vec::new();
        let mut after = None;
        loop {
            let page = match self.request(AdminRequest::ListTopics { after }).await? {
                Frame::TopicList(t) => t,
                other => return Err(unexpected("ListTopics", &other)),
            };
            topics.extend(page.topics);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(topics),
            }
        }
    }

    /// Describes one topic: its snapshot and the sample of messages dropped most recently (at
    /// most 100; evicted by `drop_oldest`, past `max_age`, or skipped by a repair). Fails with [`ClientError::Broker`] (`UnknownTopic`).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        match self
            .request(AdminRequest::DescribeTopic(name.to_owned()))
            .await?
        {
            Frame::TopicDescription(d) => Ok(*d),
            other => Err(unexpected("DescribeTopic", &other)),
        }
    }

    /// Deletes a topic: its messages, its groups and their state. Its subscribers are detached
    /// only with `force` (their streams end).
    ///
    /// Fails with [`ClientError::Broker`] carrying [`ErrorCode::InUse`] while subscribers are
    /// attached and `force` is false (nothing is deleted), or [`ErrorCode::UnknownTopic`] when
    /// there is no such topic; [`ClientError::Rejected`] at a broker bound.
    ///
    /// [`ErrorCode::InUse`]: crate::ErrorCode::InUse
    /// [`ErrorCode::UnknownTopic`]: crate::ErrorCode::UnknownTopic
    pub async fn delete_topic(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let request = AdminRequest::DeleteTopic {
            name: name.to_owned(),
            force,
        };
        match self.request(request).await? {
            Frame::TopicDeleted(_) => Ok(()),
            other => Err(unexpected("DeleteTopic", &other)),
        }
    }

    /// Repairs a topic whose storage failed a write or is damaged (see [`TopicHealth`]) and
    /// returns the broker's answer: what was skipped and quarantined, and the topic's health
    /// now. A healthy topic is left as it is. Fails with [`ClientError::Broker`] carrying
    /// `ErrorCode::UnknownTopic`, or `ErrorCode::StorageDamaged` when the broker cannot repair
    /// it (the reason says why; nothing changed).
    ///
    /// [`TopicHealth`]: crate::TopicHealth
    pub async fn repair_topic(&self, name: &str) -> Result<TopicRepaired, ClientError> {
        match self
            .request(AdminRequest::RepairTopic(name.to_owned()))
            .await?
        {
            Frame::TopicRepaired(repaired) => Ok(repaired),
            other => Err(unexpected("RepairTopic", &other)),
        }
    }

    /// Changes a live topic's bounds and policies (unset fields of `update` keep their value)
    /// and returns its configuration now, after the broker stored it durably.
    ///
    /// Lowering `max_messages` or `max_bytes` below what the topic holds removes nothing: a
    /// `reject` or `block` topic refuses (or parks) publishes until acks drain it below the new
    /// bound; a `drop_oldest` topic evicts down to it at its next commit. A new or lower
    /// `max_age_ms` removes the messages already older at once (`Some(0)` removes the bound).
    ///
    /// Fails with [`ClientError::Broker`] carrying [`ErrorCode::UnknownTopic`],
    /// [`ErrorCode::InvalidArgument`] (an empty update, a zero bound, a message bound larger
    /// than `max_bytes` or a frame) or [`ErrorCode::LimitExceeded`] (past a broker ceiling);
    /// nothing changes then.
    ///
    /// [`ErrorCode::UnknownTopic`]: crate::ErrorCode::UnknownTopic
    /// [`ErrorCode::InvalidArgument`]: crate::ErrorCode::InvalidArgument
    /// [`ErrorCode::LimitExceeded`]: crate::ErrorCode::LimitExceeded
    pub async fn update_topic(
        &self,
        name: &str,
        update: TopicUpdate,
    ) -> Result<TopicConfig, ClientError> {
        let request = AdminRequest::UpdateTopic {
            name: name.to_owned(),
            update,
        };
        match self.request(request).await? {
            Frame::TopicUpdated(updated) => Ok(updated.config),
            other => Err(unexpected("UpdateTopic", &other)),
        }
    }

    /// Changes a live group's settings (unset fields of `update` keep their value) and returns
    /// them, after the broker stored them. A new `ack_timeout_ms` applies to deliveries from now
    /// on (those in flight keep their deadline); a new `max_attempts` decides at each message's
    /// next failure; a new dead-letter topic takes what is dead-lettered from now on.
    ///
    /// Fails with [`ClientError::Broker`] carrying [`ErrorCode::UnknownTopic`],
    /// [`ErrorCode::UnknownGroup`] or [`ErrorCode::InvalidArgument`] (an empty update, a zero
    /// timeout or attempts, an invalid dead-letter topic); nothing changes then.
    ///
    /// [`ErrorCode::UnknownTopic`]: crate::ErrorCode::UnknownTopic
    /// [`ErrorCode::UnknownGroup`]: crate::ErrorCode::UnknownGroup
    /// [`ErrorCode::InvalidArgument`]: crate::ErrorCode::InvalidArgument
    pub async fn update_group(
        &self,
        topic: &str,
        group: &str,
        update: GroupUpdate,
    ) -> Result<GroupConfig, ClientError> {
        let request = AdminRequest::UpdateGroup {
            topic: topic.to_owned(),
            group: group.to_owned(),
            update,
        };
        match self.request(request).await? {
            Frame::GroupUpdated(updated) => Ok(updated.config),
            other => Err(unexpected("UpdateGroup", &other)),
        }
    }

    /// Deletes a group of a topic: its cursor, in-flight and redelivery state. Messages only
    /// this group still needed leave the topic. Its members are detached only with `force`
    /// (their streams end).
    ///
    /// Fails with [`ClientError::Broker`] carrying [`ErrorCode::InUse`] while members are
    /// attached and `force` is false (nothing is deleted), [`ErrorCode::UnknownTopic`] or
    /// [`ErrorCode::UnknownGroup`] when there is no such topic or group; [`ClientError::Rejected`]
    /// at a broker bound.
    ///
    /// [`ErrorCode::InUse`]: crate::ErrorCode::InUse
    /// [`ErrorCode::UnknownTopic`]: crate::ErrorCode::UnknownTopic
    /// [`ErrorCode::UnknownGroup`]: crate::ErrorCode::UnknownGroup
    pub async fn delete_group(
        &self,
        topic: &str,
        group: &str,
        force: bool,
    ) -> Result<(), ClientError> {
        let request = AdminRequest::DeleteGroup {
            topic: topic.to_owned(),
            group: group.to_owned(),
            force,
        };
        match self.request(request).await? {
            Frame::GroupDeleted(_) => Ok(()),
            other => Err(unexpected("DeleteGroup", &other)),
        }
    }

    /// Sends a `Ping` and returns the round-trip time until its `Pong`. While the client
    /// reconnects it waits for the new connection (the time measured is that of the `Ping` on
    /// it).
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.conn.send(Command::Ping { reply }).await?;
        rx.await.map_err(|_| self.conn.shared.error())?
    }

    /// A publisher with the default window: `min(1024, limits().max_unconfirmed)` unconfirmed
    /// publishes (the limits of the live connection, fixed for this publisher). See
    /// [`Publisher`].
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
    /// deliveries once the broker has answered `Subscribed`. A group this creates takes the
    /// broker's default settings (see [`Client::subscribe_with`]).
    ///
    /// `window` is the subscription's initial credit and the most messages ever outstanding
    /// towards it (granted credit + buffered + held by the app unfinished). Above
    /// `limits().max_credit` it fails with [`ClientError::CreditAboveLimit`] (naming both;
    /// nothing is sent), and a `window` of 0 with [`ClientError::InvalidArgument`]. Fails with
    /// [`ClientError::Broker`] when the broker refuses (unknown topic, `max_subscriptions`, ...).
    /// While the client reconnects it waits for the new connection (the check uses the limits
    /// of the last one).
    pub async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        window: u32,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_with(topic, group, window, GroupSpec::default())
            .await
    }

    /// [`Client::subscribe`], with the settings `group` gets if this subscription creates it:
    /// where it starts reading ([`crate::StartPosition`]: earliest stored, latest, or a sequence),
    /// its ack timeout, its `max_attempts`, its dead-letter topic, whether it is ephemeral
    /// (deleted when its last subscription leaves, never persisted; see
    /// [`Client::subscribe_ephemeral`], which also names it), and its ordering
    /// ([`crate::GroupOrdering::Key`]: messages with the same [`crate::KEY_HEADER`] header go to
    /// one member at a time, in order); unset fields take the broker's defaults. When the group exists already, `spec` is ignored and the group keeps its
    /// settings and kind (see them in [`crate::GroupInfo::config`] and
    /// [`crate::GroupInfo::ephemeral`]).
    ///
    /// Fails as [`Client::subscribe`] does, and with [`ClientError::Broker`]
    /// (`InvalidArgument`) when the broker refuses a setting.
    pub async fn subscribe_with(
        &self,
        topic: &str,
        group: &str,
        window: u32,
        spec: GroupSpec,
    ) -> Result<Subscription, ClientError> {
        Subscription::open(self.conn.clone(), topic, group, window, spec).await
    }

    /// A one-off subscription to `topic` in a group of its own, deleted by the broker when the
    /// subscription ends (closed, dropped, or its connection lost): it leaves no durable group
    /// behind holding messages, the way a NATS ephemeral consumer or a RabbitMQ exclusive
    /// auto-delete queue does not. The group is named `ephemeral-<16 hex digits>` (random; see
    /// [`Subscription::group`]) and created from `spec` with `ephemeral` set: it starts at
    /// `spec.start` (the earliest stored message by default, [`crate::StartPosition::Latest`]
    /// to tail) and is never written to the broker's state store (a broker restart forgets it).
    ///
    /// After a reconnect it is created again on the new connection, starting after the last
    /// message the subscription received (from `spec.start` if it received none); deliveries
    /// received and not acked before the loss are not redelivered. Fails as
    /// [`Client::subscribe_with`] does (`window` 0 or above `max_credit`, a refused subscribe,
    /// `LimitExceeded` at the topic's `max_groups_per_topic`, which counts ephemeral groups
    /// too).
    pub async fn subscribe_ephemeral(
        &self,
        topic: &str,
        window: u32,
        spec: GroupSpec,
    ) -> Result<Subscription, ClientError> {
        let group = ephemeral_group_name();
        let spec = GroupSpec {
            ephemeral: true,
            ..spec
        };
        Subscription::open(self.conn.clone(), topic, &group, window, spec).await
    }

    async fn request(&self, request: AdminRequest) -> Result<Frame, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.conn.send(Command::Request { request, reply }).await?;
        rx.await.map_err(|_| self.conn.shared.error())?
    }
}

/// A new ephemeral group's name: `ephemeral-` and 64 random bits in hex (a collision between
/// two live subscriptions of a topic is as likely as guessing a 64-bit key).
fn ephemeral_group_name() -> String {
    format!("ephemeral-{:016x}", rand::random::<u64>())
}

/// The error for an admin answer of the wrong kind.
fn unexpected(request: &str, answer: &Frame) -> ClientError {
    ClientError::Protocol(format!("{request} answered with {}", answer.name()))
}

/// The client against a scripted peer on a loopback socket (no broker): what goes on the wire
/// for the delivery-guarantee calls, and how the answers come back.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::Framed;
    use weir_protocol::{
        Ack, Credit, Deliver, Error, ErrorCode, GoingAway, GoingAwayReason, GroupDeleted, HelloOk,
        Limit, Nack, Progress, PublishOk, RejectReason, Rejected, StartPosition, Subscribed, Term,
        TopicDeleted, TopicList, WeirCodec, PROTOCOL_VERSION,
    };

    use super::*;
    use crate::connection::test_limits;
    use crate::error::PublishError;
    use crate::reconnect::ReconnectPolicy;
    use crate::subscription::Delivery;
    use futures::FutureExt;

    type Peer = Framed<TcpStream, WeirCodec>;

    /// A connected client and the peer's end of its socket, past the handshake.
    async fn connect_scripted() -> (Client, Peer) {
        let (client, peer, _listener) = connect_scripted_listening().await;
        (client, peer)
    }

    /// [`connect_scripted`], with the listener, which takes the client's reconnects.
    async fn connect_scripted_listening() -> (Client, Peer, TcpListener) {
        connect_scripted_with(fast_reconnect()).await
    }

    /// [`connect_scripted_listening`] with `reconnect`.
    async fn connect_scripted_with(reconnect: ReconnectPolicy) -> (Client, Peer, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let options = ClientOptions {
            reconnect,
            ..ClientOptions::default()
        };
        let (client, peer) = tokio::join!(
            Client::connect_with(addr, options),
            accept_hello(&listener, test_limits())
        );
        (client.unwrap(), peer, listener)
    }

    /// Reconnecting with short backoffs, giving up after 5 s.
    fn fast_reconnect() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(5),
            max_attempts: None,
        }
    }

    /// Accepts the client's next connection and answers its `Hello` with `limits`, speaking
    /// protocol v4 (one frame per publish, delivery and settlement: what these scripts
    /// expect; a v4 broker is a broker the client must still serve).
    async fn accept_hello(listener: &TcpListener, limits: ServerLimits) -> Peer {
        let mut peer = accept(listener).await;
        match next(&mut peer).await {
            Frame::Hello(hello) => assert_eq!(hello.version, PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
        let hello_ok = HelloOk {
            version: weir_protocol::MIN_PROTOCOL_VERSION,
            limits,
        };
        peer.send(Frame::HelloOk(hello_ok)).await.unwrap();
        peer.codec_mut()
            .set_version(weir_protocol::MIN_PROTOCOL_VERSION);
        peer
    }

    /// Accepts the client's next connection.
    async fn accept(listener: &TcpListener) -> Peer {
        let (socket, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("a connection within 5 s")
            .unwrap();
        Framed::new(socket, WeirCodec::default())
    }

    /// What the broker does at `idle_timeout`: `GoingAway{Idle}`, then it stops writing (and,
    /// like the broker, the caller keeps the peer, so the client gets no reset).
    async fn close_as_idle(peer: &mut Peer) {
        let going_away = GoingAway {
            reason: GoingAwayReason::Idle,
            message: "idle".into(),
        };
        peer.send(Frame::GoingAway(going_away)).await.unwrap();
        peer.get_mut().shutdown().await.unwrap();
    }

    /// Waits until the client's task has seen the socket end.
    async fn until_disconnected(client: &Client) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while client.is_connected() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the client sees the close within 5 s");
    }

    /// Answers the `ListTopics` the client sends next with an empty list.
    async fn answer_list(peer: &mut Peer) {
        match next(peer).await {
            Frame::ListTopics(l) => {
                let list = TopicList {
                    req: l.req,
                    topics: vec![],
                    next: None,
                };
                peer.send(Frame::TopicList(list)).await.unwrap();
            }
            other => panic!("expected ListTopics, got {other:?}"),
        }
    }

    /// The next frame the client sends.
    /// Subscribes `client` to orders/billing with window 4, the scripted `peer` answering;
    /// returns the subscription and its id.
    async fn subscribe_scripted(client: &Client, peer: &mut Peer) -> (Subscription, u64) {
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("orders", "billing", 4).await }
        });
        let sub_id = match next(peer).await {
            Frame::Subscribe(s) => s.sub,
            other => panic!("expected Subscribe, got {other:?}"),
        };
        peer.send(Frame::Subscribed(Subscribed { sub: sub_id }))
            .await
            .unwrap();
        (subscribing.await.unwrap().unwrap(), sub_id)
    }

    async fn next(peer: &mut Peer) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), peer.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket open")
            .expect("a valid frame")
    }

    #[tokio::test]
    async fn deletes_are_answered_or_refused_with_typed_errors() {
        let (client, mut peer) = connect_scripted().await;
        let deleting = tokio::spawn({
            let client = client.clone();
            async move { client.delete_topic("orders", true).await }
        });
        match next(&mut peer).await {
            Frame::DeleteTopic(d) => {
                assert_eq!((d.name.as_str(), d.force), ("orders", true));
                let answer = Frame::TopicDeleted(TopicDeleted { req: d.req });
                peer.send(answer).await.unwrap();
            }
            other => panic!("expected DeleteTopic, got {other:?}"),
        }
        deleting.await.unwrap().unwrap();

        for code in [
            ErrorCode::InUse,
            ErrorCode::UnknownGroup,
            ErrorCode::UnknownTopic,
        ] {
            let deleting = tokio::spawn({
                let client = client.clone();
                async move { client.delete_group("orders", "billing", false).await }
            });
            match next(&mut peer).await {
                Frame::DeleteGroup(d) => {
                    assert_eq!(
                        (d.topic.as_str(), d.group.as_str(), d.force),
                        ("orders", "billing", false)
                    );
                    let refusal = Frame::Error(Error {
                        req: d.req,
                        code,
                        message: "no".into(),
                        denied: None,
                    });
                    peer.send(refusal).await.unwrap();
                }
                other => panic!("expected DeleteGroup, got {other:?}"),
            }
            assert!(matches!(
                deleting.await.unwrap(),
                Err(ClientError::Broker { code: c, .. }) if c == code
            ));
        }

        let deleting = tokio::spawn({
            let client = client.clone();
            async move { client.delete_group("orders", "billing", true).await }
        });
        match next(&mut peer).await {
            Frame::DeleteGroup(d) => {
                assert!(d.force);
                let answer = Frame::GroupDeleted(GroupDeleted { req: d.req });
                peer.send(answer).await.unwrap();
            }
            other => panic!("expected DeleteGroup, got {other:?}"),
        }
        deleting.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn published_headers_go_on_the_wire() {
        let (client, mut peer) = connect_scripted().await;
        let confirm = client
            .publisher()
            .publish_with_headers("orders", [("trace-id", "abc")], "body")
            .await
            .unwrap();
        match next(&mut peer).await {
            Frame::Publish(p) => {
                assert_eq!(p.headers, [("trace-id".to_owned(), "abc".to_owned())]);
                assert_eq!(p.payload.as_ref(), b"body");
                let ok = Frame::PublishOk(PublishOk {
                    duplicate: false,
                    id: p.id,
                    seq: 7,
                });
                peer.send(ok).await.unwrap();
            }
            other => panic!("expected Publish, got {other:?}"),
        }
        assert_eq!(confirm.await, Ok(7));
    }

    /// Ack, nack, term and progress made together leave as one batch — one frame per kind and
    /// one credit for the three finished deliveries — and a delivery dropped unfinished
    /// returns its credit without an ack, as it always has.
    #[tokio::test]
    async fn finished_deliveries_leave_in_one_batch_with_their_credit() {
        let (client, mut peer) = connect_scripted().await;
        let spec = GroupSpec {
            ordering: None,
            start: StartPosition::Latest,
            ack_timeout_ms: Some(2000),
            max_attempts: Some(3),
            dead_letter_topic: Some("orders.poison".into()),
            ephemeral: false,
        };
        let subscribing = tokio::spawn({
            let (client, spec) = (client.clone(), spec.clone());
            async move { client.subscribe_with("orders", "billing", 64, spec).await }
        });
        let sub_id = match next(&mut peer).await {
            Frame::Subscribe(s) => {
                assert_eq!((s.group_spec, s.credit), (spec, 64));
                s.sub
            }
            other => panic!("expected Subscribe, got {other:?}"),
        };
        peer.send(Frame::Subscribed(Subscribed { sub: sub_id }))
            .await
            .unwrap();
        let mut sub = subscribing.await.unwrap().unwrap();
        for seq in 1..=4 {
            let deliver = Deliver {
                sub: sub_id,
                seq,
                attempt: 1,
                headers: vec![("n".into(), seq.to_string())],
                payload: "m".into(),
            };
            peer.send(Frame::Deliver(deliver)).await.unwrap();
        }
        let mut held = Vec::new();
        for seq in 1..=4 {
            let d = sub.next().await.unwrap().unwrap();
            assert_eq!(
                (d.seq(), d.header("n")),
                (seq, Some(seq.to_string().as_str()))
            );
            held.push(d);
        }
        // Finished without yielding to the connection task: one batch.
        let [d1, d2, d3, d4] = <[Delivery; 4]>::try_from(held).unwrap();
        d4.progress();
        d1.ack();
        d2.nack(Duration::from_millis(100));
        d3.term("unparseable");
        let mut frames = Vec::new();
        for _ in 0..5 {
            frames.push(next(&mut peer).await);
        }
        let sub = sub_id;
        assert_eq!(
            frames,
            [
                Frame::Progress(Progress { sub, seqs: vec![4] }),
                Frame::Ack(Ack { sub, seqs: vec![1] }),
                Frame::Nack(Nack {
                    sub,
                    seqs: vec![2],
                    delay_ms: 100
                }),
                Frame::Term(Term {
                    sub,
                    seqs: vec![3],
                    reason: "unparseable".into()
                }),
                Frame::Credit(Credit { sub, n: 3 }),
            ]
        );
        drop(d4);
        assert_eq!(next(&mut peer).await, Frame::Credit(Credit { sub, n: 1 }));
    }

    /// After an idle close the client is not closed, and its next request opens a new
    /// connection whose limits `limits()` reports from then on.
    #[tokio::test]
    async fn an_idle_close_is_healed_by_the_next_request_on_a_new_connection() {
        let (client, mut first, listener) = connect_scripted_listening().await;
        assert_eq!(client.limits().max_credit, 64);
        close_as_idle(&mut first).await;
        until_disconnected(&client).await;
        assert!(!client.is_closed());
        assert!(client.closed_reason().is_none());

        let listing = tokio::spawn({
            let client = client.clone();
            async move { client.list_topics().await }
        });
        let limits = ServerLimits {
            max_credit: 32,
            ..test_limits()
        };
        let mut second = accept_hello(&listener, limits).await;
        answer_list(&mut second).await;
        assert!(listing.await.unwrap().unwrap().is_empty());
        assert_eq!(
            client.limits().max_credit,
            32,
            "the live connection's limits"
        );
        assert!(client.is_connected());
        assert!(!client.is_closed());
    }

    /// Publishes, a request and a subscribe sent just as the broker closed the connection as
    /// idle were never read by it: they are sent again on the new connection, in their order,
    /// and answered there.
    #[tokio::test]
    async fn what_raced_an_idle_close_is_sent_again_in_order_on_the_new_connection() {
        let (client, mut first, listener) = connect_scripted_listening().await;
        let publisher = client.publisher();
        let a = publisher.publish("orders", "a").await.unwrap();
        assert!(matches!(next(&mut first).await, Frame::Publish(_)));
        let listing = tokio::spawn({
            let client = client.clone();
            async move { client.list_topics().await }
        });
        assert!(matches!(next(&mut first).await, Frame::ListTopics(_)));
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("orders", "billing", 8).await }
        });
        assert!(matches!(next(&mut first).await, Frame::Subscribe(_)));
        let b = publisher.publish("orders", "b").await.unwrap();
        assert!(matches!(next(&mut first).await, Frame::Publish(_)));
        // Read by the peer's socket, not by the "broker": it closes as idle.
        close_as_idle(&mut first).await;

        let mut second = accept_hello(&listener, test_limits()).await;
        match next(&mut second).await {
            Frame::Publish(p) => {
                assert_eq!(p.payload.as_ref(), b"a");
                let ok = Frame::PublishOk(PublishOk {
                    duplicate: false,
                    id: p.id,
                    seq: 1,
                });
                second.send(ok).await.unwrap();
            }
            other => panic!("expected Publish a, got {other:?}"),
        }
        answer_list(&mut second).await;
        match next(&mut second).await {
            Frame::Subscribe(s) => {
                assert_eq!(
                    (s.topic.as_str(), s.group.as_str(), s.credit),
                    ("orders", "billing", 8)
                );
                second
                    .send(Frame::Subscribed(Subscribed { sub: s.sub }))
                    .await
                    .unwrap();
            }
            other => panic!("expected Subscribe, got {other:?}"),
        }
        match next(&mut second).await {
            Frame::Publish(p) => {
                assert_eq!(p.payload.as_ref(), b"b");
                let ok = Frame::PublishOk(PublishOk {
                    duplicate: false,
                    id: p.id,
                    seq: 2,
                });
                second.send(ok).await.unwrap();
            }
            other => panic!("expected Publish b, got {other:?}"),
        }
        assert_eq!((a.await, b.await), (Ok(1), Ok(2)));
        listing.await.unwrap().unwrap();
        let sub = subscribing.await.unwrap().unwrap();
        assert_eq!(sub.topic(), "orders");
        drop(first);
    }

    /// With reconnecting off, a reconnect after an idle close that the broker refuses fails the
    /// request that asked for it and the publish that waited for it, with the refusal; the
    /// client is not closed, and the next request connects.
    #[tokio::test]
    async fn a_refused_reconnect_fails_its_waiters_and_the_next_operation_tries_again() {
        let (client, mut first, listener) =
            connect_scripted_with(ReconnectPolicy::disabled()).await;
        let publisher = client.publisher();
        close_as_idle(&mut first).await;
        until_disconnected(&client).await;

        let pinging = tokio::spawn({
            let client = client.clone();
            async move { client.ping().await }
        });
        let mut refusing = accept(&listener).await;
        assert!(matches!(next(&mut refusing).await, Frame::Hello(_)));
        // Queued while the reconnect is under way: it waits for that attempt.
        let confirm = publisher.publish("orders", "a").await.unwrap();
        let refusal = Rejected {
            id: 0,
            reason: RejectReason::TooManyConnections,
            limit: Limit::new("max_connections", 1),
            retry_after_ms: None,
            held_by: None,
        };
        refusing.send(Frame::Rejected(refusal)).await.unwrap();
        assert!(matches!(
            pinging.await.unwrap(),
            Err(ClientError::ConnectionRejected {
                reason: RejectReason::TooManyConnections,
                ..
            })
        ));
        match confirm.await {
            Err(PublishError::NotSent(e)) => {
                assert!(matches!(*e, ClientError::ConnectionRejected { .. }), "{e}")
            }
            other => panic!("expected NotSent, got {other:?}"),
        }
        assert!(!client.is_closed());
        assert!(!client.is_connected());
        assert_eq!(publisher.in_flight(), 0);

        let listing = tokio::spawn({
            let client = client.clone();
            async move { client.list_topics().await }
        });
        let mut third = accept_hello(&listener, test_limits()).await;
        answer_list(&mut third).await;
        listing.await.unwrap().unwrap();
        drop((first, refusing));
    }

    /// With reconnecting off, any end other than an idle close stays final: no reconnect, the
    /// error surfaces.
    #[tokio::test]
    async fn with_reconnecting_off_a_shutdown_close_is_not_healed() {
        let (client, mut first, listener) =
            connect_scripted_with(ReconnectPolicy::disabled()).await;
        let going_away = GoingAway {
            reason: GoingAwayReason::ShuttingDown,
            message: "bye".into(),
        };
        first.send(Frame::GoingAway(going_away)).await.unwrap();
        first.get_mut().shutdown().await.unwrap();
        until_disconnected(&client).await;
        let shutting_down = |r: &Result<Vec<weir_protocol::TopicInfo>, ClientError>| {
            matches!(
                r,
                Err(ClientError::GoingAway {
                    reason: GoingAwayReason::ShuttingDown,
                    ..
                })
            )
        };
        let r = client.list_topics().await;
        assert!(shutting_down(&r), "{r:?}");
        assert!(client.is_closed());
        assert!(matches!(
            client.closed_reason(),
            Some(ClientError::GoingAway {
                reason: GoingAwayReason::ShuttingDown,
                ..
            })
        ));
        let r = client.list_topics().await;
        assert!(shutting_down(&r), "{r:?}");
        assert!(
            listener.accept().now_or_never().is_none(),
            "no connection was attempted"
        );
    }

    /// After a `GoingAway{ShuttingDown}`, the client reconnects: the subscription opens again
    /// first (same id, the window minus the delivery the app holds), then the unconfirmed
    /// publishes go again in order; their confirms resolve on the new connection, the stream
    /// goes on, and acking the delivery of the lost connection sends only its credit.
    #[tokio::test]
    async fn a_lost_connection_is_reconnected_resubscribed_and_publishes_resent() {
        let (client, mut first, listener) = connect_scripted_listening().await;
        let (mut sub, sub_id) = subscribe_scripted(&client, &mut first).await;
        let deliver = |seq| {
            Frame::Deliver(Deliver {
                sub: sub_id,
                seq,
                attempt: 1,
                headers: vec![],
                payload: "m".into(),
            })
        };
        first.send(deliver(1)).await.unwrap();
        let held = sub.next().await.unwrap().unwrap();
        let publisher = client.publisher_with_window(4);
        let a = publisher.publish("orders", "a").await.unwrap();
        let b = publisher.publish("orders", "b").await.unwrap();
        for _ in 0..2 {
            assert!(matches!(next(&mut first).await, Frame::Publish(_)));
        }
        let mut states = client.watch_state();
        let going_away = GoingAway {
            reason: GoingAwayReason::ShuttingDown,
            message: "bye".into(),
        };
        first.send(Frame::GoingAway(going_away)).await.unwrap();
        drop(first);
        let mut second = accept_hello(&listener, test_limits()).await;
        match next(&mut second).await {
            Frame::Subscribe(s) => {
                assert_eq!(
                    (s.sub, s.topic.as_str(), s.group.as_str(), s.credit),
                    (sub_id, "orders", "billing", 3),
                    "the window minus the delivery the app holds"
                );
                second
                    .send(Frame::Subscribed(Subscribed { sub: s.sub }))
                    .await
                    .unwrap();
            }
            other => panic!("expected Subscribe, got {other:?}"),
        }
        for (payload, seq) in [(&b"a"[..], 10), (&b"b"[..], 11)] {
            match next(&mut second).await {
                Frame::Publish(p) => {
                    assert_eq!(p.payload.as_ref(), payload);
                    let ok = Frame::PublishOk(PublishOk {
                        duplicate: false,
                        id: p.id,
                        seq,
                    });
                    second.send(ok).await.unwrap();
                }
                other => panic!("expected Publish, got {other:?}"),
            }
        }
        assert_eq!((a.await, b.await), (Ok(10), Ok(11)));
        assert_eq!(publisher.in_flight(), 0);
        assert_eq!(client.reconnects(), 1);
        tokio::time::timeout(
            Duration::from_secs(5),
            states.wait_for(|s| *s == ConnectionState::Connected),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(client.closed_reason().is_none());

        held.ack();
        assert_eq!(
            next(&mut second).await,
            Frame::Credit(Credit { sub: sub_id, n: 1 }),
            "no Ack for a delivery of the lost connection"
        );
        second.send(deliver(2)).await.unwrap();
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(d.seq(), 2, "the stream goes on");
        d.ack();
        assert_eq!(
            next(&mut second).await,
            Frame::Ack(Ack {
                sub: sub_id,
                seqs: vec![2]
            })
        );
    }

    /// `subscribe_ephemeral` names the group `ephemeral-<16 hex>` and asks for an ephemeral
    /// group; after a reconnect it subscribes again (same group) starting after the last
    /// sequence it received, not at its original start.
    #[tokio::test]
    async fn an_ephemeral_subscription_resumes_after_its_last_delivery_on_reconnect() {
        let (client, mut first, listener) = connect_scripted_listening().await;
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move {
                client
                    .subscribe_ephemeral("orders", 4, GroupSpec::default())
                    .await
            }
        });
        let (sub_id, group) = match next(&mut first).await {
            Frame::Subscribe(s) => {
                assert!(s.group_spec.ephemeral);
                assert_eq!(s.group_spec.start, StartPosition::Earliest);
                (s.sub, s.group)
            }
            other => panic!("expected Subscribe, got {other:?}"),
        };
        let hex = group.strip_prefix("ephemeral-").expect("named ephemeral-…");
        assert_eq!(hex.len(), 16, "{group}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{group}");
        first
            .send(Frame::Subscribed(Subscribed { sub: sub_id }))
            .await
            .unwrap();
        let mut sub = subscribing.await.unwrap().unwrap();
        assert_eq!(sub.group(), group);
        for seq in [7, 9] {
            let d = Deliver {
                sub: sub_id,
                seq,
                attempt: 1,
                headers: vec![],
                payload: "m".into(),
            };
            first.send(Frame::Deliver(d)).await.unwrap();
            sub.next().await.unwrap().unwrap().ack();
        }
        drop(first);
        let mut second = accept_hello(&listener, test_limits()).await;
        match next(&mut second).await {
            Frame::Subscribe(s) => {
                assert_eq!((s.sub, s.group.as_str()), (sub_id, group.as_str()));
                assert!(s.group_spec.ephemeral);
                assert_eq!(s.group_spec.start, StartPosition::Seq(10));
            }
            other => panic!("expected Subscribe, got {other:?}"),
        }
        assert_ne!(
            ephemeral_group_name(),
            ephemeral_group_name(),
            "random names"
        );
    }

    /// With nothing listening any more, reconnecting gives up at its bound: the client is
    /// closed with an error naming the address and the time it tried, the subscription's stream
    /// ends with it, and an unconfirmed publish's confirm says the connection was lost.
    #[tokio::test]
    async fn reconnecting_gives_up_at_its_bound_with_a_clear_error() {
        let policy = ReconnectPolicy {
            max_elapsed: Duration::from_millis(300),
            ..fast_reconnect()
        };
        let (client, mut first, listener) = connect_scripted_with(policy).await;
        let addr = listener.local_addr().unwrap();
        let (mut sub, _) = subscribe_scripted(&client, &mut first).await;
        let confirm = client.publisher().publish("orders", "a").await.unwrap();
        assert!(matches!(next(&mut first).await, Frame::Publish(_)));
        let mut states = client.watch_state();
        drop((first, listener));
        let saw = tokio::time::timeout(
            Duration::from_secs(10),
            states.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })),
        )
        .await
        .expect("reconnecting within 10 s")
        .map(|s| *s);
        assert!(
            matches!(saw, Ok(ConnectionState::Reconnecting { attempt, .. }) if attempt >= 1),
            "{saw:?}"
        );
        assert_eq!(confirm.await, Err(PublishError::ConnectionLost));
        let end = sub.next().await.unwrap().unwrap_err();
        assert!(sub.next().await.is_none());
        match &end {
            ClientError::ReconnectFailed {
                addr: a,
                elapsed,
                attempts,
                last,
            } => {
                assert_eq!(a, &addr.to_string());
                assert!(*elapsed >= Duration::from_millis(300), "{elapsed:?}");
                assert!(*attempts >= 2, "{attempts}");
                assert!(matches!(**last, ClientError::Io(_)), "{last}");
            }
            other => panic!("expected ReconnectFailed, got {other}"),
        }
        assert!(
            end.to_string()
                .starts_with(&format!("gave up reconnecting to {addr} after")),
            "{end}"
        );
        assert!(client.is_closed());
        assert_eq!(client.state(), ConnectionState::Closed);
        assert!(matches!(
            client.list_topics().await,
            Err(ClientError::ReconnectFailed { .. })
        ));
    }

    /// The broker ending a subscription on its own (`Unsubscribed` it did not ask for: its
    /// group was deleted with force) ends the stream with a distinct error, not a silent end.
    #[tokio::test]
    async fn a_subscription_whose_group_is_deleted_ends_with_group_deleted() {
        let (client, mut peer) = connect_scripted().await;
        let subscribing = tokio::spawn({
            let client = client.clone();
            async move { client.subscribe("orders", "billing", 4).await }
        });
        let sub_id = match next(&mut peer).await {
            Frame::Subscribe(s) => s.sub,
            other => panic!("expected Subscribe, got {other:?}"),
        };
        peer.send(Frame::Subscribed(Subscribed { sub: sub_id }))
            .await
            .unwrap();
        let mut sub = subscribing.await.unwrap().unwrap();
        peer.send(Frame::Unsubscribed(weir_protocol::Unsubscribed {
            sub: sub_id,
        }))
        .await
        .unwrap();
        match sub.next().await {
            Some(Err(ClientError::GroupDeleted { topic, group })) => {
                assert_eq!((topic.as_str(), group.as_str()), ("orders", "billing"))
            }
            other => panic!("expected GroupDeleted, got {other:?}"),
        }
        assert!(sub.next().await.is_none());
        assert!(!client.is_closed(), "only the subscription ended");
    }

    /// A peer that answers `Hello` with HTTP (the admin port given by mistake) fails the
    /// connect with an error that says so.
    #[tokio::test]
    async fn an_http_peer_fails_with_a_clear_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .unwrap();
            socket
        });
        let err = Client::connect(addr).await.unwrap_err();
        assert!(matches!(err, ClientError::HttpPeer { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("{addr} answered with HTTP — is that the admin port? The wire port is 7070 by default")
        );
        drop(server.await.unwrap());
    }
}
