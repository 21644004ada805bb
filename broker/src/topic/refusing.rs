//! [`RecentRefusals`]: which bound is refusing a topic's publishes right now, for
//! `weir topic info`, `weir stats` and the admin endpoint.

use std::time::{Duration, Instant};

use weir_protocol::ActiveRefusal;

use crate::refusal::Refusal;

/// How long after its latest refusal a bound still counts as refusing.
const ACTIVE_FOR: Duration = Duration::from_secs(2);

/// The latest refusal of a topic and how many there were in the current second. Constant size.
#[derive(Debug, Default)]
pub(super) struct RecentRefusals {
    latest: Option<(Refusal, Instant)>,
    /// Start of the current one-second window and the refusals in it.
    window: Option<(Instant, u64)>,
    /// Refusals in the last complete window.
    previous: u64,
}

impl RecentRefusals {
    /// Records a refusal at `now`.
    pub(super) fn note(&mut self, refusal: &Refusal, now: Instant) {
        self.roll(now);
        let (_, count) = self.window.get_or_insert((now, 0));
        *count += 1;
        self.latest = Some((refusal.clone(), now));
    }

    /// The refusing bound as of `now`, if the latest refusal is recent.
    pub(super) fn active(&mut self, now: Instant) -> Option<ActiveRefusal> {
        self.roll(now);
        let (r, at) = self.latest.as_ref()?;
        let age = now.saturating_duration_since(*at);
        (age < ACTIVE_FOR).then(|| ActiveRefusal {
            reason: r.reason,
            limit: r.limit.clone(),
            retry_after_ms: r.retry_after_ms,
            age_ms: age.as_millis() as u64,
            last_second: self.window.map_or(0, |(_, n)| n).max(self.previous),
        })
    }

    /// Starts a new window once the current one is a second old.
    fn roll(&mut self, now: Instant) {
        if let Some((start, count)) = self.window {
            let age = now.saturating_duration_since(start);
            if age >= Duration::from_secs(1) {
                self.previous = if age < Duration::from_secs(2) {
                    count
                } else {
                    0
                };
                self.window = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::{Limit, RejectReason};

    fn full() -> Refusal {
        Refusal::new(
            RejectReason::TopicFull,
            Limit::new("max_messages", 10),
            Some(5),
        )
    }

    #[test]
    fn a_refusal_is_active_for_two_seconds_with_its_rate() {
        let t0 = Instant::now();
        let mut r = RecentRefusals::default();
        assert!(r.active(t0).is_none());
        for _ in 0..3 {
            r.note(&full(), t0);
        }
        let a = r.active(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(
            (a.reason, a.limit.name.as_str(), a.age_ms, a.last_second),
            (RejectReason::TopicFull, "max_messages", 500, 3)
        );
        let a = r.active(t0 + Duration::from_millis(1500)).unwrap();
        assert_eq!(a.last_second, 3, "the last complete second");
        assert!(r.active(t0 + Duration::from_secs(2)).is_none());
    }
}
