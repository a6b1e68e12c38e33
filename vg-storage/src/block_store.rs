//! Blocks on the local disk.
//!
//! Layout under the root: `blocks/ab/<64 hex>` holds a block's bytes, then a CRC-32
//! (little-endian) of every 64 KiB chunk, so a byte range can be verified without
//! hashing the whole block, then a footer: the block's length (u32, little-endian) and
//! `vgb1`, which the scan at start checks against the file's size. `tmp/` holds
//! uploads in progress. A block file is written to `tmp/`, fsynced, then renamed into
//! place: a crash never leaves a half block under a real name, and a block file is never
//! modified in place. (Stores from before the checksums moved into the block file keep
//! them in `<64 hex>.crc`; the scan at start moves them in.) Blocks of at most
//! [`SMALL_BLOCK`] bytes are appended to volume files instead (`volumes/`, see
//! [`crate::volumes`]): a file per block cost small files four journal commits each.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tracing::{info, warn};
use vg_wire::disk::{read_spare, sync_dir, AlignedBuf, CacheFlush, DIRECT_ALIGN};
use vg_wire::storage::CHUNK;
use vg_wire::{BlockId, Bytes};

use crate::error::{io_err, Error, Result};
use crate::volumes::Volumes;

/// Blocks up to this size go to volume files. Larger ones are written with O_DIRECT to a
/// file of their own, where the journal commits are few against the bytes.
pub const SMALL_BLOCK: usize = 256 << 10;
/// How long the volumes must be left alone before zeros are written ahead of need (the
/// rest of the volume in use, a spare).
pub const SPARE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Marks the end of a block file.
const MAGIC: &[u8; 4] = b"vgb1";
/// Bytes of the footer: length and magic.
const FOOTER: u64 = 8;

/// Size of the file of a block of `len` bytes: the bytes, 4 per chunk, the footer.
fn file_len(len: u64) -> u64 {
    len + 4 * len.div_ceil(CHUNK as u64) + FOOTER
}

/// The footer of a block of `len` bytes.
fn footer(len: u32) -> [u8; FOOTER as usize] {
    let mut footer = [0u8; FOOTER as usize];
    footer[..4].copy_from_slice(&len.to_le_bytes());
    footer[4..].copy_from_slice(MAGIC);
    footer
}

/// The block length a file holds, from its last bytes and its size, if they agree.
fn block_len(size: u64, last: &[u8]) -> Option<u32> {
    let footer: &[u8; FOOTER as usize] = last
        .get(last.len().checked_sub(FOOTER as usize)?..)?
        .try_into()
        .ok()?;
    let len = u32::from_le_bytes(footer[..4].try_into().expect("4 bytes"));
    (&footer[4..] == MAGIC && len > 0 && file_len(u64::from(len)) == size).then_some(len)
}

/// The block length stored in the file at `path`, if its footer and size agree.
fn stored_len(path: &Path) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut last = [0u8; FOOTER as usize];
    file.read_exact_at(&mut last, size.checked_sub(FOOTER)?)
        .ok()?;
    block_len(size, &last)
}

/// CRC-32 of each chunk of `data`, little-endian, as the block file keeps them.
fn chunk_crcs(data: &[u8]) -> Vec<u8> {
    crc_bytes(&vg_wire::storage::chunk_crcs(data))
}

/// Chunk CRC-32s little-endian, as block files and volumes keep them.
fn crc_bytes(crcs: &[u32]) -> Vec<u8> {
    crcs.iter().copied().flat_map(u32::to_le_bytes).collect()
}

/// Every block stored under `root`, read without opening the store (for tools and tests):
/// the block, the file holding its bytes, their offset there, and the block's length.
pub fn on_disk(root: &Path) -> Result<Vec<(BlockId, PathBuf, u64, u32)>> {
    let mut found = crate::volumes::on_disk(&root.join("volumes"))?;
    let blocks = root.join("blocks");
    if blocks.exists() {
        for (path, id) in block_files(&blocks)? {
            if let (Some(id), Some(len)) = (id, stored_len(&path)) {
                found.push((id, path, 0, len));
            }
        }
    }
    Ok(found)
}

/// Every file in the block directory `blocks` (`ab/<64 hex>`, and strays), with the block
/// its name gives, if it gives one.
fn block_files(blocks: &Path) -> Result<Vec<(PathBuf, Option<BlockId>)>> {
    let mut files = Vec::new();
    for dir in fs::read_dir(blocks).map_err(io_err(format!("read {}", blocks.display())))? {
        let dir = dir
            .map_err(io_err(format!("read {}", blocks.display())))?
            .path();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))? {
            let path = entry
                .map_err(io_err(format!("read {}", dir.display())))?
                .path();
            let id = path.file_name().and_then(|n| n.to_str()?.parse().ok());
            files.push((path, id));
        }
    }
    Ok(files)
}

/// Bytes read from a block, with their checksums when they are whole chunks.
#[derive(Debug)]
pub struct Chunks {
    /// The bytes asked for.
    pub data: Vec<u8>,
    /// The CRC-32 of each chunk of `data`, if it starts and ends on chunk bounds (or the
    /// block's end); empty otherwise.
    pub crcs: Vec<u32>,
}

/// A read of part of a block, planned: [`BlockStore::plan_read`].
pub struct ReadPlan {
    id: BlockId,
    /// The copy it reads.
    pub copy: CopyId,
    file: Arc<File>,
    /// Where the block's bytes start in `file`.
    base: u64,
    /// The path of `file` when it is a block file (not a volume).
    direct: Option<PathBuf>,
    /// That file opened with O_DIRECT, once a piece of it is read cold (`None` inside
    /// if it cannot be).
    direct_file: OnceLock<Option<File>>,
    /// The chunks the read touches, in bytes of the block.
    pub chunks: Range<usize>,
    /// The bytes asked for.
    wanted: Range<usize>,
    /// The stored CRC-32 of each chunk of `chunks`.
    pub crcs: Vec<u32>,
}

