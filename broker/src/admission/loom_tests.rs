//! loom model tests of the concurrent pieces: token bucket, memory budget, credit accounting,
//! and the parking queue's exactly-once hand-off.
//!
//! Run: `RUSTFLAGS="--cfg weir_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p weir-broker --lib --release loom_`

use std::time::Instant;

use loom::sync::{Arc, Mutex};
use loom::thread;
use tokio::sync::mpsc;

use super::bucket::TokenBucket;
use super::budget::MemoryBudget;
use crate::group::{Group, MemberId, Plan};
use crate::topic::parking::ParkingQueue;

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
                    let permit = budget.try_acquire(6);
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
fn loom_credit_is_never_exceeded_and_in_flight_stays_bounded() {
    loom::model(|| {
        let (tx, _rx) = mpsc::channel(16);
        let member = MemberId { conn: 1, sub: 1 };
        let group = Arc::new(Mutex::new(Group::new(1, 3)));
        group.lock().unwrap().join(member, tx);
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
                    group.lock().unwrap().plan(100, 100, &mut plan);
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
        assert!(delivered.len() - group.lock().unwrap().record().unacked.len() <= 4);
        assert!(
            group.lock().unwrap().record().unacked.len() <= 3,
            "over max_in_flight"
        );
    });
}

#[test]
fn loom_parked_items_leave_exactly_once_and_never_past_capacity() {
    loom::model(|| {
        let queue = Arc::new(Mutex::new(ParkingQueue::new(2)));
        let parker = {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut refused = Vec::new();
                for item in 0..3u32 {
                    if let Err(item) = queue.lock().unwrap().park(item) {
                        refused.push(item);
                    }
                    assert!(queue.lock().unwrap().len() <= 2);
                }
                refused
            })
        };
        let unparker = {
            let queue = queue.clone();
            thread::spawn(move || {
                queue
                    .lock()
                    .unwrap()
                    .pop_front_if(|_| true)
                    .into_iter()
                    .collect::<Vec<_>>()
            })
        };
        let expirer = {
            let queue = queue.clone();
            thread::spawn(move || {
                queue
                    .lock()
                    .unwrap()
                    .pop_front_if(|item| *item == 0)
                    .into_iter()
                    .collect::<Vec<_>>()
            })
        };
        let mut seen = parker.join().unwrap();
        seen.extend(unparker.join().unwrap());
        seen.extend(expirer.join().unwrap());
        seen.extend(queue.lock().unwrap().drain());
        seen.sort_unstable();
        assert_eq!(
            seen,
            vec![0, 1, 2],
            "every item refused, unparked, expired or drained exactly once"
        );
    });
}
