//! A sliding window of latencies in bounded memory: what was the p99 of the storage commits
//! over the last second?
//!
//! The window is a ring of [`SLOTS`] time slots of `window / SLOTS` each; every slot holds a
//! log-linear histogram of microseconds ([`BUCKETS`] `u32` counters, 1/16 relative precision,
//! up to ~71 minutes; longer latencies count as ~71 minutes). Memory is fixed at about 19 KiB
//! however many samples arrive. A sample leaves the window in slot steps, between
//! `0.9 × window` and `window` after its time. Time is passed in.

use std::time::{Duration, Instant};

use crate::loom::sync::Mutex;

/// Time slots per window.
pub const SLOTS: usize = 10;
/// Linear sub-buckets per power of two (and the exactly-counted values below it, in µs).
const SUB: usize = 16;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// The largest exponent kept: values up to 2³² − 1 µs.
const MAX_EXP: u32 = 31;
/// Histogram buckets per slot.
pub const BUCKETS: usize = SUB + (MAX_EXP + 1 - SUB_BITS) as usize * SUB;

/// Latencies of the last `window`, in bounded memory (see the module docs).
///
/// Besides the histogram, every sample above a fixed `watch` latency (the overload threshold)
/// is counted exactly, so [`p99_above_watch`](LatencyWindow::p99_above_watch) is an exact
/// answer while [`p99`](LatencyWindow::p99) is an estimate: never below the true value, at most
/// 1/16 above it, and never above the largest sample.
#[derive(Debug)]
pub struct LatencyWindow {
    origin: Instant,
    slot_nanos: u64,
    watch: Duration,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    slots: Vec<Slot>,
    /// The newest slot epoch seen (epoch = slot-lengths since `origin`).
    latest: u64,
    /// Bumped by every recorded sample.
    generation: u64,
    /// The last p99 computed, valid for this (epoch, generation).
    cached: Option<(u64, u64, Option<Duration>)>,
}

#[derive(Debug, Clone)]
struct Slot {
    epoch: u64,
    total: u32,
    above_watch: u32,
    max_us: u64,
    counts: Box<[u32; BUCKETS]>,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            epoch: 0,
            total: 0,
            above_watch: 0,
            max_us: 0,
            counts: Box::new([0; BUCKETS]),
        }
    }

    fn live(&self, current: u64) -> bool {
        self.total > 0 && self.epoch <= current && self.epoch + SLOTS as u64 > current
    }
}

impl LatencyWindow {
    /// An empty window of `window` (at least [`SLOTS`] nanoseconds), counting exactly the
    /// samples above `watch`.
    pub fn new(window: Duration, watch: Duration, now: Instant) -> LatencyWindow {
        let slot_nanos = (window.as_nanos() / SLOTS as u128).clamp(1, u128::from(u64::MAX));
        LatencyWindow {
            origin: now,
            slot_nanos: slot_nanos as u64,
            watch,
            ring: Mutex::new(Ring {
                slots: vec![Slot::empty(); SLOTS],
                latest: 0,
                generation: 0,
                cached: None,
            }),
        }
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        self.slot() * SLOTS as u32
    }

    /// One slot's length: the step in which samples leave the window.
    pub fn slot(&self) -> Duration {
        Duration::from_nanos(self.slot_nanos)
    }

    /// The latency whose exceedances are counted exactly.
    pub fn watch(&self) -> Duration {
        self.watch
    }

    /// Records one latency observed at `now`. A sample older than the window (a racing thread
    /// with an old `now`) is ignored.
    pub fn record(&self, latency: Duration, now: Instant) {
        let epoch = self.epoch_of(now);
        let us = micros_up(latency);
        let mut ring = self.lock();
        if epoch + (SLOTS as u64) <= ring.latest {
            return;
        }
        ring.latest = ring.latest.max(epoch);
        ring.generation += 1;
        let slot = &mut ring.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch || slot.total == 0 {
            *slot.counts = [0; BUCKETS];
            slot.epoch = epoch;
            slot.total = 0;
            slot.above_watch = 0;
            slot.max_us = 0;
        }
        let bucket = &mut slot.counts[bucket_of(us)];
        if slot.total == u32::MAX || *bucket == u32::MAX {
            return; // 4 billion samples in one slot: the histogram has the shape already
        }
        *bucket += 1;
        slot.total += 1;
        slot.max_us = slot.max_us.max(us);
        if latency > self.watch {
            slot.above_watch += 1;
        }
    }

    /// Samples in the window at `now`.
    pub fn count(&self, now: Instant) -> u64 {
        let ring = self.lock();
        let current = self.current(&ring, now);
        live(&ring, current).map(|s| u64::from(s.total)).sum()
    }

    /// The p99 of the window at `now`, or `None` when it holds no sample. With fewer than 100
    /// samples this is the largest. Cached until a sample arrives or a slot turns over, so
    /// asking on every publish is cheap.
    pub fn p99(&self, now: Instant) -> Option<Duration> {
        let mut ring = self.lock();
        let current = self.current(&ring, now);
        if let Some((epoch, generation, p99)) = ring.cached {
            if (epoch, generation) == (current, ring.generation) {
                return p99;
            }
        }
        let p99 = quantile(&ring, current, 99, 100);
        ring.cached = Some((current, ring.generation, p99));
        p99
    }

