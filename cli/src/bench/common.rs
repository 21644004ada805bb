//! Pieces shared by every bench scenario: the payload stamp and the clock it uses, latency
//! histograms and their summary, the set of sequence numbers, the pacer, `/proc` readings of the
//! broker, and the progress bar.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::size::{format_signed_size, format_size};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use weir_client::{Client, ClientOptions};

/// Bytes of the stamp at the start of every payload: send time (u64 LE ns) and run id (u64 LE).
pub const STAMP_BYTES: usize = 16;

/// Nanoseconds since the first call, on a monotonic clock shared by the whole process.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A latency histogram in nanoseconds, 1 ns to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `ns` (at least 1) in `h`, clamped to its highest trackable value.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, h.high()));
}

/// A payload of `template.len() + STAMP_BYTES` bytes stamped with the current time and `run_id`.
pub fn payload(template: &[u8], run_id: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(template.len() + STAMP_BYTES);
    b.put_u64_le(now_ns());
    b.put_u64_le(run_id);
    b.extend_from_slice(template);
    b.freeze()
}

/// The stamp of a payload: (send time, run id).
pub fn stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let ts = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
    let run = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((ts, run))
}

/// An id for this run: wall-clock nanoseconds mixed with the process id. Used in payload stamps
/// and in the names of the topics a scenario creates, so runs never mix.
pub fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32)
}

/// Connects, naming the server in the error.
pub async fn connect(server: &str, options: &ClientOptions) -> anyhow::Result<Client> {
    Client::connect_with(server, options.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {e}"))
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1e3;
        if h.is_empty() {
            return Latency {
                count: 0,
                p50_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                max_us: 0.0,
                mean_us: 0.0,
            };
        }
        Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1e3,
        }
    }

    /// `p50 … p99 … p99.9 … max …`, or `(no samples)`.
    pub fn brief(&self) -> String {
        if self.count == 0 {
            return "(no samples)".into();
        }
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}",
            human_us(self.p50_us),
            human_us(self.p99_us),
            human_us(self.p999_us),
            human_us(self.max_us)
        )
    }
}

/// A duration given in microseconds, in a readable unit.
pub fn human_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// `num / secs`, or 0 for an empty interval.
pub fn per_s(num: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        num as f64 / secs
    } else {
        0.0
    }
}

/// The most sequence numbers a [`SeqSet`] tracks: 2^27 (a 16 MiB bitmap). A scenario run
/// publishes at most (duration × publish rate) messages — 10 s at 200 000 msg/s is 2 million —
/// so this bound is never reached in practice; sequence numbers past it are counted in
/// [`SeqSet::untracked`] and make the accounting say it is incomplete.
pub const MAX_TRACKED_SEQS: u64 = 1 << 27;

/// A set of sequence numbers at or above a base, as a bitmap that grows on demand up to
/// [`MAX_TRACKED_SEQS`] bits. A fresh topic's sequence numbers are dense, so one bit per message
/// of the run: 10 million messages take 1.25 MiB.
#[derive(Debug, Clone)]
pub struct SeqSet {
    base: u64,
    words: Vec<u64>,
    len: u64,
    untracked: u64,
    max_bits: u64,
}

impl SeqSet {
    /// An empty set of sequence numbers from `base` on.
    pub fn new(base: u64) -> SeqSet {
        SeqSet::with_limit(base, MAX_TRACKED_SEQS)
    }

    /// An empty set tracking at most `max_bits` sequence numbers from `base` on.
    pub fn with_limit(base: u64, max_bits: u64) -> SeqSet {
        SeqSet {
            base,
            words: Vec::new(),
            len: 0,
            untracked: 0,
            max_bits,
        }
    }

