//! A storage's work besides answering requests: copying blocks the nameserver asks it
//! to replicate, scrubbing (re-hashing every block, slowly), and compacting and recycling
//! volumes.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vg_wire::rpc::Target;
use vg_wire::{BlockId, Location};

use crate::block_store::BlockStore;
use crate::server::Storage;

/// Bytes the scrub checks in one turn (a block larger than this is a turn alone).
const SCRUB_TURN: u64 = 1 << 20;
/// The least time between the end of a scrub pass and the start of the next.
const PASS_PAUSE: Duration = Duration::from_millis(100);

/// When the scrub pass after one that started at `started` and ended at `now` starts:
/// `every` after the last started, and not before [`PASS_PAUSE`] from now.
fn next_pass(
    started: tokio::time::Instant,
    now: tokio::time::Instant,
    every: Duration,
) -> tokio::time::Instant {
    (started + every).max(now + PASS_PAUSE)
}

/// Cuts `blocks` into the scrub's turns: runs of at most [`SCRUB_TURN`] bytes, each of
/// at least one block.
fn scrub_turns(blocks: &[(BlockId, u32)]) -> impl Iterator<Item = &[(BlockId, u32)]> {
    let mut rest = blocks;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|(_, len)| {
                bytes += u64::from(*len);
                bytes <= SCRUB_TURN
            })
            .count()
            .max(1);
        let (turn, next) = rest.split_at(n);
        rest = next;
        Some(turn)
    })
}

impl Storage {
    /// Copies a block from the first source that has it intact.
    pub async fn replicate(&self, id: BlockId, sources: Vec<Location>) {
        if let Some(len) = self.store.len_of(&id) {
            self.changes.lock().expect("changes lock").stored(id, len);
            return;
        }
        for source in sources.iter().filter(|s| s.name != self.name) {
            let target = Target::storage(source);
            let data = match vg_wire::rpc::read_block(&self.dialer, &target, id, 0, 0).await {
                Ok(data) => data,
                Err(e) => {
                    warn!(block = %id, from = %source.name, error = %e, "replica source failed");
                    continue;
                }
            };
            // `put` checks the bytes against the name, off the request thread.
            let (store, len) = (self.store.clone(), data.len() as u32);
            match tokio::task::spawn_blocking(move || store.put(&id, &data))
                .await
                .expect("put does not panic")
            {
                Ok(()) => {
                    info!(block = %id, from = %source.name, "replicated block");
                    self.changes.lock().expect("changes lock").stored(id, len);
                    return;
                }
                Err(crate::Error::Corrupt { .. }) => {
                    warn!(block = %id, from = %source.name, "replica source sent bytes that do not match the block")
                }
                Err(e) => {
                    warn!(block = %id, error = %e, "cannot store replica");
                    return;
                }
            }
        }
    }

    /// Re-hashes every block at `rate` bytes per second, deleting and reporting corrupt
    /// ones, in passes that start at most once per `every` (none sooner than
    /// [`PASS_PAUSE`] apart): run back to back, a store smaller than a day's reading was
    /// read over and over, idle or not (three fresh storages holding 256 MiB and a
    /// source tree read 245 MiB from the disk in 30 s of idling). A pass works in turns
    /// of up to [`SCRUB_TURN`] bytes, each one hand-off to a blocking thread and one
    /// sleep: a sleep per block woke each storage about a thousand times a second while
    /// it held small blocks, idle or not, on CPUs the requests of every process here
    /// wait for.
    pub async fn scrub_loop(self: Arc<Self>, rate: u64, every: Duration) {
        loop {
            let started = tokio::time::Instant::now();
            let blocks = self.store.list();
            for turn in scrub_turns(&blocks) {
                let checked: u64 = turn.iter().map(|(_, len)| u64::from(*len)).sum();
                self.check(turn.iter().map(|(id, _)| *id).collect()).await;
                tokio::time::sleep(Duration::from_secs_f64(checked as f64 / rate as f64)).await;
            }
            tokio::time::sleep_until(next_pass(started, tokio::time::Instant::now(), every)).await;
        }
    }

    /// Re-hashes the copies of `ids` stored here, off the request thread, and deletes and
    /// reports those that fail (the scrub, and `vgctl fsck` through `Verify`): whether
    /// each is stored and intact. A copy still being written is not checked.
    pub async fn check(&self, ids: Vec<BlockId>) -> Vec<bool> {
        let store = self.store.clone();
        let (intact, bad) = tokio::task::spawn_blocking(move || {
            let mut bad = Vec::new();
            let intact = ids
                .into_iter()
                .map(|id| {
                    // Taken before reading: a copy stored since the corrupt one was read
                    // (re-replicated meanwhile) is not the one to delete.
                    let Some(copy) = store.stored_copy_of(&id) else {
                        return false;
                    };
                    let ok = store.verify(&id);
                    if !ok {
                        bad.push((id, copy));
                    }
                    ok
                })
                .collect::<Vec<bool>>();
            (intact, bad)
        })
        .await
        .expect("checks do not panic");
        for (id, copy) in bad {
            self.found_bad(id, copy);
        }
        intact
    }

    /// Runs `work` on the store, off the request thread, every `every`, forever; warns
    /// that it could not `what` when it fails. The volumes' compaction (every 30 s) and
    /// their spares (looked at every second: the quiet spells between bursts of writes
    /// are seconds long) run so.
    pub async fn store_loop(
        self: Arc<Self>,
        every: Duration,
        what: &'static str,
        work: fn(&BlockStore) -> crate::Result<usize>,
    ) {
        loop {
            tokio::time::sleep(every).await;
            let store = self.store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || work(&store)).await {
                warn!(error = %e, "cannot {what}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_passes_start_once_per_period_and_never_back_to_back() {
        let start = tokio::time::Instant::now();
        let day = Duration::from_secs(86_400);
        let ended = start + Duration::from_secs(20);
        // A short pass waits out the rest of the period.
        assert_eq!(next_pass(start, ended, day), start + day);
        // A pass longer than the period is followed by the next after a pause.
        let late = start + 2 * day;
        assert_eq!(next_pass(start, late, day), late + PASS_PAUSE);
        // No period: passes back to back, a pause apart.
        assert_eq!(next_pass(start, ended, Duration::ZERO), ended + PASS_PAUSE);
    }

    #[test]
    fn scrub_turns_hold_a_mebibyte_or_one_larger_block() {
        let id = |n: u8| BlockId([n; 32]);
        let blocks = [
            (id(1), 4 << 20),
            (id(2), 512 << 10),
            (id(3), 512 << 10),
            (id(4), 1),
            (id(5), 4096),
        ];
        let turns: Vec<Vec<u8>> = scrub_turns(&blocks)
            .map(|t| t.iter().map(|(id, _)| id.0[0]).collect())
            .collect();
        assert_eq!(turns, vec![vec![1], vec![2, 3], vec![4, 5]]);
        assert_eq!(scrub_turns(&[]).count(), 0);
    }
}
