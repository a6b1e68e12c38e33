//! Storages, block locations and block lifecycles: who holds what, where new blocks go,
//! and what each storage must copy or delete next.
//!
//! Pure logic: no sockets, and the current time is always passed in, so that placement,
//! failure detection, re-replication and garbage collection are testable alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::ns::{BlockInfo, Command, Placement, StorageState, StorageStatus};
use vg_wire::{BlockId, Location};

/// One registered storage.
#[derive(Debug)]
pub struct Storage {
    /// Advertised address.
    pub addr: SocketAddr,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Bytes used, as last reported plus placements since.
    pub used: u64,
    /// Joining, active or down.
    pub state: StorageState,
    last_seen: Instant,
    blocks: BTreeSet<BlockId>,
    commands: Vec<Command>,
}

impl Storage {
    fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used)
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
}

/// The registry of storages and blocks.
#[derive(Debug)]
pub struct Registry {
    policy: Policy,
    storages: BTreeMap<String, Storage>,
    /// Storages holding each block, whatever their state.
    locations: HashMap<BlockId, BTreeSet<String>>,
    /// Length of each known block, as placed or reported.
    lens: HashMap<BlockId, u32>,
    /// Blocks not referenced by any file, and since when: deleted after the grace period.
    unreferenced: HashMap<BlockId, Instant>,
    /// Replications asked for and not yet reported done: block -> (target, when).
    in_flight: HashMap<BlockId, (String, Instant)>,
    /// Rotates placement among equally free storages.
    rotation: usize,
}

impl Registry {
    /// An empty registry.
    pub fn new(policy: Policy) -> Self {
        Registry {
            policy,
            storages: BTreeMap::new(),
            locations: HashMap::new(),
            lens: HashMap::new(),
            unreferenced: HashMap::new(),
            in_flight: HashMap::new(),
            rotation: 0,
        }
    }

    fn location(&self, name: &str) -> Location {
        Location {
            name: name.to_string(),
            addr: self.storages[name].addr,
        }
    }

    fn add_location(&mut self, id: BlockId, len: u32, name: &str) {
        self.locations
            .entry(id)
            .or_default()
            .insert(name.to_string());
        self.lens.entry(id).or_insert(len);
        if let Some(storage) = self.storages.get_mut(name) {
            storage.blocks.insert(id);
        }
        if matches!(self.in_flight.get(&id), Some((target, _)) if target == name) {
            self.in_flight.remove(&id);
            info!(block = ?id, storage = name, "replication finished");
        }
    }

    fn remove_location(&mut self, id: BlockId, name: &str) {
        if let Some(holders) = self.locations.get_mut(&id) {
            holders.remove(name);
            if holders.is_empty() {
                self.locations.remove(&id);
                self.lens.remove(&id);
            }
        }
        if let Some(storage) = self.storages.get_mut(name) {
            storage.blocks.remove(&id);
        }
    }

    fn is_active(&self, name: &str) -> bool {
        self.storages
            .get(name)
            .is_some_and(|s| s.state == StorageState::Active)
    }