    /// Adds `seq`; false when it was already there or cannot be tracked (below the base or past
    /// the bound: counted in [`SeqSet::untracked`]).
    pub fn insert(&mut self, seq: u64) -> bool {
        let Some(idx) = seq.checked_sub(self.base).filter(|i| *i < self.max_bits) else {
            self.untracked += 1;
            return false;
        };
        let (w, bit) = ((idx / 64) as usize, idx % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let fresh = self.words[w] & (1 << bit) == 0;
        self.words[w] |= 1 << bit;
        self.len += u64::from(fresh);
        fresh
    }

    /// Adds `from..=to`: the part within the tracked range, bit by bit (bounded by the bitmap);
    /// the rest is counted as untracked.
    pub fn insert_range(&mut self, from: u64, to: u64) {
        if to < from {
            return;
        }
        let lo = from.max(self.base);
        let hi = to.min(self.base.saturating_add(self.max_bits).saturating_sub(1));
        let mut tracked = 0;
        if lo <= hi {
            for seq in lo..=hi {
                self.insert(seq);
            }
            tracked = hi - lo + 1;
        }
        self.untracked += (to - from + 1) - tracked;
    }

    /// Adds every sequence number of `other`; those `other` could not track stay untracked
    /// here (as do those past this set's own bound).
    pub fn union(&mut self, other: &SeqSet) {
        for seq in other.iter() {
            self.insert(seq);
        }
        self.untracked += other.untracked;
    }

    pub fn contains(&self, seq: u64) -> bool {
        let Some(idx) = seq.checked_sub(self.base) else {
            return false;
        };
        self.words
            .get((idx / 64) as usize)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    /// Sequence numbers in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Inserts that could not be tracked.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// The sequence numbers in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(move |(w, &word)| {
            let base = self.base + w as u64 * 64;
            (0..64u64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| base + b)
        })
    }
}

/// Paces an activity at a rate: virtual scheduling (GCRA). Each token is due `1/rate` after the
/// previous one; a caller that falls behind may catch up by at most `slack` (a short burst), and
/// tokens older than that are skipped — counted, never made up later, so a stalled producer does
/// not turn into a spike when it resumes. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval_ns: f64,
    slack_ns: f64,
    next_ns: f64,
    skipped: f64,
}

impl Pacer {
    /// A pacer at `rate` tokens/s (at least 0.001), the first token due at `start_ns`.
    pub fn new(rate: f64, slack: Duration, start_ns: u64) -> Pacer {
        Pacer {
            interval_ns: 1e9 / rate.max(1e-3),
            slack_ns: slack.as_nanos() as f64,
            next_ns: start_ns as f64,
            skipped: 0.0,
        }
    }

    /// The slack that lets a pacer at `rate` absorb timer granularity (about 1 ms in tokio)
    /// without skipping: two intervals, and at least 5 ms.
    pub fn default_slack(rate: f64) -> Duration {
        Duration::from_secs_f64((2.0 / rate.max(1e-3)).max(0.005))
    }

    /// Changes the rate from the next token on.
    pub fn set_rate(&mut self, rate: f64) {
        self.interval_ns = 1e9 / rate.max(1e-3);
    }

    /// When the next token is due (≤ `now_ns` means now), first skipping the tokens that are
    /// more than `slack` overdue.
    pub fn due(&mut self, now_ns: u64) -> u64 {
        let floor = now_ns as f64 - self.slack_ns;
        if self.next_ns < floor {
            self.skipped += (floor - self.next_ns) / self.interval_ns;
            self.next_ns = floor;
        }
        self.next_ns.max(0.0) as u64
    }

    /// Uses the next token.
    pub fn take(&mut self) {
        self.next_ns += self.interval_ns;
    }

    /// Tokens skipped so far (whole ones).
    pub fn skipped(&self) -> u64 {
        self.skipped as u64
    }
}

/// One reading of a process from `/proc`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcReading {
    /// Resident set size now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started (VmHWM), KiB.
    pub hwm_kib: u64,
    /// User + system CPU time so far, seconds.
    pub cpu_s: f64,
    /// Of which system (kernel) time, seconds: fsync, socket and timer syscalls.
    pub cpu_sys_s: f64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn read_proc(pid: u32) -> anyhow::Result<ProcReading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/status: {e}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/stat: {e}"))?;
    let (rss_kib, hwm_kib) = parse_status_memory(&status)
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let (user, sys) = parse_stat_cpu_ticks(&stat)
        .ok_or_else(|| anyhow::anyhow!("cannot parse /proc/{pid}/stat"))?;
    Ok(ProcReading {
        rss_kib,
        hwm_kib,
        cpu_s: (user + sys) as f64 / clock_ticks_per_s(),
        cpu_sys_s: sys as f64 / clock_ticks_per_s(),
    })
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (VmRSS, VmHWM) in KiB from the text of `/proc/<pid>/status`.
pub fn parse_status_memory(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let rss = field("VmRSS:")?;
    Some((rss, field("VmHWM:").unwrap_or(rss)))
}

