//! The storage fault simulation: the real `ShardLog`, recovery and segment deletion over a
//! simulated disk (`disk::SimDisk`) that loses unsynced blocks at power cuts, driven by a
//! seeded generator so any failure replays from its seed.
//!
//! Each seed lives a few lives. A life recovers the log (which must never refuse: the
//! disk only tears what was never synced), checks it against what was acknowledged, opens
//! the log, lets writer tasks append single records and groups of up to three while a
//! retention task carries live records forward and deletes dead segments, and ends at a
//! random moment in a crash: a SIGKILL (what was written stays, still unsynced, so a later
//! power cut may take it) or a power cut that keeps nothing, everything, a prefix or any
//! subset of the unsynced blocks. After each recovery:
//!
//! - every acknowledged record whose key is still live is there, intact, at its sequence,
//!   and so is every other acknowledged record from the log's first segment on (retention
//!   deletes only a prefix);
//! - every group is whole or absent (no final status without its webhook event);
//! - sequence numbers run without a gap (recovery itself refuses otherwise).
//!
//! Some seeds then flip a bit in a frame that a later frame proves was synced: recovery
//! must refuse to start. Tests at the end show the simulation catching a log that
//! acknowledges before its sync and appends that split a group.
//!
//! TigerBeetle's storage fault simulation is the model: faults only where the disk's
//! contract allows them, and the checker knows only what a client was told.

use crate::config::Durability;
use crate::wal::disk::{CrashShape, Disk, SimDisk};
use crate::wal::frame::{decode_frame, FrameOutcome};
use crate::wal::fuzz::Prng;
use crate::wal::log::{LogOptions, ShardLog, SIMULATED_SEGMENT_BYTES_MIN};
use crate::wal::recovery::{recover_on, scan_on, RecordVisitor, Recovery, RecoveryError};
use crate::wal::retention::dead_segment_prefix;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;

/// Seeds the test run in CI. `PAYD_SIMULATION_SEEDS` runs more (or fewer).
const SEEDS_DEFAULT: u64 = 100_000;
/// Lives of one seed: recoveries and crashes in turn.
const LIVES_MAX: usize = 3;
/// Writer tasks of one life.
const WRITERS_MAX: usize = 5;
/// Appends of one writer.
const APPENDS_PER_WRITER_MAX: usize = 12;
/// A record's payload: its identity (below) and filler up to this.
const PAYLOAD_BYTES_MAX: usize = 700;
/// The executor turns a life may last before its crash.
const TURNS_BEFORE_CRASH_MAX: usize = 300;
/// Segment sizes of the simulation: small, so that lives roll over often.
const SEGMENT_BYTES_CHOICES: [u64; 3] = [SIMULATED_SEGMENT_BYTES_MIN, 6 << 10, 16 << 10];
/// One seed in this many checks that corruption of synced data stops recovery.
const CORRUPTION_CHECK_EVERY: u64 = 8;

/// What a record says about itself, so the checker can judge a recovered log alone:
/// its key (a carried copy keeps its key), and its group's id, size and its place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    key: u64,
    group: u64,
    group_size: u8,
}

const IDENTITY_BYTES: usize = 17;

fn payload_of(identity: Identity, filler_bytes: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(IDENTITY_BYTES + filler_bytes);
    payload.extend_from_slice(&identity.key.to_le_bytes());
    payload.extend_from_slice(&identity.group.to_le_bytes());
    payload.push(identity.group_size);
    payload.resize(IDENTITY_BYTES + filler_bytes, identity.key as u8);
    payload
}

fn identity_of(payload: &[u8]) -> Identity {
    assert!(
        payload.len() >= IDENTITY_BYTES,
        "a payload the simulation did not write"
    );
    Identity {
        key: u64::from_le_bytes(payload[0..8].try_into().unwrap()),
        group: u64::from_le_bytes(payload[8..16].try_into().unwrap()),
        group_size: payload[16],
    }
}

/// What clients were told: acknowledged records, and which keys are still live.
#[derive(Default)]
struct Model {
    /// Acknowledged records by sequence.
    acknowledged: BTreeMap<u64, Vec<u8>>,
    /// Per live key, the sequence of its latest acknowledged copy.
    live: BTreeMap<u64, u64>,
    next_key: u64,
    next_group: u64,
    /// Retention deleted every segment below this sequence. A writer told of a record
    /// down there after the deletion raced the harness's retention, which decides from
    /// what it was told so far (the shard decides from its state, which holds a record
    /// before it is durable): such a record is not the log's to keep.
    deleted_below: u64,
}

