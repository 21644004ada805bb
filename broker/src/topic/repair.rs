//! `weir topic repair`: bringing a failed or damaged topic's storage back.
//!
//! A **failed** topic (a write or sync failed, the log fenced and cut back to its last good
//! sync) has its log reopened, which re-verifies the files and numbers on past the reserved
//! seqs, so no seq of the failed batch (outcome unknown) is handed out again. A **damaged**
//! topic has its log repaired (see `storage/log/repair.rs`): the damaged segment quarantined,
//! its readable prefix kept, the damaged range skipped — every group owed a `Gap` for the part
//! it still needed, the skipped messages counted as dropped.

use weir_protocol::TopicHealth;

use super::{lock, Topic, TopicState};
use crate::storage::log::{Repaired, SegmentLog};

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairOutcome {
    /// The seqs skipped (`from..=to`), if a damaged range was.
    pub skipped: Option<(u64, u64)>,
    /// The files moved to quarantine, relative to the topic's directory.
    pub quarantined: Vec<String>,
    /// The topic's health afterwards.
    pub health: TopicHealth,
}

impl Topic {
    /// Repairs the topic's storage (blocking: call from a blocking thread); see the module
    /// doc. A healthy or full topic is left alone. If the reopened log is (still, or further
    /// on) damaged, or confirmed records turn out to be missing, the topic is damaged at that
    /// point afterwards — run the repair again to skip that range too. Errors are I/O failures
    /// of the repair itself; the topic stays as it was.
    pub fn repair(&self) -> Result<RepairOutcome, String> {
        // Held throughout: two repairs run one after the other, the second seeing the first's
        // outcome.
        let mut log = self.log.write().unwrap_or_else(|p| p.into_inner());
        let suspect = match self.health() {
            TopicHealth::Healthy | TopicHealth::Full { .. } => {
                return Ok(RepairOutcome {
                    skipped: None,
                    quarantined: Vec::new(),
                    health: self.health(),
                })
            }
            TopicHealth::Damaged { at_seq, .. } => Some(at_seq),
            TopicHealth::Failed { .. } => None,
        };
        let (fs, dir, config) = &self.files;
        let (mut fresh, repaired) = match suspect {
            Some(at) => SegmentLog::repair(fs.clone(), dir, *config, Some(at)),
            None => SegmentLog::open_on(fs.clone(), dir, *config).map(|l| (l, Repaired::default())),
        }
        .map_err(|e| e.to_string())?;
        self.disk
            .stored_changed(fresh.disk_bytes() as i64 - log.disk_bytes() as i64);
        let mut st = lock(&self.state);
        let confirmed = st.committed_next;
        // A hole the topic did not know of, starting below what it confirmed: those records
        // were lost (a failed write's cut went too far).
        let known =
            |hole: &(u64, u64)| log.holes().any(|h| h == *hole) || repaired.skipped == Some(*hole);
        let lost_at = fresh
            .holes()
            .filter(|h| h.0 < confirmed && !known(h))
            .map(|h| h.0)
            .chain((fresh.next_seq() < confirmed).then(|| fresh.next_seq()))
            .min();
        let mut damage = match (fresh.damage(), lost_at) {
            (Some(d), _) => Some((d.seq, d.to_string())),
            (None, Some(at)) => Some((
                at,
                format!("confirmed records from {at} are missing after the failed write"),
            )),
            (None, None) => None,
        };
        if damage.is_none() {
            let from = repaired.skipped.map_or(confirmed, |(from, _)| from);
            // The messages of the skipped range: those the topic had read back, plus every seq
            // past where reading stopped (the damage found at start) that no hole held.
            let lost = repaired.skipped.map_or(0, |(from, to)| {
                let unread_from = from.max(st.committed_next).max(st.first_seq);
                let in_old_hole = |seq: u64| log.holes().any(|(f, t)| seq >= f && seq < t);
                st.stored_in(from, to.min(st.committed_next))
                    + (unread_from..to).filter(|&s| !in_old_hole(s)).count() as u64
            });
            st.truncate_sizes(from);
            let extended = st.extend_to(&fresh, &self.clock);
            if let Some((from, to)) = repaired.skipped {
                self.skip_lost(&mut st, from, to, lost);
            }
            // Damage further on (a record that does not read back): the topic is damaged there.
            if let Err(e) = extended {
                damage = Some((st.committed_next, e.to_string()));
            }
        }
        if let Some((_, reason)) = &damage {
            fresh.fence(format!("damaged: {reason}"));
        }
        *log = fresh;
        drop(st);
        drop(log);
        let health = match damage {
            // From `Failed` straight to `Damaged`: no publish is taken in between.
            Some((at_seq, reason)) => {
                // A damaged topic stays damaged, at the new point: through `Failed` (publishes
                // are refused in both), since the first damage found is otherwise kept.
                *lock(&self.health) = TopicHealth::Failed {
                    reason: "repair found more damage".into(),
                };
                self.mark_damaged(at_seq, reason);
                self.health()
            }
            None => {
                self.restore_health();
                self.wake_dispatcher.notify_one();
                TopicHealth::Healthy
            }
        };
        let quarantined = repaired
            .quarantined
            .iter()
            .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
            .collect();
        Ok(RepairOutcome {
            skipped: repaired.skipped.map(|(from, to)| (from, to - 1)),
            quarantined,
            health,
        })
    }

    /// After a repair skipped `from..to`: every group skips it (owing its members a `Gap` for
    /// what it still needed), and the `dropped` messages it held count as dropped.
    fn skip_lost(&self, st: &mut TopicState, from: u64, to: u64, dropped: u64) {
        for (name, g) in st.groups.iter_mut() {
            if let Some((gap_from, gap_to)) = g.skip(from, to, true) {
                tracing::warn!(topic = %self.name, group = %name, from = gap_from, to = gap_to, "repair skipped messages the group had not acked");
            }
        }
        self.counters.dropped.add(dropped);
        self.counters.dropped_damaged.add(dropped);
        self.metrics.dropped.add(dropped);
        tracing::warn!(topic = %self.name, from, to = to - 1, dropped, "repair skipped the damaged range");
    }
}