impl ReadPlan {
    /// The block file opened with O_DIRECT, opened by the first cold piece of the read.
    fn direct_file(&self) -> Option<&File> {
        self.direct_file
            .get_or_init(|| self.direct.as_deref().and_then(|p| open_direct(p).ok()))
            .as_ref()
    }

    /// Checks bytes `range` of the block, read for this plan, against the stored
    /// checksums.
    fn check(&self, range: &Range<usize>, buf: &[u8]) -> Result<()> {
        let first = (range.start - self.chunks.start) / CHUNK;
        let stored = &self.crcs[first..first + range.len().div_ceil(CHUNK)];
        if vg_wire::storage::chunk_crcs(buf) != stored {
            return Err(Error::Corrupt {
                block: self.id,
                reason: format!("checksum mismatch in bytes {}..{}", range.start, range.end),
            });
        }
        Ok(())
    }

    /// Whether the bytes asked for are whole chunks (or end at the block's end), so that
    /// they travel with their checksums.
    pub fn is_whole_chunks(&self) -> bool {
        self.chunks == self.wanted
    }
}

/// Syncs the file system holding `root` (`syncfs`).
fn sync_file_system(root: &Path) -> Result<()> {
    let dir = File::open(root).map_err(io_err(format!("open {}", root.display())))?;
    // SAFETY: an open descriptor.
    match unsafe { libc::syncfs(dir.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(io_err(format!("syncfs {}", root.display()))(
            std::io::Error::last_os_error(),
        )),
    }
}

/// Writes `data` then `trailer` to a new file, and syncs it with `sync`. The whole pages
/// of `data` go through O_DIRECT when `data` is aligned in memory: measured on our
/// machine, copying into the page cache and writing it back costs several times the disk
/// write itself (buffered+fsync 389 MiB/s, direct 2,100 MiB/s), and a block is synced
/// soon anyway. The rest, and everything on file systems without O_DIRECT (tmpfs), is a
/// plain write.
fn write_block_file(path: &Path, data: &[u8], trailer: &[u8], sync: bool) -> std::io::Result<File> {
    let mut file = File::create(path)?;
    let mut direct = 0;
    if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
        let pages = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        if pages > 0 {
            match write_direct(path, &data[..pages]) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
                Ok(()) => direct = pages,
            }
        }
    }
    file.seek(SeekFrom::Start(direct as u64))?;
    file.write_all(&data[direct..])?;
    file.write_all(trailer)?;
    if sync {
        file.sync_data()?;
    }
    Ok(file)
}

/// Writes whole pages from an aligned buffer at the start of an existing file, through
/// O_DIRECT (the caller syncs).
fn write_direct(path: &Path, pages: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    file.write_all(pages)
}

/// Whether the page cache holds every page of `len` bytes of `file` at `offset`; `None`
/// where the kernel cannot tell (`cachestat`, Linux 6.5).
fn cached(file: &File, offset: u64, len: usize) -> Option<bool> {
    /// `cachestat`'s number on every architecture.
    const SYS_CACHESTAT: libc::c_long = 451;
    let range: [u64; 2] = [offset, len as u64];
    // nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted.
    let mut stat = [0u64; 5];
    // SAFETY: the descriptor is open for the call; the kernel reads `range` and writes
    // `stat`, both live and of the layout it expects (two and five u64s).
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            range.as_ptr(),
            stat.as_mut_ptr(),
            0u32,
        )
    };
    let pages = (offset + len as u64).div_ceil(4096) - offset / 4096;
    (r == 0).then_some(stat[0] >= pages)
}

/// The file at `path` opened for reads with O_DIRECT.
fn open_direct(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Reads `len` bytes at `offset` (aligned) of `file`, opened with O_DIRECT, into aligned
/// memory handed on as it is.
fn read_direct(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    if !offset.is_multiple_of(DIRECT_ALIGN as u64) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // Whole sectors, into memory not zeroed first (zeroing took 9% of a storage's CPU).
    let buf = AlignedBuf::read_at(file, offset, len)?;
    Ok(buf.into_bytes(len))
}

/// Reads exactly `len` bytes of `file` at `offset` into a new vector, without zeroing it
/// first: that took a tenth of a storage's CPU while serving a sequential read.
fn read_new(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let (want, at) = (len - buf.len(), offset + buf.len() as u64);
        if read_spare(file, &mut buf, want, at)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf)
}

/// What was written and not yet synced, and how far the sync thread got.
#[derive(Default)]
struct Unsynced {
    /// Writes so far, and writes on disk: a write is on disk once `synced` passes its
    /// number.
    written: u64,
    synced: u64,
    /// Block files, synced with their directories.
    files: Vec<Arc<File>>,
    /// Volume files (see [`Volumes::sync`]).
    volumes: Vec<Arc<File>>,
    dirs: BTreeSet<PathBuf>,
    /// Why a sync failed: nothing written since can be promised durable.
    failed: Option<String>,
    closing: bool,
}

/// Syncs written blocks in the background, all those written meanwhile in one go (group
/// commit), starting again as soon as it ends if more were written.
#[derive(Default)]
struct Syncer {
    state: Mutex<Unsynced>,
    /// Wakes the thread (something written) and the waiters (something synced).
    changed: Condvar,
    /// Syncs volume files (without their inodes, where the file system would write them).
    flush: Arc<CacheFlush>,
}

