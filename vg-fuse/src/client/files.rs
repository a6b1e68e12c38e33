//! Open files for the mount: write-back buffering cut on block boundaries, background
//! uploads with bounded memory, reads that see this client's unwritten data, a shared
//! block cache with read-ahead, and commits at flush (close-to-open consistency).
//!
//! A write buffers only the bytes it writes (no block is read first); a flush uploads
//! each block's new bytes as one blob and commits them as slices on top of the block
//! (`vg_wire::slices`); blocks left with many slices are compacted in the background.
//!
//! Knows nothing of FUSE: the adapter calls [`Files`] with inode numbers and offsets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{Mutex, OnceCell, Semaphore};
use tokio::task::JoinHandle;
use vg_wire::metrics::prometheus_client::metrics::counter::Counter;
use vg_wire::ns::{self, Lock, LockKind, Stored};
use vg_wire::slices::overlay;
use vg_wire::{
    Attr, BlockId, BlockRef, Bytes, ErrorCode, Ino, Location, SetAttr, Slice, Timestamp,
};

use super::cache::BlockCache;
use super::compact;
use super::entries::keep_newest;
use super::session::Session;
use super::{stored, Cached, Client, Commit, Error, Result};

/// How long a file this mount wrote stays closed (on this mount) before the close rule
/// compacts it ([`Limits::close_idle`]'s default). At the close itself, a program that
/// opens, appends and closes in a loop (a shell's `>>`, a logger) had its last block
/// rewritten every 16 closes: 400 appends to a 6 MiB file made 24 compactions and 106
/// MiB of writes on the storages, against 1 and 17 MiB now. A file opened again
/// meanwhile waits for its next close.
pub const CLOSE_IDLE: Duration = Duration::from_secs(5);

/// The attribute holding a file's capabilities, which a write takes away.
const CAPABILITY: &[u8] = b"security.capability";

/// Permission bits `perm` without what a write by a caller without `CAP_FSETID` takes
/// away: set-user-ID, and set-group-ID where the group may execute.
fn privs_killed(perm: u32) -> u32 {
    let group_exec = perm & 0o2010 == 0o2010;
    perm & !0o4000 & if group_exec { !0o2000 } else { !0 }
}

/// The error of a call on a file this client has not opened.
fn not_open() -> Error {
    Error::Remote(vg_wire::RemoteError::new(
        vg_wire::ErrorCode::Invalid,
        "the file is not open",
    ))
}

/// The pieces of a read as one buffer; most reads lie within one part, with no copy.
fn joined(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        1 => parts.pop().expect("one part"),
        _ => Bytes::from(parts.concat()),
    }
}

/// Pieces of the byte range `offset..offset+len` cut on block boundaries:
/// `(block index, offset inside the block, range of the input)`.
pub fn cut(offset: u64, len: usize, block_size: u32) -> Vec<(u64, usize, Range<usize>)> {
    let bs = block_size as u64;
    let mut pieces = Vec::new();
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let idx = pos / bs;
        let in_block = (pos % bs) as usize;
        let n = (bs as usize - in_block).min(len - done);
        pieces.push((idx, in_block, done..done + n));
        done += n;
    }
    pieces
}

/// Writes `data` at `at` into a buffer for a block of `block_size` bytes, zero-filling any
/// gap before it. A large write into a new block is taken for a writer that fills it: the
/// whole block is allocated at once, rather than grown (and copied) write by write.
pub fn write_into(buf: &mut Vec<u8>, at: usize, data: &[u8], block_size: usize) {
    if buf.capacity() == 0 && data.len() >= LARGE_WRITE {
        buf.reserve_exact(block_size);
    }
    if buf.len() < at {
        buf.resize(at, 0);
    }
    // Bytes over what the buffer holds are copied in place, the rest appended (appending
    // does not zero-fill first).
    let over = (buf.len() - at).min(data.len());
    buf[at..at + over].copy_from_slice(&data[..over]);
    buf.extend_from_slice(&data[over..]);
}

/// A write at least this large into a new block allocates the whole block (see
/// [`write_into`]).
const LARGE_WRITE: usize = 128 << 10;
/// Uploads of one file, running or finished, past which the finished ones are collected
/// (their results recorded) during writes: each holds its block's bytes until then.
const REAP_AFTER: usize = 64;
/// Layouts a read loads at most when its blobs keep vanishing under it (each time
/// another commit or compaction replaced them): bounds a reader starved by a writer.
const READ_RELOADS: u32 = 8;

/// Tunables of the open-file layer.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of block uploads in flight before writers wait.
    pub max_dirty: u64,
    /// Partly written blocks a file keeps in memory before the oldest is uploaded as it
    /// is (a random writer's; a full block goes at once).
    pub partial_blocks: u64,
    /// Bytes of the block cache.
    pub cache: u64,
    /// Blocks read ahead of a sequential reader.
    pub read_ahead: u64,
    /// Whether the last close of a file waits until its changes are on disk, as `fsync`
    /// does (`--sync-on-close`).
    pub sync_on_close: bool,
    /// How long a file this mount wrote stays closed before the close rule compacts it
    /// ([`CLOSE_IDLE`]).
    pub close_idle: Duration,
}

/// Bytes written into one block since it was last sealed: extents by offset, never
/// overlapping or touching (touching ones are merged, so a sequential writer has one).
#[derive(Default)]
struct Extents(BTreeMap<u32, Vec<u8>>);

impl Extents {
    /// Writes `data` at `at`, merging it with the extents it overlaps or touches.
    fn write(&mut self, at: u32, data: &[u8], block_size: usize) {
        let end = at + data.len() as u32;
        let before = self
            .0
            .range(..=at)
            .next_back()
            .filter(|(start, bytes)| **start + bytes.len() as u32 >= at)
            .map(|(start, _)| *start);
        let base = before.unwrap_or(at);
        let mut buf = before
            .and_then(|start| self.0.remove(&start))
            .unwrap_or_default();
        write_into(
            &mut buf,
            (at - base) as usize,
            data,
            block_size - base as usize,
        );
        let after: Vec<u32> = self.0.range(at..=end).map(|(start, _)| *start).collect();
        for start in after {
            let other = self.0.remove(&start).expect("listed above");
            let buf_end = base + buf.len() as u32;
            if start + other.len() as u32 > buf_end {
                buf.extend_from_slice(&other[(buf_end - start) as usize..]);
            }
        }
        self.0.insert(base, buf);
    }

    /// Bytes held.
    fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// Whether one extent covers the whole block.
    fn is_full(&self, block_size: usize) -> bool {
        self.0.len() == 1 && self.0.get(&0).is_some_and(|b| b.len() == block_size)
    }

    /// The extents packed into one blob, and where each went: (offset in the block,
    /// length, offset in the blob). A single extent is its own blob, without a copy, so
    /// a block written whole is the same blob as always (deduplication).
    fn pack(self) -> (Vec<u8>, Vec<(u32, u32, u32)>) {
        if self.0.len() == 1 {
            let (at, mut bytes) = self.0.into_iter().next().expect("one extent");
            // A block allocated whole for a writer that stopped short gives back the rest:
            // the cache counts what blocks hold, not what they could.
            bytes.shrink_to_fit();
            let len = bytes.len() as u32;
            return (bytes, vec![(at, len, 0)]);
        }
        let mut data = Vec::with_capacity(self.len());
        let mut pieces = Vec::with_capacity(self.0.len());
        for (at, bytes) in self.0 {
            pieces.push((at, bytes.len() as u32, data.len() as u32));
            data.extend_from_slice(&bytes);
        }
        (data, pieces)
    }
}

/// Sealed extents of one block on their way to the storages, packed in one blob.
struct Upload {
    idx: u64,
    /// The blob's bytes.
    data: Arc<Vec<u8>>,
    /// Each extent: its offset in the block, its length, its offset in `data`.
    pieces: Vec<(u32, u32, u32)>,
    /// Whether the storages synced it before acknowledging it.
    synced: bool,
    task: JoinHandle<Result<(BlockRef, Vec<Location>)>>,
}

impl Upload {
    /// The slices the upload adds to its block once stored as `blob`.
    fn slices(&self, blob: BlockId) -> Vec<Slice> {
        self.pieces
            .iter()
            .map(|&(at, len, blob_off)| Slice {
                at,
                len,
                blob,
                blob_off,
            })
            .collect()
    }

    /// How the upload ended.
    async fn outcome(&mut self) -> Result<(BlockRef, Vec<Location>)> {
        (&mut self.task).await.unwrap_or_else(|e| {
            // Its runtime ended under it (a FUSE ring's, at unmount): sent again with
            // the next flush.
            Err(Error::Remote(vg_wire::RemoteError::new(
                ErrorCode::Unavailable,
                format!("upload of block {}: {e}", self.idx),
            )))
        })
    }