/// (utime, stime), in clock ticks, from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// The broker's memory and CPU over a scenario, when its pid was given.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerUsage {
    pub pid: u32,
    pub before: Option<ProcReading>,
    pub after: Option<ProcReading>,
    /// VmRSS after − before, KiB (negative when the broker shrank).
    pub rss_growth_kib: Option<i64>,
    /// Broker CPU seconds spent during the scenario.
    pub cpu_s: Option<f64>,
    /// Of which system (kernel) time.
    pub cpu_sys_s: Option<f64>,
    /// Broker CPU per message published (offered), microseconds.
    pub cpu_us_per_offered: Option<f64>,
    pub error: Option<String>,
}

impl BrokerUsage {
    pub fn start(pid: u32) -> BrokerUsage {
        let (before, error) = match read_proc(pid) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        };
        BrokerUsage {
            pid,
            before,
            after: None,
            rss_growth_kib: None,
            cpu_s: None,
            cpu_sys_s: None,
            cpu_us_per_offered: None,
            error,
        }
    }

    pub fn finish(&mut self, offered: u64) {
        match read_proc(self.pid) {
            Ok(r) => self.after = Some(r),
            Err(e) => {
                self.error.get_or_insert(e.to_string());
            }
        }
        if let (Some(b), Some(a)) = (self.before, self.after) {
            self.rss_growth_kib = Some(a.rss_kib as i64 - b.rss_kib as i64);
            let cpu = (a.cpu_s - b.cpu_s).max(0.0);
            self.cpu_s = Some(cpu);
            self.cpu_sys_s = Some((a.cpu_sys_s - b.cpu_sys_s).max(0.0));
            self.cpu_us_per_offered = (offered > 0).then(|| cpu * 1e6 / offered as f64);
        }
    }

    /// `RSS a → b (+g), CPU …` (sizes as [`format_size`] prints them), for the human
    /// summaries.
    pub fn brief(&self) -> String {
        let mut s = format!("broker pid {}: ", self.pid);
        match (self.before, self.after, self.rss_growth_kib) {
            (Some(b), Some(a), Some(g)) => s.push_str(&format!(
                "RSS {} → {} ({}; peak since start {}), CPU {:.2} s ({:.2} s system){}",
                format_size(b.rss_kib * 1024),
                format_size(a.rss_kib * 1024),
                format_signed_size(g * 1024),
                format_size(a.hwm_kib * 1024),
                self.cpu_s.unwrap_or(0.0),
                self.cpu_sys_s.unwrap_or(0.0),
                self.cpu_us_per_offered
                    .map(|u| format!(" ({u:.1} µs per offered message)"))
                    .unwrap_or_default()
            )),
            _ => s.push_str("no reading"),
        }
        if let Some(e) = &self.error {
            s.push_str(&format!(" [{e}]"));
        }
        s
    }
}

/// Samples `pid`'s VmRSS every `every` until `stop` turns true (or its sender goes); the
/// highest reading, or `None` when none could be taken. Holds one number: bounded however long
/// it runs.
pub async fn peak_rss(
    pid: u32,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<u64> {
    let mut peak: Option<u64> = None;
    let mut ticker = tokio::time::interval(every);
    loop {
        if let Ok(r) = read_proc(pid) {
            peak = Some(peak.map_or(r.rss_kib, |p| p.max(r.rss_kib)));
        }
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return peak;
                }
            }
        }
    }
}

/// Raises the soft limit of open files towards `want`, at most to the hard limit (best
/// effort): one socket per connection. `None` when the soft limit now covers `want`, else what
/// falls short (the limits, for the caller to report or fail on).
pub fn raise_nofile(want: libc::rlim_t) -> Option<String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Some("cannot read the open-file limit".into());
        }
        if lim.rlim_cur >= want {
            return None;
        }
        let target = want.min(lim.rlim_max);
        lim.rlim_cur = target;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 || target < want {
            return Some(format!(
                "open-file limit {target} (hard limit {}) is below the {want} needed",
                lim.rlim_max
            ));
        }
    }
    None
}

/// Asks the kernel to drop the page cache (`sync`, then `3` into
/// `/proc/sys/vm/drop_caches`): works only as root. `Ok(())` when it did, else why not; never
/// more than a note for the caller's report.
pub fn drop_caches() -> Result<(), String> {
    // SAFETY: sync(2) takes no arguments and only flushes dirty pages.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches: {e} (needs root)"))
}

/// Counters shared between a scenario's tasks, read by the sampler and the progress bar.
#[derive(Debug, Default)]
pub struct Counters {
    pub offered: AtomicU64,
    pub confirmed: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    pub delivered: AtomicU64,
}

/// A copy of [`Counters`] at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub offered: u64,
    pub confirmed: u64,
    pub refused: u64,
    pub errors: u64,
    pub delivered: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            offered: self.offered.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Whether to draw progress bars: not with `--json`, and only when stdout is a terminal.