impl Model {
    fn acknowledge(&mut self, sequence: u64, payload: Vec<u8>) {
        if sequence < self.deleted_below {
            return;
        }
        let key = identity_of(&payload).key;
        let latest = self.live.entry(key).or_insert(sequence);
        *latest = (*latest).max(sequence);
        self.acknowledged.insert(sequence, payload);
    }

    /// Whether a live key's latest acknowledged copy lies in `sequences`.
    fn holds_live(&self, sequences: std::ops::Range<u64>) -> bool {
        self.live
            .values()
            .any(|sequence| sequences.contains(sequence))
    }
}

/// The records of a recovered log, by sequence.
type Recovered = BTreeMap<u64, Vec<u8>>;

/// Everything one seed needs; a failure message names the seed.
struct World {
    seed: u64,
    prng: Prng,
    disk: Rc<SimDisk>,
    dir: PathBuf,
    model: Rc<RefCell<Model>>,
    broken: Broken,
}

/// Deliberate bugs, for the tests that show the simulation catches them.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Broken {
    acknowledge_before_sync: bool,
    split_groups: bool,
    /// Recovery syncs the last segment only when it cuts a torn write (zeros it cuts
    /// without a sync): records a SIGKILL left unsynced are then claimed as synced by
    /// the frames written behind them.
    recovery_syncs_only_torn_cuts: bool,
}

impl World {
    fn new(seed: u64, broken: Broken) -> World {
        World {
            seed,
            prng: Prng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            disk: Rc::new(SimDisk::new(seed)),
            dir: PathBuf::from("/sim/shard-0000"),
            model: Rc::new(RefCell::new(Model::default())),
            broken,
        }
    }

    fn disk(&self) -> Disk {
        Disk::Simulated(self.disk.clone())
    }

    /// Recovers the log; a refusal or a broken promise is the error.
    fn recover_and_check(&mut self) -> Result<(u64, Recovered), String> {
        let mut recovered = Recovered::new();
        let recovery = self
            .recover(&mut |record| {
                recovered.insert(record.sequence, record.payload.to_vec());
                Ok(())
            })
            .map_err(|error| format!("recovery refused: {error}"))?;
        let log_start = recovery
            .segments
            .first()
            .map_or(recovery.next_sequence, |segment| segment.first_sequence);
        check(&self.model.borrow(), &recovered, log_start)?;
        Ok((recovery.next_sequence, recovered))
    }

    /// The log's recovery, or the broken one a test asks for.
    fn recover(&self, visit: &mut RecordVisitor<'_>) -> Result<Recovery, RecoveryError> {
        if !self.broken.recovery_syncs_only_torn_cuts {
            return recover_on(&self.disk(), &self.dir, visit);
        }
        let recovery = scan_on(&self.disk(), &self.dir, visit)?;
        if let Some(truncation) = &recovery.truncation {
            let (path, offset) = (&truncation.path, truncation.offset);
            let cut = if truncation.torn {
                self.disk().cut(path, offset)
            } else {
                self.disk.truncate(path, offset)
            };
            cut.expect("the simulated disk cuts");
        }
        Ok(recovery)
    }

