//! A bounded cache of the most recently committed payloads of one topic, so deliveries to
//! subscribers that keep up are served from memory instead of disk.

use std::collections::VecDeque;

use bytes::Bytes;

/// Consecutive `(seq, payload)` entries ending at the newest commit. Holds at most `max_bytes`
/// of payload: the oldest entries are evicted first, and a miss falls back to reading the log.
pub struct TailCache {
    entries: VecDeque<(u64, Bytes)>,
    bytes: u64,
    max_bytes: u64,
}

impl TailCache {
    /// An empty cache bounded by `max_bytes` of payload (0 disables it).
    pub fn new(max_bytes: u64) -> TailCache {
        TailCache {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds the newest committed message. A gap in sequence numbers empties the cache first,
    /// keeping entries consecutive; a payload larger than the whole cache is not kept.
    pub fn push(&mut self, seq: u64, payload: Bytes) {
        if self.entries.back().is_some_and(|(last, _)| last + 1 != seq) {
            self.entries.clear();
            self.bytes = 0;
        }
        let len = payload.len() as u64;
        if len > self.max_bytes {
            self.entries.clear();
            self.bytes = 0;
            return;
        }
        self.entries.push_back((seq, payload));
        self.bytes += len;
        while self.bytes > self.max_bytes {
            self.pop_front();
        }
    }

    /// The payload of `seq`, if cached.
    pub fn get(&self, seq: u64) -> Option<Bytes> {
        let (first, _) = self.entries.front()?;
        let index = usize::try_from(seq.checked_sub(*first)?).ok()?;
        self.entries.get(index).map(|(_, p)| p.clone())
    }

    /// Drops every entry below `seq` (acked by every group, or evicted).
    pub fn trim_below(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|(s, _)| *s < seq) {
            self.pop_front();
        }
    }

    /// Payload bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn pop_front(&mut self) {
        if let Some((_, p)) = self.entries.pop_front() {
            self.bytes -= p.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_bound_and_evicts_oldest_first() {
        let mut cache = TailCache::new(10);
        for seq in 1..=5 {
            cache.push(seq, Bytes::from(vec![0u8; 3]));
        }
        assert_eq!(cache.bytes(), 9);
        assert!(cache.get(2).is_none() && cache.get(3).is_some() && cache.get(5).is_some());
        assert!(cache.get(6).is_none());
        cache.trim_below(4);
        assert!(cache.get(3).is_none() && cache.get(4).is_some());
    }

    #[test]
    fn a_gap_or_a_huge_payload_empties_it() {
        let mut cache = TailCache::new(10);
        cache.push(1, Bytes::from_static(b"a"));
        cache.push(3, Bytes::from_static(b"b"));
        assert!(cache.get(1).is_none() && cache.get(3).is_some());
        cache.push(4, Bytes::from(vec![0u8; 11]));
        assert_eq!(cache.bytes(), 0);
    }
}
