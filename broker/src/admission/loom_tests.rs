//! loom model tests of the concurrent pieces, in the spirit of tokio's `loom_semaphore_batch`:
//! an invariant asserted inside the model, and a conservation check at the end. Covers the
//! admission primitives (token bucket, rate limit, memory budget, parking lot), plus the group's
//! credit accounting and the topic's current parking queue.
//!
//! Run (release, ~seconds):
//! `RUSTFLAGS="--cfg weir_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p weir-broker --lib --release admission::`

use std::time::{Duration, Instant};

use loom::sync::{Arc, Mutex};
use loom::thread;
use tokio::sync::mpsc;

use super::bucket::{RateLimit, TokenBucket};
use super::budget::{MemoryBudget, MemoryPermit};
use super::parking::{Full, ParkingLot};
use super::share::ConnectionMemory;
use crate::group::{Group, MemberId, Plan};

/// A model checker exploring every interleaving with at most two preemptions.
fn bounded() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder
}

#[test]
fn loom_token_bucket_never_serves_more_than_its_burst() {
    loom::model(|| {
        let now = Instant::now();
        let bucket = Arc::new(TokenBucket::new(1, 3, now));
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let b = bucket.clone();
                thread::spawn(move || (0..2).filter(|_| b.try_take(1, now).is_ok()).count())
            })
            .collect();
        let served: usize = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(served, 3, "no time passed: exactly the burst is served");
        assert_eq!(bucket.available(now), 0);
    });
}

#[test]
fn loom_token_bucket_serves_at_most_burst_plus_rate_times_elapsed() {
    bounded().check(|| {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        // 1 token/s, burst 2: over [t0, t1] at most 2 + 1 × 1 = 3 tokens, whatever the order
        // the threads reach the bucket in (a thread with the older clock may come second).
        let bucket = Arc::new(TokenBucket::new(1, 2, t0));
        let takers: Vec<_> = [t0, t1]
            .into_iter()
            .map(|now| {
                let b = bucket.clone();
                thread::spawn(move || (0..2).filter(|_| b.try_take(1, now).is_ok()).count())
            })
            .collect();
        let served: usize = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert!((2..=3).contains(&served), "served {served}");
        assert_eq!(bucket.available(t1), 0, "every token was there to be taken");
    });
}

#[test]
fn loom_rate_limit_gives_the_message_token_back_when_the_bytes_refuse() {
    bounded().check(|| {
        let t0 = Instant::now();
        // 2 messages but 10 bytes: two 6-byte publishes cannot both pass.
        let limit = Arc::new(RateLimit::new(1, 2, 1, 10, t0));
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let l = limit.clone();
                thread::spawn(move || l.try_take(6, t0).is_ok())
            })
            .collect();
        let passed = publishers
            .into_iter()
            .map(|p| p.join().unwrap())
            .filter(|passed| *passed)
            .count();
        assert_eq!(passed, 1);
        // Conservation: exactly the passed publish's tokens are gone.
        assert_eq!(limit.messages().available(t0), 1);
        assert_eq!(limit.bytes().available(t0), 4);
    });
}

#[test]
fn loom_memory_budget_never_exceeds_capacity_and_conserves_bytes() {
    loom::model(|| {
        let budget = MemoryBudget::new(10);
        let holders: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                thread::spawn(move || {
                    let permit = budget.try_acquire(6).ok();
                    assert!(budget.used() <= 10);
                    permit
                })
            })
            .collect();
        let permits: Vec<_> = holders
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(permits.len(), 1, "6 + 6 bytes never fit in 10");
        // A permit taken on one thread is given back on another.
        let dropper = thread::spawn(move || drop(permits));
        dropper.join().unwrap();
        assert_eq!(budget.used(), 0, "every permit gave its bytes back");
        assert!(budget.high_water() <= 10);
    });
}