    /// Its extents written over `extents` (it is newer than they are).
    fn write_over(&self, extents: &mut Extents, block_size: usize) {
        for &(at, len, off) in &self.pieces {
            let bytes = &self.data[off as usize..(off + len) as usize];
            extents.write(at, bytes, block_size);
        }
    }
}

/// A whole-blob fetch that concurrent readers share; the error is kept as text.
type Fetch = OnceCell<std::result::Result<Arc<Vec<u8>>, String>>;

/// What shows through at some bytes of a block, as a read plans it.
#[derive(Clone)]
enum Layer {
    /// A stored blob, from this offset in it.
    Blob(BlockId, u32),
    /// An upload in flight, from this offset in its bytes.
    Memory(Arc<Vec<u8>>, u32),
    /// Unsealed bytes: the extent starting at this offset of the block.
    Dirty(u32),
}

/// One part of a read, in order.
enum Part {
    Zeros(usize),
    Bytes(Bytes),
    Blob {
        id: BlockId,
        range: Range<u32>,
        locations: Locations,
    },
}

/// What a read needs, decided under the file's lock.
struct ReadPlan {
    parts: Vec<Part>,
    /// Blobs to read ahead.
    ahead: Vec<(BlockId, Locations)>,
}

/// The storages holding a blob, shared: every read plans its parts with them, and a
/// shared list costs a reference count there, not a copy of every name.
type Locations = Arc<[Location]>;

#[derive(Default)]
struct FileState {
    size: u64,
    mtime: Option<Timestamp>,
    /// Slices of each block as this client sees them: committed, then uploaded by it.
    blocks: Vec<Vec<Slice>>,
    locations: HashMap<BlockId, Locations>,
    /// Bytes written and not yet sealed for upload, by block.
    dirty: BTreeMap<u64, Extents>,
    /// Uploads in seal order (reads overlay them, newer over older).
    uploads: Vec<Upload>,
    /// Slices uploaded and not yet committed, by block, oldest first.
    pending: BTreeMap<u64, Vec<Slice>>,
    stored: Vec<Stored>,
    /// A blob of `stored` was acknowledged before its storages synced it.
    unsynced: bool,
    /// Size or content changed since the last commit.
    changed: bool,
    /// An upload failed: its bytes are back in `dirty` for the next flush, and the error
    /// goes to the next write or flush.
    failed: Option<Error>,
    handles: u32,
    /// (size, mtime) when last loaded or committed, to tell if the kernel cache is valid.
    seen: Option<(u64, Timestamp)>,
    /// Attributes when last loaded, committed or set.
    attr: Option<Attr>,
    /// Attribute changes made while the file had uncommitted data (`tar` sets owner and
    /// mode before closing each file): sent with the commit, saving a round trip each.
    deferred: Option<SetAttr>,
    /// This client wrote the file while it had it open: its last close has what the
    /// writes left compacted once the file stays closed. A reader's close does not: a
    /// second mount reading a file in a loop compacted it at each close, under its
    /// writer, and their compactions' 4 MiB uploads took the room the writer needed.
    wrote: bool,
}

impl FileState {
    fn load(&mut self, layout: vg_wire::ns::Layout) {
        self.size = layout.attr.size;
        self.mtime = None;
        self.blocks = layout.blocks;
        self.locations.clear();
        self.add_locations(layout.locations);
        self.seen = Some((layout.attr.size, layout.attr.mtime));
        self.attr = Some(layout.attr);
    }

    /// The blocks (`only` these, or all) whose slices, as this client sees them, call
    /// for a compaction (see `vg_wire::slices::wants_compaction`).
    fn to_compact(&self, only: Option<&[u64]>, closing: bool) -> Vec<u64> {
        let wanted = |idx: &u64| {
            self.blocks
                .get(*idx as usize)
                .is_some_and(|list| vg_wire::slices::wants_compaction(list, closing))
        };
        match only {
            Some(idxs) => idxs.iter().copied().filter(wanted).collect(),
            None => (0..self.blocks.len() as u64).filter(wanted).collect(),
        }
    }

    /// Applies compactions the nameserver took to this client's view of the blocks, by
    /// the nameserver's rule (`vg_wire::slices::compacted`).
    fn apply_swaps(&mut self, swaps: Vec<compact::Swap>) {
        for swap in swaps {
            let Some(list) = self.blocks.get_mut(swap.idx as usize) else {
                continue;
            };
            if let Some((after, _)) = vg_wire::slices::compacted(list, &swap.prefix, &swap.merged) {
                *list = after;
                self.locations.insert(swap.blob, swap.holders.into());
            }
        }
    }

    /// Takes the stored slices of a fresh layout; a file this client is changing keeps
    /// its own size and attributes, and its uploaded slices go back on top.
    fn refresh(&mut self, layout: vg_wire::ns::Layout) {
        if self.is_clean() {
            return self.load(layout);
        }
        self.blocks = layout.blocks;
        self.add_locations(layout.locations);
        let pending: Vec<(u64, Vec<Slice>)> =
            self.pending.iter().map(|(i, s)| (*i, s.clone())).collect();
        for (idx, slices) in pending {
            self.add_slices(idx, &slices);
        }
    }

    /// Puts this client's unwritten size, mtime and deferred attribute changes on `attr`.
    fn overlay(&self, attr: &mut Attr) {
        if self.changed {
            attr.size = self.size;
            if let Some(mtime) = self.mtime {
                attr.mtime = mtime;
                attr.ctime = mtime;
            }
        }
        if let Some(set) = &self.deferred {
            set.apply_to(attr, Timestamp::now());
        }
    }

    fn is_clean(&self) -> bool {
        !self.changed && self.dirty.is_empty() && self.uploads.is_empty() && self.failed.is_none()
    }

    fn add_locations(&mut self, locations: Vec<(BlockId, Vec<Location>)>) {
        for (id, holders) in locations {
            self.locations.insert(id, holders.into());
        }
    }

    fn locations_of(&self, id: &BlockId) -> Locations {
        self.locations
            .get(id)
            .cloned()
            .unwrap_or_else(|| Locations::from([]))
    }

    /// Adds slices this client stored on top of block `idx`, as the nameserver will.
    fn add_slices(&mut self, idx: u64, slices: &[Slice]) {
        let i = idx as usize;
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, Vec::new());
        }
        self.blocks[i].extend_from_slice(slices);
        vg_wire::slices::drop_hidden(&mut self.blocks[i]);
    }

    /// The parts of bytes `want` of block `idx` as this client sees the file now:
    /// stored slices, under uploads in flight, under unsealed bytes. Unsealed bytes are
    /// copied out for that range only (reads must not copy whole blocks).
    fn parts(&self, idx: u64, want: Range<u32>) -> Vec<Part> {
        let stored = self
            .blocks
            .get(idx as usize)
            .into_iter()
            .flatten()
            .map(|s| (s.range(), Layer::Blob(s.blob, s.blob_off)));
        let in_flight = self.uploads.iter().filter(|u| u.idx == idx).flat_map(|u| {
            u.pieces
                .iter()
                .map(|&(at, len, off)| (at..at + len, Layer::Memory(u.data.clone(), off)))
        });
        let dirty = self.dirty.get(&idx);
        let unsealed = dirty.into_iter().flat_map(|e| {
            e.0.iter()
                .map(|(at, bytes)| (*at..*at + bytes.len() as u32, Layer::Dirty(*at)))
        });
        overlay(stored.chain(in_flight).chain(unsealed), want)
            .into_iter()
            .map(|(range, source)| {
                let n = range.len();
                match source {
                    None => Part::Zeros(n),
                    Some((Layer::Blob(id, off), shift)) => Part::Blob {
                        id,
                        range: off + shift..off + shift + n as u32,
                        locations: self.locations_of(&id),
                    },
                    Some((Layer::Memory(data, off), shift)) => {
                        let start = (off + shift) as usize;
                        Part::Bytes(vg_wire::rpc::share(data).slice(start..start + n))
                    }
                    Some((Layer::Dirty(at), shift)) => {
                        let bytes = &dirty.expect("a dirty layer").0[&at];
                        let start = shift as usize;
                        Part::Bytes(Bytes::copy_from_slice(&bytes[start..start + n]))
                    }
                }
            })
            .collect()
    }

    /// Puts the bytes of a failed upload back among the unsealed ones, under everything
    /// written after it, so that the next flush uploads them again.
    fn unseal(&mut self, failed: &Upload, block_size: usize) {
        let mut extents = Extents::default();
        failed.write_over(&mut extents, block_size);
        for later in self.uploads.iter().filter(|u| u.idx == failed.idx) {
            later.write_over(&mut extents, block_size);
        }
        if let Some(newer) = self.dirty.remove(&failed.idx) {
            for (at, bytes) in newer.0 {
                extents.write(at, &bytes, block_size);
            }
        }
        self.dirty.insert(failed.idx, extents);
    }
}

