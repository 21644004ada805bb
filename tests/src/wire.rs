//! A raw protocol client: frames in, frames out, nothing hidden. Tests that assert exact wire
//! behaviour (credit counts, error codes, closes) use it instead of the client library.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use weir_protocol::*;

/// How long any single expected frame may take to arrive before the test fails.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// The codec of a client that has not said `Hello` yet: it lays frames out as the oldest
/// version, as a raw client speaks by default.
fn v4_codec() -> WeirCodec {
    let mut codec = WeirCodec::new(MAX_FRAME_BYTES_CEILING);
    codec.set_version(MIN_PROTOCOL_VERSION);
    codec
}

/// A framed connection to a broker.
///
/// It speaks protocol v4 unless [`RawClient::connect_v5`] or [`RawClient::connect_v6`] (so
/// the raw tests are also the proof that a v4 client keeps working: it is never sent a batch
/// frame or a v6 field).
pub struct RawClient {
    framed: Framed<TcpStream, WeirCodec>,
    next_req: u64,
    version: u16,
}

impl RawClient {
    /// Connects without sending `Hello`.
    pub async fn connect_raw(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient {
            framed: Framed::new(stream, v4_codec()),
            next_req: 1,
            version: MIN_PROTOCOL_VERSION,
        }
    }

