//! Rate-limited logging decisions: at most one line per key (say, topic and reason) per
//! period, and how many refusals each line stands for — "(+N suppressed)".

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::loom::sync::Mutex;

/// Decides, per key, whether an event gets a log line now: at most one line per key per
/// `period`, counting the events suppressed in between. Time is passed in.
///
/// Bounded: at most `capacity` keys are remembered. A new key past the bound first makes room
/// by forgetting the keys that have been quiet for a period, and if none has, the key whose
/// last line is the oldest. A forgotten key logs at once on its next event, and the
/// suppressed count it had is not reported (the per-reason counters still count every event).
#[derive(Debug)]
pub struct RefusalLog<K> {
    period: Duration,
    capacity: usize,
    keys: Mutex<HashMap<K, Last>>,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    line_at: Instant,
    suppressed: u64,
}

impl<K: Hash + Eq + Clone> RefusalLog<K> {
    /// At most one line per key per `period`, remembering at most `capacity` (≥ 1) keys.
    pub fn new(period: Duration, capacity: usize) -> RefusalLog<K> {
        RefusalLog {
            period,
            capacity: capacity.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Notes one event for `key` at `now`. `Some(n)`: write a line now, standing for this event
    /// and the `n` suppressed since the key's previous line. `None`: the key logged less than a
    /// period ago; the event is counted as suppressed.
    pub fn note(&self, key: K, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = keys.get_mut(&key) {
            if now.saturating_duration_since(last.line_at) < self.period {
                last.suppressed += 1;
                return None;
            }
            let suppressed = last.suppressed;
            *last = Last {
                line_at: now,
                suppressed: 0,
            };
            return Some(suppressed);
        }
        if keys.len() >= self.capacity {
            keys.retain(|_, last| now.saturating_duration_since(last.line_at) < self.period);
        }
        if keys.len() >= self.capacity {
            let oldest = keys
                .iter()
                .min_by_key(|(_, last)| last.line_at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                keys.remove(&oldest);
            }
        }
        keys.insert(
            key,
            Last {
                line_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }

    /// Keys remembered now (never more than the capacity).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no key is remembered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_line_per_key_per_period_counting_the_suppressed() {
        let log = RefusalLog::new(Duration::from_secs(1), 16);
        let t0 = Instant::now();
        assert_eq!(log.note(("a", 1), t0), Some(0));
        assert_eq!(log.note(("a", 1), t0 + 500 * MS), None);
        assert_eq!(log.note(("a", 1), t0 + 999 * MS), None);
        assert_eq!(log.note(("a", 2), t0), Some(0), "another reason");
        assert_eq!(log.note(("b", 1), t0), Some(0), "another topic");
        assert_eq!(log.note(("a", 1), t0 + 1_000 * MS), Some(2));
        assert_eq!(log.note(("a", 1), t0 + 2_500 * MS), Some(0));
    }

    #[test]
    fn an_earlier_now_is_suppressed_not_logged() {
        let log = RefusalLog::new(Duration::from_secs(1), 16);
        let t0 = Instant::now();
        assert_eq!(log.note("a", t0 + 5 * MS), Some(0));
        assert_eq!(log.note("a", t0), None);
    }

    #[test]
    fn past_capacity_quiet_keys_go_first_then_the_oldest() {
        let log = RefusalLog::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        log.note(1, t0);
        log.note(2, t0 + 600 * MS);
        log.note(3, t0 + 700 * MS);
        // Key 1 has been quiet a full period: forgotten to make room.
        assert_eq!(log.note(4, t0 + 1_100 * MS), Some(0));
        assert_eq!(log.len(), 3);
        assert_eq!(log.note(2, t0 + 1_200 * MS), None, "2 is still remembered");
        // Nobody quiet for a period: the oldest line (2's, at 600 ms) goes.
        assert_eq!(log.note(5, t0 + 1_300 * MS), Some(0));
        assert_eq!(log.len(), 3);
        assert_eq!(log.note(2, t0 + 1_400 * MS), Some(0), "2 was forgotten");
        assert_eq!(log.note(1, t0 + 1_400 * MS), Some(0));
        assert!(log.len() <= 3 && !log.is_empty());
    }
}