#[test]
fn loom_memory_charges_and_acquires_race_without_losing_bytes() {
    loom::model(|| {
        let budget = MemoryBudget::new(10);
        // A delivery is charged (always counted) while a publish tries to fit and a cache
        // tries to take room below half the budget.
        let charger = {
            let budget = budget.clone();
            thread::spawn(move || budget.charge(6))
        };
        let publisher = {
            let budget = budget.clone();
            thread::spawn(move || budget.try_acquire(6).ok())
        };
        let mut cache = budget.empty_permit();
        let cached = cache.try_grow_within(3, 5);
        let delivery = charger.join().unwrap();
        let publish = publisher.join().unwrap();
        let held = 6 + publish.as_ref().map_or(0, MemoryPermit::bytes) + cache.bytes();
        assert_eq!(budget.used(), held, "every byte taken is counted once");
        assert_eq!(
            cache.bytes(),
            if cached { 3 } else { 0 },
            "a grow that reports success holds its bytes, a refused one holds none"
        );
        drop((delivery, publish, cache));
        assert_eq!(budget.used(), 0, "every permit gave its bytes back");
    });
}

#[test]
fn loom_memory_permits_split_shrink_grow_and_drop_across_threads() {
    bounded().check(|| {
        let budget = MemoryBudget::new(10);
        // One thread acquires and splits, handing half to be dropped elsewhere; another
        // acquires, shrinks and grows again.
        let splitter = {
            let budget = budget.clone();
            thread::spawn(move || {
                let mut whole = budget.try_acquire(6).ok()?;
                let half = whole.split(3).unwrap();
                assert!(budget.used() <= 10);
                Some((whole, half))
            })
        };
        let resizer = {
            let budget = budget.clone();
            thread::spawn(move || {
                let mut p = budget.try_acquire(5).ok()?;
                assert_eq!(p.shrink(3), 3);
                let grew = p.try_grow(4);
                assert!(budget.used() <= 10);
                Some((p, grew))
            })
        };
        let split = splitter.join().unwrap();
        let resized = resizer.join().unwrap();
        let mut held: Vec<MemoryPermit> = Vec::new();
        if let Some((whole, half)) = split {
            held.push(whole);
            let elsewhere = thread::spawn(move || drop(half));
            elsewhere.join().unwrap();
        }
        if let Some((p, _)) = resized {
            held.push(p);
        }
        // Conservation: what the budget counts is exactly what the live permits hold.
        let live: u64 = held.iter().map(MemoryPermit::bytes).sum();
        assert_eq!(budget.used(), live);
        assert!(budget.high_water() <= 10);
        drop(held);
        assert_eq!(budget.used(), 0);
    });
}

#[test]
fn loom_parking_lot_every_item_leaves_exactly_once_and_never_past_capacity() {
    bounded().check(|| {
        let t0 = Instant::now();
        let lot = Arc::new(ParkingLot::new(2));
        // Deadlines out of FIFO order on purpose: item 1 expires, 0 and 2 do not.
        let deadlines = [t0 + Duration::from_secs(5), t0, t0 + Duration::from_secs(5)];
        let parker = {
            let lot = lot.clone();
            thread::spawn(move || {
                let mut left = Vec::new();
                let mut tickets = Vec::new();
                for (item, deadline) in deadlines.into_iter().enumerate() {
                    match lot.park(item, deadline) {
                        Ok(ticket) => tickets.push(ticket),
                        Err(Full(item)) => left.push(item),
                    }
                    assert!(lot.len() <= 2, "past capacity");
                }
                // The publisher of the first parked item goes away.
                if let Some(first) = tickets.first() {
                    left.extend(lot.cancel(*first));
                }
                left
            })
        };
        let unparker = {
            let lot = lot.clone();
            thread::spawn(move || {
                // A hand-off that fails puts the item back first; the next one takes it.
                assert_eq!(lot.unpark_next_with(Err::<(), _>), None);
                lot.unpark_next().into_iter().collect::<Vec<_>>()
            })
        };
        let expirer = {
            let lot = lot.clone();
            thread::spawn(move || lot.expire(t0))
        };
        let mut seen = parker.join().unwrap();
        seen.extend(unparker.join().unwrap());
        seen.extend(expirer.join().unwrap());
        seen.extend(lot.drain());
        seen.sort_unstable();
        assert_eq!(
            seen,
            vec![0, 1, 2],
            "every item refused, cancelled, unparked, expired or drained exactly once"
        );
        assert!(lot.is_empty());
    });
}

