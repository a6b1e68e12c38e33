//! Raced writes: an `fsync` of small blobs commits while its upload is under way (see
//! `ns::Request::Commit`), so that the log's sync and the storages' overlap. The commit
//! is answered once on disk, the client's `fsync` once its storages synced too; until
//! the nameserver knows the blobs are stored, a power loss or a failed upload could
//! leave the file naming a blob that is nowhere. So after each such commit the
//! nameserver asks the storages the client sent them to, which the op names
//! ([`storage::Request::Held`]: they wait a moment for an upload on its way, then refuse
//! it for good); the log's marks say from which entry on that is not yet done, and
//! recovery hands those entries back to be checked again. A blob none of them holds is
//! undone ([`Op::Unwrite`]): the bytes the write covered show what they held before (a
//! raced write keeps the slices it hides). Only those storages decide: others never
//! had the blob, and one that is down may come back with it. A layout naming a blob not
//! yet checked waits for the check (a while, then is answered "try again").
//!
//! A `close`'s raced write, whose uploads are acknowledged unsynced
//! (`ns::RACE_UNSYNCED`), is answered once written, and the log syncs no entry holding
//! one before its storages synced the blob (the gate: `Service::unsynced_races`): they
//! are asked to sync once its client vouched for it, or asked `Held` (which answers once
//! synced), so that a power loss never takes the blob of a synced entry.
//!
//! Usually the client says first that every storage acknowledged its upload, synced
//! (`ns::Request::RacesStored`, or with its next commit): the write is checked then,
//! without asking the storages (two round trips, and a sync on each, per `fsync`). So
//! the storages are asked only about writes no client spoke for within
//! [`STORED_WAIT`], or at once when a layout waits for one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;
use vg_wire::rpc::Target;
use vg_wire::{storage, BlockId, Location};

use super::Service;
use crate::log::{Raced, RacedWrite};
use crate::namespace::Op;

/// How long a storage waits for a raced block it is still receiving, or has not seen
/// yet, before it answers without it (and refuses it from then on).
const HELD_WAIT: Duration = Duration::from_secs(5);
/// How often raced writes still unsettled are checked again: soon, since a layout
/// naming their blobs waits for it (after a restart, until their storages are back).
const RETRY: Duration = Duration::from_millis(200);
/// How long a raced write waits for its client to say its upload was stored before the
/// storages are asked.
const STORED_WAIT: Duration = Duration::from_millis(100);
/// How long the log's gate waits for a client to vouch for an unsynced raced write (a
/// `close`'s) before it has the storages asked.
const VOUCH_WAIT: Duration = Duration::from_millis(20);
/// How long a raced write waits for storages it went to that cannot be asked (down, or
/// not back after a restart) before it is taken as checked, not undone: it may have
/// been acknowledged, so only those storages may say it is to be undone. If they never
/// come back, its blob is lost as any is whose every copy is, and `vgctl fsck` says so.
const GIVE_UP: Duration = Duration::from_secs(600);

/// What the storages asked said of one raced blob.
#[derive(Default)]
struct Answers {
    held: Vec<String>,
    absent: Vec<String>,
    /// A storage it went to could not be asked, or did not answer.
    unknown: bool,
}

impl Answers {
    /// Whether the blob is known held, or known absent from every storage it went to.
    fn decided(&self) -> bool {
        !self.held.is_empty() || !self.unknown
    }
}

impl Service {
    /// Checks the raced writes of the log, as they are committed and at start (once
    /// the storages have reported), until the nameserver stops.
    pub async fn check_raced_loop(self: Arc<Self>) {
        // When each entry was first seen, for waiting for its client and giving up.
        let mut first_seen: BTreeMap<u64, Instant> = BTreeMap::new();
        while !self.stopped.load(Ordering::Acquire) {
            // Until the next entry seen is due, or a retry.
            let wait = first_seen
                .values()
                .map(|seen| STORED_WAIT.saturating_sub(seen.elapsed()))
                .filter(|left| !left.is_zero())
                .fold(RETRY, Duration::min);
            let _ = tokio::time::timeout(wait, self.raced_written.notified()).await;
            let Some(log) = self.lock().log.clone() else {
                continue;
            };
            let mut raced = log.raced();
            first_seen.retain(|index, _| raced.iter().any(|(i, _)| i == index));
            let now = Instant::now();
            for (index, _) in &raced {
                first_seen.entry(*index).or_insert(now);
            }
            let wanted = self.raced_wanted.swap(false, Ordering::AcqRel);
            raced.retain(|(index, _)| wanted || first_seen[index].elapsed() >= STORED_WAIT);
            if raced.is_empty() || !self.ready_to_check() {
                continue;
            }
            let answers = self.ask_held(&raced).await;
            let mut settled = false;
            for (index, writes) in raced {
                let since = *first_seen.entry(index).or_insert_with(Instant::now);
                let give_up = since.elapsed() >= GIVE_UP;
                if let Some(undone) = self.settle_entry(&writes, &answers, give_up).await {
                    log.checked(index, undone);
                    settled = true;
                }
            }
            if settled {
                self.raced_settled.send_modify(|round| *round += 1);
            }
        }
    }

