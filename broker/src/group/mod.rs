//! A group: one durable subscription of a topic. It owns the cursor, the in-flight table with
//! each delivery's ack deadline, the messages waiting for redelivery (at once, or after a nack
//! delay), the messages due for the dead-letter topic, and the members with the credit each has
//! granted.
//!
//! Pure bookkeeping, no I/O: the topic's dispatcher asks a group for a delivery [`Plan`]
//! under the topic lock, then sends the frames outside it; it also calls [`Group::expire`] when
//! [`Group::next_expiry`] comes (deadlines are an ordered schedule, not a timer per message).
//!
//! Time is passed in. Deliveries, deadlines, nack delays and records take the broker clock's
//! time ([`crate::clock`]: tests pause and advance it); [`Group::stalls`] takes real time (stall
//! warnings are for operators), and only it reads the stall fields.
//!
//! Bounds: delivered, nacked-and-waiting and due-for-dead-letter messages together never exceed
//! `max_in_flight` (delivery pauses at it until acks arrive), a member never gets more
//! deliveries than its outstanding credit, and credit outstanding never exceeds `max_credit`
//! (a larger grant is refused). Messages waiting for redelivery came out of those, so they are
//! bounded by `max_in_flight` too. A message delivered `max_attempts` times that times out, is
//! nacked again, or whose member leaves without acking it is due for the dead-letter topic.
//!
//! A key-ordered group (`ordering = "key"`) keeps each `weir-key`'s messages in order on top
//! of this: see [`keys`].

pub mod keys;
mod schedule;
#[cfg(test)]
mod snapshot_tests;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_protocol::{GroupConfig, GroupInfo, GroupOrdering};

use keys::{KeyHash, Keys};
use schedule::Schedule;

use crate::admission::{MemoryBudget, MemoryPermit};
pub use crate::outbox::Outbox;
use crate::storage::log::MESSAGE_OVERHEAD;
use crate::storage::records::GroupRecord;

/// Identifies one subscription: the connection it lives on and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberId {
    /// The broker-assigned connection id.
    pub conn: u64,
    /// The client-chosen subscription id.
    pub sub: u64,
}

/// One subscription attached to a group.
struct Member {
    id: MemberId,
    credit: u32,
    outbox: Outbox,
    /// Its connection's outbound memory: each planned delivery takes its message's bytes from
    /// it until the connection has written the frame; a delivery that does not fit (the
    /// connection at its share, or the broker's outbound half full) is not planned.
    memory: MemoryBudget,
    /// Where `Gap` notices go (the connection's control queue).
    notices: Outbox,
    /// Evicted messages this member has not been told about yet (merged into one range).
    gap: Option<(u64, u64)>,
    /// Since when the member has had no credit (cleared when it grants some).
    starved_since: Option<Instant>,
}

/// A `Gap` notice to send: `from..=to` were evicted before the member's group got them.
pub struct GapNotice {
    /// Where to send it.
    pub outbox: Outbox,
    /// The member it goes to.
    pub member: MemberId,
    /// First evicted sequence.
    pub from: u64,
    /// Last evicted sequence.
    pub to: u64,
}

/// A delivered, not yet acked message.
struct InFlight {
    member: MemberId,
    attempt: u32,
    /// When it was (last) delivered.
    since: Instant,
}

/// A message waiting to be moved to the group's dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: u64,
    /// Deliveries it had.
    pub attempt: u32,
    /// Why it is dead-lettered (`ack timeout`, `nacked`, [`CONSUMER_LOST`], or the
    /// subscriber's `Term` reason).
    pub reason: String,
}

/// The dead-letter reason of a message whose `max_attempts`-th delivery went to a member that
/// left without acking it (its connection closed, it unsubscribed, its consumer crashed).
pub const CONSUMER_LOST: &str = "consumer-lost";

/// Why a member leaves its group, which decides what its unacked messages count as (see
/// [`Group::leave`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The consumer went away on its own: disconnected, unsubscribed, crashed, or was closed
    /// for what it did (not reading, idling). Each unacked delivery was a failed attempt.
    Lost,
    /// The broker is stopping and closed the member itself: its unacked messages are
    /// requeued whatever their attempt (they are redelivered after the restart).
    BrokerStopping,
}

/// What [`Group::leave`] did with the leaving member's unacked messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Returned to the group for redelivery.
    pub requeued: usize,
    /// Due for the dead-letter topic ([`CONSUMER_LOST`]).
    pub dead: usize,
}

/// One delivery decided by [`Group::plan`]: send `seq` (attempt `attempt`) to `sub` via `outbox`.
pub struct Planned {
    /// Where to send the delivery.
    pub outbox: Outbox,
    /// The message's bytes, taken from the member's connection's outbound memory: the frame
    /// carries it until written.
    pub memory: MemoryPermit,
    /// The member it goes to.
    pub member: MemberId,
    pub seq: u64,
    /// Which delivery of this message to the group this is (1 = first).
    pub attempt: u32,
}

/// A list of deliveries to send.
pub type Plan = Vec<Planned>;

/// What [`Group::plan_from`] may learn of the topic's stored messages.
pub struct Messages<'a> {
    /// The stored size of a seq (payload plus header names and values); `None` for a seq that
    /// holds no message (a hole in the log): it is passed over, never delivered.
    pub size_of: &'a dyn Fn(u64) -> Option<u64>,
    /// The key of a seq when known without reading the log (the tail cache has it):
    /// `Some(None)` for a message without a `weir-key` header, `None` when not known.
    /// Only a key-ordered group asks.
    pub key_of: &'a dyn Fn(u64) -> Option<Option<KeyHash>>,
    /// Most messages a key-ordered group lets wait for their key (`groups.key_lookahead`).
    pub key_lookahead: usize,
}

/// A grant of credit that cannot be honoured.
#[derive(Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The member is not attached to this group.
    UnknownMember,
    /// Outstanding credit would pass `max_credit`.
    TooMuch {
        /// Credit the member has outstanding now.
        outstanding: u32,
        max: u32,
    },
}

