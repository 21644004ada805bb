//! Crash simulation of a topic delete (and re-create) on [`SimFs`]: the topic directory is
//! renamed to a tombstone and its parent synced, then the state record deleted, then the
//! tombstone removed — what `Broker::delete_topic` does — with a power loss at a seeded point
//! (in the middle of the rename or of the removal, or between the steps). Start-up
//! reconciliation must then either keep the whole topic (every confirmed record, its state) or
//! finish the delete (no directory, no tombstone, no state); a topic created again under the
//! name starts at seq 1 with a new incarnation and serves none of the old messages.
//!
//! The state store (sled) runs on the real disk: it keeps what was written before the crash.
//! A failure names its seed: `WEIR_SIM_SEED=<seed> cargo test -p weir-broker --lib
//! delete_crash -- --nocapture`.

use std::path::Path;

use bytes::Bytes;

use super::log::{LogConfig, Message, SegmentLog};
use super::manifest;
use super::reconcile;
use super::records::{Manifest, TopicIdentity};
use super::sim::{DirCrash, SimFs, SimRng};
use super::state::StateStore;

const TOPICS: &str = "/data/topics";

fn open_log(sim: &SimFs, config: LogConfig) -> SegmentLog {
    SegmentLog::open_on(sim.fs(), &Path::new(TOPICS).join("t"), config).expect("open log")
}

/// Runs one seeded delete with a crash; returns what happened, or why it is wrong.
fn run(seed: u64) -> Result<&'static str, String> {
    let mut rng = SimRng::new(seed);
    let dir_crash = if rng.chance(50) {
        DirCrash::Prefix
    } else {
        DirCrash::Independent
    };
    let sim = SimFs::new(dir_crash);
    sim.create_dir_durable(Path::new(TOPICS));
    let fs = sim.fs();
    let topics = Path::new(TOPICS);
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = StateStore::open(state.path(), 1 << 20).map_err(|e| e.to_string())?;
    let old = Manifest {
        config: super::test_topic_config("t"),
        identity: TopicIdentity::new(),
    };
    manifest::create_dir(fs.as_ref(), topics, &old).map_err(|e| e.to_string())?;
    store
        .save_topic(&old.config, &old.identity)
        .and_then(|()| store.flush())
        .map_err(|e| e.to_string())?;
    let config = LogConfig {
        segment_bytes: rng.range(100, 800),
        seq_reservation: rng.range(1, 32),
        ..LogConfig::default()
    };
    let confirmed = rng.range(1, 30);
    {
        let mut log = open_log(&sim, config);
        for i in 0..confirmed {
            let m = Message {
                producer: None,
                headers: Vec::new(),
                payload: Bytes::from(format!("old-{i}")),
            };
            log.append_batch(&[m], 1).map_err(|e| e.to_string())?;
            log.sync().map_err(|e| e.to_string())?;
            log.ensure_reserved().map_err(|e| e.to_string())?;
        }
    }

    // The delete, with a crash at a seeded point.
    let phase = rng.below(3);
    if phase == 0 {
        sim.arm_crash(rng.range(1, 2));
    }
    let tomb = manifest::tombstone(fs.as_ref(), topics, "t").map_err(|e| e.to_string())?;
    if phase == 2 {
        store.delete_topic("t").map_err(|e| e.to_string())?;
        store.flush().map_err(|e| e.to_string())?;
        sim.arm_crash(rng.range(1, 3));
        if let Some(tomb) = &tomb {
            manifest::remove_dir(fs.as_ref(), tomb).map_err(|e| e.to_string())?;
        }
    }
    drop(store);
    let sim = sim.crash(&mut rng);
    let fs = sim.fs();

    let (store, done) = reconcile::recover(fs.as_ref(), state.path(), topics, 1 << 20)
        .map_err(|e| format!("start-up after the crash failed: {e}"))?;
    let names = fs.list(topics).map_err(|e| e.to_string())?;
    let outcome = if done.topics.iter().any(|c| c.name == "t") {
        if phase != 0 {
            return Err(format!(
                "the delete was durable (phase {phase}), yet the topic is back"
            ));
        }
        let kept = manifest::read(fs.as_ref(), &topics.join("t")).map_err(|e| e.to_string())?;
        if kept.map(|m| m.identity) != Some(old.identity) {
            return Err("the kept topic lost its manifest".into());
        }
        let log = open_log(&sim, config);
        let stored = log
            .read(log.first_seq(), usize::MAX, usize::MAX)
            .map_err(|e| e.to_string())?;
        if stored.len() as u64 != confirmed {
            return Err(format!(
                "kept topic holds {} of {confirmed} confirmed records",
                stored.len()
            ));
        }
        "kept"
    } else {
        if !names.is_empty() {
            return Err(format!("a finished delete left {names:?}"));
        }
        if !store
            .load_groups("t")
            .map_err(|e| e.to_string())?
            .is_empty()
        {
            return Err("a finished delete left group state".into());
        }
        // Created again: a new incarnation, numbering from 1, none of the old messages.
        let new = Manifest {
            config: super::test_topic_config("t"),
            identity: TopicIdentity::new(),
        };
        manifest::create_dir(fs.as_ref(), topics, &new).map_err(|e| e.to_string())?;
        let mut log = open_log(&sim, config);
        let m = Message {
            producer: None,
            headers: Vec::new(),
            payload: Bytes::from_static(b"new"),
        };
        let seq = log.append_batch(&[m], 1).map_err(|e| e.to_string())?;
        let all = log
            .read(1, usize::MAX, usize::MAX)
            .map_err(|e| e.to_string())?;
        if seq != 1 || all.len() != 1 || all[0].payload != "new" {
            return Err(format!(
                "the re-created topic got seq {seq} and holds {} records",
                all.len()
            ));
        }
        "deleted"
    };
    Ok(outcome)
}

#[test]
fn delete_crash_keeps_the_whole_topic_or_finishes_the_delete() {
    let seeds: Vec<u64> = match std::env::var("WEIR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..200).collect(),
    };
    let (mut kept, mut deleted) = (0, 0);
    for seed in seeds.iter().copied() {
        match run(seed) {
            Ok("kept") => kept += 1,
            Ok(_) => deleted += 1,
            Err(e) => panic!(
                "seed {seed} failed: {e}\nreplay: WEIR_SIM_SEED={seed} cargo test -p weir-broker \
                 --lib delete_crash -- --nocapture"
            ),
        }
    }
    eprintln!(
        "delete crash sim: {kept} kept, {deleted} deleted over {} seeds",
        seeds.len()
    );
    if seeds.len() > 1 {
        assert!(
            kept > 0 && deleted > 0,
            "both outcomes exercised: {kept} kept, {deleted} deleted"
        );
    }
}