impl Syncer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Unsynced> {
        self.state.lock().expect("syncer lock")
    }

    /// Notes a new block file and its directory to sync.
    fn add_file(&self, file: Arc<File>, dir: PathBuf) {
        let mut state = self.lock();
        state.written += 1;
        state.files.push(file);
        state.dirs.insert(dir);
        self.changed.notify_all();
    }

    /// Notes a volume file to sync.
    fn add_volume(&self, file: Arc<File>) {
        let mut state = self.lock();
        state.written += 1;
        state.volumes.push(file);
        self.changed.notify_all();
    }

    fn run(&self) {
        loop {
            let (target, files, volumes, dirs) = {
                let mut state = self.lock();
                while state.written == state.synced && !state.closing {
                    state = self.changed.wait(state).expect("syncer lock");
                }
                if state.closing {
                    return;
                }
                let files = std::mem::take(&mut state.files);
                let volumes = std::mem::take(&mut state.volumes);
                (
                    state.written,
                    files,
                    volumes,
                    std::mem::take(&mut state.dirs),
                )
            };
            let mut seen = HashSet::new();
            let mut result = Ok(());
            for file in files.iter().filter(|f| seen.insert(Arc::as_ptr(f))) {
                result = result.and_then(|()| file.sync_data().map_err(|e| e.to_string()));
            }
            let volumes = volumes
                .iter()
                .filter(|f| seen.insert(Arc::as_ptr(f)))
                .map(|f| &**f);
            result = result.and_then(|()| self.flush.sync(volumes).map_err(|e| e.to_string()));
            for dir in &dirs {
                result = result
                    .and_then(|()| sync_dir(dir).map_err(|e| format!("{}: {e}", dir.display())));
            }
            let mut state = self.lock();
            if let Err(e) = result {
                tracing::error!(error = %e, "background sync failed; blocks are no longer promised durable");
                state.failed.get_or_insert(e);
            }
            state.synced = target;
            self.changed.notify_all();
        }
    }

    /// Blocks until everything written before the call is on disk.
    fn wait(&self) -> std::result::Result<(), String> {
        let mut state = self.lock();
        let target = state.written;
        while state.synced < target && state.failed.is_none() {
            state = self.changed.wait(state).expect("syncer lock");
        }
        state.failed.clone().map_or(Ok(()), Err)
    }

    fn close(&self) {
        self.lock().closing = true;
        self.changed.notify_all();
    }
}

/// One stored copy of a block, told apart from the copies of the same block stored
/// before or after it here: a read or scrub that found the bytes it read corrupt deletes
/// that copy only, not a good one stored since under the same name (re-replicated
/// after the corrupt one was found, or the same bytes written anew).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyId(u64);

/// Where a block is in its life on this storage, with its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Its files are being written; its space is taken. Listed, as the upload will
    /// report it once written.
    Writing(u32, CopyId),
    /// Stored.
    Stored(u32, CopyId),
    /// Its files are being removed. No longer listed; its space is freed once they are
    /// gone.
    Removing(u32),
}

impl Held {
    /// Its length, if it counts as held.
    fn listed(self) -> Option<u32> {
        match self {
            Held::Writing(len, _) | Held::Stored(len, _) => Some(len),
            Held::Removing(_) => None,
        }
    }

    /// Which copy it is, if it counts as held.
    fn copy(self) -> Option<CopyId> {
        match self {
            Held::Writing(_, copy) | Held::Stored(_, copy) => Some(copy),
            Held::Removing(_) => None,
        }
    }
}

/// The blocks of one storage.
pub struct BlockStore {
    root: PathBuf,
    capacity: u64,
    used: AtomicU64,
    /// Absent → `Writing` → `Stored` (or absent, if the write failed) → `Removing` →
    /// absent. A put of a block that is being written or removed waits on `settled`
    /// until that is done.
    blocks: Mutex<HashMap<BlockId, Held>>,
    settled: Condvar,
    /// The number of the next copy stored ([`CopyId`]).
    copies: AtomicU64,
    tmp_seq: AtomicU64,
    volumes: Volumes,
    /// Blocks up to this size go to the volumes.
    small: usize,
    syncer: Arc<Syncer>,
}

impl Drop for BlockStore {
    fn drop(&mut self) {
        self.syncer.close();
    }
}

impl BlockStore {
    /// Opens (creating if needed) the store at `root`, scans it, and deletes blocks whose
    /// files are damaged (a checksum file missing or of the wrong length for the block).
    /// Returns the store and the number of bad blocks removed. The bytes themselves are
    /// not hashed here, which would make a start take as long as reading the whole disk:
    /// every read checks its chunks' CRCs and the scrub re-hashes everything in the
    /// background.
    pub fn open(root: &Path, capacity: u64) -> Result<(Self, usize)> {
        Self::open_with(root, capacity, SMALL_BLOCK)
    }

