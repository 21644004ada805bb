//! [`Client`]: a handle to one broker connection, with the admin requests, and the way to make
//! [`Publisher`]s and [`Subscription`]s on it.

use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::sync::oneshot;
use weir_protocol::{
    Frame, GroupSpec, ServerLimits, TopicConfig, TopicDescription, TopicInfo, TopicSpec,
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

    /// Describes one topic: its snapshot and the sample of messages `drop_oldest` evicted most
    /// recently (at most 100). Fails with [`ClientError::Broker`] (`UnknownTopic`).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        match self
            .request(AdminRequest::DescribeTopic(name.to_owned()))
            .await?
        {
            Frame::TopicDescription(d) => Ok(d),
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
    /// deliveries once the broker has answered `Subscribed`. A group this creates takes the
    /// broker's default settings (see [`Client::subscribe_with`]).
    ///
    /// `window` is clamped to `limits().max_credit`: it is the subscription's initial credit and
    /// the most messages ever outstanding towards it (granted credit + buffered + held by the app
    /// unfinished). A `window` of 0 fails with [`ClientError::InvalidArgument`]. Fails with
    /// [`ClientError::Broker`] when the broker refuses (unknown topic, `max_subscriptions`, ...).
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
    /// its ack timeout, its `max_attempts` and its dead-letter topic; unset fields take the
    /// broker's defaults. When the group exists already, `spec` is ignored and the group keeps
    /// its settings (see them in [`crate::GroupInfo::config`]).
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

    async fn request(&self, request: AdminRequest) -> Result<Frame, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.conn.send(Command::Request { request, reply }).await?;
        rx.await.map_err(|_| self.conn.shared.error())?
    }
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
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::Framed;
    use weir_protocol::{
        Ack, Credit, Deliver, Error, ErrorCode, GroupDeleted, HelloOk, Nack, Progress, PublishOk,
        StartPosition, Subscribed, Term, TopicDeleted, WeirCodec, PROTOCOL_VERSION,
    };

    use super::*;
    use crate::connection::test_limits;
    use crate::subscription::Delivery;

    type Peer = Framed<TcpStream, WeirCodec>;

    /// A connected client and the peer's end of its socket, past the handshake.
    async fn connect_scripted() -> (Client, Peer) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = async {
            let (socket, _) = listener.accept().await.unwrap();
            let mut peer = Framed::new(socket, WeirCodec::default());
            assert!(matches!(next(&mut peer).await, Frame::Hello(_)));
            let hello_ok = HelloOk {
                version: PROTOCOL_VERSION,
                limits: test_limits(),
            };
            peer.send(Frame::HelloOk(hello_ok)).await.unwrap();
            peer
        };
        let (client, peer) = tokio::join!(Client::connect(addr), peer);
        (client.unwrap(), peer)
    }

    /// The next frame the client sends.
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
                let ok = Frame::PublishOk(PublishOk { id: p.id, seq: 7 });
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
            start: StartPosition::Latest,
            ack_timeout_ms: Some(2000),
            max_attempts: Some(3),
            dead_letter_topic: Some("orders.poison".into()),
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
}
