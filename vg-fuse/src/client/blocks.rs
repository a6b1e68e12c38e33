//! The client's storage side: uploading a block (placed by the nameserver, sent to its
//! storages, placed again past storages that fail), reading one from its replicas (a
//! storage that failed is tried last for a while), and keeping blocks uploaded but not
//! yet committed from the collector.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vg_wire::error::ErrorCode;
use vg_wire::ns::{self, Placement, Stored};
use vg_wire::rpc::{Dialer, Nameservers, Target};
use vg_wire::storage;
use vg_wire::Bytes;
use vg_wire::{BlockId, BlockRef, Location};

use super::{unexpected, Client, Error, Result};

/// How long commits wait for their uploads after a nameserver refused a raced one (a
/// group refuses them all; a storage that left refuses one).
const RACE_AGAIN_AFTER: Duration = Duration::from_secs(10);
/// Raced uploads to one guessed placement before an `fsync` asks for a new one.
const RACES_PER_PLACEMENT: u32 = 64;
/// How long the races stored wait for a commit to go with before they are sent alone
/// (see [`Client::race_stored`]).
const RACES_STORED_AFTER: Duration = Duration::from_millis(20);
/// How long a storage that failed a read is tried after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(30);
/// Placements tried for one block before its upload fails; each leaves out the storages
/// that failed before.
const UPLOAD_ATTEMPTS: usize = 6;
/// How often the grace period of uncommitted blocks is refreshed; the nameserver's
/// `--gc-grace` must be comfortably longer.
const KEEP_EVERY: Duration = Duration::from_secs(1);
/// Blocks up to this size are sent to all their storages at once, larger ones down a
/// pipeline (a storage's small-block volumes take up to this size too).
pub(super) const FAN_OUT_MAX: usize = 256 << 10;

/// A block's upload to one storage: its name, and the storages that acknowledged it.
type PutTask = tokio::task::JoinHandle<(String, std::result::Result<Vec<String>, vg_wire::Error>)>;

impl Client {
    pub(super) fn hold(&self, id: BlockId) {
        *self.held.lock().expect("held lock").entry(id).or_default() += 1;
    }