    /// Connects and completes the handshake; returns the client and the broker's limits.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        Self::connect_as(addr, None).await
    }

    /// Connects speaking protocol v5 (batch frames) and completes the handshake.
    pub async fn connect_v5(addr: SocketAddr) -> RawClient {
        Self::connect_version(addr, 5, None).await
    }

    /// Connects speaking protocol v5, presenting `token`, and completes the handshake.
    pub async fn connect_v5_as(addr: SocketAddr, token: Option<&str>) -> RawClient {
        Self::connect_version(addr, 5, token).await
    }

    /// Connects speaking the newest protocol ([`PROTOCOL_VERSION`]: producer stamps, message
    /// age, key-ordered groups) and completes the handshake.
    pub async fn connect_v6(addr: SocketAddr) -> RawClient {
        Self::connect_version(addr, PROTOCOL_VERSION, None).await
    }

    /// Connects speaking protocol `version`, presenting `token`, and completes the handshake;
    /// the frames' layout follows `version` both ways.
    pub async fn connect_version(addr: SocketAddr, version: u16, token: Option<&str>) -> RawClient {
        let mut client = Self::connect_raw(addr).await;
        client.version = version;
        client.hello(token).await;
        match client.recv().await {
            Frame::HelloOk(ok) if ok.version == version => client,
            other => panic!("expected HelloOk of v{version}, got {other:?}"),
        }
    }

    /// Connects, presenting `token` in `Hello`, and completes the handshake.
    pub async fn connect_as(addr: SocketAddr, token: Option<&str>) -> RawClient {
        let mut client = Self::connect_raw(addr).await;
        client.hello(token).await;
        match client.recv().await {
            Frame::HelloOk(_) => client,
            other => panic!("expected HelloOk, got {other:?}"),
        }
    }

    /// Connects from the loopback address `source` (say 127.0.0.2: a different client address
    /// on the same machine) without sending `Hello`.
    pub async fn connect_raw_from(addr: SocketAddr, source: std::net::IpAddr) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = socket.connect(addr).await.expect("connect");
        RawClient {
            framed: Framed::new(stream, v4_codec()),
            next_req: 1,
            version: MIN_PROTOCOL_VERSION,
        }
    }

    /// Sends `Hello` with `token`, of this client's protocol version, and lays frames out in
    /// that version from now on.
    pub async fn hello(&mut self, token: Option<&str>) {
        self.send(Frame::Hello(Hello {
            version: self.version,
            token: token.map(str::to_owned),
        }))
        .await;
    }

    /// The underlying stream, for writing raw bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.framed.get_mut()
    }

    /// The framed connection, for tests that drive it directly.
    pub fn framed_mut(&mut self) -> &mut Framed<TcpStream, WeirCodec> {
        &mut self.framed
    }

    /// Sends one frame. A `Hello` also sets the layout of the frames after it to its version
    /// (the version a broker speaking it answers in).
    pub async fn send(&mut self, frame: Frame) {
        if let Frame::Hello(hello) = &frame {
            self.version = hello.version;
            let version = hello.version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
            self.framed.codec_mut().set_version(version);
        }
        self.framed.send(frame).await.expect("send frame");
    }

    /// The next frame; panics after [`FRAME_TIMEOUT`] or if the connection closes.
    pub async fn recv(&mut self) -> Frame {
        match tokio::time::timeout(FRAME_TIMEOUT, self.framed.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => panic!("bad frame from broker: {e}"),
            Ok(None) => panic!("broker closed the connection"),
            Err(_) => panic!("no frame within {FRAME_TIMEOUT:?}"),
        }
    }

    /// The next frame, or `None` if the broker closed the connection; panics on timeout.
    pub async fn recv_or_closed(&mut self) -> Option<Frame> {
        match tokio::time::timeout(FRAME_TIMEOUT, self.framed.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no frame within {FRAME_TIMEOUT:?}"),
        }
    }

    /// The next frame if one arrives within `wait` (for asserting that nothing more comes).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        match tokio::time::timeout(wait, self.framed.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            _ => None,
        }
    }

    /// Sends a `Ping` and waits for its `Pong`, returning the frames that came first. The
    /// broker applies one connection's frames in order, so once this returns every frame sent
    /// before it (an ack, a nack, a progress) has been applied — what a test needs before it
    /// advances a paused clock past a deadline those frames move.
    pub async fn ping(&mut self) -> Vec<Frame> {
        let nonce = self.req();
        self.send(Frame::Ping(nonce)).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                Frame::Pong(n) if n == nonce => return before,
                other => before.push(other),
            }
            assert!(before.len() < 4096, "no Pong after {} frames", before.len());
        }
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Creates a topic and returns the answer frame.
    pub async fn create_topic(&mut self, spec: TopicSpec) -> Frame {
        let req = self.req();
        self.send(Frame::CreateTopic(CreateTopic { req, spec }))
            .await;
        self.recv().await
    }

    /// Publishes one message and waits for its answer (`PublishOk`, `Rejected` or `Error`).
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) -> Frame {
        self.publish_with_headers(topic, Headers::new(), payload)
            .await
    }

    /// Publishes one message with `headers` and waits for its answer (`PublishOk`, `Rejected`
    /// or `Error`).
    pub async fn publish_with_headers(
        &mut self,
        topic: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
    ) -> Frame {
        self.publish_stamped(topic, None, headers, payload).await
    }

    /// Publishes one message with `headers`, stamped by `producer` (carried on v6 connections
    /// only), and waits for its answer.
    pub async fn publish_stamped(
        &mut self,
        topic: &str,
        producer: Option<ProducerStamp>,
        headers: Headers,
        payload: impl Into<Bytes>,
    ) -> Frame {
        let id = self.req();
        self.send(Frame::Publish(Publish {
            producer,
            id,
            topic: topic.into(),
            headers,
            payload: payload.into(),
        }))
        .await;
        self.recv().await
    }

    /// Sends publishes `(id, payload)` pipelined — one flush for all — without waiting for
    /// their answers.
    pub async fn feed_publishes(
        &mut self,
        topic: &str,
        publishes: impl IntoIterator<Item = (u64, Bytes)>,
    ) {
        for (id, payload) in publishes {
            let publish = Publish {
                producer: None,
                id,
                topic: topic.into(),
                headers: Vec::new(),
                payload,
            };
            self.framed
                .feed(Frame::Publish(publish))
                .await
                .expect("feed");
        }
        self.framed.flush().await.expect("flush");
    }

    /// Publishes `payloads` pipelined and returns the sequence of each, asserting every one
    /// was confirmed.
    pub async fn publish_all(
        &mut self,
        topic: &str,
        payloads: impl IntoIterator<Item = Bytes>,
    ) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut publishes = Vec::new();
        for payload in payloads {
            let id = self.req();
            ids.push(id);
            publishes.push((id, payload));
        }
        self.feed_publishes(topic, publishes).await;
        let mut seqs = std::collections::HashMap::new();
        while seqs.len() < ids.len() {
            match self.recv().await {
                Frame::PublishOk(ok) => {
                    seqs.insert(ok.id, ok.seq);
                }
                other => panic!("expected PublishOk, got {other:?}"),
            }
        }
        ids.iter().map(|id| seqs[id]).collect()
    }

    /// Describes every topic, asking for pages until the list is complete.
    pub async fn list(&mut self) -> Vec<TopicInfo> {
        let (mut topics, mut after) = (Vec::new(), None);
        loop {
            let page = self.list_page(after, 0).await;
            topics.extend(page.topics);
            match page.next {
                Some(next) => after = Some(next),
                None => return topics,
            }
        }
    }

    /// One page of topics after `after`, at most `limit` (0: as many as fit).
    pub async fn list_page(&mut self, after: Option<String>, limit: u32) -> TopicList {
        let req = self.req();
        self.send(Frame::ListTopics(ListTopics { req, after, limit }))
            .await;
        match self.recv().await {
            Frame::TopicList(list) => list,
            other => panic!("expected TopicList, got {other:?}"),
        }
    }

    /// Subscribes and waits for `Subscribed`.
    pub async fn subscribe(&mut self, sub: u64, topic: &str, group: &str, credit: u32) {
        self.subscribe_with(sub, topic, group, credit, GroupSpec::default())
            .await;
    }

    /// Subscribes with group settings (used if this creates the group) and waits for
    /// `Subscribed`.
    pub async fn subscribe_with(
        &mut self,
        sub: u64,
        topic: &str,
        group: &str,
        credit: u32,
        group_spec: GroupSpec,
    ) {
        self.send(Frame::Subscribe(Subscribe {
            sub,
            topic: topic.into(),
            group: group.into(),
            credit,
            group_spec,
        }))
        .await;
        match self.recv().await {
            Frame::Subscribed(s) if s.sub == sub => {}
            other => panic!("expected Subscribed, got {other:?}"),
        }
    }

    /// Receives the next frame, which must be a delivery.
    pub async fn next_delivery(&mut self) -> Deliver {
        match self.recv().await {
            Frame::Deliver(d) => d,
            other => panic!("expected Deliver, got {other:?}"),
        }
    }

    /// Acks `seqs` of subscription 1 and grants as much credit back, in one flush; `Err` when
    /// the connection is gone (a killed broker).
    pub async fn ack_and_credit(&mut self, seqs: Vec<u64>) -> Result<(), ()> {
        let n = seqs.len() as u32;
        let framed = self.framed_mut();
        framed
            .feed(Frame::Ack(Ack { sub: 1, seqs }))
            .await
            .map_err(drop)?;
        framed
            .feed(Frame::Credit(Credit { sub: 1, n }))
            .await
            .map_err(drop)?;
        framed.flush().await.map_err(drop)
    }

    /// Receives the next `n` deliveries.
    pub async fn deliveries(&mut self, n: usize) -> Vec<Deliver> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.recv().await {
                Frame::Deliver(d) => out.push(d),
                other => panic!("expected Deliver, got {other:?}"),
            }
        }
        out
    }
}

