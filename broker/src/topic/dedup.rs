//! A topic's dedup window: which producer sequences and `weir-msg-id`s it has stored (and as
//! which sequence), so a publish sent again — a retry after a lost confirm, a reconnect, a
//! producer restarted with its id — is answered with the original's sequence and stores
//! nothing.
//!
//! Bounds, each a `[dedup]` setting:
//! - `window_ms` (2 min): a stored message is remembered this long after its commit; a
//!   producer not heard from for this long is forgotten whole. A publish sent again after
//!   that is stored again (as NATS's duplicate window does).
//! - `max_producers` (10 000): past it the producer heard from least recently is forgotten,
//!   counted in `weir_dedup_producers_evicted_total`.
//! - `max_ids` (100 000): explicit ids remembered; past it the oldest is forgotten, counted in
//!   `weir_dedup_ids_evicted_total`. Ids are kept as 128-bit hashes, so a long id costs no
//!   more memory than a short one.
//! - per producer at most [`MAX_RUNS`] runs of consecutive sequences: a producer's
//!   sequences stored consecutively (a batch, or one message after another) are one run. A
//!   sequence older than the runs kept (pruned by the cap or the window) while the producer is
//!   remembered is refused `SequenceTooOld`: the broker cannot tell a duplicate from a late
//!   retry.
//!
//! Memory: about 100 bytes per producer plus 40 per run kept, and about 64 per id, so at the
//! defaults at most ~7 MiB per topic when every bound is reached at once. What a window holds
//! is charged to the broker's memory budget (its inbound half) as it grows and given back as
//! it shrinks — never refused by it, as the bounds above cap it; a budget it fills refuses
//! publishes (`Overloaded`), which stops it growing.
//!
//! A publish admitted and not yet committed is *pending*: the same stamp or id again waits for
//! it and is answered with its sequence once it is committed (never stored a second time). A
//! pending publish that ends refused or failed is forgotten again, and what waited on it is
//! refused `DuplicatePending` with a short retry hint: sent again, it is stored then. At most
//! one waiter per publish a connection has unconfirmed (`max_unconfirmed`) waits.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hasher;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weir_protocol::{Limit, ProducerStamp, RejectReason, MSG_ID_HEADER};

use super::AppendError;
use crate::admission::budget::MemoryPermit;
use crate::refusal::Refusal;
use crate::storage::log::Message;

/// A duplicate waiting for its pending original's sequence.
pub(crate) type Waiter = oneshot::Sender<Result<u64, AppendError>>;

/// The retry hint of a duplicate whose original was not stored after all (about one commit).
pub(crate) const DUPLICATE_PENDING_RETRY_MS: u64 = 10;

/// Most runs of consecutive sequences kept per producer (see the module docs).
pub(crate) const MAX_RUNS: usize = 16;

/// Memory charged per producer remembered (its map entries and order slot).
const PRODUCER_BYTES: u64 = 104;
/// Memory charged per run kept.
const RUN_BYTES: u64 = 40;
/// Memory charged per id remembered (map entry and order slot).
const ID_BYTES: u64 = 64;

/// The bounds of one topic's window (the `[dedup]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    /// How long a stored message, or a quiet producer, is remembered.
    pub window: Duration,
    /// Most producers remembered.
    pub max_producers: usize,
    /// Most explicit ids remembered.
    pub max_ids: usize,
}

impl From<&crate::config::DedupConfig> for DedupLimits {
    fn from(c: &crate::config::DedupConfig) -> Self {
        DedupLimits {
            window: Duration::from_millis(c.window_ms),
            max_producers: c.max_producers as usize,
            max_ids: c.max_ids as usize,
        }
    }
}

/// What identifies a message to the window: its producer stamp, the hash of its
/// `weir-msg-id`, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DedupKey {
    producer: Option<ProducerStamp>,
    msg_id: Option<u128>,
}

impl DedupKey {
    /// The key of `message`, `None` when it has neither a stamp nor an id (the window does not
    /// see it).
    pub(crate) fn of(message: &Message) -> Option<DedupKey> {
        let msg_id = message
            .headers
            .iter()
            .find(|(name, _)| name == MSG_ID_HEADER)
            .map(|(_, id)| id.as_str());
        Self::new(message.producer, msg_id)
    }

