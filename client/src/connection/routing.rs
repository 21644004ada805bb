//! [`Router`]: what waits for an answer on the live connection, by id — publishes, admin
//! requests, pings, subscriptions — and where each frame from the broker goes. It turns commands
//! into frames (into the [`Outbox`]), answers their callers, and, when the connection is lost,
//! hands back what must go again on the next one ([`Router::take_unanswered`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use weir_protocol::{
    BatchMessage, CodecError, Deliver, ErrorCode, Frame, GoingAway, ProducerStamp, Publish,
    PublishBatch, RejectReason, Unsubscribe, MAX_BATCH_HEADERS, MAX_BATCH_MESSAGES,
};

use super::outbox::{Outbox, TraceFrame};
use super::shared::{AdminRequest, Command, FIRST_SUB_ID};
use super::subscriptions::{Delivered, SubEntry, SubState, SubscribeArgs};
use crate::error::{ClientError, PublishError};
use crate::message::Message;

/// A publish sent and not yet answered.
struct PendingPublish {
    /// Kept until the answer, to be resent if the connection is lost first.
    message: Message,
    reply: oneshot::Sender<Result<u64, PublishError>>,
    permit: OwnedSemaphorePermit,
}

/// An admin request sent and not yet answered.
struct PendingRequest {
    /// Kept until the answer, to be resent if an idle close comes first.
    request: AdminRequest,
    reply: oneshot::Sender<Result<Frame, ClientError>>,
}

/// Something to send again on the next connection, before any new command.
pub(crate) enum Replay {
    /// A command. `sent`: it went out on the lost connection and was not answered, so the broker
    /// may have acted on it (a publish may be stored); otherwise it was never read.
    Command { cmd: Command, sent: bool },
    /// A subscription to open again, with its renewed credit.
    Resubscribe(SubEntry),
}

/// The pending operations of the live connection and the routing of the broker's frames.
pub(crate) struct Router {
    /// The next publish / request / ping id (one counter for all three).
    next_id: u64,
    publishes: HashMap<u64, PendingPublish>,
    requests: HashMap<u64, PendingRequest>,
    subs: HashMap<u64, SubEntry>,
    pings: HashMap<u64, (Instant, oneshot::Sender<Result<Duration, ClientError>>)>,
    /// Publishes the broker refused with `ShuttingDown` (not stored), held for the next
    /// connection when the client reconnects: at most the publish windows, as each keeps its
    /// slot.
    held: Vec<(u64, PendingPublish)>,
    /// Whether to hold those (reconnecting is on) rather than answer the refusal.
    hold_shutting_down: bool,
    /// The broker said it closes the connection, and why.
    pub going_away: Option<GoingAway>,
    /// How publishes are coalesced on this connection.
    batching: Batching,
    /// Publishes being coalesced into one `PublishBatch` (already in `publishes`).
    open: Option<OpenBatch>,
}

/// How publishes are coalesced into `PublishBatch` frames (protocol v5).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// The connection speaks v5 and batches are wanted (`batch_max_messages` > 1).
    pub enabled: bool,
    /// Most messages per batch.
    pub max_messages: usize,
    /// Most bytes per batch (payloads and headers, within the frame limit).
    pub max_bytes: usize,
}

impl Batching {
    /// No batches: every publish in its own frame.
    pub fn off() -> Batching {
        Batching {
            enabled: false,
            max_messages: 1,
            max_bytes: 0,
        }
    }

    /// Batches per `opts` on a connection of protocol `version` whose broker takes frames of
    /// `max_frame_bytes`.
    pub fn new(opts: &crate::ClientOptions, version: u16, max_frame_bytes: usize) -> Batching {
        let max_messages = opts.batch_max_messages.clamp(1, MAX_BATCH_MESSAGES);
        Batching {
            enabled: version >= 5 && max_messages > 1,
            max_messages,
            max_bytes: opts
                .batch_max_bytes
                .min(max_frame_bytes.saturating_sub(BATCH_OVERHEAD)),
        }
    }
}

