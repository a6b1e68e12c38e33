//! Raced writes: an `fsync` of small blobs commits while its upload is under way (see
//! `ns::Request::Commit`), so that the log's sync and the storages' overlap. The commit
//! is answered once on disk, the client's `fsync` once its storages synced too; until
//! the nameserver knows the blobs are stored, a power loss or a failed upload could
//! leave the file naming a blob that is nowhere. So after each such commit the
//! nameserver asks the storages the client named ([`storage::Request::Held`]), which
//! wait a moment for an upload on its way and then refuse it for good; the log's marks
//! say from which entry on that is not yet done, and recovery hands those entries back
//! to be checked again. A blob no storage holds is undone ([`Op::Unwrite`]): the bytes
//! the write covered show what they held before (a raced write keeps the slices it
//! hides). Until checked, a layout naming the blob is answered "try again".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;
use vg_wire::rpc::Target;
use vg_wire::{storage, BlockId, Ino, Location};

use super::Service;
use crate::log::Raced;
use crate::namespace::Op;

/// How long a storage waits for a raced block it is still receiving, or has not seen
/// yet, before it answers without it (and refuses it from then on).
const HELD_WAIT: Duration = Duration::from_secs(5);
/// How often raced writes still unsettled are checked again.
const RETRY: Duration = Duration::from_secs(1);

/// What the storages asked said of one raced blob.
#[derive(Default)]
struct Answers {
    held: Vec<String>,
    absent: Vec<String>,
    /// Some storage asked did not answer.
    unknown: bool,
}

impl Service {
    /// Checks the raced writes of the log, as they are committed and at start (once
    /// the storages have reported), until the nameserver stops.
    pub async fn check_raced_loop(self: Arc<Self>) {
        while !self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            let _ = tokio::time::timeout(RETRY, self.raced_written.notified()).await;
            let Some(log) = self.lock().log.clone() else {
                continue;
            };
            let raced = log.raced();
            if raced.is_empty() || !self.ready_to_check() {
                continue;
            }
            let answers = self.ask_held(&raced).await;
            for (index, writes) in raced {
                if self.settle_entry(&writes, &answers).await {
                    log.checked(index);
                }
            }
        }
    }

    /// Whether raced writes can be checked now: this member leads alone and its
    /// registry has heard from the storages.
    fn ready_to_check(&self) -> bool {
        let alone = self.quorum.lock().expect("quorum lock").alone;
        let state = self.lock();
        alone && state.leading.is_some() && !state.registry.settling(Instant::now())
    }

    /// Asks the storages that should hold the raced blobs whether they do, each
    /// storage once for all of its blobs.
    async fn ask_held(&self, raced: &[(u64, Raced)]) -> BTreeMap<BlockId, Answers> {
        let races: BTreeSet<(BlockId, u64)> = raced
            .iter()
            .flat_map(|(_, writes)| writes.iter())
            .flat_map(|(_, race, blobs)| blobs.iter().map(|blob| (*blob, *race)))
            .collect();
        let mut asks: BTreeMap<String, (Location, Vec<(BlockId, u64)>)> = BTreeMap::new();
        {
            let state = self.lock();
            for &(blob, race) in &races {
                for at in state.registry.raced_candidates(&blob) {
                    let ask = asks.entry(at.name.clone()).or_insert((at, Vec::new()));
                    ask.1.push((blob, race));
                }
            }
        }
        let mut calls = tokio::task::JoinSet::new();
        for (name, (at, ids)) in asks {
            let dialer = self.dialer.clone();
            calls.spawn(async move {
                let request = storage::Request::Held {
                    ids: ids.clone(),
                    wait_ms: HELD_WAIT.as_millis() as u32,
                };
                let answer = dialer
                    .call::<_, storage::Response>(&Target::storage(&at), &request)
                    .await;
                (name, ids, answer)
            });
        }
        let mut answers: BTreeMap<BlockId, Answers> = BTreeMap::new();
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

    /// Settles the raced writes of one entry with the storages' answers; true once every
    /// blob is held somewhere, or undone because every storage asked said it is not.
    async fn settle_entry(
        &self,
        writes: &[(Ino, u64, Vec<BlockId>)],
        answers: &BTreeMap<BlockId, Answers>,
    ) -> bool {
        let blobs = || {
            writes
                .iter()
                .flat_map(|(ino, _, blobs)| blobs.iter().map(move |b| (*ino, b)))
        };
        // Undecided while a storage that might hold a blob did not answer.
        let decided = |blob| {
            answers
                .get(blob)
                .is_some_and(|a: &Answers| !a.unknown || !a.held.is_empty())
        };
        if !blobs().all(|(_, blob)| decided(blob)) {
            return false;
        }
        let mut undo: Vec<Op> = Vec::new();
        {
            let mut state = self.lock();
            for (ino, blob) in blobs() {
                let answer = &answers[blob];
                if !state
                    .registry
                    .raced_checked(*blob, &answer.held, &answer.absent)
                {
                    warn!(ino, blob = ?blob, "a raced upload reached no storage: the write is undone");
                    undo.push(Op::Unwrite { ino, blob: *blob });
                }
            }
        }
        if undo.is_empty() {
            return true;
        }
        match self.mutate_ops(|_| undo).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e.message, "undoing raced writes failed; trying again");
                false
            }
        }
    }
}