    /// Takes the raced writes of `races` as stored: their client saw every storage they
    /// name acknowledge their blobs, once all of an entry's are. Synced, they are checked;
    /// unsynced (a `close`'s), they are readable, and checked once the log's gate had
    /// those storages sync them.
    pub(super) fn races_stored(&self, races: &[u64]) {
        if races.is_empty() || !self.ready_to_check() {
            return;
        }
        let Some(log) = self.lock().log.clone() else {
            return;
        };
        let mut settled = false;
        for (index, writes) in log.raced() {
            if !writes.iter().all(|w| races.contains(&w.race)) {
                continue;
            }
            let mut state = self.lock();
            for RacedWrite { blobs, holders, .. } in &writes {
                for blob in blobs {
                    state.registry.raced_checked(*blob, holders, &[]);
                }
            }
            drop(state);
            match writes.iter().all(|w| vg_wire::ns::race_synced(w.race)) {
                true => log.checked(index, false),
                false => log.vouched(index),
            }
            settled = true;
        }
        if settled {
            self.raced_settled.send_modify(|round| *round += 1);
        }
    }

    /// What the log's gate needs before it syncs the entries before `end`: each unsynced
    /// raced write among them (a `close`'s) vouched for by its client (its storages got
    /// the blobs: the gate has them sync) or checked with its storages, which answer
    /// once they synced them. Waits for that, asking the storages when no word came
    /// within [`VOUCH_WAIT`]; a write none of whose storages is active is passed, as
    /// the gate passes a storage that is gone. Returns the storages to sync and the
    /// entries checked once they did, or `None` if the nameserver stops meanwhile.
    pub(super) async fn unsynced_races(&self, end: u64) -> Option<(BTreeSet<String>, Vec<u64>)> {
        let mut settled = self.raced_settled.subscribe();
        let started = Instant::now();
        while !self.stopped.load(Ordering::Acquire) {
            let Some(log) = self.lock().log.clone() else {
                return Some(Default::default());
            };
            let (mut holders, mut vouched, mut pending) = (BTreeSet::new(), Vec::new(), false);
            {
                let state = self.lock();
                for (index, writes, vouched_for) in log.unsynced_raced(end) {
                    let named = writes.iter().flat_map(|w| w.holders.iter());
                    if vouched_for {
                        holders.extend(named.cloned());
                        vouched.push(index);
                    } else {
                        pending |= named
                            .into_iter()
                            .any(|holder| state.registry.active_location(holder).is_some());
                    }
                }
            }
            if !pending {
                return Some((holders, vouched));
            }
            let waited = started.elapsed();
            let wait = match VOUCH_WAIT.checked_sub(waited) {
                Some(left) => left,
                None => {
                    self.want_raced_checked();
                    RETRY
                }
            };
            let _ = tokio::time::timeout(wait, settled.changed()).await;
        }
        None
    }

    /// Has the raced writes checked now, without waiting for their clients: a layout or
    /// the log's gate waits for one.
    pub(super) fn want_raced_checked(&self) {
        self.raced_wanted.store(true, Ordering::Release);
        self.raced_written.notify_one();
    }

    /// Whether raced writes can be checked now: this member leads alone. (Not only
    /// once every storage has reported: those a raced write went to answer for it
    /// themselves as soon as they are back, and a layout naming it waits till then.)
    fn ready_to_check(&self) -> bool {
        let alone = self.quorum.lock().expect("quorum lock").alone;
        alone && self.lock().leading.is_some()
    }