    /// The key of a message with `producer` and explicit id `msg_id` (its first
    /// `weir-msg-id` header), `None` when it has neither.
    pub(crate) fn new(producer: Option<ProducerStamp>, msg_id: Option<&str>) -> Option<DedupKey> {
        let msg_id = msg_id.map(id_hash);
        (producer.is_some() || msg_id.is_some()).then_some(DedupKey { producer, msg_id })
    }
}

/// A 128-bit hash of an explicit id: two SipHash passes with different prefixes. Computed
/// again from the stored header at start, so it need not be stable across builds.
fn id_hash(id: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        h.write_u8(salt);
        h.write(id.as_bytes());
        h.finish()
    };
    u128::from(half(0)) << 64 | u128::from(half(1))
}

/// What the window knows of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing: store it.
    New,
    /// Stored already, as this sequence.
    Duplicate(u64),
    /// Admitted already and not yet committed.
    Pending,
    /// Its producer sequence is older than what the window keeps of that producer.
    TooOld,
}

/// Consecutive producer sequences stored as consecutive topic sequences.
#[derive(Debug, Clone, Copy)]
struct Run {
    producer_seq: u64,
    seq: u64,
    count: u64,
    at: Instant,
}

impl Run {
    fn seq_of(&self, producer_seq: u64) -> Option<u64> {
        let offset = producer_seq.checked_sub(self.producer_seq)?;
        (offset < self.count).then(|| self.seq + offset)
    }
}

/// What the window keeps of one producer.
#[derive(Debug)]
struct Producer {
    runs: VecDeque<Run>,
    /// Sequences admitted and not yet committed, with the duplicates waiting for them.
    pending: BTreeMap<u64, Vec<Waiter>>,
    /// The highest sequence forgotten while the producer is remembered (pruned runs).
    forgotten_to: Option<u64>,
    /// Its place in the least-recently-heard order.
    tick: u64,
    heard: Instant,
}

/// An explicit id: the sequence it is stored as, `None` while pending (with the duplicates
/// waiting for it).
#[derive(Debug)]
struct IdEntry {
    seq: Option<u64>,
    at: Instant,
    waiters: Vec<Waiter>,
}

/// Counts of what the window did, since the topic opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DedupCounts {
    /// Publishes answered as duplicates.
    pub duplicates: u64,
    /// Producers forgotten at `max_producers`.
    pub producers_evicted: u64,
    /// Ids forgotten at `max_ids`.
    pub ids_evicted: u64,
    /// Ids and quiet producers forgotten at the end of the window.
    pub expired: u64,
}

/// One topic's dedup window (see the module docs).
#[derive(Debug)]
pub(crate) struct Dedup {
    limits: DedupLimits,
    producers: HashMap<u128, Producer>,
    /// Producers by the tick they were last heard at, least recent first.
    heard: BTreeMap<u64, u128>,
    next_tick: u64,
    ids: HashMap<u128, IdEntry>,
    /// Ids in the order they were first seen, with that time (an entry whose id was forgotten
    /// or seen again is stale and skipped; compacted past twice `max_ids`).
    id_order: VecDeque<(u128, Instant)>,
    /// Runs kept over all producers.
    runs: usize,
    /// What the window holds, charged to the broker's memory budget.
    memory: MemoryPermit,
    pub(crate) counts: DedupCounts,
}

impl Dedup {
    /// An empty window with `limits`, charging what it holds to `memory` (an empty permit of
    /// the broker's budget).
    pub(crate) fn new(limits: DedupLimits, memory: MemoryPermit) -> Dedup {
        Dedup {
            limits,
            producers: HashMap::new(),
            heard: BTreeMap::new(),
            next_tick: 0,
            ids: HashMap::new(),
            id_order: VecDeque::new(),
            runs: 0,
            memory,
            counts: DedupCounts::default(),
        }
    }

