//! Tests of seq reservation, holes and repair: no seq that may have been confirmed is handed
//! out again, whatever the disk lost; a damaged range is quarantined and skipped.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::tests::{
    append_n, cut_last_segment, headers, payload, record_offset, segment_files, small,
};
use super::*;

/// `small()` segments reserving `n` seqs at a time.
fn reserving(n: u64) -> LogConfig {
    LogConfig {
        seq_reservation: n,
        ..small()
    }
}

/// Appends `n` records in batches of 5, each batch synced and covered by the reservation — what
/// the writer does before it confirms. Returns the last confirmed seq.
fn confirm_n(log: &mut SegmentLog, n: u64) -> u64 {
    for _ in 0..n.div_ceil(5) {
        append_n(log, 5, 5);
        log.sync().unwrap();
        log.ensure_reserved().unwrap();
    }
    log.next_seq() - 1
}

/// Checks every record the log serves from `from` against the test messages, skipping holes.
fn check_stored(log: &SegmentLog, from: u64) -> usize {
    let recs = log.read(from, usize::MAX, usize::MAX).unwrap();
    for r in &recs {
        assert_eq!(r.payload, payload(r.seq), "payload of {}", r.seq);
        assert_eq!(r.headers, headers(r.seq), "headers of {}", r.seq);
    }
    let holes: Vec<(u64, u64)> = log.holes().collect();
    let expected = (from..log.next_seq())
        .filter(|s| !holes.iter().any(|&(f, t)| *s >= f && *s < t))
        .count();
    assert_eq!(recs.len(), expected, "records outside holes {holes:?}");
    recs.len()
}

fn seed() -> u64 {
    let seed = std::env::var("WEIR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0011);
    eprintln!(
        "seed {seed} (replay: WEIR_SIM_SEED={seed} cargo test -p weir-broker --lib repair_tests)"
    );
    seed
}

#[test]
fn a_crash_numbers_on_past_the_reservation_and_a_clean_close_leaves_no_hole() {
    let dir = tempfile::tempdir().unwrap();
    let confirmed = {
        let mut log = SegmentLog::open(dir.path(), reserving(100)).unwrap();
        confirm_n(&mut log, 10)
    }; // dropped without a clean close: a crash
    let mut log = SegmentLog::open(dir.path(), reserving(100)).unwrap();
    let resumed = log.next_seq();
    assert!(
        resumed > confirmed + 1,
        "numbering resumes past the reservation"
    );
    assert_eq!(
        log.holes().collect::<Vec<_>>(),
        vec![(confirmed + 1, resumed)]
    );
    assert_eq!(check_stored(&log, 1), confirmed as usize);
    append_n(&mut log, 3, 3);
    log.sync().unwrap();
    log.ensure_reserved().unwrap();
    log.release_reservation().unwrap();
    let end = log.next_seq();
    drop(log);
    let log = SegmentLog::open(dir.path(), reserving(100)).unwrap();
    assert_eq!(
        log.next_seq(),
        end,
        "a clean close reserves nothing past the end"
    );
    assert_eq!(log.holes().count(), 1);
    assert_eq!(check_stored(&log, 1), confirmed as usize + 3);
}

#[test]
fn the_last_segment_cut_anywhere_never_hands_out_a_confirmed_seq_again() {
    // Issue case 1: a disk that lost written data at the end of the active segment.
    let seed = seed();
    for round in 0..8u64 {
        let dir = tempfile::tempdir().unwrap();
        let confirmed = {
            let mut log = SegmentLog::open(dir.path(), reserving(64)).unwrap();
            confirm_n(&mut log, 60);
            log.record_high_water().unwrap();
            confirm_n(&mut log, 12) // the last 12 after the mark: it lags
        };
        cut_last_segment(dir.path(), seed, round);
        let log = SegmentLog::open(dir.path(), reserving(64)).unwrap();
        let log = if log.damage().is_some() {
            drop(log);
            let (log, repaired) =
                SegmentLog::repair(crate::storage::fs::os(), dir.path(), reserving(64), None)
                    .unwrap();
            assert!(repaired.skipped.is_some(), "round {round}");
            log
        } else {
            log
        };
        assert!(log.damage().is_none(), "round {round}");
        assert!(
            log.next_seq() > confirmed,
            "round {round}: next_seq {} but {confirmed} was confirmed",
            log.next_seq()
        );
        check_stored(&log, 1);
    }
}

#[test]
fn repair_quarantines_a_damaged_sealed_segment_and_skips_only_its_damaged_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentLog::open(dir.path(), reserving(16)).unwrap();
    confirm_n(&mut log, 200);
    let files = segment_files(dir.path());
    assert!(files.len() > 4);
    // Flip bytes in the payload of a record in the middle of a sealed segment.
    let victim = &files[2];
    let base = segment::parse_name(victim.file_name().unwrap().to_str().unwrap(), ".log").unwrap();
    let next_base =
        segment::parse_name(files[3].file_name().unwrap().to_str().unwrap(), ".log").unwrap();
    let bad = (base + next_base) / 2;
    let (at, len) = record_offset(victim, bad);
    let file = OpenOptions::new().write(true).open(victim).unwrap();
    file.write_all_at(&[0xde, 0xad, 0xbe, 0xef], at + len - 4)
        .unwrap();
    // Read at runtime: the checkpoint vouched for the segment, the CRC does not.
    let err = log.read(bad, 1, usize::MAX).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { seq, .. } if seq == bad),
        "{err}"
    );
    let end = log.next_seq();
    log.release_reservation().unwrap();
    drop(log);
    let (mut log, repaired) = SegmentLog::repair(
        crate::storage::fs::os(),
        dir.path(),
        reserving(16),
        Some(bad),
    )
    .unwrap();
    assert_eq!(repaired.skipped, Some((bad, next_base)));
    assert_eq!(repaired.quarantined.len(), 1);
    let kept = &repaired.quarantined[0];
    assert!(kept.starts_with(dir.path().join(QUARANTINE_DIR)));
    assert_eq!(
        fs::read(kept).unwrap().len() as u64,
        fs::metadata(kept).unwrap().len()
    );
    assert!(
        fs::read(kept)
            .unwrap()
            .windows(4)
            .any(|w| w == [0xde, 0xad, 0xbe, 0xef]),
        "the evidence is kept"
    );
    assert!(log.damage().is_none());
    assert_eq!(
        log.next_seq(),
        end,
        "nothing past the damaged range is lost"
    );
    assert_eq!(check_stored(&log, 1) as u64, end - 1 - (next_base - bad));
    // It takes appends again, and survives a reopen with its hole.
    let first = log.append_batch(&[Message::default()], 1).unwrap();
    assert_eq!(first, end);
    log.sync().unwrap();
    log.release_reservation().unwrap();
    drop(log);
    let log = SegmentLog::open(dir.path(), reserving(16)).unwrap();
    assert!(log.damage().is_none());
    assert!(log.holes().any(|h| h == (bad, next_base)));
    assert_eq!(log.next_seq(), end + 1);
}

