//! Storages, block locations and block lifecycles: who holds what, where new blocks go,
//! and what each storage must copy or delete next.
//!
//! Pure logic: no sockets, and the current time is always passed in, so that placement,
//! failure detection, re-replication and garbage collection are testable alone.
//!
//! Memory: one entry per block (its length and the slots of its holders) is most of what
//! the nameserver keeps per file after the namespace itself, so a block's holders are
//! storage numbers in one small allocation, not names in a set.
//!
//! The periodic pass ([`Registry::tick`]) looks at a bounded slice of the blocks each
//! time, as MooseFS's chunk loop does, resuming where it stopped: it runs under the
//! nameserver's lock on its only request thread, and one look at every block took 1.1 s
//! at a million blobs (a small file is one), more than the second between passes, which
//! would have stopped the nameserver answering. A storage's failure is repaired within
//! one round through the blocks: `blocks / scan_per_tick` passes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::ns::{BlockInfo, Command, Placement, StorageState, StorageStatus};
use vg_wire::{BlockId, Location};

use crate::namespace::{Refs, Release};

/// A storage's number in the registry, in registration order; never reused.
type Slot = u32;

/// One registered storage.
#[derive(Debug)]
pub struct Storage {
    /// Its name.
    pub name: String,
    /// Advertised address.
    pub addr: SocketAddr,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Bytes used, as last reported plus placements since.
    pub used: u64,
    /// Joining, active or down.
    pub state: StorageState,
    last_seen: Instant,
    /// Blocks it holds, as far as the registry knows.
    blocks: u64,
    commands: Vec<Command>,
    /// Blocks it is told to delete and has not reported deleted: their length, and since
    /// when. Its heartbeats count them as used until then; placement counts them as free.
    deleting: HashMap<BlockId, (u64, Instant)>,
    /// The sum of the lengths in `deleting`.
    deleting_bytes: u64,
}

impl Storage {
    fn free(&self) -> u64 {
        self.capacity
            .saturating_sub(self.used.saturating_sub(self.deleting_bytes))
    }

    /// Forgets a pending deletion (done, or given up).
    fn deleted(&mut self, id: &BlockId) {
        if let Some((len, _)) = self.deleting.remove(id) {
            self.deleting_bytes -= len;
        }
    }

    /// Takes back a deletion of `id` not sent yet; true if there was one and the copy
    /// is still there (not reported gone meanwhile): then it counts again.
    fn call_off_delete(&mut self, id: &BlockId) -> bool {
        let pending = self.deleting.contains_key(id);
        let mut called_off = false;
        for command in &mut self.commands {
            if let Command::Delete(ids) = command {
                let before = ids.len();
                ids.retain(|i| i != id);
                called_off |= ids.len() < before;
            }
        }
        if called_off {
            self.commands
                .retain(|c| !matches!(c, Command::Delete(ids) if ids.is_empty()));
            self.deleted(id);
        }
        called_off && pending
    }

    fn is_active(&self) -> bool {
        self.state == StorageState::Active
    }
}

/// What the registry knows of one block.
#[derive(Debug)]
struct Block {
    /// Length, as placed or reported.
    len: u32,
    /// Storages holding it, whatever their state; empty only for a block placed and not
    /// yet reported stored.
    holders: Box<[Slot]>,
}

impl Block {
    fn holds(&self, slot: Slot) -> bool {
        self.holders.contains(&slot)
    }
}

/// Why a blob no file references is still kept, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unreferenced {
    /// Placed or reported, not (yet) committed: the grace period protects an upload in
    /// flight or a client slow to commit.
    Uploaded(Instant),
    /// Its file is gone (unlinked, truncated), by the op of the log position given. Kept
    /// for the grace period for a reader that still has the file open, but reclaimed at
    /// once when placement runs out of room: committed deletes never make a write fail.
    Released(Instant, u64),
    /// Newer bytes hide it (a rewrite, a compaction), by the op of the log position
    /// given: kept a few seconds for readers holding the old layout, which load the new
    /// one when it is gone; reclaimed at once when room is short.
    Replaced(Instant, u64),
}

impl Unreferenced {
    fn since(self) -> Instant {
        match self {
            Unreferenced::Uploaded(t)
            | Unreferenced::Released(t, _)
            | Unreferenced::Replaced(t, _) => t,
        }
    }

    /// Released by an op on disk (log position up to `durable`): deleting it can no
    /// longer be undone by a crash that loses the op, which would bring back a layout
    /// naming it.
    fn released_for_good(self, durable: u64) -> bool {
        match self {
            Unreferenced::Uploaded(_) => false,
            Unreferenced::Released(_, lsn) | Unreferenced::Replaced(_, lsn) => lsn <= durable,
        }
    }
}

/// Tunables of the registry.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Copies wanted of each block.
    pub replication: u32,
    /// A storage silent this long is down.
    pub heartbeat_timeout: Duration,
    /// How long an unreferenced block is kept (uploads not yet committed).
    pub gc_grace: Duration,
    /// How long a replication command may take before it is issued again.
    pub replication_timeout: Duration,
    /// Blocks (and, apart, unreferenced blocks) the periodic pass looks at each time.
    pub scan_per_tick: usize,
}

/// [`Policy::scan_per_tick`] by default: about 2 ms of the nameserver's time per pass on
/// our machine.
pub const SCAN_PER_TICK: usize = 16_384;

impl Policy {
    /// How long a block that newer bytes replaced is kept for readers holding an old
    /// layout (a reader that finds it gone loads the layout again): a few seconds, not
    /// the grace period, so that rewrites do not fill the cluster with garbage.
    pub fn replace_grace(&self) -> Duration {
        self.gc_grace.min(REPLACE_GRACE)
    }
}

/// At most `n` entries of `map` after `after` (from the first without it); fewer when
/// they reach the end, which the caller sees as the last key it got: the next slice then
/// starts from the first again.
fn next_slice<V>(
    map: &BTreeMap<BlockId, V>,
    after: Option<BlockId>,
    n: usize,
) -> impl Iterator<Item = (&BlockId, &V)> {
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut slice = map.range((from, Bound::Unbounded)).take(n).peekable();
    // Nothing after `after`: start over (an empty map stays empty).
    let wrapped = slice.peek().is_none();
    let again = map
        .range(..)
        .take(if wrapped && after.is_some() { n } else { 0 });
    slice.chain(again)
}

/// See [`Policy::replace_grace`].
const REPLACE_GRACE: Duration = Duration::from_secs(5);

/// The registry of storages and blocks.
#[derive(Debug)]
pub struct Registry {
    policy: Policy,
    /// Every storage ever registered, by slot.
    storages: Vec<Storage>,
    slots: HashMap<String, Slot>,
    /// Blocks placed or held; ordered, so that the periodic pass can resume after the
    /// last block it looked at.
    blocks: BTreeMap<BlockId, Block>,
    /// Blocks not referenced by any file, why and since when: deleted after the grace
    /// period (released ones after a few seconds, or at once when space is short).
    unreferenced: BTreeMap<BlockId, Unreferenced>,
    /// The last block the periodic pass looked at (`None`: it starts from the first).
    scanned_blocks: Option<BlockId>,
    /// The same for the unreferenced blocks.
    scanned_unreferenced: Option<BlockId>,
    /// Replications asked for and not yet reported done: block -> (target, when).
    in_flight: HashMap<BlockId, (Slot, Instant)>,
    /// Rotates placement among equally free storages.
    rotation: usize,
    /// No copies are made before this: the storages may not all have reported yet.
    copies_after: Option<Instant>,
    /// Blocks whose upload raced its commit, at storages not yet known to hold them:
    /// not offered for deduplication until checked.
    raced: HashSet<BlockId>,
}

