//! The offenders of `weir bench noisy-neighbour`, each a client that a broker must refuse, close
//! or hold to its share without its neighbours noticing.
//!
//! - **slowloris**: `--slowloris-conns` connections (70) that each send `Hello`, then a length
//!   prefix announcing a frame of exactly `max_frame_bytes` (4 MiB, 280 MiB for all of them:
//!   more than the default memory budget), then drip the frame's bytes one per second. A
//!   connection the broker closes is opened again, so the pressure lasts the whole run.
//! - **non-reader**: one connection with 16 subscriptions (16 groups, credit 1 024 each) on a
//!   topic a producer fills with `--non-reader-msgs` (200) messages of 256 KiB, which then never
//!   reads its socket. At the end it reads what is waiting for at most one second, to learn
//!   whether the broker closed it (and why).
//! - **header-bomb**: one connection publishing as fast as a window of 64 unanswered publishes
//!   allows, cycling through 65 headers, one 3 MiB header, and 1 000 empty headers; counts what
//!   it is answered, and reconnects when the broker closes it.
//! - **flood**: the client library's publisher with a deep window (`--flood-window`, 1 024)
//!   publishing 1 KiB messages as fast as it can to its own topic (overflow `drop_oldest` by
//!   default, so the broker keeps storing: `--flood-overflow reject` makes it refusals instead).
//! - **idle-swarm**: up to `--swarm-conns` (1 000) connections, bound to the source addresses
//!   `--swarm-sources` in turn (127.0.0.2..=127.0.0.5: the per-address cap is 256), held idle
//!   after `Hello`.
//!
//! Raw offenders speak the protocol with [`WeirCodec`] over a `TcpStream` split in halves: what
//! they write is exactly what they mean to send, and every frame the broker sends back is
//! counted by kind ([`answer_name`]). Each offender runs on its own single-threaded runtime on
//! its own thread, so its client-side work never queues the healthy tenant's tasks, and closes
//! every connection it opened before it returns.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::{Encoder, FramedRead};
use weir_client::{ClientOptions, OverflowPolicy, PublishError, TopicSpec};
use weir_protocol::{
    Frame, GroupSpec, Hello, Publish, Subscribe, WeirCodec, MAX_FRAME_BYTES_CEILING,
    PROTOCOL_VERSION,
};

use super::cleanup::Created;
use super::common::{connect, now_ns, raise_nofile};

/// Which offender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Offender {
    /// No offender: the healthy tenant alone (the baseline).
    None,
    Slowloris,
    NonReader,
    HeaderBomb,
    Flood,
    IdleSwarm,
    /// Each of the above in turn, `none` first.
    All,
}

impl Offender {
    /// The offenders a choice runs, in order.
    pub fn expand(self) -> Vec<Offender> {
        match self {
            Offender::All => vec![
                Offender::None,
                Offender::Slowloris,
                Offender::NonReader,
                Offender::HeaderBomb,
                Offender::Flood,
                Offender::IdleSwarm,
            ],
            one => vec![one],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Offender::None => "none",
            Offender::Slowloris => "slowloris",
            Offender::NonReader => "non-reader",
            Offender::HeaderBomb => "header-bomb",
            Offender::Flood => "flood",
            Offender::IdleSwarm => "idle-swarm",
            Offender::All => "all",
        }
    }

    /// What [`OffenderOutcome::sent`] counts for this offender.
    fn sent_what(self) -> &'static str {
        match self {
            Offender::Slowloris => "bytes dripped",
            Offender::NonReader => "256 KiB publishes (its producer)",
            Offender::HeaderBomb | Offender::Flood => "publishes",
            Offender::IdleSwarm => "connection attempts",
            Offender::None | Offender::All => "nothing",
        }
    }
}

/// The offenders' knobs.
#[derive(Debug, Clone)]
pub struct OffenderConfig {
    pub slowloris_conns: usize,
    pub swarm_conns: usize,
    pub swarm_sources: Vec<IpAddr>,
    pub non_reader_msgs: u64,
    pub flood_window: usize,
    pub flood_overflow: OverflowPolicy,
    /// Prefix of the topics offenders create.
    pub topic_prefix: String,
    pub run_id: u64,
}