    /// [`BlockStore::open`], with blocks up to `small` bytes going to the volumes.
    fn open_with(root: &Path, capacity: u64, small: usize) -> Result<(Self, usize)> {
        let blocks = root.join("blocks");
        let tmp = root.join("tmp");
        fs::create_dir_all(&blocks).map_err(io_err(format!("create {}", blocks.display())))?;
        // Anything in tmp/ is an upload a crash interrupted.
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let (volumes, small_blocks) = Volumes::open(&root.join("volumes"))?;
        let store = BlockStore {
            root: root.to_path_buf(),
            capacity,
            used: AtomicU64::new(0),
            blocks: Mutex::default(),
            settled: Condvar::new(),
            copies: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
            small,
            syncer: Arc::new(Syncer {
                flush: volumes.cache_flush(),
                ..Syncer::default()
            }),
            volumes,
        };
        // Blocks a previous process wrote may not be synced yet: make them durable
        // before this one promises that everything it acknowledged is.
        sync_file_system(root)?;
        {
            let syncer = store.syncer.clone();
            std::thread::Builder::new()
                .name("block-sync".into())
                .spawn(move || syncer.run())
                .map_err(io_err("start the block sync thread"))?;
        }
        let mut bad = 0;
        let mut sizes: HashMap<BlockId, u32> = small_blocks.into_iter().collect();
        for (path, id) in block_files(&blocks)? {
            let Some(id) = id else {
                if path.extension().is_none_or(|e| e != "crc") {
                    warn!(path = %path.display(), "ignoring stray file in block directory");
                }
                continue;
            };
            match store.intact_files(&id) {
                Some(len) => {
                    sizes.insert(id, len);
                }
                None => {
                    warn!(block = %id, "block files are damaged; deleting them");
                    store.remove_files(&id);
                    bad += 1;
                }
            }
        }
        store
            .used
            .store(sizes.values().map(|&s| s as u64).sum(), Ordering::Relaxed);
        info!(root = %root.display(), blocks = sizes.len(), bad, "block store scanned");
        *store.lock() = sizes
            .into_iter()
            .map(|(id, len)| (id, Held::Stored(len, store.new_copy())))
            .collect();
        Ok((store, bad))
    }

    fn path(&self, id: &BlockId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("blocks").join(&hex[..2]).join(hex)
    }

    fn crc_path(&self, id: &BlockId) -> PathBuf {
        let mut path = self.path(id).into_os_string();
        path.push(".crc");
        PathBuf::from(path)
    }