    /// The `q` quantile (0.0..=1.0) of the window at `now`, or `None` when it holds no sample;
    /// the same estimate as [`p99`](LatencyWindow::p99), not cached.
    pub fn quantile(&self, q: f64, now: Instant) -> Option<Duration> {
        let ring = self.lock();
        let current = self.current(&ring, now);
        let per_million = (q.clamp(0.0, 1.0) * 1e6).round() as u64;
        quantile(&ring, current, per_million, 1_000_000)
    }

    /// Whether the window's p99 at `now` is above `watch` — exact, from the exceedance counts.
    pub fn p99_above_watch(&self, now: Instant) -> bool {
        let ring = self.lock();
        let current = self.current(&ring, now);
        let (total, above) = live(&ring, current).fold((0u64, 0u64), |(t, a), s| {
            (t + u64::from(s.total), a + u64::from(s.above_watch))
        });
        // p99 = the ⌈0.99·n⌉-th smallest sample; it is above `watch` iff fewer samples than
        // that are at or below it.
        total > 0 && total - above < (total * 99).div_ceil(100)
    }

    /// When every sample above `latency` now in the window will have left it, assuming no more
    /// arrive; `None` if there is no such sample.
    pub fn quiet_at(&self, latency: Duration, now: Instant) -> Option<Instant> {
        let us = micros_up(latency);
        let ring = self.lock();
        let current = self.current(&ring, now);
        let newest = live(&ring, current)
            .filter(|s| s.max_us > us)
            .map(|s| s.epoch)
            .max()?;
        let leaves = u128::from(newest + SLOTS as u64) * u128::from(self.slot_nanos);
        let leaves = Duration::from_nanos(u64::try_from(leaves).unwrap_or(u64::MAX));
        Some(self.origin.checked_add(leaves).unwrap_or(now))
    }

    fn epoch_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / u128::from(self.slot_nanos)).unwrap_or(u64::MAX - SLOTS as u64)
    }

    /// The slot epoch answers are given for: `now`'s, or the newest sample's if a racing caller
    /// passes an older `now` (the window never moves backwards).
    fn current(&self, ring: &Ring, now: Instant) -> u64 {
        self.epoch_of(now).max(ring.latest)
    }

    fn lock(&self) -> crate::loom::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn live(ring: &Ring, current: u64) -> impl Iterator<Item = &Slot> {
    ring.slots.iter().filter(move |s| s.live(current))
}

/// The `num/den` quantile of the live slots: the upper bound of the bucket holding the
/// ⌈n·num/den⌉-th smallest sample, capped at the largest sample.
fn quantile(ring: &Ring, current: u64, num: u64, den: u64) -> Option<Duration> {
    let slots: Vec<&Slot> = live(ring, current).collect();
    let total: u64 = slots.iter().map(|s| u64::from(s.total)).sum();
    if total == 0 {
        return None;
    }
    let max_us = slots.iter().map(|s| s.max_us).max().unwrap_or(0);
    let rank = (total * num).div_ceil(den).clamp(1, total);
    let mut seen = 0u64;
    for bucket in 0..BUCKETS {
        seen += slots
            .iter()
            .map(|s| u64::from(s.counts[bucket]))
            .sum::<u64>();
        if seen >= rank {
            return Some(Duration::from_micros(upper_of(bucket).min(max_us)));
        }
    }
    Some(Duration::from_micros(max_us))
}