    /// Producers and ids remembered now.
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.producers.len(), self.ids.len())
    }

    /// Bytes of memory the window is charged for now.
    pub(crate) fn memory_bytes(&self) -> u64 {
        self.memory.bytes()
    }

    /// Brings the memory charged in line with what the window holds.
    fn recharge(&mut self) {
        let held = self.producers.len() as u64 * PRODUCER_BYTES
            + self.runs as u64 * RUN_BYTES
            + self.id_order.len().max(self.ids.len()) as u64 * ID_BYTES;
        let charged = self.memory.bytes();
        if held > charged {
            self.memory.charge(held - charged);
        } else {
            self.memory.shrink(charged - held);
        }
    }

    /// What the window knows of a message with `key`, at `now` (forgetting what expired).
    pub(crate) fn check(&mut self, key: &DedupKey, now: Instant) -> Seen {
        self.expire(now);
        self.recharge();
        if let Some(stamp) = key.producer {
            if let Some(p) = self.producers.get(&stamp.id) {
                if p.pending.contains_key(&stamp.seq) {
                    return Seen::Pending;
                }
                if let Some(seq) = p.runs.iter().find_map(|r| r.seq_of(stamp.seq)) {
                    return Seen::Duplicate(seq);
                }
                if p.forgotten_to.is_some_and(|f| stamp.seq <= f) {
                    return Seen::TooOld;
                }
            }
        }
        match key.msg_id.and_then(|id| self.ids.get(&id)) {
            Some(IdEntry { seq: Some(seq), .. }) => Seen::Duplicate(*seq),
            Some(IdEntry { seq: None, .. }) => Seen::Pending,
            None => Seen::New,
        }
    }

    /// Counts a publish answered as a duplicate.
    pub(crate) fn answered_duplicate(&mut self) {
        self.counts.duplicates += 1;
    }

    /// `waiter` waits for the pending original of `key` ([`Seen::Pending`]): it gets the
    /// original's sequence once committed, or a `DuplicatePending` refusal if it is not.
    pub(crate) fn wait_for_original(&mut self, key: &DedupKey, waiter: Waiter) {
        let waiters = match (key.producer, key.msg_id) {
            (Some(stamp), _)
                if self
                    .producers
                    .get(&stamp.id)
                    .is_some_and(|p| p.pending.contains_key(&stamp.seq)) =>
            {
                self.producers
                    .get_mut(&stamp.id)
                    .and_then(|p| p.pending.get_mut(&stamp.seq))
            }
            (_, Some(id)) => self.ids.get_mut(&id).map(|e| &mut e.waiters),
            _ => None,
        };
        match waiters {
            Some(waiters) => waiters.push(waiter),
            None => answer(vec![waiter], Err(self.not_stored())),
        }
    }

    /// The refusal of a duplicate whose original was not stored: sent again, it is.
    fn not_stored(&self) -> AppendError {
        let window_ms = self.limits.window.as_millis() as u64;
        AppendError::Refused(Refusal::new(
            RejectReason::DuplicatePending,
            Limit::new("dedup_window_ms", window_ms),
            Some(DUPLICATE_PENDING_RETRY_MS),
        ))
    }

    /// A message with `key` was admitted (queued or parked) at `now`.
    pub(crate) fn pending(&mut self, key: &DedupKey, now: Instant) {
        if let Some(stamp) = key.producer {
            self.producer(stamp.id, now)
                .pending
                .entry(stamp.seq)
                .or_default();
        }
        if let Some(id) = key.msg_id {
            self.remember_id(id, None, now);
        }
        self.recharge();
    }

    /// A pending message with `key` ended without being stored (refused, failed).
    pub(crate) fn forget(&mut self, key: &DedupKey) {
        let mut waiters = Vec::new();
        if let Some(stamp) = key.producer {
            if let Some(p) = self.producers.get_mut(&stamp.id) {
                waiters.extend(p.pending.remove(&stamp.seq).into_iter().flatten());
            }
        }
        if let Some(id) = key.msg_id {
            if let Entry::Occupied(e) = self.ids.entry(id) {
                if e.get().seq.is_none() {
                    waiters.extend(e.remove().waiters);
                }
            }
        }
        if !waiters.is_empty() {
            answer(waiters, Err(self.not_stored()));
        }
    }

    /// The message with `key` is stored as `seq`, committed at `at` (at start, from its
    /// record's timestamp; nothing is remembered of a message older than the window).
    pub(crate) fn stored(&mut self, key: &DedupKey, seq: u64, at: Instant, now: Instant) {
        if at + self.limits.window <= now {
            return;
        }
        if let Some(stamp) = key.producer {
            let window = self.limits.window;
            let p = self.producer(stamp.id, now);
            if let Some(waiters) = p.pending.remove(&stamp.seq) {
                answer(waiters, Ok(seq));
            }
            let added = match p.runs.back_mut() {
                Some(last)
                    if last.producer_seq.checked_add(last.count) == Some(stamp.seq)
                        && last.seq + last.count == seq =>
                {
                    last.count += 1;
                    last.at = at;
                    0
                }
                _ => {
                    p.runs.push_back(Run {
                        producer_seq: stamp.seq,
                        seq,
                        count: 1,
                        at,
                    });
                    1
                }
            };
            let pruned = prune_runs(p, now, window);
            self.runs = self.runs + added - pruned;
        }
        if let Some(id) = key.msg_id {
            self.remember_id(id, Some(seq), at);
        }
        self.recharge();
    }

    /// The producer `id`, heard from at `now`: remembered (forgetting the least recently
    /// heard one at `max_producers`) and moved to the most recent place.
    fn producer(&mut self, id: u128, now: Instant) -> &mut Producer {
        // The one heard from last (a producer streaming alone) keeps its place: no reordering.
        let latest = self.next_tick.checked_sub(1);
        if self
            .producers
            .get(&id)
            .is_some_and(|p| Some(p.tick) == latest)
        {
            let p = self.producers.get_mut(&id).expect("checked above");
            p.heard = now;
            return p;
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(p) = self.producers.get(&id) {
            self.heard.remove(&p.tick);
        } else if self.producers.len() >= self.limits.max_producers.max(1) {
            if let Some((_, oldest)) = self.heard.pop_first() {
                if let Some(evicted) = self.producers.remove(&oldest) {
                    self.runs -= evicted.runs.len();
                }
                self.counts.producers_evicted += 1;
            }
        }
        self.heard.insert(tick, id);
        let p = self.producers.entry(id).or_insert_with(|| Producer {
            runs: VecDeque::new(),
            pending: BTreeMap::new(),
            forgotten_to: None,
            tick,
            heard: now,
        });
        p.tick = tick;
        p.heard = now;
        p
    }

    /// Remembers id `id` as `seq` (or pending), forgetting the oldest id at `max_ids`.
    fn remember_id(&mut self, id: u128, seq: Option<u64>, at: Instant) {
        if let Some(entry) = self.ids.get_mut(&id) {
            if let Some(seq) = seq.filter(|_| entry.seq.is_none()) {
                entry.seq = Some(seq);
                answer(std::mem::take(&mut entry.waiters), Ok(seq));
            }
            return;
        }
        while self.ids.len() >= self.limits.max_ids.max(1) {
            let Some((oldest, first_seen)) = self.id_order.pop_front() else {
                break;
            };
            if self.ids.get(&oldest).is_some_and(|e| e.at == first_seen) {
                let evicted = self.ids.remove(&oldest).map(|e| e.waiters);
                answer(evicted.unwrap_or_default(), Err(self.not_stored()));
                self.counts.ids_evicted += 1;
            }
        }
        self.ids.insert(
            id,
            IdEntry {
                seq,
                at,
                waiters: Vec::new(),
            },
        );
        self.id_order.push_back((id, at));
        if self.id_order.len() > 2 * self.limits.max_ids.max(1) {
            let ids = &self.ids;
            self.id_order
                .retain(|(id, at)| ids.get(id).is_some_and(|e| e.at == *at));
        }
    }

    /// Forgets stored ids and quiet producers older than the window (pending ones stay until
    /// their commit or failure).
    fn expire(&mut self, now: Instant) {
        let window = self.limits.window;
        while let Some(&(id, at)) = self.id_order.front() {
            if at + window > now {
                break;
            }
            self.id_order.pop_front();
            if let Entry::Occupied(e) = self.ids.entry(id) {
                if e.get().at == at && e.get().seq.is_some() {
                    e.remove();
                    self.counts.expired += 1;
                }
            }
        }
        while let Some((&tick, &id)) = self.heard.first_key_value() {
            let quiet = self
                .producers
                .get(&id)
                .is_some_and(|p| p.heard + window <= now && p.pending.is_empty());
            if !quiet {
                break;
            }
            self.heard.remove(&tick);
            if let Some(quiet) = self.producers.remove(&id) {
                self.runs -= quiet.runs.len();
            }
            self.counts.expired += 1;
        }
    }
}