    /// Bytes used by blocks.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlockId, Held>> {
        self.blocks.lock().expect("blocks lock")
    }

    /// Every block held (or being written), with its length.
    pub fn list(&self) -> Vec<(BlockId, u32)> {
        self.lock()
            .iter()
            .filter_map(|(id, held)| Some((*id, held.listed()?)))
            .collect()
    }

    /// The length of a block, if held (or being written).
    pub fn len_of(&self, id: &BlockId) -> Option<u32> {
        self.lock().get(id)?.listed()
    }

    /// Which copy of block `id` is held here now, if any.
    pub fn copy_of(&self, id: &BlockId) -> Option<CopyId> {
        self.lock().get(id)?.copy()
    }

    /// Which copy of block `id` is stored here now, if one is (not one being written).
    pub fn stored_copy_of(&self, id: &BlockId) -> Option<CopyId> {
        match self.lock().get(id)? {
            Held::Stored(_, copy) => Some(*copy),
            _ => None,
        }
    }

    fn new_copy(&self) -> CopyId {
        CopyId(self.copies.fetch_add(1, Ordering::Relaxed))
    }

    /// Stores a block after checking that its bytes match its name. Storing a block that
    /// is already present succeeds without writing.
    pub fn put(&self, id: &BlockId, data: &[u8]) -> Result<()> {
        if !id.names(data) {
            return Err(Error::Corrupt {
                block: *id,
                reason: "uploaded bytes do not match the block name".into(),
            });
        }
        self.put_checked(id, data, true)
    }

    /// Stores a block whose bytes another storage has already checked against its name
    /// (a pipeline forward: QUIC authenticates every packet on the way, so re-hashing
    /// would only repeat the first storage's work). Synced before it returns with `sync`,
    /// else by the sync thread soon after ([`BlockStore::wait_synced`]).
    pub fn put_checked(&self, id: &BlockId, data: &[u8], sync: bool) -> Result<()> {
        self.put_received(id, data, &vg_wire::storage::chunk_crcs(data), sync)
    }

    /// [`BlockStore::put_checked`] with the chunks' CRC-32s (`crcs`), computed as the
    /// bytes arrived (`vg_wire::storage::ChunkCrcs`).
    pub fn put_received(&self, id: &BlockId, data: &[u8], crcs: &[u32], sync: bool) -> Result<()> {
        let len = data.len() as u32;
        let copy = {
            let mut blocks = self.lock();
            // Another upload of this block may still be writing it: acknowledging now
            // would promise bytes not yet written (or never, if that write fails).
            while let Some(Held::Writing(..) | Held::Removing(_)) = blocks.get(id) {
                blocks = self.settled.wait(blocks).expect("blocks lock");
            }
            if blocks.contains_key(id) {
                drop(blocks);
                // Held already, perhaps written by an upload that did not ask for a sync.
                return match sync {
                    true => self.wait_synced(),
                    false => Ok(()),
                };
            }
            let used = self.used.load(Ordering::Relaxed);
            if used + len as u64 > self.capacity {
                return Err(Error::NoSpace {
                    block: *id,
                    len: len as u64,
                    free: self.capacity.saturating_sub(used),
                });
            }
            // Reserve the space now so concurrent uploads cannot overshoot the capacity.
            self.used.fetch_add(len as u64, Ordering::Relaxed);
            let copy = self.new_copy();
            blocks.insert(*id, Held::Writing(len, copy));
            copy
        };
        let result = self.write_files(id, data, crcs, sync);
        let settled = match result {
            Ok(()) => Some(Held::Stored(len, copy)),
            Err(_) => {
                self.used.fetch_sub(len as u64, Ordering::Relaxed);
                None
            }
        };
        self.settle(id, settled);
        result
    }

    /// Ends the write or removal of `id`, leaving it `held` (or gone), and wakes the puts
    /// waiting for it.
    fn settle(&self, id: &BlockId, held: Option<Held>) {
        let mut blocks = self.lock();
        match held {
            Some(held) => _ = blocks.insert(*id, held),
            None => _ = blocks.remove(id),
        }
        self.settled.notify_all();
    }

    fn write_files(&self, id: &BlockId, data: &[u8], crcs: &[u32], sync: bool) -> Result<()> {
        let mut trailer = crc_bytes(crcs);
        if data.len() <= self.small {
            if sync {
                return self.volumes.put(id, data, &trailer);
            }
            let file = self.volumes.put_unsynced(id, data, &trailer)?;
            self.syncer.add_volume(file);
            return Ok(());
        }
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{seq}.block"));
        trailer.extend_from_slice(&footer(data.len() as u32));
        let file = write_block_file(&tmp, data, &trailer, sync)
            .map_err(io_err(format!("write {}", tmp.display())))?;
        let path = self.path(id);
        let dir = path.parent().expect("block path has a parent");
        self.make_dir(dir)?;
        fs::rename(&tmp, &path).map_err(io_err(format!("rename into {}", dir.display())))?;
        if !sync {
            self.syncer.add_file(Arc::new(file), dir.to_path_buf());
            return Ok(());
        }
        // The rename is durable only once the directory is synced.
        sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))
    }

    /// Blocks until every block stored before the call is on disk.
    pub fn wait_synced(&self) -> Result<()> {
        self.syncer.wait().map_err(|reason| Error::Io {
            context: "background sync".into(),
            source: std::io::Error::other(reason),
        })
    }

    /// Reads bytes `offset..offset+len` of a block (`len` 0: to the end), verifying the
    /// checksums of the chunks they touch.
    pub fn read(&self, id: &BlockId, offset: u32, len: u32) -> Result<Chunks> {
        self.read_planned(self.plan_read(id, offset, len)?)
    }

    /// Reads a planned read's bytes in one go, verifying the chunks they touch.
    pub fn read_planned(&self, plan: ReadPlan) -> Result<Chunks> {
        let buf = self.read_chunks(&plan, plan.chunks.clone())?;
        if plan.is_whole_chunks() {
            return Ok(Chunks {
                data: buf,
                crcs: plan.crcs,
            });
        }
        let from = plan.wanted.start - plan.chunks.start;
        Ok(Chunks {
            data: buf[from..from + plan.wanted.len()].to_vec(),
            crcs: Vec::new(),
        })
    }

    /// Where a read of bytes `offset..offset+len` of a block (`len` 0: to the end) goes:
    /// the chunks it touches, and their checksums as stored at upload.
    pub fn plan_read(&self, id: &BlockId, offset: u32, len: u32) -> Result<ReadPlan> {
        let (size, copy) = self
            .lock()
            .get(id)
            .and_then(|held| held.listed().zip(held.copy()))
            .ok_or(Error::NotFound { block: *id })?;
        if offset > size || (len > 0 && offset as u64 + len as u64 > size as u64) {
            return Err(Error::BadRange {
                block: *id,
                offset,
                len,
                size,
            });
        }
        let end = if len == 0 { size } else { offset + len } as usize;
        let first = offset as usize / CHUNK;
        let last = end.div_ceil(CHUNK).max(first);
        let (file, base, direct) = self.locate(id)?;
        let mut stored = vec![0u8; (last - first) * 4];
        file.read_exact_at(&mut stored, base + size as u64 + first as u64 * 4)
            .map_err(|_| Error::Corrupt {
                block: *id,
                reason: "checksums missing".into(),
            })?;
        Ok(ReadPlan {
            id: *id,
            copy,
            file,
            base,
            direct,
            direct_file: OnceLock::new(),
            chunks: first * CHUNK..(last * CHUNK).min(size as usize),
            wanted: offset as usize..end,
            crcs: stored
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        })
    }

    /// Reads bytes `range` of a planned read's chunks (whole chunks of the block, the last
    /// one possibly cut at its end), verifying them against their stored checksums.
    pub fn read_chunks(&self, plan: &ReadPlan, range: Range<usize>) -> Result<Vec<u8>> {
        let buf =
            read_new(&plan.file, range.len(), plan.base + range.start as u64).map_err(|_| {
                Error::Corrupt {
                    block: plan.id,
                    reason: "block file is shorter than recorded".into(),
                }
            })?;
        plan.check(&range, &buf)?;
        Ok(buf)
    }

    /// [`BlockStore::read_chunks`] for a large read going out piece by piece: a block
    /// file's bytes not all in the page cache are read with O_DIRECT, into memory that
    /// is sent as it is: the copy out of the page cache and its upkeep cost the
    /// storages an eighth of their CPU in sequential reads, which CPU bounds on our
    /// machine (BENCHMARKS.md, stop 39). Bytes the page cache holds are read from it.
    pub fn read_piece(&self, plan: &ReadPlan, range: Range<usize>) -> Result<Bytes> {
        let offset = plan.base + range.start as u64;
        let cold =
            match plan.direct.is_some() && cached(&plan.file, offset, range.len()) == Some(false) {
                true => plan
                    .direct_file()
                    .and_then(|file| read_direct(file, offset, range.len()).ok()),
                false => None,
            };
        let Some(buf) = cold else {
            return self.read_chunks(plan, range).map(Bytes::from);
        };
        plan.check(&range, &buf)?;
        Ok(buf)
    }

    /// The length of a block whose file's footer and size agree, after moving checksums
    /// kept in a separate `.crc` file (the former layout) into it.
    fn intact_files(&self, id: &BlockId) -> Option<u32> {
        let path = self.path(id);
        let old_crcs = self.crc_path(id);
        if let Ok(crcs) = fs::read(&old_crcs) {
            // A crash between the append and the removal leaves both: moved already.
            if stored_len(&path).is_none() {
                let len = fs::metadata(&path).ok()?.len();
                if len == 0
                    || len > u64::from(u32::MAX)
                    || file_len(len) != len + crcs.len() as u64 + FOOTER
                {
                    return None;
                }
                let mut file = fs::OpenOptions::new().append(true).open(&path).ok()?;
                file.write_all(&crcs)
                    .and_then(|_| file.write_all(&footer(len as u32)))
                    .and_then(|_| file.sync_data())
                    .ok()?;
            }
            fs::remove_file(&old_crcs).ok()?;
        }
        stored_len(&path)
    }

    /// The file holding a block's bytes (then its checksums), the offset of its
    /// first byte there, and the path of a block file (which cold reads open with
    /// O_DIRECT).
    fn locate(&self, id: &BlockId) -> Result<(Arc<File>, u64, Option<PathBuf>)> {
        if let Some(extent) = self.volumes.extent(id) {
            return Ok((extent.file, extent.offset, None));
        }
        let path = self.path(id);
        let file = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
        Ok((Arc::new(file), 0, Some(path)))
    }

    fn read_all(&self, id: &BlockId) -> Result<Vec<u8>> {
        let (mut data, len) = match self.volumes.extent(id) {
            Some(extent) => {
                let mut data = vec![0u8; (file_len(extent.len.into()) - FOOTER) as usize];
                extent
                    .file
                    .read_exact_at(&mut data, extent.offset)
                    .map_err(io_err(format!("read block {id}")))?;
                (data, extent.len)
            }
            None => {
                let mut data =
                    fs::read(self.path(id)).map_err(io_err(format!("read block {id}")))?;
                let len = block_len(data.len() as u64, &data).ok_or_else(|| Error::Corrupt {
                    block: *id,
                    reason: "block file footer does not match its size".into(),
                })?;
                data.truncate(data.len() - FOOTER as usize);
                (data, len)
            }
        };
        let crcs = data.split_off(len as usize);
        if chunk_crcs(&data) != crcs {
            return Err(Error::Corrupt {
                block: *id,
                reason: "checksum mismatch".into(),
            });
        }
        Ok(data)
    }

    /// Re-hashes a whole block: true if present and intact.
    pub fn verify(&self, id: &BlockId) -> bool {
        self.len_of(id).is_some() && self.read_all(id).is_ok_and(|data| id.names(&data))
    }

    fn remove_files(&self, id: &BlockId) {
        let _ = fs::remove_file(self.path(id));
        let _ = fs::remove_file(self.crc_path(id));
    }

    /// Creates a block subdirectory, durably: a block renamed into a directory whose own
    /// entry was never synced could vanish in a crash.
    fn make_dir(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let parent = dir.parent().expect("block directory has a parent");
        sync_dir(parent).map_err(io_err(format!("fsync {}", parent.display())))
    }

    /// Reclaims the space of deleted small blocks; returns how many volumes were
    /// compacted.
    pub fn compact(&self) -> Result<usize> {
        self.volumes.compact()
    }

    /// Keeps volume space zeroed ahead for small blocks, written while none has been
    /// written for [`SPARE_IDLE`] (see [`Volumes::prepare_spares`]).
    pub fn prepare_spares(&self) -> Result<usize> {
        self.volumes.prepare_spares(SPARE_IDLE)
    }

    /// Deletes a block; true if it was there (and not still being written).
    pub fn delete(&self, id: &BlockId) -> bool {
        self.remove(id, None)
    }

    /// Deletes copy `copy` of a block, found corrupt; true if it was still the one held
    /// (and not still being written).
    pub fn delete_copy(&self, id: &BlockId, copy: CopyId) -> bool {
        self.remove(id, Some(copy))
    }

    /// Deletes the block held as `id` (only if it is copy `copy`, with one).
    fn remove(&self, id: &BlockId, copy: Option<CopyId>) -> bool {
        let len = {
            let mut blocks = self.lock();
            // Being written: nothing is stored to delete yet, and the upload will report
            // the block once it is. A put of the same block waits until the old files
            // are gone.
            let Some(Held::Stored(len, held)) = blocks.get(id).copied() else {
                return false;
            };
            if copy.is_some_and(|copy| copy != held) {
                return false;
            }
            blocks.insert(*id, Held::Removing(len));
            len
        };
        if !self.volumes.remove(id) {
            self.remove_files(id);
        }
        self.used.fetch_sub(len as u64, Ordering::Relaxed);
        self.settle(id, None);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// A store in a new directory holding two blocks of these lengths in block files:
    /// the directory, the store, and each block's id and bytes.
    fn store_with_two(
        a: usize,
        b: usize,
    ) -> (tempfile::TempDir, BlockStore, [(BlockId, Vec<u8>); 2]) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open_with(dir.path(), 1 << 30, 0).unwrap();
        let blocks = [data(a), data(b)].map(|bytes| (BlockId::of(&bytes), bytes));
        for (id, bytes) in &blocks {
            store.put(id, bytes).unwrap();
        }
        (dir, store, blocks)
    }

    #[test]
    fn blocks_acknowledged_unsynced_are_synced_by_the_thread_and_kept() {
        // In a block file, then in a volume.
        for small in [0, SMALL_BLOCK] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = BlockStore::open_with(dir.path(), 1 << 30, small).unwrap();
            let blocks: Vec<Vec<u8>> = (1..4).map(|i| data(i * 50_000)).collect();
            for bytes in &blocks {
                store
                    .put_checked(&BlockId::of(bytes), bytes, false)
                    .unwrap();
            }
            // A synced upload of a block held unsynced returns once it is on disk.
            store
                .put_checked(&BlockId::of(&blocks[0]), &blocks[0], true)
                .unwrap();
            assert_eq!(store.syncer.lock().synced, 3);
            store.wait_synced().unwrap();
            {
                let state = store.syncer.lock();
                assert_eq!((state.written, state.synced), (3, 3));
                assert!(state.files.is_empty() && state.dirs.is_empty());
            }
            drop(store);
            let (again, bad) = BlockStore::open_with(dir.path(), 1 << 30, small).unwrap();
            assert_eq!(bad, 0);
            for bytes in &blocks {
                let id = BlockId::of(bytes);
                assert_eq!(again.read(&id, 0, 0).unwrap().data, *bytes);
            }
        }
    }

    #[test]
    fn put_read_ranges_and_reopen() {
        // In a block file, then in a volume.
        for small in [0, SMALL_BLOCK] {
            put_read_ranges_and_reopen_with(small);
        }
    }

    fn put_read_ranges_and_reopen_with(small: usize) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open_with(dir.path(), 1 << 30, small).unwrap();
        let bytes = data(200_000);
        let id = BlockId::of(&bytes);
        store.put(&id, &bytes).unwrap();
        let whole = store.read(&id, 0, 0).unwrap();
        assert_eq!(whole.data, bytes);
        assert_eq!(whole.crcs, vg_wire::storage::chunk_crcs(&bytes));
        // Chunk-aligned ranges come with their checksums, others without.
        let aligned = store.read(&id, 65_536, 65_536).unwrap();
        assert_eq!(
            aligned.crcs,
            vg_wire::storage::chunk_crcs(&bytes[65_536..131_072])
        );
        let tail = store.read(&id, 196_608, 0).unwrap();
        assert_eq!(tail.crcs, vg_wire::storage::chunk_crcs(&bytes[196_608..]));
        assert!(store.read(&id, 65_530, 20).unwrap().crcs.is_empty());
        assert_eq!(
            store.read(&id, 65_530, 20).unwrap().data,
            &bytes[65_530..65_550]
        );
        assert_eq!(store.read(&id, 199_999, 1).unwrap().data, &bytes[199_999..]);
        assert!(store.read(&id, 199_999, 2).is_err());
        assert!(store.read(&id, u32::MAX, 1).is_err());
        drop(store);
        let (store, bad) = BlockStore::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(store.used(), 200_000);
        assert_eq!(store.read(&id, 0, 0).unwrap().data, bytes);
        assert!(store.delete(&id) && !store.delete(&id));
        assert!(store.read(&id, 0, 0).is_err());
    }

    #[test]
    fn refuses_wrong_hash_and_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open(dir.path(), 1000).unwrap();
        let bytes = data(600);
        assert!(matches!(
            store.put(&BlockId::of(b"other"), &bytes),
            Err(Error::Corrupt { .. })
        ));
        store.put(&BlockId::of(&bytes), &bytes).unwrap();
        let more = data(500);
        assert!(matches!(
            store.put(&BlockId::of(&more), &more),
            Err(Error::NoSpace { .. })
        ));
        assert!(store.delete(&BlockId::of(&bytes)));
        store.put(&BlockId::of(&more), &more).unwrap();
    }

    #[test]
    fn a_block_named_by_its_sha256_is_taken_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open_with(dir.path(), 1 << 30, 0).unwrap();
        for len in [5_000, 300_000] {
            let bytes = data(len);
            let old = BlockId::sha256(&bytes);
            store.put(&old, &bytes).unwrap();
            assert!(store.verify(&old));
            assert_eq!(store.read(&old, 0, 0).unwrap().data, bytes);
        }
    }

    #[test]
    fn a_second_upload_of_a_block_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open_with(dir.path(), 1 << 30, 0).unwrap();
        for seed in 0..4u8 {
            let bytes: Vec<u8> = data(4 << 20).into_iter().map(|b| b ^ seed).collect();
            let id = BlockId::of(&bytes);
            // Whichever put returns first, the block is whole and readable by then.
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        store.put(&id, &bytes).unwrap();
                        assert_eq!(store.read(&id, 0, 0).unwrap().data, bytes);
                    });
                }
            });
            assert!(store.delete(&id));
            assert!(!store.delete(&id));
        }
    }

    #[test]
    fn damaged_files_are_removed_on_scan() {
        let (dir, store, [(id_a, _), (id_b, _)]) = store_with_two(100_000, 70_000);
        // Cut inside the data, and inside the checksums: neither size is possible.
        for (id, len) in [(id_a, 65_536), (id_b, 70_002)] {
            fs::OpenOptions::new()
                .write(true)
                .open(store.path(&id))
                .unwrap()
                .set_len(len)
                .unwrap();
        }
        drop(store);
        let (store, bad) = BlockStore::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(bad, 2);
        assert!(store.list().is_empty());
    }

    #[test]
    fn a_block_file_cut_short_under_a_reader_is_corrupt_not_padded() {
        let (_dir, store, [(id, bytes), _]) = store_with_two(100_000, 70_000);
        let (head, whole) = (
            store.plan_read(&id, 0, 100).unwrap(),
            store.plan_read(&id, 0, 0).unwrap(),
        );
        fs::OpenOptions::new()
            .write(true)
            .open(store.path(&id))
            .unwrap()
            .set_len(70_000)
            .unwrap();
        // The first chunk is whole; the rest of the block is gone.
        assert_eq!(store.read_planned(head).unwrap().data, bytes[..100]);
        let err = store.read_planned(whole).unwrap_err();
        assert!(err.to_string().contains("shorter than recorded"), "{err}");
    }

    /// Drops the file's pages from the page cache (written back first).
    fn evict(path: &Path) {
        let file = File::open(path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: the descriptor is open for the call; no pointers are passed.
        let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    }

    #[test]
    fn a_piece_not_in_the_page_cache_is_read_direct_and_checked() {
        let (_dir, store, [(id, bytes), _]) = store_with_two(3 << 20, 70_000);
        let path = store.path(&id);
        let piece = (1 << 20)..(2 << 20);
        let plan = store.plan_read(&id, 0, 0).unwrap();
        evict(&path);
        let direct = open_direct(&path).is_ok_and(|f| read_direct(&f, 0, DIRECT_ALIGN).is_ok());
        if direct {
            // Where the kernel tells (Linux 6.5), the piece reads as cold.
            let file = File::open(&path).unwrap();
            assert_ne!(cached(&file, piece.start as u64, piece.len()), Some(true));
        }
        assert_eq!(
            store.read_piece(&plan, piece.clone()).unwrap(),
            bytes[piece.clone()]
        );
        // The last piece ends inside a sector; then the same piece from the page cache.
        let tail = (2 << 20)..bytes.len();
        assert_eq!(store.read_piece(&plan, tail.clone()).unwrap(), bytes[tail]);
        store.read_chunks(&plan, piece.clone()).unwrap();
        assert_eq!(
            store.read_piece(&plan, piece.clone()).unwrap(),
            bytes[piece.clone()]
        );
        // A byte flipped on the disk is caught on the direct path too.
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[bytes[piece.start + 10] ^ 1], piece.start as u64 + 10)
            .unwrap();
        evict(&path);
        let err = store.read_piece(&plan, piece).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn footers_check_lengths_against_sizes() {
        for len in [1, 4095, 65_536, 65_537, 4 << 20] {
            assert_eq!(
                block_len(file_len(len), &footer(len as u32)),
                Some(len as u32)
            );
            assert_eq!(block_len(file_len(len) - 1, &footer(len as u32)), None);
        }
        assert_eq!(block_len(13, b"\x05\0\0\0vgb2"), None);
        assert_eq!(block_len(3, b"abc"), None);
    }

    #[test]
    fn checksums_of_the_former_layout_are_moved_in() {
        let (dir, store, [(id_a, a), (id_b, b)]) = store_with_two(100_000, 5_000);
        drop(store);
        // a: the former layout; b: a crash after its checksums were moved in.
        fs::write(
            dir.path()
                .join("blocks")
                .join(&id_a.to_hex()[..2])
                .join(id_a.to_hex()),
            &a,
        )
        .unwrap();
        let b_path = dir
            .path()
            .join("blocks")
            .join(&id_b.to_hex()[..2])
            .join(id_b.to_hex());
        for (id, bytes) in [(id_a, &a), (id_b, &b)] {
            let crc = PathBuf::from(format!(
                "{}.crc",
                dir.path()
                    .join("blocks")
                    .join(&id.to_hex()[..2])
                    .join(id.to_hex())
                    .display()
            ));
            fs::write(crc, chunk_crcs(bytes)).unwrap();
        }
        let (store, bad) = BlockStore::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(store.read(&id_a, 0, 0).unwrap().data, a);
        assert_eq!(store.read(&id_b, 0, 0).unwrap().data, b);
        assert!(store.verify(&id_a) && store.verify(&id_b));
        assert!(!store.crc_path(&id_a).exists() && !store.crc_path(&id_b).exists());
        assert_eq!(fs::metadata(b_path).unwrap().len(), file_len(5_000));
        assert!(fs::read(store.path(&id_b))
            .unwrap()
            .ends_with(&footer(5_000)));
    }

    #[test]
    fn bit_rot_is_detected_on_read_and_verify() {
        for small in [0, SMALL_BLOCK] {
            bit_rot_is_detected_with(small);
        }
    }

    fn bit_rot_is_detected_with(small: usize) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open_with(dir.path(), 1 << 30, small).unwrap();
        let bytes = data(100_000);
        let id = BlockId::of(&bytes);
        store.put(&id, &bytes).unwrap();
        let (file, base, _) = store.locate(&id).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, base + 70_000).unwrap();
        let writable = match store.volumes.extent(&id) {
            Some(_) => fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("volumes").join("0.vol"))
                .unwrap(),
            None => fs::OpenOptions::new()
                .write(true)
                .open(store.path(&id))
                .unwrap(),
        };
        writable
            .write_all_at(&[byte[0] ^ 0xff], base + 70_000)
            .unwrap();
        assert!(store.read(&id, 0, 10).is_ok(), "first chunk is intact");
        assert!(matches!(
            store.read(&id, 69_000, 2_000),
            Err(Error::Corrupt { .. })
        ));
        assert!(!store.verify(&id));
    }

    #[test]
    fn a_copy_found_corrupt_late_spares_the_copy_stored_since() {
        for small in [0, SMALL_BLOCK] {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = BlockStore::open_with(dir.path(), 1 << 30, small).unwrap();
            let bytes = data(100_000);
            let id = BlockId::of(&bytes);
            store.put(&id, &bytes).unwrap();
            // A slow reader plans its read of the first copy; another finds that copy
            // corrupt, and the block is stored again (re-replicated) before the slow
            // reader finds the same.
            let slow = store.plan_read(&id, 0, 0).unwrap();
            assert_eq!(store.copy_of(&id), Some(slow.copy));
            assert!(store.delete_copy(&id, slow.copy));
            store.put(&id, &bytes).unwrap();
            let now = store.copy_of(&id).expect("stored again");
            assert_ne!(now, slow.copy);
            assert!(
                !store.delete_copy(&id, slow.copy),
                "the new copy is not the one found corrupt"
            );
            assert!(store.verify(&id));
            assert!(store.delete_copy(&id, now));
            assert_eq!(store.copy_of(&id), None);
        }
    }
}