/// One group's delivery state.
///
/// Every message the group holds unacked takes one of its `max_in_flight` slots: delivered
/// (`in_flight`, with an ack deadline), nacked and waiting for its delay (`delayed`), or due
/// for the dead-letter topic (`dead`). Messages waiting for redelivery came out of those, and
/// are delivered before any new one, so everything the group tracks is bounded by
/// `max_in_flight`.
pub struct Group {
    config: GroupConfig,
    cursor: u64,
    in_flight: BTreeMap<u64, InFlight>,
    /// The ack deadline of each in-flight message.
    deadlines: Schedule<()>,
    redeliver: BTreeMap<u64, u32>,
    /// Nacked messages (with their attempts) and when they may be redelivered.
    delayed: Schedule<u32>,
    dead: BTreeMap<u64, DeadLetter>,
    members: Vec<Member>,
    next_member: usize,
    max_in_flight: usize,
    dirty: bool,
    /// Since when the group has been at `max_in_flight` (cleared when it drops below).
    full_since: Option<Instant>,
    /// Deliveries that passed their ack deadline.
    timed_out: u64,
    /// Messages moved to the dead-letter topic.
    dead_lettered: u64,
    /// Deleted when its last member leaves, never persisted (see [`Group::make_ephemeral`]).
    ephemeral: bool,
    /// Key order's bookkeeping (empty unless the group's ordering is `key`).
    keys: Keys,
}

/// What [`Group::expire`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Deliveries past their ack deadline, returned for redelivery or dead-lettering.
    pub timed_out: usize,
    /// Nacked messages whose delay ended.
    pub released: usize,
    /// Messages that became due for the dead-letter topic.
    pub dead: usize,
}

/// A delivery stall: work is waiting, and nothing moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// The group has had `max_in_flight` unacked messages for `for_`: its consumers are not
    /// acking.
    AtMaxInFlight {
        /// How long.
        for_: Duration,
    },
    /// A member has had no credit for `for_` while messages wait for the group.
    NoCredit {
        member: MemberId,
        /// How long.
        for_: Duration,
    },
}

impl Group {
    /// A new group whose first delivery will be `start`, with `config`'s ack timeout, attempts
    /// and dead-letter topic.
    pub fn with_config(start: u64, max_in_flight: u32, config: GroupConfig) -> Group {
        Group {
            config,
            cursor: start,
            in_flight: BTreeMap::new(),
            deadlines: Schedule::default(),
            redeliver: BTreeMap::new(),
            delayed: Schedule::default(),
            dead: BTreeMap::new(),
            members: Vec::new(),
            next_member: 0,
            max_in_flight: max_in_flight as usize,
            dirty: true,
            full_since: None,
            timed_out: 0,
            dead_lettered: 0,
            ephemeral: false,
            keys: Keys::default(),
        }
    }

    /// Makes the group ephemeral (`GroupSpec::ephemeral`): its topic deletes it when its last
    /// member leaves and never writes it to the state store. A group recovered from the state
    /// store is durable, so only a group created by a subscription can be ephemeral.
    pub fn make_ephemeral(&mut self) {
        self.ephemeral = true;
    }

    /// Whether the group is ephemeral (see [`Group::make_ephemeral`]).
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// A group recovered from its stored record after a restart. Messages below `first_seq`
    /// are gone from the topic (acked by everyone), so they are dropped from the record; every
    /// delivered-but-unacked message becomes due for redelivery, keeping its delivery count
    /// (its subscriber's connection is gone, so its ack deadline is moot); nacked messages keep
    /// the rest of their delay (due that long after `now`, the broker clock's time); messages
    /// due for the dead-letter topic stay due. A record written before groups had settings
    /// gets `defaults`.
    pub fn recover(
        record: &GroupRecord,
        first_seq: u64,
        max_in_flight: u32,
        defaults: &GroupConfig,
        now: Instant,
    ) -> Group {
        let config = record.config.clone().unwrap_or_else(|| defaults.clone());
        let mut group = Group::with_config(record.cursor.max(first_seq), max_in_flight, config);
        group.keys.rebuild = group.config.ordering == GroupOrdering::Key;
        let kept = |seq: u64| seq >= first_seq && seq < group.cursor;
        group.redeliver = record
            .unacked
            .iter()
            .filter(|(seq, _)| kept(*seq))
            .copied()
            .collect();
        let wall = unix_ms();
        for &(seq, attempt, ready_ms) in record.delayed.iter().filter(|d| kept(d.0)) {
            let wait = Duration::from_millis(ready_ms.saturating_sub(wall));
            group.delayed.insert(seq, now + wait, attempt);
        }
        group.dead = record
            .dead
            .iter()
            .filter(|(seq, _, _)| kept(*seq))
            .map(|(seq, attempt, reason)| {
                let dead = DeadLetter {
                    seq: *seq,
                    attempt: *attempt,
                    reason: reason.clone(),
                };
                (*seq, dead)
            })
            .collect();
        group
    }

    /// The record to persist as of `now` (the broker clock's time: a nack delay is stored as
    /// the wall-clock time it ends, that long after now). Bounded by `max_in_flight` entries.
    pub fn record(&self, now: Instant) -> GroupRecord {
        let mut unacked: Vec<(u64, u32)> = self
            .in_flight
            .iter()
            .map(|(seq, f)| (*seq, f.attempt))
            .chain(self.redeliver.iter().map(|(s, a)| (*s, *a)))
            .chain(self.keys.waiting.iter().map(|s| (*s, 0)))
            .collect();
        unacked.sort_unstable();
        let wall = unix_ms();
        let delayed = self
            .delayed
            .iter()
            .map(|(seq, at, attempt)| {
                let wait = at.saturating_duration_since(now).as_millis() as u64;
                (seq, *attempt, wall + wait)
            })
            .collect();
        let dead = self
            .dead
            .values()
            .map(|d| (d.seq, d.attempt, d.reason.clone()))
            .collect();
        GroupRecord {
            cursor: self.cursor,
            unacked,
            config: Some(self.config.clone()),
            delayed,
            dead,
        }
    }

    /// The group's settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Changes the group's settings (`weir group update`), to be saved with its state. Deadlines
    /// already set stand; attempts are compared with the new `max_attempts` at each failure
    /// from now on.
    pub fn set_config(&mut self, config: GroupConfig) {
        self.config = config;
        self.dirty = true;
    }

    /// Returns whether the group changed since the last call, and clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The lowest sequence the group still needs: everything below it is acked.
    pub fn floor(&self) -> u64 {
        [
            self.in_flight.keys().next().copied(),
            self.redeliver.keys().next().copied(),
            self.delayed.lowest(),
            self.dead.keys().next().copied(),
            self.keys.waiting.first().copied(),
        ]
        .into_iter()
        .flatten()
        .fold(self.cursor, u64::min)
    }

    /// Slots of `max_in_flight` taken: delivered, nacked and waiting, or due for the
    /// dead-letter topic.
    fn held(&self) -> usize {
        self.in_flight.len() + self.delayed.len() + self.dead.len()
    }

