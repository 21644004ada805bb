//! Rate-limited refusal logging: at most one line per topic and reason per second, saying
//! which bound is holding what back and how many refusals the line stands for.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weir_protocol::{Limit, RejectReason};

use crate::loom::sync::Mutex;

/// How often one (topic, reason) may log.
const PERIOD: Duration = Duration::from_secs(1);
/// Most (topic, reason) pairs remembered; past it, pairs quiet for a period are forgotten, and
/// if none is, the new pair is not logged (the per-reason counters still count it).
const CAPACITY: usize = 4096;

/// The last log line per (topic, reason), and the refusals since.
#[derive(Debug, Default)]
pub struct RefusalLog {
    lines: Mutex<HashMap<(String, RejectReason), (Instant, u64)>>,
}

impl RefusalLog {
    /// Notes one refusal; logs it unless this (topic, reason) logged less than a second ago.
    /// Returns whether a line was written.
    pub fn note(&self, topic: &str, reason: RejectReason, limit: &Limit, now: Instant) -> bool {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_string(), reason);
        let suppressed = match lines.get_mut(&key) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < PERIOD => {
                *suppressed += 1;
                return false;
            }
            Some((_, suppressed)) => std::mem::take(suppressed),
            None => {
                if lines.len() >= CAPACITY {
                    lines.retain(|_, (last, _)| now.saturating_duration_since(*last) < PERIOD);
                    if lines.len() >= CAPACITY {
                        return false;
                    }
                }
                0
            }
        };
        lines.insert(key, (now, 0));
        drop(lines);
        tracing::warn!(
            topic,
            reason = ?reason,
            limit = %limit.name,
            limit_value = limit.value,
            suppressed,
            "refusing publishes"
        );
        true
    }
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_topic_and_reason_per_second() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let limit = Limit::new("max_messages", 10);
        assert!(log.note("a", RejectReason::TopicFull, &limit, t0));
        assert!(!log.note(
            "a",
            RejectReason::TopicFull,
            &limit,
            t0 + Duration::from_millis(500)
        ));
        assert!(log.note("a", RejectReason::RateLimited, &limit, t0));
        assert!(log.note("b", RejectReason::TopicFull, &limit, t0));
        assert!(log.note(
            "a",
            RejectReason::TopicFull,
            &limit,
            t0 + Duration::from_secs(1)
        ));
    }
}