#[test]
fn repair_of_damage_in_the_active_segment_numbers_on_past_everything_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let confirmed = {
        let mut log = SegmentLog::open(dir.path(), reserving(32)).unwrap();
        let c = confirm_n(&mut log, 20);
        log.record_high_water().unwrap();
        c
    };
    let last = segment_files(dir.path()).pop().unwrap();
    let base = segment::parse_name(last.file_name().unwrap().to_str().unwrap(), ".log").unwrap();
    assert!(
        confirmed > base + 1,
        "the active segment holds several records"
    );
    let (at, _) = record_offset(&last, base);
    let file = OpenOptions::new().write(true).open(&last).unwrap();
    file.write_all_at(&[0xff; 4], at + 8).unwrap();
    let log = SegmentLog::open(dir.path(), reserving(32)).unwrap();
    let damage = log
        .damage()
        .expect("a bad record followed by valid ones")
        .clone();
    assert_eq!(damage.seq, base);
    assert!(log.fenced().is_some());
    drop(log);
    let untouched = fs::read(&last).unwrap();
    let (mut log, repaired) =
        SegmentLog::repair(crate::storage::fs::os(), dir.path(), reserving(32), None).unwrap();
    let (from, to) = repaired.skipped.unwrap();
    assert_eq!(from, base);
    assert!(
        to > confirmed,
        "skips past every confirmed seq: {to} vs {confirmed}"
    );
    assert_eq!(fs::read(&repaired.quarantined[0]).unwrap(), untouched);
    assert!(
        fs::metadata(&last).unwrap().len() == 0,
        "the valid prefix (nothing) is kept"
    );
    assert_eq!(check_stored(&log, 1) as u64, base - 1);
    assert_eq!(log.append_batch(&[Message::default()], 1).unwrap(), to);
    assert!(!Path::new(&damage.segment).starts_with(dir.path().join(QUARANTINE_DIR)));
}

