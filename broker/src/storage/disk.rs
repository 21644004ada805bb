//! [`DiskBudget`]: the disk is a budget too. The broker's message data (every topic's log
//! segments) may take at most `storage.max_bytes`, and never the filesystem's last
//! `storage.min_free_bytes`: a publish that would pass either is refused
//! `Rejected{StorageFull}` naming the bound — checked when it is admitted (against the free space
//! last measured) and again before its commit (against a fresh measure) — so message data never
//! drives the disk to ENOSPC. Room comes back as consumers ack and whole segments are deleted.
//!
//! `storage.max_bytes` defaults to 90 % of the free space plus what the data directory's logs
//! already hold, taken when the broker starts ([`default_max_bytes`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use weir_protocol::Limit;

/// The disk budget of one broker. Shared by every topic's writer.
#[derive(Debug)]
pub struct DiskBudget {
    dir: PathBuf,
    max_bytes: u64,
    min_free: u64,
    /// Bytes the topics' logs take on disk now.
    stored: AtomicU64,
    /// Free space of the data directory's filesystem, as last measured.
    free: AtomicU64,
}

impl DiskBudget {
    /// A budget of `max_bytes` of message data in `dir`, leaving `min_free` bytes free on its
    /// filesystem. Nothing stored yet (topics add theirs as they open); the free space is
    /// measured now.
    pub fn new(dir: &Path, max_bytes: u64, min_free: u64) -> DiskBudget {
        let budget = DiskBudget {
            dir: dir.to_path_buf(),
            max_bytes,
            min_free,
            stored: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
        };
        budget.measure_free();
        budget
    }

    /// Whether `bytes` more may be stored, judged on the free space last measured; the bound
    /// they would pass otherwise.
    pub fn check(&self, bytes: u64) -> Result<(), Limit> {
        self.check_with_free(bytes, self.free.load(Ordering::Relaxed))
    }

    /// How many bytes may be stored now, measuring the free space afresh (a blocking
    /// syscall: call from a blocking thread), and the bound that caps it.
    pub fn room(&self) -> (u64, Limit) {
        let free = self.measure_free();
        let by_budget = self.max_bytes.saturating_sub(self.stored());
        let by_free = free.saturating_sub(self.min_free);
        if by_free < by_budget {
            (by_free, self.min_free_limit())
        } else {
            (by_budget, self.max_bytes_limit())
        }
    }

    fn check_with_free(&self, bytes: u64, free: u64) -> Result<(), Limit> {
        if self.stored().saturating_add(bytes) > self.max_bytes {
            return Err(self.max_bytes_limit());
        }
        if free.saturating_sub(bytes) < self.min_free {
            return Err(self.min_free_limit());
        }
        Ok(())
    }

    /// Records that the logs grew (`delta` > 0) or shrank on disk.
    pub fn stored_changed(&self, delta: i64) {
        if delta >= 0 {
            self.stored
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            let down = delta.unsigned_abs();
            let _ = self
                .stored
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.saturating_sub(down))
                });
        }
    }

    /// Bytes the topics' logs take on disk now.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// The free space of the data directory's filesystem, as last measured.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// `storage.max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// `storage.min_free_bytes`.
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Measures the free space afresh (blocking); a filesystem that cannot be measured counts as
    /// unlimited (logged), so a measuring failure never refuses work by itself.
    fn measure_free(&self) -> u64 {
        let free = match available_space(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure free disk space");
                u64::MAX
            }
        };
        self.free.store(free, Ordering::Relaxed);
        free
    }

    fn max_bytes_limit(&self) -> Limit {
        Limit::new("storage.max_bytes", self.max_bytes)
    }

    fn min_free_limit(&self) -> Limit {
        Limit::new("storage.min_free_bytes", self.min_free)
    }
}

/// The free space available to the broker on the filesystem holding `dir` (or, before `dir`
/// exists, its nearest existing ancestor).
pub fn available_space(dir: &Path) -> io::Result<u64> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("."));
    fs2::available_space(existing)
}

/// The default `storage.max_bytes`: what the logs already hold plus 90 % of the free space.
pub fn default_max_bytes(stored: u64, free: u64) -> u64 {
    stored.saturating_add(free / 10 * 9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_max_bytes_and_below_min_free_naming_each() {
        let dir = tempfile::tempdir().unwrap();
        let budget = DiskBudget::new(dir.path(), 1_000, 0);
        budget.stored_changed(900);
        assert_eq!(budget.check(100), Ok(()));
        assert_eq!(
            budget.check(101).unwrap_err().name,
            "storage.max_bytes",
            "one byte past the budget"
        );
        budget.stored_changed(-500);
        assert_eq!(budget.stored(), 400);
        assert_eq!(budget.check(600), Ok(()));
        let free = budget.free();
        assert!(free > 0 && free < u64::MAX, "the free space was measured");
        let tight = DiskBudget::new(dir.path(), u64::MAX, free.saturating_add(1 << 30));
        assert_eq!(tight.check(1).unwrap_err().name, "storage.min_free_bytes");
        let (room, limit) = tight.room();
        assert_eq!((room, limit.name.as_str()), (0, "storage.min_free_bytes"));
    }

    #[test]
    fn the_default_keeps_a_tenth_of_the_free_space() {
        assert_eq!(default_max_bytes(5, 1_000), 905);
        let nowhere = Path::new("/nonexistent/weir/data");
        assert!(
            available_space(nowhere).is_ok(),
            "measured at an existing ancestor"
        );
    }
}
