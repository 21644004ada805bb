//! A group: one durable subscription of a topic. It owns the cursor, the in-flight table, the
//! messages waiting for redelivery, and the members with the credit each has granted.
//!
//! Pure bookkeeping, no I/O: the topic's dispatcher asks a group for a delivery [`Plan`]
//! under the topic lock, then sends the frames outside it.
//!
//! Bounds: `in_flight` never exceeds `max_in_flight` (delivery pauses at it until acks
//! arrive), a member never gets more deliveries than its outstanding credit, and credit
//! outstanding never exceeds `max_credit` (a larger grant is refused). Messages waiting for
//! redelivery came out of `in_flight`, so they are bounded by `max_in_flight` too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use weir_protocol::GroupInfo;

pub use crate::outbox::Outbox;
use crate::storage::state::GroupRecord;

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
}

/// One delivery decided by [`Group::plan`]: send `seq` (attempt `attempt`) to `sub` via `outbox`.
pub struct Planned {
    /// Where to send the delivery.
    pub outbox: Outbox,
    /// The member it goes to.
    pub member: MemberId,
    /// The message.
    pub seq: u64,
    /// Which delivery of this message to the group this is (1 = first).
    pub attempt: u32,
}

/// A list of deliveries to send.
pub type Plan = Vec<Planned>;

/// A grant of credit that cannot be honoured.
#[derive(Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The member is not attached to this group.
    UnknownMember,
    /// Outstanding credit would pass `max_credit`.
    TooMuch {
        /// Credit the member has outstanding now.
        outstanding: u32,
        /// The bound.
        max: u32,
    },
}

/// One group's delivery state.
pub struct Group {
    cursor: u64,
    in_flight: BTreeMap<u64, InFlight>,
    redeliver: BTreeMap<u64, u32>,
    members: Vec<Member>,
    next_member: usize,
    max_in_flight: usize,
    dirty: bool,
    /// Since when the group has been at `max_in_flight` (cleared when it drops below).
    full_since: Option<Instant>,
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
        /// The member.
        member: MemberId,
        /// How long.
        for_: Duration,
    },
}

impl Group {
    /// A new group whose first delivery will be `start`.
    pub fn new(start: u64, max_in_flight: u32) -> Group {
        Group {
            cursor: start,
            in_flight: BTreeMap::new(),
            redeliver: BTreeMap::new(),
            members: Vec::new(),
            next_member: 0,
            max_in_flight: max_in_flight as usize,
            dirty: true,
            full_since: None,
        }
    }

    /// A group recovered from its stored record after a restart. Messages below `first_seq`
    /// are gone from the topic (acked by everyone), so they are dropped from the record; every
    /// unacked message becomes due for redelivery, keeping its delivery count.
    pub fn recover(record: &GroupRecord, first_seq: u64, max_in_flight: u32) -> Group {
        let mut group = Group::new(record.cursor.max(first_seq), max_in_flight);
        group.redeliver = record
            .unacked
            .iter()
            .filter(|(seq, _)| *seq >= first_seq && *seq < group.cursor)
            .copied()
            .collect();
        group
    }

    /// The record to persist. Bounded by `max_in_flight` entries.
    pub fn record(&self) -> GroupRecord {
        let mut unacked: Vec<(u64, u32)> = self
            .in_flight
            .iter()
            .map(|(seq, f)| (*seq, f.attempt))
            .chain(self.redeliver.iter().map(|(s, a)| (*s, *a)))
            .collect();
        unacked.sort_unstable();
        GroupRecord {
            cursor: self.cursor,
            unacked,
        }
    }

    /// Returns whether the group changed since the last call, and clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The lowest sequence the group still needs: everything below it is acked.
    pub fn floor(&self) -> u64 {
        let lowest_in_flight = self.in_flight.keys().next().copied().unwrap_or(u64::MAX);
        let lowest_redeliver = self.redeliver.keys().next().copied().unwrap_or(u64::MAX);
        self.cursor.min(lowest_in_flight).min(lowest_redeliver)
    }

