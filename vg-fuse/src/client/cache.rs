//! A bounded LRU cache of whole blocks. Blocks are immutable and named by their hash, so
//! a cached block never goes stale and needs no invalidation.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use vg_wire::BlockId;

/// Least-recently-used cache of block contents, bounded in bytes.
pub struct BlockCache {
    capacity: u64,
    used: u64,
    tick: u64,
    entries: HashMap<BlockId, (Arc<Vec<u8>>, u64)>,
    /// Last-use tick -> block, oldest first.
    order: BTreeMap<u64, BlockId>,
    /// Lookups that found their block, and those that did not.
    pub hits: u64,
    /// Lookups that did not find their block.
    pub misses: u64,
}

impl BlockCache {
    /// An empty cache holding at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        BlockCache {
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    fn touch(&mut self, id: BlockId) {
        self.tick += 1;
        if let Some((_, tick)) = self.entries.get_mut(&id) {
            self.order.remove(tick);
            *tick = self.tick;
            self.order.insert(self.tick, id);
        }
    }

    /// The block's bytes, if cached (and marks it recently used).
    pub fn get(&mut self, id: &BlockId) -> Option<Arc<Vec<u8>>> {
        let Some((data, _)) = self.entries.get(id) else {
            self.misses += 1;
            return None;
        };
        let data = data.clone();
        self.hits += 1;
        self.touch(*id);
        Some(data)
    }

    /// Whether the block is cached, without touching it.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.entries.contains_key(id)
    }

    /// Adds a block, evicting the least recently used ones to stay within capacity. A
    /// block larger than the whole cache is not kept.
    pub fn insert(&mut self, id: BlockId, data: Arc<Vec<u8>>) {
        let len = data.len() as u64;
        if len > self.capacity || self.entries.contains_key(&id) {
            self.touch(id);
            return;
        }
        while self.used + len > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.used -= old.len() as u64;
            }
        }
        self.tick += 1;
        self.used += len;
        self.entries.insert(id, (data, self.tick));
        self.order.insert(self.tick, id);
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8, len: usize) -> (BlockId, Arc<Vec<u8>>) {
        let data = vec![byte; len];
        (BlockId::of(&data), Arc::new(data))
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut cache = BlockCache::new(300);
        let (a, da) = block(1, 100);
        let (b, db) = block(2, 100);
        let (c, dc) = block(3, 100);
        let (d, dd) = block(4, 100);
        cache.insert(a, da);
        cache.insert(b, db);
        cache.insert(c, dc);
        assert!(cache.get(&a).is_some()); // a is now the most recent
        cache.insert(d, dd);
        assert!(!cache.contains(&b), "b was least recently used");
        assert!(cache.contains(&a) && cache.contains(&c) && cache.contains(&d));
        assert_eq!(cache.used(), 300);
    }

    #[test]
    fn oversized_blocks_are_not_kept() {
        let mut cache = BlockCache::new(50);
        let (a, da) = block(1, 100);
        cache.insert(a, da);
        assert!(!cache.contains(&a));
        assert_eq!(cache.used(), 0);
    }

    #[test]
    fn reinserting_does_not_double_count() {
        let mut cache = BlockCache::new(1000);
        let (a, da) = block(1, 100);
        cache.insert(a, da.clone());
        cache.insert(a, da);
        assert_eq!(cache.used(), 100);
    }
}
