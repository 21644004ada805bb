//! The publish path at the topic: admission at its bounds, what the topic's overflow policy
//! does at them, then the writer's queue (or the parking queue).
//!
//! Bounds count stored messages (ready and in flight) plus publishes accepted and not yet
//! committed. At a bound:
//! - `reject` refuses with `TopicFull`, the limit that fired, and a retry-after estimated from
//!   the measured drain rate and how far over the bound the topic is;
//! - `drop_oldest` accepts every publish (what is waiting for its commit is bounded by the
//!   writer's `append_queue`), and each commit evicts the oldest stored messages until the
//!   topic is back within its bounds — counted, sampled, warned about past `drop_warn_per_s`,
//!   and announced to lagging subscribers with `Gap` notices. (Uncommitted messages have no
//!   sequence yet and cannot be evicted, so eviction happens when they become stored.)
//! - `block` parks the publish (see [`super::parking`]) until room frees up.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_protocol::{DroppedMessage, Limit, OverflowPolicy, RejectReason};

use tokio::sync::oneshot;

use super::dedup::{DedupKey, Seen};
use super::parking::Parked;
use super::writer::Append;
use super::{lock, Admitted, AppendError, Confirm, Topic, TopicState, HOLE};
use crate::admission::budget::MemoryPermit;
use crate::storage::log::Message;

/// How many evicted messages a topic remembers for operators (`weir topic info`).
pub(super) const DROP_SAMPLE: usize = 100;
/// The sample's reason for a `drop_oldest` eviction.
const OVERFLOW: &str = "overflow";
/// The sample's reason for a message older than the topic's `max_age`.
pub(super) const MAX_AGE: &str = "max_age";
/// Bytes of an evicted payload kept in the sample.
const DROP_SAMPLE_HEAD: usize = 64;

/// Drops counted over the current one-second window, for the drop-rate warning.
#[derive(Debug)]
pub(super) struct DropWarning {
    since: Instant,
    count: u64,
}

impl DropWarning {
    pub(super) fn new(now: Instant) -> DropWarning {
        DropWarning {
            since: now,
            count: 0,
        }
    }
}

/// What admission decided for a publish it did not refuse.
pub(super) enum Decision {
    /// Counted against the bounds: send it to the writer.
    Queue,
    /// `block` policy: it does not fit (or others wait before it): park it.
    Park,
}

impl Topic {
    /// Decides, under the topic lock, whether a publish of a message of size `len` is queued
    /// for storage (and counts it as pending), parked, or refused; `slack` bytes of it do not
    /// count against `max_message_bytes` (a dead-letter copy's origin headers).
    pub(super) fn admit(
        &self,
        st: &mut TopicState,
        len: u64,
        slack: u64,
        now: Instant,
    ) -> Result<Decision, AppendError> {
        let (max_message_bytes, overflow) = {
            let c = self.settings();
            (c.max_message_bytes, c.overflow)
        };
        if len.saturating_sub(slack) > u64::from(max_message_bytes) {
            let limit = Limit::new("max_message_bytes", u64::from(max_message_bytes));
            return Err(self.refusal(RejectReason::MessageTooLarge, limit, None));
        }
        match overflow {
            OverflowPolicy::DropOldest => {}
            OverflowPolicy::Block if !st.parked.is_empty() => return Ok(Decision::Park),
            policy => {
                if let Some(limit) = self.limit_exceeded(st, len) {
                    if policy == OverflowPolicy::Block {
                        return Ok(Decision::Park);
                    }
                    let retry = self.retry_after(st, len, now);
                    return Err(self.full(st, limit, retry));
                }
            }
        }
        st.pending_count += 1;
        st.pending_bytes += len;
        self.admission.queued(1);
        Ok(Decision::Queue)
    }

    /// The bound one more message of `len` bytes would pass, if any.
    pub(super) fn limit_exceeded(&self, st: &TopicState, len: u64) -> Option<Limit> {
        let c = self.settings();
        if st.count() + 1 > c.max_messages {
            Some(Limit::new("max_messages", c.max_messages))
        } else if st.bytes() + len > c.max_bytes {
            Some(Limit::new("max_bytes", c.max_bytes))
        } else {
            None
        }
    }