pub fn progress_enabled(json: bool) -> bool {
    !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A progress bar on stderr of `len` units (hidden when `enabled` is false), with `{msg}` for
/// the live counters.
pub fn progress_bar(enabled: bool, len: u64, unit: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template =
        format!("{{prefix}} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The name of a refusal reason as reported (`TopicFull`, ...).
pub fn reason_name(reason: weir_client::RejectReason) -> String {
    format!("{reason:?}")
}

/// Adds `n` to `map[key]`.
pub fn bump(map: &mut BTreeMap<String, u64>, key: String, n: u64) {
    *map.entry(key).or_default() += n;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_stamp_and_size() {
        let template = vec![0u8; 1024 - STAMP_BYTES];
        let before = now_ns();
        let p = payload(&template, 42);
        assert_eq!(p.len(), 1024);
        let (ts, run) = stamp(&p).unwrap();
        assert_eq!(run, 42);
        assert!(ts >= before && ts <= now_ns());
        assert_eq!(stamp(b"short"), None);
    }

    #[test]
    fn latency_percentiles_in_microseconds() {
        let mut h = histogram();
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{}", l.p50_us);
        assert!((l.p99_us - 990.0).abs() < 1.0, "{}", l.p99_us);
        assert!((l.max_us - 1000.0).abs() < 1.0, "{}", l.max_us);
        assert_eq!(human_us(l.p50_us), "500 µs");
        assert_eq!(human_us(1500.0), "1.50 ms");
        assert_eq!(Latency::of(&histogram()).count, 0);
        assert_eq!(Latency::of(&histogram()).brief(), "(no samples)");
    }

    #[test]
    fn seq_set_tracks_a_dense_range_and_counts_what_it_cannot() {
        let mut s = SeqSet::with_limit(100, 200);
        assert!(s.insert(100));
        assert!(s.insert(163));
        assert!(s.insert(164));
        assert!(!s.insert(164), "already there");
        assert!(!s.insert(99), "below the base");
        assert!(!s.insert(300), "past the bound");
        assert!(s.insert(299));
        assert_eq!(s.len(), 4);
        assert_eq!(s.untracked(), 2);
        assert!(s.contains(163) && s.contains(299) && !s.contains(165) && !s.contains(5));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![100, 163, 164, 299]);
        let mut r = SeqSet::with_limit(10, 10);
        r.insert_range(5, 12);
        r.insert_range(18, 25);
        r.insert_range(9, 3);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![10, 11, 12, 18, 19]);
        assert_eq!(
            r.untracked(),
            5 + 6,
            "5..10 below the base, 20..=25 past the bound"
        );
    }

    #[test]
    fn pacer_spaces_tokens_and_skips_what_is_too_late() {
        // 1000/s: a token every 1 ms; slack 5 ms.
        let ms = 1_000_000u64;
        let mut p = Pacer::new(1000.0, Duration::from_millis(5), 0);
        assert_eq!(p.due(0), 0);
        p.take();
        assert_eq!(p.due(0), ms, "the next token is 1 ms later");
        p.take();
        // Three tokens overdue by less than the slack are available at once.
        assert_eq!(p.due(4 * ms), 2 * ms);
        p.take();
        p.take();
        assert_eq!(p.due(4 * ms), 4 * ms);
        p.take();
        assert_eq!(p.skipped(), 0);
        // Idle for 100 ms: only 5 ms of catching up is allowed, 95 tokens are skipped.
        assert_eq!(p.due(105 * ms), 100 * ms);
        assert_eq!(p.skipped(), 95);
        // A higher rate shortens the interval from the next token on.
        p.take();
        p.set_rate(2000.0);
        p.take();
        assert_eq!(p.due(0), 101 * ms + ms / 2);
    }

    #[test]
    fn default_slack_covers_the_timer_granularity() {
        assert_eq!(Pacer::default_slack(100_000.0), Duration::from_millis(5));
        assert_eq!(Pacer::default_slack(100.0), Duration::from_millis(20));
    }

    #[test]
    fn proc_parsing() {
        let status =
            "Name:\tweir-broker\nVmPeak:\t  100 kB\nVmHWM:\t   30720 kB\nVmRSS:\t   20480 kB\n";
        assert_eq!(parse_status_memory(status), Some((20480, 30720)));
        assert_eq!(parse_status_memory("Name: x\n"), None);
        let stat = "1234 (weir broker) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some((250, 50)));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }
}