    /// Stops refreshing the grace period of blocks (committed, or given up).
    pub fn unhold(&self, ids: impl IntoIterator<Item = BlockId>) {
        let mut held = self.held.lock().expect("held lock");
        for id in ids {
            if let Some(count) = held.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    held.remove(&id);
                }
            }
        }
    }

    async fn place(
        &self,
        id: BlockId,
        len: u32,
        exclude: Vec<String>,
        prefer: Vec<String>,
    ) -> Result<Placement> {
        match self
            .ns_call(ns::Request::PlaceBlock {
                id,
                len,
                exclude,
                prefer,
            })
            .await?
        {
            ns::Response::Placement(placement) => Ok(placement),
            other => Err(unexpected("place block", other)),
        }
    }

    /// Uploads one block (deduplicated: a large one moves nothing if the cluster holds
    /// it; a small one may have gone to the guessed storages meanwhile). Returns
    /// its reference and the storages that acknowledged it (empty when deduplicated). A
    /// storage that fails is excluded and the block placed again; copies a failed
    /// pipeline left out are made on further storages when the cluster has them.
    /// The block is held against garbage collection until [`Client::commit`] or
    /// [`Client::unhold`]; a failed upload holds nothing.
    ///
    /// A storage that refuses for space while the nameserver still placed the block there
    /// is freeing space the nameserver reclaimed (its deletions arrive with its next
    /// heartbeat): the upload is tried again for up to the timeout instead of failing.
    pub async fn upload_block(&self, data: Bytes, sync: bool) -> Result<(BlockRef, Vec<Location>)> {
        let id = content_id(&data).await;
        self.hold(id);
        let deadline = Instant::now() + self.unavailable_timeout;
        let mut pause = Duration::from_millis(100);
        let result = loop {
            match self.upload_held(id, data.clone(), sync).await {
                Err((e, true)) if Instant::now() + pause < deadline => {
                    tracing::debug!(block = ?id, error = %e, "storages full; waiting for reclaimed space");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => break other.map_err(|(e, _)| e),
            }
        };
        if result.is_err() {
            self.unhold([id]);
        }
        result
    }

    /// One upload attempt; an error says whether it is worth another (storages refused
    /// for space although the nameserver placed the block on them).
    async fn upload_held(
        &self,
        id: BlockId,
        data: Bytes,
        sync: bool,
    ) -> std::result::Result<(BlockRef, Vec<Location>), (Error, bool)> {
        let block = BlockRef {
            id,
            len: data.len() as u32,
        };
        let mut exclude: Vec<String> = Vec::new();
        let mut holders: Vec<Location> = Vec::new();
        let mut wanted = None;
        let mut last_error = None;
        // A small block goes at once to where the last placement said the next would
        // go, while the nameserver is asked: a round trip less when it agrees, as it
        // does unless one of those storages is full, down or already holds the block. A
        // copy it did not place is an extra replica, which the nameserver deletes.
        let mut early: Vec<(String, PutTask)> = Vec::new();
        if data.len() <= FAN_OUT_MAX {
            let guess = self.guess.lock().expect("guess lock").clone();
            for to in &guess {
                early.push((
                    to.name.clone(),
                    self.start_put(id, to, &[], &data, sync, None),
                ));
            }
        }
        for _attempt in 0..UPLOAD_ATTEMPTS {
            let skip: Vec<String> = exclude
                .iter()
                .cloned()
                .chain(holders.iter().map(|l| l.name.clone()))
                .collect();
            let prefer = early.iter().map(|(name, _)| name.clone()).collect();
            let placement = match self.place(id, block.len, skip, prefer).await {
                Ok(p) => p,
                // Out of candidates: fine if some copy is already durable.
                Err(_) if !holders.is_empty() => break,
                Err(e) => {
                    let full = last_error
                        .as_ref()
                        .is_some_and(|e: &Error| e.code() == ErrorCode::NoSpace);
                    return Err((last_error.unwrap_or(e), full));
                }
            };
            if placement.stored {
                return Ok((block, holders));
            }
            let need = wanted
                .get_or_insert(placement.targets.len())
                .saturating_sub(holders.len())
                .max(1);
            let next = placement.next;
            let chain: Vec<Location> = placement.targets.into_iter().take(need).collect();
            if chain.is_empty() {
                // A placement naming no storage: nothing to send to (and `send_copies`
                // would have no pipeline head).
                let e = vg_wire::RemoteError::new(
                    ErrorCode::Unavailable,
                    format!("block {id:?}: the nameserver placed it on no storage"),
                );
                return Err((Error::Remote(e), false));
            }
            let (acked, failed) = self.send_copies(id, &chain, &data, sync, &mut early).await;
            holders.extend(chain.iter().filter(|l| acked.contains(&l.name)).cloned());
            if data.len() <= FAN_OUT_MAX {
                *self.guess.lock().expect("guess lock") = match failed.is_empty() {
                    true => next,
                    false => Vec::new(),
                };
            }
            if holders.len() >= wanted.unwrap_or(1) {
                break;
            }
            if failed.is_empty() {
                // A pipeline that left storages out: try others for the missing copies.
                exclude.extend(
                    chain
                        .iter()
                        .map(|l| l.name.clone())
                        .filter(|n| !acked.contains(n)),
                );
            }
            for (storage, e) in failed {
                tracing::warn!(block = ?id, %storage, error = %e, "upload failed; placing the block elsewhere");
                if e.code() == Some(ErrorCode::Invalid) {
                    return Err((e.into(), false));
                }
                exclude.push(storage);
                last_error = Some(e.into());
            }
        }
        if holders.is_empty() {
            let full = last_error
                .as_ref()
                .is_some_and(|e| e.code() == ErrorCode::NoSpace);
            let error = last_error.unwrap_or(Error::Remote(vg_wire::RemoteError::new(
                ErrorCode::Unavailable,
                format!("block {id:?}: upload failed"),
            )));
            return Err((error, full));
        }
        Ok((block, holders))
    }

    /// The storages a small block's upload can race its commit to (the next placement
    /// the nameserver announced), unless a nameserver refused a raced commit of the kind
    /// (`synced`: an fsync's, or a close's) lately.
    pub(super) fn race_targets(&self, synced: bool) -> Option<Vec<Location>> {
        let refused = self.race_refused.lock().expect("race lock")[usize::from(synced)];
        if refused.is_some_and(|at| at.elapsed() < RACE_AGAIN_AFTER) {
            return None;
        }
        // Every so often an fsync asks for a placement instead, which also says where the
        // next ones go: the nameserver's choice follows the storages' free space.
        let raced = self.raced_on_guess.fetch_add(1, Ordering::Relaxed);
        if raced.is_multiple_of(RACES_PER_PLACEMENT) {
            return None;
        }
        let guess = self.guess.lock().expect("guess lock").clone();
        (!guess.is_empty()).then_some(guess)
    }

    /// Notes that the nameserver refused a raced commit of the kind: such commits wait
    /// for their uploads for a while.
    pub(super) fn race_refused(&self, synced: bool) {
        self.race_refused.lock().expect("race lock")[usize::from(synced)] = Some(Instant::now());
    }

    /// Notes that every storage a raced commit named acknowledged its blobs, for the
    /// nameserver, which otherwise asks them itself: the next commit tells it, or a
    /// request of their own if none comes soon.
    pub(super) fn race_stored(&self, race: u64) {
        let mut stored = self.races_stored.lock().expect("races lock");
        stored.0.push(race);
        if std::mem::replace(&mut stored.1, true) {
            return;
        }
        let client = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RACES_STORED_AFTER).await;
            let races = {
                let mut stored = client.races_stored.lock().expect("races lock");
                stored.1 = false;
                std::mem::take(&mut stored.0)
            };
            if races.is_empty() {
                return;
            }
            // Not told, the nameserver asks the storages: nothing is lost.
            if let Err(e) = client.ns_call(ns::Request::RacesStored { races }).await {
                tracing::debug!(error = %e, "telling the nameserver of races stored failed");
            }
        });
    }

    /// The races stored not yet told to the nameserver, for a commit to carry.
    pub(super) fn take_races_stored(&self) -> Vec<u64> {
        std::mem::take(&mut self.races_stored.lock().expect("races lock").0)
    }

    /// Starts uploading a small block to `to`, as race `race` of a commit that races it,
    /// synced unless the race says otherwise (`ns::RACE_UNSYNCED`). Returns the blob and
    /// the task that resolves once every storage of `to` acknowledged it
    /// (to the storages that did), or with the first failure. Held against garbage
    /// collection until the commit's answer, as [`Client::upload_block`] holds it.
    pub(super) async fn start_race(
        &self,
        data: Bytes,
        to: &[Location],
        race: u64,
    ) -> (
        BlockRef,
        tokio::task::JoinHandle<Result<(BlockRef, Vec<Location>)>>,
    ) {
        let id = content_id(&data).await;
        let blob = BlockRef {
            id,
            len: data.len() as u32,
        };
        self.hold(id);
        let puts: Vec<PutTask> = to
            .iter()
            .map(|at| self.start_put(id, at, &[], &data, ns::race_synced(race), Some(race)))
            .collect();
        let to = to.to_vec();
        let task = tokio::spawn(async move {
            for put in puts {
                if let (storage, Err(e)) = put.await.expect("upload task does not panic") {
                    tracing::warn!(block = ?id, %storage, error = %e, "raced upload failed");
                    return Err(e.into());
                }
            }
            Ok((blob, to))
        });
        (blob, task)
    }

    /// Starts sending a block to `to`, which forwards it down `rest`.
    fn start_put(
        &self,
        id: BlockId,
        to: &Location,
        rest: &[Location],
        data: &Bytes,
        sync: bool,
        race: Option<u64>,
    ) -> PutTask {
        let dialer = self.thread_dialer().clone();
        let (to, data) = (to.clone(), data.clone());
        let request = storage::Request::Put {
            id,
            len: data.len() as u32,
            chain: rest.to_vec(),
            sync,
            race,
        };
        tokio::spawn(async move {
            let result =
                vg_wire::rpc::send_block(&dialer, &Target::storage(&to), &request, data).await;
            (to.name, result)
        })
    }

    /// Sends a block to the storages of `chain`: a small one to each at once, a large one
    /// down the chain as a pipeline (each storage forwards it to the next), so that the
    /// client sends its bytes once. A send already under way to one of them (`early`)
    /// is waited for instead of made again. Returns the storages that acknowledged it,
    /// and those that failed with their error (a pipeline's failure is its head's).
    async fn send_copies(
        &self,
        id: BlockId,
        chain: &[Location],
        data: &Bytes,
        sync: bool,
        early: &mut Vec<(String, PutTask)>,
    ) -> (Vec<String>, Vec<(String, vg_wire::Error)>) {
        let sends: Vec<PutTask> = if data.len() <= FAN_OUT_MAX {
            // Two hops one after the other (client, then storage to storage) cost more
            // than sending a small block twice.
            chain
                .iter()
                .map(
                    |to| match early.iter().position(|(name, _)| *name == to.name) {
                        Some(i) => early.swap_remove(i).1,
                        None => self.start_put(id, to, &[], data, sync, None),
                    },
                )
                .collect()
        } else {
            vec![self.start_put(id, &chain[0], &chain[1..], data, sync, None)]
        };
        let (mut acked, mut failed) = (Vec::new(), Vec::new());
        for send in sends {
            match send.await.expect("upload task does not panic") {
                (_, Ok(holders)) => acked.extend(holders),
                (storage, Err(e)) => failed.push((storage, e)),
            }
        }
        (acked, failed)
    }

    /// Reads bytes `offset..offset+len` of a block from the first replica that serves
    /// them; a whole block is checked against the checksums stored with it at upload.
    pub async fn read_block(
        &self,
        id: BlockId,
        locations: &[Location],
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>> {
        self.read_replicas(id, locations, offset, len, false).await
    }

    /// A whole block, checked against its name (hash) as well (for `vgctl get`); a replica
    /// whose bytes do not match is passed over as one that failed.
    pub async fn read_block_hashed(&self, id: BlockId, locations: &[Location]) -> Result<Vec<u8>> {
        self.read_replicas(id, locations, 0, 0, true).await
    }

    async fn read_replicas(
        &self,
        id: BlockId,
        locations: &[Location],
        offset: u32,
        len: u32,
        hashed: bool,
    ) -> Result<Vec<u8>> {
        let mut reason = String::from("no live replica");
        let mut ordered: Vec<&Location> = locations.iter().collect();
        {
            // Replicas that failed lately go last; otherwise each block picks its own
            // first replica (rendezvous hashing), so that a sequential reader spreads its
            // reads over every storage instead of asking the same one for every block.
            let suspects = self.suspects.lock().expect("suspects lock");
            ordered.sort_by_cached_key(|l| {
                let suspect = suspects
                    .get(&l.name)
                    .is_some_and(|since| since.elapsed() < SUSPECT_FOR);
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&(id, &l.name), &mut hasher);
                (suspect, std::hash::Hasher::finish(&hasher))
            });
        }
        for location in ordered {
            let target = Target::storage(location);
            let result = vg_wire::rpc::read_block(&self.dialer, &target, id, offset, len)
                .await
                .map_err(|e| e.to_string())
                .and_then(|data| match hashed && !id.names(&data) {
                    true => Err("sent bytes that do not match the block's name".into()),
                    false => Ok(data),
                });
            match result {
                Ok(data) => {
                    self.suspects
                        .lock()
                        .expect("suspects lock")
                        .remove(&location.name);
                    return Ok(data);
                }
                Err(e) => reason = format!("{}: {e}", location.name),
            }
            self.suspects
                .lock()
                .expect("suspects lock")
                .insert(location.name.clone(), Instant::now());
            tracing::warn!(block = ?id, %reason, "replica failed; trying the next one");
        }
        Err(Error::Unreadable { block: id, reason })
    }

    /// Asks a storage to re-hash blocks; true for each that is present and intact.
    pub async fn verify(&self, location: &Location, ids: Vec<BlockId>) -> Result<Vec<bool>> {
        match self
            .dialer
            .call(
                &Target::storage(location),
                &storage::Request::Verify { ids },
            )
            .await?
        {
            storage::Response::Verified(ok) => Ok(ok),
            other => Err(unexpected("verify", other)),
        }
    }
}

