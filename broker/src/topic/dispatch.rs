//! The dispatcher of one topic: credit-paced delivery to group members.
//!
//! Woken by commits, credit grants, acks, members leaving and connections freeing outbound
//! memory, it asks each group for a plan of deliveries (under the topic lock), resolves
//! messages (headers and payload) from the tail cache or, on a miss, from the log on the
//! blocking pool, and hands each `Deliver` to the member's connection with a non-blocking
//! `try_send`. A connection's outbound queue is sized for every credit its subscriptions can
//! hold, so `try_send` fails only when the connection is gone; the message then returns to its
//! group and that member gets no more until it grants credit again.
//!
//! A delivery is planned only when its message's bytes fit in the member's connection's
//! outbound memory — the connection's share (`max_connection_memory_bytes`) and the broker's
//! outbound half of `memory_budget_bytes` — taken before its payload is read; its header
//! overhead, known once the message is resolved, is added then. The permit travels with the
//! frame until the connection's writer has written it. So a subscriber that stops reading
//! holds at most its share, deliveries together at most half the budget, and the rest of the
//! messages wait in the log, not in memory. A message served from the tail cache is counted
//! twice while both hold it — the budget errs on the side of refusing early.
//!
//! A key-ordered group learns the `weir-key` of the messages it considers from the tail cache;
//! for those the cache no longer holds, the dispatcher reads the keys the group asks for
//! ([`Group::wanted_keys`](crate::group::Group::wanted_keys), at most
//! [`KEY_READ_BATCH`] messages and [`KEY_READ_BYTES`] of payload at a time, dropped once their
//! keys are taken) from the log on the blocking pool, and plans again.
//!
//! Once the broker begins a graceful stop ([`super::TopicEnv::stopping`]) no more deliveries
//! are planned, while acks, nacks and deadlines are still handled: the connections closing
//! next return their unacked messages to their groups, to be redelivered after the restart,
//! never to another consumer that is closing too.
//!
//! Each first delivery (attempt 1) to a group is recorded in the publish→deliver histogram: from
//! the message's append — the start of the commit that stored it, kept as an `Instant` by the
//! tail cache, or read back from the record's wall-clock `timestamp_ms` (millisecond precision)
//! on a cache miss — to the moment its `Deliver` is queued for the member's connection. A
//! message read for a group created long after it was published counts its whole wait.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use weir_protocol::{Deliver, Frame, Gap};

use super::{lock, stored_size, Topic};
use crate::group::keys::{key_of_headers, KeyHash, KEY_READ_BATCH};
use crate::group::{GapNotice, Messages, Plan};
use crate::outbox::Outbound;
use crate::storage::log::{LogError, Message, HEADER_OVERHEAD};

/// Most deliveries planned per group per round, so one busy group cannot starve the others.
const ROUND: usize = 256;

/// Most payload bytes read from the log at once to learn messages' keys (at least one
/// message is read, whatever its size).
const KEY_READ_BYTES: usize = 1 << 20;

/// A message resolved for delivery, with when it was appended.
type Resolved = (Message, Instant);