    /// One life: open, write and retain for a while, crash.
    async fn live_once(&mut self, next_sequence: u64) -> Result<(), String> {
        let choice = self.prng.below(SEGMENT_BYTES_CHOICES.len());
        // One life in four runs with durability "none": nothing it acknowledges is
        // promised, but its many unsynced frames tear in every way, and recovery must
        // still start.
        let durability = if self.prng.below(4) == 0 {
            Durability::None
        } else {
            Durability::Fsync
        };
        let options = LogOptions {
            durability,
            segment_bytes_max: SEGMENT_BYTES_CHOICES[choice],
            buffered_io: false,
        };
        let log = ShardLog::open_on(&self.disk(), &self.dir, options, next_sequence)
            .await
            .map_err(|error| format!("open refused: {error}"))?;
        if self.broken.acknowledge_before_sync {
            log.acknowledge_before_sync();
        }
        let log = Rc::new(log);
        let mut tasks = Vec::new();
        for writer in 0..1 + self.prng.below(WRITERS_MAX) {
            let appends = 1 + self.prng.below(APPENDS_PER_WRITER_MAX);
            let seed = self.prng.next() ^ writer as u64;
            let promised = durability == Durability::Fsync;
            let task = write(
                log.clone(),
                self.model.clone(),
                appends,
                seed,
                self.broken,
                promised,
            );
            tasks.push(glommio::spawn_local(task));
        }
        if durability == Durability::Fsync && self.prng.below(2) == 0 {
            let task = retain(
                log.clone(),
                self.disk.clone(),
                self.dir.clone(),
                self.model.clone(),
                self.prng.next(),
            );
            tasks.push(glommio::spawn_local(task));
        }
        let turns = self.prng.below(TURNS_BEFORE_CRASH_MAX);
        for _ in 0..turns {
            futures_lite::future::yield_now().await;
        }
        // The crash: every task stops where it is, then the disk decides what it kept.
        drop(tasks);
        log.crash();
        let shape = match self.prng.below(6) {
            0 => CrashShape::Nothing,
            1 | 2 => CrashShape::Subset,
            3 => CrashShape::Prefix,
            4 => CrashShape::Everything,
            // A SIGKILL: what was written stays, unsynced, for the next power cut.
            _ => CrashShape::ProcessOnly,
        };
        trace(|| {
            format!(
                "crash {shape:?} after {turns} turns, segments {:?}",
                self.firsts()
            )
        });
        self.disk.crash(shape);
        trace(|| format!("after the crash, segments {:?}", self.firsts()));
        Ok(())
    }

    /// The first sequence of each segment, for traces.
    fn firsts(&self) -> Vec<u64> {
        let segments = self.disk().list_segments(&self.dir).unwrap_or_default();
        segments.iter().map(|s| s.first_sequence).collect()
    }

    /// Flips a bit in a frame that a later frame proves was synced: recovery must refuse.
    fn check_corruption_is_refused(&mut self) -> Result<(), String> {
        let segments = self.disk().list_segments(&self.dir).unwrap();
        let Some(last) = segments.last() else {
            return Ok(());
        };
        let data = self.disk.read(&last.path).unwrap();
        let frames = frames_of(&data);
        let target = frames
            .iter()
            .enumerate()
            .find_map(|(index, &(at, first, length))| {
                let proven = frames[index + 1..]
                    .iter()
                    .any(|&(later_at, _, _)| synced_through_at(&data, later_at) >= first);
                proven.then_some((at, length))
            });
        let Some((at, length)) = target else {
            return Ok(());
        };
        let offset = (at + self.prng.below(length)) as u64;
        self.disk.corrupt(&last.path, offset);
        let refused = recover_on(&self.disk(), &self.dir, &mut |_| Ok(())).is_err();
        self.disk.corrupt(&last.path, offset);
        if refused {
            Ok(())
        } else {
            Err(format!(
                "a flipped bit at offset {offset} of {} in synced data went unnoticed",
                last.path.display()
            ))
        }
    }

    /// Every life of the seed; the first broken promise is the error.
    async fn run(&mut self) -> Result<(), String> {
        let lives = 1 + self.prng.below(LIVES_MAX);
        for _ in 0..lives {
            let (next_sequence, _) = self.recover_and_check()?;
            self.live_once(next_sequence).await?;
        }
        self.recover_and_check()?;
        if self.seed.is_multiple_of(CORRUPTION_CHECK_EVERY) {
            self.check_corruption_is_refused()?;
        }
        Ok(())
    }
}

/// The promises a recovered log must keep. `log_start` is its first sequence: retention
/// deletes segments only as a prefix, so every acknowledged record from there on is
/// there, live or not, exactly as acknowledged.
fn check(model: &Model, recovered: &Recovered, log_start: u64) -> Result<(), String> {
    for (&sequence, expected) in model.acknowledged.range(log_start..) {
        match recovered.get(&sequence) {
            Some(found) if found == expected => {}
            Some(_) => return Err(format!("record {sequence} came back changed")),
            None => return Err(format!("acknowledged record {sequence} is lost")),
        }
    }
    for (&key, &sequence) in &model.live {
        let expected = &model.acknowledged[&sequence];
        match recovered.get(&sequence) {
            Some(found) if found == expected => {}
            Some(_) => return Err(format!("record {sequence} (key {key}) came back changed")),
            None => {
                return Err(format!(
                    "acknowledged record {sequence} (key {key}) is lost"
                ))
            }
        }
    }
    let mut groups: BTreeMap<u64, (u8, BTreeSet<u64>)> = BTreeMap::new();
    for (&sequence, payload) in recovered {
        let identity = identity_of(payload);
        let (size, members) = groups.entry(identity.group).or_default();
        *size = identity.group_size;
        members.insert(sequence);
    }
    for (group, (size, members)) in groups {
        // Group ids are never reused: a carried copy gets a group of one of its own.
        if members.len() != size as usize {
            return Err(format!(
                "group {group} of {size} came back as {} record(s): {members:?}",
                members.len()
            ));
        }
    }
    Ok(())
}