/// What an offender saw. Every count is from the offender's side of the socket.
#[derive(Debug, Clone, Serialize)]
pub struct OffenderOutcome {
    pub offender: &'static str,
    /// Why the offender could not run as meant (its topic could not be created, ...).
    pub error: Option<String>,
    /// Topics it created (deleted after the run).
    pub topics: Vec<String>,
    /// From its start until it was in place (connections open, topic filled).
    pub setup_ms: u64,
    /// Connections that completed `Hello`.
    pub connections_opened: u64,
    /// Connection attempts that did not get `HelloOk`.
    pub connections_refused: u64,
    /// Those attempts by what happened (`Rejected TooManyConnections (max_connections_per_ip)`,
    /// `connect: ...`, `closed before HelloOk`).
    pub refused_connections: BTreeMap<String, u64>,
    /// Connections the broker closed while the offender held them.
    pub closed_by_broker: u64,
    /// Connections still open when the offender was told to stop (then closed by it).
    pub open_at_end: u64,
    /// From a connection's `HelloOk` to the broker closing it, fastest and slowest, ms.
    pub closed_after_ms_min: Option<u64>,
    pub closed_after_ms_max: Option<u64>,
    /// What `sent` counts.
    pub sent_what: &'static str,
    pub sent: u64,
    /// Publishes confirmed (`PublishOk`).
    pub confirmed: u64,
    /// Publishes refused (`Rejected`, shed ones included: they are answered `Overloaded`).
    pub refused: u64,
    /// Every frame the broker sent it besides `HelloOk`, by kind and reason:
    /// `Rejected Overloaded (max_connection_memory_bytes)`, `Error FrameTimeout`,
    /// `GoingAway SlowConsumer`, `Deliver`, ...
    pub answers: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

impl OffenderOutcome {
    /// Nothing seen yet.
    pub fn empty(o: Offender) -> OffenderOutcome {
        OffenderOutcome {
            offender: o.name(),
            error: None,
            topics: Vec::new(),
            setup_ms: 0,
            connections_opened: 0,
            connections_refused: 0,
            refused_connections: BTreeMap::new(),
            closed_by_broker: 0,
            open_at_end: 0,
            closed_after_ms_min: None,
            closed_after_ms_max: None,
            sent_what: o.sent_what(),
            sent: 0,
            confirmed: 0,
            refused: 0,
            answers: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// One line for the human summary.
    pub fn brief(&self) -> String {
        let mut s = String::new();
        if let Some(e) = &self.error {
            s.push_str(&format!("ERROR {e}; "));
        }
        if self.connections_opened + self.connections_refused > 0 {
            s.push_str(&format!(
                "{} connections opened, {} refused, {} closed by the broker{}, {} open at the end; ",
                self.connections_opened,
                self.connections_refused,
                self.closed_by_broker,
                match (self.closed_after_ms_min, self.closed_after_ms_max) {
                    (Some(a), Some(b)) => format!(" (after {:.1}–{:.1} s)", a as f64 / 1e3, b as f64 / 1e3),
                    _ => String::new(),
                },
                self.open_at_end
            ));
        }
        if self.sent > 0 {
            s.push_str(&format!(
                "{} {}, {} confirmed, {} refused; ",
                self.sent, self.sent_what, self.confirmed, self.refused
            ));
        }
        s.trim_end_matches("; ").to_string()
    }
}

/// The outcome, shared by an offender's tasks.
type Tally = Arc<Mutex<OffenderOutcome>>;

fn tally<R>(t: &Tally, f: impl FnOnce(&mut OffenderOutcome) -> R) -> R {
    f(&mut t.lock().unwrap_or_else(|e| e.into_inner()))
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_default() += 1;
}

/// Counts a connection the broker closed `opened_ns` after it opened.
fn closed(t: &Tally, opened_ns: u64) {
    let ms = now_ns().saturating_sub(opened_ns) / 1_000_000;
    tally(t, |o| {
        o.closed_by_broker += 1;
        o.closed_after_ms_min = Some(o.closed_after_ms_min.map_or(ms, |m| m.min(ms)));
        o.closed_after_ms_max = Some(o.closed_after_ms_max.map_or(ms, |m| m.max(ms)));
    });
}

/// The name under which a frame from the broker is counted.
pub fn answer_name(frame: &Frame) -> String {
    match frame {
        Frame::Rejected(r) => format!("Rejected {:?} ({})", r.reason, r.limit.name),
        Frame::Error(e) => format!("Error {:?}", e.code),
        Frame::GoingAway(g) => format!("GoingAway {:?}", g.reason),
        other => other.name().to_string(),
    }
}

/// Counts one frame from the broker; returns whether it answered a publish.
fn count_answer(t: &Tally, frame: &Frame) -> bool {
    let publish_answer = matches!(frame, Frame::PublishOk(_) | Frame::Rejected(_))
        || matches!(frame, Frame::Error(e) if e.req != 0);
    tally(t, |o| {
        match frame {
            Frame::PublishOk(_) => o.confirmed += 1,
            Frame::Rejected(_) => o.refused += 1,
            _ => {}
        }
        bump(&mut o.answers, answer_name(frame));
    });
    publish_answer
}

/// How long a connect, or the broker's `HelloOk`, may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an offender may take to be in place.
pub const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// How long a stalled write of a raw offender may take before it gives the connection up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One raw protocol connection after `Hello`.
struct RawConn {
    read: FramedRead<OwnedReadHalf, WeirCodec>,
    write: OwnedWriteHalf,
    /// When `HelloOk` arrived, on the [`now_ns`] clock.
    opened_ns: u64,
}

/// Encodes one frame (with the largest frame limit: offenders send what the broker refuses).
pub fn encode(frame: Frame) -> Bytes {
    let mut buf = BytesMut::new();
    WeirCodec::new(MAX_FRAME_BYTES_CEILING)
        .encode(frame, &mut buf)
        .expect("offender frames are below the codec's ceiling");
    buf.freeze()
}

/// Connects (from `source` when given), sends `Hello` and waits for `HelloOk`; the error names
/// what happened instead.
async fn open_raw(
    server: SocketAddr,
    source: Option<IpAddr>,
    token: Option<String>,
) -> Result<RawConn, String> {
    let connecting = async {
        match source {
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(server).await
            }
            None => TcpStream::connect(server).await,
        }
    };
    let stream = match tokio::time::timeout(OPEN_TIMEOUT, connecting).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect: {}", e.kind())),
        Err(_) => return Err("connect: timed out".into()),
    };
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = FramedRead::new(read, WeirCodec::new(MAX_FRAME_BYTES_CEILING));
    let hello = encode(Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        token,
    }));
    if write.write_all(&hello).await.is_err() {
        return Err("closed before HelloOk".into());
    }
    match tokio::time::timeout(OPEN_TIMEOUT, read.next()).await {
        Ok(Some(Ok(Frame::HelloOk(_)))) => Ok(RawConn {
            read,
            write,
            opened_ns: now_ns(),
        }),
        Ok(Some(Ok(other))) => Err(answer_name(&other)),
        Ok(Some(Err(e))) => Err(format!("bad frame before HelloOk: {e}")),
        Ok(None) => Err("closed before HelloOk".into()),
        Err(_) => Err("no HelloOk within 10 s".into()),
    }
}

