//! Open files for the mount: write-back buffering cut on block boundaries, background
//! uploads with bounded memory, reads that see this client's unwritten data, a shared
//! block cache with read-ahead, and commits at flush (close-to-open consistency).
//!
//! Knows nothing of FUSE: the adapter calls [`Files`] with inode numbers and offsets.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::{Mutex, OnceCell, Semaphore};
use tokio::task::JoinHandle;
use vg_wire::{Attr, BlockId, BlockRef, Bytes, Ino, Location, SetAttr, Timestamp};

use super::cache::BlockCache;
use super::entries::keep_newest;
use super::{Client, Error, Result};

/// What a read needs, decided under the file's lock.
struct ReadPlan {
    /// Each piece's range inside its block, and where its bytes are.
    pieces: Vec<(Range<usize>, Source)>,
    /// Blocks to read ahead.
    ahead: Vec<(BlockRef, Locations)>,
}

/// Bytes `range` of a cached block's used part, without a copy (shorter past the end,
/// empty when `range` starts there, as after a truncate).
fn used_range(data: Arc<Vec<u8>>, block: BlockRef, range: Range<usize>) -> Bytes {
    let used = (block.len as usize).min(range.end).min(data.len());
    if range.start >= used {
        return Bytes::new();
    }
    vg_wire::rpc::share(data).slice(range.start..used)
}

/// The pieces of a read as one buffer; most reads lie within one block, with no copy.
fn joined(mut parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        1 => parts.pop().expect("one part"),
        _ => Bytes::from(parts.concat()),
    }
}

/// `bytes` followed by zeros up to `len` (bytes past a block's used part, holes).
fn zero_filled(bytes: Bytes, len: usize) -> Bytes {
    if bytes.len() >= len {
        return bytes;
    }
    let mut filled = Vec::from(bytes);
    filled.resize(len, 0);
    Bytes::from(filled)
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

/// Tunables of the open-file layer.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of block uploads in flight before writers wait.
    pub max_dirty: u64,
    /// Bytes of the block cache.
    pub cache: u64,
    /// Blocks read ahead of a sequential reader.
    pub read_ahead: u64,
}

type Upload = (
    u64,
    Arc<Vec<u8>>,
    JoinHandle<Result<(BlockRef, Vec<Location>)>>,
);

/// A whole-block fetch that concurrent readers share; the error is kept as text.
type Fetch = OnceCell<std::result::Result<Arc<Vec<u8>>, String>>;

/// Where the bytes of one block of an open file come from.
enum Source {
    Bytes(Vec<u8>),
    Block(BlockRef, Locations),
    Hole,
}

/// The storages holding a block, shared: every read plans its pieces with them, and a
/// shared list costs a reference count there, not a copy of every name.
type Locations = Arc<[Location]>;

#[derive(Default)]
struct FileState {
    size: u64,
    mtime: Option<Timestamp>,
    blocks: Vec<Option<BlockRef>>,
    locations: Vec<Locations>,
    /// Blocks being written, not yet sealed for upload.
    dirty: BTreeMap<u64, Vec<u8>>,
    /// Data of the latest sealed upload of each block, until the upload is reaped.
    sealed: BTreeMap<u64, Arc<Vec<u8>>>,
    /// Uploads in seal order.
    uploads: Vec<Upload>,
    /// Uploaded blocks not yet committed.
    pending: BTreeMap<u64, BlockRef>,
    stored: Vec<(BlockId, Vec<String>)>,
    /// Size or content changed since the last commit.
    changed: bool,
    failed: Option<Error>,
    handles: u32,
    /// (size, mtime) when last loaded or committed, to tell if the kernel cache is valid.
    seen: Option<(u64, Timestamp)>,
    /// Attributes when last loaded, committed or set.
    attr: Option<Attr>,
    /// Attribute changes made while the file had uncommitted data (`tar` sets owner and
    /// mode before closing each file): sent with the commit, saving a round trip each.
    deferred: Option<SetAttr>,
}

