//! Key order (`ordering = "key"`): messages with the same `weir-key` header go to one member at
//! a time, in sequence order. The next message of a key is delivered only once the previous
//! one is acked or dead-lettered (or evicted); a nack, an ack timeout or a member leaving
//! returns the message to the group still holding its key, so it is redelivered before the
//! key's successors. Messages of other keys, and messages without the header, pass a blocked
//! one: head-of-line blocking is per key only.
//!
//! A key is *owned* by the message of it the group has delivered and not finished with; a free
//! key's next message goes to whichever member the group's round-robin picks, so keys spread
//! over the members, and a key never has two messages in flight.
//!
//! Keys are compared by a 64-bit hash of their value: two keys that collide are ordered as
//! one (less parallelism, never a reordering).
//!
//! Bounds, all under the group's existing lock:
//! - the owners: at most one per message the group holds in its `max_in_flight` slots;
//! - the messages passed over because their key is owned (*waiting*): at most
//!   `groups.key_lookahead`. At the bound the group reads no new message until a blocked key
//!   frees (it waits, counted in `weir_key_lookahead_full_total`); messages waiting for a key
//!   are counted once each in `weir_key_waits_total`;
//! - the known keys: one per message in flight, waiting for (re)delivery, nacked or waiting
//!   for a key, plus at most one read-ahead batch ([`KEY_READ_BATCH`]) past the cursor.
//!
//! A plan visits the messages waiting for redelivery and, of those waiting for their key, only
//! each free key's oldest (a key that frees hands its place to its next message), never the
//! blocked ones: its cost follows what it delivers, not how many messages wait.
//!
//! A key the group does not know (the message is not in the topic's tail cache) stops the
//! plan at that message: the dispatcher reads the keys of the messages the group asks for
//! ([`Group::wanted_keys`]) from the log and hands them over with [`Group::learn_keys`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use weir_protocol::KEY_HEADER;

use super::{Group, Messages, Plan};

/// A key, as the 64-bit hash of its value.
pub type KeyHash = u64;

/// Most messages whose keys the group asks the dispatcher to read from the log at once.
pub const KEY_READ_BATCH: usize = 256;

/// The key of a message with `headers`: the hash of its first `weir-key` header's value, or
/// `None` without one (the message is not ordered).
pub fn key_of_headers(headers: &[(String, String)]) -> Option<KeyHash> {
    let (_, value) = headers.iter().find(|(name, _)| name == KEY_HEADER)?;
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    Some(hasher.finish())
}

/// A key group's bookkeeping (empty in a shared group).
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// The known key of each message the group tracks (in flight, waiting for redelivery,
    /// nacked, waiting for its key) and of those read ahead past the cursor.
    of: BTreeMap<u64, Option<KeyHash>>,
    /// The message owning each busy key.
    owner: HashMap<KeyHash, u64>,
    /// Messages passed over (the cursor moved past them) because their key was owned; at most
    /// `groups.key_lookahead`.
    pub(super) waiting: BTreeSet<u64>,
    /// The waiting messages of each key, so a key that frees finds its next one without a scan.
    by_key: HashMap<KeyHash, BTreeSet<u64>>,
    /// Waiting messages whose key was free when last looked at: each free key's oldest waiting
    /// message is here, so a plan visits these and never the blocked ones.
    unblocked: BTreeSet<u64>,
    /// Messages whose keys the last plan needed and did not know.
    wanted: Vec<u64>,
    /// Set on recovery: the owners of nacked messages must be found before anything is planned.
    pub(super) rebuild: bool,
    /// Messages that started waiting for their key, since last taken.
    waits: u64,
    /// Plans that stopped at `groups.key_lookahead`, since last taken.
    full: u64,
}

impl Keys {
    /// Forgets `seq` (acked, dead-lettered, evicted): the key it owned is free, and that key's
    /// oldest waiting message is next.
    pub(super) fn done(&mut self, seq: u64) {
        let key = self.of.remove(&seq).flatten();
        if let Some(key) = key {
            self.unwait(seq, key, true);
            if self.owner.get(&key) == Some(&seq) {
                self.owner.remove(&key);
                if let Some(next) = self.by_key.get(&key).and_then(|w| w.first()) {
                    self.unblocked.insert(*next);
                }
            }
        }
    }