    /// How many messages must drain before one more of `len` bytes fits.
    fn over_by(&self, st: &TopicState, len: u64) -> u64 {
        let c = self.settings();
        let over_count = (st.count() + 1).saturating_sub(c.max_messages);
        let over_bytes = (st.bytes() + len).saturating_sub(c.max_bytes);
        let average = st
            .stored_bytes
            .checked_div(st.stored())
            .unwrap_or(len)
            .max(1);
        over_count.max(over_bytes.div_ceil(average)).max(1)
    }

    /// The retry hint for a refusal at the topic's bound, in milliseconds (rounded up): when
    /// enough will have drained for it, spread after the hints of the refusals before it (see
    /// [`super::drain::DrainRate::spread_retry_after`]).
    pub(super) fn retry_after(&self, st: &mut TopicState, len: u64, now: Instant) -> u64 {
        let over = self.over_by(st, len);
        let wait = st.drain.spread_retry_after(over, self.max_retry_after, now);
        wait.as_micros().div_ceil(1000) as u64
    }

    /// `drop_oldest`, after a commit: evicts the oldest stored messages until the stored ones
    /// are within `max_messages` and `max_bytes` again. Returns how many were evicted.
    pub(super) fn evict_to_bound(&self, st: &mut TopicState, now: Instant) -> u64 {
        let (max_messages, max_bytes) = {
            let c = self.settings();
            (c.max_messages, c.max_bytes)
        };
        let (mut count, mut bytes, mut k) = (st.stored(), st.stored_bytes, 0usize);
        while count > max_messages || bytes > max_bytes {
            let Some(&size) = st.sizes.get(k) else { break };
            if size != HOLE {
                count -= 1;
                bytes -= u64::from(size);
            }
            k += 1;
        }
        let dropped = self.evict_front(st, k, OVERFLOW);
        if dropped > 0 {
            self.warn_on_drop_rate(st, dropped, now);
        }
        dropped
    }

    /// Evicts the `k` oldest entries of the topic's `sizes` (messages and holes): the topic's
    /// first sequence moves past them, the newest [`DROP_SAMPLE`] evicted messages are sampled
    /// with `reason` (`overflow` or `max_age`), every group forgets them (in flight or not)
    /// and is owed a `Gap` for the part it still needed, and they count as dropped. Returns how
    /// many messages (not holes) were evicted.
    pub(super) fn evict_front(&self, st: &mut TopicState, k: usize, reason: &'static str) -> u64 {
        let k = k.min(st.sizes.len());
        if k == 0 {
            return 0;
        }
        let dropped_at_ms = if reason == OVERFLOW {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        } else {
            // An age is on the broker's clock, and so is when it ran out.
            self.clock.unix_ms()
        };
        let sample_from = k.saturating_sub(DROP_SAMPLE);
        let mut dropped = 0u64;
        for i in 0..k {
            let seq = st.first_seq + i as u64;
            let Some(size) = st.pop_size() else { continue };
            dropped += 1;
            if i >= sample_from {
                let head = st
                    .tail
                    .get(seq)
                    .map(|m| m.payload.slice(..m.payload.len().min(DROP_SAMPLE_HEAD)));
                if st.recent_drops.len() == DROP_SAMPLE {
                    st.recent_drops.pop_front();
                }
                st.recent_drops.push_back(DroppedMessage {
                    seq,
                    bytes: size,
                    head,
                    reason: reason.into(),
                    dropped_at_ms,
                });
            }
        }
        let first_seq = st.first_seq + k as u64;
        st.first_seq = first_seq;
        st.tail.trim_below(first_seq);
        for g in st.groups.values_mut() {
            g.evict_below(first_seq);
        }
        self.counters.dropped.add(dropped);
        if reason == MAX_AGE {
            self.counters.dropped_max_age.add(dropped);
        }
        self.metrics.dropped.add(dropped);
        dropped
    }

    /// Logs (at most once a second) when the topic drops faster than `drop_warn_per_s`.
    fn warn_on_drop_rate(&self, st: &mut TopicState, dropped: u64, now: Instant) {
        let w = &mut st.drop_warning;
        w.count += dropped;
        let elapsed = now.saturating_duration_since(w.since);
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let per_second = w.count as f64 / elapsed.as_secs_f64();
        if per_second > self.drop_warn_per_s as f64 {
            let c = self.settings();
            tracing::warn!(
                topic = %self.name,
                dropped_per_s = per_second.round() as u64,
                drop_warn_per_s = self.drop_warn_per_s,
                max_messages = c.max_messages,
                max_bytes = c.max_bytes,
                "drop_oldest is evicting messages: consumers are not keeping up"
            );
        }
        *w = DropWarning::new(now);
    }
}