impl FileState {
    fn load(&mut self, layout: vg_wire::ns::Layout) {
        self.size = layout.attr.size;
        self.mtime = None;
        self.blocks = layout.blocks;
        self.locations = layout.locations.into_iter().map(Locations::from).collect();
        self.seen = Some((layout.attr.size, layout.attr.mtime));
        self.attr = Some(layout.attr);
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

    fn set_block(&mut self, idx: u64, block: BlockRef, locations: Vec<Location>) {
        let i = idx as usize;
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, None);
        }
        if self.locations.len() <= i {
            self.locations.resize(i + 1, Locations::from([]));
        }
        self.blocks[i] = Some(block);
        self.locations[i] = locations.into();
    }

    /// The source of bytes `range` of block `idx`, as this client sees the file now.
    /// Unwritten data is copied out for that range only (reads must not copy whole blocks).
    fn source(&self, idx: u64, range: Range<usize>) -> Source {
        let unwritten = self
            .dirty
            .get(&idx)
            .map(Vec::as_slice)
            .or_else(|| self.sealed.get(&idx).map(|d| d.as_slice()));
        if let Some(data) = unwritten {
            let end = range.end.min(data.len());
            return Source::Bytes(
                data.get(range.start.min(end)..end)
                    .unwrap_or_default()
                    .to_vec(),
            );
        }
        match self.blocks.get(idx as usize).copied().flatten() {
            Some(block) => Source::Block(
                block,
                self.locations
                    .get(idx as usize)
                    .cloned()
                    .unwrap_or_else(|| Locations::from([])),
            ),
            None => Source::Hole,
        }
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
    cache: StdMutex<BlockCache>,
    /// Whole-block fetches in progress, so concurrent readers share one.
    fetching: StdMutex<HashMap<BlockId, Arc<Fetch>>>,
    permits: Arc<Semaphore>,
    open: StdMutex<HashMap<Ino, Arc<OpenFile>>>,
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
        Arc::new(Files {
            cache: StdMutex::new(BlockCache::new(limits.cache)),
            client,
            limits,
            fetching: StdMutex::default(),
            permits,
            open: StdMutex::default(),
        })
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
        let mut state = loop {
            let file = {
                let mut open = self.open.lock().expect("open lock");
                open.entry(ino)
                    .or_insert_with(|| {
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
                break state;
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
                _ => self.client.layout(ino).await?,
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
        self.release_locked(ino, &mut state);
    }

    /// Drops one handle; forgets the file once no handle is left and nothing is pending.
    /// The layout stays cached (for the keep-cache check) while the entry exists; it is
    /// dropped when idle so that memory does not grow with every file ever opened. The
    /// entry is removed under the state lock, which `open` re-checks after taking it.
    fn release_locked(&self, ino: Ino, state: &mut FileState) {
        state.handles = state.handles.saturating_sub(1);
        if state.handles == 0 && state.is_clean() {
            self.open.lock().expect("open lock").remove(&ino);
        }
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

    async fn whole_block(&self, block: BlockRef, locations: &[Location]) -> Result<Arc<Vec<u8>>> {
        if let Some(data) = self.cache.lock().expect("cache lock").get(&block.id) {
            return Ok(data);
        }
        let cell = self
            .fetching
            .lock()
            .expect("fetching lock")
            .entry(block.id)
            .or_default()
            .clone();
        let result = cell
            .get_or_init(|| async {
                match self.client.read_block(block.id, locations, 0, 0).await {
                    Ok(data) => {
                        let data = Arc::new(data);
                        self.cache
                            .lock()
                            .expect("cache lock")
                            .insert(block.id, data.clone());
                        Ok(data)
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .clone();
        self.fetching
            .lock()
            .expect("fetching lock")
            .remove(&block.id);
        result.map_err(|reason| Error::Unreadable {
            block: block.id.to_hex(),
            reason,
        })
    }

    /// Bytes `range` of a block's used part (shorter past `block.len`; the caller fills
    /// with zeros); from the block cache without a copy.
    async fn block_range(
        &self,
        block: BlockRef,
        locations: &[Location],
        range: Range<usize>,
        whole: bool,
    ) -> Result<Bytes> {
        let used = (block.len as usize).min(range.end);
        Ok(if range.start >= used {
            Bytes::new()
        } else if whole || self.cache.lock().expect("cache lock").contains(&block.id) {
            used_range(
                self.whole_block(block, locations).await?,
                block,
                range.clone(),
            )
        } else {
            Bytes::from(
                self.client
                    .read_block(
                        block.id,
                        locations,
                        range.start as u32,
                        (used - range.start) as u32,
                    )
                    .await?,
            )
        })
    }

    /// Reads up to `len` bytes at `offset`. `sequential` readers get whole blocks and
    /// read-ahead; others get byte ranges.
    pub async fn read(
        self: &Arc<Self>,
        ino: Ino,
        offset: u64,
        len: usize,
        sequential: bool,
    ) -> Result<Bytes> {
        let file = self.get_open(ino).ok_or_else(|| {
            Error::Remote(vg_wire::RemoteError::new(
                vg_wire::ErrorCode::Invalid,
                "read of a file that is not open",
            ))
        })?;
        let plan = {
            let state = file.state.lock().await;
            if offset >= state.size {
                return Ok(Bytes::new());
            }
            self.plan(&state, offset, len, sequential)
        };
        for (block, locations) in plan.ahead {
            if !self.cache.lock().expect("cache lock").contains(&block.id) {
                let files = self.clone();
                tokio::spawn(async move {
                    let _ = files.whole_block(block, &locations).await;
                });
            }
        }
        let mut parts = Vec::with_capacity(plan.pieces.len());
        for (want, source) in plan.pieces {
            let bytes = match source {
                Source::Bytes(data) => Bytes::from(data),
                Source::Block(block, locations) => {
                    self.block_range(
                        block,
                        &locations,
                        want.clone(),
                        sequential || want.len() >= (1 << 20),
                    )
                    .await?
                }
                Source::Hole => Bytes::new(),
            };
            parts.push(zero_filled(bytes, want.len()));
        }
        Ok(joined(parts))
    }

    /// Where each piece of a read comes from (its range in the block, and its source),
    /// and which blocks to read ahead.
    fn plan(&self, state: &FileState, offset: u64, len: usize, sequential: bool) -> ReadPlan {
        let len = len.min(state.size.saturating_sub(offset) as usize);
        let pieces = cut(offset, len, self.client.block_size);
        let last = pieces.last().map(|p| p.0).unwrap_or(0);
        let ahead = match sequential {
            true => (last + 1..=last + self.limits.read_ahead)
                .filter_map(|idx| match state.source(idx, 0..0) {
                    Source::Block(block, locations) => Some((block, locations)),
                    _ => None,
                })
                .collect(),
            false => Vec::new(),
        };
        let pieces = pieces
            .into_iter()
            .map(|(idx, in_block, range)| {
                let want = in_block..in_block + range.len();
                (want.clone(), state.source(idx, want))
            })
            .collect();
        ReadPlan { pieces, ahead }
    }

    /// Buffers a write; full blocks are uploaded in the background. Waits when too much
    /// data is in flight (back-pressure). Errors of earlier background uploads surface here
    /// or at the next flush.
    pub async fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        let file = self.get_open(ino).ok_or_else(|| {
            Error::Remote(vg_wire::RemoteError::new(
                vg_wire::ErrorCode::Invalid,
                "write to a file that is not open",
            ))
        })?;
        let mut state = file.state.lock().await;
        self.reap(&mut state, false).await;
        if let Some(e) = state.failed.take() {
            return Err(e);
        }
        let bs = self.block_size() as usize;
        for (idx, in_block, range) in cut(offset, data.len(), self.client.block_size) {
            if !state.dirty.contains_key(&idx) {
                self.limit_dirty(&file, &mut state).await;
                let base = self.base_of(&state, idx).await?;
                state.dirty.insert(idx, base);
            }
            let buf = state.dirty.get_mut(&idx).expect("inserted above");
            write_into(buf, in_block, &data[range], bs);
            if buf.len() == bs {
                self.seal(&file, &mut state, idx).await;
            }
        }
        state.size = state.size.max(offset + data.len() as u64);
        state.mtime = Some(Timestamp::now());
        // This write's time supersedes a modification time set earlier.
        if let Some(set) = &mut state.deferred {
            set.mtime = None;
        }
        state.changed = true;
        Ok(())
    }

    /// The current content of block `idx`, as the starting point of a partial write.
    async fn base_of(&self, state: &FileState, idx: u64) -> Result<Vec<u8>> {
        let bs = self.block_size();
        let in_file = state.size.saturating_sub(idx * bs).min(bs) as usize;
        let mut base = match state.source(idx, 0..bs as usize) {
            Source::Bytes(data) => data,
            Source::Block(block, locations) if in_file > 0 => {
                let data = self.whole_block(block, &locations).await?;
                data[..(block.len as usize).min(data.len())].to_vec()
            }
            _ => Vec::new(),
        };
        base.truncate(in_file);
        Ok(base)
    }

    /// Makes room for one more partly written block: their number per file is bounded
    /// (random writers), the oldest is sealed first.
    async fn limit_dirty(&self, file: &OpenFile, state: &mut FileState) {
        let max_blocks = (self.limits.max_dirty / self.block_size() / 2).max(2) as usize;
        while state.dirty.len() >= max_blocks {
            let oldest = *state.dirty.keys().next().expect("non-empty");
            self.seal(file, state, oldest).await;
        }
    }

    /// Starts the upload of a dirty block (waiting for room among uploads in flight).
    async fn seal(&self, file: &OpenFile, state: &mut FileState, idx: u64) {
        let Some(mut buf) = state.dirty.remove(&idx) else {
            return;
        };
        if buf.is_empty() {
            // Nothing was written into it (it lies past a truncation): it stays a hole.
            return;
        }
        // A block allocated whole for a writer that stopped short gives back the rest: the
        // cache counts what blocks hold, not what they could.
        buf.shrink_to_fit();
        let data = Arc::new(buf);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(kib(data.len() as u64).max(1))
            .await
            .expect("semaphore is never closed");
        let client = self.client.clone();
        let upload = data.clone();
        let ino = file.ino;
        let task = tokio::spawn(async move {
            let result = client.upload_block(vg_wire::rpc::share(upload)).await;
            if let Err(e) = &result {
                tracing::warn!(ino, block = idx, error = %e, "block upload failed");
            }
            drop(permit);
            result
        });
        state.sealed.insert(idx, data.clone());
        state.uploads.push((idx, data, task));
        if state.uploads.len() > 64 {
            self.reap(state, false).await;
        }
    }

    /// Collects finished uploads (all of them, waiting, with `wait`), in seal order.
    async fn reap(&self, state: &mut FileState, wait: bool) {
        while let Some((_, _, task)) = state.uploads.first() {
            if !wait && !task.is_finished() {
                break;
            }
            let (idx, data, task) = state.uploads.remove(0);
            match task.await.expect("upload task does not panic") {
                Ok((block, holders)) => {
                    self.cache
                        .lock()
                        .expect("cache lock")
                        .insert(block.id, data.clone());
                    state
                        .stored
                        .push((block.id, holders.iter().map(|l| l.name.clone()).collect()));
                    // A later write to the same block may have sealed newer data already.
                    let latest = state
                        .sealed
                        .get(&idx)
                        .is_some_and(|d| Arc::ptr_eq(d, &data));
                    if latest {
                        state.sealed.remove(&idx);
                        state.set_block(idx, block, holders);
                        // A block replaced before its commit will never be committed.
                        if let Some(old) = state.pending.insert(idx, block) {
                            self.client.unhold([old.id]);
                        }
                    } else {
                        self.client.unhold([block.id]);
                    }
                }
                Err(e) => {
                    state.sealed.remove(&idx);
                    state.failed.get_or_insert(e);
                }
            }
        }
    }

    async fn flush_state(&self, file: &OpenFile, state: &mut FileState) -> Result<()> {
        let dirty: Vec<u64> = state.dirty.keys().copied().collect();
        for idx in dirty {
            self.seal(file, state, idx).await;
        }
        self.reap(state, true).await;
        if let Some(e) = state.failed.take() {
            // The data of the failed upload is gone; what was committed before stays.
            self.client.unhold(state.pending.values().map(|b| b.id));
            state.pending.clear();
            state.stored.clear();
            state.changed = false;
            // Attribute changes made while writing are lost with the data.
            state.deferred = None;
            if let Ok(layout) = self.client.layout(file.ino).await {
                state.load(layout);
            }
            return Err(e);
        }
        if !state.changed {
            return Ok(());
        }
        let blocks: Vec<(u64, BlockRef)> = state.pending.iter().map(|(i, b)| (*i, *b)).collect();
        let stored = std::mem::take(&mut state.stored);
        let set = state.deferred.take();
        match self
            .client
            .commit(file.ino, state.size, blocks, stored, set)
            .await
        {
            Ok(attr) => {
                state.seen = Some((attr.size, attr.mtime));
                state.attr = Some(attr);
                state.pending.clear();
                state.changed = false;
                state.mtime = None;
                Ok(())
            }
            // Unlinked while open: nothing is left to commit to.
            Err(e) if e.code() == vg_wire::ErrorCode::NotFound => {
                state.pending.clear();
                state.changed = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Uploads everything buffered for the file and commits it: after this returns, the
    /// data is on the storages and visible to other clients on their next open.
    pub async fn flush(&self, ino: Ino) -> Result<()> {
        let Some(file) = self.get_open(ino) else {
            return Ok(());
        };
        let mut state = file.state.lock().await;
        self.flush_state(&file, &mut state).await
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
            if let Err(e) = self.flush_state(&file, &mut state).await {
                tracing::error!(ino = file.ino, error = %e, "flush at unmount failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
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
            self.flush_state(&file, &mut state).await?;
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
    fn cached_ranges_stop_at_the_used_part() {
        let data = Arc::new(b"0123456789".to_vec());
        let block = BlockRef {
            id: BlockId::of(&data),
            len: 6,
        };
        let range = |r| used_range(data.clone(), block, r);
        assert_eq!(&range(2..5)[..], b"234");
        assert_eq!(&range(4..9)[..], b"45");
        // Past the used part (a truncated block), and past the bytes themselves.
        assert!(range(6..8).is_empty());
        assert!(range(12..20).is_empty());
        assert_eq!(&zero_filled(range(4..9), 5)[..], b"45\0\0\0");
        let parts = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
        assert_eq!(&joined(parts)[..], b"abcd");
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

    #[test]
    fn source_prefers_unwritten_data() {
        let mut state = FileState::default();
        let block = BlockRef {
            id: BlockId::of(b"x"),
            len: 1,
        };
        state.set_block(2, block, vec![]);
        assert!(matches!(state.source(0, 0..usize::MAX), Source::Hole));
        assert!(matches!(state.source(2, 0..usize::MAX), Source::Block(b, _) if b == block));
        state.sealed.insert(2, Arc::new(b"sealed".to_vec()));
        assert!(
            matches!(state.source(2, 0..usize::MAX), Source::Bytes(ref d) if d.as_slice() == b"sealed")
        );
        state.dirty.insert(2, b"dirty".to_vec());
        assert!(
            matches!(state.source(2, 0..usize::MAX), Source::Bytes(ref d) if d.as_slice() == b"dirty")
        );
    }
}
