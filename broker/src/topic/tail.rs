//! A bounded cache of the most recently committed messages (headers and payload) of one
//! topic, so deliveries to subscribers that keep up are served from memory instead of disk.

use std::collections::VecDeque;
use std::time::Instant;

use crate::admission::{MemoryBudget, MemoryPermit};
use crate::storage::log::Message;

/// The share of the memory budget all caches together may fill: a cache only takes bytes while
/// the budget's use stays under `capacity / CACHE_SHARE`, so publishes always keep the rest.
const CACHE_SHARE: u64 = 2;

/// Consecutive `(seq, message, appended)` entries ending at the newest commit (`appended`: when
/// the commit that stored the message began, for the publish→deliver histogram). Holds at most
/// `max_bytes` of messages — payload plus header names and values, [`Message::memory_bytes`] — drawn
/// from the broker's memory budget: the oldest entries are evicted first, and when the budget's
/// use passes half its capacity the cache sheds entries instead of taking more, down to empty —
/// a cache yields memory, it never causes a refusal. A miss falls back to reading the log.
pub struct TailCache {
    entries: VecDeque<(u64, Message, Instant)>,
    /// Holds exactly the [`Message::memory_bytes`] of `entries`.
    permit: MemoryPermit,
    max_bytes: u64,
    /// The budget's use above which the cache takes nothing more.
    ceiling: u64,
}

impl TailCache {
    /// An empty cache bounded by `max_bytes` of messages (0 disables it), drawing from `budget`.
    pub fn new(max_bytes: u64, budget: &MemoryBudget) -> TailCache {
        TailCache {
            entries: VecDeque::new(),
            permit: budget.empty_permit(),
            max_bytes,
            ceiling: budget.capacity() / CACHE_SHARE,
        }
    }

    /// Adds the newest committed message. A gap in sequence numbers empties the cache first,
    /// keeping entries consecutive; a message larger than the whole cache, or one the budget
    /// has no room for even after shedding every entry, is not kept (the next push then starts
    /// afresh).
    pub fn push(&mut self, seq: u64, message: Message, appended: Instant) {
        if self
            .entries
            .back()
            .is_some_and(|(last, ..)| last + 1 != seq)
        {
            self.clear();
        }
        let len = message.memory_bytes();
        if len > self.max_bytes {
            self.clear();
            return;
        }
        while self.permit.bytes() + len > self.max_bytes {
            self.pop_front();
        }
        while !self.permit.try_grow_within(len, self.ceiling) {
            if self.entries.is_empty() {
                return;
            }
            self.pop_front();
        }
        self.entries.push_back((seq, message, appended));
    }

    /// The message (headers and payload) of `seq`, if cached.
    pub fn get(&self, seq: u64) -> Option<&Message> {
        self.entry(seq).map(|(m, _)| m)
    }

    /// The message of `seq` and when it was appended, if cached.
    pub fn entry(&self, seq: u64) -> Option<(&Message, Instant)> {
        let (first, ..) = self.entries.front()?;
        let index = usize::try_from(seq.checked_sub(*first)?).ok()?;
        self.entries.get(index).map(|(_, m, at)| (m, *at))
    }