    /// Attaches a member with no credit yet (see [`Group::grant`]). Deliveries go to `outbox`
    /// (sized by credit); `Gap` notices to `notices`, so they never take a delivery's room.
    pub fn join(&mut self, id: MemberId, outbox: Outbox, notices: Outbox) {
        self.members.push(Member {
            id,
            credit: 0,
            outbox,
            notices,
            gap: None,
            starved_since: None,
        });
    }

    /// Detaches a member; its in-flight messages go back to the group for redelivery. Returns
    /// how many were requeued.
    pub fn leave(&mut self, id: MemberId) -> usize {
        self.members.retain(|m| m.id != id);
        let theirs: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.member == id)
            .map(|(s, _)| *s)
            .collect();
        for seq in &theirs {
            self.undeliver(id, *seq);
        }
        theirs.len()
    }

    /// Returns a planned delivery that could not be sent to the group (a no-op if `seq` is no
    /// longer in flight to `id`, e.g. because the member already left).
    pub fn undeliver(&mut self, id: MemberId, seq: u64) {
        if self.in_flight.get(&seq).is_some_and(|f| f.member == id) {
            if let Some(f) = self.in_flight.remove(&seq) {
                self.redeliver.insert(seq, f.attempt);
                self.dirty = true;
            }
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
        self.redeliver = self.redeliver.split_off(&first_seq);
        self.cursor = self.cursor.max(first_seq);
        self.dirty = true;
        let range = (needed_from, first_seq - 1);
        for m in &mut self.members {
            m.gap = Some(match m.gap {
                Some((from, to)) => (from.min(range.0), to.max(range.1)),
                None => range,
            });
        }
        Some(range)
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
        let waiting = !self.redeliver.is_empty() || self.cursor < committed_next;
        let full = self.in_flight.len() >= self.max_in_flight;
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

    /// Acks messages delivered to `id`. Sequences not in flight to `id` (duplicates, or
    /// messages already requeued) are ignored. Returns how many were acked.
    pub fn ack(&mut self, id: MemberId, seqs: &[u64]) -> usize {
        let mut acked = 0;
        for seq in seqs {
            if self.in_flight.get(seq).is_some_and(|f| f.member == id) {
                self.in_flight.remove(seq);
                acked += 1;
            }
        }
        if acked > 0 {
            self.dirty = true;
        }
        acked
    }

    /// Decides up to `budget` deliveries: redeliveries first (lowest sequence first), then new
    /// messages below `committed_next`, round-robin across members with credit, while the group
    /// is under `max_in_flight`. Each planned message is in flight from here on.
    pub fn plan(&mut self, committed_next: u64, budget: usize, out: &mut Plan) {
        let n = self.members.len();
        let mut planned = 0;
        while planned < budget && self.in_flight.len() < self.max_in_flight {
            let Some(i) = (0..n)
                .map(|k| (self.next_member + k) % n)
                .find(|&i| self.members[i].credit > 0)
            else {
                break;
            };
            let (seq, previous_attempts) = if let Some(entry) = self.redeliver.pop_first() {
                entry
            } else if self.cursor < committed_next {
                self.cursor += 1;
                (self.cursor - 1, 0)
            } else {
                break;
            };
            let member = &mut self.members[i];
            member.credit -= 1;
            let attempt = previous_attempts + 1;
            self.in_flight.insert(
                seq,
                InFlight {
                    member: member.id,
                    attempt,
                },
            );
            out.push(Planned {
                outbox: member.outbox.clone(),
                member: member.id,
                seq,
                attempt,
            });
            self.next_member = (i + 1) % n;
            planned += 1;
        }
        if planned > 0 {
            self.dirty = true;
        }
    }

    /// A snapshot for `ListTopics`.
    pub fn info(&self, name: &str, committed_next: u64) -> GroupInfo {
        GroupInfo {
            name: name.to_string(),
            in_flight: self.in_flight.len() as u64,
            pending: committed_next.saturating_sub(self.cursor) + self.redeliver.len() as u64,
            members: self.members.len() as u32,
            credit: self.members.iter().map(|m| u64::from(m.credit)).sum(),
            config: weir_protocol::GroupConfig::default(),
            timed_out: 0,
            dead_lettered: 0,
            dead_letter_held: 0,
            oldest_unacked_ms: None,
        }
    }

    /// Whether the group has any member attached.
    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }
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
        let mut g = Group::new(1, 100);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx);
        let mut plan = Plan::new();
        g.plan(50, 1000, &mut plan);
        assert!(plan.is_empty(), "no credit, no delivery");
        g.grant(a, 10, 100).unwrap();
        g.plan(50, 1000, &mut plan);
        assert_eq!(plan.len(), 10);
        g.plan(50, 1000, &mut plan);
        assert_eq!(plan.len(), 10, "credit used up");
    }

    #[test]
    fn stops_at_max_in_flight_and_resumes_on_ack() {
        let mut g = Group::new(1, 3);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx);
        g.grant(a, 10, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(50, 1000, &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 1, 1), (1, 2, 1), (1, 3, 1)]);
        assert_eq!(
            g.ack(a, &[2, 2, 99]),
            1,
            "duplicates and unknown seqs are ignored"
        );
        plan.clear();
        g.plan(50, 1000, &mut plan);
        assert_eq!(seqs(&plan), vec![(1, 4, 1)]);
        assert_eq!(g.floor(), 1);
    }

    #[test]
    fn members_share_round_robin_and_a_leaver_s_messages_are_redelivered() {
        let mut g = Group::new(1, 100);
        let (a, txa, _ra) = member(1);
        let (b, txb, _rb) = member(2);
        g.join(a, txa.clone(), txa);
        g.join(b, txb.clone(), txb);
        g.grant(a, 2, 100).unwrap();
        g.grant(b, 2, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(10, 100, &mut plan);
        assert_eq!(
            seqs(&plan),
            vec![(1, 1, 1), (2, 2, 1), (1, 3, 1), (2, 4, 1)]
        );
        assert_eq!(g.leave(a), 2);
        g.grant(b, 3, 100).unwrap();
        plan.clear();
        g.ack(b, &[2, 4]);
        g.plan(10, 100, &mut plan);
        assert_eq!(seqs(&plan), vec![(2, 1, 2), (2, 3, 2), (2, 5, 1)]);
    }

    #[test]
    fn eviction_skips_the_cursor_forgets_unacked_and_owes_every_member_a_gap() {
        let mut g = Group::new(1, 100);
        let (a, txa, _ra) = member(1);
        let (b, txb, _rb) = member(2);
        g.join(a, txa.clone(), txa);
        g.join(b, txb.clone(), txb);
        g.grant(a, 3, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(20, 100, &mut plan); // 1, 2, 3 in flight to a
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
        let mut g = Group::new(1, 2);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx);
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
        g.plan(10, 100, &mut plan); // 2 in flight: the group is full
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
        let mut g = Group::new(1, 100);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx);
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
        let mut g = Group::new(5, 100);
        let (a, tx, _rx) = member(1);
        g.join(a, tx.clone(), tx);
        g.grant(a, 4, 100).unwrap();
        let mut plan = Plan::new();
        g.plan(20, 100, &mut plan);
        g.ack(a, &[6]);
        let record = g.record();
        assert_eq!(
            record,
            GroupRecord {
                cursor: 9,
                unacked: vec![(5, 1), (7, 1), (8, 1)]
            }
        );
        let mut back = Group::recover(&record, 6, 100);
        assert_eq!(
            back.floor(),
            7,
            "seq 5 is below the topic's first stored message"
        );
        let (b, txb, _rb) = member(2);
        back.join(b, txb.clone(), txb);
        back.grant(b, 3, 100).unwrap();
        plan.clear();
        back.plan(20, 100, &mut plan);
        assert_eq!(seqs(&plan), vec![(2, 7, 2), (2, 8, 2), (2, 9, 1)]);
    }
}