/// One open file (shared by all its handles on this client).
pub struct OpenFile {
    ino: Ino,
    state: Arc<Mutex<FileState>>,
}

/// The open-file layer of a mount.
pub struct Files {
    client: Client,
    limits: Limits,
    /// The runtime this was made on: uploads, read-ahead and compactions run there
    /// whichever thread's runtime serves the request that starts them (the FUSE ring
    /// threads serve requests on the callers' CPUs, where such work would take turns
    /// with the callers).
    rt: tokio::runtime::Handle,
    cache: StdMutex<BlockCache>,
    /// Whole-blob fetches in progress, so concurrent readers share one.
    fetching: StdMutex<HashMap<BlockId, Arc<Fetch>>>,
    /// Files a compaction of this mount is running on. Kept apart from the open files,
    /// whose entry goes at the last close: a reader opening and closing a file in a loop
    /// started one compaction per close, side by side, and their uploads filled the
    /// cluster under the file's writer.
    compacting: Arc<StdMutex<HashSet<Ino>>>,
    /// Files this mount wrote, by their last close here: when they are due for the close
    /// rule, and the blocks it picked then (see [`Limits::close_idle`]).
    closed: StdMutex<HashMap<Ino, (std::time::Instant, Vec<u64>)>>,
    permits: Arc<Semaphore>,
    open: StdMutex<HashMap<Ino, Arc<OpenFile>>>,
    /// Tells the nameserver which of them are open.
    session: Arc<Session>,
    /// The locks this mount's owners hold, by file: a close drops its owner's, and the
    /// session reports them (to take them back after a nameserver restart).
    locks: StdMutex<HashMap<Ino, Vec<Lock>>>,
    /// Files whose locks were lost (the session lapsed): their next call fails, once.
    lost: StdMutex<HashSet<Ino>>,
    /// Whether any lock was ever taken here: until then opens, closes, reads and writes
    /// skip every lock check (no mutex on those paths).
    locking: AtomicBool,
    /// Bytes read and written through this layer (for `--metrics`).
    pub bytes_read: Counter,
    /// Bytes written through this layer.
    pub bytes_written: Counter,
}

/// What the mount's metrics read at a scrape.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    /// Block cache lookups that found their block.
    pub cache_hits: u64,
    /// Block cache lookups that did not.
    pub cache_misses: u64,
    /// Bytes written and not yet committed (uploads in flight or waiting).
    pub dirty_bytes: u64,
    /// Files open on this mount.
    pub open_files: u64,
}

/// Permits are counted in KiB so that gigabytes fit a semaphore.
fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(u32::MAX as u64) as u32
}