impl Registry {
    /// An empty registry.
    pub fn new(policy: Policy) -> Self {
        Registry {
            policy,
            storages: Vec::new(),
            slots: HashMap::new(),
            blocks: BTreeMap::new(),
            unreferenced: BTreeMap::new(),
            scanned_blocks: None,
            scanned_unreferenced: None,
            in_flight: HashMap::new(),
            rotation: 0,
            copies_after: None,
            raced: HashSet::new(),
        }
    }

    /// Makes no copies of under-replicated blocks before `at`: a nameserver that just
    /// started leading knows only the storages that reported so far, and would take the
    /// blocks of those yet to come for lost copies.
    pub fn hold_copies_until(&mut self, at: Instant) {
        self.copies_after = Some(at);
    }

    /// Whether storages may still be on their way to register and report (see
    /// [`Registry::hold_copies_until`]): a block without a known copy may just not be
    /// reported yet.
    pub fn settling(&self, now: Instant) -> bool {
        self.copies_after.is_some_and(|at| now < at)
    }

    /// Whether fewer than R storages have reported since this registry started, while
    /// more may still come: a placement now would make fewer copies than R.
    pub fn short_of_storages(&self, now: Instant) -> bool {
        self.settling(now) && self.n_active() < self.policy.replication as usize
    }

    fn storage(&self, slot: Slot) -> &Storage {
        &self.storages[slot as usize]
    }

    fn storage_mut(&mut self, slot: Slot) -> &mut Storage {
        &mut self.storages[slot as usize]
    }

    fn location(&self, slot: Slot) -> Location {
        let storage = self.storage(slot);
        Location {
            name: storage.name.clone(),
            addr: storage.addr,
        }
    }

    fn add_location(&mut self, id: BlockId, len: u32, slot: Slot) {
        let block = self.blocks.entry(id).or_insert(Block {
            len,
            holders: Box::default(),
        });
        if !block.holds(slot) {
            block.holders = block.holders.iter().copied().chain([slot]).collect();
            self.storage_mut(slot).blocks += 1;
        }
        if matches!(self.in_flight.get(&id), Some((target, _)) if *target == slot) {
            self.in_flight.remove(&id);
            info!(block = ?id, storage = %self.storage(slot).name, "replication finished");
        }
    }

    fn remove_location(&mut self, id: BlockId, slot: Slot) {
        let Some(block) = self.blocks.get_mut(&id) else {
            return;
        };
        if !block.holds(slot) {
            return;
        }
        block.holders = block
            .holders
            .iter()
            .copied()
            .filter(|&s| s != slot)
            .collect();
        if block.holders.is_empty() {
            self.blocks.remove(&id);
        }
        self.storage_mut(slot).blocks -= 1;
    }

    fn is_active(&self, slot: Slot) -> bool {
        self.storage(slot).is_active()
    }

    /// Active storages holding a block.
    fn live_slots(&self, id: &BlockId) -> Vec<Slot> {
        self.blocks
            .get(id)
            .map(|b| self.live_holders(b).collect())
            .unwrap_or_default()
    }

    /// The holders of a block that are active.
    fn live_holders<'a>(&'a self, block: &'a Block) -> impl Iterator<Item = Slot> + 'a {
        block.holders.iter().copied().filter(|&s| self.is_active(s))
    }

    /// Where an active storage is, by name.
    pub fn active_location(&self, name: &str) -> Option<Location> {
        let &slot = self.slots.get(name)?;
        self.is_active(slot).then(|| self.location(slot))
    }

    /// Where every active storage is.
    pub fn active_locations(&self) -> Vec<Location> {
        (0..self.storages.len() as Slot)
            .filter(|&slot| self.is_active(slot))
            .map(|slot| self.location(slot))
            .collect()
    }

    /// Live (active) storages holding a block.
    pub fn live_locations(&self, id: &BlockId) -> Vec<Location> {
        self.live_slots(id)
            .into_iter()
            .map(|s| self.location(s))
            .collect()
    }