#[test]
fn a_segment_that_cannot_be_read_at_open_is_damage_never_a_torn_tail() {
    use crate::storage::fault::{Fault, FaultyFs};
    let dir = tempfile::tempdir().unwrap();
    let confirmed = {
        let mut log = SegmentLog::open(dir.path(), reserving(8)).unwrap();
        let c = confirm_n(&mut log, 30);
        log.release_reservation().unwrap();
        c
    };
    let sizes: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .collect();
    // The active segment (always scanned at open) sits on a bad sector.
    let active = segment_files(dir.path()).pop().unwrap();
    let faulty = FaultyFs::new();
    faulty.fail_reads(&active, Some(Fault::Io));
    let fs: crate::storage::fs::Fs = std::sync::Arc::new(faulty.clone());
    let log = SegmentLog::open_on(fs.clone(), dir.path(), reserving(8)).unwrap();
    let damage = log
        .damage()
        .expect("an unreadable segment is damage")
        .clone();
    assert!(damage.reason.contains("cannot read"), "{}", damage.reason);
    assert!(log.fenced().is_some());
    drop(log);
    let after: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .collect();
    assert_eq!(after, sizes, "nothing cut or removed");
    // The device recovers: the log opens whole.
    faulty.fail_reads(&active, None);
    let log = SegmentLog::open_on(fs, dir.path(), reserving(8)).unwrap();
    assert!(log.damage().is_none());
    assert_eq!(log.next_seq(), confirmed + 1);
    assert_eq!(check_stored(&log, 1) as u64, confirmed);
}

#[test]
fn a_checkpoint_that_cannot_be_read_at_open_has_its_segment_scanned_instead() {
    use crate::storage::fault::{Fault, FaultyFs};
    let dir = tempfile::tempdir().unwrap();
    let confirmed = {
        let mut log = SegmentLog::open(dir.path(), reserving(8)).unwrap();
        let c = confirm_n(&mut log, 40);
        log.release_reservation().unwrap();
        c
    };
    let first = segment_files(dir.path()).remove(0);
    let checkpoint = first.with_extension("sealed");
    assert!(checkpoint.is_file());
    let faulty = FaultyFs::new();
    faulty.fail_reads(&checkpoint, Some(Fault::Io));
    let log = SegmentLog::open_on(std::sync::Arc::new(faulty), dir.path(), reserving(8)).unwrap();
    assert!(log.damage().is_none(), "{:?}", log.damage());
    assert_eq!(log.next_seq(), confirmed + 1);
    assert_eq!(check_stored(&log, 1) as u64, confirmed);
}

#[test]
fn an_unreadable_high_water_mark_damages_the_log_until_repair_replaces_it() {
    use crate::storage::fault::FaultyFs;
    let dir = tempfile::tempdir().unwrap();
    let confirmed = {
        let mut log = SegmentLog::open(dir.path(), reserving(8)).unwrap();
        confirm_n(&mut log, 20)
    };
    let mark = dir.path().join(high_water::FILE_NAME);
    let faulty = FaultyFs::new();
    faulty.fail_reads_of_file(&mark).unwrap();
    let fs: crate::storage::fs::Fs = std::sync::Arc::new(faulty.clone());
    let log = SegmentLog::open_on(fs.clone(), dir.path(), reserving(8)).unwrap();
    let damage = log.damage().expect("an unreadable mark is damage").clone();
    assert!(damage.reason.contains("high-water"), "{}", damage.reason);
    assert_eq!(damage.seq, confirmed + 1, "everything stored is served");
    assert_eq!(check_stored(&log, 1) as u64, confirmed);
    drop(log);
    // The bad sector stays with the old file, which repair moves to quarantine.
    let (mut log, repaired) = SegmentLog::repair(fs, dir.path(), reserving(8), None).unwrap();
    assert_eq!(repaired.skipped, None);
    assert_eq!(repaired.quarantined.len(), 1);
    assert!(repaired.quarantined[0].starts_with(dir.path().join(QUARANTINE_DIR)));
    assert!(log.damage().is_none());
    assert_eq!(log.next_seq(), confirmed + 1 + 8, "one window past the end");
    assert_eq!(check_stored(&log, 1) as u64, confirmed);
    assert_eq!(
        log.append_batch(&[Message::default()], 1).unwrap(),
        confirmed + 9
    );
}