/// [`open_raw`], counting the attempt.
async fn open_counted(
    t: &Tally,
    server: SocketAddr,
    source: Option<IpAddr>,
    token: Option<String>,
) -> Option<RawConn> {
    match open_raw(server, source, token).await {
        Ok(c) => {
            tally(t, |o| o.connections_opened += 1);
            Some(c)
        }
        Err(why) => {
            tally(t, |o| {
                o.connections_refused += 1;
                bump(&mut o.refused_connections, why);
            });
            None
        }
    }
}

/// Waits until `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Sleeps for `d` unless told to stop first; true when told to stop.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stopped(stop) => true,
    }
}

/// Everything an offender needs.
pub struct Ctx {
    pub offender: Offender,
    /// The broker's address as given (for the client library).
    pub server: String,
    /// The broker's address, resolved (for raw connections).
    pub addr: SocketAddr,
    pub options: ClientOptions,
    /// Where the topics it creates are recorded for removal.
    pub created: Created,
    pub config: OffenderConfig,
}

impl Ctx {
    fn topic(&self, what: &str) -> String {
        format!(
            "{}-{what}-{:012x}",
            self.config.topic_prefix,
            self.config.run_id & 0xffff_ffff_ffff
        )
    }

    fn token(&self) -> Option<String> {
        self.options.token.clone()
    }
}

/// Runs the offender of `ctx` on a runtime of its own, on a thread of its own: `ready` fires
/// once it is in place (or is dropped when it could not be), it runs until `stop` turns true,
/// then closes its connections and sends its outcome on the returned channel.
pub fn spawn(
    ctx: Ctx,
    ready: oneshot::Sender<()>,
    stop: watch::Receiver<bool>,
) -> oneshot::Receiver<OffenderOutcome> {
    let (tx, rx) = oneshot::channel();
    let offender = ctx.offender;
    let spawned = std::thread::Builder::new()
        .name(format!("offender-{}", offender.name()))
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run(ctx, ready, stop)),
                Err(e) => {
                    let mut o = OffenderOutcome::empty(offender);
                    o.error = Some(format!("cannot start its runtime: {e}"));
                    o
                }
            };
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the offender's thread: {e}");
    }
    rx
}