    /// Active storages with room for `len` more bytes that do not hold block `id`: where
    /// a new copy of it may go.
    fn can_take<'a>(&'a self, id: &BlockId, len: u64) -> impl Iterator<Item = Slot> + 'a {
        let block = self.blocks.get(id);
        (0..self.storages.len() as Slot).filter(move |&slot| {
            let s = self.storage(slot);
            s.is_active() && s.free() >= len && !block.is_some_and(|b| b.holds(slot))
        })
    }

    fn n_active(&self) -> usize {
        self.storages.iter().filter(|s| s.is_active()).count()
    }

    /// Copies a block should have now: R, or fewer if fewer storages are active.
    pub fn wanted(&self) -> u32 {
        self.policy.replication.min(self.n_active() as u32)
    }

    /// A storage (re)registers: its old block list is forgotten until it reports again.
    pub fn register(
        &mut self,
        name: &str,
        addr: SocketAddr,
        capacity: u64,
        used: u64,
        now: Instant,
    ) {
        let slot = match self.slots.get(name) {
            Some(&slot) => {
                if self.storage(slot).blocks > 0 {
                    let held: Vec<BlockId> = self
                        .blocks
                        .iter()
                        .filter(|(_, b)| b.holds(slot))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in held {
                        self.remove_location(id, slot);
                    }
                }
                slot
            }
            None => {
                let slot = self.storages.len() as Slot;
                self.slots.insert(name.to_string(), slot);
                self.storages.push(Storage {
                    name: name.to_string(),
                    addr,
                    capacity,
                    used,
                    state: StorageState::Joining,
                    last_seen: now,
                    blocks: 0,
                    commands: Vec::new(),
                    deleting: HashMap::new(),
                    deleting_bytes: 0,
                });
                slot
            }
        };
        info!(storage = name, %addr, capacity, "storage joined");
        let storage = self.storage_mut(slot);
        storage.addr = addr;
        storage.capacity = capacity;
        storage.used = used;
        storage.state = StorageState::Joining;
        storage.last_seen = now;
        storage.commands.clear();
        storage.deleting.clear();
        storage.deleting_bytes = 0;
    }

    /// Part of a block report; returns the blocks the storage must delete.
    pub fn report(
        &mut self,
        name: &str,
        blocks: &[(BlockId, u32)],
        refs: &Refs,
        now: Instant,
    ) -> Result<Vec<BlockId>, RemoteError> {
        let slot = self.known(name)?;
        let mut delete = Vec::new();
        for &(id, len) in blocks {
            let keep = refs.contains_key(&id)
                || now.duration_since(
                    self.unreferenced
                        .entry(id)
                        .or_insert(Unreferenced::Uploaded(now))
                        .since(),
                ) < self.policy.gc_grace;
            if keep {
                self.add_location(id, len, slot);
            } else {
                delete.push(id);
            }
        }
        Ok(delete)
    }

    fn known(&self, name: &str) -> Result<Slot, RemoteError> {
        self.slots.get(name).copied().ok_or_else(|| {
            RemoteError::new(
                ErrorCode::NotFound,
                format!("storage {name} is not registered"),
            )
        })
    }

    /// The storage finished its report.
    pub fn activate(&mut self, name: &str, now: Instant) -> Result<(), RemoteError> {
        let slot = self.known(name)?;
        let storage = self.storage_mut(slot);
        storage.state = StorageState::Active;
        storage.last_seen = now;
        info!(storage = name, blocks = storage.blocks, "storage active");
        Ok(())
    }

    /// A heartbeat; returns the storage's pending commands.
    pub fn heartbeat(
        &mut self,
        name: &str,
        used: u64,
        received: &[(BlockId, u32)],
        removed: &[BlockId],
        bad: &[BlockId],
        now: Instant,
    ) -> Vec<Command> {
        let slot = match self.slots.get(name) {
            Some(&slot) if self.storage(slot).state != StorageState::Down => slot,
            // Unknown (the nameserver restarted) or declared down meanwhile: its block
            // list is stale, so it must register and report again.
            _ => return vec![Command::Reregister],
        };
        let storage = self.storage_mut(slot);
        storage.used = used;
        storage.last_seen = now;
        for &(id, len) in received {
            // A new copy (an upload that did not wait for its placement, or raced a
            // deletion sent before it, which the storage skips: it keeps what it stored
            // after the heartbeat whose answer tells it to delete) is kept for the grace
            // period. A copy whose deletion is queued is one the nameserver knew of (a
            // commit told it) and found garbage before the storage reported it, or the
            // same bytes written anew (a put of a block held reports it again): the
            // deletion is taken back, for the latter, but the blob stays garbage, which a
            // placement or commit of those bytes takes back. Kept as a fresh upload, a
            // file rewritten and compacted under a second mount filled a 3 x 64 MiB
            // cluster with 4 MiB blobs replaced within a heartbeat of their upload.
            let state = match self.storage_mut(slot).call_off_delete(&id) {
                true => Unreferenced::Replaced(now, 0),
                false => Unreferenced::Uploaded(now),
            };
            self.unreferenced.entry(id).or_insert(state);
            self.add_location(id, len, slot);
        }
        for id in removed.iter().chain(bad) {
            self.remove_location(*id, slot);
            self.storage_mut(slot).deleted(id);
        }
        if !bad.is_empty() {
            warn!(storage = name, blocks = ?bad, "storage found corrupt blocks; re-replicating them");
        }
        std::mem::take(&mut self.storage_mut(slot).commands)
    }

    /// Blocks that just lost their last file reference, and why. A grace entry left from
    /// their upload (the periodic tick clears those of committed blocks) gives way: a
    /// slice hidden a moment after its commit is garbage like any other. `lsn`: the log
    /// position of the op that released them.
    pub fn released(&mut self, released: Vec<(BlockId, Release)>, now: Instant, lsn: u64) {
        for (id, why) in released {
            let state = match why {
                Release::Dropped => Unreferenced::Released(now, lsn),
                Release::Replaced => Unreferenced::Replaced(now, lsn),
            };
            self.unreferenced.insert(id, state);
        }
    }

    /// Deletes at once every released block no file references again, and counts their
    /// space as free: run when placement finds no room. Only blocks released by ops on
    /// disk (up to log position `durable`). Returns the bytes freed.
    pub fn reclaim(&mut self, refs: &Refs, now: Instant, durable: u64) -> u64 {
        let ids: Vec<BlockId> = self
            .unreferenced
            .iter()
            .filter(|(id, u)| u.released_for_good(durable) && !refs.contains_key(*id))
            .map(|(id, _)| *id)
            .collect();
        let mut freed = 0;
        for id in ids {
            self.unreferenced.remove(&id);
            let len = self.blocks.get(&id).map_or(0, |b| b.len as u64);
            for slot in self.live_slots(&id) {
                self.push_delete(slot, id, now);
                freed += len;
            }
        }
        if freed > 0 {
            info!(bytes = freed, "reclaimed released blocks to make room");
        }
        freed
    }

    /// Bytes that released blocks hold on storages (all copies): space a write may take.
    pub fn garbage(&self) -> u64 {
        self.garbage_blocks()
            .map(|b| b.len as u64 * b.holders.len() as u64)
            .sum()
    }

    /// The blocks no file references any more, which placement may reclaim.
    fn garbage_blocks(&self) -> impl Iterator<Item = &Block> + '_ {
        self.unreferenced
            .iter()
            .filter(|(_, u)| !matches!(u, Unreferenced::Uploaded(_)))
            .filter_map(|(id, _)| self.blocks.get(id))
    }

    /// Records that the client saw these storages acknowledge a block.
    /// Hints about a block already collected are ignored: the storage no longer has it.
    /// Records where a client is uploading a block while its commit goes to disk
    /// ([`Registry::raced_checked`] settles it), counting its room as placement does;
    /// refused unless every one of `holders` is an active storage with room for it.
    pub fn raced(&mut self, id: BlockId, len: u32, holders: &[String]) -> Result<(), RemoteError> {
        let mut slots = Vec::with_capacity(holders.len());
        for name in holders {
            match self.slots.get(name) {
                Some(&slot) if self.is_active(slot) && self.storage(slot).free() >= len as u64 => {
                    slots.push(slot)
                }
                _ => {
                    return Err(RemoteError::new(
                        ErrorCode::Conflict,
                        format!("block {id:?}: {name} is not an active storage with room"),
                    ))
                }
            }
        }
        if slots.is_empty() {
            return Err(RemoteError::new(
                ErrorCode::Conflict,
                format!("block {id:?}: a raced upload to no storage"),
            ));
        }
        for slot in slots {
            // As for a commit's copies ([`Registry::stored`]): a deletion not sent yet is
            // taken back.
            self.storage_mut(slot).call_off_delete(&id);
            self.take_room(&id, len, slot);
            self.add_location(id, len, slot);
        }
        self.raced.insert(id);
        Ok(())
    }

    /// Counts a block's room on a storage it is going to, unless the storage holds it
    /// already (counted then).
    fn take_room(&mut self, id: &BlockId, len: u32, slot: Slot) {
        if !self.blocks.get(id).is_some_and(|b| b.holds(slot)) {
            self.storage_mut(slot).used += len as u64;
        }
    }

    /// Raced blocks not yet checked that a nameserver's log handed back at start.
    pub fn unchecked(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        self.raced.extend(ids);
    }

    /// Whether a raced block is not yet checked.
    pub fn is_unchecked(&self, id: &BlockId) -> bool {
        self.raced.contains(id)
    }

    /// Settles a raced block with what storages answered: `absent` do not hold it (their
    /// location goes), `held` do. Returns whether it is held anywhere now.
    pub fn raced_checked(&mut self, id: BlockId, held: &[String], absent: &[String]) -> bool {
        let len = self.blocks.get(&id).map_or(0, |b| b.len);
        for name in held {
            if let Some(&slot) = self.slots.get(name) {
                self.add_location(id, len, slot);
            }
        }
        for name in absent {
            if let Some(&slot) = self.slots.get(name) {
                self.remove_location(id, slot);
            }
        }
        self.raced.remove(&id);
        self.has_any_location(&id)
    }

    pub fn stored(&mut self, id: BlockId, len: u32, holders: &[String]) {
        let known = self.is_known(&id);
        for name in holders {
            let Some(&slot) = self.slots.get(name) else {
                continue;
            };
            // A copy whose deletion is not sent yet is still there, and the commit that
            // names it keeps it (a late report of it left the blob garbage, which room
            // running short may have collected before this commit came).
            if self.storage_mut(slot).call_off_delete(&id) || known {
                self.add_location(id, len, slot);
            }
        }
    }

    /// Whether the block is held somewhere or still within its grace period.
    fn is_known(&self, id: &BlockId) -> bool {
        self.has_any_location(id) || self.unreferenced.contains_key(id)
    }

    /// Blobs uploaded for a change the namespace refused (a compaction that lost its
    /// race with a writer, or whose file is gone): garbage at once, like bytes a rewrite replaced, rather than
    /// kept the grace period for a commit that will not come. A client that uploaded the
    /// same bytes for a change of its own and still commits them restarts their grace
    /// ([`Registry::keep`]); a file that references them keeps them in any case.
    pub fn refused(&mut self, ids: &[BlockId], now: Instant) {
        for id in ids {
            if let Some(state @ Unreferenced::Uploaded(_)) = self.unreferenced.get_mut(id) {
                *state = Unreferenced::Replaced(now, 0);
            }
        }
    }

    /// Restarts the grace period of uncommitted blocks a client still writes (blocks
    /// already collected stay collected).
    pub fn keep(&mut self, ids: &[BlockId], now: Instant) {
        for id in ids {
            if let Some(since) = self.unreferenced.get_mut(id) {
                *since = Unreferenced::Uploaded(now);
            }
        }
    }

    /// Chooses storages for a new block, or says the cluster already holds it. The
    /// client's guess (`prefer`: the storages the previous placement said would come
    /// next, where it already sent the bytes) stands if every one of them qualifies.
    pub fn place(
        &mut self,
        id: BlockId,
        len: u32,
        exclude: &[String],
        prefer: &[String],
        referenced: bool,
        now: Instant,
    ) -> Result<Placement, RemoteError> {
        self.call_off_deletions(id, len);
        let wanted = self.wanted() as usize;
        // A raced block is not known stored yet: a copy more is better than none.
        let live = match self.raced.contains(&id) {
            true => 0,
            false => self.live_slots(&id).len(),
        };
        if !referenced {
            // Until its file is committed, the block is protected by the grace period.
            self.unreferenced.insert(id, Unreferenced::Uploaded(now));
        }
        if wanted > 0 && live >= wanted {
            return Ok(Placement {
                targets: Vec::new(),
                stored: true,
                next: Vec::new(),
            });
        }
        self.rotation = self.rotation.wrapping_add(1);
        let mut chosen = self.ranked(&id, len, exclude, self.rotation);
        if chosen.is_empty() && self.raced.contains(&id) {
            // Named on every storage that could take it (its raced upload's and earlier
            // copies): the bytes go to those again. One that has them answers at once;
            // one that never got them stores them now, so this upload stands whatever
            // the check finds. (Refused as "no room", sqlite on two mounts saw an fsync
            // fail.)
            chosen = self
                .live_slots(&id)
                .into_iter()
                .filter(|&slot| !exclude.contains(&self.storage(slot).name))
                .collect();
        }
        if chosen.is_empty() {
            let (code, reason) = if self.n_active() == 0 {
                (ErrorCode::Unavailable, "no storage is active")
            } else {
                (ErrorCode::NoSpace, "no storage has room")
            };
            return Err(RemoteError::new(
                code,
                format!("block {id:?} ({len} bytes): {reason}"),
            ));
        }
        let n = wanted.saturating_sub(live).max(1);
        let guessed: Vec<Slot> = prefer
            .iter()
            .filter_map(|name| self.slots.get(name).copied())
            .filter(|slot| chosen.contains(slot))
            .collect();
        match guessed.len() == prefer.len() && guessed.len() == n {
            true => chosen = guessed,
            false => chosen.truncate(n),
        }
        for &slot in &chosen {
            self.take_room(&id, len, slot);
        }
        self.blocks
            .entry(id)
            .or_insert(Block {
                len,
                holders: Box::default(),
            })
            .len = len;
        let mut next = self.ranked(&id, len, exclude, self.rotation.wrapping_add(1));
        next.truncate(wanted);
        Ok(Placement {
            targets: chosen.iter().map(|&s| self.location(s)).collect(),
            stored: false,
            next: next.iter().map(|&s| self.location(s)).collect(),
        })
    }

    /// The storages that can take a block of `len` bytes (not holding `id`, not in
    /// `exclude`) in placement order: most free space first, `rotation` breaking ties.
    fn ranked(&self, id: &BlockId, len: u32, exclude: &[String], rotation: usize) -> Vec<Slot> {
        let mut candidates: Vec<Slot> = self
            .can_take(id, len as u64)
            .filter(|&slot| !exclude.contains(&self.storage(slot).name))
            .collect();
        if !candidates.is_empty() {
            let n = candidates.len();
            candidates.rotate_left(rotation % n);
            candidates.sort_by_key(|&s| std::cmp::Reverse(self.storage(s).free() / (1 << 20)));
        }
        candidates
    }

    /// Periodic work: declare silent storages down, schedule copies of under-replicated
    /// blocks, deletion of extra copies and of unreferenced blocks past the grace period
    /// (those a file released, once the op that did is on disk: up to log position
    /// `durable`).
    pub fn tick(&mut self, refs: &Refs, now: Instant, durable: u64) {
        for storage in &mut self.storages {
            if storage.state != StorageState::Down
                && now.duration_since(storage.last_seen) > self.policy.heartbeat_timeout
            {
                storage.state = StorageState::Down;
                storage.commands.clear();
                warn!(storage = %storage.name, blocks = storage.blocks, "storage left: no heartbeat; re-replicating its blocks");
            }
        }
        self.in_flight
            .retain(|_, (_, since)| now.duration_since(*since) < self.policy.replication_timeout);
        // A deletion never reported (the block was gone already) stops counting as free
        // space after a few heartbeats' time.
        let give_up = self.policy.heartbeat_timeout;
        for storage in &mut self.storages {
            let stale: Vec<BlockId> = storage
                .deleting
                .iter()
                .filter(|(_, (_, since))| now.duration_since(*since) > give_up)
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                storage.deleted(&id);
            }
        }
        let [copies, extras, fresh] = self.scan_blocks(refs);
        if self.copies_after.is_none_or(|at| now >= at) {
            for id in copies {
                self.schedule_copy(id, now);
            }
        }
        let replication = self.policy.replication as usize;
        for id in extras {
            let mut holders = self.live_slots(&id);
            holders.sort_by_key(|&s| self.storage(s).free());
            let n_extra = holders.len().saturating_sub(replication);
            for slot in holders.into_iter().take(n_extra) {
                info!(block = ?id, storage = %self.storage(slot).name, "deleting extra replica");
                self.push_delete(slot, id, now);
            }
        }
        // A held block that no file references and that has no grace entry yet (a client
        // that crashed between upload and commit) starts its grace period now.
        for id in fresh {
            self.unreferenced.insert(id, Unreferenced::Uploaded(now));
        }
        for id in self.scan_unreferenced(refs, now, durable) {
            self.unreferenced.remove(&id);
            for slot in self.live_slots(&id) {
                self.push_delete(slot, id, now);
            }
            // Placed but never stored (the upload failed): nothing to delete, only forget.
            if self.blocks.get(&id).is_some_and(|b| b.holders.is_empty()) {
                self.blocks.remove(&id);
            }
        }
    }

    /// Looks at the next slice of the blocks (see the module doc). Returns the
    /// referenced ones with fewer live copies than wanted (but some) and none on the way,
    /// those with more than R, and the unreferenced ones without a grace entry.
    fn scan_blocks(&mut self, refs: &Refs) -> [Vec<BlockId>; 3] {
        let replication = self.policy.replication as usize;
        let wanted = self.wanted() as usize;
        let [mut copies, mut extras, mut fresh] = [Vec::new(), Vec::new(), Vec::new()];
        let slice = next_slice(&self.blocks, self.scanned_blocks, self.policy.scan_per_tick);
        let mut last = None;
        for (id, block) in slice {
            last = Some(*id);
            if !refs.contains_key(id) {
                if !self.unreferenced.contains_key(id) {
                    fresh.push(*id);
                }
                continue;
            }
            let live = self.live_holders(block).count();
            if live < wanted && live > 0 && !self.in_flight.contains_key(id) {
                copies.push(*id);
            } else if live > replication {
                extras.push(*id);
            }
        }
        self.scanned_blocks = last;
        [copies, extras, fresh]
    }

    /// Looks at the next slice of the unreferenced blocks: drops the entries of those a
    /// file references again, and returns those whose grace period is over.
    fn scan_unreferenced(&mut self, refs: &Refs, now: Instant, durable: u64) -> Vec<BlockId> {
        let mut expired = Vec::new();
        let mut referenced = Vec::new();
        let slice = next_slice(
            &self.unreferenced,
            self.scanned_unreferenced,
            self.policy.scan_per_tick,
        );
        let mut last = None;
        for (id, u) in slice {
            last = Some(*id);
            let grace = match u {
                _ if refs.contains_key(id) => {
                    referenced.push(*id);
                    continue;
                }
                Unreferenced::Uploaded(_) => self.policy.gc_grace,
                _ if !u.released_for_good(durable) => continue,
                Unreferenced::Released(..) => self.policy.gc_grace,
                Unreferenced::Replaced(..) => self.policy.replace_grace(),
            };
            if now.duration_since(u.since()) >= grace {
                expired.push(*id);
            }
        }
        self.scanned_unreferenced = last;
        for id in referenced {
            self.unreferenced.remove(&id);
        }
        expired
    }

    /// A block released and due for deletion is being placed again (the same bytes
    /// written anew): a deletion not sent yet is called off, and the storage's copy counts
    /// again. One already sent does not touch a copy the storage received after the
    /// heartbeat it answers: the storage skips those and reports them (see
    /// `vg_storage::ns_link`), and their report counts the copy again.
    fn call_off_deletions(&mut self, id: BlockId, len: u32) {
        for slot in 0..self.storages.len() as Slot {
            if self.storage_mut(slot).call_off_delete(&id) {
                self.add_location(id, len, slot);
            }
        }
    }

    /// Tells a holder of block `id` to delete it; it no longer counts as holding it.
    fn push_delete(&mut self, slot: Slot, id: BlockId, now: Instant) {
        let len = self.blocks.get(&id).map_or(0, |b| b.len as u64);
        self.remove_location(id, slot);
        let storage = self.storage_mut(slot);
        if storage.deleting.insert(id, (len, now)).is_none() {
            storage.deleting_bytes += len;
        }
        match storage.commands.iter_mut().find_map(|c| {
            if let Command::Delete(ids) = c {
                Some(ids)
            } else {
                None
            }
        }) {
            Some(ids) => ids.push(id),
            None => storage.commands.push(Command::Delete(vec![id])),
        }
    }

    fn schedule_copy(&mut self, id: BlockId, now: Instant) {
        let Some(block) = self.blocks.get(&id) else {
            return;
        };
        let len = block.len as u64;
        let target = self
            .can_take(&id, len)
            .max_by_key(|&slot| self.storage(slot).free());
        let Some(target) = target else { return };
        let sources = self.live_locations(&id);
        info!(block = ?id, from = %sources[0].name, to = %self.storage(target).name, "replication started");
        let storage = self.storage_mut(target);
        storage.used += len;
        storage.commands.push(Command::Replicate { id, sources });
        self.in_flight.insert(id, (target, now));
    }

    /// Storages for `vgctl du` and `status`, by name.
    pub fn status(&self) -> Vec<StorageStatus> {
        let mut garbage = vec![0u64; self.storages.len()];
        for block in self.garbage_blocks() {
            for &slot in block.holders.iter() {
                garbage[slot as usize] += block.len as u64;
            }
        }
        let mut status: Vec<StorageStatus> = self
            .storages
            .iter()
            .zip(garbage)
            .map(|(s, garbage)| StorageStatus {
                name: s.name.clone(),
                addr: s.addr,
                capacity: s.capacity,
                used: s.used,
                garbage,
                state: s.state,
                blocks: s.blocks,
            })
            .collect();
        status.sort_by(|a, b| a.name.cmp(&b.name));
        status
    }

    /// Copies under way.
    pub fn replicating(&self) -> usize {
        self.in_flight.len()
    }

    /// (under-replicated, missing) counts over the referenced blocks.
    pub fn replication_health(&self, refs: &Refs) -> (u64, u64) {
        let wanted = self.wanted() as usize;
        let mut under = 0;
        let mut missing = 0;
        for id in refs.keys() {
            let live = self
                .blocks
                .get(id)
                .map_or(0, |b| self.live_holders(b).count());
            if live == 0 {
                missing += 1;
            } else if live < wanted.max(1) {
                under += 1;
            }
        }
        (under, missing)
    }

    /// Referenced blocks with their locations, sorted by id, after `after`.
    pub fn list_blocks(
        &self,
        refs: &Refs,
        after: Option<BlockId>,
        limit: u32,
    ) -> (Vec<BlockInfo>, bool) {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut ids = refs.range((from, Bound::Unbounded)).map(|(id, _)| id);
        let wanted = self.wanted();
        let blocks = ids
            .by_ref()
            .take(limit as usize)
            .map(|id| BlockInfo {
                id: *id,
                len: self.blocks.get(id).map_or(0, |b| b.len),
                locations: self.live_locations(id),
                wanted,
            })
            .collect();
        (blocks, ids.next().is_some())
    }

    /// (capacity, free) summed over active storages.
    pub fn space(&self) -> (u64, u64) {
        self.storages
            .iter()
            .filter(|s| s.is_active())
            .fold((0, 0), |(c, f), s| (c + s.capacity, f + s.free()))
    }

    /// Whether any storage holds the block (in any state).
    pub fn has_any_location(&self, id: &BlockId) -> bool {
        self.blocks.get(id).is_some_and(|b| !b.holders.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            replication: 2,
            heartbeat_timeout: Duration::from_secs(5),
            gc_grace: Duration::from_secs(10),
            replication_timeout: Duration::from_secs(30),
            scan_per_tick: SCAN_PER_TICK,
        }
    }
    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
    fn id(byte: u8) -> BlockId {
        BlockId([byte; 32])
    }
    fn dropped(ids: &[BlockId]) -> Vec<(BlockId, Release)> {
        ids.iter().map(|&id| (id, Release::Dropped)).collect()
    }
    fn replaced(ids: &[BlockId]) -> Vec<(BlockId, Release)> {
        ids.iter().map(|&id| (id, Release::Replaced)).collect()
    }
    /// When the blocks of a test become known; any instant works for these tests.
    fn t0_of(_reg: &Registry) -> Instant {
        Instant::now()
    }
    fn cluster(names: &[&str], now: Instant) -> Registry {
        let mut reg = Registry::new(policy());
        for (i, name) in names.iter().enumerate() {
            reg.register(name, addr(9000 + i as u16), 100, 0, now);
            reg.activate(name, now).unwrap();
        }
        reg
    }

    #[test]
    fn a_raced_block_is_where_the_client_sent_it_once_checked() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], now);
        let names = |l: Vec<Location>| l.into_iter().map(|l| l.name).collect::<Vec<_>>();
        let (a, b) = ("a".to_string(), "b".to_string());
        // Only active storages with room take a raced block.
        reg.storage_mut(reg.slots["c"]).used = 99;
        let e = reg.raced(id(1), 10, &[a.clone(), "c".into()]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let e = reg.raced(id(1), 10, &[a.clone(), "z".into()]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        reg.raced(id(1), 10, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(names(reg.live_locations(&id(1))), ["a", "b"]);
        // Not offered for deduplication before it is checked: placed anew.
        reg.storage_mut(reg.slots["c"]).used = 0;
        let p = reg.place(id(1), 10, &[], &[], true, now).unwrap();
        assert!(!p.stored);
        assert_eq!(names(p.targets), ["c"]);
        // Checked: the storage that does not hold it is no longer a location.
        assert!(reg.raced_checked(id(1), std::slice::from_ref(&b), std::slice::from_ref(&a)));
        assert_eq!(names(reg.live_locations(&id(1))), ["b"]);
        // Held nowhere.
        assert!(!reg.raced_checked(id(1), &[], &[b]));
        assert!(reg.live_locations(&id(1)).is_empty());
    }

    #[test]
    fn a_raced_block_named_on_every_storage_is_placed_on_them_again() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], now);
        let names = |l: Vec<Location>| l.into_iter().map(|l| l.name).collect::<Vec<_>>();
        // An earlier copy on c, then a raced upload of the same bytes to a and b.
        reg.place(id(1), 10, &[], &[], false, now).unwrap();
        reg.stored(id(1), 10, &["c".to_string()]);
        reg.raced(id(1), 10, &["a".into(), "b".into()]).unwrap();
        let used: Vec<u64> = reg.storages.iter().map(|s| s.used).collect();
        // Not known stored until checked, and no storage is left that does not hold
        // it: placed on its holders again, not refused for want of room.
        let p = reg.place(id(1), 10, &[], &[], true, now).unwrap();
        assert!(!p.stored);
        assert_eq!(p.targets.len(), 2);
        let again = reg.place(id(1), 10, &["a".into(), "b".into()], &[], true, now);
        assert_eq!(names(again.unwrap().targets), ["c"]);
        let all = ["a".into(), "b".into(), "c".into()];
        let e = reg.place(id(1), 10, &all, &[], true, now).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSpace);
        assert_eq!(
            reg.storages.iter().map(|s| s.used).collect::<Vec<_>>(),
            used,
            "no room taken again for copies already counted"
        );
    }

    #[test]
    fn a_guess_of_the_next_placement_stands_while_it_qualifies() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], now);
        let names = |locations: &[Location]| {
            let mut n: Vec<String> = locations.iter().map(|l| l.name.clone()).collect();
            n.sort();
            n
        };
        // Following `next` gives what placement would have chosen anyway: the blocks
        // spread over all three storages.
        let mut guess = Vec::new();
        let mut used = HashMap::<String, usize>::new();
        for n in 1..=6 {
            let p = reg.place(id(n), 1, &[], &guess, false, now).unwrap();
            if !guess.is_empty() {
                assert_eq!(names(&p.targets), guess, "block {n}");
            }
            for l in &p.targets {
                *used.entry(l.name.clone()).or_default() += 1;
            }
            guess = names(&p.next);
        }
        assert_eq!(used.len(), 3, "{used:?}");
        // A guessed storage without room gives way to one with room.
        let prefer = ["a".to_string(), "c".to_string()];
        reg.storage_mut(reg.slots["a"]).used = 99;
        let p = reg.place(id(7), 10, &[], &prefer, false, now).unwrap();
        assert_eq!(names(&p.targets), ["b", "c"]);
        // An excluded one is never chosen, guessed or not.
        let p = reg
            .place(id(8), 1, &["c".into()], &prefer, false, now)
            .unwrap();
        assert!(!p.targets.iter().any(|l| l.name == "c"));
    }

    #[test]
    fn places_on_distinct_storages_with_room() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], now);
        let p = reg.place(id(1), 60, &[], &[], false, now).unwrap();
        assert_eq!(p.targets.len(), 2);
        assert_ne!(p.targets[0].name, p.targets[1].name);
        // 60 of 100 used on two storages: only one has room for another 60.
        let p = reg.place(id(2), 60, &[], &[], false, now).unwrap();
        assert_eq!(p.targets.len(), 1);
        let err = reg.place(id(3), 60, &[], &[], false, now).unwrap_err();
        assert_eq!(err.code, ErrorCode::NoSpace);
    }

    #[test]
    fn dedup_when_already_replicated() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b"], now);
        reg.released(dropped(&[id(1)]), t0_of(&reg), 1);
        reg.stored(id(1), 10, &["a".into(), "b".into()]);
        assert!(reg.place(id(1), 10, &[], &[], true, now).unwrap().stored);
    }

    #[test]
    fn placing_a_block_again_calls_off_its_deletion() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], t0);
        reg.place(id(1), 10, &[], &[], false, t0).unwrap();
        reg.stored(id(1), 10, &["a".into(), "b".into()]);
        reg.released(dropped(&[id(1)]), t0, 1);
        let later = t0 + Duration::from_secs(11);
        for name in ["a", "b", "c"] {
            reg.heartbeat(name, 10, &[], &[], &[], later);
        }
        reg.tick(&Refs::new(), later, 1);
        assert!(!reg.has_any_location(&id(1)));
        // a's deletion is sent, b's not yet, when the same bytes are written again.
        let sent = reg.heartbeat("a", 10, &[], &[], &[], later);
        assert!(matches!(&sent[..], [Command::Delete(ids)] if ids == &vec![id(1)]));
        let p = reg.place(id(1), 10, &[], &[], false, later).unwrap();
        // b keeps its copy (it counts again), so one more copy is wanted.
        assert_eq!(reg.live_locations(&id(1)).len(), 1);
        assert_eq!(p.targets.len(), 1);
        assert_ne!(p.targets[0].name, "b");
        assert!(reg.heartbeat("b", 10, &[], &[], &[], later).is_empty());
        assert_eq!(reg.storage(reg.slots["b"]).deleting_bytes, 0);
    }

    #[test]
    fn released_blocks_go_soon_and_at_once_when_room_is_short() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b"], t0);
        let (a, b) = (reg.slots["a"], reg.slots["b"]);
        // Two released blocks and one upload not yet committed fill both storages.
        for n in [1, 2] {
            reg.place(id(n), 40, &[], &[], false, t0).unwrap();
            reg.stored(id(n), 40, &["a".into(), "b".into()]);
        }
        reg.released(dropped(&[id(1), id(2)]), t0, 7);
        reg.place(id(3), 10, &[], &[], false, t0).unwrap();
        reg.stored(id(3), 10, &["a".into(), "b".into()]);
        reg.heartbeat("a", 90, &[], &[], &[], t0);
        reg.heartbeat("b", 90, &[], &[], &[], t0);
        assert_eq!(reg.garbage(), 160);
        assert!(reg.status().iter().all(|s| s.garbage == 80));
        let e = reg.place(id(4), 50, &[], &[], false, t0).unwrap_err();
        assert_eq!(e.code, ErrorCode::NoSpace);
        // Not while the op that released them is not on disk: a crash could bring back
        // the layout naming them.
        assert_eq!(reg.reclaim(&Refs::new(), t0, 6), 0);
        // Reclaiming frees what released blocks hold, and placement counts it at once,
        // though the storages' heartbeats report it used until they delete.
        assert_eq!(reg.reclaim(&Refs::new(), t0, 7), 160);
        assert!(reg.place(id(4), 50, &[], &[], false, t0).is_ok());
        let cmds = reg.heartbeat("a", 90, &[], &[], &[], t0);
        assert!(
            matches!(&cmds[..], [Command::Delete(ids)] if ids.len() == 2),
            "{cmds:?}"
        );
        assert_eq!(reg.storage(a).deleting_bytes, 80);
        reg.heartbeat("a", 10, &[], &[id(1), id(2)], &[], t0);
        assert_eq!(reg.storage(a).deleting_bytes, 0);
        // Without pressure, a replaced block goes after a few seconds; an upload stays.
        // One whose file is gone keeps the grace period (a reader may have it open).
        reg.stored(id(4), 50, &["a".into(), "b".into()]);
        reg.released(replaced(&[id(4)]), t0, 8);
        reg.place(id(5), 1, &[], &[], false, t0).unwrap();
        reg.stored(id(5), 1, &["a".into(), "b".into()]);
        reg.released(dropped(&[id(5)]), t0, 1);
        let later = t0 + REPLACE_GRACE;
        reg.heartbeat("a", 60, &[], &[], &[], later);
        reg.heartbeat("b", 60, &[], &[], &[], later);
        reg.tick(&Refs::new(), later, 7);
        assert!(
            reg.has_any_location(&id(4)),
            "collected before its release is on disk"
        );
        reg.tick(&Refs::new(), later, 8);
        assert!(!reg.has_any_location(&id(4)));
        assert!(reg.has_any_location(&id(3)));
        assert!(reg.has_any_location(&id(5)));
        // A deletion b never reports (the reclaimed blocks, then block 4) stops counting
        // as free after a while.
        assert_eq!(reg.storage(b).deleting_bytes, 80 + 50);
        reg.tick(&Refs::new(), t0 + Duration::from_secs(11), u64::MAX);
        assert_eq!(reg.storage(b).deleting_bytes, 0);
    }

    #[test]
    fn a_refused_compactions_blob_is_garbage_at_once_unless_referenced() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b"], t0);
        for n in [1, 2] {
            reg.place(id(n), 40, &[], &[], false, t0).unwrap();
            reg.stored(id(n), 40, &["a".into(), "b".into()]);
        }
        reg.heartbeat("a", 80, &[], &[], &[], t0);
        reg.heartbeat("b", 80, &[], &[], &[], t0);
        // Uploads in their grace period are not room a write may take...
        assert_eq!(reg.reclaim(&Refs::new(), t0, 0), 0);
        // ...until the change they were for is refused: then they are, at once.
        reg.refused(&[id(1), id(2)], t0);
        let refs = Refs::from([(id(2), 1)]);
        assert_eq!(reg.reclaim(&refs, t0, 0), 80);
        let cmds = reg.heartbeat("a", 80, &[], &[], &[], t0);
        assert!(
            matches!(&cmds[..], [Command::Delete(ids)] if ids == &vec![id(1)]),
            "{cmds:?}"
        );
        // A file referencing the same bytes keeps them.
        reg.tick(&refs, t0 + REPLACE_GRACE, 0);
        assert!(reg.has_any_location(&id(2)));
    }

    #[test]
    fn a_late_report_of_a_copy_due_for_deletion_does_not_bring_it_back() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b"], t0);
        // A blob the client's commit said both storages hold, replaced (a compaction)
        // before their heartbeats reported it, and reclaimed for room.
        reg.place(id(1), 40, &[], &[], false, t0).unwrap();
        reg.stored(id(1), 40, &["a".into(), "b".into()]);
        reg.released(replaced(&[id(1)]), t0, 1);
        assert_eq!(reg.reclaim(&Refs::new(), t0, 1), 80);
        // The storage's report of that copy takes the deletion back, as for the same
        // bytes written anew, but the blob is garbage still: room when room is short,
        // not an upload kept for the grace period.
        assert!(reg
            .heartbeat("a", 40, &[(id(1), 40)], &[], &[], t0)
            .is_empty());
        assert_eq!(reg.reclaim(&Refs::new(), t0, 1), 40);
        let cmds = reg.heartbeat("a", 40, &[], &[], &[], t0);
        assert!(
            matches!(&cmds[..], [Command::Delete(ids)] if ids == &vec![id(1)]),
            "{cmds:?}"
        );
        // Garbage collected, then named by a commit of the same bytes anew (a client's
        // hint of the copies it got) before its deletion went out: taken back.
        reg.place(id(3), 40, &[], &[], false, t0).unwrap();
        reg.stored(id(3), 40, &["a".into()]);
        reg.released(replaced(&[id(3)]), t0, 1);
        assert_eq!(reg.reclaim(&Refs::new(), t0, 1), 40);
        reg.stored(id(3), 40, &["a".into()]);
        assert!(reg.heartbeat("a", 40, &[], &[], &[], t0).is_empty());
        assert!(reg.has_any_location(&id(3)));
        // A copy the nameserver decided nothing about is kept for the grace period (an
        // upload whose placement is on its way).
        reg.heartbeat("b", 40, &[(id(2), 40)], &[], &[], t0);
        assert_eq!(reg.reclaim(&Refs::new(), t0, 1), 0);
        assert!(reg.has_any_location(&id(2)));
    }

    #[test]
    fn down_storage_triggers_copy_and_gc_after_grace() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], t0);
        reg.released(dropped(&[id(1)]), t0_of(&reg), 1);
        reg.stored(id(1), 10, &["a".into(), "b".into()]);
        // id(2) was uploaded and never committed: the grace period of uploads protects it.
        reg.place(id(2), 10, &[], &[], false, t0_of(&reg)).unwrap();
        reg.stored(id(2), 10, &["c".into()]);
        let refs = Refs::from([(id(1), 1)]);
        let t1 = t0 + Duration::from_secs(6);
        reg.heartbeat("b", 10, &[], &[], &[], t1);
        reg.heartbeat("c", 10, &[], &[], &[], t1);
        reg.tick(&refs, t1, u64::MAX);
        assert_eq!(reg.storage(reg.slots["a"]).state, StorageState::Down);
        // id(1) lives only on b now: c is asked to copy it from b.
        let cmds = reg.heartbeat("c", 10, &[], &[], &[], t1);
        assert!(
            matches!(&cmds[..], [Command::Replicate { id: i, sources }] if *i == id(1) && sources[0].name == "b"),
            "{cmds:?}"
        );
        // id(2) is unreferenced: deleted once the grace period is over.
        let t2 = t1 + Duration::from_secs(4);
        reg.heartbeat("b", 10, &[], &[], &[], t2);
        reg.heartbeat("c", 10, &[(id(1), 10)], &[], &[], t2);
        reg.tick(&refs, t2, u64::MAX);
        let t3 = t2 + Duration::from_secs(4);
        reg.heartbeat("b", 10, &[], &[], &[], t3);
        reg.heartbeat("c", 10, &[], &[], &[], t3);
        reg.tick(&refs, t3 + Duration::from_secs(3), u64::MAX);
        let cmds = reg.heartbeat("c", 10, &[], &[], &[], t3 + Duration::from_secs(3));
        assert!(
            matches!(&cmds[..], [Command::Delete(ids)] if ids == &vec![id(2)]),
            "{cmds:?}"
        );
        assert_eq!(reg.live_locations(&id(1)).len(), 2);
        // A down storage heartbeating again must re-register.
        assert!(matches!(
            reg.heartbeat("a", 0, &[], &[], &[], t1)[..],
            [Command::Reregister]
        ));
    }

    /// A block id whose first bytes are `n`: many distinct ones.
    fn nth(n: u32) -> BlockId {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        BlockId(bytes)
    }

    #[test]
    fn each_pass_looks_at_a_slice_and_the_next_pass_goes_on() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], t0);
        reg.policy.scan_per_tick = 4;
        let (a, b) = (reg.slots["a"], reg.slots["b"]);
        // Ten referenced blocks on a and b, four unreferenced ones on b only.
        let mut refs = Refs::new();
        for n in 0..14 {
            reg.add_location(nth(n), 10, b);
            if n < 10 {
                reg.add_location(nth(n), 10, a);
                refs.insert(nth(n), 1);
            }
        }
        // a goes down: each pass schedules the copies of at most four blocks, in order.
        let t1 = t0 + Duration::from_secs(6);
        for name in ["b", "c"] {
            reg.heartbeat(name, 10, &[], &[], &[], t1);
        }
        let mut copied = Vec::new();
        let mut passes = 0;
        while copied.len() < 10 {
            reg.tick(&refs, t1, u64::MAX);
            let before = copied.len();
            for cmd in reg.heartbeat("c", 10, &[], &[], &[], t1) {
                if let Command::Replicate { id, .. } = cmd {
                    copied.push(id);
                }
            }
            assert!(copied.len() - before <= 4, "a pass looks at four blocks");
            passes += 1;
            assert!(
                passes <= 5,
                "every block is looked at within a round: {copied:?}"
            );
        }
        assert_eq!(copied, (0..10).map(nth).collect::<Vec<_>>());
        assert_eq!(passes, 3, "ten blocks, four a pass");
        // The unreferenced ones get their grace entries as the passes reach them (the
        // fourth pass the last two), and go once it ends, also a slice at a time.
        reg.tick(&refs, t1, u64::MAX);
        assert_eq!(reg.unreferenced.len(), 4);
        let t2 = t1 + Duration::from_secs(11);
        let mut deleted = Vec::new();
        for _ in 0..4 {
            for name in ["b", "c"] {
                reg.heartbeat(name, 10, &[], &[], &[], t2);
            }
            reg.tick(&refs, t2, u64::MAX);
            for cmd in reg.heartbeat("b", 10, &[], &[], &[], t2) {
                if let Command::Delete(ids) = cmd {
                    deleted.extend(ids);
                }
            }
        }
        assert_eq!(deleted, (10..14).map(nth).collect::<Vec<_>>());
    }

    #[test]
    fn referenced_blocks_are_listed_in_pages_by_id() {
        let reg = cluster(&["a"], Instant::now());
        let refs: Refs = (0..5).map(|n| (nth(n), 1)).collect();
        let mut after = None;
        let mut pages = Vec::new();
        loop {
            let (page, more) = reg.list_blocks(&refs, after, 2);
            after = page.last().map(|b| b.id);
            pages.push(page.iter().map(|b| b.id).collect::<Vec<_>>());
            if !more {
                break;
            }
        }
        let want: Vec<Vec<BlockId>> =
            vec![vec![nth(0), nth(1)], vec![nth(2), nth(3)], vec![nth(4)]];
        assert_eq!(pages, want);
    }

    #[test]
    #[ignore = "a measurement: cargo test --release -p vg-nameserver pass_over -- --ignored --nocapture"]
    fn pass_over_a_million_blobs() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], now);
        let mut refs = Refs::new();
        for n in 0..1_000_000u32 {
            for name in [["a", "b"], ["b", "c"], ["a", "c"]][n as usize % 3] {
                reg.add_location(nth(n), 4096, reg.slots[name]);
            }
            refs.insert(nth(n), 1);
        }
        for _ in 0..3 {
            let started = Instant::now();
            reg.tick(&refs, now, 0);
            eprintln!("one pass over 1M blobs: {:?}", started.elapsed());
        }
    }

    #[test]
    fn a_new_copy_reported_calls_off_its_deletion() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b"], t0);
        reg.released(dropped(&[id(1)]), t0, 1);
        reg.stored(id(1), 10, &["a".into(), "b".into()]);
        let t1 = t0 + Duration::from_secs(11);
        reg.heartbeat("a", 10, &[], &[], &[], t1);
        reg.heartbeat("b", 10, &[], &[], &[], t1);
        reg.tick(&Refs::new(), t1, u64::MAX);
        // The same bytes were uploaded to a again before its deletion went out: a keeps
        // them (the deletion is taken back), b deletes its copy.
        let cmds = reg.heartbeat("a", 10, &[(id(1), 10)], &[], &[], t1);
        assert!(cmds.is_empty(), "{cmds:?}");
        let cmds = reg.heartbeat("b", 10, &[], &[], &[], t1);
        assert!(
            matches!(&cmds[..], [Command::Delete(ids)] if ids == &vec![id(1)]),
            "{cmds:?}"
        );
        assert_eq!(reg.live_locations(&id(1)).len(), 1);
        let refs = Refs::from([(id(1), 1)]);
        reg.tick(&refs, t1 + Duration::from_secs(1), u64::MAX);
        assert!(reg.heartbeat("a", 10, &[], &[], &[], t1).is_empty());
    }

    #[test]
    fn report_keeps_referenced_and_fresh_blocks() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a"], t0);
        let refs = Refs::from([(id(1), 1)]);
        reg.released(dropped(&[id(3)]), t0, 1);
        let later = t0 + Duration::from_secs(20);
        let delete = reg
            .report("a", &[(id(1), 5), (id(2), 5), (id(3), 5)], &refs, later)
            .unwrap();
        // id(2) is unknown: kept for the grace period (it may be an upload in flight);
        // id(3) was released long ago: deleted.
        assert_eq!(delete, vec![id(3)]);
        assert_eq!(reg.live_locations(&id(2)).len(), 1);
    }

    #[test]
    fn kept_blocks_survive_and_collected_blocks_take_no_hints() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b"], t0);
        let none = Refs::new();
        reg.place(id(1), 10, &[], &[], false, t0).unwrap();
        reg.place(id(2), 10, &[], &[], false, t0).unwrap();
        reg.released(dropped(&[id(1)]), t0_of(&reg), 1);
        reg.stored(id(1), 10, &["a".into()]);
        reg.released(dropped(&[id(2)]), t0_of(&reg), 1);
        reg.stored(id(2), 10, &["a".into()]);
        let t1 = t0 + Duration::from_secs(4);
        reg.heartbeat("a", 0, &[], &[], &[], t1);
        reg.heartbeat("b", 0, &[], &[], &[], t1);
        reg.keep(&[id(1)], t1);
        let t2 = t0 + Duration::from_secs(10);
        reg.heartbeat("a", 0, &[], &[], &[], t2);
        reg.heartbeat("b", 0, &[], &[], &[], t2);
        let t3 = t0 + Duration::from_secs(11);
        reg.tick(&none, t3, u64::MAX);
        assert_eq!(reg.live_locations(&id(1)).len(), 1, "kept block survives");
        assert!(
            reg.live_locations(&id(2)).is_empty(),
            "unkept block is collected"
        );
        let cmds = reg.heartbeat("a", 0, &[], &[], &[], t3);
        assert!(
            matches!(&cmds[..], [Command::Delete(ids)] if ids == &vec![id(2)]),
            "{cmds:?}"
        );
        // A late commit hint cannot resurrect the copy its deletion went to.
        reg.stored(id(2), 10, &["a".into()]);
        assert!(!reg.has_any_location(&id(2)));
    }

    #[test]
    fn extra_copies_are_removed() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], t0);
        reg.released(dropped(&[id(1)]), t0_of(&reg), 1);
        reg.stored(id(1), 10, &["a".into(), "b".into(), "c".into()]);
        reg.tick(&Refs::from([(id(1), 1)]), t0, u64::MAX);
        assert_eq!(reg.live_locations(&id(1)).len(), 2);
    }

    #[test]
    fn placed_blocks_never_stored_are_forgotten_after_grace() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b"], t0);
        reg.place(id(1), 10, &[], &[], false, t0).unwrap();
        assert!(reg.blocks.contains_key(&id(1)));
        let later = t0 + Duration::from_secs(11);
        reg.heartbeat("a", 0, &[], &[], &[], later);
        reg.heartbeat("b", 0, &[], &[], &[], later);
        reg.tick(&Refs::new(), later, u64::MAX);
        assert!(!reg.blocks.contains_key(&id(1)));
        assert!(reg.heartbeat("a", 0, &[], &[], &[], later).is_empty());
    }

    #[test]
    fn reregistering_forgets_the_old_block_list_and_keeps_counts() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b"], t0);
        reg.released(dropped(&[id(1), id(2)]), t0, 1);
        reg.stored(id(1), 10, &["a".into(), "b".into()]);
        reg.stored(id(2), 10, &["a".into()]);
        let blocks = |reg: &Registry, name: &str| {
            reg.status()
                .into_iter()
                .find(|s| s.name == name)
                .unwrap()
                .blocks
        };
        assert_eq!((blocks(&reg, "a"), blocks(&reg, "b")), (2, 1));
        reg.register("a", addr(9100), 100, 0, t0);
        assert_eq!((blocks(&reg, "a"), blocks(&reg, "b")), (0, 1));
        assert!(!reg.has_any_location(&id(2)));
        assert!(reg.live_locations(&id(1)).iter().all(|l| l.name == "b"));
        assert_eq!(reg.status().len(), 2, "the same name keeps its slot");
    }
}