    /// Asks the storages each raced blob went to whether they hold it, each storage
    /// once for all of its blobs; one that is not active is not asked.
    async fn ask_held(&self, raced: &[(u64, Raced)]) -> BTreeMap<BlockId, Answers> {
        let mut wanted: BTreeMap<&str, BTreeSet<(BlockId, u64)>> = BTreeMap::new();
        for RacedWrite {
            race,
            blobs,
            holders,
            ..
        } in raced.iter().flat_map(|(_, writes)| writes.iter())
        {
            for holder in holders {
                let ids = wanted.entry(holder.as_str()).or_default();
                ids.extend(blobs.iter().map(|blob| (*blob, *race)));
            }
        }
        let mut answers: BTreeMap<BlockId, Answers> = BTreeMap::new();
        let mut asks: Vec<(Location, Vec<(BlockId, u64)>)> = Vec::new();
        {
            let state = self.lock();
            for (holder, ids) in wanted {
                match state.registry.active_location(holder) {
                    Some(at) => asks.push((at, ids.into_iter().collect())),
                    None => {
                        for (blob, _) in ids {
                            answers.entry(blob).or_default().unknown = true;
                        }
                    }
                }
            }
        }
        let mut calls = tokio::task::JoinSet::new();
        for (at, ids) in asks {
            let dialer = self.dialer.clone();
            calls.spawn(async move {
                let request = storage::Request::Held {
                    ids: ids.clone(),
                    wait_ms: HELD_WAIT.as_millis() as u32,
                };
                let answer = dialer
                    .call::<_, storage::Response>(&Target::storage(&at), &request)
                    .await;
                (at.name, ids, answer)
            });
        }
        while let Some(Ok((name, ids, answer))) = calls.join_next().await {
            match answer {
                Ok(storage::Response::Held(held)) => {
                    for (blob, _) in ids {
                        let entry = answers.entry(blob).or_default();
                        match held.contains(&blob) {
                            true => entry.held.push(name.clone()),
                            false => entry.absent.push(name.clone()),
                        }
                    }
                }
                other => {
                    warn!(storage = %name, answer = ?other.map(|_| ()), "storage did not say which raced blocks it holds; asking again");
                    for (blob, _) in ids {
                        answers.entry(blob).or_default().unknown = true;
                    }
                }
            }
        }
        answers
    }

    /// Settles the raced writes of one entry with the storages' answers, once every
    /// blob is held somewhere, or undone because every storage it went to said it is
    /// not there, or given up (`give_up`) while some of them could not be asked: then
    /// says whether some write was undone.
    async fn settle_entry(
        &self,
        writes: &[RacedWrite],
        answers: &BTreeMap<BlockId, Answers>,
        give_up: bool,
    ) -> Option<bool> {
        let blobs = || {
            writes
                .iter()
                .flat_map(|w| w.blobs.iter().map(move |blob| (w, *blob)))
        };
        let none = Answers::default();
        let answer = |blob| answers.get(&blob).unwrap_or(&none);
        let decided = blobs().all(|(_, blob)| answer(blob).decided());
        if !decided && !give_up {
            return None;
        }
        let mut undo: Vec<Op> = Vec::new();
        {
            let mut state = self.lock();
            for (write, blob) in blobs() {
                let ino = write.ino;
                let Answers { held, absent, .. } = answer(blob);
                let stored = state.registry.raced_checked(blob, held, absent);
                match (stored, decided) {
                    (true, _) => {}
                    (false, true) => {
                        warn!(ino, blob = ?blob, "a raced upload reached none of its storages: the write is undone");
                        let (size, before) = write.sizes;
                        undo.push(Op::Unwrite {
                            ino,
                            blob,
                            size,
                            before,
                            block_size: self.block_size,
                            time: vg_wire::Timestamp::now(),
                        });
                    }
                    (false, false) => {
                        warn!(ino, blob = ?blob, "the storages of a raced write stayed out of reach: taken as it is");
                    }
                }
            }
        }
        if undo.is_empty() {
            return Some(false);
        }
        match self.mutate_ops(|_| undo).await {
            Ok(_) => Some(true),
            Err(e) => {
                warn!(error = %e.message, "undoing raced writes failed; trying again");
                None
            }
        }
    }
}
