//! Sparse in-memory index of one segment: sequence → file offset, one entry per
//! `index_interval_bytes` of records.

/// Sparse index of one segment.
///
/// Entries are `(seq - base_seq, file offset)` pairs stored as `u32` each (8 bytes per entry), in
/// strictly increasing order of both. The segment's first record (at offset 0) is implicit. A
/// record whose relative sequence or offset does not fit in a `u32` (segments past 4 GiB) is not
/// indexed: lookups stay correct and scan forward from the last entry that fits.
///
/// Bound: at most one entry per `interval` bytes of records, so `segment size / interval` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SparseIndex {
    entries: Vec<(u32, u32)>,
}

impl SparseIndex {
    /// An empty index (only the implicit `(base_seq, 0)` entry).
    pub(crate) fn new() -> SparseIndex {
        SparseIndex::default()
    }

    /// Builds an index from stored entries; `None` unless they are strictly increasing in both
    /// components, below `record_count` / `valid_len` respectively, and not at offset 0.
    pub(crate) fn from_entries(
        entries: Vec<(u32, u32)>,
        record_count: u64,
        valid_len: u64,
    ) -> Option<SparseIndex> {
        let mut prev: Option<(u32, u32)> = None;
        for &(rel, off) in &entries {
            if u64::from(rel) >= record_count || u64::from(off) >= valid_len || off == 0 {
                return None;
            }
            if let Some((prel, poff)) = prev {
                if rel <= prel || off <= poff {
                    return None;
                }
            }
            prev = Some((rel, off));
        }
        Some(SparseIndex { entries })
    }

    /// The stored entries, in order.
    pub(crate) fn entries(&self) -> &[(u32, u32)] {
        &self.entries
    }

    /// Notes a record at `offset` with relative sequence `rel_seq`; adds an entry when it starts at
    /// least `interval` bytes after the previous entry (an `interval` of 0 indexes every record).
    pub(crate) fn observe(&mut self, rel_seq: u64, offset: u64, interval: u32) {
        let last_off = self.entries.last().map_or(0, |&(_, o)| u64::from(o));
        if offset == 0 || offset < last_off.saturating_add(u64::from(interval.max(1))) {
            return;
        }
        if let (Ok(rel), Ok(off)) = (u32::try_from(rel_seq), u32::try_from(offset)) {
            self.entries.push((rel, off));
        }
    }

    /// Nearest indexed position at or before relative sequence `rel_seq`: `(rel_seq, offset)`,
    /// `(0, 0)` when no entry precedes it.
    pub(crate) fn lookup(&self, rel_seq: u64) -> (u64, u64) {
        let n = self
            .entries
            .partition_point(|&(r, _)| u64::from(r) <= rel_seq);
        match n.checked_sub(1).and_then(|i| self.entries.get(i)) {
            Some(&(r, o)) => (u64::from(r), u64::from(o)),
            None => (0, 0),
        }
    }

    /// Drops every entry at or after `offset` (used when a segment is truncated).
    pub(crate) fn truncate_at(&mut self, offset: u64) {
        let keep = self
            .entries
            .partition_point(|&(_, o)| u64::from(o) < offset);
        self.entries.truncate(keep);
    }

    /// Number of entries (the implicit first one not counted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_is_sparse_and_lookup_finds_preceding_entry() {
        let mut idx = SparseIndex::new();
        // records of 100 bytes, interval 250: entries at offsets 300, 600, 900...
        for i in 0..10u64 {
            idx.observe(i, i * 100, 250);
        }
        assert_eq!(idx.entries(), &[(3, 300), (6, 600), (9, 900)]);
        assert_eq!(idx.lookup(0), (0, 0));
        assert_eq!(idx.lookup(2), (0, 0));
        assert_eq!(idx.lookup(3), (3, 300));
        assert_eq!(idx.lookup(5), (3, 300));
        assert_eq!(idx.lookup(100), (9, 900));
        idx.truncate_at(600);
        assert_eq!(idx.entries(), &[(3, 300)]);
    }

    #[test]
    fn from_entries_validates() {
        assert!(SparseIndex::from_entries(vec![(1, 10), (2, 20)], 3, 30).is_some());
        assert!(SparseIndex::from_entries(vec![(2, 10), (1, 20)], 3, 30).is_none());
        assert!(SparseIndex::from_entries(vec![(1, 10), (3, 20)], 3, 30).is_none());
        assert!(SparseIndex::from_entries(vec![(1, 30)], 3, 30).is_none());
        assert!(SparseIndex::from_entries(vec![(1, 0)], 3, 30).is_none());
    }
}