/// Refreshes the grace period of held blocks until the clients holding them are gone.
pub(super) async fn keep_held_blocks(
    held: std::sync::Weak<Mutex<HashMap<BlockId, u32>>>,
    dialer: Dialer,
    ns: Nameservers,
) {
    loop {
        tokio::time::sleep(KEEP_EVERY).await;
        let Some(held) = held.upgrade() else { return };
        let ids: Vec<BlockId> = held.lock().expect("held lock").keys().copied().collect();
        drop(held);
        for batch in ids.chunks(ns::MAX_PAGE as usize) {
            let keep = ns::Request::KeepBlocks {
                ids: batch.to_vec(),
            };
            if let Err(e) = ns
                .call::<_, ns::Response>(&dialer, &keep, Duration::ZERO)
                .await
            {
                tracing::debug!(error = %e, "could not refresh uncommitted blocks");
            }
        }
    }
}

/// A blob's content address. A large one is hashed on a blocking thread: hashing a
/// 4 MiB block takes a millisecond, during which the runtime's worker (one on two cores)
/// would move no other block's bytes.
async fn content_id(data: &Bytes) -> BlockId {
    if data.len() <= FAN_OUT_MAX {
        return BlockId::of(data);
    }
    let bytes = data.clone();
    tokio::task::spawn_blocking(move || BlockId::of(&bytes))
        .await
        // Only a runtime shutting down cancels it: hash here then.
        .unwrap_or_else(|_| BlockId::of(data))
}

/// What a commit says of a blob [`Client::upload_block`] stored.
pub fn stored(blob: BlockRef, holders: &[Location]) -> Stored {
    let names = holders.iter().map(|l| l.name.clone()).collect();
    (blob.id, blob.len, names)
}