/// Polls `ListTopics` until `check` holds for topic `name` (at most [`FRAME_TIMEOUT`], also
/// when the topic never appears: then it fails saying `None`): for waiting on broker-side state
/// such as in-flight counts, which no frame announces.
pub async fn wait_for_topic(
    client: &mut RawClient,
    name: &str,
    check: impl Fn(&TopicInfo) -> bool,
) -> TopicInfo {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let topics = client.list().await;
        let info = topics.into_iter().find(|t| t.config.name == name);
        match info {
            Some(info) if check(&info) => return info,
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "topic {name} never reached the expected state: {info:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl RawClient {
    /// Subscribes and consumes `n` messages, acking them and returning credit in batches —
    /// what a well-behaved consumer does. Returns them in delivery order.
    pub async fn consume(&mut self, sub: u64, topic: &str, group: &str, n: usize) -> Vec<Deliver> {
        const WINDOW: u32 = 500;
        self.subscribe(sub, topic, group, WINDOW).await;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let batch = self.deliveries((n - out.len()).min(100)).await;
            let seqs: Vec<u64> = batch.iter().map(|d| d.seq).collect();
            self.send(Frame::Ack(Ack { sub, seqs })).await;
            self.send(Frame::Credit(Credit {
                sub,
                n: batch.len() as u32,
            }))
            .await;
            out.extend(batch);
        }
        out
    }
}

/// The value of a delivery's first header named `name`.
pub fn header<'a>(d: &'a Deliver, name: &str) -> Option<&'a str> {
    d.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