    /// Live (active) storages holding a block.
    pub fn live_locations(&self, id: &BlockId) -> Vec<Location> {
        self.locations
            .get(id)
            .map(|holders| {
                holders
                    .iter()
                    .filter(|n| self.is_active(n))
                    .map(|n| self.location(n))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn n_active(&self) -> usize {
        self.storages
            .values()
            .filter(|s| s.state == StorageState::Active)
            .count()
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
        if let Some(old) = self.storages.get(name) {
            for id in old.blocks.clone() {
                self.remove_location(id, name);
            }
        }
        info!(storage = name, %addr, capacity, "storage joined");
        self.storages.insert(
            name.to_string(),
            Storage {
                addr,
                capacity,
                used,
                state: StorageState::Joining,
                last_seen: now,
                blocks: BTreeSet::new(),
                commands: Vec::new(),
            },
        );
    }

    /// Part of a block report; returns the blocks the storage must delete.
    pub fn report(
        &mut self,
        name: &str,
        blocks: &[(BlockId, u32)],
        refs: &HashMap<BlockId, u32>,
        now: Instant,
    ) -> Result<Vec<BlockId>, RemoteError> {
        self.known(name)?;
        let mut delete = Vec::new();
        for &(id, len) in blocks {
            let keep = refs.contains_key(&id)
                || now.duration_since(*self.unreferenced.entry(id).or_insert(now))
                    < self.policy.gc_grace;
            if keep {
                self.add_location(id, len, name);
            } else {
                delete.push(id);
            }
        }
        Ok(delete)
    }

    fn known(&mut self, name: &str) -> Result<&mut Storage, RemoteError> {
        self.storages.get_mut(name).ok_or_else(|| {
            RemoteError::new(
                ErrorCode::NotFound,
                format!("storage {name} is not registered"),
            )
        })
    }

    /// The storage finished its report.
    pub fn activate(&mut self, name: &str, now: Instant) -> Result<(), RemoteError> {
        let storage = self.known(name)?;
        storage.state = StorageState::Active;
        storage.last_seen = now;
        info!(
            storage = name,
            blocks = storage.blocks.len(),
            "storage active"
        );
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
        match self.storages.get_mut(name) {
            Some(storage) if storage.state != StorageState::Down => {
                storage.used = used;
                storage.last_seen = now;
            }
            // Unknown (the nameserver restarted) or declared down meanwhile: its block
            // list is stale, so it must register and report again.
            _ => return vec![Command::Reregister],
        }
        for &(id, len) in received {
            self.unreferenced.entry(id).or_insert(now);
            self.add_location(id, len, name);
        }
        for id in removed.iter().chain(bad) {
            self.remove_location(*id, name);
        }
        if !bad.is_empty() {
            warn!(storage = name, blocks = ?bad, "storage found corrupt blocks; re-replicating them");
        }
        std::mem::take(&mut self.storages.get_mut(name).expect("checked above").commands)
    }

    /// Blocks that just lost their last file reference.
    pub fn released(&mut self, ids: Vec<BlockId>, now: Instant) {
        for id in ids {
            self.unreferenced.insert(id, now);
        }
    }

    /// Records that the client saw these storages acknowledge a block.
    /// Hints about a block already collected are ignored: the storage no longer has it.
    pub fn stored(&mut self, id: BlockId, len: u32, holders: &[String]) {
        if !self.is_known(&id) {
            return;
        }
        for name in holders {
            if self.storages.contains_key(name) {
                self.add_location(id, len, name);
            }
        }
    }

    /// Whether the block is held somewhere or still within its grace period.
    fn is_known(&self, id: &BlockId) -> bool {
        self.locations.contains_key(id) || self.unreferenced.contains_key(id)
    }

    /// Restarts the grace period of uncommitted blocks a client still writes (blocks
    /// already collected stay collected).
    pub fn keep(&mut self, ids: &[BlockId], now: Instant) {
        for id in ids {
            if let Some(since) = self.unreferenced.get_mut(id) {
                *since = now;
            }
        }
    }

    /// Chooses storages for a new block, or says the cluster already holds it.
    pub fn place(
        &mut self,
        id: BlockId,
        len: u32,
        exclude: &[String],
        referenced: bool,
        now: Instant,
    ) -> Result<Placement, RemoteError> {
        let wanted = self.wanted() as usize;
        let live = self.live_locations(&id);
        if !referenced {
            // Until its file is committed, the block is protected by the grace period.
            self.unreferenced.insert(id, now);
        }
        if wanted > 0 && live.len() >= wanted {
            return Ok(Placement {
                targets: Vec::new(),
                stored: true,
            });
        }
        let holders = self.locations.get(&id).cloned().unwrap_or_default();
        let mut candidates: Vec<(&String, &Storage)> = self
            .storages
            .iter()
            .filter(|(name, s)| {
                s.state == StorageState::Active
                    && s.free() >= len as u64
                    && !exclude.contains(name)
                    && !holders.contains(*name)
            })
            .collect();
        if candidates.is_empty() {
            let code = if self.n_active() == 0 {
                ErrorCode::Unavailable
            } else {
                ErrorCode::NoSpace
            };
            let reason = if self.n_active() == 0 {
                "no storage is active"
            } else {
                "no storage has room"
            };
            return Err(RemoteError::new(
                code,
                format!("block {id:?} ({len} bytes): {reason}"),
            ));
        }
        self.rotation = self.rotation.wrapping_add(1);
        let n = candidates.len();
        candidates.rotate_left(self.rotation % n);
        // Most free space first; the rotation breaks ties between equal storages.
        candidates.sort_by_key(|(_, s)| std::cmp::Reverse(s.free() / (1 << 20)));
        let names: Vec<String> = candidates
            .iter()
            .take(wanted.saturating_sub(live.len()).max(1))
            .map(|(n, _)| n.to_string())
            .collect();
        for name in &names {
            self.storages.get_mut(name).expect("candidate exists").used += len as u64;
        }
        self.lens.insert(id, len);
        Ok(Placement {
            targets: names.iter().map(|n| self.location(n)).collect(),
            stored: false,
        })
    }

    /// Periodic work: declare silent storages down, schedule copies of under-replicated
    /// blocks, deletion of extra copies and of unreferenced blocks past the grace period.
    pub fn tick(&mut self, refs: &HashMap<BlockId, u32>, now: Instant) {
        for (name, storage) in &mut self.storages {
            if storage.state != StorageState::Down
                && now.duration_since(storage.last_seen) > self.policy.heartbeat_timeout
            {
                storage.state = StorageState::Down;
                storage.commands.clear();
                warn!(storage = %name, blocks = storage.blocks.len(), "storage left: no heartbeat; re-replicating its blocks");
            }
        }
        self.in_flight
            .retain(|_, (_, since)| now.duration_since(*since) < self.policy.replication_timeout);
        let replication = self.policy.replication as usize;
        let wanted = self.wanted() as usize;
        let mut copies = Vec::new();
        let mut extras = Vec::new();
        for id in refs.keys() {
            let holders: Vec<&String> = self
                .locations
                .get(id)
                .map(|h| h.iter().filter(|n| self.is_active(n)).collect())
                .unwrap_or_default();
            if holders.len() < wanted && !holders.is_empty() && !self.in_flight.contains_key(id) {
                copies.push(*id);
            } else if holders.len() > replication {
                extras.push(*id);
            }
        }
        for id in copies {
            self.schedule_copy(id, now);
        }
        for id in extras {
            let mut holders: Vec<String> = self.locations[&id]
                .iter()
                .filter(|n| self.is_active(n))
                .cloned()
                .collect();
            holders.sort_by_key(|n| self.storages[n].free());
            let n_extra = holders.len().saturating_sub(replication);
            for name in holders.into_iter().take(n_extra) {
                info!(block = ?id, storage = %name, "deleting extra replica");
                self.remove_location(id, &name);
                self.push_delete(&name, id);
            }
        }
        // A held block that no file references and that has no grace entry yet (a client
        // that crashed between upload and commit) starts its grace period now.
        for id in self.locations.keys() {
            if !refs.contains_key(id) {
                self.unreferenced.entry(*id).or_insert(now);
            }
        }
        let expired: Vec<BlockId> = self
            .unreferenced
            .iter()
            .filter(|(id, since)| {
                !refs.contains_key(*id) && now.duration_since(**since) >= self.policy.gc_grace
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.unreferenced.remove(&id);
            for name in self.locations.get(&id).cloned().unwrap_or_default() {
                if self.is_active(&name) {
                    self.remove_location(id, &name);
                    self.push_delete(&name, id);
                }
            }
        }
        // Referenced blocks need no grace entry any more.
        self.unreferenced.retain(|id, _| !refs.contains_key(id));
    }

    fn push_delete(&mut self, name: &str, id: BlockId) {
        let storage = self.storages.get_mut(name).expect("holder exists");
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
        let len = self.lens.get(&id).copied().unwrap_or(0);
        let holders = self.locations.get(&id).cloned().unwrap_or_default();
        let target = self
            .storages
            .iter()
            .filter(|(name, s)| {
                s.state == StorageState::Active
                    && !holders.contains(*name)
                    && s.free() >= len as u64
            })
            .max_by_key(|(_, s)| s.free())
            .map(|(name, _)| name.clone());
        let Some(target) = target else { return };
        let sources = self.live_locations(&id);
        info!(block = ?id, from = %sources[0].name, to = %target, "replication started");
        let storage = self.storages.get_mut(&target).expect("target exists");
        storage.used += len as u64;
        storage.commands.push(Command::Replicate { id, sources });
        self.in_flight.insert(id, (target, now));
    }

    /// Storages for `vgctl du` and `status`.
    pub fn status(&self) -> Vec<StorageStatus> {
        self.storages
            .iter()
            .map(|(name, s)| StorageStatus {
                name: name.clone(),
                addr: s.addr,
                capacity: s.capacity,
                used: s.used,
                state: s.state,
                blocks: s.blocks.len() as u64,
            })
            .collect()
    }

    /// (under-replicated, missing) counts over the referenced blocks.
    pub fn replication_health(&self, refs: &HashMap<BlockId, u32>) -> (u64, u64) {
        let wanted = self.wanted() as usize;
        let mut under = 0;
        let mut missing = 0;
        for id in refs.keys() {
            let live = self
                .locations
                .get(id)
                .map(|h| h.iter().filter(|n| self.is_active(n)).count())
                .unwrap_or(0);
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
        refs: &HashMap<BlockId, u32>,
        after: Option<BlockId>,
        limit: u32,
    ) -> (Vec<BlockInfo>, bool) {
        let mut ids: Vec<&BlockId> = refs
            .keys()
            .filter(|id| after.is_none_or(|a| **id > a))
            .collect();
        ids.sort();
        let more = ids.len() > limit as usize;
        let wanted = self.wanted();
        let blocks = ids
            .into_iter()
            .take(limit as usize)
            .map(|id| BlockInfo {
                id: *id,
                len: self.lens.get(id).copied().unwrap_or(0),
                locations: self.live_locations(id),
                wanted,
            })
            .collect();
        (blocks, more)
    }

    /// (capacity, free) summed over active storages.
    pub fn space(&self) -> (u64, u64) {
        self.storages
            .values()
            .filter(|s| s.state == StorageState::Active)
            .fold((0, 0), |(c, f), s| (c + s.capacity, f + s.free()))
    }

    /// Whether any storage holds the block (in any state).
    pub fn has_any_location(&self, id: &BlockId) -> bool {
        self.locations.contains_key(id)
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
        }
    }
    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }
    fn id(byte: u8) -> BlockId {
        BlockId([byte; 32])
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
    fn places_on_distinct_storages_with_room() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], now);
        let p = reg.place(id(1), 60, &[], false, now).unwrap();
        assert_eq!(p.targets.len(), 2);
        assert_ne!(p.targets[0].name, p.targets[1].name);
        // 60 of 100 used on two storages: only one has room for another 60.
        let p = reg.place(id(2), 60, &[], false, now).unwrap();
        assert_eq!(p.targets.len(), 1);
        let err = reg.place(id(3), 60, &[], false, now).unwrap_err();
        assert_eq!(err.code, ErrorCode::NoSpace);
    }

    #[test]
    fn dedup_when_already_replicated() {
        let now = Instant::now();
        let mut reg = cluster(&["a", "b"], now);
        reg.released(vec![id(1)], t0_of(&reg));
        reg.stored(id(1), 10, &["a".into(), "b".into()]);
        assert!(reg.place(id(1), 10, &[], true, now).unwrap().stored);
    }

    #[test]
    fn down_storage_triggers_copy_and_gc_after_grace() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], t0);
        reg.released(vec![id(1)], t0_of(&reg));
        reg.stored(id(1), 10, &["a".into(), "b".into()]);
        reg.released(vec![id(2)], t0_of(&reg));
        reg.stored(id(2), 10, &["c".into()]);
        let refs = HashMap::from([(id(1), 1)]);
        let t1 = t0 + Duration::from_secs(6);
        reg.heartbeat("b", 10, &[], &[], &[], t1);
        reg.heartbeat("c", 10, &[], &[], &[], t1);
        reg.tick(&refs, t1);
        assert_eq!(reg.storages["a"].state, StorageState::Down);
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
        reg.tick(&refs, t2);
        let t3 = t2 + Duration::from_secs(4);
        reg.heartbeat("b", 10, &[], &[], &[], t3);
        reg.heartbeat("c", 10, &[], &[], &[], t3);
        reg.tick(&refs, t3 + Duration::from_secs(3));
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

    #[test]
    fn report_keeps_referenced_and_fresh_blocks() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a"], t0);
        let refs = HashMap::from([(id(1), 1)]);
        reg.released(vec![id(3)], t0);
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
        let none = HashMap::new();
        reg.place(id(1), 10, &[], false, t0).unwrap();
        reg.place(id(2), 10, &[], false, t0).unwrap();
        reg.released(vec![id(1)], t0_of(&reg));
        reg.stored(id(1), 10, &["a".into()]);
        reg.released(vec![id(2)], t0_of(&reg));
        reg.stored(id(2), 10, &["a".into()]);
        let t1 = t0 + Duration::from_secs(4);
        reg.heartbeat("a", 0, &[], &[], &[], t1);
        reg.heartbeat("b", 0, &[], &[], &[], t1);
        reg.keep(&[id(1)], t1);
        let t2 = t0 + Duration::from_secs(10);
        reg.heartbeat("a", 0, &[], &[], &[], t2);
        reg.heartbeat("b", 0, &[], &[], &[], t2);
        reg.tick(&none, t0 + Duration::from_secs(11));
        assert_eq!(reg.live_locations(&id(1)).len(), 1, "kept block survives");
        assert!(
            reg.live_locations(&id(2)).is_empty(),
            "unkept block is collected"
        );
        // A late commit hint cannot resurrect the collected copy.
        reg.stored(id(2), 10, &["a".into()]);
        assert!(!reg.has_any_location(&id(2)));
    }

    #[test]
    fn extra_copies_are_removed() {
        let t0 = Instant::now();
        let mut reg = cluster(&["a", "b", "c"], t0);
        reg.released(vec![id(1)], t0_of(&reg));
        reg.stored(id(1), 10, &["a".into(), "b".into(), "c".into()]);
        reg.tick(&HashMap::from([(id(1), 1)]), t0);
        assert_eq!(reg.live_locations(&id(1)).len(), 2);
    }
}