/// Runs the dispatcher until `stop` is cancelled. Between rounds it sleeps until woken or until
/// the next ack deadline or nack delay of any group comes due on the broker's clock (one sleep
/// per topic, never a timer per message; a paused clock wakes it when advanced past one). Its
/// time asleep counts as idle, the rounds as busy
/// (`weir_worker_*_seconds_total{worker="dispatcher"}`).
pub(super) async fn run(topic: Arc<Topic>, stop: CancellationToken) {
    let mut plan = Plan::with_capacity(ROUND);
    let mut work = topic.metrics.workers.dispatcher.clock();
    let room = topic.admission.clone();
    loop {
        let epoch = room.delivery_room().epoch();
        let no_room = loop {
            let (sent, blocked) = dispatch_round(&topic, &mut plan).await;
            if !sent {
                break blocked;
            }
        };
        let room_freed = async {
            if no_room {
                room.delivery_room().freed_since(epoch).await;
            } else {
                std::future::pending().await
            }
        };
        let next_expiry = topic.expire(topic.clock.now());
        let expiry = async {
            match next_expiry {
                Some(at) => topic.clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        work.waiting();
        tokio::select! {
            () = topic.wake_dispatcher.notified() => {}
            () = room_freed => {}
            () = expiry => {}
            () = stop.cancelled() => return,
        }
        work.working();
    }
}

/// Plans and sends one round for every group. Returns whether anything was sent (so another
/// round may find more work), and whether a member was passed over for lack of memory.
async fn dispatch_round(topic: &Arc<Topic>, plan: &mut Plan) -> (bool, bool) {
    let groups: Vec<String> = lock(&topic.state).groups.keys().cloned().collect();
    let (mut sent_any, mut no_room) = (false, false);
    let mut gaps = Vec::new();
    for group in groups {
        plan.clear();
        let (cached, wanted): (Vec<Option<Resolved>>, Vec<u64>) = {
            let mut st = lock(&topic.state);
            let st = &mut *st;
            let committed = topic.deliverable_end(st);
            // Checked under the lock: a member that leaves once the broker is stopping (under
            // this lock too) can never have its messages planned for another member.
            if topic.stopping.is_cancelled() {
                return (sent_any, no_room);
            }
            let Some(g) = st.groups.get_mut(&group) else {
                continue;
            };
            g.take_gaps(&mut gaps);
            let (sizes, first_seq, tail) = (&st.sizes, st.first_seq, &st.tail);
            let messages = Messages {
                size_of: &|seq| stored_size(sizes, first_seq, seq),
                key_of: &|seq| tail.get(seq).map(|m| key_of_headers(&m.headers)),
                key_lookahead: topic.limits.key_lookahead as usize,
            };
            no_room |= g.plan_from(committed, ROUND, topic.clock.now(), &messages, plan);
            let (waits, full) = g.take_key_counts();
            topic.metrics.key_waits.add(waits);
            topic.metrics.key_lookahead_full.add(full);
            let wanted = g.wanted_keys().to_vec();
            let cached = plan
                .iter()
                .map(|p| st.tail.entry(p.seq).map(|(m, at)| (m.clone(), at)))
                .collect();
            (cached, wanted)
        };
        send_gaps(topic, &group, &mut gaps);
        if !wanted.is_empty() && learn_keys(topic, &group, wanted).await {
            sent_any = true;
        }
        if plan.is_empty() {
            continue;
        }
        let messages = match fill_misses(topic, plan, cached).await {
            Ok(p) => p,
            Err(e) => {
                match &e {
                    LogError::Corrupt { seq, .. } => topic.mark_damaged(*seq, e.to_string()),
                    // A read that fails (a bad sector): nothing from the planned messages on is
                    // served until a repair scans the segment again.
                    LogError::Io(_) => {
                        let at = plan.iter().map(|p| p.seq).min().unwrap_or_default();
                        topic.mark_damaged(at, format!("cannot read the log: {e}"));
                    }
                    _ => {
                        tracing::error!(topic = %topic.name, group, error = %e, "cannot read messages for delivery")
                    }
                }
                let mut st = lock(&topic.state);
                if let Some(g) = st.groups.get_mut(&group) {
                    for p in plan.drain(..) {
                        g.undeliver(p.member, p.seq);
                    }
                }
                return (false, no_room);
            }
        };
        let mut failed = Vec::new();
        for (mut p, (message, appended)) in plan.drain(..).zip(messages) {
            // The plan took the message's size and overhead; its headers' overhead is known now.
            p.memory
                .charge(HEADER_OVERHEAD * message.headers.len() as u64);
            let frame = Frame::Deliver(Deliver {
                sub: p.member.sub,
                seq: p.seq,
                attempt: p.attempt,
                headers: message.headers,
                payload: message.payload,
            });
            let outbound = Outbound {
                frame,
                memory: Some(p.memory),
            };
            if p.outbox.try_send(outbound).is_ok() {
                topic.metrics.delivered.add(1);
                topic.counters.delivered.add(1);
                if p.attempt > 1 {
                    topic.metrics.redelivered.add(1);
                    topic.counters.redelivered.add(1);
                } else {
                    topic.metrics.publish_deliver.observe(appended.elapsed());
                }
                sent_any = true;
            } else {
                failed.push((p.member, p.seq));
            }
        }
        if !failed.is_empty() {
            let mut st = lock(&topic.state);
            if let Some(g) = st.groups.get_mut(&group) {
                for (member, seq) in failed {
                    g.undeliver(member, seq);
                    g.revoke_credit(member);
                }
            }
        }
    }
    (sent_any, no_room)
}

/// Reads the keys of the `wanted` messages (ascending) of `group` from the log, off the
/// reactor, and gives them to the group. Returns whether it learned any (plan again then).
async fn learn_keys(topic: &Arc<Topic>, group: &str, wanted: Vec<u64>) -> bool {
    let log = topic.log.clone();
    let read = tokio::task::spawn_blocking(move || {
        let log = log.read().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<(u64, Option<KeyHash>)> = Vec::with_capacity(KEY_READ_BATCH);
        let mut i = 0;
        while i < wanted.len() {
            // One read per run of consecutive sequences.
            let start = wanted[i];
            let mut run = 1;
            while i + run < wanted.len() && wanted[i + run] == start + run as u64 {
                run += 1;
            }
            i += run;
            if start < log.first_seq() || start >= log.next_seq() {
                continue;
            }
            let records = log.read(start, run, KEY_READ_BYTES)?;
            let whole = records.len() == run;
            keys.extend(records.iter().map(|r| (r.seq, key_of_headers(&r.headers))));
            if !whole {
                // The byte bound (or a hole) cut the run short: the rest are asked again.
                break;
            }
        }
        Ok::<_, LogError>(keys)
    })
    .await
    .unwrap_or_else(|e| Err(LogError::Io(std::io::Error::other(e.to_string()))));
    match read {
        Ok(keys) => {
            let mut st = lock(&topic.state);
            st.groups
                .get_mut(group)
                .is_some_and(|g| g.learn_keys(keys) > 0)
        }
        Err(e) => {
            if let LogError::Corrupt { seq, .. } = &e {
                topic.mark_damaged(*seq, e.to_string());
            } else {
                tracing::error!(topic = %topic.name, group, error = %e, "cannot read message keys");
            }
            false
        }
    }
}

/// Sends `Gap` notices ahead of the group's next deliveries; one that does not fit the member's
/// queue now is kept (merged) for the next round.
fn send_gaps(topic: &Topic, group: &str, gaps: &mut Vec<GapNotice>) {
    let mut unsent = Vec::new();
    for n in gaps.drain(..) {
        let frame = Frame::Gap(Gap {
            sub: n.member.sub,
            from: n.from,
            to: n.to,
        });
        if n.outbox.try_send(frame.into()).is_err() {
            unsent.push(n);
        }
    }
    if !unsent.is_empty() {
        let mut st = lock(&topic.state);
        if let Some(g) = st.groups.get_mut(group) {
            for n in unsent {
                g.restore_gap(n.member, n.from, n.to);
            }
        }
    }
}

/// Completes the messages the tail cache did not have by reading the log off the reactor.
async fn fill_misses(
    topic: &Arc<Topic>,
    plan: &Plan,
    cached: Vec<Option<Resolved>>,
) -> Result<Vec<Resolved>, LogError> {
    if cached.iter().all(Option::is_some) {
        return Ok(cached.into_iter().flatten().collect());
    }
    let wanted: Vec<u64> = plan.iter().map(|p| p.seq).collect();
    let log = topic.log.clone();
    tokio::task::spawn_blocking(move || {
        let log = log.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Option<Resolved>> = cached;
        let mut i = 0;
        while i < out.len() {
            if out[i].is_some() {
                i += 1;
                continue;
            }
            // Read the whole run of consecutive missing sequences with one call.
            let start = wanted[i];
            let mut run = 1;
            while i + run < out.len()
                && out[i + run].is_none()
                && wanted[i + run] == start + run as u64
            {
                run += 1;
            }
            let records = log.read(start, run, usize::MAX)?;
            if records.len() != run {
                return Err(LogError::SeqOutOfRange {
                    seq: start,
                    first: log.first_seq(),
                    next: log.next_seq(),
                });
            }
            for (k, record) in records.into_iter().enumerate() {
                let appended = appended_at(record.timestamp_ms);
                out[i + k] = Some((record.into(), appended));
            }
            i += run;
        }
        Ok(out.into_iter().flatten().collect())
    })
    .await
    .unwrap_or_else(|e| Err(LogError::Io(std::io::Error::other(e.to_string()))))
}

/// The `Instant` of a record's wall-clock `timestamp_ms`: now, less the record's age. A
/// timestamp ahead of the clock (it was stepped back) counts as now.
fn appended_at(timestamp_ms: u64) -> Instant {
    let stamped = UNIX_EPOCH + Duration::from_millis(timestamp_ms);
    let age = SystemTime::now()
        .duration_since(stamped)
        .unwrap_or(Duration::ZERO);
    let now = Instant::now();
    now.checked_sub(age).unwrap_or(now)
}