impl Files {
    /// The open-file layer over a connected client.
    pub fn new(client: Client, limits: Limits) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(
            kib(limits.max_dirty.max(client.block_size as u64)) as usize,
        ));
        let session = Arc::new(Session::new());
        let files = Arc::new(Files {
            cache: StdMutex::new(BlockCache::new(limits.cache)),
            rt: tokio::runtime::Handle::current(),
            client,
            limits,
            fetching: StdMutex::default(),
            compacting: Arc::default(),
            closed: StdMutex::default(),
            permits,
            open: StdMutex::default(),
            session: session.clone(),
            locks: StdMutex::default(),
            lost: StdMutex::default(),
            locking: AtomicBool::new(false),
            bytes_read: Counter::default(),
            bytes_written: Counter::default(),
        });
        tokio::spawn(session.run(Arc::downgrade(&files)));
        let idle = files.limits.close_idle;
        tokio::spawn(Self::compact_closed(Arc::downgrade(&files), idle));
        files
    }

    /// Compacts the files closed [`Limits::close_idle`] ago and not open since, by the
    /// close rule, in the background; looks every second (or that often, if shorter).
    /// Ends with the mount; what it has not compacted by then waits for the file's next
    /// writer.
    async fn compact_closed(files: std::sync::Weak<Files>, idle: Duration) {
        loop {
            tokio::time::sleep(idle.min(Duration::from_secs(1))).await;
            let Some(files) = files.upgrade() else {
                return;
            };
            let now = std::time::Instant::now();
            let due: Vec<(Ino, Vec<u64>)> = {
                let open = files.open.lock().expect("open lock");
                let mut closed = files.closed.lock().expect("closed lock");
                let inos: Vec<Ino> = closed
                    .iter()
                    .filter(|(ino, (due, _))| *due <= now && !open.contains_key(ino))
                    .map(|(ino, _)| *ino)
                    .collect();
                inos.into_iter()
                    .filter_map(|ino| Some((ino, closed.remove(&ino)?.1)))
                    .collect()
            };
            for (ino, idxs) in due {
                if !files
                    .compacting
                    .lock()
                    .expect("compacting lock")
                    .insert(ino)
                {
                    // A compaction of its writes is still running: the next round.
                    let again = (std::time::Instant::now(), idxs);
                    files.closed.lock().expect("closed lock").insert(ino, again);
                    continue;
                }
                let (client, compacting) = (files.client.clone(), files.compacting.clone());
                files.rt.spawn(async move {
                    if let Err(e) = compact::compact_blocks(&client, ino, &idxs, true).await {
                        tracing::debug!(ino, error = %e, "compaction failed; the slices stay");
                    }
                    compacting.lock().expect("compacting lock").remove(&ino);
                });
            }
        }
    }

    /// The inodes of the files this mount holds (open, or with changes not yet
    /// committed), sorted.
    pub fn open_inodes(&self) -> Vec<Ino> {
        let mut open: Vec<Ino> = self
            .open
            .lock()
            .expect("open lock")
            .keys()
            .copied()
            .collect();
        open.sort_unstable();
        open
    }

    /// The figures the mount's metrics show.
    pub fn figures(&self) -> Figures {
        let (cache_hits, cache_misses) = {
            let cache = self.cache.lock().expect("cache lock");
            (cache.hits, cache.misses)
        };
        let total = kib(self.limits.max_dirty.max(self.client.block_size as u64)) as u64;
        let free = self.permits.available_permits() as u64;
        Figures {
            cache_hits,
            cache_misses,
            dirty_bytes: total.saturating_sub(free) * 1024,
            open_files: self.open.lock().expect("open lock").len() as u64,
        }
    }

    /// Takes, changes or drops a lock (`fcntl` record locks, `flock`) on a file, held by
    /// the nameserver for this mount's session, so that it excludes other mounts too.
    /// Lock-to-unlock consistency, as NFS has it: what this mount wrote is committed
    /// before it unlocks, and a lock taken reloads the file's layout. Returns whether the
    /// file changed since this mount last saw it (the kernel's pages of it must go).
    /// A wait ends with [`Error::Interrupted`](super::Error) once `interrupted` resolves.
    pub async fn lock(
        &self,
        ino: Ino,
        lock: Lock,
        wait: bool,
        interrupted: impl Future<Output = ()>,
    ) -> Result<bool> {
        self.check_locks(ino)?;
        if lock.kind == LockKind::Unlock {
            self.flush(ino).await?;
        }
        self.session.before_lock(self).await?;
        let asked = std::time::Instant::now();
        let attr = self
            .client
            .lock(self.session.id(), ino, lock, wait, interrupted)
            .await?;
        self.session.renewed(asked);
        self.locking.store(true, Ordering::Relaxed);
        {
            let mut all = self.locks.lock().expect("locks lock");
            let list = all.entry(ino).or_default();
            let (mut mine, others): (Vec<Lock>, Vec<Lock>) =
                list.drain(..).partition(|l| l.owner == lock.owner);
            vg_wire::locks::apply(&mut mine, &lock);
            list.extend(others.into_iter().chain(mine));
            if list.is_empty() {
                all.remove(&ino);
            }
        }
        if lock.kind == LockKind::Unlock {
            return Ok(false);
        }
        self.client.cache(|c| c.locked_in(ino));
        let Some(file) = self.get_open(ino) else {
            return Ok(false);
        };
        // Under the file's lock: a commit of this mount meanwhile would be undone by an
        // older layout.
        let mut state = file.state.lock().await;
        // Attributes as this mount last saw them: nobody changed the file since.
        if attr.is_some_and(|attr| state.seen == Some((attr.size, attr.mtime))) {
            return Ok(false);
        }
        let layout = self.client.layout(ino).await?;
        let changed = state.seen != Some((layout.attr.size, layout.attr.mtime));
        if changed {
            self.client.cache(|c| c.attr(&layout.attr));
            state.refresh(layout);
        }
        Ok(changed)
    }

    /// The lock of another owner (on any mount) that `lock` conflicts with (`F_GETLK`).
    pub async fn test_lock(&self, ino: Ino, lock: Lock) -> Result<Option<Lock>> {
        self.client.test_lock(self.session.id(), ino, lock).await
    }

    /// Drops every lock `owner` holds on a file (its process closed a descriptor of it,
    /// or its open file went); costs nothing if it took none here.
    pub async fn unlock_all(&self, ino: Ino, owner: u64) -> Result<()> {
        if !self.locking.load(Ordering::Relaxed) {
            return Ok(());
        }
        let had = {
            let mut all = self.locks.lock().expect("locks lock");
            let Some(list) = all.get_mut(&ino) else {
                return Ok(());
            };
            let before = list.len();
            list.retain(|l| l.owner != owner);
            let had = list.len() < before;
            if list.is_empty() {
                all.remove(&ino);
            }
            had
        };
        match had {
            true => self.send_unlock_all(ino, owner).await,
            false => Ok(()),
        }
    }

    async fn send_unlock_all(&self, ino: Ino, owner: u64) -> Result<()> {
        let all = Lock {
            owner,
            start: 0,
            end: u64::MAX,
            kind: LockKind::Unlock,
            pid: 0,
        };
        let never = std::future::pending();
        self.client
            .lock(self.session.id(), ino, all, false, never)
            .await
            .map(drop)
    }

    /// Whether some owner on this mount holds a lock on the file.
    pub fn has_locks(&self, ino: Ino) -> bool {
        self.locking.load(Ordering::Relaxed)
            && self.locks.lock().expect("locks lock").contains_key(&ino)
    }

    /// Every lock this mount's owners hold, for the session's report.
    pub fn locks_held(&self) -> Vec<(Ino, Lock)> {
        let all = self.locks.lock().expect("locks lock");
        all.iter()
            .flat_map(|(ino, list)| list.iter().map(|l| (*ino, *l)))
            .collect()
    }

    /// The nameserver let this mount's locks go (its session lapsed): every file that
    /// had one fails its next call with EIO, as a process must not go on believing it
    /// holds a lock another may have taken since.
    pub fn lose_locks(&self) {
        let mut held = self.locks.lock().expect("locks lock");
        // Moved under the locks' lock (see `check_locks`): a call checked while they were
        // dropped but not yet marked lost found neither, and went on writing under a lock
        // another mount may hold by now.
        self.lost
            .lock()
            .expect("lost lock")
            .extend(held.keys().copied());
        let files = held.len();
        held.clear();
        drop(held);
        tracing::error!(files, "this mount's session lapsed: its locks are lost");
    }

    /// Fails a call on a file whose locks are lost (once), or held by a session that
    /// went a whole lease without renewal (partitioned from the nameserver).
    fn check_locks(&self, ino: Ino) -> Result<()> {
        if !self.locking.load(Ordering::Relaxed) {
            return Ok(());
        }
        let lost = || {
            Error::Remote(vg_wire::RemoteError::new(
                vg_wire::ErrorCode::Io,
                format!("inode {ino}: this mount's locks on it were lost (its session lapsed)"),
            ))
        };
        // Both looked at under the locks' lock, which `lose_locks` holds while it moves
        // them to the lost: a lock is seen either held or lost, never neither.
        let held = self.locks.lock().expect("locks lock");
        if self.lost.lock().expect("lost lock").remove(&ino) {
            return Err(lost());
        }
        if held.contains_key(&ino) && self.session.lapsed() {
            drop(held);
            self.lose_locks();
            self.lost.lock().expect("lost lock").remove(&ino);
            return Err(lost());
        }
        Ok(())
    }

    /// Tells the nameserver this mount holds no file any more (at unmount), so that files
    /// unlinked while open here go now rather than when the lease lapses.
    pub async fn end_session(&self) {
        // Not for long: an unmount must not hang on an unreachable nameserver.
        match tokio::time::timeout(Duration::from_secs(2), self.session.end(self)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "session not ended; its lease will lapse"),
            Err(_) => tracing::debug!("session not ended in time; its lease will lapse"),
        }
    }

    /// Call before removing `parent/name` (an unlink, or a rename over it): a file open
    /// here must stay readable and writable when its last name goes, so the nameserver
    /// learns of it first if it may not know yet.
    pub async fn before_unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let target = match self.client.cached_lookup(parent, name) {
            Some(Cached::Found(attr, _)) => Some(attr.ino),
            Some(Cached::Absent) => return Ok(()),
            _ => None,
        };
        self.session.before_unlink(self, target).await
    }

    /// Removes a non-directory (an unlink): a file open here lives on, and the
    /// attributes kept for it count the link less, as `fstat` then shows.
    pub async fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.before_unlink(parent, name).await?;
        let Some(left) = self.client.unlink(parent, name).await? else {
            return Ok(());
        };
        if let Some(file) = self.get_open(left.ino) {
            if let Some(attr) = &mut file.state.lock().await.attr {
                attr.nlink = left.nlink;
                attr.ctime = left.ctime;
            }
        }
        Ok(())
    }

    /// The cluster client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn block_size(&self) -> u64 {
        self.client.block_size as u64
    }

    fn get_open(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.open.lock().expect("open lock").get(&ino).cloned()
    }

    /// Opens a file: loads its layout unless this client holds unwritten data for it.
    /// Returns whether the kernel may keep its page cache (the file is unchanged since
    /// this client last saw it).
    pub async fn open(&self, ino: Ino) -> Result<bool> {
        self.open_known(ino, None).await
    }

    /// Opens a file just created with these attributes: an empty file needs no layout
    /// from the nameserver, which saves a round trip per create.
    pub async fn open_created(&self, attr: &Attr) -> Result<bool> {
        self.open_known(attr.ino, Some(attr)).await
    }

    async fn open_known(&self, ino: Ino, created: Option<&Attr>) -> Result<bool> {
        let (file, mut state) = loop {
            let file = {
                let mut open = self.open.lock().expect("open lock");
                open.entry(ino)
                    .or_insert_with(|| {
                        self.session.changed();
                        Arc::new(OpenFile {
                            ino,
                            state: Arc::new(Mutex::new(FileState::default())),
                        })
                    })
                    .clone()
            };
            let state = file.state.clone().lock_owned().await;
            // A release may have dropped this entry while we waited for its lock.
            if self.get_open(ino).is_some_and(|f| Arc::ptr_eq(&f, &file)) {
                break (file, state);
            }
        };
        let mut keep_cache = false;
        if state.is_clean() && state.handles == 0 {
            let layout = match created {
                Some(attr) if attr.size == 0 => vg_wire::ns::Layout {
                    attr: attr.clone(),
                    block_size: self.client.block_size,
                    blocks: Vec::new(),
                    locations: Vec::new(),
                },
                _ => match self.client.layout(ino).await {
                    Ok(layout) => layout,
                    Err(e) => {
                        self.forget_if_idle(&file, &state);
                        return Err(e);
                    }
                },
            };
            keep_cache = state.seen == Some((layout.attr.size, layout.attr.mtime));
            state.load(layout);
        }
        state.handles += 1;
        Ok(keep_cache)
    }

    /// Releases one handle; forgets the file once no handle is left and nothing is pending.
    pub async fn release(&self, ino: Ino) {
        let Some(file) = self.get_open(ino) else {
            return;
        };
        let mut state = file.state.lock().await;
        self.release_locked(&file, &mut state);
        if state.handles == 0 {
            drop(state);
            self.unlock_closed(ino).await;
        }
    }

    /// With no descriptor of the file open on this mount, none of its processes can
    /// hold a lock on it: drops any left (those of a descriptor whose close the kernel
    /// did not report, as it does not for one opened read-only).
    async fn unlock_closed(&self, ino: Ino) {
        if !self.locking.load(Ordering::Relaxed) {
            return;
        }
        let mut owners: Vec<u64> = self
            .locks
            .lock()
            .expect("locks lock")
            .remove(&ino)
            .into_iter()
            .flatten()
            .map(|l| l.owner)
            .collect();
        owners.sort_unstable();
        owners.dedup();
        for owner in owners {
            if let Err(e) = self.send_unlock_all(ino, owner).await {
                tracing::warn!(ino, error = %e, "lock not released; it lapses with the session");
            }
        }
    }

    /// Drops one handle; forgets the file once no handle is left and nothing is pending.
    /// The layout stays cached (for the keep-cache check) while the entry exists; it is
    /// dropped when idle so that memory does not grow with every file ever opened. The
    /// entry is removed under the state lock, which `open` re-checks after taking it.
    /// The last close of a client that wrote the file has blocks left with more than a
    /// few slices compacted once the file stays closed (see [`Limits::close_idle`]).
    fn release_locked(&self, file: &OpenFile, state: &mut FileState) {
        state.handles = state.handles.saturating_sub(1);
        if state.handles == 0 {
            let idxs = match state.wrote {
                true => state.to_compact(None, true),
                false => Vec::new(),
            };
            if !idxs.is_empty() {
                let closed = (std::time::Instant::now() + self.limits.close_idle, idxs);
                self.closed
                    .lock()
                    .expect("closed lock")
                    .insert(file.ino, closed);
            }
            self.forget_if_idle(file, state);
        }
    }

    /// Drops the entry of a file with no handle and nothing pending (a failed open
    /// leaves one too): the session no longer holds it.
    fn forget_if_idle(&self, file: &OpenFile, state: &FileState) {
        if state.handles == 0 && state.is_clean() {
            self.open.lock().expect("open lock").remove(&file.ino);
            self.session.changed();
        }
    }

    /// Starts a compaction of the blocks (`only` these, or all) whose slices call for
    /// one, in the background: reads are served meanwhile, and the nameserver swaps the
    /// new blob in only if the block did not change. One runs per file and mount at a
    /// time, whether the file is still open or not (the close rule waits for it); when
    /// it ends it looks again at every block.
    fn compact_later(&self, file: &OpenFile, state: &mut FileState, only: Option<&[u64]>) {
        let mut idxs = state.to_compact(only, false);
        if idxs.is_empty()
            || !self
                .compacting
                .lock()
                .expect("compacting lock")
                .insert(file.ino)
        {
            return;
        }
        let (client, ino, shared) = (self.client.clone(), file.ino, file.state.clone());
        let compacting = self.compacting.clone();
        self.rt.spawn(async move {
            loop {
                let done = compact::compact_blocks(&client, ino, &idxs, false).await;
                let mut state = shared.lock().await;
                // Looking again only after a compaction the nameserver took: this client's
                // view of a block may be older than the nameserver's (another client
                // compacted it), and would otherwise ask again and again.
                let retry = match done {
                    Ok(done) => {
                        let took = !done.is_empty();
                        state.apply_swaps(done);
                        took
                    }
                    Err(e) => {
                        tracing::debug!(ino, error = %e, "compaction failed; the slices stay");
                        false
                    }
                };
                idxs = match retry {
                    true => state.to_compact(None, false),
                    false => Vec::new(),
                };
                if idxs.is_empty() {
                    compacting.lock().expect("compacting lock").remove(&ino);
                    return;
                }
            }
        });
    }

    /// Adjusts attributes from the nameserver with this client's unwritten size and mtime.
    /// Attributes fetched before a commit of this client that ended meanwhile give way to
    /// the newer ones it returned.
    pub async fn overlay(&self, attr: &mut Attr) {
        self.client.newest(attr);
        if let Some(file) = self.get_open(attr.ino) {
            let state = file.state.lock().await;
            if let Some(known) = &state.attr {
                keep_newest(attr, known);
            }
            state.overlay(attr);
        }
    }

    /// Attributes of an inode; a file this client is writing answers from its own state
    /// (the kernel asks after every write, and before `chown`).
    pub async fn getattr(&self, ino: Ino) -> Result<Attr> {
        if let Some(file) = self.get_open(ino) {
            let state = file.state.lock().await;
            if let Some(attr) = state.attr.as_ref().filter(|_| state.changed) {
                return Ok(attr.clone());
            }
        }
        self.client.getattr(ino).await
    }

    /// The current size as this client sees it (for O_APPEND).
    pub async fn size(&self, ino: Ino) -> Option<u64> {
        Some(self.get_open(ino)?.state.lock().await.size)
    }

    async fn whole_blob(&self, id: BlockId, locations: &[Location]) -> Result<Arc<Vec<u8>>> {
        if let Some(data) = self.cache.lock().expect("cache lock").get(&id) {
            return Ok(data);
        }
        let cell = self
            .fetching
            .lock()
            .expect("fetching lock")
            .entry(id)
            .or_default()
            .clone();
        let result = cell
            .get_or_init(|| async {
                match self.client.read_block(id, locations, 0, 0).await {
                    Ok(data) => {
                        let data = Arc::new(data);
                        self.cache
                            .lock()
                            .expect("cache lock")
                            .insert(id, data.clone());
                        Ok(data)
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .clone();
        // Only this fetch's entry: a reader woken late must not drop the entry of a
        // fetch of the same blob started since (evicted and wanted again), which the
        // next reader would then fetch a second time.
        let mut fetching = self.fetching.lock().expect("fetching lock");
        if fetching.get(&id).is_some_and(|f| Arc::ptr_eq(f, &cell)) {
            fetching.remove(&id);
        }
        drop(fetching);
        result.map_err(|reason| Error::Unreadable { block: id, reason })
    }

    /// Bytes `range` of a blob; from the block cache without a copy, or a byte-range read
    /// when the blob is not wanted whole. A blob shorter than the range is an error.
    async fn blob_range(
        &self,
        id: BlockId,
        locations: &[Location],
        range: Range<u32>,
        whole: bool,
    ) -> Result<Bytes> {
        if whole || self.cache.lock().expect("cache lock").contains(&id) {
            let data = self.whole_blob(id, locations).await?;
            if range.end as usize > data.len() {
                return Err(Error::Unreadable {
                    block: id,
                    reason: format!("{} bytes, shorter than a slice needs", data.len()),
                });
            }
            return Ok(vg_wire::rpc::share(data).slice(range.start as usize..range.end as usize));
        }
        Ok(Bytes::from(
            self.client
                .read_block(id, locations, range.start, range.end - range.start)
                .await?,
        ))
    }

    /// Reads up to `len` bytes at `offset`. `sequential` readers get whole blobs and
    /// read-ahead; others get byte ranges. A blob collected since the layout was loaded
    /// (another client changed or compacted the file) makes the read load the layout
    /// again: once for any failure, and again while each new layout no longer names the
    /// blob that failed (a file rewritten and compacted under the reader), up to
    /// [`READ_RELOADS`]. A read never returns bytes the file does not hold.
    pub async fn read(
        self: &Arc<Self>,
        ino: Ino,
        offset: u64,
        len: usize,
        sequential: bool,
    ) -> Result<Bytes> {
        self.check_locks(ino)?;
        let file = self.get_open(ino).ok_or_else(not_open)?;
        let mut reloads = 0;
        loop {
            let plan = {
                let state = file.state.lock().await;
                if offset >= state.size {
                    return Ok(Bytes::new());
                }
                self.plan(&state, offset, len, sequential)
            };
            for (id, locations) in plan.ahead {
                // Each sequential read names the next blocks again: one task fetches
                // each, the rest would only queue up behind it.
                if !self.cache.lock().expect("cache lock").contains(&id)
                    && !self
                        .fetching
                        .lock()
                        .expect("fetching lock")
                        .contains_key(&id)
                {
                    let files = self.clone();
                    self.rt.spawn(async move {
                        let _ = files.whole_blob(id, &locations).await;
                    });
                }
            }
            match self.fetch(plan.parts, sequential).await {
                Err(e) if reloads < READ_RELOADS => {
                    reloads += 1;
                    tracing::debug!(ino, error = %e, "read failed; loading the layout again");
                    let layout = self.client.layout(ino).await?;
                    let still_named = match &e {
                        Error::Unreadable { block, .. } => {
                            layout.blocks.iter().flatten().any(|s| s.blob == *block)
                        }
                        _ => true,
                    };
                    if reloads > 1 && still_named {
                        return Err(e);
                    }
                    file.state.lock().await.refresh(layout);
                }
                other => return other,
            }
        }
    }

    async fn fetch(&self, parts: Vec<Part>, sequential: bool) -> Result<Bytes> {
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            out.push(match part {
                Part::Zeros(n) => Bytes::from(vec![0; n]),
                Part::Bytes(bytes) => bytes,
                Part::Blob {
                    id,
                    range,
                    locations,
                } => {
                    let whole = sequential || range.len() >= (1 << 20);
                    self.blob_range(id, &locations, range, whole).await?
                }
            });
        }
        Ok(joined(out))
    }

    /// The parts of a read, and the blobs to read ahead (those of the next blocks, when
    /// they are few: a block of many slices is read part by part).
    fn plan(&self, state: &FileState, offset: u64, len: usize, sequential: bool) -> ReadPlan {
        let len = len.min(state.size.saturating_sub(offset) as usize);
        let pieces = cut(offset, len, self.client.block_size);
        let last = pieces.last().map(|p| p.0).unwrap_or(0);
        let mut ahead: Vec<(BlockId, Locations)> = Vec::new();
        if sequential {
            for idx in last + 1..=last + self.limits.read_ahead {
                let list = state
                    .blocks
                    .get(idx as usize)
                    .map_or(&[][..], Vec::as_slice);
                if list.len() <= 4 {
                    ahead.extend(list.iter().map(|s| (s.blob, state.locations_of(&s.blob))));
                }
            }
        }
        let parts = pieces
            .into_iter()
            .flat_map(|(idx, in_block, range)| {
                state.parts(idx, in_block as u32..(in_block + range.len()) as u32)
            })
            .collect();
        ReadPlan { parts, ahead }
    }

    /// Buffers a write; full blocks are uploaded in the background. Waits when too much
    /// data is in flight (back-pressure). Errors of earlier background uploads surface here
    /// or at the next flush. A write into an existing block reads nothing: it becomes a
    /// slice on top of what the block holds.
    pub async fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        self.check_locks(ino)?;
        let file = self.get_open(ino).ok_or_else(not_open)?;
        let mut state = file.state.lock().await;
        self.reap(&mut state, false).await;
        if let Some(e) = state.failed.take() {
            return Err(e);
        }
        let bs = self.block_size() as usize;
        for (idx, in_block, range) in cut(offset, data.len(), self.client.block_size) {
            if !state.dirty.contains_key(&idx) {
                self.limit_dirty(&mut state).await;
            }
            let extents = state.dirty.entry(idx).or_default();
            extents.write(in_block as u32, &data[range], bs);
            if extents.is_full(bs) {
                self.seal_block(&mut state, idx, false, false).await;
            }
        }
        state.size = state.size.max(offset + data.len() as u64);
        state.mtime = Some(Timestamp::now());
        state.wrote = true;
        // This write's time supersedes a modification time set earlier.
        if let Some(set) = &mut state.deferred {
            set.mtime = None;
        }
        state.changed = true;
        Ok(())
    }

    /// Makes room for one more partly written block: their number per file is bounded
    /// (random writers), the oldest is sealed first.
    async fn limit_dirty(&self, state: &mut FileState) {
        let max_blocks = self.limits.partial_blocks.max(1) as usize;
        while state.dirty.len() >= max_blocks {
            let oldest = *state.dirty.keys().next().expect("non-empty");
            self.seal_block(state, oldest, false, false).await;
        }
    }

    /// Starts the upload of a block's unsealed bytes as one blob (waiting for room among
    /// uploads in flight). A small one that a flush waits for (`flushing`) runs on this
    /// thread's runtime: on a FUSE ring's thread, which polls for its answers while the
    /// flush is out, an untar went 1.1 to 1.3x faster than with the upload on the main
    /// runtime, whose thread the answers had to wake (BENCHMARKS.md, stop 32).
    async fn seal_block(&self, state: &mut FileState, idx: u64, sync: bool, flushing: bool) {
        let Some(extents) = state.dirty.remove(&idx) else {
            return;
        };
        if extents.0.is_empty() {
            return;
        }
        let (data, pieces) = extents.pack();
        let data = Arc::new(data);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(kib(data.len() as u64).max(1))
            .await
            .expect("semaphore is never closed");
        let client = self.client.clone();
        let upload = data.clone();
        // A small block (as the uploads count them) is a small file's content.
        let runtime = if flushing && data.len() <= super::blocks::FAN_OUT_MAX {
            tokio::runtime::Handle::current()
        } else {
            self.rt.clone()
        };
        let task = runtime.spawn(async move {
            let result = client.upload_block(vg_wire::rpc::share(upload), sync).await;
            if let Err(e) = &result {
                tracing::warn!(block = idx, error = %e, "upload failed; kept for the next flush");
            }
            drop(permit);
            result
        });
        state.uploads.push(Upload {
            idx,
            data,
            pieces,
            synced: sync,
            task,
        });
        if state.uploads.len() > REAP_AFTER {
            self.reap(state, false).await;
        }
    }

    /// Collects finished uploads (all of them, waiting, with `wait`), in seal order.
    async fn reap(&self, state: &mut FileState, wait: bool) {
        let bs = self.block_size() as usize;
        while let Some(first) = state.uploads.first() {
            if !wait && !first.task.is_finished() {
                break;
            }
            let mut upload = state.uploads.remove(0);
            let result = upload.outcome().await;
            match result {
                Ok((blob, holders)) => {
                    state.stored.push(stored(blob, &holders));
                    self.took(state, &upload, blob, holders);
                    state.unsynced |= !upload.synced;
                    state
                        .pending
                        .entry(upload.idx)
                        .or_default()
                        .extend(upload.slices(blob.id));
                }
                Err(e) => {
                    state.unseal(&upload, bs);
                    state.failed.get_or_insert(e);
                }
            }
        }
    }

    /// What an upload leaves in the file's state once its blob is stored: the blob in
    /// the cache, where it is, its slices on top of the block.
    fn took(&self, state: &mut FileState, upload: &Upload, blob: BlockRef, holders: Vec<Location>) {
        self.cache
            .lock()
            .expect("cache lock")
            .insert(blob.id, upload.data.clone());
        state.locations.insert(blob.id, holders.into());
        state.add_slices(upload.idx, &upload.slices(blob.id));
    }

    /// Whether a flush of the file can commit while its blobs upload (see
    /// [`Files::flush_raced`]): everything it covers is small blocks written since the
    /// last flush, with no upload under way or failed, no block crowded with slices.
    fn may_race(&self, state: &FileState) -> bool {
        !state.dirty.is_empty()
            && state.uploads.is_empty()
            && state.failed.is_none()
            && !state.unsynced
            && state.stored.is_empty()
            && state.pending.is_empty()
            && state
                .dirty
                .values()
                .all(|e| e.len() <= super::blocks::FAN_OUT_MAX)
            && state.dirty.keys().all(|&idx| {
                state
                    .blocks
                    .get(idx as usize)
                    .is_none_or(|list| list.len() < vg_wire::slices::MAX_SLICES / 2)
            })
    }

    /// A flush whose commit races its uploads: the blobs go to the storages of the next
    /// placement while the commit goes to the nameserver, so that the two overlap
    /// instead of following each other (the nameserver checks afterwards that the blobs
    /// arrived, and undoes the commit if none did). An `fsync`'s (`durable`) blobs are
    /// synced and its commit answered once on disk, so that the storages' and the log's
    /// syncs overlap; a `close`'s are not (its race says so: `ns::RACE_UNSYNCED`). Returns
    /// `None` when the nameserver refused to race, no placement is known or an upload
    /// failed: the bytes not committed with their blob stored are back among the
    /// unsealed ones, for the usual flush to take at once.
    async fn flush_raced(
        &self,
        file: &OpenFile,
        state: &mut FileState,
        durable: bool,
    ) -> Option<Result<bool>> {
        let to = self.client.race_targets(durable)?;
        let mut races = Vec::new();
        let (mut slices, mut uploaded) = (Vec::new(), Vec::new());
        let written: Vec<u64> = state.dirty.keys().copied().collect();
        let race = match durable {
            true => super::session::random_id() & !ns::RACE_UNSYNCED,
            false => super::session::random_id() | ns::RACE_UNSYNCED,
        };
        for &idx in &written {
            let (data, pieces) = state.dirty.remove(&idx).expect("listed").pack();
            let data = Arc::new(data);
            let (blob, task) = self
                .client
                .start_race(vg_wire::rpc::share(data.clone()), &to, race)
                .await;
            let upload = Upload {
                idx,
                data,
                pieces,
                synced: durable,
                task,
            };
            slices.push((idx, upload.slices(blob.id)));
            uploaded.push(stored(blob, &to));
            races.push(upload);
        }
        let set = state.deferred.take();
        let committed = self
            .client
            .commit(
                file.ino,
                state.size,
                slices,
                uploaded,
                set.clone(),
                Commit::Raced(race),
            )
            .await;
        let bs = self.block_size() as usize;
        let mut failed = None;
        for mut upload in races {
            match upload.outcome().await {
                Ok((blob, holders)) if committed.is_ok() => {
                    self.took(state, &upload, blob, holders)
                }
                Ok(_) => state.unseal(&upload, bs),
                Err(e) => {
                    state.unseal(&upload, bs);
                    failed.get_or_insert(e);
                }
            }
        }
        let attr = match committed {
            Ok(attr) => attr,
            // Refused to race: commits wait for their uploads for a while. A file gone
            // meanwhile takes the usual flush too, which knows what that means.
            Err(e) if matches!(e.code(), ErrorCode::Conflict | ErrorCode::NotFound) => {
                if e.code() == ErrorCode::Conflict {
                    tracing::debug!(ino = file.ino, error = %e, "raced commit refused; committing after the upload");
                    self.client.race_refused(durable);
                }
                state.deferred = set;
                return None;
            }
            Err(e) => {
                state.deferred = set;
                return Some(Err(e));
            }
        };
        self.committed(file, state, attr, &written);
        match failed {
            None => {
                self.client.race_stored(race);
                Some(Ok(durable))
            }
            // The commit stands (the nameserver undoes it if no storage got the blob);
            // the bytes the failed uploads held go the usual way, placed anew (a storage
            // out of room, say, waits there for the space the nameserver reclaims).
            Some(e) => {
                tracing::debug!(ino = file.ino, error = %e, "raced upload failed; uploading again");
                state.changed = true;
                None
            }
        }
    }

    /// What a commit's answer leaves in the file's state.
    fn committed(&self, file: &OpenFile, state: &mut FileState, attr: Attr, written: &[u64]) {
        state.seen = Some((attr.size, attr.mtime));
        state.attr = Some(attr);
        state.pending.clear();
        state.changed = false;
        state.unsynced = false;
        state.mtime = None;
        self.compact_later(file, state, Some(written));
    }

    /// Uploads what the file has buffered and commits it. With `durable` (an fsync) the
    /// new blobs are synced by their storages before they are acknowledged, and the
    /// commit answered once on disk, if that covers everything uncommitted: then it
    /// returns true, and the caller needs no further sync.
    async fn flush_state(
        &self,
        file: &OpenFile,
        state: &mut FileState,
        durable: bool,
    ) -> Result<bool> {
        if self.may_race(state) {
            if let Some(result) = self.flush_raced(file, state, durable).await {
                return result;
            }
        }
        let dirty: Vec<u64> = state.dirty.keys().copied().collect();
        for idx in dirty {
            self.seal_block(state, idx, durable, true).await;
        }
        self.reap(state, true).await;
        if let Some(e) = state.failed.take() {
            // The bytes of the failed uploads wait in `dirty` for the next flush; the size
            // this client reported stays.
            return Err(e);
        }
        if !state.changed {
            return Ok(false);
        }
        // Background compaction fell behind (or failed) on a block: compact it now, or
        // the nameserver would refuse the commit for too many slices.
        let crowded: Vec<u64> = state
            .pending
            .keys()
            .copied()
            .filter(|&idx| {
                state
                    .blocks
                    .get(idx as usize)
                    .is_some_and(|list| list.len() >= vg_wire::slices::MAX_SLICES / 2)
            })
            .collect();
        if !crowded.is_empty() {
            match compact::compact_blocks(&self.client, file.ino, &crowded, false).await {
                Ok(done) => state.apply_swaps(done),
                Err(e) => {
                    tracing::warn!(ino = file.ino, error = %e, "compaction before a commit failed")
                }
            }
        }
        let slices: Vec<(u64, Vec<Slice>)> =
            state.pending.iter().map(|(i, s)| (*i, s.clone())).collect();
        let uploaded = std::mem::take(&mut state.stored);
        let set = state.deferred.take();
        let sync = durable && !state.unsynced;
        let how = match sync {
            true => Commit::Synced,
            false => Commit::Written,
        };
        match self
            .client
            .commit(file.ino, state.size, slices, uploaded, set.clone(), how)
            .await
        {
            Ok(attr) => {
                let written: Vec<u64> = state.pending.keys().copied().collect();
                self.committed(file, state, attr, &written);
                Ok(sync)
            }
            // Unlinked while open: nothing is left to commit to.
            Err(e) if e.code() == vg_wire::ErrorCode::NotFound => {
                state.pending.clear();
                state.changed = false;
                state.unsynced = false;
                Ok(false)
            }
            Err(e) => {
                state.deferred = set;
                Err(e)
            }
        }
    }
    /// Uploads everything buffered for the file and commits it: after this returns, the
    /// data is on the storages and visible to other clients on their next open.
    pub async fn flush(&self, ino: Ino) -> Result<()> {
        let Some(file) = self.get_open(ino) else {
            return Ok(());
        };
        let mut state = file.state.lock().await;
        self.flush_state(&file, &mut state, false).await.map(drop)
    }

    /// `fsync`: flushes the file, then returns once its changes (and every change this
    /// client made before) are on disk on the nameserver and on R storages. Its own
    /// blobs are uploaded synced and its commit answered once on disk; what it does not
    /// cover (earlier commits, blobs uploaded before) a `Sync` does.
    pub async fn fsync(&self, ino: Ino) -> Result<()> {
        let durable = match self.get_open(ino) {
            Some(file) => {
                let mut state = file.state.lock().await;
                self.flush_state(&file, &mut state, true).await?
            }
            None => false,
        };
        match durable {
            true => Ok(()),
            false => self.client.sync().await,
        }
    }

    /// What `close` waits for: the flush, and the sync too with `--sync-on-close`.
    pub async fn close(&self, ino: Ino) -> Result<()> {
        match self.limits.sync_on_close {
            true => self.fsync(ino).await,
            false => self.flush(ino).await,
        }
    }

    /// Flushes every open file (at unmount).
    pub async fn flush_all(&self) -> Result<()> {
        let files: Vec<Arc<OpenFile>> = self
            .open
            .lock()
            .expect("open lock")
            .values()
            .cloned()
            .collect();
        let mut first_error = None;
        for file in files {
            let mut state = file.state.lock().await;
            if let Err(e) = self.flush_state(&file, &mut state, false).await {
                tracing::error!(ino = file.ino, error = %e, "flush at unmount failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Allocates bytes `offset..offset+len` of a file (`fallocate` modes 0 and
    /// KEEP_SIZE): the file grows to cover them unless `keep_size`. Nothing is reserved
    /// on the storages: capacity is taken when bytes are written, and bytes never written
    /// read as zeros and cost nothing, as in a hole.
    pub async fn fallocate(&self, ino: Ino, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        let file = self.get_open(ino).ok_or_else(not_open)?;
        let end = offset.checked_add(len).ok_or_else(|| {
            Error::Remote(vg_wire::RemoteError::new(
                vg_wire::ErrorCode::Invalid,
                format!("fallocate {offset}+{len}: past the largest offset"),
            ))
        })?;
        let mut state = file.state.lock().await;
        if !keep_size && end > state.size {
            state.size = end;
            state.mtime = Some(Timestamp::now());
            state.changed = true;
        }
        Ok(())
    }

    /// Copies `len` bytes of file `src` at `src_offset` to file `dst` at `dst_offset`
    /// without moving them (`copy_file_range`): both files are committed first, then the
    /// destination gets slices that name the source's blobs (and a blob of zeros for the
    /// source's holes), in one commit. Returns the bytes copied: fewer past the source's
    /// end.
    pub async fn copy_range(
        &self,
        src: Ino,
        src_offset: u64,
        dst: Ino,
        dst_offset: u64,
        len: u64,
    ) -> Result<u64> {
        if src != dst {
            self.flush(src).await?;
        }
        let file = self.get_open(dst).ok_or_else(not_open)?;
        let mut state = file.state.lock().await;
        self.flush_state(&file, &mut state, false).await?;
        let layout = self.client.layout(src).await?;
        let len = len.min(layout.attr.size.saturating_sub(src_offset));
        if len == 0 {
            return Ok(0);
        }
        let bs = self.client.block_size;
        let mut added: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
        let mut uploaded = Vec::new();
        let mut zeros: Option<BlockId> = None;
        for (src_idx, in_block, range) in cut(src_offset, len as usize, bs) {
            let list = layout
                .blocks
                .get(src_idx as usize)
                .map_or(&[][..], Vec::as_slice);
            let want = in_block as u32..(in_block + range.len()) as u32;
            for (segment, source) in vg_wire::slices::resolve(list, want) {
                let (blob, blob_off) = match source {
                    Some(shown) => shown,
                    None => {
                        if zeros.is_none() {
                            let data = Bytes::from(vec![0u8; bs as usize]);
                            let (blob, holders) = self.client.upload_block(data, false).await?;
                            uploaded.push(stored(blob, &holders));
                            zeros = Some(blob.id);
                        }
                        (zeros.expect("uploaded above"), 0)
                    }
                };
                let at = src_idx * bs as u64 + segment.start as u64 - src_offset + dst_offset;
                for (dst_idx, dst_in, part) in cut(at, segment.len(), bs) {
                    added.entry(dst_idx).or_default().push(Slice {
                        at: dst_in as u32,
                        len: part.len() as u32,
                        blob,
                        blob_off: blob_off + part.start as u32,
                    });
                }
            }
        }
        let size = state.size.max(dst_offset + len);
        let slices: Vec<(u64, Vec<Slice>)> = added.into_iter().collect();
        let attr = self
            .client
            .commit(dst, size, slices, uploaded, None, Commit::Written)
            .await?;
        state.seen = Some((attr.size, attr.mtime));
        let layout = self.client.layout(dst).await?;
        state.load(layout);
        Ok(len)
    }

    /// Takes away what a write, truncate or chown takes on ext4, which the kernel leaves
    /// to the mount (`FUSE_HANDLE_KILLPRIV_V2`): the file's `security.capability` (if
    /// `xattrs`), and, where the caller lacks `CAP_FSETID` (`kill`, as the kernel says),
    /// the set-user-ID bit and the set-group-ID bit of a file its group may execute. The
    /// mode goes into `set` unless it sets one; the mode looked at is the one this client
    /// knows, as the kernel looked at its own cached one before. A set-group-ID bit
    /// without group execute (once mandatory locking's mark) is kept: the kernel takes it
    /// from writers outside the file's group, which the mount cannot tell.
    pub async fn kill_privs(
        &self,
        ino: Ino,
        set: &mut SetAttr,
        kill: bool,
        xattrs: bool,
    ) -> Result<()> {
        if xattrs {
            let xattrs = self.client.xattrs(ino).await?;
            if xattrs.iter().any(|(name, _)| name == CAPABILITY) {
                self.client.remove_xattr(ino, CAPABILITY).await?;
            }
        }
        if !kill || set.perm.is_some() {
            return Ok(());
        }
        // An open file's own view (newer attributes the entry cache holds, a chmod still
        // deferred), under one lock; a file not open here has nothing of this client's
        // to overlay.
        let known = match self.get_open(ino) {
            Some(file) => {
                let state = file.state.lock().await;
                state.attr.clone().map(|mut attr| {
                    self.client.newest(&mut attr);
                    state.overlay(&mut attr);
                    attr
                })
            }
            None => self.client.cached_attr(ino).map(|(attr, _)| attr),
        };
        let attr = match known {
            Some(attr) => attr,
            None => self.getattr(ino).await?,
        };
        if attr.kind != vg_wire::FileKind::Dir {
            set.perm = Some(privs_killed(attr.perm)).filter(|&perm| perm != attr.perm);
        }
        Ok(())
    }

    /// Changes attributes; a size change first commits buffered writes, then truncates
    /// or extends on the nameserver, then reloads the layout. Other changes to a file
    /// with uncommitted data wait for its commit, which carries them.
    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        let Some(file) = self.get_open(ino) else {
            return self.client.setattr(ino, set).await;
        };
        let mut state = file.state.lock().await;
        if set.size.is_none() && state.changed && state.failed.is_none() {
            if let Some(mut attr) = state.attr.clone() {
                state
                    .deferred
                    .get_or_insert_with(SetAttr::default)
                    .merge(set);
                state.overlay(&mut attr);
                return Ok(attr);
            }
        }
        if set.size.is_some() {
            self.flush_state(&file, &mut state, false).await?;
        }
        let mut attr = self.client.setattr(ino, set.clone()).await?;
        if set.size.is_some() {
            let layout = self.client.layout(ino).await?;
            state.load(layout);
        } else {
            state.attr = Some(attr.clone());
            if state.changed {
                attr.size = state.size;
            }
        }
        Ok(attr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_takes_set_user_id_and_executable_set_group_id() {
        assert_eq!(privs_killed(0o6777), 0o0777);
        assert_eq!(privs_killed(0o4755), 0o0755);
        // Set-group-ID without group execute: mandatory locking's mark, kept.
        assert_eq!(privs_killed(0o2745), 0o2745);
        assert_eq!(privs_killed(0o2755), 0o0755);
        assert_eq!(privs_killed(0o1777), 0o1777);
        assert_eq!(privs_killed(0o0644), 0o0644);
    }

    #[test]
    fn cut_on_block_boundaries() {
        assert_eq!(
            cut(0, 10, 4),
            vec![(0, 0, 0..4), (1, 0, 4..8), (2, 0, 8..10)]
        );
        assert_eq!(cut(3, 2, 4), vec![(0, 3, 0..1), (1, 0, 1..2)]);
        assert_eq!(cut(8, 4, 4), vec![(2, 0, 0..4)]);
        assert!(cut(5, 0, 4).is_empty());
        let pieces = cut(4095, 4 << 20, 1 << 20);
        assert_eq!(pieces.len(), 5);
        assert_eq!(pieces.iter().map(|p| p.2.len()).sum::<usize>(), 4 << 20);
    }

    #[test]
    fn parts_join() {
        let parts = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
        assert_eq!(&joined(parts)[..], b"abcd");
    }

    /// The bytes of block `idx` as `parts` plans them, with stored blobs given as a map.
    fn read_parts(
        state: &FileState,
        idx: u64,
        want: Range<u32>,
        blobs: &HashMap<BlockId, Vec<u8>>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for part in state.parts(idx, want) {
            match part {
                Part::Zeros(n) => out.extend(std::iter::repeat_n(0, n)),
                Part::Bytes(b) => out.extend_from_slice(&b),
                Part::Blob { id, range, .. } => {
                    out.extend_from_slice(&blobs[&id][range.start as usize..range.end as usize])
                }
            }
        }
        out
    }

    /// Random writes into a block's extents, against a plain byte model: the extents
    /// never overlap or touch, and read back what was written over the stored slices.
    #[test]
    fn extents_over_slices_match_a_byte_model() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as u32
        };
        const BS: usize = 64;
        for round in 0..3000 {
            let mut state = FileState::default();
            let mut model = vec![0u8; BS];
            let mut blobs = HashMap::new();
            // A stored slice or two under the writes.
            for n in 0..next(3) {
                let at = next(BS as u32);
                let len = 1 + next(BS as u32 - at);
                let bytes: Vec<u8> = (0..len).map(|k| (n * 50 + k) as u8).collect();
                let id = BlockId::of(&bytes);
                model[at as usize..(at + len) as usize].copy_from_slice(&bytes);
                blobs.insert(id, bytes);
                state.add_slices(
                    0,
                    &[Slice {
                        at,
                        len,
                        blob: id,
                        blob_off: 0,
                    }],
                );
            }
            let mut extents = Extents::default();
            for w in 0..1 + next(8) {
                let at = next(BS as u32);
                let len = 1 + next(BS as u32 - at);
                let data: Vec<u8> = (0..len).map(|k| (round + w * 7 + k) as u8 | 1).collect();
                extents.write(at, &data, BS);
                model[at as usize..(at + len) as usize].copy_from_slice(&data);
            }
            let ranges: Vec<(u32, u32)> = extents
                .0
                .iter()
                .map(|(a, b)| (*a, *a + b.len() as u32))
                .collect();
            assert!(
                ranges.windows(2).all(|w| w[0].1 < w[1].0),
                "extents overlap or touch: {ranges:?}"
            );
            state.dirty.insert(0, extents);
            let lo = next(BS as u32);
            let hi = lo + next(BS as u32 - lo + 1);
            assert_eq!(
                read_parts(&state, 0, lo..hi, &blobs),
                &model[lo as usize..hi as usize]
            );
            // Packed for upload, the pieces put back over the stored bytes give the model.
            let (data, pieces) = state.dirty.remove(&0).expect("dirty").pack();
            let mut unpacked = read_parts(&state, 0, 0..BS as u32, &blobs);
            for (at, len, off) in pieces {
                unpacked[at as usize..(at + len) as usize]
                    .copy_from_slice(&data[off as usize..(off + len) as usize]);
            }
            assert_eq!(unpacked, model);
        }
    }

    #[test]
    fn writes_fill_gaps_with_zeros() {
        let mut buf = b"ab".to_vec();
        write_into(&mut buf, 4, b"cd", 8);
        assert_eq!(buf, b"ab\0\0cd");
        write_into(&mut buf, 1, b"X", 8);
        assert_eq!(buf, b"aX\0\0cd");
        // Overwriting and appending in one write.
        write_into(&mut buf, 5, b"yz!", 8);
        assert_eq!(buf, b"aX\0\0cyz!");
    }

    #[test]
    fn a_large_write_allocates_its_whole_block() {
        let mut buf = Vec::new();
        let data = vec![7u8; LARGE_WRITE];
        write_into(&mut buf, 0, &data, 4 * LARGE_WRITE);
        assert_eq!((buf.len(), buf.capacity()), (LARGE_WRITE, 4 * LARGE_WRITE));
        let mut small = Vec::new();
        write_into(&mut small, 0, b"abc", 4 * LARGE_WRITE);
        assert!(small.capacity() < LARGE_WRITE);
    }
}