/// Bytes of a `PublishBatch` beyond its topic and entries: prefixes, variant, id and counts,
/// at their largest.
const BATCH_OVERHEAD: usize = 4 + 4 + 1 + 9 + 5 + 5;

/// Publishes being coalesced: ids `first_id..` to one topic, from one producer whose sequence
/// they continue (or all without a stamp).
struct OpenBatch {
    first_id: u64,
    topic: String,
    /// The first message's stamp: message `i` is the producer's `seq + i`.
    producer: Option<ProducerStamp>,
    messages: Vec<BatchMessage>,
    /// An upper bound of the entries' encoded size.
    bytes: usize,
    headers: usize,
}

/// An upper bound of the bytes a message takes as an entry of a batch.
fn entry_bytes(message: &Message) -> usize {
    let headers: usize = message
        .headers
        .iter()
        .map(|(k, v)| 10 + k.len() + v.len())
        .sum();
    10 + headers + message.payload.len()
}

fn protocol(msg: impl Into<String>) -> ClientError {
    ClientError::Protocol(msg.into())
}

/// Answers a command that will not be sent: its caller gets `err`, a publish's confirm gets
/// `publish_err`, and an unsubscribe succeeds (nothing is subscribed).
pub(crate) fn refuse(cmd: Command, err: &ClientError, publish_err: PublishError) {
    match cmd {
        Command::Publish { reply, .. } => {
            let _ = reply.send(Err(publish_err));
        }
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Command::Subscribe { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Command::Unsubscribe { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
        }
        Command::Ping { reply } => {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

impl Router {
    /// Nothing pending. With `hold_shutting_down` (reconnecting is on), a publish refused with
    /// `ShuttingDown` is held and sent again on the next connection instead of failing.
    pub fn new(hold_shutting_down: bool) -> Router {
        Router {
            next_id: 1,
            publishes: HashMap::new(),
            requests: HashMap::new(),
            subs: HashMap::new(),
            pings: HashMap::new(),
            held: Vec::new(),
            hold_shutting_down,
            going_away: None,
            batching: Batching::off(),
            open: None,
        }
    }

    /// Whether publishes wait to be coalesced.
    pub fn has_open_batch(&self) -> bool {
        self.open.is_some()
    }

    /// How publishes are coalesced from now on (set for each new connection).
    pub fn set_batching(&mut self, batching: Batching) {
        self.batching = batching;
    }

    /// Sends the publishes being coalesced, if any: one `PublishBatch`, or a `Publish` when
    /// there is one. Called before any other command's frame (ids stay consecutive) and when
    /// the connection task is about to write.
    pub fn flush_batch(&mut self, out: &mut Outbox) -> Result<(), ClientError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if open.messages.len() > 1 {
            let frame = Frame::PublishBatch(PublishBatch {
                producer: open.producer,
                first_id: open.first_id,
                topic: open.topic,
                messages: open.messages,
            });
            match out.encode(&frame) {
                Ok(()) => return Ok(()),
                // The estimate was wrong: each goes alone, and a too-large one is refused.
                Err(CodecError::FrameTooLarge { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let Frame::PublishBatch(batch) = frame else {
                unreachable!("built above")
            };
            for i in 0..batch.messages.len() as u64 {
                self.send_alone(batch.first_id + i, out)?;
            }
            return Ok(());
        }
        self.send_alone(open.first_id, out)
    }

    /// Encodes pending publish `id` in its own `Publish` frame; one too large for the frame
    /// limit is answered [`PublishError::TooLarge`] and forgotten.
    fn send_alone(&mut self, id: u64, out: &mut Outbox) -> Result<(), ClientError> {
        let Some(p) = self.publishes.get(&id) else {
            return Ok(());
        };
        let frame = Frame::Publish(Publish {
            producer: p.message.producer,
            id,
            topic: p.message.topic.clone(),
            headers: p.message.headers.clone(),
            payload: p.message.payload.clone(),
        });
        match out.encode(&frame) {
            Ok(()) => Ok(()),
            Err(CodecError::FrameTooLarge { len, max }) => {
                if let Some(p) = self.publishes.remove(&id) {
                    let _ = p.reply.send(Err(PublishError::TooLarge { len, max }));
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Adds a publish to the batch being coalesced, sending that batch first when the publish
    /// is to another topic or would take it past a bound, and sending it once full.
    fn coalesce(&mut self, pending: PendingPublish, out: &mut Outbox) -> Result<(), ClientError> {
        let size = entry_bytes(&pending.message);
        let headers = pending.message.headers.len();
        let b = self.batching;
        let room = b.max_bytes.saturating_sub(pending.message.topic.len());
        let stamp = pending.message.producer;
        let continues = |open: &OpenBatch| match (open.producer, stamp) {
            (None, None) => true,
            (Some(first), Some(next)) => {
                first.id == next.id
                    && first.seq.checked_add(open.messages.len() as u64) == Some(next.seq)
            }
            _ => false,
        };
        let fits = |open: &OpenBatch| {
            continues(open)
                && open.topic == pending.message.topic
                && open.messages.len() < b.max_messages
                && open.bytes + size <= room
                && open.headers + headers <= MAX_BATCH_HEADERS
        };
        if self.open.as_ref().is_some_and(|open| !fits(open)) {
            self.flush_batch(out)?;
        }
        let id = self.next_id();
        let message = BatchMessage::new(
            pending.message.headers.clone(),
            pending.message.payload.clone(),
        );
        let open = self.open.get_or_insert_with(|| OpenBatch {
            first_id: id,
            producer: stamp,
            topic: pending.message.topic.clone(),
            messages: Vec::with_capacity(b.max_messages.min(64)),
            bytes: 0,
            headers: 0,
        });
        open.messages.push(message);
        open.bytes += size;
        open.headers += headers;
        let full = open.messages.len() >= b.max_messages;
        self.publishes.insert(id, pending);
        if full || size > room {
            self.flush_batch(out)?;
        }
        Ok(())
    }

    /// Nothing is waiting on the broker (or for the next connection).
    pub fn idle(&self) -> bool {
        self.publishes.is_empty()
            && self.requests.is_empty()
            && self.pings.is_empty()
            && self.held.is_empty()
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends a command's frame and remembers what waits for its answer. A publish on a v5
    /// connection may wait to be coalesced with the next ones (see [`Router::flush_batch`]).
    pub fn on_command(&mut self, cmd: Command, out: &mut Outbox) -> Result<(), ClientError> {
        match cmd {
            Command::Publish {
                message,
                reply,
                permit,
            } if self.batching.enabled => {
                let pending = PendingPublish {
                    message,
                    reply,
                    permit,
                };
                self.coalesce(pending, out)
            }
            cmd => {
                self.flush_batch(out)?;
                self.send_command(cmd, out)
            }
        }
    }

    /// Sends a command's frame, each in its own, and remembers what waits for its answer.
    fn send_command(&mut self, cmd: Command, out: &mut Outbox) -> Result<(), ClientError> {
        match cmd {
            Command::Publish {
                message,
                reply,
                permit,
            } => {
                let id = self.next_id();
                let frame = Frame::Publish(Publish {
                    producer: message.producer,
                    id,
                    topic: message.topic.clone(),
                    headers: message.headers.clone(),
                    payload: message.payload.clone(),
                });
                match out.encode(&frame) {
                    Ok(()) => {
                        let pending = PendingPublish {
                            message,
                            reply,
                            permit,
                        };
                        self.publishes.insert(id, pending);
                    }
                    Err(CodecError::FrameTooLarge { len, max }) => {
                        let _ = reply.send(Err(PublishError::TooLarge { len, max }));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Command::Request { request, reply } => {
                let req = self.next_id();
                out.send(&request.clone().into_frame(req))?;
                self.requests.insert(req, PendingRequest { request, reply });
            }
            Command::Subscribe {
                shared,
                topic,
                group,
                credit,
                group_spec,
                tx,
                reply,
            } => {
                let args = SubscribeArgs {
                    topic,
                    group,
                    group_spec,
                };
                let order = self.next_id();
                let entry = SubEntry::opening(shared, order, args, credit, tx, reply);
                out.send(&entry.subscribe_frame())?;
                self.subs.insert(entry.shared.id, entry);
            }
            Command::Unsubscribe { sub, reply } => {
                let open = self.subs.get(&sub).map(|s| s.state != SubState::Closing);
                if open != Some(true) {
                    // Already gone (it failed, or the broker dropped it), or closing.
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                    return Ok(());
                }
                // Acks the app made before closing go out first, so those messages are not
                // redelivered; the credit they free is not: it would only fetch deliveries
                // that the unsubscribe hands back, each with an attempt spent.
                self.flush_sub(sub, Returns::AcksOnly, out)?;
                out.send(&Frame::Unsubscribe(Unsubscribe { sub }))?;
                if let Some(entry) = self.subs.get_mut(&sub) {
                    if let Ok(mut pacer) = entry.shared.pacer.lock() {
                        pacer.close();
                    }
                    entry.tx = None;
                    entry.state = SubState::Closing;
                    entry.close_reply = reply;
                    if let Some(open) = entry.open_reply.take() {
                        let _ = open.send(Err(ClientError::InvalidArgument(
                            "subscription closed while opening".into(),
                        )));
                    }
                }
            }
            Command::Ping { reply } => {
                let nonce = self.next_id();
                out.send(&Frame::Ping(nonce))?;
                self.pings.insert(nonce, (Instant::now(), reply));
            }
        }
        Ok(())
    }

    /// Opens a subscription again on a new connection (see [`SubEntry::renew`]).
    pub fn resubscribe(
        &mut self,
        mut entry: SubEntry,
        out: &mut Outbox,
    ) -> Result<(), ClientError> {
        self.flush_batch(out)?;
        entry.order = self.next_id();
        out.send(&entry.subscribe_frame())?;
        self.subs.insert(entry.shared.id, entry);
        Ok(())
    }

    /// Sends the pending acks (nacks, terms, progress) and credit of every subscription.
    pub fn flush_acks(&mut self, out: &mut Outbox) -> Result<(), ClientError> {
        let ids: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| s.is_live())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush_sub(id, Returns::AcksAndCredit, out)?;
        }
        Ok(())
    }

    /// Sends one subscription's pending batch: progress, acks, nacks and terms, then (unless
    /// `returns` is [`Returns::AcksOnly`]) the credit they free (see
    /// [`crate::pacing::Batch::into_frames`]).
    fn flush_sub(
        &mut self,
        sub: u64,
        returns: Returns,
        out: &mut Outbox,
    ) -> Result<(), ClientError> {
        let Some(entry) = self.subs.get_mut(&sub) else {
            return Ok(());
        };
        let batch = match entry.shared.pacer.lock() {
            Ok(mut pacer) => pacer.take(),
            Err(_) => None,
        };
        let Some(mut batch) = batch else {
            return Ok(());
        };
        if returns == Returns::AcksOnly {
            batch.credit = 0;
        }
        entry.broker_credit += batch.credit;
        for frame in batch.into_frames(sub, self.batching.enabled) {
            out.send(&frame)?;
        }
        Ok(())
    }

    /// Routes one frame from the broker. An error ends the connection.
    pub fn on_frame(&mut self, frame: Frame, out: &mut Outbox) -> Result<(), ClientError> {
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(frame = ?TraceFrame(&frame), "weir frame received");
        }
        match frame {
            Frame::PublishOk(ok) => {
                let p = self.publishes.remove(&ok.id).ok_or_else(|| {
                    protocol(format!("PublishOk for unknown publish id {}", ok.id))
                })?;
                let _ = p.reply.send(Ok(ok.seq));
            }
            Frame::Confirmed(c) => {
                for i in 0..u64::from(c.count) {
                    let id = c.first_id + i;
                    let p = self.publishes.remove(&id).ok_or_else(|| {
                        protocol(format!("Confirmed for unknown publish id {id}"))
                    })?;
                    let _ = p.reply.send(Ok(c.first_seq + i));
                }
            }
            Frame::Rejected(r) => {
                let refusal = || ClientError::Rejected {
                    reason: r.reason,
                    limit: r.limit.clone(),
                    retry_after_ms: r.retry_after_ms,
                };
                if let Some(p) = self.publishes.remove(&r.id) {
                    if self.hold_shutting_down && r.reason == RejectReason::ShuttingDown {
                        // Not stored: it goes again once the broker is back.
                        self.held.push((r.id, p));
                        return Ok(());
                    }
                    let _ = p.reply.send(Err(PublishError::Rejected {
                        reason: r.reason,
                        limit: r.limit,
                        retry_after_ms: r.retry_after_ms,
                        held_by: r.held_by,
                    }));
                } else if let Some(pending) = self.requests.remove(&r.id) {
                    let _ = pending.reply.send(Err(refusal()));
                } else if let Some(entry) = self.subs.get_mut(&r.id) {
                    if entry.state == SubState::Open {
                        entry.deliver_error(refusal());
                    } else {
                        let mut entry = self.subs.remove(&r.id).expect("present");
                        entry.end_with(refusal());
                    }
                } else if r.id == 0 {
                    return Err(ClientError::ConnectionRejected {
                        reason: r.reason,
                        limit: r.limit,
                        retry_after_ms: r.retry_after_ms,
                    });
                } else {
                    return Err(protocol(format!("Rejected for unknown id {}", r.id)));
                }
            }
            Frame::Error(e) => self.on_error(e)?,
            Frame::TopicCreated(ref t) => self.answer(t.req, frame)?,
            Frame::TopicList(ref t) => self.answer(t.req, frame)?,
            Frame::TopicDescription(ref t) => self.answer(t.req, frame)?,
            Frame::TopicDeleted(ref t) => self.answer(t.req, frame)?,
            Frame::TopicRepaired(ref t) => self.answer(t.req, frame)?,
            Frame::TopicUpdated(ref t) => self.answer(t.req, frame)?,
            Frame::GroupUpdated(ref g) => self.answer(g.req, frame)?,
            Frame::GroupDeleted(ref g) => self.answer(g.req, frame)?,
            Frame::Subscribed(s) => {
                let entry = self.subs.get_mut(&s.sub).ok_or_else(|| {
                    protocol(format!("Subscribed for unknown subscription {}", s.sub))
                })?;
                match entry.state {
                    SubState::Opening => {
                        entry.state = SubState::Open;
                        if let Some(reply) = entry.open_reply.take() {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    SubState::Closing => {}
                    SubState::Open => {
                        return Err(protocol(format!(
                            "second Subscribed for subscription {}",
                            s.sub
                        )))
                    }
                }
            }
            Frame::Unsubscribed(u) => {
                let mut entry = self.subs.remove(&u.sub).ok_or_else(|| {
                    protocol(format!("Unsubscribed for unknown subscription {}", u.sub))
                })?;
                if let Some(reply) = entry.close_reply.take() {
                    let _ = reply.send(Ok(()));
                }
                if entry.state != SubState::Closing {
                    entry.detached();
                }
            }
            Frame::Deliver(d) => {
                let sub = d.sub;
                let entry = self
                    .subs
                    .get_mut(&sub)
                    .ok_or_else(|| protocol(format!("Deliver for unknown subscription {sub}")))?;
                if entry.on_deliver(d) == Delivered::Unsubscribe {
                    out.send(&Frame::Unsubscribe(Unsubscribe { sub }))?;
                }
            }
            Frame::DeliverBatch(b) => {
                let sub = b.sub;
                let entry = self.subs.get_mut(&sub).ok_or_else(|| {
                    protocol(format!("DeliverBatch for unknown subscription {sub}"))
                })?;
                let mut unsubscribe = false;
                for d in b.messages {
                    let d = Deliver {
                        sub,
                        seq: d.seq,
                        attempt: d.attempt,
                        headers: d.headers,
                        payload: d.payload,
                    };
                    unsubscribe |= entry.on_deliver(d) == Delivered::Unsubscribe;
                }
                if unsubscribe {
                    out.send(&Frame::Unsubscribe(Unsubscribe { sub }))?;
                }
            }
            Frame::Gap(g) => {
                // A gap for a subscription already gone concerns nobody.
                if let Some(entry) = self.subs.get_mut(&g.sub) {
                    entry.on_gap(g);
                }
            }
            Frame::Ping(n) => out.send(&Frame::Pong(n))?,
            Frame::Pong(n) => {
                if let Some((sent, reply)) = self.pings.remove(&n) {
                    let _ = reply.send(Ok(sent.elapsed()));
                }
            }
            Frame::GoingAway(g) => {
                tracing::info!(reason = ?g.reason, message = %g.message, "weir broker going away");
                self.going_away = Some(g);
            }
            other => {
                return Err(protocol(format!(
                    "unexpected {} frame from the broker",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    /// Routes an admin answer to its request.
    fn answer(&mut self, req: u64, frame: Frame) -> Result<(), ClientError> {
        let pending = self
            .requests
            .remove(&req)
            .ok_or_else(|| protocol(format!("{} for unknown request id {req}", frame.name())))?;
        let _ = pending.reply.send(Ok(frame));
        Ok(())
    }

    fn on_error(&mut self, e: weir_protocol::Error) -> Result<(), ClientError> {
        let err = ClientError::Broker {
            code: e.code,
            message: e.message.clone(),
        };
        if e.req == 0 {
            return Err(err);
        }
        if let Some(p) = self.publishes.remove(&e.req) {
            let _ = p.reply.send(Err(PublishError::Broker {
                code: e.code,
                message: e.message,
            }));
        } else if let Some(pending) = self.requests.remove(&e.req) {
            let _ = pending.reply.send(Err(err));
        } else if let Some(entry) = self.subs.get_mut(&e.req) {
            match entry.state {
                // A refused subscribe, or a closing subscription the broker no longer knows:
                // either way it is gone.
                SubState::Opening | SubState::Closing => {
                    let mut entry = self.subs.remove(&e.req).expect("present");
                    if entry.state == SubState::Closing {
                        if let Some(reply) = entry.close_reply.take() {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    entry.end_with(err);
                }
                SubState::Open if e.code == ErrorCode::UnknownSubscription => {
                    let mut entry = self.subs.remove(&e.req).expect("present");
                    entry.end_with(err);
                }
                // An ack or credit problem: the subscription stays open; the app hears of it.
                SubState::Open => entry.deliver_error(err),
            }
        } else if e.req >= FIRST_SUB_ID {
            // About a subscription already forgotten here, e.g. the answer to the Unsubscribe
            // of a subscription whose Subscribe was refused: nothing waits for it.
            tracing::debug!(sub = e.req, code = ?e.code, message = %e.message, "weir error for a closed subscription");
        } else {
            return Err(protocol(format!(
                "Error {:?} for unknown id {}: {}",
                e.code, e.req, e.message
            )));
        }
        Ok(())
    }

    /// The connection is lost: takes back, in the order it was sent, what the next connection
    /// must send again, and answers the rest.
    ///
    /// - Publishes unanswered go again (keeping their window slots). After an idle close the
    ///   broker read none of them (it closes as idle only after answering every frame it read);
    ///   after any other loss it may have stored some whose confirm was lost (`sent`). Those
    ///   it refused with `ShuttingDown` go again too (never stored).
    /// - Subscriptions open (or opening) open again with their renewed credit
    ///   ([`SubEntry::renew`]); those closing are closed (the broker dropped them with the
    ///   connection). After an idle close an open subscription cannot exist (the broker would
    ///   not have been idle); should one, it ends with `end`.
    /// - Admin requests and pings go again after an idle close (never read); after another loss
    ///   they fail with `end` (the broker may have acted on a request; its caller decides).
    pub fn take_unanswered(&mut self, end: &ClientError, idle_close: bool) -> Vec<Replay> {
        // Publishes being coalesced were never written: they go again with the others.
        self.open = None;
        let mut unanswered: Vec<(u64, Replay)> = Vec::new();
        for (id, p) in self.publishes.drain() {
            let cmd = Command::Publish {
                message: p.message,
                reply: p.reply,
                permit: p.permit,
            };
            let sent = !idle_close;
            unanswered.push((id, Replay::Command { cmd, sent }));
        }
        for (id, p) in self.held.drain(..) {
            let cmd = Command::Publish {
                message: p.message,
                reply: p.reply,
                permit: p.permit,
            };
            unanswered.push((id, Replay::Command { cmd, sent: false }));
        }
        for (id, r) in self.requests.drain() {
            if idle_close {
                let cmd = Command::Request {
                    request: r.request,
                    reply: r.reply,
                };
                unanswered.push((id, Replay::Command { cmd, sent: false }));
            } else {
                let _ = r.reply.send(Err(end.clone()));
            }
        }
        for (id, (_, reply)) in self.pings.drain() {
            if idle_close {
                let cmd = Command::Ping { reply };
                unanswered.push((id, Replay::Command { cmd, sent: false }));
            } else {
                let _ = reply.send(Err(end.clone()));
            }
        }
        for (_, mut entry) in self.subs.drain() {
            match entry.state {
                SubState::Closing => {
                    if let Some(reply) = entry.close_reply.take() {
                        let _ = reply.send(Ok(()));
                    }
                }
                SubState::Open if idle_close => {
                    tracing::warn!(
                        sub = entry.shared.id,
                        "weir broker closed a connection with an open subscription as idle"
                    );
                    entry.end_with(end.clone());
                }
                _ if !entry.is_live() => {}
                SubState::Opening | SubState::Open => {
                    entry.renew();
                    unanswered.push((entry.order, Replay::Resubscribe(entry)));
                }
            }
        }
        unanswered.sort_unstable_by_key(|(order, _)| *order);
        self.going_away = None;
        unanswered.into_iter().map(|(_, r)| r).collect()
    }

    /// The connection has ended for good with `err`: every caller waiting hears it. A publish
    /// sent and unanswered may have been stored: [`PublishError::ConnectionLost`]; one held
    /// after a `ShuttingDown` refusal was not: [`PublishError::NotSent`].
    pub fn fail_all(&mut self, err: &ClientError) {
        self.open = None;
        for (_, p) in self.publishes.drain() {
            let _ = p.reply.send(Err(PublishError::ConnectionLost));
        }
        let not_sent = PublishError::NotSent(Arc::new(err.clone()));
        for (_, p) in self.held.drain(..) {
            let _ = p.reply.send(Err(not_sent.clone()));
        }
        for (_, r) in self.requests.drain() {
            let _ = r.reply.send(Err(err.clone()));
        }
        for (_, mut s) in self.subs.drain() {
            s.end_with(err.clone());
        }
        for (_, (_, r)) in self.pings.drain() {
            let _ = r.send(Err(err.clone()));
        }
    }
}

/// Answers what was to be sent again when it will not be: with `err`; a publish that went out
/// on a lost connection with [`PublishError::ConnectionLost`] (it may have been stored), one
/// never sent with [`PublishError::NotSent`]; a subscription ends with `err`.
pub(crate) fn refuse_replay(replay: Replay, err: &ClientError) {
    match replay {
        Replay::Command { cmd, sent: true } => refuse(cmd, err, PublishError::ConnectionLost),
        Replay::Command { cmd, sent: false } => {
            refuse(cmd, err, PublishError::NotSent(Arc::new(err.clone())))
        }
        Replay::Resubscribe(mut entry) => entry.end_with(err.clone()),
    }
}

/// What a flush of a subscription's batch sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returns {
    /// Settlements and the credit they free: the subscription goes on.
    AcksAndCredit,
    /// Settlements only: the subscription is closing.
    AcksOnly,
}