impl Topic {
    /// Accepts a publish for storage, parks it (`block`), or refuses it at a bound (see
    /// [`admit`]). When queued, the message counts against the bounds at once; either way the
    /// returned [`Confirm`] resolves once it is durable (or refused). Waits only when the
    /// writer's queue (`append_queue`) is full.
    ///
    /// The message's headers are stored and delivered with its payload; `max_message_bytes`
    /// and the topic's byte bounds count its [`Message::size`] (payload plus header names and
    /// values), less `slack` bytes for `max_message_bytes` only (a dead-letter copy's origin
    /// headers). Headers past the log's record format (see
    /// [`crate::storage::log::exceeded_header_bound`]) are refused with `MessageTooLarge`
    /// naming that bound, before they could fail a whole commit.
    pub async fn publish(
        &self,
        message: Message,
        permit: MemoryPermit,
        slack: u64,
    ) -> Result<Admitted, AppendError> {
        use crate::storage::log;
        if let Some(refusal) = self.storage_refusal() {
            return Err(refusal);
        }
        if let Some((bound, value)) = log::exceeded_header_bound(&message.headers) {
            let limit = Limit::new(bound, value);
            return Err(self.refusal(RejectReason::MessageTooLarge, limit, None));
        }
        let len = message.size();
        let now = Instant::now();
        let key = DedupKey::of(&message);
        let (reply, confirm) = oneshot::channel();
        {
            let mut st = lock(&self.state);
            if let Some(original) = self.deduplicate(&mut st, key.as_ref())? {
                return Ok(Admitted::Duplicate(original));
            }
            let decision = self.admit(&mut st, len, slack, now)?;
            if let Some(key) = &key {
                st.dedup.pending(key, self.clock.now());
            }
            if let Decision::Park = decision {
                let parked = Parked {
                    message,
                    reply,
                    deadline: now + self.max_block(),
                    permit,
                };
                return match self.park(&mut st, parked) {
                    Ok(()) => Ok(Admitted::Parked(confirm)),
                    Err(parked) => {
                        st.forget_pending(&parked.message);
                        Err(self.parking_full(&mut st, len, now))
                    }
                };
            }
        }
        if self
            .appends
            .send(Append::One {
                message,
                reply,
                permit,
            })
            .await
            .is_err()
        {
            self.release(1, len);
            if let Some(key) = &key {
                lock(&self.state).dedup.forget(key);
            }
            return Err(AppendError::Storage("topic is closed".into()));
        }
        Ok(Admitted::Queued(confirm))
    }

    /// What the dedup window says of a message with `key` (none: not deduplicated): `Ok(None)`
    /// to admit it; for a duplicate (counted), the confirm of its original's sequence —
    /// resolved already, or once the pending original is committed; or the refusal of a
    /// producer sequence older than the window keeps.
    pub(super) fn deduplicate(
        &self,
        st: &mut TopicState,
        key: Option<&DedupKey>,
    ) -> Result<Option<Confirm>, AppendError> {
        let Some(key) = key else { return Ok(None) };
        let (original, confirm) = oneshot::channel();
        match st.dedup.check(key, self.clock.now()) {
            Seen::New => return Ok(None),
            Seen::Duplicate(seq) => {
                let _ = original.send(Ok(seq));
            }
            Seen::Pending => st.dedup.wait_for_original(key, original),
            Seen::TooOld => {
                let window_ms = self.dedup_window.as_millis() as u64;
                let limit = Limit::new("dedup_window_ms", window_ms);
                return Err(self.refusal(RejectReason::SequenceTooOld, limit, None));
            }
        }
        st.dedup.answered_duplicate();
        Ok(Some(confirm))
    }

    pub(super) fn release(&self, count: u64, bytes: u64) {
        let mut st = lock(&self.state);
        st.pending_count -= count;
        st.pending_bytes -= bytes;
        self.admission.queued(-(count as i64));
    }
}