/// A writer: appends single records and groups, and notes each acknowledgement that is
/// a promise (`promised`: durability "fsync").
async fn write(
    log: Rc<ShardLog>,
    model: Rc<RefCell<Model>>,
    appends: usize,
    seed: u64,
    broken: Broken,
    promised: bool,
) {
    let mut prng = Prng(seed | 1);
    for _ in 0..appends {
        // Clients take their time: other writers and the commit task run in between
        // (with durability "none" an append never waits, and would never let them).
        for _ in 0..prng.below(3) {
            futures_lite::future::yield_now().await;
        }
        let size = 1 + prng.below(3);
        let payloads: Vec<Vec<u8>> = {
            let mut model = model.borrow_mut();
            model.next_group += 1;
            let group = model.next_group;
            (0..size)
                .map(|_| {
                    model.next_key += 1;
                    let identity = Identity {
                        key: model.next_key,
                        group,
                        group_size: size as u8,
                    };
                    let filler = prng.below(PAYLOAD_BYTES_MAX - IDENTITY_BYTES);
                    payload_of(identity, filler)
                })
                .collect()
        };
        let records: Vec<(u8, &[u8])> = payloads.iter().map(|p| (1, p.as_slice())).collect();
        let sequences: Vec<u64> = if broken.split_groups {
            // The bug this checks for: a group's records appended one by one.
            let appends: Vec<_> = records.iter().map(|&(k, p)| log.append(k, p)).collect();
            let mut sequences = Vec::new();
            for append in appends {
                let Ok(sequence) = append.await else { return };
                sequences.push(sequence);
            }
            sequences
        } else {
            let Ok(last) = log.append_group(&records).await else {
                return;
            };
            (last + 1 - size as u64..=last).collect()
        };
        if !promised {
            continue;
        }
        let mut model = model.borrow_mut();
        for (sequence, payload) in sequences.into_iter().zip(payloads) {
            model.acknowledge(sequence, payload);
        }
    }
}

/// Retention as the shard does it: some keys expire, the live records of the older
/// segments are appended again (carried forward), and once those copies are durable the
/// dead prefix of segments is deleted.
async fn retain(
    log: Rc<ShardLog>,
    disk: Rc<SimDisk>,
    dir: PathBuf,
    model: Rc<RefCell<Model>>,
    seed: u64,
) {
    let mut prng = Prng(seed | 1);
    let simulated = Disk::Simulated(disk.clone());
    for _ in 0..2 {
        for _ in 0..prng.below(60) {
            futures_lite::future::yield_now().await;
        }
        let Ok(segments) = simulated.list_segments(&dir) else {
            return;
        };
        let Some(last) = segments.last() else {
            continue;
        };
        let boundary = last.first_sequence;
        let carried: Vec<Vec<u8>> = {
            let mut model = model.borrow_mut();
            let old: Vec<(u64, u64)> = model
                .live
                .iter()
                .filter(|&(_, &sequence)| sequence < boundary)
                .map(|(&key, &sequence)| (key, sequence))
                .collect();
            let mut carried = Vec::new();
            for (key, sequence) in old {
                if prng.below(3) == 0 {
                    model.live.remove(&key);
                } else {
                    let identity = identity_of(&model.acknowledged[&sequence]);
                    let filler = prng.below(64);
                    // A copy stands alone: a group of one, with a fresh group id.
                    model.next_group += 1;
                    let copy = Identity {
                        key: identity.key,
                        group: model.next_group,
                        group_size: 1,
                    };
                    carried.push(payload_of(copy, filler));
                }
            }
            carried
        };
        let appends: Vec<_> = carried.iter().map(|p| log.append(1, p)).collect();
        let mut sequences = Vec::new();
        for append in appends {
            match append.await {
                Ok(sequence) => sequences.push(sequence),
                Err(_) => return,
            }
        }
        {
            let mut model = model.borrow_mut();
            for (sequence, payload) in sequences.into_iter().zip(carried) {
                model.acknowledge(sequence, payload);
            }
        }
        let dead: Vec<_> = {
            let model = model.borrow();
            dead_segment_prefix(&segments, |range| model.holds_live(range)).to_vec()
        };
        let Some(kept) = segments.get(dead.len()) else {
            continue;
        };
        {
            let mut model = model.borrow_mut();
            model.deleted_below = model.deleted_below.max(kept.first_sequence);
        }
        trace(|| {
            let firsts: Vec<u64> = dead.iter().map(|s| s.first_sequence).collect();
            format!("retention deletes segments {firsts:?}")
        });
        if simulated.delete_segments(&dir, &dead).await.is_err() {
            return;
        }
    }
}