#[test]
fn loom_a_connection_share_and_the_halves_hold_under_racing_reads_and_deliveries() {
    bounded().check(|| {
        let global = MemoryBudget::new(20);
        let half = global.limit();
        let (inbound, outbound) = (global.child(half, 10), global.child(half, 10));
        let conn = ConnectionMemory::new(&inbound, &outbound, 8);
        // The connection's reader and a dispatcher delivering to it race for its share while
        // a neighbour publishes into the inbound half.
        let reader = {
            let conn = conn.clone();
            thread::spawn(move || conn.inbound().try_acquire(5).ok())
        };
        let dispatcher = {
            let conn = conn.clone();
            thread::spawn(move || conn.outbound().try_acquire(5).ok())
        };
        let neighbour = {
            let inbound = inbound.clone();
            thread::spawn(move || inbound.try_acquire(6).ok())
        };
        let read = reader.join().unwrap();
        let sent = dispatcher.join().unwrap();
        let other = neighbour.join().unwrap();
        assert!(
            read.is_none() || sent.is_none(),
            "5 + 5 bytes never fit in a share of 8"
        );
        // The share is taken first: a connection over it never reserves (even for a moment)
        // room its neighbour then misses. So a refused neighbour means the reader holds it.
        assert!(
            other.is_some() || read.is_some(),
            "the neighbour is refused only by what is held"
        );
        assert!(conn.share().high_water() <= 8);
        assert!(inbound.high_water() <= 10 && outbound.high_water() <= 10);
        let live: u64 = [&read, &sent, &other]
            .iter()
            .filter_map(|p| p.as_ref().map(MemoryPermit::bytes))
            .sum();
        assert_eq!(global.used(), live, "each byte counted once at the top");
        drop((read, sent, other));
        assert_eq!((global.used(), conn.share().used()), (0, 0));
    });
}

#[test]
fn loom_credit_is_never_exceeded_and_in_flight_stays_bounded() {
    loom::model(|| {
        let (tx, _rx) = mpsc::channel(16);
        let member = MemberId { conn: 1, sub: 1 };
        let group = Arc::new(Mutex::new(Group::with_config(
            1,
            3,
            weir_protocol::GroupConfig::default(),
        )));
        let memory = MemoryBudget::new(u64::MAX);
        group.lock().unwrap().join(member, tx.clone(), tx, memory);
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let granter = {
            let group = group.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    group.lock().unwrap().grant(member, 2, 10).unwrap();
                }
            })
        };
        let dispatcher = {
            let (group, delivered) = (group.clone(), delivered.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    let mut plan = Plan::new();
                    group.lock().unwrap().plan(
                        100,
                        100,
                        std::time::Instant::now(),
                        &|_| Some(1),
                        &mut plan,
                    );
                    delivered.lock().unwrap().extend(plan.iter().map(|p| p.seq));
                }
            })
        };
        let acker = {
            let (group, delivered) = (group.clone(), delivered.clone());
            thread::spawn(move || {
                let seen: Vec<u64> = delivered.lock().unwrap().clone();
                group.lock().unwrap().ack(member, &seen);
            })
        };
        for t in [granter, dispatcher, acker] {
            t.join().unwrap();
        }
        let delivered = delivered.lock().unwrap();
        assert!(
            delivered.len() <= 4,
            "more deliveries than credit granted: {delivered:?}"
        );
        assert!(delivered.len() - group.lock().unwrap().record(Instant::now()).unacked.len() <= 4);
        assert!(
            group.lock().unwrap().record(Instant::now()).unacked.len() <= 3,
            "over max_in_flight"
        );
    });
}
