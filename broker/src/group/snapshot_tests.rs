//! Seeded simulation of a group's durable state across crashes: random deliveries, acks,
//! nacks, terms, ack timeouts and members leaving, with the group's record taken (as the
//! periodic state flush does) at random points. A crash recovers the group from the last record
//! taken. Asserts, for every crash: the recovered cursor is never ahead of the acks — every
//! message delivered and not settled when the record was taken is delivered again (unacked,
//! nacked or due for the dead-letter topic), every message never delivered is still ahead of
//! the cursor — and no message acked by then comes back. A failure names its seed:
//! `WEIR_SIM_SEED=<seed> cargo test -p weir-broker --lib group_snapshot -- --nocapture`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weir_protocol::GroupConfig;

use super::{Departure, Group, MemberId, Plan};
use crate::admission::budget::MemoryBudget;
use crate::storage::records::GroupRecord;
use crate::storage::sim::SimRng;

const MESSAGES: u64 = 200;

/// What the group must deliver again after recovering from `record`.
fn owed(group: &Group, committed: u64) -> BTreeSet<u64> {
    let record = group.record(Instant::now());
    let mut out: BTreeSet<u64> = (record.cursor..committed).collect();
    out.extend(record.unacked.iter().map(|(s, _)| *s));
    out.extend(record.delayed.iter().map(|(s, _, _)| *s));
    out.extend(record.dead.iter().map(|(s, _, _)| *s));
    out
}

/// Runs seed `seed`: how many crashes it checked and how many acks it made.
fn run(seed: u64) -> Result<(u64, u64), String> {
    let mut rng = SimRng::new(seed);
    let config = GroupConfig {
        ordering: weir_protocol::GroupOrdering::Shared,
        ack_timeout_ms: 1_000,
        max_attempts: rng.range(1, 4) as u32,
        dead_letter_topic: "t.dlq".into(),
    };
    let max_in_flight = rng.range(1, 16) as u32;
    let mut group = Group::with_config(1, max_in_flight, config.clone());
    let (tx, mut rx) = mpsc::channel(1 << 12);
    let mut members: Vec<MemberId> = Vec::new();
    let mut next_sub = 0;
    let mut now = Instant::now();
    // Settled for good (acked, or moved to the dead-letter topic) and in flight, per the model.
    let mut settled: BTreeSet<u64> = BTreeSet::new();
    let mut in_flight: Vec<(MemberId, u64)> = Vec::new();
    let mut snapshot: Option<(GroupRecord, BTreeSet<u64>)> = None;
    let (mut crashes, mut acks) = (0, 0);
    for _ in 0..400 {
        let committed = MESSAGES + 1;
        match rng.below(100) {
            0..=9 => {
                next_sub += 1;
                let id = MemberId {
                    conn: next_sub,
                    sub: next_sub,
                };
                group.join(id, tx.clone(), tx.clone(), MemoryBudget::new(u64::MAX));
                let _ = group.grant(id, rng.range(1, 8) as u32, 64);
                members.push(id);
            }
            10..=29 if !members.is_empty() => {
                let id = members[rng.below(members.len() as u64) as usize];
                let _ = group.grant(id, rng.range(1, 8) as u32, 64);
                let mut plan = Plan::new();
                group.plan(committed, 16, now, &|_| Some(1), &mut plan);
                in_flight.extend(plan.iter().map(|p| (p.member, p.seq)));
            }
            30..=54 if !in_flight.is_empty() => {
                let (id, seq) = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
                if group.ack(id, &[seq]) > 0 {
                    settled.insert(seq);
                    acks += 1;
                }
            }
            55..=62 if !in_flight.is_empty() => {
                let (id, seq) = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
                group.nack(id, &[seq], Duration::from_millis(rng.below(500)), now);
            }
            63..=66 if !in_flight.is_empty() => {
                let (id, seq) = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
                group.term(id, &[seq], "sim");
            }
            67..=72 if !members.is_empty() => {
                let id = members.swap_remove(rng.below(members.len() as u64) as usize);
                group.leave(id, Departure::Lost);
                in_flight.retain(|(m, _)| *m != id);
            }
            73..=80 => {
                now += Duration::from_millis(rng.range(100, 1_500));
                group.expire(now);
            }
            81..=86 => {
                for dead in group.dead_letters(4) {
                    if group.dead_lettered(dead.seq) {
                        settled.insert(dead.seq);
                    }
                }
            }
            87..=94 => snapshot = Some((group.record(now), settled.clone())),
            95..=99 => {
                // A crash: recover from the last record flushed, and check it.
                let Some((record, settled_then)) = snapshot.clone() else {
                    continue;
                };
                crashes += 1;
                let recovered = Group::recover(&record, 1, max_in_flight, &config, now);
                let must = owed(&recovered, committed);
                for seq in 1..committed {
                    let was_settled = settled_then.contains(&seq);
                    if !was_settled && !must.contains(&seq) {
                        return Err(format!(
                            "seq {seq} unsettled when flushed, yet never delivered again"
                        ));
                    }
                    if was_settled && must.contains(&seq) {
                        return Err(format!("seq {seq} settled when flushed, yet owed again"));
                    }
                }
                group = recovered;
                members.clear();
                in_flight.clear();
                settled = settled_then;
            }
            _ => {}
        }
        while rx.try_recv().is_ok() {}
    }
    Ok((crashes, acks))
}

#[test]
fn group_snapshot_cursors_are_never_ahead_of_acks_after_a_crash() {
    let seeds: Vec<u64> = match std::env::var("WEIR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..200).collect(),
    };
    let (mut crashes, mut acks) = (0, 0);
    for &seed in &seeds {
        match run(seed) {
            Ok((c, a)) => {
                crashes += c;
                acks += a;
            }
            Err(e) => panic!(
                "seed {seed} failed: {e}\nreplay: WEIR_SIM_SEED={seed} cargo test -p weir-broker \
                 --lib group_snapshot -- --nocapture"
            ),
        }
    }
    eprintln!(
        "group snapshot sim: {crashes} crashes, {acks} acks over {} seeds",
        seeds.len()
    );
    assert!(
        crashes > 0 && acks > 0,
        "the runs exercised crashes and acks"
    );
}