    /// Drops every entry below `seq` (acked by every group, or evicted).
    pub fn trim_below(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|(s, ..)| *s < seq) {
            self.pop_front();
        }
    }

    /// Message bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.permit.bytes()
    }

    fn pop_front(&mut self) {
        if let Some((_, m, _)) = self.entries.pop_front() {
            self.permit.shrink(m.memory_bytes());
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.permit.shrink(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::log::{HEADER_OVERHEAD, MESSAGE_OVERHEAD};

    fn budget() -> MemoryBudget {
        MemoryBudget::new(10_000)
    }

    /// A message of `len` payload bytes and no headers.
    fn plain(len: usize) -> Message {
        Message {
            producer: None,
            headers: Vec::new(),
            payload: Bytes::from(vec![0u8; len]),
        }
    }

    /// The memory a cached `plain(len)` holds.
    fn held(len: u64) -> u64 {
        len + MESSAGE_OVERHEAD
    }

    #[test]
    fn holds_at_most_its_bound_and_evicts_oldest_first() {
        let budget = budget();
        let mut cache = TailCache::new(3 * held(3) + 1, &budget);
        for seq in 1..=5 {
            cache.push(seq, plain(3), Instant::now());
        }
        assert_eq!((cache.bytes(), budget.used()), (3 * held(3), 3 * held(3)));
        assert!(cache.get(2).is_none() && cache.get(3).is_some() && cache.get(5).is_some());
        assert!(cache.get(6).is_none());
        cache.trim_below(4);
        assert!(cache.get(3).is_none() && cache.get(4).is_some());
        assert_eq!(
            budget.used(),
            2 * held(3),
            "evicted entries give their bytes back"
        );
        drop(cache);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn counts_each_entry_s_overhead_so_empty_messages_are_bounded_too() {
        let budget = budget();
        let mut cache = TailCache::new(1_000, &budget);
        for seq in 1..=1_000 {
            cache.push(seq, plain(0), Instant::now());
        }
        assert_eq!(cache.entries.len() as u64, 1_000 / MESSAGE_OVERHEAD);
    }

    #[test]
    fn yields_to_the_budget_instead_of_taking_more_than_half() {
        let budget = budget();
        let mut cache = TailCache::new(8_000, &budget);
        for seq in 1..=6 {
            cache.push(
                seq,
                plain(1_000 - MESSAGE_OVERHEAD as usize),
                Instant::now(),
            );
        }
        assert_eq!(
            cache.bytes(),
            5_000,
            "at most half the budget, oldest shed first"
        );
        assert!(cache.get(1).is_none() && cache.get(2).is_some());
        // Others now hold 4 500: the next push sheds down to what still fits under 5 000.
        let publishes = budget.try_acquire(4_500).unwrap();
        cache.push(7, plain(400 - MESSAGE_OVERHEAD as usize), Instant::now());
        assert_eq!(cache.bytes(), 400);
        assert!(cache.get(6).is_none() && cache.get(7).is_some());
        // With no room at all, nothing is cached and nothing is refused.
        let more = budget.try_acquire(300).unwrap();
        cache.push(8, plain(400 - MESSAGE_OVERHEAD as usize), Instant::now());
        assert_eq!((cache.bytes(), budget.used()), (0, 4_800));
        drop((publishes, more));
    }

    #[test]
    fn a_gap_or_a_huge_payload_empties_it() {
        let budget = budget();
        let mut cache = TailCache::new(held(10), &budget);
        cache.push(1, plain(1), Instant::now());
        cache.push(3, plain(1), Instant::now());
        assert!(cache.get(1).is_none() && cache.get(3).is_some());
        cache.push(4, plain(11), Instant::now());
        assert_eq!((cache.bytes(), budget.used()), (0, 0));
    }

    #[test]
    fn keeps_headers_with_the_payload_and_counts_their_bytes() {
        let budget = budget();
        let message = Message {
            producer: None,
            headers: vec![("key".into(), "value".into()), ("key".into(), "ü".into())],
            payload: Bytes::from_static(b"body"),
        };
        // 4 payload + 13 header bytes, and the overhead of one entry and two headers.
        let one = 17 + MESSAGE_OVERHEAD + 2 * HEADER_OVERHEAD;
        assert_eq!(message.memory_bytes(), one);
        let mut cache = TailCache::new(one + one / 2, &budget);
        cache.push(1, message.clone(), Instant::now());
        assert_eq!(cache.get(1), Some(&message));
        assert_eq!((cache.bytes(), budget.used()), (one, one));
        // A second one would pass the bound: the first is evicted, its bytes given back.
        cache.push(2, message.clone(), Instant::now());
        assert!(cache.get(1).is_none());
        assert_eq!((cache.bytes(), budget.used()), (one, one));
        cache.trim_below(3);
        assert_eq!((cache.bytes(), budget.used()), (0, 0));
    }
}