    /// `seq` (of `key`, which is owned) waits for its key.
    fn wait(&mut self, seq: u64, key: KeyHash) {
        self.waiting.insert(seq);
        self.by_key.entry(key).or_default().insert(seq);
    }

    /// `seq` (of `key`) waits no more. If it was its free key's next and the key stays free
    /// (`stays_free`: it is not being delivered), the key's next waiting message takes its place.
    fn unwait(&mut self, seq: u64, key: KeyHash, stays_free: bool) {
        if !self.waiting.remove(&seq) {
            return;
        }
        let was_next = self.unblocked.remove(&seq);
        if let Some(w) = self.by_key.get_mut(&key) {
            w.remove(&seq);
            match w.first() {
                None => {
                    self.by_key.remove(&key);
                }
                Some(&next) if was_next && stays_free && !self.owner.contains_key(&key) => {
                    self.unblocked.insert(next);
                }
                Some(_) => {}
            }
        }
    }

    /// Forgets everything below `seq` (evicted): the keys it owned are free.
    pub(super) fn forget_below(&mut self, seq: u64) {
        self.of = self.of.split_off(&seq);
        self.waiting = self.waiting.split_off(&seq);
        self.owner.retain(|_, owner| *owner >= seq);
        self.by_key.retain(|_, w| {
            *w = w.split_off(&seq);
            !w.is_empty()
        });
        self.unblocked = self
            .by_key
            .iter()
            .filter(|(key, _)| !self.owner.contains_key(key))
            .filter_map(|(_, w)| w.first().copied())
            .collect();
    }

    /// Forgets the seqs `from..to` that `in_flight` does not hold (a hole of the log skipped).
    pub(super) fn forget_range(&mut self, from: u64, to: u64, in_flight: impl Fn(u64) -> bool) {
        let gone: Vec<u64> = self
            .of
            .range(from..to)
            .map(|(s, _)| *s)
            .chain(self.waiting.range(from..to).copied())
            .filter(|&s| !in_flight(s))
            .collect();
        for seq in gone {
            self.done(seq);
        }
    }

    /// The key of `seq`: known already, or from `key_of` (remembered), or `None` if unknown.
    fn lookup(
        &mut self,
        seq: u64,
        key_of: &dyn Fn(u64) -> Option<Option<KeyHash>>,
    ) -> Option<Option<KeyHash>> {
        if let Some(key) = self.of.get(&seq) {
            return Some(*key);
        }
        let key = key_of(seq)?;
        self.of.insert(seq, key);
        Some(key)
    }

    /// Whether `key` is owned by a message other than `seq`.
    fn blocks(&self, key: Option<KeyHash>, seq: u64) -> bool {
        key.and_then(|k| self.owner.get(&k))
            .is_some_and(|&owner| owner != seq)
    }
}