/// Whole microseconds, rounded up (a 300 ns commit counts as 1 µs).
fn micros_up(latency: Duration) -> u64 {
    u64::try_from(latency.as_nanos().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// The histogram bucket of `us` microseconds: exact below [`SUB`], then [`SUB`] linear
/// buckets per power of two.
fn bucket_of(us: u64) -> usize {
    let us = us.min((1u64 << (MAX_EXP + 1)) - 1);
    if us < SUB as u64 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros();
    let sub = (us >> (exp - SUB_BITS)) as usize & (SUB - 1);
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// The largest value of bucket `i`.
fn upper_of(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = ((i - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((i - SUB) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    (1u64 << exp) + sub * width + width - 1
}

#[cfg(all(test, not(weir_loom)))]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Whether `estimate` is `truth` up to the histogram's 1/16 (never below it).
    fn near(estimate: Option<Duration>, truth: Duration) -> bool {
        estimate.is_some_and(|e| e >= truth && e <= truth + truth / 16)
    }

    #[test]
    fn buckets_cover_the_range_with_a_sixteenth_precision() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(15), 15);
        assert_eq!((bucket_of(16), upper_of(16)), (16, 16));
        assert_eq!((bucket_of(32), bucket_of(33), upper_of(32)), (32, 32, 33));
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut previous = 0;
        for us in (1..1u64 << 32).step_by(9_973) {
            let b = bucket_of(us);
            assert!(b >= previous, "monotonic");
            previous = b;
            let upper = upper_of(b);
            assert!(
                upper >= us && upper - us <= us / 16,
                "{us} µs in bucket up to {upper}"
            );
            assert!(
                b == 0 || upper_of(b - 1) < us,
                "{us} belongs to no earlier bucket"
            );
        }
    }

    #[test]
    fn p99_of_the_window_and_exact_comparison_with_the_watch() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(Duration::from_secs(1), 100 * MS, t0);
        assert_eq!(w.p99(t0), None);
        assert!(!w.p99_above_watch(t0));
        for _ in 0..99 {
            w.record(5 * MS, t0);
        }
        w.record(400 * MS, t0);
        // 100 samples: the p99 is the 99th smallest, 5 ms (estimated from its bucket).
        assert!(near(w.p99(t0), 5 * MS), "{:?}", w.p99(t0));
        assert!(!w.p99_above_watch(t0));
        w.record(400 * MS, t0);
        // 101 samples: the 100th smallest is slow.
        assert_eq!(w.p99(t0), Some(400 * MS), "capped at the largest sample");
        assert!(w.p99_above_watch(t0));
        assert!(near(w.quantile(0.5, t0), 5 * MS));
        assert_eq!(w.quantile(1.0, t0), Some(400 * MS));
        assert_eq!(w.count(t0), 101);
    }

    #[test]
    fn the_estimate_is_never_below_the_truth_nor_16th_above() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(Duration::from_secs(1), MS, t0);
        for us in 1..=1000u64 {
            w.record(Duration::from_micros(us * 37), t0);
        }
        let truth = Duration::from_micros(990 * 37);
        let p99 = w.p99(t0).unwrap();
        assert!(
            p99 >= truth && p99 <= truth + truth / 16,
            "{p99:?} vs {truth:?}"
        );
    }

    #[test]
    fn samples_leave_in_slot_steps_and_quiet_at_says_when() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(Duration::from_secs(1), 100 * MS, t0);
        w.record(400 * MS, t0 + 250 * MS); // slot 2
        w.record(5 * MS, t0 + 650 * MS); // slot 6
        assert_eq!(w.quiet_at(100 * MS, t0 + 700 * MS), Some(t0 + 1200 * MS));
        assert_eq!(w.quiet_at(500 * MS, t0 + 700 * MS), None);
        assert_eq!(w.p99(t0 + 1199 * MS), Some(400 * MS));
        assert!(near(w.p99(t0 + 1200 * MS), 5 * MS));
        assert!(!w.p99_above_watch(t0 + 1200 * MS));
        assert_eq!(w.quiet_at(100 * MS, t0 + 1200 * MS), None);
        assert_eq!(w.p99(t0 + 1600 * MS), None);
        assert_eq!(w.count(t0 + 1600 * MS), 0);
    }

    #[test]
    fn memory_is_bounded_and_a_slot_is_reused_after_a_lap() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(Duration::from_secs(1), 100 * MS, t0);
        for i in 0..100_000u64 {
            w.record(
                Duration::from_micros(i % 1000),
                t0 + Duration::from_micros(i * 37),
            );
        }
        assert_eq!(w.lock().slots.len(), SLOTS);
        // 3.7 s of samples at 27/ms: only the last 0.9–1 s remain.
        let now = t0 + Duration::from_micros(99_999 * 37);
        let n = w.count(now);
        assert!((24_000..=27_100).contains(&n), "{n} samples in the window");
    }

    #[test]
    fn a_stale_now_neither_moves_the_window_back_nor_revives_old_samples() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(Duration::from_secs(1), 100 * MS, t0);
        w.record(400 * MS, t0 + 5_000 * MS);
        w.record(400 * MS, t0); // too old: ignored
        assert_eq!(w.count(t0 + 5_000 * MS), 1);
        assert_eq!(
            w.p99(t0),
            Some(400 * MS),
            "an older now sees the newest window"
        );
    }

    #[test]
    fn the_cached_p99_follows_new_samples_and_slot_turns() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(Duration::from_secs(1), 100 * MS, t0);
        w.record(5 * MS, t0);
        assert_eq!(w.p99(t0), Some(5 * MS), "one sample: the largest, exactly");
        w.record(400 * MS, t0);
        assert_eq!(w.p99(t0), Some(400 * MS));
        assert_eq!(w.p99(t0 + 2 * Duration::from_secs(1)), None);
    }

    #[test]
    fn tiny_and_huge_windows_and_latencies_work() {
        let t0 = Instant::now();
        let w = LatencyWindow::new(Duration::ZERO, Duration::ZERO, t0);
        assert_eq!(w.window(), Duration::from_nanos(SLOTS as u64));
        w.record(Duration::from_nanos(300), t0);
        assert_eq!(w.p99(t0), Some(Duration::from_micros(1)));
        assert!(w.p99_above_watch(t0));
        let w = LatencyWindow::new(Duration::MAX, Duration::MAX, t0);
        w.record(Duration::MAX, t0);
        assert!(w.p99(t0).is_some());
        assert!(!w.p99_above_watch(t0));
    }
}