async fn run(ctx: Ctx, ready: oneshot::Sender<()>, stop: watch::Receiver<bool>) -> OffenderOutcome {
    let t: Tally = Arc::new(Mutex::new(OffenderOutcome::empty(ctx.offender)));
    let start = now_ns();
    let ready = {
        let t = t.clone();
        move || {
            tally(&t, |o| {
                o.setup_ms = now_ns().saturating_sub(start) / 1_000_000
            });
            let _ = ready.send(());
        }
    };
    let result = match ctx.offender {
        Offender::None | Offender::All => {
            ready();
            let mut stop = stop;
            stopped(&mut stop).await;
            Ok(())
        }
        Offender::Slowloris => slowloris(&ctx, &t, ready, stop).await,
        Offender::NonReader => non_reader(&ctx, &t, ready, stop).await,
        Offender::HeaderBomb => header_bomb(&ctx, &t, ready, stop).await,
        Offender::Flood => flood(&ctx, &t, ready, stop).await,
        Offender::IdleSwarm => idle_swarm(&ctx, &t, ready, stop).await,
    };
    if let Err(e) = result {
        tally(&t, |o| o.error = Some(format!("{e:#}")));
    }
    tally(&t, |o| o.clone())
}

/// Creates `name` with `spec`'s bounds, recording it for deletion.
async fn create_topic(ctx: &Ctx, t: &Tally, spec: TopicSpec) -> anyhow::Result<()> {
    let admin = connect(&ctx.server, &ctx.options).await?;
    let name = spec.name.clone();
    ctx.created.add(&name)?;
    tokio::time::timeout(OPEN_TIMEOUT, admin.create_topic(spec))
        .await
        .map_err(|_| anyhow::anyhow!("creating topic {name} took more than {OPEN_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("creating topic {name}: {e}"))?;
    tally(t, |o| o.topics.push(name));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// slowloris

/// The bytes a slowloris connection sends after `Hello`: a length prefix announcing a frame of
/// `frame_bytes`, then the start of a real `Publish` of that size (header, then payload zeros,
/// never reached at one byte per second).
pub fn slowloris_bytes(topic: &str, frame_bytes: u32) -> Vec<u8> {
    let frame = encode(Frame::Publish(Publish {
        producer: None,
        id: 1,
        topic: topic.into(),
        headers: Vec::new(),
        payload: Bytes::new(),
    }));
    let mut bytes = frame_bytes.to_be_bytes().to_vec();
    bytes.extend_from_slice(&frame[4..]);
    bytes
}

async fn slowloris(
    ctx: &Ctx,
    t: &Tally,
    ready: impl FnOnce(),
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The frame limit the broker announces is its max_frame_bytes; ask once.
    let limits = connect(&ctx.server, &ctx.options).await?.limits().clone();
    let drip = Arc::new(slowloris_bytes(
        &ctx.topic("slowloris"),
        limits.max_frame_bytes,
    ));
    let opened: Vec<Option<RawConn>> = futures::future::join_all(
        (0..ctx.config.slowloris_conns).map(|_| open_counted(t, ctx.addr, None, ctx.token())),
    )
    .await;
    ready();
    let mut slots = JoinSet::new();
    for first in opened {
        let (t, drip, stop, addr, token) =
            (t.clone(), drip.clone(), stop.clone(), ctx.addr, ctx.token());
        slots.spawn(async move { slowloris_slot(first, t, drip, stop, addr, token).await });
    }
    while slots.join_next().await.is_some() {}
    Ok(())
}

/// One slowloris connection, opened again whenever the broker closes it, until `stop`.
async fn slowloris_slot(
    mut conn: Option<RawConn>,
    t: Tally,
    drip: Arc<Vec<u8>>,
    mut stop: watch::Receiver<bool>,
    addr: SocketAddr,
    token: Option<String>,
) {
    loop {
        let Some(mut c) = conn.take() else {
            // Refused: try again a second later, as an attacker would.
            if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                return;
            }
            conn = open_counted(&t, addr, None, token.clone()).await;
            continue;
        };
        // The length prefix at once, then one byte per second.
        let mut sent = 4;
        if c.write.write_all(&drip[..4]).await.is_err() {
            closed(&t, c.opened_ns);
            continue;
        }
        tally(&t, |o| o.sent += 4);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let broker_closed = loop {
            tokio::select! {
                _ = stopped(&mut stop) => break false,
                frame = c.read.next() => match frame {
                    Some(Ok(f)) => {
                        count_answer(&t, &f);
                    }
                    Some(Err(_)) | None => break true,
                },
                _ = ticker.tick() => {
                    let Some(byte) = drip.get(sent) else { continue };
                    match tokio::time::timeout(WRITE_TIMEOUT, c.write.write_all(&[*byte])).await {
                        Ok(Ok(())) => {
                            sent += 1;
                            tally(&t, |o| o.sent += 1);
                        }
                        _ => break true,
                    }
                }
            }
        };
        if broker_closed {
            closed(&t, c.opened_ns);
            if *stop.borrow() {
                return;
            }
        } else {
            tally(&t, |o| o.open_at_end += 1);
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// non-reader

/// Subscriptions of the non-reader (the broker's default `max_subscriptions`).
const NON_READER_SUBS: u64 = 16;
/// Credit of each (the broker's default `max_credit`).
const NON_READER_CREDIT: u32 = 1024;
/// Payload of each message its producer publishes.
const NON_READER_MSG_BYTES: usize = 256 * 1024;
/// How long it reads at the end to learn whether the broker closed it.
const NON_READER_FINAL_READ: Duration = Duration::from_secs(1);

async fn non_reader(
    ctx: &Ctx,
    t: &Tally,
    ready: impl FnOnce(),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topic = ctx.topic("non-reader");
    create_topic(
        ctx,
        t,
        TopicSpec {
            name: topic.clone(),
            ..TopicSpec::default()
        },
    )
    .await?;
    let Some(mut c) = open_counted(t, ctx.addr, None, ctx.token()).await else {
        anyhow::bail!("the non-reader could not connect");
    };
    let mut subscribe = BytesMut::new();
    for sub in 1..=NON_READER_SUBS {
        subscribe.extend_from_slice(&encode(Frame::Subscribe(Subscribe {
            sub,
            topic: topic.clone(),
            group: format!("non-reader-{sub}"),
            credit: NON_READER_CREDIT,
            group_spec: GroupSpec::default(),
        })));
    }
    c.write.write_all(&subscribe).await?;
    let mut subscribed = 0;
    for _ in 0..NON_READER_SUBS {
        match tokio::time::timeout(OPEN_TIMEOUT, c.read.next()).await {
            Ok(Some(Ok(f))) => {
                subscribed += u64::from(matches!(f, Frame::Subscribed(_)));
                count_answer(t, &f);
            }
            _ => anyhow::bail!("the non-reader's subscriptions were not answered"),
        }
    }
    tally(t, |o| {
        o.notes.push(format!(
            "{subscribed} of {NON_READER_SUBS} subscriptions open, credit {NON_READER_CREDIT} each, one group each"
        ))
    });

    // Fill the topic, then stop reading: every delivery from here on waits for the socket.
    let producer = connect(&ctx.server, &ctx.options).await?;
    let publisher = producer.publisher_with_window(16);
    let body = Bytes::from(vec![0x4e; NON_READER_MSG_BYTES]);
    let mut confirms = FuturesUnordered::new();
    for _ in 0..ctx.config.non_reader_msgs {
        match publisher.publish(&topic, body.clone()).await {
            Ok(confirm) => {
                tally(t, |o| o.sent += 1);
                confirms.push(confirm);
            }
            Err(e) => {
                tally(t, |o| o.notes.push(format!("its producer stopped: {e}")));
                break;
            }
        }
        while let Some(Some(r)) = futures::FutureExt::now_or_never(confirms.next()) {
            count_publish(t, r);
        }
    }
    let fill_end = tokio::time::Instant::now() + SETUP_LIMIT;
    while let Ok(Some(r)) = tokio::time::timeout_at(fill_end, confirms.next()).await {
        count_publish(t, r);
    }
    drop((publisher, producer));
    ready();
    stopped(&mut stop).await;

    // Read what waits, for at most a second, to learn whether the broker closed it.
    let mut deliveries = 0u64;
    let until = tokio::time::Instant::now() + NON_READER_FINAL_READ;
    let broker_closed = loop {
        match tokio::time::timeout_at(until, c.read.next()).await {
            Ok(Some(Ok(Frame::Deliver(_)))) => deliveries += 1,
            Ok(Some(Ok(f))) => {
                count_answer(t, &f);
            }
            Ok(Some(Err(_)) | None) => break true,
            Err(_) => break false,
        }
    };
    tally(t, |o| {
        o.answers
            .insert("Deliver (read at the end)".into(), deliveries);
    });
    if broker_closed {
        // Seen only now, since it read nothing before: no time to the close.
        tally(t, |o| {
            o.closed_by_broker += 1;
            o.notes
                .push("closed by the broker (seen at the end: it read nothing before)".into());
        });
    } else {
        tally(t, |o| o.open_at_end += 1);
    }
    Ok(())
}

/// Counts the outcome of a publish made through the client library.
fn count_publish(t: &Tally, r: Result<u64, PublishError>) {
    tally(t, |o| match r {
        Ok(_) => {
            o.confirmed += 1;
            bump(&mut o.answers, "PublishOk".into());
        }
        Err(PublishError::Rejected { reason, limit, .. }) => {
            o.refused += 1;
            bump(
                &mut o.answers,
                format!("Rejected {reason:?} ({})", limit.name),
            );
        }
        Err(PublishError::Broker { code, .. }) => bump(&mut o.answers, format!("Error {code:?}")),
        Err(e) => bump(&mut o.answers, format!("failed: {e}")),
    });
}

// ---------------------------------------------------------------------------------------------
// header-bomb

/// Unanswered publishes the header bomb keeps on its connection.
const BOMB_WINDOW: usize = 64;
/// Publish ids at or above this take nine bytes in a header (bincode's varint: the marker 253,
/// then the u64 little-endian), so a template's id can be patched in place.
const BOMB_ID_BASE: u64 = 1 << 32;
/// Where the id's eight bytes start in an encoded publish: length (4), header length (4),
/// variant (1), varint marker (1).
const BOMB_ID_AT: usize = 10;

/// The header bomb's three publishes, encoded with id [`BOMB_ID_BASE`]: 65 headers, one header of
/// 3 MiB, 1 000 empty headers — each with a 16-byte payload.
pub fn bomb_templates(topic: &str) -> Vec<(&'static str, Bytes)> {
    let publish = |headers: Vec<(String, String)>| {
        encode(Frame::Publish(Publish {
            producer: None,
            id: BOMB_ID_BASE,
            topic: topic.into(),
            headers,
            payload: Bytes::from_static(&[0x42; 16]),
        }))
    };
    vec![
        (
            "65 headers",
            publish((0..65).map(|i| (format!("h{i}"), "v".into())).collect()),
        ),
        (
            "one 3 MiB header",
            publish(vec![("h".into(), "x".repeat(3 * 1024 * 1024))]),
        ),
        (
            "1000 empty headers",
            publish(vec![(String::new(), String::new()); 1000]),
        ),
    ]
}

/// The first bytes of `template` with its id replaced by `id` (at least [`BOMB_ID_BASE`]).
pub fn bomb_head(template: &[u8], id: u64) -> [u8; BOMB_ID_AT + 8] {
    let mut head = [0u8; BOMB_ID_AT + 8];
    head.copy_from_slice(&template[..BOMB_ID_AT + 8]);
    head[BOMB_ID_AT..].copy_from_slice(&id.to_le_bytes());
    head
}

async fn header_bomb(
    ctx: &Ctx,
    t: &Tally,
    ready: impl FnOnce(),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topic = ctx.topic("header-bomb");
    create_topic(
        ctx,
        t,
        TopicSpec {
            name: topic.clone(),
            ..TopicSpec::default()
        },
    )
    .await?;
    let templates = bomb_templates(&topic);
    tally(t, |o| {
        o.notes.push(format!(
            "cycles {} ({} / {} / {} bytes)",
            templates
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            templates[0].1.len(),
            templates[1].1.len(),
            templates[2].1.len()
        ))
    });
    ready();
    let mut next_id = BOMB_ID_BASE;
    let mut kind = 0usize;
    while !*stop.borrow() {
        let Some(c) = open_counted(t, ctx.addr, None, ctx.token()).await else {
            if sleep_or_stop(Duration::from_millis(200), &mut stop).await {
                break;
            }
            continue;
        };
        let RawConn {
            mut read,
            mut write,
            opened_ns,
        } = c;
        let window = Arc::new(Semaphore::new(BOMB_WINDOW));
        // The reader: counts answers, gives a window slot back for each publish answered, and
        // closes the window when the broker closes the connection.
        let reader = {
            let (t, window, mut stop) = (t.clone(), window.clone(), stop.clone());
            tokio::spawn(async move {
                let broker_closed = loop {
                    tokio::select! {
                        _ = stopped(&mut stop) => break false,
                        frame = read.next() => match frame {
                            Some(Ok(f)) => {
                                if count_answer(&t, &f) {
                                    window.add_permits(1);
                                }
                            }
                            Some(Err(_)) | None => break true,
                        },
                    }
                };
                window.close();
                broker_closed
            })
        };
        let mut write_failed = false;
        loop {
            let permit = tokio::select! {
                _ = stopped(&mut stop) => break,
                p = window.acquire() => p,
            };
            let Ok(permit) = permit else { break };
            permit.forget();
            let template = &templates[kind].1;
            kind = (kind + 1) % templates.len();
            let head = bomb_head(template, next_id);
            next_id += 1;
            let sending = async {
                write.write_all(&head).await?;
                write.write_all(&template[head.len()..]).await
            };
            tokio::select! {
                _ = stopped(&mut stop) => break,
                r = tokio::time::timeout(WRITE_TIMEOUT, sending) => match r {
                    Ok(Ok(())) => tally(t, |o| o.sent += 1),
                    _ => {
                        write_failed = true;
                        break;
                    }
                },
            }
        }
        drop(write);
        // The reader ends on `stop`, or when the broker closes; after a failed write, give it
        // a moment to read why, then stop it.
        let reader_saw_close = matches!(
            tokio::time::timeout(Duration::from_secs(2), reader).await,
            Ok(Ok(true))
        );
        if reader_saw_close || write_failed {
            closed(t, opened_ns);
        } else {
            tally(t, |o| o.open_at_end += 1);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// flood

/// Payload of each flood publish.
const FLOOD_MSG_BYTES: usize = 1024;
/// How long the flood waits for its outstanding confirms once told to stop.
const FLOOD_GRACE: Duration = Duration::from_secs(5);

async fn flood(
    ctx: &Ctx,
    t: &Tally,
    ready: impl FnOnce(),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topic = ctx.topic("flood");
    create_topic(
        ctx,
        t,
        TopicSpec {
            name: topic.clone(),
            overflow: Some(ctx.config.flood_overflow),
            ..TopicSpec::default()
        },
    )
    .await?;
    let client = connect(&ctx.server, &ctx.options).await?;
    tally(t, |o| o.connections_opened += 1);
    let publisher = client.publisher_with_window(ctx.config.flood_window);
    tally(t, |o| {
        o.notes.push(format!(
            "window {}, overflow {}",
            publisher.window(),
            ctx.config.flood_overflow.as_str()
        ))
    });
    let body = Bytes::from(vec![0x46; FLOOD_MSG_BYTES]);
    let mut inflight = FuturesUnordered::new();
    ready();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(r) = inflight.next(), if !inflight.is_empty() => count_publish(t, r),
            sent = publisher.publish(&topic, body.clone()) => match sent {
                Ok(confirm) => {
                    tally(t, |o| o.sent += 1);
                    inflight.push(confirm);
                }
                Err(e) => {
                    tally(t, |o| {
                        o.closed_by_broker += 1;
                        o.notes.push(format!("its connection ended: {e}"));
                    });
                    break;
                }
            },
        }
    }
    let end = tokio::time::Instant::now() + FLOOD_GRACE;
    while let Ok(Some(r)) = tokio::time::timeout_at(end, inflight.next()).await {
        count_publish(t, r);
    }
    if !client.is_closed() {
        tally(t, |o| o.open_at_end += 1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// idle-swarm

/// Connection attempts of the swarm in progress at once.
const SWARM_PARALLEL: usize = 64;

/// The source addresses the swarm binds to, when the broker is on loopback: spreading the
/// connections over several addresses is what lets one host open more than the per-address
/// cap. Elsewhere the system picks the source.
fn swarm_sources(addr: SocketAddr, sources: &[IpAddr]) -> Vec<Option<IpAddr>> {
    let usable: Vec<Option<IpAddr>> = sources
        .iter()
        .filter(|s| addr.ip().is_loopback() && s.is_loopback() && s.is_ipv4() == addr.is_ipv4())
        .map(|s| Some(*s))
        .collect();
    if usable.is_empty() {
        vec![None]
    } else {
        usable
    }
}

async fn idle_swarm(
    ctx: &Ctx,
    t: &Tally,
    ready: impl FnOnce(),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let n = ctx.config.swarm_conns;
    if let Some(warning) = raise_nofile((n + 256) as libc::rlim_t) {
        tally(t, |o| o.notes.push(warning));
    }
    let sources = swarm_sources(ctx.addr, &ctx.config.swarm_sources);
    tally(t, |o| {
        o.notes.push(format!(
            "sources: {}",
            sources
                .iter()
                .map(|s| s.map_or("(system)".to_string(), |ip| ip.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    });
    let mut attempts = futures::stream::iter(0..n)
        .map(|i| {
            tally(t, |o| o.sent += 1);
            open_counted(t, ctx.addr, sources[i % sources.len()], ctx.token())
        })
        .buffer_unordered(SWARM_PARALLEL);
    let mut conns = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + SETUP_LIMIT;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            next = tokio::time::timeout_at(deadline, attempts.next()) => match next {
                Ok(Some(Some(c))) => conns.push(c),
                Ok(Some(None)) => {}
                Ok(None) => break,
                Err(_) => {
                    tally(t, |o| o.notes.push(format!("stopped opening after {SETUP_LIMIT:?}")));
                    break;
                }
            },
        }
    }
    drop(attempts);
    ready();
    // Hold each connection idle, watching for the broker closing it.
    let mut held = JoinSet::new();
    for c in conns {
        let (t, mut stop) = (t.clone(), stop.clone());
        held.spawn(async move {
            let RawConn {
                mut read,
                write,
                opened_ns,
            } = c;
            let broker_closed = loop {
                tokio::select! {
                    _ = stopped(&mut stop) => break false,
                    frame = read.next() => match frame {
                        Some(Ok(f)) => {
                            count_answer(&t, &f);
                        }
                        Some(Err(_)) | None => break true,
                    },
                }
            };
            drop(write);
            if broker_closed {
                closed(&t, opened_ns);
            } else {
                tally(&t, |o| o.open_at_end += 1);
            }
        });
    }
    while held.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Decoder;

    use super::*;

    fn decode(bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        WeirCodec::new(MAX_FRAME_BYTES_CEILING)
            .decode(&mut buf)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn bomb_ids_are_patched_in_place() {
        let templates = bomb_templates("t");
        assert_eq!(templates.len(), 3);
        for (name, template) in &templates {
            for id in [BOMB_ID_BASE, BOMB_ID_BASE + 1, BOMB_ID_BASE + 123_456] {
                let mut frame = bomb_head(template, id).to_vec();
                frame.extend_from_slice(&template[BOMB_ID_AT + 8..]);
                match decode(&frame) {
                    Frame::Publish(p) => {
                        assert_eq!(p.id, id, "{name}");
                        assert_eq!(p.payload.len(), 16);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let headers = |i: usize| match decode(&templates[i].1) {
            Frame::Publish(p) => p.headers,
            other => panic!("{other:?}"),
        };
        assert_eq!(headers(0).len(), 65);
        assert_eq!(headers(1)[0].1.len(), 3 * 1024 * 1024);
        assert_eq!(headers(2).len(), 1000);
    }

    #[test]
    fn slowloris_announces_the_frame_limit_and_drips_a_real_publish() {
        let bytes = slowloris_bytes("bench-noisy-slowloris-x", 4 * 1024 * 1024);
        assert_eq!(&bytes[..4], &(4u32 * 1024 * 1024).to_be_bytes());
        // What follows is the body of a publish: header length, then a Publish header.
        let hdr_len = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 8 + hdr_len);
        assert_eq!(bytes[8], 6, "the Publish variant");
    }

    #[test]
    fn swarm_binds_loopback_sources_only_for_a_loopback_broker() {
        let sources: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let local: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(
            swarm_sources(local, &sources),
            vec![Some(sources[0]), Some(sources[1])]
        );
        let remote: SocketAddr = "10.0.0.1:7070".parse().unwrap();
        assert_eq!(swarm_sources(remote, &sources), vec![None]);
        let v6: SocketAddr = "[::1]:7070".parse().unwrap();
        assert_eq!(swarm_sources(v6, &sources), vec![None]);
    }

    #[test]
    fn all_runs_the_baseline_first() {
        let all = Offender::All.expand();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], Offender::None);
        assert_eq!(Offender::Flood.expand(), vec![Offender::Flood]);
        assert_eq!(Offender::NonReader.name(), "non-reader");
    }
}