impl Group {
    /// The key-order plan (see [`Group::plan_from`]): messages waiting for redelivery, and
    /// each free key's oldest waiting message, first, lowest sequence first, then new ones; a
    /// message whose key is owned by another is passed over (a new one then waits, up to
    /// `key_lookahead` of them). Stops at a message whose key is unknown (see
    /// [`Group::wanted_keys`]).
    pub(super) fn plan_keyed(
        &mut self,
        committed_next: u64,
        budget: usize,
        now: Instant,
        messages: &Messages<'_>,
        out: &mut Plan,
    ) -> bool {
        self.keys.wanted.clear();
        if self.keys.rebuild && !self.rebuild_owners(messages) {
            return false;
        }
        let deadline = now + self.ack_timeout();
        let mut old: Vec<u64> = self
            .redeliver
            .range(..committed_next)
            .map(|(s, _)| *s)
            .chain(self.keys.unblocked.range(..committed_next).copied())
            .collect();
        old.sort_unstable();
        let mut next_old = 0;
        let mut planned = 0;
        let mut no_room: Vec<bool> = Vec::new();
        while planned < budget && self.held() < self.max_in_flight {
            let Some(i) = self.next_member_with_credit(&no_room) else {
                break;
            };
            let (seq, is_old) = match old.get(next_old) {
                Some(&seq) => (seq, true),
                None if self.cursor < committed_next => (self.cursor, false),
                None => break,
            };
            let Some(size) = (messages.size_of)(seq) else {
                self.take_candidate(seq, is_old);
                self.keys.done(seq);
                next_old += usize::from(is_old);
                self.dirty = true;
                continue;
            };
            let Some(key) = self.keys.lookup(seq, messages.key_of) else {
                self.want_keys(&old[next_old..], seq, is_old, committed_next, messages);
                break;
            };
            if self.keys.blocks(key, seq) {
                if is_old {
                    next_old += 1;
                    continue;
                }
                if self.keys.waiting.len() >= messages.key_lookahead {
                    self.keys.full += 1;
                    break;
                }
                // Blocked, so it has a key.
                self.keys.wait(seq, key.unwrap_or_default());
                self.keys.waits += 1;
                self.cursor += 1;
                self.dirty = true;
                continue;
            }
            let Some(memory) = self.reserve(i, size, &mut no_room) else {
                continue;
            };
            let previous_attempts = self.take_candidate(seq, is_old);
            next_old += usize::from(is_old);
            if let Some(k) = key {
                self.keys.owner.insert(k, seq);
            }
            self.hand_out(i, seq, previous_attempts, memory, now, deadline, out);
            planned += 1;
        }
        if planned > 0 {
            self.dirty = true;
        }
        no_room.contains(&true)
    }

    /// Takes `seq` out of where it waits (redelivery or its key, or the cursor's next), and
    /// returns how many deliveries it had.
    fn take_candidate(&mut self, seq: u64, is_old: bool) -> u32 {
        if !is_old {
            self.cursor += 1;
            return 0;
        }
        if let Some(Some(key)) = self.keys.of.get(&seq).copied() {
            self.keys.unwait(seq, key, false);
        }
        self.redeliver.remove(&seq).unwrap_or(0)
    }

    /// Records which keys the plan needs: from an old message, every old one still unknown;
    /// from a new one, the run of new ones after it. At most [`KEY_READ_BATCH`].
    fn want_keys(
        &mut self,
        old: &[u64],
        seq: u64,
        is_old: bool,
        committed_next: u64,
        messages: &Messages<'_>,
    ) {
        let wanted: Vec<u64> = if is_old {
            old.iter()
                .copied()
                .filter(|&s| self.keys.lookup(s, messages.key_of).is_none())
                .take(KEY_READ_BATCH)
                .collect()
        } else {
            (seq..committed_next.min(seq + KEY_READ_BATCH as u64)).collect()
        };
        self.keys.wanted = wanted;
    }

    /// After a recovery: every nacked message owns its key again (its successors must wait
    /// for it). Returns `false` while some of their keys are unknown (they are wanted).
    fn rebuild_owners(&mut self, messages: &Messages<'_>) -> bool {
        let delayed: Vec<u64> = self.delayed.iter().map(|(seq, _, _)| seq).collect();
        let mut unknown = Vec::new();
        for seq in delayed {
            match self.keys.lookup(seq, messages.key_of) {
                Some(Some(key)) => {
                    self.keys.owner.insert(key, seq);
                }
                Some(None) => {}
                None => unknown.push(seq),
            }
        }
        if unknown.is_empty() {
            self.keys.rebuild = false;
            return true;
        }
        unknown.truncate(KEY_READ_BATCH);
        self.keys.wanted = unknown;
        false
    }

    /// The messages whose keys the last plan needed and could not find (ascending): read them
    /// from the log and pass them to [`Group::learn_keys`], then plan again. At most
    /// [`KEY_READ_BATCH`]; empty for a shared group.
    pub fn wanted_keys(&self) -> &[u64] {
        &self.keys.wanted
    }