/// Answers every waiter with `outcome`.
fn answer(waiters: Vec<Waiter>, outcome: Result<u64, AppendError>) {
    for waiter in waiters {
        let _ = waiter.send(outcome.clone());
    }
}

/// Drops a producer's runs past [`MAX_RUNS`] or older than `window`, oldest first,
/// remembering the highest sequence forgotten. Returns how many it dropped.
fn prune_runs(p: &mut Producer, now: Instant, window: Duration) -> usize {
    let mut pruned = 0;
    while let Some(first) = p.runs.front() {
        let expired = first.at + window <= now;
        if p.runs.len() <= MAX_RUNS && !expired {
            break;
        }
        let last = first.producer_seq + (first.count - 1);
        p.forgotten_to = Some(p.forgotten_to.map_or(last, |f| f.max(last)));
        p.runs.pop_front();
        pruned += 1;
    }
    pruned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> MemoryPermit {
        crate::admission::MemoryBudget::new(u64::MAX).empty_permit()
    }

    fn limits() -> DedupLimits {
        DedupLimits {
            window: Duration::from_secs(120),
            max_producers: 3,
            max_ids: 3,
        }
    }

    fn stamp(id: u128, seq: u64) -> DedupKey {
        DedupKey {
            producer: Some(ProducerStamp { id, seq }),
            msg_id: None,
        }
    }

    fn msg_id(id: &str) -> DedupKey {
        DedupKey::new(None, Some(id)).unwrap()
    }

    #[test]
    fn a_stored_stamp_is_a_duplicate_with_its_seq_and_a_pending_one_is_pending() {
        let now = Instant::now();
        let mut d = Dedup::new(limits(), memory());
        for i in 0..5 {
            assert_eq!(d.check(&stamp(1, i), now), Seen::New);
            d.pending(&stamp(1, i), now);
            assert_eq!(d.check(&stamp(1, i), now), Seen::Pending);
        }
        for i in 0..4 {
            d.stored(&stamp(1, i), 100 + i, now, now);
        }
        assert_eq!(d.check(&stamp(1, 2), now), Seen::Duplicate(102));
        assert_eq!(d.check(&stamp(1, 4), now), Seen::Pending);
        d.forget(&stamp(1, 4));
        assert_eq!(
            d.check(&stamp(1, 4), now),
            Seen::New,
            "a refused one may come again"
        );
        assert_eq!(
            d.producers[&1].runs.len(),
            1,
            "consecutive ones are one run"
        );
        assert_eq!(d.check(&stamp(2, 0), now), Seen::New, "another producer");
    }

    #[test]
    fn a_duplicate_of_a_pending_original_gets_its_seq_or_a_refusal_if_it_is_not_stored() {
        let now = Instant::now();
        let mut d = Dedup::new(limits(), memory());
        let (a, b) = (stamp(1, 0), msg_id("b"));
        d.pending(&a, now);
        d.pending(&b, now);
        let (waiter_a, mut got_a) = oneshot::channel();
        let (waiter_b, mut got_b) = oneshot::channel();
        d.wait_for_original(&a, waiter_a);
        d.wait_for_original(&b, waiter_b);
        assert!(
            got_a.try_recv().is_err() && got_b.try_recv().is_err(),
            "still waiting"
        );
        d.stored(&a, 7, now, now);
        assert_eq!(got_a.try_recv().unwrap().unwrap(), 7);
        d.forget(&b);
        match got_b.try_recv().unwrap() {
            Err(AppendError::Refused(r)) => {
                assert_eq!(r.reason, RejectReason::DuplicatePending);
                assert_eq!(r.retry_after_ms, Some(DUPLICATE_PENDING_RETRY_MS));
            }
            other => panic!("expected a DuplicatePending refusal, got {other:?}"),
        }
        assert_eq!(d.check(&b, now), Seen::New, "sent again, it is stored");
    }

    #[test]
    fn a_hole_left_by_a_refusal_is_filled_by_its_retry_and_old_sequences_are_too_old() {
        let now = Instant::now();
        let mut d = Dedup::new(limits(), memory());
        d.stored(&stamp(1, 0), 10, now, now);
        d.stored(&stamp(1, 2), 11, now, now);
        assert_eq!(
            d.check(&stamp(1, 1), now),
            Seen::New,
            "1 was refused: its retry stores"
        );
        d.stored(&stamp(1, 1), 12, now, now);
        assert_eq!(d.check(&stamp(1, 1), now), Seen::Duplicate(12));
        // Past MAX_RUNS runs (every other sequence), the oldest are forgotten.
        for i in 0..(MAX_RUNS as u64 + 4) {
            d.stored(&stamp(1, 100 + 2 * i), 20 + i, now, now);
        }
        assert_eq!(d.producers[&1].runs.len(), MAX_RUNS);
        assert_eq!(d.check(&stamp(1, 0), now), Seen::TooOld);
        assert_eq!(d.check(&stamp(1, 100), now), Seen::TooOld);
        assert_eq!(d.check(&stamp(1, 138), now), Seen::Duplicate(39));
        assert_eq!(
            d.check(&stamp(1, 139), now),
            Seen::New,
            "a hole between runs"
        );
    }

    #[test]
    fn explicit_ids_are_bounded_oldest_first_and_counted() {
        let now = Instant::now();
        let mut d = Dedup::new(limits(), memory());
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            assert_eq!(d.check(&msg_id(id), now), Seen::New);
            d.pending(&msg_id(id), now);
            d.stored(&msg_id(id), i as u64, now, now);
        }
        assert_eq!(d.len().1, 3);
        assert_eq!(d.counts.ids_evicted, 1);
        assert_eq!(d.check(&msg_id("a"), now), Seen::New, "the oldest went");
        assert_eq!(d.check(&msg_id("d"), now), Seen::Duplicate(3));
        // A forgotten pending id leaves a stale order entry; the order stays bounded.
        for i in 0..50 {
            let key = msg_id(&format!("x{i}"));
            d.pending(&key, now);
            d.forget(&key);
        }
        assert!(d.id_order.len() <= 2 * 3 + 1, "{}", d.id_order.len());
        assert_eq!(d.check(&msg_id("d"), now), Seen::Duplicate(3));
    }

    #[test]
    fn what_the_window_holds_is_charged_to_the_budget_and_given_back() {
        let budget = crate::admission::MemoryBudget::new(1 << 20);
        let t0 = Instant::now();
        let mut d = Dedup::new(limits(), budget.empty_permit());
        d.stored(&stamp(1, 0), 1, t0, t0);
        d.stored(&stamp(1, 5), 2, t0, t0);
        d.stored(&msg_id("a"), 3, t0, t0);
        let held = PRODUCER_BYTES + 2 * RUN_BYTES + ID_BYTES;
        assert_eq!((d.memory_bytes(), budget.used()), (held, held));
        // Past the window everything is forgotten and the memory given back.
        d.check(&stamp(9, 0), t0 + Duration::from_secs(121));
        assert_eq!((d.len(), budget.used()), ((0, 0), 0));
    }

    #[test]
    fn producers_past_the_bound_evict_the_least_recently_heard_and_count_it() {
        let now = Instant::now();
        let mut d = Dedup::new(limits(), memory());
        for p in 1..=3 {
            d.stored(&stamp(p, 0), p as u64, now, now);
        }
        d.stored(&stamp(1, 1), 10, now, now); // 1 heard again: 2 is now the least recent
        d.stored(&stamp(4, 0), 11, now, now);
        assert_eq!(d.counts.producers_evicted, 1);
        assert_eq!(d.check(&stamp(2, 0), now), Seen::New, "2 was forgotten");
        assert_eq!(d.check(&stamp(1, 0), now), Seen::Duplicate(1));
        assert_eq!(d.len().0, 3);
    }

    #[test]
    fn the_window_forgets_stored_messages_and_quiet_producers_but_not_pending_ones() {
        let t0 = Instant::now();
        let mut d = Dedup::new(limits(), memory());
        d.stored(&stamp(1, 0), 1, t0, t0);
        d.stored(&msg_id("a"), 2, t0, t0);
        d.pending(&stamp(2, 0), t0);
        let later = t0 + Duration::from_secs(121);
        assert_eq!(d.check(&stamp(1, 0), later), Seen::New);
        assert_eq!(d.check(&msg_id("a"), later), Seen::New);
        assert_eq!(d.counts.expired, 2, "producer 1 and id a");
        assert_eq!(d.check(&stamp(2, 0), later), Seen::Pending);
        // A record older than the window, read at start, is not remembered.
        d.stored(&stamp(3, 0), 3, t0, later);
        assert_eq!(d.check(&stamp(3, 0), later), Seen::New);
        // An active producer's runs older than the window make older sequences too old.
        d.stored(&stamp(4, 0), 4, t0, t0);
        d.stored(&stamp(4, 5), 5, later, later);
        assert_eq!(d.check(&stamp(4, 0), later), Seen::TooOld);
    }
}