    /// Takes `seq` out of flight if it is in flight to `id`.
    fn take_in_flight(&mut self, id: MemberId, seq: u64) -> Option<InFlight> {
        if !self.in_flight.get(&seq).is_some_and(|f| f.member == id) {
            return None;
        }
        self.deadlines.remove(seq);
        self.dirty = true;
        self.in_flight.remove(&seq)
    }

    /// Attaches a member with no credit yet (see [`Group::grant`]). Deliveries go to `outbox`
    /// (sized by credit), each holding its bytes from `memory` until written; `Gap` notices go
    /// to `notices`, so they never take a delivery's room.
    pub fn join(&mut self, id: MemberId, outbox: Outbox, notices: Outbox, memory: MemoryBudget) {
        self.members.push(Member {
            id,
            credit: 0,
            outbox,
            memory,
            notices,
            gap: None,
            starved_since: None,
        });
    }

    /// Detaches a member. Each message in flight to it was an attempt that ended without an
    /// ack: if the member was lost ([`Departure::Lost`]) and that was the message's
    /// `max_attempts`-th delivery, it is due for the dead-letter topic with the reason
    /// [`CONSUMER_LOST`] (a message that keeps killing its consumers ends there, like one that
    /// keeps timing out); otherwise it goes back to the group for redelivery with the next
    /// attempt. It keeps its `max_in_flight` slot either way.
    pub fn leave(&mut self, id: MemberId, departure: Departure) -> Left {
        self.members.retain(|m| m.id != id);
        let theirs: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.member == id)
            .map(|(s, _)| *s)
            .collect();
        let mut left = Left::default();
        for seq in theirs {
            let Some(f) = self.take_in_flight(id, seq) else {
                continue;
            };
            let last = f.attempt >= self.config.max_attempts;
            if last && departure == Departure::Lost {
                self.kill(seq, f.attempt, CONSUMER_LOST.to_string());
                left.dead += 1;
            } else {
                self.redeliver.insert(seq, f.attempt);
                left.requeued += 1;
            }
        }
        left
    }

    /// Returns a planned delivery that could not be sent to the group (a no-op if `seq` is no
    /// longer in flight to `id`, e.g. because the member already left). Nobody received it, so
    /// it does not count as an attempt: its next delivery has the attempt this one had.
    pub fn undeliver(&mut self, id: MemberId, seq: u64) {
        if let Some(f) = self.take_in_flight(id, seq) {
            self.redeliver.insert(seq, f.attempt.saturating_sub(1));
        }
    }

    /// Forgets every message below `first_seq`, which the topic evicted (`drop_oldest`): the
    /// cursor skips them, in-flight and redelivery entries are dropped (a later ack of one is
    /// ignored), and every member is owed a `Gap` notice for the range the group still needed.
    /// Returns that range, if the group needed any of it.
    pub fn evict_below(&mut self, first_seq: u64) -> Option<(u64, u64)> {
        let needed_from = self.floor();
        if needed_from >= first_seq {
            return None;
        }
        self.in_flight = self.in_flight.split_off(&first_seq);
        self.deadlines.remove_below(first_seq);
        self.redeliver = self.redeliver.split_off(&first_seq);
        self.delayed.remove_below(first_seq);
        self.dead = self.dead.split_off(&first_seq);
        self.keys.forget_below(first_seq);
        self.cursor = self.cursor.max(first_seq);
        self.dirty = true;
        let range = (needed_from, first_seq - 1);
        self.owe_gap(range);
        Some(range)
    }

    /// Skips the seqs `from..to`, which hold no message (a hole in the log): a cursor inside
    /// them moves to `to`, and redeliveries, delayed and dead-letter entries among them are
    /// forgotten (a later ack of one in flight is ignored). When `lost` (a damaged range that
    /// `weir topic repair` skipped), every member is owed a `Gap` for the part the group still
    /// needed, which is returned; a hole of never-confirmed seqs (after a crash) owes none.
    pub fn skip(&mut self, from: u64, to: u64, lost: bool) -> Option<(u64, u64)> {
        let inside = |seq: &u64| *seq >= from && *seq < to;
        let needed_from = [
            self.in_flight.range(from..to).next().map(|(s, _)| *s),
            self.redeliver.range(from..to).next().map(|(s, _)| *s),
            self.dead.range(from..to).next().map(|(s, _)| *s),
            self.keys.waiting.range(from..to).next().copied(),
            self.delayed.iter().map(|(s, _, _)| s).filter(inside).min(),
            (self.cursor < to).then(|| self.cursor.max(from)),
        ]
        .into_iter()
        .flatten()
        .min();
        if self.cursor >= from && self.cursor < to {
            self.cursor = to;
        }
        self.redeliver.retain(|seq, _| !inside(seq));
        self.dead.retain(|seq, _| !inside(seq));
        let delayed: Vec<u64> = self
            .delayed
            .iter()
            .map(|(seq, _, _)| seq)
            .filter(inside)
            .collect();
        for seq in delayed {
            self.delayed.remove(seq);
        }
        self.keys
            .forget_range(from, to, |seq| self.in_flight.contains_key(&seq));
        self.dirty = true;
        let needed_from = needed_from.filter(|_| lost)?;
        let range = (needed_from, to - 1);
        self.owe_gap(range);
        Some(range)
    }

    /// Owes every member a `Gap` for `range` (merged with one already owed).
    fn owe_gap(&mut self, range: (u64, u64)) {
        for m in &mut self.members {
            m.gap = Some(match m.gap {
                Some((from, to)) => (from.min(range.0), to.max(range.1)),
                None => range,
            });
        }
    }

    /// Every member's notice queue (where `Gap` and subscription errors go), with its id.
    pub fn notice_queues(&self) -> impl Iterator<Item = (MemberId, &Outbox)> + '_ {
        self.members.iter().map(|m| (m.id, &m.notices))
    }

    /// Takes the `Gap` notices owed to members (see [`Group::evict_below`]).
    pub fn take_gaps(&mut self, out: &mut Vec<GapNotice>) {
        for m in &mut self.members {
            if let Some((from, to)) = m.gap.take() {
                out.push(GapNotice {
                    outbox: m.notices.clone(),
                    member: m.id,
                    from,
                    to,
                });
            }
        }
    }

    /// Puts back a `Gap` notice that could not be sent, merged with any newer one.
    pub fn restore_gap(&mut self, id: MemberId, from: u64, to: u64) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.gap = Some(m.gap.map_or((from, to), |(f, t)| (f.min(from), t.max(to))));
        }
    }

    /// Takes away a member's outstanding credit (its connection is gone or cannot take more),
    /// so it is planned no more deliveries until it grants credit again.
    pub fn revoke_credit(&mut self, id: MemberId) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.credit = 0;
        }
    }

    /// The stalls that have lasted at least `after` as of `now`, each reported again only
    /// after another `after` (the caller logs them; see [`Stall`]). Only counts while messages
    /// wait for the group: an idle group with no credit is not stalled.
    pub fn stalls(
        &mut self,
        committed_next: u64,
        now: Instant,
        after: Duration,
        out: &mut Vec<Stall>,
    ) {
        let waiting = !self.redeliver.is_empty()
            || !self.keys.waiting.is_empty()
            || self.cursor < committed_next;
        let full = self.held() >= self.max_in_flight;
        if let Some(for_) = overdue(&mut self.full_since, full, now, after) {
            out.push(Stall::AtMaxInFlight { for_ });
        }
        for m in &mut self.members {
            if let Some(for_) = overdue(&mut m.starved_since, waiting && m.credit == 0, now, after)
            {
                out.push(Stall::NoCredit { member: m.id, for_ });
            }
        }
    }

    /// Adds `n` credit to a member; refused past `max_credit` outstanding.
    pub fn grant(&mut self, id: MemberId, n: u32, max_credit: u32) -> Result<(), GrantError> {
        let member = self
            .members
            .iter_mut()
            .find(|m| m.id == id)
            .ok_or(GrantError::UnknownMember)?;
        match member.credit.checked_add(n) {
            Some(total) if total <= max_credit => {
                member.credit = total;
                Ok(())
            }
            _ => Err(GrantError::TooMuch {
                outstanding: member.credit,
                max: max_credit,
            }),
        }
    }

    /// The sequences in flight to `id` within inclusive `ranges`, ascending. The ranges are
    /// merged first, so each in-flight message is visited once however they overlap: the
    /// cost is the ranges' sorting plus at most `max_in_flight` entries.
    pub fn held_in(&self, id: MemberId, mut ranges: Vec<(u64, u64)>) -> Vec<u64> {
        ranges.retain(|(from, to)| from <= to);
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (from, to) in ranges {
            match merged.last_mut() {
                Some((_, end)) if from <= end.saturating_add(1) => *end = (*end).max(to),
                _ => merged.push((from, to)),
            }
        }
        merged
            .into_iter()
            .flat_map(|(from, to)| self.in_flight.range(from..=to))
            .filter(|(_, f)| f.member == id)
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Acks messages delivered to `id`. Sequences not in flight to `id` (duplicates, or
    /// messages already requeued) are ignored. Returns how many were acked.
    pub fn ack(&mut self, id: MemberId, seqs: &[u64]) -> usize {
        let mut acked = 0;
        for &seq in seqs {
            if self.take_in_flight(id, seq).is_some() {
                self.keys.done(seq);
                acked += 1;
            }
        }
        acked
    }

    /// Returns messages delivered to `id` for redelivery no sooner than `delay` after `now`
    /// (at once for a zero delay). One nacked on its `max_attempts`-th delivery is due for the
    /// dead-letter topic instead. Sequences not in flight to `id` are ignored. Returns how many
    /// were nacked and how many of those are now dead.
    pub fn nack(
        &mut self,
        id: MemberId,
        seqs: &[u64],
        delay: Duration,
        now: Instant,
    ) -> (usize, usize) {
        let (mut nacked, mut dead) = (0, 0);
        for &seq in seqs {
            let Some(f) = self.take_in_flight(id, seq) else {
                continue;
            };
            nacked += 1;
            if f.attempt >= self.config.max_attempts {
                let reason = format!("nacked on attempt {}", f.attempt);
                self.kill(seq, f.attempt, reason);
                dead += 1;
            } else if delay.is_zero() {
                self.redeliver.insert(seq, f.attempt);
            } else {
                self.delayed.insert(seq, now + delay, f.attempt);
            }
        }
        (nacked, dead)
    }

    /// Sends messages delivered to `id` to the dead-letter topic, whatever their attempt.
    /// Returns how many.
    pub fn term(&mut self, id: MemberId, seqs: &[u64], reason: &str) -> usize {
        let mut dead = 0;
        for &seq in seqs {
            if let Some(f) = self.take_in_flight(id, seq) {
                self.kill(seq, f.attempt, reason.to_string());
                dead += 1;
            }
        }
        dead
    }

    /// Restarts the ack deadline of messages delivered to `id`. Returns how many.
    pub fn progress(&mut self, id: MemberId, seqs: &[u64], now: Instant) -> usize {
        let deadline = now + self.ack_timeout();
        let mut extended = 0;
        for &seq in seqs {
            if self.in_flight.get(&seq).is_some_and(|f| f.member == id) {
                self.deadlines.insert(seq, deadline, ());
                extended += 1;
            }
        }
        extended
    }

    /// Returns every delivery past its ack deadline to the group (redelivered with the next
    /// attempt, or due for the dead-letter topic after `max_attempts`), and makes nacked
    /// messages whose delay has ended deliverable again.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut done = Expired::default();
        while let Some((seq, ())) = self.deadlines.pop_due(now) {
            let Some(f) = self.in_flight.remove(&seq) else {
                continue;
            };
            done.timed_out += 1;
            if f.attempt >= self.config.max_attempts {
                let reason = format!("ack timeout on attempt {}", f.attempt);
                self.kill(seq, f.attempt, reason);
                done.dead += 1;
            } else {
                self.redeliver.insert(seq, f.attempt);
            }
        }
        while let Some((seq, attempt)) = self.delayed.pop_due(now) {
            self.redeliver.insert(seq, attempt);
            done.released += 1;
        }
        if done != Expired::default() {
            self.timed_out += done.timed_out as u64;
            self.dirty = true;
        }
        done
    }

    /// When [`Group::expire`] next has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        match (self.deadlines.next(), self.delayed.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Up to `max` messages due for the dead-letter topic, lowest sequence first. They stay
    /// due (holding their slots) until [`Group::dead_lettered`] is called for them.
    pub fn dead_letters(&self, max: usize) -> Vec<DeadLetter> {
        self.dead.values().take(max).cloned().collect()
    }

    /// Marks `seq` as moved to the dead-letter topic (durably): it leaves the group.
    pub fn dead_lettered(&mut self, seq: u64) -> bool {
        let moved = self.dead.remove(&seq).is_some();
        if moved {
            self.dead_lettered += 1;
            self.dirty = true;
        }
        moved
    }

    /// Makes `seq` due for the dead-letter topic; the key it owned is free from now on.
    fn kill(&mut self, seq: u64, attempt: u32, reason: String) {
        self.keys.done(seq);
        self.dead.insert(
            seq,
            DeadLetter {
                seq,
                attempt,
                reason,
            },
        );
        self.dirty = true;
    }

    fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.config.ack_timeout_ms)
    }

    /// The next member, round-robin from `next_member`, with credit and not passed over this
    /// round for want of memory (`no_room`), if any.
    fn next_member_with_credit(&self, no_room: &[bool]) -> Option<usize> {
        let n = self.members.len();
        (0..n)
            .map(|k| (self.next_member + k) % n)
            .find(|&i| self.members[i].credit > 0 && !no_room.get(i).copied().unwrap_or(false))
    }

    /// Decides up to `budget` deliveries at `now`: redeliveries first (lowest sequence first),
    /// then new messages below `committed_next`, round-robin across members with credit *and*
    /// memory for the message (`size_of(seq)` bytes plus its overhead, taken from the member's
    /// connection's outbound memory), while the group is under `max_in_flight`. Each planned
    /// message is in flight from here on, with an ack deadline of `ack_timeout` from `now`.
    /// A seq `size_of` answers `None` for holds no message (a hole in the log): it is passed
    /// over, never delivered. A key-ordered group also keeps each key's messages in order
    /// (see [`keys`]); it stops at a message whose key it does not know
    /// ([`Group::wanted_keys`]).
    ///
    /// Returns `true` when a member with credit was passed over for lack of memory while
    /// messages waited: the caller should plan again once deliveries have been written.
    pub fn plan_from(
        &mut self,
        committed_next: u64,
        budget: usize,
        now: Instant,
        messages: &Messages<'_>,
        out: &mut Plan,
    ) -> bool {
        if self.config.ordering == GroupOrdering::Key {
            return self.plan_keyed(committed_next, budget, now, messages, out);
        }
        let deadline = now + self.ack_timeout();
        let mut planned = 0;
        // Members passed over this round because their memory had no room.
        let mut no_room: Vec<bool> = Vec::new();
        while planned < budget && self.held() < self.max_in_flight {
            let Some(i) = self.next_member_with_credit(&no_room) else {
                break;
            };
            // Redeliveries at or past `committed_next` wait too (a damaged log lowers it).
            let next = match self.redeliver.first_key_value() {
                Some((&seq, &attempts)) if seq < committed_next => (seq, attempts, true),
                _ if self.cursor < committed_next => (self.cursor, 0, false),
                _ => break,
            };
            let (seq, previous_attempts, redelivery) = next;
            let size = (messages.size_of)(seq);
            let memory = match size {
                Some(size) => match self.reserve(i, size, &mut no_room) {
                    Some(memory) => Some(memory),
                    None => continue,
                },
                None => None,
            };
            if redelivery {
                self.redeliver.pop_first();
            } else {
                self.cursor += 1;
            }
            let Some(memory) = memory else {
                self.dirty = true;
                continue;
            };
            self.hand_out(i, seq, previous_attempts, memory, now, deadline, out);
            planned += 1;
        }
        if planned > 0 {
            self.dirty = true;
        }
        no_room.contains(&true)
    }

    /// [`Group::plan_from`] for messages of `size_of` bytes that carry no key.
    #[cfg(test)]
    pub fn plan(
        &mut self,
        committed_next: u64,
        budget: usize,
        now: Instant,
        size_of: &dyn Fn(u64) -> Option<u64>,
        out: &mut Plan,
    ) -> bool {
        let messages = Messages {
            size_of,
            key_of: &|_| Some(None),
            key_lookahead: usize::MAX,
        };
        self.plan_from(committed_next, budget, now, &messages, out)
    }

    /// Takes `size` bytes (plus a message's overhead) from member `i`'s connection's outbound
    /// memory; when they do not fit, marks the member in `no_room` (passed over this round).
    fn reserve(&mut self, i: usize, size: u64, no_room: &mut Vec<bool>) -> Option<MemoryPermit> {
        match self.members[i].memory.try_acquire(size + MESSAGE_OVERHEAD) {
            Ok(memory) => Some(memory),
            Err(_) => {
                no_room.resize(self.members.len(), false);
                no_room[i] = true;
                None
            }
        }
    }

    /// Puts `seq` in flight to member `i` (its next attempt, due back at `deadline`) and plans
    /// its delivery.
    #[allow(clippy::too_many_arguments)]
    fn hand_out(
        &mut self,
        i: usize,
        seq: u64,
        previous_attempts: u32,
        memory: MemoryPermit,
        now: Instant,
        deadline: Instant,
        out: &mut Plan,
    ) {
        let member = &mut self.members[i];
        member.credit -= 1;
        let attempt = previous_attempts + 1;
        self.in_flight.insert(
            seq,
            InFlight {
                member: member.id,
                attempt,
                since: now,
            },
        );
        self.deadlines.insert(seq, deadline, ());
        out.push(Planned {
            outbox: member.outbox.clone(),
            memory,
            member: member.id,
            seq,
            attempt,
        });
        self.next_member = (i + 1) % self.members.len();
    }

    /// A snapshot for `ListTopics` and `DescribeTopic`, as of `now`.
    pub fn info(&self, name: &str, committed_next: u64, now: Instant) -> GroupInfo {
        let waiting = self.redeliver.len() + self.delayed.len() + self.keys.waiting.len();
        let oldest = self.in_flight.values().map(|f| f.since).min();
        GroupInfo {
            name: name.to_string(),
            in_flight: self.in_flight.len() as u64,
            pending: committed_next.saturating_sub(self.cursor) + waiting as u64,
            members: self.members.len() as u32,
            credit: self.members.iter().map(|m| u64::from(m.credit)).sum(),
            config: self.config.clone(),
            timed_out: self.timed_out,
            dead_lettered: self.dead_lettered,
            dead_letter_held: self.dead.len() as u64,
            oldest_unacked_ms: oldest.map(|t| now.saturating_duration_since(t).as_millis() as u64),
            ephemeral: self.ephemeral,
        }
    }

    /// Detaches every member (the group is being deleted), returning each with the queue its
    /// notices go to, so its connection can be told.
    pub fn detach_all(&mut self) -> Vec<(MemberId, Outbox)> {
        self.members.drain(..).map(|m| (m.id, m.notices)).collect()
    }

    /// How many members are attached.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Whether `id` holds a delivery it has not acked (or nacked) yet.
    pub fn holds_deliveries(&self, id: MemberId) -> bool {
        self.in_flight.values().any(|f| f.member == id)
    }

    /// Whether `id` is attached.
    pub fn has_member(&self, id: MemberId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Whether the group has any member attached.
    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Tracks one stall condition: starts the clock when it begins, clears it when it ends, and
/// returns its duration each time it has lasted another `after` (restarting the clock, so a
/// long stall is reported once per `after`, not on every check).
fn overdue(
    since: &mut Option<Instant>,
    stalled: bool,
    now: Instant,
    after: Duration,
) -> Option<Duration> {
    if !stalled {
        *since = None;
        return None;
    }
    let start = *since.get_or_insert(now);
    let for_ = now.saturating_duration_since(start);
    if for_ >= after {
        *since = Some(now);
        return Some(for_);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbound;
    use tokio::sync::mpsc;

    fn config(max_attempts: u32) -> GroupConfig {
        GroupConfig {
            ordering: weir_protocol::GroupOrdering::Shared,
            ack_timeout_ms: 1_000,
            max_attempts,
            dead_letter_topic: "t.dlq".into(),
        }
    }

    /// Outbound memory that never refuses.
    fn unbounded() -> MemoryBudget {
        MemoryBudget::new(u64::MAX)
    }

    fn test_group(start: u64, max_in_flight: u32) -> Group {
        Group::with_config(start, max_in_flight, config(5))
    }

    fn member(sub: u64) -> (MemberId, Outbox, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(16);
        (MemberId { conn: 1, sub }, tx, rx)
    }

    fn seqs(plan: &Plan) -> Vec<(u64, u64, u32)> {
        plan.iter()
            .map(|p| (p.member.sub, p.seq, p.attempt))
            .collect()
    }

    #[test]
    fn never_plans_more_than_the_credit_granted() {
        let mut g = test_group(1, 100);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx, unbounded());
        let mut plan = Plan::new();
        g.plan(50, 1000, Instant::now(), &|_| Some(1), &mut plan);
        assert!(plan.is_empty(), "no credit, no delivery");
        g.grant(a, 10, 100).unwrap();
        g.plan(50, 1000, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(plan.len(), 10);
        g.plan(50, 1000, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(plan.len(), 10, "credit used up");
    }

    #[test]
    fn a_member_without_memory_for_the_next_message_is_passed_over_not_starved() {
        let mut g = test_group(1, 100);
        let (a, txa, _ra) = member(1);
        let (b, txb, _rb) = member(2);
        // a's connection has room for one 1 000-byte message (with its overhead), b's for many.
        let small = MemoryBudget::new(1_000 + MESSAGE_OVERHEAD);
        g.join(a, txa.clone(), txa, small.clone());
        g.join(b, txb.clone(), txb, unbounded());
        g.grant(a, 10, 100).unwrap();
        g.grant(b, 3, 100).unwrap();
        let mut plan = Plan::new();
        let blocked = g.plan(50, 100, Instant::now(), &|_| Some(1_000), &mut plan);
        assert!(blocked, "a had credit and messages waited, but no memory");
        let to_a = plan.iter().filter(|p| p.member == a).count();
        assert_eq!((to_a, plan.len()), (1, 4), "a got what fits, b its credit");
        assert_eq!(small.used(), 1_000 + MESSAGE_OVERHEAD);
        // While a's delivery is unwritten (its permit held), a gets nothing more...
        let unwritten = std::mem::take(&mut plan);
        let blocked = g.plan(50, 100, Instant::now(), &|_| Some(1_000), &mut plan);
        assert!(blocked && plan.is_empty());
        // ... and once it is written, a is planned again.
        drop(unwritten);
        assert_eq!(small.used(), 0);
        g.plan(50, 100, Instant::now(), &|_| Some(1_000), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 5, 1)]);
    }

    #[test]
    fn stops_at_max_in_flight_and_resumes_on_ack() {
        let mut g = test_group(1, 3);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx, unbounded());
        g.grant(a, 10, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(50, 1000, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 1, 1), (1, 2, 1), (1, 3, 1)]);
        assert_eq!(
            g.ack(a, &[2, 2, 99]),
            1,
            "duplicates and unknown seqs are ignored"
        );
        plan.clear();
        g.plan(50, 1000, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 4, 1)]);
        assert_eq!(g.floor(), 1);
    }

    #[test]
    fn members_share_round_robin_and_a_leaver_s_messages_are_redelivered() {
        let mut g = test_group(1, 100);
        let (a, txa, _ra) = member(1);
        let (b, txb, _rb) = member(2);
        g.join(a, txa.clone(), txa, unbounded());
        g.join(b, txb.clone(), txb, unbounded());
        g.grant(a, 2, 100).unwrap();
        g.grant(b, 2, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(10, 100, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(
            seqs(&plan),
            vec![(1, 1, 1), (2, 2, 1), (1, 3, 1), (2, 4, 1)]
        );
        assert_eq!(
            g.leave(a, Departure::Lost),
            Left {
                requeued: 2,
                dead: 0
            }
        );
        g.grant(b, 3, 100).unwrap();
        plan.clear();
        g.ack(b, &[2, 4]);
        g.plan(10, 100, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(2, 1, 2), (2, 3, 2), (2, 5, 1)]);
    }

    #[test]
    fn eviction_skips_the_cursor_forgets_unacked_and_owes_every_member_a_gap() {
        let mut g = test_group(1, 100);
        let (a, txa, _ra) = member(1);
        let (b, txb, _rb) = member(2);
        g.join(a, txa.clone(), txa, unbounded());
        g.join(b, txb.clone(), txb, unbounded());
        g.grant(a, 3, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(20, 100, Instant::now(), &|_| Some(1), &mut plan); // 1, 2, 3 in flight to a
        assert_eq!(g.evict_below(2), Some((1, 1)));
        assert_eq!(g.evict_below(6), Some((2, 5)));
        assert_eq!(g.evict_below(6), None, "nothing more needed below 6");
        assert_eq!(
            g.ack(a, &[2, 3]),
            0,
            "evicted messages are no longer in flight"
        );
        assert_eq!(g.floor(), 6);
        let mut gaps = Vec::new();
        g.take_gaps(&mut gaps);
        let got: Vec<_> = gaps.iter().map(|n| (n.member.sub, n.from, n.to)).collect();
        assert_eq!(got, vec![(1, 1, 5), (2, 1, 5)]);
        g.restore_gap(b, 1, 5);
        g.evict_below(8);
        gaps.clear();
        g.take_gaps(&mut gaps);
        let got: Vec<_> = gaps.iter().map(|n| (n.member.sub, n.from, n.to)).collect();
        assert_eq!(got, vec![(1, 6, 7), (2, 1, 7)]);
    }

    #[test]
    fn stalls_are_reported_once_per_period_and_only_while_work_waits() {
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut g = test_group(1, 2);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx, unbounded());
        let mut out = Vec::new();
        g.stalls(1, at(0), after, &mut out);
        g.stalls(1, at(100), after, &mut out);
        assert!(
            out.is_empty(),
            "no credit but nothing waiting is not a stall"
        );
        g.stalls(10, at(100), after, &mut out);
        g.stalls(10, at(129), after, &mut out);
        assert!(out.is_empty());
        g.stalls(10, at(130), after, &mut out);
        assert_eq!(
            out,
            vec![Stall::NoCredit {
                member: a,
                for_: Duration::from_secs(30)
            }]
        );
        out.clear();
        g.grant(a, 5, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(10, 100, Instant::now(), &|_| Some(1), &mut plan); // 2 in flight: the group is full
        g.stalls(10, at(131), after, &mut out);
        g.stalls(10, at(160), after, &mut out);
        assert!(out.is_empty());
        g.stalls(10, at(161), after, &mut out);
        g.stalls(10, at(170), after, &mut out);
        assert_eq!(
            out,
            vec![Stall::AtMaxInFlight {
                for_: Duration::from_secs(30)
            }]
        );
        out.clear();
        g.ack(a, &[1]);
        g.stalls(10, at(200), after, &mut out);
        assert!(out.is_empty(), "an ack ends the stall");
    }

    #[test]
    fn credit_is_bounded() {
        let mut g = test_group(1, 100);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx, unbounded());
        g.grant(a, 8, 10).unwrap();
        assert_eq!(
            g.grant(a, 3, 10),
            Err(GrantError::TooMuch {
                outstanding: 8,
                max: 10
            })
        );
        assert_eq!(
            g.grant(a, u32::MAX, u32::MAX),
            Err(GrantError::TooMuch {
                outstanding: 8,
                max: u32::MAX
            })
        );
        let stranger = MemberId { conn: 9, sub: 9 };
        assert_eq!(g.grant(stranger, 1, 10), Err(GrantError::UnknownMember));
    }

    #[test]
    fn record_and_recover_keep_unacked_messages_and_their_attempts() {
        let mut g = test_group(5, 100);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx, unbounded());
        g.grant(a, 4, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(20, 100, Instant::now(), &|_| Some(1), &mut plan);
        g.ack(a, &[6]);
        let record = g.record(Instant::now());
        assert_eq!(
            record,
            GroupRecord {
                cursor: 9,
                unacked: vec![(5, 1), (7, 1), (8, 1)],
                config: Some(config(5)),
                ..GroupRecord::default()
            }
        );
        let mut back = Group::recover(&record, 6, 100, &config(9), Instant::now());
        assert_eq!(
            back.floor(),
            7,
            "seq 5 is below the topic's first stored message"
        );
        let (b, txb, _rb) = member(2);
        back.join(b, txb.clone(), txb, unbounded());
        back.grant(b, 3, 100).unwrap();
        plan.clear();
        back.plan(20, 100, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(2, 7, 2), (2, 8, 2), (2, 9, 1)]);
    }

    /// A group with one member holding `credit`, and that member's id.
    fn with_member(max_attempts: u32, credit: u32) -> (Group, MemberId, mpsc::Receiver<Outbound>) {
        let mut g = Group::with_config(1, 100, config(max_attempts));
        let (a, tx, rx) = member(1);
        g.join(a, tx.clone(), tx, unbounded());
        g.grant(a, credit, 1000).unwrap();
        (g, a, rx)
    }

    #[test]
    fn an_unacked_delivery_returns_at_its_deadline_with_the_next_attempt() {
        let (mut g, a, _rx) = with_member(5, 10);
        let t0 = Instant::now();
        let mut plan = Plan::new();
        g.plan(2, 10, t0, &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 1, 1)]);
        assert_eq!(g.next_expiry(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            g.expire(t0 + Duration::from_millis(999)),
            Expired::default()
        );
        let done = g.expire(t0 + Duration::from_secs(1));
        assert_eq!((done.timed_out, done.dead), (1, 0));
        plan.clear();
        g.plan(2, 10, t0 + Duration::from_secs(1), &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 1, 2)], "redelivered with attempt 2");
        assert_eq!(g.ack(a, &[1]), 1);
        assert_eq!((g.next_expiry(), g.floor()), (None, 2));
    }

    #[test]
    fn progress_moves_the_deadline_and_only_for_the_member_holding_it() {
        let (mut g, a, _rx) = with_member(5, 10);
        let t0 = Instant::now();
        let mut plan = Plan::new();
        g.plan(2, 10, t0, &|_| Some(1), &mut plan);
        let other = MemberId { conn: 9, sub: 9 };
        assert_eq!(g.progress(other, &[1], t0 + Duration::from_millis(900)), 0);
        assert_eq!(g.progress(a, &[1], t0 + Duration::from_millis(900)), 1);
        assert_eq!(g.expire(t0 + Duration::from_secs(1)).timed_out, 0);
        assert_eq!(g.expire(t0 + Duration::from_millis(1900)).timed_out, 1);
    }

    #[test]
    fn a_nack_waits_its_delay_and_holds_its_slot_meanwhile() {
        let mut g = Group::with_config(1, 1, config(5));
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx, unbounded());
        g.grant(a, 10, 100).unwrap();
        let t0 = Instant::now();
        let mut plan = Plan::new();
        g.plan(5, 10, t0, &|_| Some(1), &mut plan);
        assert_eq!(g.nack(a, &[1, 7], Duration::from_millis(500), t0), (1, 0));
        plan.clear();
        g.plan(5, 10, t0, &|_| Some(1), &mut plan);
        assert!(plan.is_empty(), "the nacked message keeps the only slot");
        assert_eq!(g.expire(t0 + Duration::from_millis(499)).released, 0);
        assert_eq!(g.expire(t0 + Duration::from_millis(500)).released, 1);
        g.plan(
            5,
            10,
            t0 + Duration::from_millis(500),
            &|_| Some(1),
            &mut plan,
        );
        assert_eq!(
            seqs(&plan),
            vec![(1, 1, 2)],
            "redelivered no sooner than the delay"
        );
    }

    #[test]
    fn the_last_attempt_s_timeout_or_nack_and_any_term_make_dead_letters() {
        let (mut g, a, _rx) = with_member(2, 10);
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(5);
        let mut plan = Plan::new();
        g.plan(4, 10, t0, &|_| Some(1), &mut plan); // 1, 2, 3
        g.expire(late); // all three time out (attempt 1 of 2)
        plan.clear();
        g.plan(4, 10, late, &|_| Some(1), &mut plan); // attempt 2 of each
        assert_eq!(seqs(&plan), vec![(1, 1, 2), (1, 2, 2), (1, 3, 2)]);
        let done = g.expire(late + Duration::from_millis(999));
        assert_eq!(done.dead, 0);
        assert_eq!(
            g.nack(a, &[2], Duration::ZERO, late),
            (1, 1),
            "nacked on its last attempt"
        );
        assert_eq!(g.term(a, &[3], "bad input"), 1);
        let done = g.expire(late + Duration::from_secs(1));
        assert_eq!((done.timed_out, done.dead), (1, 1));
        let dead = g.dead_letters(10);
        let reasons: Vec<(u64, u32, &str)> = dead
            .iter()
            .map(|d| (d.seq, d.attempt, d.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (1, 2, "ack timeout on attempt 2"),
                (2, 2, "nacked on attempt 2"),
                (3, 2, "bad input")
            ]
        );
        assert_eq!(g.floor(), 1, "dead letters hold the floor until moved");
        assert!(g.dead_lettered(1) && g.dead_lettered(2) && g.dead_lettered(3));
        assert!(!g.dead_lettered(3));
        assert_eq!(g.floor(), 4);
        assert_eq!(g.info("g", 4, late).dead_lettered, 3);
    }

    #[test]
    fn a_member_lost_with_a_message_on_its_last_attempt_makes_a_consumer_lost_dead_letter() {
        let mut g = Group::with_config(1, 2, config(3));
        let t0 = Instant::now();
        let mut plan = Plan::new();
        // Three consumers in turn take message 1 and vanish without acking it.
        for sub in 1..=3u64 {
            let (m, tx, _rx) = member(sub);
            g.join(m, tx.clone(), tx, unbounded());
            g.grant(m, 1, 10).unwrap();
            plan.clear();
            g.plan(2, 10, t0, &|_| Some(1), &mut plan);
            assert_eq!(seqs(&plan), vec![(sub, 1, sub as u32)]);
            let left = g.leave(m, Departure::Lost);
            let expected = if sub < 3 {
                Left {
                    requeued: 1,
                    dead: 0,
                }
            } else {
                Left {
                    requeued: 0,
                    dead: 1,
                }
            };
            assert_eq!(left, expected, "consumer {sub}");
        }
        assert_eq!(
            g.dead_letters(10),
            vec![DeadLetter {
                seq: 1,
                attempt: 3,
                reason: CONSUMER_LOST.to_string(),
            }]
        );
        assert_eq!(CONSUMER_LOST, "consumer-lost");
        // No fourth delivery; the dead letter holds its slot (and the floor) until moved.
        let (d, tx, _rx) = member(4);
        g.join(d, tx.clone(), tx, unbounded());
        g.grant(d, 10, 10).unwrap();
        plan.clear();
        g.plan(10, 10, t0, &|_| Some(1), &mut plan);
        assert_eq!(
            seqs(&plan),
            vec![(4, 2, 1)],
            "max_in_flight 2: one slot left"
        );
        assert_eq!(g.floor(), 1);
        assert_eq!(
            g.record(Instant::now()).dead,
            vec![(1, 3, "consumer-lost".to_string())]
        );
        assert!(g.dead_lettered(1));
        assert_eq!(g.floor(), 2);
    }

    #[test]
    fn a_member_lost_before_the_last_attempt_has_its_messages_redelivered_with_the_next() {
        let mut g = Group::with_config(1, 100, config(3));
        let (a, txa, _ra) = member(1);
        g.join(a, txa.clone(), txa, unbounded());
        g.grant(a, 2, 10).unwrap();
        let t0 = Instant::now();
        let mut plan = Plan::new();
        g.plan(3, 10, t0, &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 1, 1), (1, 2, 1)]);
        g.ack(a, &[2]);
        assert_eq!(
            g.leave(a, Departure::Lost),
            Left {
                requeued: 1,
                dead: 0
            }
        );
        assert!(g.dead_letters(10).is_empty());
        let (b, txb, _rb) = member(2);
        g.join(b, txb.clone(), txb, unbounded());
        g.grant(b, 5, 10).unwrap();
        plan.clear();
        g.plan(3, 10, t0, &|_| Some(1), &mut plan);
        assert_eq!(
            seqs(&plan),
            vec![(2, 1, 2)],
            "attempt + 1, acked seq 2 stays acked"
        );
    }

    #[test]
    fn a_member_the_broker_closes_while_stopping_has_its_last_attempts_requeued_not_killed() {
        let (mut g, a, _rx) = with_member(1, 10);
        let mut plan = Plan::new();
        g.plan(3, 10, Instant::now(), &|_| Some(1), &mut plan);
        assert_eq!(
            g.leave(a, Departure::BrokerStopping),
            Left {
                requeued: 2,
                dead: 0
            }
        );
        assert!(g.dead_letters(10).is_empty());
        assert_eq!(g.record(Instant::now()).unacked, vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn a_delivery_that_could_not_be_sent_does_not_count_as_an_attempt() {
        let (mut g, a, _rx) = with_member(2, 10);
        let t0 = Instant::now();
        let mut plan = Plan::new();
        g.plan(2, 10, t0, &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 1, 1)]);
        g.undeliver(a, 1);
        plan.clear();
        g.plan(2, 10, t0, &|_| Some(1), &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 1, 1)], "still its first delivery");
    }

    #[test]
    fn nacks_and_dead_letters_survive_the_record() {
        let (mut g, a, _rx) = with_member(1, 10);
        let t0 = Instant::now();
        let mut plan = Plan::new();
        g.plan(4, 10, t0, &|_| Some(1), &mut plan);
        g.nack(a, &[1], Duration::ZERO, t0); // attempt 1 of 1: dead
        g.config.max_attempts = 5;
        g.nack(a, &[2], Duration::from_secs(60), t0);
        let rec = g.record(Instant::now());
        assert_eq!(rec.unacked, vec![(3, 1)]);
        assert_eq!(rec.dead, vec![(1, 1, "nacked on attempt 1".to_string())]);
        assert_eq!(rec.delayed.len(), 1);
        let back = Group::recover(&rec, 1, 100, &config(9), Instant::now());
        assert_eq!(
            back.config().max_attempts,
            5,
            "its own settings, not the defaults"
        );
        assert_eq!(back.dead_letters(10).len(), 1);
        assert_eq!(back.floor(), 1);
        let expiry = back
            .next_expiry()
            .expect("the nack delay is still scheduled");
        assert!(expiry > Instant::now() + Duration::from_secs(50));
    }
}