    /// Remembers the keys of messages read from the log (those the group still tracks or has
    /// not reached yet; others are ignored). Returns how many it took.
    pub fn learn_keys(&mut self, keys: impl IntoIterator<Item = (u64, Option<KeyHash>)>) -> usize {
        let mut learned = 0;
        for (seq, key) in keys {
            let tracked = seq >= self.cursor
                || self.redeliver.contains_key(&seq)
                || self.keys.waiting.contains(&seq)
                || self.delayed.contains(seq)
                || self.in_flight.contains_key(&seq);
            if tracked && self.keys.of.insert(seq, key).is_none() {
                learned += 1;
            }
        }
        self.keys.wanted.retain(|s| !self.keys.of.contains_key(s));
        learned
    }

    /// Takes the counts since the last call: messages that started waiting for their key, and
    /// plans that stopped at `groups.key_lookahead`.
    pub fn take_key_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.keys.waits),
            std::mem::take(&mut self.keys.full),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use tokio::sync::mpsc;
    use weir_protocol::{GroupConfig, GroupOrdering};

    use super::*;
    use crate::admission::MemoryBudget;
    use crate::group::{Departure, MemberId};
    use crate::outbox::Outbound;

    /// The key of each message, seq 1 first (`""` for no key).
    const KEYS: &[&str] = &["a", "a", "b", "", "a", "b"];

    fn key(seq: u64) -> Option<Option<KeyHash>> {
        let name = KEYS.get(usize::try_from(seq).ok()?.checked_sub(1)?)?;
        let headers = vec![(KEY_HEADER.to_string(), name.to_string())];
        Some(
            (!name.is_empty())
                .then(|| key_of_headers(&headers))
                .flatten(),
        )
    }

    fn keyed_group(max_attempts: u32) -> Group {
        let config = GroupConfig {
            ordering: GroupOrdering::Key,
            ack_timeout_ms: 1_000,
            max_attempts,
            dead_letter_topic: "t.dlq".into(),
        };
        Group::with_config(1, 100, config)
    }

    fn join(g: &mut Group, sub: u64, credit: u32) -> (MemberId, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(16);
        let id = MemberId { conn: 1, sub };
        g.join(id, tx.clone(), tx, MemoryBudget::new(u64::MAX));
        g.grant(id, credit, 1_000).unwrap();
        (id, rx)
    }

    /// Plans with [`KEYS`] (or `key_of`) and returns `(member, seq, attempt)` of each delivery.
    fn plan_with(
        g: &mut Group,
        lookahead: usize,
        key_of: &dyn Fn(u64) -> Option<Option<KeyHash>>,
    ) -> Vec<(u64, u64, u32)> {
        let messages = Messages {
            size_of: &|_| Some(1),
            key_of,
            key_lookahead: lookahead,
        };
        let mut plan = Plan::new();
        g.plan_from(
            KEYS.len() as u64 + 1,
            100,
            Instant::now(),
            &messages,
            &mut plan,
        );
        plan.iter()
            .map(|p| (p.member.sub, p.seq, p.attempt))
            .collect()
    }

    fn plan(g: &mut Group) -> Vec<(u64, u64, u32)> {
        plan_with(g, 100, &key)
    }

    #[test]
    fn a_key_s_next_message_waits_for_the_ack_while_other_keys_pass() {
        let mut g = keyed_group(5);
        let (a, _ra) = join(&mut g, 1, 10);
        let (b, _rb) = join(&mut g, 2, 10);
        assert_eq!(plan(&mut g), vec![(1, 1, 1), (2, 3, 1), (1, 4, 1)]);
        assert_eq!(
            g.take_key_counts(),
            (3, 0),
            "2, 5 and 6 wait for keys a and b"
        );
        assert_eq!(g.floor(), 1);
        assert_eq!(g.ack(b, &[3]), 1);
        assert_eq!(
            plan(&mut g),
            vec![(2, 6, 1)],
            "b is free: its next message goes"
        );
        assert_eq!(g.ack(a, &[1]), 1);
        assert_eq!(plan(&mut g), vec![(1, 2, 1)]);
        assert!(plan(&mut g).is_empty(), "5 waits for 2");
        assert_eq!(g.ack(a, &[2]), 1);
        assert_eq!(plan(&mut g), vec![(2, 5, 1)]);
        assert_eq!(g.take_key_counts(), (0, 0), "each wait counted once");
    }

    #[test]
    fn a_nacked_or_timed_out_message_keeps_its_key_until_acked_or_dead_lettered() {
        let mut g = keyed_group(3);
        let (a, _ra) = join(&mut g, 1, 10);
        let t0 = Instant::now();
        assert_eq!(plan(&mut g), vec![(1, 1, 1), (1, 3, 1), (1, 4, 1)]);
        g.ack(a, &[3, 4]);
        g.nack(a, &[1], Duration::from_secs(10), t0);
        assert_eq!(plan(&mut g), vec![(1, 6, 1)], "2 waits while 1 is nacked");
        g.ack(a, &[6]);
        g.expire(t0 + Duration::from_secs(10));
        assert_eq!(plan(&mut g), vec![(1, 1, 2)], "1 again, before 2");
        g.expire(t0 + Duration::from_secs(60));
        assert_eq!(
            plan(&mut g),
            vec![(1, 1, 3)],
            "timed out: 1 again, before 2"
        );
        assert_eq!(
            g.nack(a, &[1], Duration::ZERO, t0),
            (1, 1),
            "dead on attempt 3"
        );
        assert_eq!(
            plan(&mut g),
            vec![(1, 2, 1)],
            "dead-lettered: the key is free"
        );
        assert_eq!(g.term(a, &[2], "bad"), 1);
        assert_eq!(plan(&mut g), vec![(1, 5, 1)]);
    }

    #[test]
    fn a_leaving_member_s_message_goes_to_another_before_its_successors() {
        let mut g = keyed_group(5);
        let (a, _ra) = join(&mut g, 1, 1);
        assert_eq!(plan(&mut g), vec![(1, 1, 1)]);
        let (b, _rb) = join(&mut g, 2, 10);
        assert_eq!(plan(&mut g), vec![(2, 3, 1), (2, 4, 1)]);
        g.leave(a, Departure::Lost);
        assert_eq!(plan(&mut g), vec![(2, 1, 2)], "1 first, its key still held");
        assert_eq!(g.ack(b, &[1, 3]), 2);
        assert_eq!(plan(&mut g), vec![(2, 2, 1), (2, 6, 1)]);
    }

    #[test]
    fn at_the_lookahead_bound_the_group_reads_no_further_until_a_key_frees() {
        let mut g = keyed_group(5);
        let (a, _ra) = join(&mut g, 1, 10);
        // 1 (a) goes; 2 (a) waits; 3 (b) goes; 4 goes; 5 (a) would be the second to wait.
        assert_eq!(
            plan_with(&mut g, 1, &key),
            vec![(1, 1, 1), (1, 3, 1), (1, 4, 1)]
        );
        assert_eq!(g.take_key_counts(), (1, 1));
        assert!(
            plan_with(&mut g, 1, &key).is_empty(),
            "6 (b, free) is not reached"
        );
        assert_eq!(g.ack(a, &[1, 3]), 2);
        assert_eq!(plan_with(&mut g, 1, &key), vec![(1, 2, 1), (1, 6, 1)]);
        assert_eq!(
            g.take_key_counts(),
            (1, 1),
            "5 waits for 2 now; the plan before stopped at the bound"
        );
    }

    #[test]
    fn an_unknown_key_stops_the_plan_until_it_is_learned() {
        let mut g = keyed_group(5);
        let (_a, _ra) = join(&mut g, 1, 10);
        let cache_from_3 = |seq: u64| if seq < 3 { None } else { key(seq) };
        assert!(plan_with(&mut g, 100, &cache_from_3).is_empty());
        assert_eq!(g.wanted_keys(), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(g.learn_keys([(1, key(1).unwrap())]), 1);
        assert_eq!(g.wanted_keys(), &[2, 3, 4, 5, 6]);
        assert_eq!(plan_with(&mut g, 100, &cache_from_3), vec![(1, 1, 1)]);
        assert_eq!(g.wanted_keys(), &[2, 3, 4, 5, 6]);
        g.learn_keys([(2, key(2).unwrap())]);
        assert_eq!(
            plan_with(&mut g, 100, &cache_from_3),
            vec![(1, 3, 1), (1, 4, 1)]
        );
        assert!(g.wanted_keys().is_empty());
    }

    #[test]
    fn waiting_messages_and_nacked_owners_survive_a_restart() {
        let mut g = keyed_group(5);
        let (a, _ra) = join(&mut g, 1, 10);
        let t0 = Instant::now();
        assert_eq!(plan(&mut g), vec![(1, 1, 1), (1, 3, 1), (1, 4, 1)]);
        g.nack(a, &[1], Duration::from_secs(60), t0);
        g.ack(a, &[3, 4]);
        let record = g.record(t0);
        assert_eq!(record.unacked, vec![(2, 0), (5, 0), (6, 0)]);
        let config = g.config().clone();
        let mut back = Group::recover(&record, 1, 100, &config, t0);
        let (_b, _rb) = join(&mut back, 2, 10);
        assert!(plan_with(&mut back, 100, &|_| None).is_empty());
        assert_eq!(back.wanted_keys(), &[1], "the nacked message's key first");
        back.learn_keys([(1, key(1).unwrap())]);
        assert_eq!(
            plan(&mut back),
            vec![(2, 6, 1)],
            "2 and 5 wait for 1 (nacked); 6 goes"
        );
    }

    /// A seeded random run of plans, acks, nacks, terms, timeouts, restarts and members leaving
    /// and joining: every delivery of a key is the oldest message of it not yet finished (acked or
    /// dead), or that message again, and a key never has two messages in flight.
    #[test]
    fn a_random_run_never_reorders_a_key_nor_holds_two_of_it_in_flight() {
        for seed in 1..=32 {
            random_run(seed);
        }
    }

    /// One run of [`a_random_run_never_reorders_a_key_nor_holds_two_of_it_in_flight`].
    fn random_run(seed: u64) {
        const N: u64 = 300;
        let key_name = |seq: u64| (!seq.is_multiple_of(13)).then(|| format!("k{}", seq * 7 % 5));
        let key_of = |seq: u64| {
            let headers: Vec<(String, String)> = key_name(seq)
                .map(|k| vec![(KEY_HEADER.to_string(), k)])
                .unwrap_or_default();
            Some(key_of_headers(&headers))
        };
        let mut g = Group::with_config(
            1,
            20,
            GroupConfig {
                ordering: GroupOrdering::Key,
                ack_timeout_ms: 1_000,
                max_attempts: 3,
                dead_letter_topic: "t.dlq".into(),
            },
        );
        let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut roll = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut members: Vec<(MemberId, mpsc::Receiver<Outbound>)> = Vec::new();
        let mut next_sub = 0;
        // In flight: seq → (member, attempt). Finished: acked or dead.
        let mut in_flight: BTreeMap<u64, (MemberId, u32)> = BTreeMap::new();
        let mut finished = BTreeSet::new();
        let mut now = Instant::now();
        let mut step = 0u64;
        while finished.len() < N as usize {
            step += 1;
            assert!(step < 100_000, "seed {seed}: the run finishes");
            let committed = (step / 3 + 1).min(N + 1);
            // The dead-letter mover: dead letters leave the group (freeing their slots).
            for dead in g.dead_letters(100) {
                assert!(g.dead_lettered(dead.seq));
            }
            match roll(10) {
                0 if members.len() < 3 => {
                    next_sub += 1;
                    members.push(join(&mut g, next_sub, 1 + roll(6) as u32));
                }
                1 if !members.is_empty() && roll(4) == 0 => {
                    let (id, _) = members.swap_remove(roll(members.len() as u64) as usize);
                    g.leave(id, Departure::Lost);
                    let theirs: Vec<(u64, u32)> = in_flight
                        .iter()
                        .filter(|(_, (m, _))| *m == id)
                        .map(|(s, (_, a))| (*s, *a))
                        .collect();
                    for (seq, attempt) in theirs {
                        in_flight.remove(&seq);
                        if attempt >= 3 {
                            finished.insert(seq);
                        }
                    }
                }
                2..=4 if !in_flight.is_empty() => {
                    let pick = roll(in_flight.len() as u64) as usize;
                    let (&seq, &(member, attempt)) = in_flight.iter().nth(pick).unwrap();
                    in_flight.remove(&seq);
                    match roll(6) {
                        0 => {
                            let delay = Duration::from_secs(roll(2));
                            let (_, dead) = g.nack(member, &[seq], delay, now);
                            assert_eq!(dead == 1, attempt >= 3);
                            if dead == 1 {
                                finished.insert(seq);
                            }
                        }
                        1 => {
                            assert_eq!(g.term(member, &[seq], "bad"), 1);
                            finished.insert(seq);
                        }
                        _ => {
                            assert_eq!(g.ack(member, &[seq]), 1);
                            finished.insert(seq);
                        }
                    }
                }
                6 if roll(20) == 0 => {
                    // A restart: members gone, unacked messages back in the group.
                    let config = g.config().clone();
                    g = Group::recover(&g.record(now), 1, 20, &config, now);
                    members.clear();
                    in_flight.clear();
                }
                5 if roll(8) == 0 => {
                    now += Duration::from_secs(2);
                    g.expire(now);
                    for (seq, (_, attempt)) in std::mem::take(&mut in_flight) {
                        if attempt >= 3 {
                            finished.insert(seq);
                        }
                    }
                }
                _ => {
                    for (id, _) in &members {
                        let _ = g.grant(*id, roll(3) as u32, 8);
                    }
                    // Sometimes the tail cache has lost a key: the group asks for it, and the
                    // dispatcher reads it (or not yet).
                    let cached = roll(3);
                    let cache = |seq: u64| if seq % 3 == cached { None } else { key_of(seq) };
                    let messages = Messages {
                        size_of: &|_| Some(1),
                        key_of: &cache,
                        key_lookahead: 6,
                    };
                    let mut plan = Plan::new();
                    g.plan_from(committed, 5, now, &messages, &mut plan);
                    if roll(2) == 0 {
                        let read: Vec<(u64, Option<KeyHash>)> = g
                            .wanted_keys()
                            .iter()
                            .map(|&seq| (seq, key_of(seq).unwrap()))
                            .collect();
                        g.learn_keys(read);
                    }
                    for p in &plan {
                        if let Some(key) = key_name(p.seq) {
                            let oldest = (1..committed).find(|&s| {
                                key_name(s).as_ref() == Some(&key) && !finished.contains(&s)
                            });
                            assert_eq!(Some(p.seq), oldest, "seed {seed}: key {key} out of order");
                            assert!(
                                !in_flight
                                    .keys()
                                    .any(|&s| key_name(s).as_ref() == Some(&key)),
                                "seed {seed}: two of key {key} in flight"
                            );
                        }
                        assert!(
                            !finished.contains(&p.seq),
                            "{} delivered after it finished",
                            p.seq
                        );
                        in_flight.insert(p.seq, (p.member, p.attempt));
                    }
                    // The ack deadlines would return these; drop the frames the plan queued.
                    for (_, rx) in &mut members {
                        while rx.try_recv().is_ok() {}
                    }
                }
            }
        }
        for dead in g.dead_letters(100) {
            g.dead_lettered(dead.seq);
        }
        assert_eq!(g.floor(), N + 1, "everything finished: {:?}", g.record(now));
    }
}