/// Prints a line of what the simulation does when `PAYD_SIMULATION_TRACE` is set: for
/// replaying a failing seed.
fn trace(message: impl FnOnce() -> String) {
    if std::env::var_os("PAYD_SIMULATION_TRACE").is_some() {
        eprintln!("simulation: {}", message());
    }
}

/// Each frame of a segment's bytes: (offset, first sequence, length).
fn frames_of(data: &[u8]) -> Vec<(usize, u64, usize)> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while let FrameOutcome::Frame(frame) = decode_frame(data, offset) {
        frames.push((offset, frame.first_sequence, frame.length_total));
        offset += frame.length_total;
    }
    frames
}

fn synced_through_at(data: &[u8], offset: usize) -> u64 {
    match decode_frame(data, offset) {
        FrameOutcome::Frame(frame) => frame.synced_through,
        _ => 0,
    }
}

/// Runs seeds `range` and returns the first failure, with its seed.
fn run_seeds(range: std::ops::Range<u64>, broken: Broken) -> Option<(u64, String)> {
    crate::testing::run_here(async move {
        for seed in range {
            let mut world = World::new(seed, broken);
            if let Err(problem) = world.run().await {
                return Some((seed, problem));
            }
        }
        None
    })
}

/// `PAYD_SIMULATION_SEED=N` replays one seed.
#[test]
fn replay_one_seed() {
    let Some(seed) = std::env::var("PAYD_SIMULATION_SEED")
        .ok()
        .and_then(|t| t.parse().ok())
    else {
        return;
    };
    if let Some((seed, problem)) = run_seeds(seed..seed + 1, Broken::default()) {
        panic!("seed {seed}: {problem}");
    }
}

fn seeds_to_run() -> u64 {
    std::env::var("PAYD_SIMULATION_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(SEEDS_DEFAULT)
}

/// Runs the half `half` (0 or 1) of the seeds: two tests, so two test threads share them.
fn run_half(half: u64) {
    let seeds = seeds_to_run();
    let range = half * seeds / 2..(half + 1) * seeds / 2;
    if let Some((seed, problem)) = run_seeds(range, Broken::default()) {
        panic!("seed {seed}: {problem} (replay: PAYD_SIMULATION_SEED={seed})");
    }
}

#[test]
fn the_log_keeps_every_promise_through_simulated_crashes_first_half() {
    run_half(0);
}

#[test]
fn the_log_keeps_every_promise_through_simulated_crashes_second_half() {
    run_half(1);
}

#[test]
fn the_simulation_catches_a_log_that_acknowledges_before_its_sync() {
    let broken = Broken {
        acknowledge_before_sync: true,
        ..Broken::default()
    };
    let found = run_seeds(0..2_000, broken);
    let (seed, problem) = found.expect("acknowledging before the sync went unnoticed");
    assert!(problem.contains("is lost"), "seed {seed}: {problem}");
}

#[test]
fn the_simulation_catches_a_group_split_across_frames() {
    let broken = Broken {
        split_groups: true,
        ..Broken::default()
    };
    let found = run_seeds(0..2_000, broken);
    let (seed, problem) = found.expect("groups appended record by record went unnoticed");
    assert!(problem.contains("came back as"), "seed {seed}: {problem}");
}

#[test]
fn the_simulation_catches_a_recovery_that_leaves_what_it_read_unsynced() {
    let broken = Broken {
        recovery_syncs_only_torn_cuts: true,
        ..Broken::default()
    };
    let found = run_seeds(0..2_000, broken);
    let (seed, problem) = found.expect("an unsynced recovery went unnoticed");
    assert!(
        problem.contains("recovery refused"),
        "seed {seed}: {problem}"
    );
}
