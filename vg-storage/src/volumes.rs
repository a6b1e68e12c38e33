//! Small blocks, appended to volume files.
//!
//! A small file's block cost a storage four journal commits on a shared ext4 disk: create,
//! `fdatasync`, rename, directory `fsync`. Appending it to a preallocated file and calling
//! `fdatasync` commits no metadata at all, only the data: untar of /usr/include went from
//! about 410 to 510–560 files/s (three alternating runs each).
//!
//! Layout under `volumes/`: `<number>.vol`, each [`VOLUME_BYTES`], allocated whole when
//! created. A volume starts with a head (`vgv2`, a salt, whether every byte of the file
//! has been written, CRC-32 of those) padded to [`HEAD`] bytes; records follow. A record
//! is a header (`vgr2`, length, block id, CRC-32 of the volume's salt and those), the
//! block's bytes, then the CRC-32 of each chunk as in a block file. Records are written in
//! offset order under a lock, so an acknowledged record (whose `fdatasync` flushed every
//! page written before it) is never preceded by one lost in a crash: the scan at start
//! reads each volume up to its first header that is not one of its salt. A torn record
//! whose header survived fails its CRCs when read or scrubbed, like a damaged block file.
//! Volumes of the release before (no head; records `vgr1`, CRC without a salt) are read
//! the same way and take no new records.
//!
//! Volumes are recycled, not removed: writing into allocated space that was never
//! written costs the disk twice (see [`ZERO_AHEAD`]), while a file written once takes
//! records at the cost of their bytes alone. A volume emptied of live records gets a new
//! salt, which turns every record it held into bytes the scan stops at, and waits as a
//! spare ([`SPARES`]) for the volume in use to fill. While no record comes, the rest of
//! the volume in use is zeroed and, when it is half full and no spare is left, a fresh
//! spare is written whole ([`Volumes::prepare_spares`]), so that the zeros of a young
//! store are written between bursts of writes rather than during them.
//!
//! A record synced as it is stored (an upload for an `fsync`) is written through O_DIRECT
//! in whole sectors: through the page cache, the `fdatasync` after a 4 KiB block's
//! 4,144-byte record writes both pages the record touches (and the page it shares with
//! the record before, again); direct, its nine 512-byte sectors, the first of them
//! rewritten from the bytes of the sector the records end in, which each volume keeps
//! in memory ([`Direct`]). The others go through the page cache, so that their writes do
//! not wait for the disk; the kernel keeps the two ways coherent, and records stay in
//! one volume in offset order.
//!
//! Deleting a block appends a tombstone (a header of length 0), not synced: the scan drops
//! what a later tombstone names. The space comes back when a volume no longer in use holds
//! no live record (the file is removed), or few enough that [`Volumes::compact`] copies
//! them into the volume in use. Compaction drops tombstones, so a restart can bring back a
//! deleted block whose tombstone went with a compacted volume; the nameserver's answer to
//! the block report deletes it again, as it does any stray block.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use vg_wire::storage::CHUNK;
use vg_wire::BlockId;

use crate::error::{io_err, Result};
use vg_wire::disk::{allocate, sync_dir, AlignedBuf, CacheFlush};

/// Bytes of each volume file.
pub const VOLUME_BYTES: u64 = 64 << 20;
/// Marks a volume's head.
const VOLUME_MAGIC: &[u8; 4] = b"vgv2";
/// Marks a record of a volume with a head.
const MAGIC: &[u8; 4] = b"vgr2";
/// Marks a record of the release before's volumes, which have no head.
const LEGACY_MAGIC: &[u8; 4] = b"vgr1";
/// Bytes before a volume's first record: its head, padded so that records start on a
/// page (direct writes are aligned to at most that).
const HEAD: u64 = 4096;
/// Bytes of a head: magic, salt, whether written whole, CRC-32 of those.
const HEAD_LEN: usize = 17;
/// Emptied volumes kept to take records again, rather than removed. One is enough to
/// keep a new volume's zeros out of the requests' path; more only hold disk space.
const SPARES: usize = 1;
/// An emptied volume is recycled only if at most this much of it was never written
/// (a volume emptied after a restart, whose zeros ahead are not known, may be mostly so).
const RECYCLE_ZEROS: u64 = 4 * ZERO_AHEAD;
/// Bytes of zeros written ahead of a volume's records. Allocated space reads as zeros
/// but is marked unwritten, so the `fdatasync` after the first write into each part of
/// it commits the change of marks to the journal as well: with 6 KB records, two
/// storages syncing at once on our disk took 232 µs per sync, and 165 µs writing into
/// space zeroed before. Written ahead, the zeros go out with the sync of one record in
/// every [`ZERO_AHEAD`] bytes.
const ZERO_AHEAD: u64 = 1 << 20;
/// Bytes of a record header: magic, length, block id, CRC-32 of those.
const HEADER: usize = 44;
/// A volume not in use is compacted when less than this fraction of it is live.
const COMPACT_BELOW: f64 = 0.25;

/// Bytes a record of a `len`-byte block takes.
fn record_len(len: u32) -> u64 {
    HEADER as u64 + len as u64 + 4 * (len as u64).div_ceil(CHUNK as u64)
}

/// Starts writing back `len` bytes of `file` at `offset`, without waiting for the disk.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call; no pointers are passed.
    // A failure only means the pages are written back later.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A volume's head.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Head {
    /// Goes into every record header's CRC: records of the volume's earlier lives fail it.
    salt: u64,
    /// Every byte of the file was written once, so it has no unwritten space.
    whole: bool,
}

impl Head {
    /// A head with a salt no earlier life of any volume is likely to have had.
    fn fresh(whole: bool) -> Head {
        use std::hash::BuildHasher;
        // RandomState's keys come from the OS's random source.
        let salt =
            std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
        Head { salt, whole }
    }

    fn encode(&self) -> [u8; HEAD_LEN] {
        let mut head = [0u8; HEAD_LEN];
        head[..4].copy_from_slice(VOLUME_MAGIC);
        head[4..12].copy_from_slice(&self.salt.to_le_bytes());
        head[12] = self.whole as u8;
        let crc = crc32fast::hash(&head[..13]);
        head[13..].copy_from_slice(&crc.to_le_bytes());
        head
    }

    fn decode(head: &[u8; HEAD_LEN]) -> Option<Head> {
        let crc = u32::from_le_bytes(head[13..].try_into().expect("4 bytes"));
        if &head[..4] != VOLUME_MAGIC || crc32fast::hash(&head[..13]) != crc || head[12] > 1 {
            return None;
        }
        let salt = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        Some(Head {
            salt,
            whole: head[12] == 1,
        })
    }
}

/// The CRC-32 of a record header's first 40 bytes, with the volume's salt if it has one.
fn header_crc(bytes: &[u8], salt: Option<u64>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    if let Some(salt) = salt {
        crc.update(&salt.to_le_bytes());
    }
    crc.update(bytes);
    crc.finalize()
}

/// The header of a record in a volume salted `salt`.
fn header(id: &BlockId, len: u32, salt: u64) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..40].copy_from_slice(&id.0);
    let crc = header_crc(&header[..40], Some(salt));
    header[40..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The block id and length a header holds, if it is one of a volume salted `salt` (of the
/// release before, without a salt, if `None`).
fn parse_header(header: &[u8; HEADER], salt: Option<u64>) -> Option<(BlockId, u32)> {
    let magic = if salt.is_some() { MAGIC } else { LEGACY_MAGIC };
    let crc = u32::from_le_bytes(header[40..].try_into().expect("4 bytes"));
    if &header[..4] != magic || header_crc(&header[..40], salt) != crc {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let id = BlockId(header[8..40].try_into().expect("32 bytes"));
    Some((id, len))
}

/// The numbers of the volume files in `dir`, in order.
fn volume_numbers(dir: &Path) -> Result<Vec<u32>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let path = entry
            .map_err(io_err(format!("read {}", dir.display())))?
            .path();
        match path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".vol"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) => numbers.push(n),
            None => warn!(path = %path.display(), "ignoring stray file in volume directory"),
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// What the scan of one volume found besides its records.
struct Scanned {
    /// `None` for a volume of the release before.
    head: Option<Head>,
    /// Where its records end.
    end: u64,
}

/// Reads a volume's head and its records up to the first invalid header (tombstones
/// have length 0; `Loc::volume` is left 0).
fn scan(file: &File) -> std::io::Result<(Scanned, Vec<(BlockId, Loc)>)> {
    let size = file.metadata()?.len();
    let mut head = [0u8; HEAD_LEN];
    let head = match size >= HEAD {
        true => file
            .read_exact_at(&mut head, 0)
            .map(|()| Head::decode(&head))?,
        false => None,
    };
    let salt = head.map(|h| h.salt);
    let mut records = Vec::new();
    let mut end = if head.is_some() { HEAD } else { 0 };
    let mut header = [0u8; HEADER];
    while end + HEADER as u64 <= size {
        file.read_exact_at(&mut header, end)?;
        let Some((id, len)) = parse_header(&header, salt) else {
            break;
        };
        let bytes = record_len(len);
        if end + bytes > size {
            break;
        }
        records.push((
            id,
            Loc {
                volume: 0,
                offset: end,
                len,
            },
        ));
        end += bytes;
    }
    Ok((Scanned { head, end }, records))
}

/// What the volumes in `dir` hold: each volume's number, file and scan, and the live
/// record of each block (a block's last record wins; a tombstone removes it).
type Replayed = (Vec<(u32, File, Scanned)>, HashMap<BlockId, Loc>);

/// Reads every volume in `dir`, opened for writing too when `writable`.
fn replay(dir: &Path, writable: bool) -> Result<Replayed> {
    let mut volumes = Vec::new();
    let mut index = HashMap::new();
    for number in volume_numbers(dir)? {
        let path = dir.join(format!("{number}.vol"));
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        let (scanned, records) = scan(&file).map_err(io_err(format!("read {}", path.display())))?;
        for (id, loc) in records {
            match loc.len {
                0 => index.remove(&id),
                _ => index.insert(
                    id,
                    Loc {
                        volume: number,
                        ..loc
                    },
                ),
            };
        }
        volumes.push((number, file, scanned));
    }
    Ok((volumes, index))
}

/// The live blocks of the volumes in `dir`, read without opening them for writing (for
/// tools and tests): each block's volume file, the offset of its first byte, its length.
pub fn on_disk(dir: &Path) -> Result<Vec<(BlockId, PathBuf, u64, u32)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let (_, index) = replay(dir, false)?;
    Ok(index
        .into_iter()
        .map(|(id, l)| {
            let path = dir.join(format!("{}.vol", l.volume));
            (id, path, l.offset + HEADER as u64, l.len)
        })
        .collect())
}

/// Where a block's record is.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Loc {
    volume: u32,
    offset: u64,
    len: u32,
}

/// The descriptor through which a volume's synced records are written in whole sectors
/// (see the module doc), and the bytes of the sector its records end in, up to their end.
struct Direct {
    file: File,
    /// Alignment of O_DIRECT offsets and lengths on this file system.
    align: u64,
    tail: Vec<u8>,
}

impl Direct {
    /// Opens `path` with O_DIRECT, where its file system takes it (see
    /// [`vg_wire::disk::open_direct`]).
    fn open(path: &Path) -> Option<Direct> {
        let (file, align) = vg_wire::disk::open_direct(path, None)?;
        Some(Direct {
            file,
            align,
            tail: Vec::new(),
        })
    }

    /// Writes `record` at `offset`, the end of the records, in whole sectors: the first
    /// starts with the tail's bytes, the last ends with zeros (the file has zeros there).
    fn write(&mut self, record: &[u8], offset: u64) -> std::io::Result<()> {
        debug_assert_eq!(self.tail.len() as u64, offset % self.align);
        let start = offset - self.tail.len() as u64;
        let end = offset + record.len() as u64;
        let mut buf = AlignedBuf::new((end.next_multiple_of(self.align) - start) as usize);
        let head = self.tail.len();
        buf.as_mut()[..head].copy_from_slice(&self.tail);
        buf.as_mut()[head..head + record.len()].copy_from_slice(record);
        self.file.write_all_at(&buf, start)?;
        self.follow(record, end);
        Ok(())
    }

    /// Keeps the tail in step with `record`, written (either way) to end at `end`.
    fn follow(&mut self, record: &[u8], end: u64) {
        let kept = (end % self.align) as usize;
        match record.len() >= kept {
            true => self.tail = record[record.len() - kept..].to_vec(),
            false => self.tail.extend_from_slice(record),
        }
    }
}

/// One volume file.
struct Volume {
    file: Arc<File>,
    /// Writes its synced records; `None` for a volume from before a restart (it takes
    /// no records) and where the file system has no O_DIRECT (tmpfs).
    direct: Option<Direct>,
    /// End of its last record.
    end: u64,
    /// Bytes of records still indexed.
    live: u64,
    /// End of the zeros written ahead of the records (see [`ZERO_AHEAD`]).
    zeroed: u64,
    /// `None` for a volume of the release before.
    head: Option<Head>,
}

/// Whether volume `number`, in use, gives way to a spare or an emptied volume before it
/// is full: it holds no live record, and the rest of it was never written, which costs
/// the disk twice (its zeros ahead, then the records), while the other was written
/// whole before. After a tree is deleted, a writer would otherwise zero the rest of the
/// volume the tree ended in, next to a whole emptied volume.
fn gives_way(state: &State, number: u32) -> bool {
    let volume = &state.volumes[&number];
    volume.live == 0
        && VOLUME_BYTES - volume.zeroed > RECYCLE_ZEROS
        && (!state.spares.is_empty() || state.recycling.iter().any(|(_, v)| v.unheld()))
}

/// Takes an emptied volume that no reader holds any more, to recycle.
fn take_recyclable(state: &mut State) -> Option<(u32, Volume)> {
    let i = state.recycling.iter().position(|(_, v)| v.unheld())?;
    Some(state.recycling.swap_remove(i))
}

impl Volume {
    /// Whether no reader holds its file (an emptied volume is recycled only then).
    fn unheld(&self) -> bool {
        Arc::strong_count(&self.file) == 1
    }

    /// Whether it can be recycled once empty: it has a head, and little of it was never
    /// written.
    fn recyclable(&self) -> bool {
        self.head.is_some() && VOLUME_BYTES - self.zeroed <= RECYCLE_ZEROS
    }
}

struct State {
    index: HashMap<BlockId, Loc>,
    volumes: HashMap<u32, Volume>,
    /// The volume records are appended to, once one is needed.
    active: Option<u32>,
    next: u32,
    /// Volumes with no records, written whole, ready to be the volume in use.
    spares: Vec<(u32, Volume)>,
    /// Emptied volumes waiting for a new salt (and for readers still holding their file
    /// to let go of it) before they are spares.
    recycling: Vec<(u32, Volume)>,
    /// When the last record was written: zeros are written ahead of need only once the
    /// volumes have been left alone a while ([`Volumes::prepare_spares`]).
    last_write: std::time::Instant,
}

/// The small blocks of one storage.
pub struct Volumes {
    dir: PathBuf,
    state: Mutex<State>,
    /// Syncs records without the volume's inode, where that is written for nothing
    /// (see [`CacheFlush`]). Every byte of a volume below its `zeroed` is in space whose
    /// extents are on disk (the zeros ahead are synced as they are written), so a
    /// record's sync needs no metadata of the file.
    flush: Arc<CacheFlush>,
}

/// A block's bytes and checksums inside a volume: read `len` bytes at `offset`, then the
/// CRC-32s right after them.
pub struct Extent {
    /// The open volume.
    pub file: Arc<File>,
    /// Offset of the block's first byte.
    pub offset: u64,
    /// The block's length.
    pub len: u32,
}

impl Volumes {
    /// Opens (creating if needed) `dir` and reads every volume's records. Returns the
    /// volumes and the blocks they hold, with their lengths.
    pub fn open(dir: &Path) -> Result<(Self, Vec<(BlockId, u32)>)> {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let (files, index) = replay(dir, true)?;
        let mut spares = Vec::new();
        let mut volumes: HashMap<u32, Volume> = HashMap::new();
        for (number, file, scanned) in files {
            let whole = scanned.head.is_some_and(|h| h.whole);
            let mut volume = Volume {
                file: Arc::new(file),
                // These take no new records (see below): nothing to zero ahead of.
                direct: None,
                end: scanned.end,
                live: 0,
                zeroed: if whole { VOLUME_BYTES } else { scanned.end },
                head: scanned.head,
            };
            if whole && scanned.end == HEAD {
                // A spare, never written to since its salt was new.
                volume.direct = Direct::open(&dir.join(format!("{number}.vol")));
                spares.push((number, volume));
            } else {
                volumes.insert(number, volume);
            }
        }
        for loc in index.values() {
            volumes.get_mut(&loc.volume).expect("replayed").live += record_len(loc.len);
        }
        let state = State {
            next: (volumes.keys().chain(spares.iter().map(|(n, _)| n)))
                .max()
                .map_or(0, |n| n + 1),
            index,
            volumes,
            active: None,
            spares,
            recycling: Vec::new(),
            last_write: std::time::Instant::now(),
        };
        let blocks = state.index.iter().map(|(id, l)| (*id, l.len)).collect();
        info!(dir = %dir.display(), volumes = state.volumes.len(), spares = state.spares.len(), blocks = state.index.len(), "volumes scanned");
        let flush = Arc::new(CacheFlush::for_dir(dir));
        if flush.flushes_alone() {
            info!(dir = %dir.display(), "journal-less ext4: records are synced by a flush of the disk's cache, not the volume's inode");
        }
        let volumes = Volumes {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            flush,
        };
        // Volumes from before the restart take no new records; recycle or drop the empty
        // ones.
        let mut state = volumes.lock();
        let numbers: Vec<u32> = state.volumes.keys().copied().collect();
        for number in numbers {
            volumes.drop_if_empty(&mut state, number);
        }
        drop(state);
        Ok((volumes, blocks))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("volumes lock")
    }

    fn path(&self, number: u32) -> PathBuf {
        self.dir.join(format!("{number}.vol"))
    }

    /// A new volume, allocated whole and durably named; written whole too if `whole`
    /// (otherwise its zeros are written ahead of its records as they come).
    fn create(&self, number: u32, whole: bool) -> Result<Volume> {
        let path = self.path(number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(format!("create {}", path.display())))?;
        // Allocated space takes data without a journal commit per write; where fallocate
        // is not supported (tmpfs), appending still works.
        let _ = allocate(&file, VOLUME_BYTES);
        let mut volume = Volume {
            file: Arc::new(file),
            direct: None,
            end: HEAD,
            live: 0,
            zeroed: 0,
            head: None,
        };
        let made = self
            .renew(&mut volume, whole)
            .and_then(|()| sync_dir(&self.dir))
            .map_err(io_err(format!("write {}", path.display())));
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        volume.direct = Direct::open(&path);
        Ok(volume)
    }

    /// Gives emptied volume `number` a new head (see [`Volumes::renew`]) and opens it for
    /// direct writes again; `None` if that failed, the volume left to the next start's
    /// scan (its records may still be valid).
    fn recycle(&self, number: u32, mut volume: Volume, whole: bool) -> Option<Volume> {
        let path = self.path(number);
        if let Err(e) = self.renew(&mut volume, whole) {
            warn!(volume = %path.display(), error = %e, "cannot recycle volume");
            return None;
        }
        volume.direct = Direct::open(&path);
        info!(volume = %path.display(), "volume recycled");
        Some(volume)
    }

    /// Gives a volume with no live records a new head, which turns the records it held
    /// into bytes the scan stops at, and syncs it; writes zeros over the part of it never
    /// written if `whole`, and syncs them before the head that says so.
    fn renew(&self, volume: &mut Volume, whole: bool) -> std::io::Result<()> {
        if whole {
            let zeros = vec![0u8; ZERO_AHEAD as usize];
            let mut at = volume.zeroed.max(HEAD);
            while at < VOLUME_BYTES {
                let len = (VOLUME_BYTES - at).min(ZERO_AHEAD);
                volume.file.write_all_at(&zeros[..len as usize], at)?;
                at += len;
            }
            volume.file.sync_data()?;
        }
        let head = Head::fresh(whole);
        let mut bytes = vec![0u8; HEAD as usize];
        bytes[..HEAD_LEN].copy_from_slice(&head.encode());
        volume.file.write_all_at(&bytes, 0)?;
        volume.file.sync_data()?;
        volume.head = Some(head);
        volume.end = HEAD;
        volume.zeroed = match whole {
            true => VOLUME_BYTES,
            false => volume.zeroed.max(HEAD),
        };
        Ok(())
    }

    /// Makes spares: zeros the rest of the volume in use if no record was written for
    /// `idle`, gives emptied volumes a new head once no reader holds their file, and,
    /// when there is none, the volume in use is half full and no record was written for
    /// `idle`, writes a new volume whole. Returns how many spares were made.
    ///
    /// Written in the middle of a burst of writes, zeros took the disk from the writes
    /// and were most of what it wrote then: in fsbench's fsync'd 4 KiB writes after its
    /// untar, 1.2 to 2.0 bytes of zeros per byte written (a spare's 64 MiB as the volume
    /// in use passed half, and the rest of a volume begun in the untar, 1 MiB ahead of
    /// each record). Under a steady load, a volume in use that fills is followed by a new
    /// one whose zeros go 1 MiB ahead of its records, as before.
    pub fn prepare_spares(&self, idle: std::time::Duration) -> Result<usize> {
        self.zero_rest(idle)?;
        let mut made = 0;
        loop {
            let next = take_recyclable(&mut self.lock());
            let Some((number, volume)) = next else {
                break;
            };
            if let Some(volume) = self.recycle(number, volume, true) {
                self.lock().spares.push((number, volume));
                made += 1;
            }
        }
        let number = {
            let mut state = self.lock();
            let half_full = state
                .active
                .is_some_and(|n| state.volumes[&n].end > VOLUME_BYTES / 2);
            let left_alone = state.last_write.elapsed() >= idle;
            if !(half_full && left_alone && state.spares.is_empty() && state.recycling.is_empty()) {
                return Ok(made);
            }
            state.next += 1;
            state.next - 1
        };
        let volume = self.create(number, true)?;
        info!(volume = %self.path(number).display(), "spare volume written");
        self.lock().spares.push((number, volume));
        Ok(made + 1)
    }

    /// Appends a block (its bytes, then `crcs`) and syncs it.
    pub fn put(&self, id: &BlockId, data: &[u8], crcs: &[u8]) -> Result<()> {
        self.append(id, data, crcs, None, true).map(drop)
    }

    /// Appends a block without syncing it; returns the volume file for the caller to
    /// sync. Records are written in offset order, so a sync of the file covers this
    /// record and every one before it.
    pub fn put_unsynced(&self, id: &BlockId, data: &[u8], crcs: &[u8]) -> Result<Arc<File>> {
        let file = self.append(id, data, crcs, None, false)?;
        Ok(file.expect("a put always writes"))
    }

    /// Appends a block's record, unless `moving` is given and the block is no longer
    /// there (deleted while compaction copied it); syncs it with `sync`. Returns the
    /// volume file written, if any.
    fn append(
        &self,
        id: &BlockId,
        data: &[u8],
        crcs: &[u8],
        moving: Option<Loc>,
        sync: bool,
    ) -> Result<Option<Arc<File>>> {
        let len = data.len() as u32;
        let bytes = record_len(len);
        assert!(
            bytes <= VOLUME_BYTES && bytes == (HEADER + data.len() + crcs.len()) as u64,
            "a volume record must fit a volume and carry one CRC per chunk"
        );
        let mut record = Vec::with_capacity(bytes as usize);
        record.extend_from_slice(&[0; HEADER]);
        record.extend_from_slice(data);
        record.extend_from_slice(crcs);
        let (file, loc) = {
            let mut state = self.lock();
            if moving.is_some() && state.index.get(id) != moving.as_ref() {
                return Ok(None);
            }
            let (volume, offset, file) = self.write(&mut state, id, len, &mut record, sync)?;
            state.volumes.get_mut(&volume).expect("written").live += bytes;
            let loc = Loc {
                volume,
                offset,
                len,
            };
            if let Some(old) = state.index.insert(*id, loc) {
                self.forget(&mut state, old);
            }
            (file, loc)
        };
        if !sync {
            return Ok(Some(file));
        }
        let synced = self
            .sync(&file)
            .map_err(io_err(format!("sync volume for block {id}")));
        if synced.is_err() {
            // Not durable, so not stored: forget the record (a later put writes another).
            let mut state = self.lock();
            if state.index.get(id) == Some(&loc) {
                state.index.remove(id);
                self.forget(&mut state, loc);
            }
        }
        synced.map(|()| Some(file))
    }

    /// Writes a record of block `id`, `len` bytes long, at the end of the volume in use (a
    /// spare or a new one when it is full), its header first filled in with the volume's
    /// salt, under the lock so that records land in offset order, through O_DIRECT if it
    /// is to be `synced` at once (see the module doc). Returns the volume, the record's
    /// offset, and the file to sync.
    fn write(
        &self,
        state: &mut State,
        id: &BlockId,
        len: u32,
        record: &mut [u8],
        synced: bool,
    ) -> Result<(u32, u64, Arc<File>)> {
        let bytes = record.len() as u64;
        let number = match state.active {
            Some(n) if state.volumes[&n].end + bytes <= VOLUME_BYTES && !gives_way(state, n) => n,
            _ => {
                // An emptied volume the timer of `prepare_spares` has not made a spare yet
                // is recycled here: a new one would write its zeros ahead of the records,
                // as many bytes again (a writer filling its volume within 30 s of
                // deleting as much: the fsync'd writes of `scripts/bench.sh`).
                let recycled = match state.spares.pop() {
                    Some(spare) => Some(spare),
                    None => take_recyclable(state).and_then(|(number, volume)| {
                        Some((number, self.recycle(number, volume, false)?))
                    }),
                };
                let (number, volume) = match recycled {
                    Some(volume) => volume,
                    None => {
                        let volume = self.create(state.next, false)?;
                        state.next += 1;
                        (state.next - 1, volume)
                    }
                };
                state.volumes.insert(number, volume);
                if let Some(old) = state.active.replace(number) {
                    self.drop_if_empty(state, old);
                }
                number
            }
        };
        state.last_write = std::time::Instant::now();
        let volume = state.volumes.get_mut(&number).expect("active volume");
        let salt = volume.head.expect("the volume in use has a head").salt;
        record[..HEADER].copy_from_slice(&header(id, len, salt));
        let record = &*record;
        let offset = volume.end;
        let write_err = || io_err(format!("write {}", self.path(number).display()));
        // A direct write ends at a sector's end, which must be zeroed already.
        let sector = volume.direct.as_ref().map_or(1, |d| d.align);
        if (offset + bytes).next_multiple_of(sector) > volume.zeroed {
            let to = (offset + bytes + ZERO_AHEAD).min(VOLUME_BYTES);
            self.zero_ahead(volume, to).map_err(write_err())?;
        }
        let written = match (&mut volume.direct, synced) {
            (Some(direct), true) => match direct.write(record, offset) {
                Ok(()) => true,
                // The file system refused the direct write after all: this volume writes
                // through the page cache from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    warn!(volume = number, error = %e, "direct write refused; writing through the page cache");
                    false
                }
                Err(e) => return Err(write_err()(e)),
            },
            _ => false,
        };
        if !written {
            if synced {
                volume.direct = None;
            }
            volume
                .file
                .write_all_at(record, offset)
                .map_err(write_err())?;
            if let Some(direct) = &mut volume.direct {
                direct.follow(record, offset + bytes);
            }
        }
        volume.end += bytes;
        Ok((number, offset, volume.file.clone()))
    }

    /// Makes the records written to volume file `file` durable (every one before the
    /// last written, which are in offset order).
    pub fn sync(&self, file: &File) -> std::io::Result<()> {
        self.flush.sync([file])
    }

    /// What syncs volume files (several with one flush of the disk's cache, where that
    /// stands in for their own syncs).
    pub fn cache_flush(&self) -> Arc<CacheFlush> {
        self.flush.clone()
    }

    /// Writes zeros from the end of `volume`'s zeros to `to`.
    fn zero_ahead(&self, volume: &mut Volume, to: u64) -> std::io::Result<()> {
        let zeros = vec![0u8; (to - volume.zeroed) as usize];
        volume.file.write_all_at(&zeros, volume.zeroed)?;
        if self.flush.flushes_alone() {
            // Records synced by a flush alone must lie in space whose extents are on
            // disk already.
            volume.file.sync_data()?;
        } else if volume.direct.is_some() {
            // Written back now, the zeros' pages are clean by the time direct writes
            // reach them, which would otherwise write each back whole first.
            start_writeback(&volume.file, volume.zeroed, to - volume.zeroed);
        }
        volume.zeroed = to;
        Ok(())
    }

    /// Zeros the rest of the volume in use, [`ZERO_AHEAD`] at a time, while no record is
    /// written for `idle`: records that come later take it at the cost of their own
    /// bytes. Returns the bytes zeroed.
    fn zero_rest(&self, idle: std::time::Duration) -> Result<u64> {
        let mut zeroed = 0;
        loop {
            let mut state = self.lock();
            let Some(number) = state.active.filter(|_| state.last_write.elapsed() >= idle) else {
                return Ok(zeroed);
            };
            let volume = state.volumes.get_mut(&number).expect("active volume");
            if volume.zeroed >= VOLUME_BYTES {
                return Ok(zeroed);
            }
            let (from, to) = (
                volume.zeroed,
                (volume.zeroed + ZERO_AHEAD).min(VOLUME_BYTES),
            );
            self.zero_ahead(volume, to)
                .map_err(io_err(format!("write {}", self.path(number).display())))?;
            zeroed += to - from;
        }
    }

    /// Where a block's bytes are.
    pub fn extent(&self, id: &BlockId) -> Option<Extent> {
        let state = self.lock();
        let loc = state.index.get(id)?;
        Some(Extent {
            file: state.volumes[&loc.volume].file.clone(),
            offset: loc.offset + HEADER as u64,
            len: loc.len,
        })
    }

    /// Deletes a block (a tombstone, not synced: a block that comes back after a crash is
    /// deleted again as a stray); true if it was here.
    pub fn remove(&self, id: &BlockId) -> bool {
        let mut state = self.lock();
        let Some(loc) = state.index.remove(id) else {
            return false;
        };
        if let Err(e) = self.write(&mut state, id, 0, &mut [0; HEADER], false) {
            warn!(block = %id, error = %e, "cannot record a deletion; the block may come back after a restart");
        }
        self.forget(&mut state, loc);
        true
    }

    fn forget(&self, state: &mut State, loc: Loc) {
        if let Some(volume) = state.volumes.get_mut(&loc.volume) {
            volume.live -= record_len(loc.len);
        }
        self.drop_if_empty(state, loc.volume);
    }

    /// Recycles (see [`Volumes::prepare_spares`]) or removes a volume not in use once
    /// nothing in it is live.
    fn drop_if_empty(&self, state: &mut State, number: u32) {
        if state.active == Some(number) || state.volumes.get(&number).is_none_or(|v| v.live > 0) {
            return;
        }
        let volume = state.volumes.remove(&number).expect("checked");
        if volume.recyclable() && state.spares.len() + state.recycling.len() < SPARES {
            state.recycling.push((number, volume));
            return;
        }
        let path = self.path(number);
        match fs::remove_file(&path) {
            Ok(()) => info!(volume = %path.display(), "empty volume removed"),
            Err(e) => warn!(volume = %path.display(), error = %e, "cannot remove empty volume"),
        }
    }

    /// Copies the live records of sparse volumes not in use into the volume in use and
    /// removes them. Returns how many volumes were compacted.
    pub fn compact(&self) -> Result<usize> {
        let sparse: Vec<u32> = {
            let state = self.lock();
            state
                .volumes
                .iter()
                .filter(|(n, v)| {
                    state.active != Some(**n) && (v.live as f64) < COMPACT_BELOW * v.end as f64
                })
                .map(|(n, _)| *n)
                .collect()
        };
        for &number in &sparse {
            let live: Vec<(BlockId, Loc)> = self
                .lock()
                .index
                .iter()
                .filter(|(_, l)| l.volume == number)
                .map(|(id, l)| (*id, *l))
                .collect();
            for (id, loc) in live {
                let Some(file) = self.lock().volumes.get(&number).map(|v| v.file.clone()) else {
                    break;
                };
                let mut record = vec![0u8; record_len(loc.len) as usize];
                file.read_exact_at(&mut record, loc.offset)
                    .map_err(io_err(format!("read {}", self.path(number).display())))?;
                let (data, crcs) = record[HEADER..].split_at(loc.len as usize);
                self.append(&id, data, crcs, Some(loc), true)?;
            }
            info!(volume = number, "volume compacted");
        }
        Ok(sparse.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ZERO: Duration = Duration::ZERO;

    fn block(seed: u8, len: usize) -> (BlockId, Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let crcs = vg_wire::storage::chunk_crcs(&data)
            .into_iter()
            .flat_map(u32::to_le_bytes)
            .collect();
        (BlockId::of(&data), data, crcs)
    }

    fn read(volumes: &Volumes, id: &BlockId) -> Vec<u8> {
        let extent = volumes.extent(id).unwrap();
        let mut data = vec![0u8; extent.len as usize];
        extent.file.read_exact_at(&mut data, extent.offset).unwrap();
        data
    }

    #[test]
    fn records_survive_a_restart_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        assert!(found.is_empty());
        let blocks: Vec<_> = (1..=3).map(|s| block(s, 70_000 + s as usize)).collect();
        for (id, data, crcs) in &blocks {
            volumes.put(id, data, crcs).unwrap();
        }
        assert_eq!(read(&volumes, &blocks[1].0), blocks[1].1);
        let (end, zeroed, salt) = {
            let state = volumes.lock();
            let volume = &state.volumes[&0];
            (volume.end, volume.zeroed, volume.head.unwrap().salt)
        };
        // Zeroed with the first record, enough for the next ones.
        let first = record_len(blocks[0].1.len() as u32);
        assert_eq!(zeroed, HEAD + first + ZERO_AHEAD, "zeros are written ahead");
        assert!(end < zeroed);
        drop(volumes);
        // A crash while a fourth record was being written: its header made it, not all
        // of its bytes; then garbage that is no header.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("0.vol"))
            .unwrap();
        file.write_all_at(&header(&BlockId([9; 32]), u32::MAX, salt), end)
            .unwrap();
        let (volumes, mut found) = Volumes::open(dir.path()).unwrap();
        found.sort_by_key(|(_, len)| *len);
        let want: Vec<_> = blocks
            .iter()
            .map(|(id, d, _)| (*id, d.len() as u32))
            .collect();
        assert_eq!(found, want);
        for (id, data, _) in &blocks {
            assert_eq!(read(&volumes, id), *data);
        }
        // New records go to a new volume; the old one stays readable.
        let (id, data, crcs) = block(4, 10);
        volumes.put(&id, &data, &crcs).unwrap();
        assert_eq!(volumes.extent(&id).unwrap().offset, HEAD + HEADER as u64);
        assert_eq!(read(&volumes, &id), data);
    }

    #[test]
    fn synced_and_unsynced_records_interleave_in_one_volume() {
        let dir = tempfile::tempdir().unwrap();
        let (volumes, _) = Volumes::open(dir.path()).unwrap();
        let mut blocks = Vec::new();
        // Lengths around sectors and pages, synced (direct) or not, in every order: each
        // direct write rewrites the sector an unsynced record left half full.
        for (i, len) in (1..1500)
            .step_by(97)
            .chain([4096, 4095, 511, 512, 513, 9000])
            .enumerate()
        {
            let (id, data, crcs) = block(i as u8 + 1, len);
            match i % 3 {
                0 => volumes.put_unsynced(&id, &data, &crcs).map(drop).unwrap(),
                _ => volumes.put(&id, &data, &crcs).unwrap(),
            }
            assert_eq!(read(&volumes, &id), data, "record {i} read back at once");
            blocks.push((id, data));
        }
        assert!(
            volumes.lock().volumes[&0].direct.is_some(),
            "the test's temporary directory takes O_DIRECT (not tmpfs)"
        );
        for (id, data) in &blocks {
            assert_eq!(read(&volumes, id), *data);
        }
        drop(volumes);
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        assert_eq!(found.len(), blocks.len());
        for (id, data) in &blocks {
            assert_eq!(read(&volumes, id), *data, "after a restart");
        }
    }

    /// The volume a block's record is in.
    fn volume_of(volumes: &Volumes, id: &BlockId) -> u32 {
        volumes.lock().index[id].volume
    }

    /// A block: its id, bytes and CRCs.
    type Block = (BlockId, Vec<u8>, Vec<u8>);

    /// Volumes in a new directory holding a full volume of 1 MiB blocks and `more`
    /// blocks in the next; also how many fill a volume, and the blocks.
    fn volume_and_more(more: u8) -> (tempfile::TempDir, Volumes, u8, Vec<Block>) {
        let dir = tempfile::tempdir().unwrap();
        let (volumes, _) = Volumes::open(dir.path()).unwrap();
        let per_volume = ((VOLUME_BYTES - HEAD) / record_len(1 << 20)) as u8;
        let blocks: Vec<_> = (1..=per_volume + more).map(|s| block(s, 1 << 20)).collect();
        for (id, data, crcs) in &blocks {
            volumes.put(id, data, crcs).unwrap();
        }
        (dir, volumes, per_volume, blocks)
    }

    #[test]
    fn a_full_volume_gives_way_to_an_emptied_one_before_its_timer_makes_it_a_spare() {
        let (dir, volumes, per_volume, blocks) = volume_and_more(1);
        let (gone, kept) = blocks.split_at(per_volume as usize);
        for (id, _, _) in gone {
            assert!(volumes.remove(id));
        }
        assert_eq!(volumes.lock().recycling.len(), 1);
        // Volume 1 fills; the next record goes to volume 0, with no `prepare_spares`.
        let more: Vec<_> = (0..per_volume).map(|s| block(100 + s, 1 << 20)).collect();
        for (id, data, crcs) in &more {
            volumes.put(id, data, crcs).unwrap();
        }
        assert_eq!(volume_of(&volumes, &more.last().unwrap().0), 0);
        assert!(!dir.path().join("2.vol").exists(), "a new volume was made");
        drop(volumes);
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        assert_eq!(found.len(), kept.len() + more.len());
        for (id, data, _) in kept.iter().chain(&more) {
            assert_eq!(read(&volumes, id), *data, "after a restart");
        }
        for (id, _, _) in gone {
            assert!(volumes.extent(id).is_none(), "a deleted block came back");
        }
    }

    #[test]
    fn an_emptied_volume_in_use_gives_way_to_one_written_whole() {
        let (dir, volumes, _, blocks) = volume_and_more(2);
        for (id, _, _) in &blocks {
            assert!(volumes.remove(id));
        }
        // Volume 1 holds nothing live and was written only as far as its records: the
        // next record goes to volume 0, and volume 1 goes.
        let (id, data, crcs) = block(200, 4096);
        volumes.put(&id, &data, &crcs).unwrap();
        assert_eq!(volume_of(&volumes, &id), 0);
        assert!(!dir.path().join("1.vol").exists());
        assert_eq!(read(&volumes, &id), data);
        // Volume 0 itself never gives way: the rest of it was written before.
        assert!(volumes.remove(&id));
        let (id, data, crcs) = block(201, 4096);
        volumes.put(&id, &data, &crcs).unwrap();
        assert_eq!(volume_of(&volumes, &id), 0);
    }

    #[test]
    fn emptied_volumes_are_recycled_and_their_old_records_stay_dead() {
        let dir = tempfile::tempdir().unwrap();
        let (volumes, _) = Volumes::open(dir.path()).unwrap();
        // Fill one volume with 1 MiB blocks, and start a second.
        let per_volume = ((VOLUME_BYTES - HEAD) / record_len(1 << 20)) as u8;
        let blocks: Vec<_> = (1..=per_volume + 1).map(|s| block(s, 1 << 20)).collect();
        for (id, data, crcs) in &blocks {
            volumes.put(id, data, crcs).unwrap();
        }
        assert_eq!(volume_of(&volumes, &blocks[per_volume as usize].0), 1);
        // Most of volume 0 deleted: compaction moves the rest; volume 0 waits to be
        // recycled, its file kept.
        let (keep, gone) = blocks[..per_volume as usize].split_at(5);
        for (id, _, _) in gone {
            assert!(volumes.remove(id));
        }
        assert!(!volumes.remove(&gone[0].0));
        assert_eq!(volumes.compact().unwrap(), 1);
        for (id, data, _) in keep {
            assert_eq!(read(&volumes, id), *data);
            assert_eq!(volume_of(&volumes, id), 1);
        }
        assert!(dir.path().join("0.vol").exists());
        // Not while a reader holds its file.
        let held = volumes.lock().recycling[0].1.file.clone();
        assert_eq!(volumes.prepare_spares(ZERO).unwrap(), 0);
        drop(held);
        assert_eq!(volumes.prepare_spares(ZERO).unwrap(), 1);
        // Once volume 1 is full, volume 0 takes records again, with nothing to zero.
        let more: Vec<_> = (0..per_volume).map(|s| block(100 + s, 1 << 20)).collect();
        for (id, data, crcs) in &more {
            volumes.put(id, data, crcs).unwrap();
        }
        let last = &more.last().unwrap().0;
        assert_eq!(volume_of(&volumes, last), 0);
        assert_eq!(volumes.lock().volumes[&0].zeroed, VOLUME_BYTES);
        // After a restart, what volume 0 held before its new salt stays deleted.
        drop(volumes);
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        let live: Vec<_> = keep
            .iter()
            .chain(&blocks[per_volume as usize..])
            .chain(&more)
            .collect();
        assert_eq!(found.len(), live.len());
        for (id, data, _) in &live {
            assert_eq!(read(&volumes, id), *data, "after a restart");
        }
        for (id, _, _) in gone {
            assert!(volumes.extent(id).is_none(), "a deleted block came back");
        }
        // Everything deleted: one emptied volume is kept as a spare, the others removed.
        for (id, _) in &found {
            assert!(volumes.remove(id));
        }
        assert_eq!(volumes.prepare_spares(ZERO).unwrap(), 1);
        drop(volumes);
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        assert!(found.is_empty());
        assert_eq!(
            volumes.lock().spares.len(),
            1,
            "the spare is known after a restart"
        );
        // The tombstones' volume had nothing live: removed at the start.
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "only the spare"
        );
        // It takes the next record.
        let (id, data, crcs) = block(7, 100);
        volumes.put(&id, &data, &crcs).unwrap();
        assert_eq!(volumes.lock().spares.len(), 0);
        assert_eq!(read(&volumes, &id), data);
    }

    #[test]
    fn the_volume_in_use_is_zeroed_to_its_end_once_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (volumes, _) = Volumes::open(dir.path()).unwrap();
        let first = block(1, 5_000);
        volumes.put(&first.0, &first.1, &first.2).unwrap();
        let active = |volumes: &Volumes| {
            let state = volumes.lock();
            state.volumes[&state.active.unwrap()].zeroed
        };
        let ahead = active(&volumes);
        assert!(ahead < VOLUME_BYTES);
        let hour = Duration::from_secs(3600);
        assert_eq!(volumes.zero_rest(hour).unwrap(), 0, "written to just now");
        assert_eq!(volumes.zero_rest(ZERO).unwrap(), VOLUME_BYTES - ahead);
        assert_eq!(active(&volumes), VOLUME_BYTES);
        // Records go on where they ended, synced and not, and read back.
        let (second, third) = (block(2, 4_096), block(3, 70_000));
        volumes.put(&second.0, &second.1, &second.2).unwrap();
        let file = volumes.put_unsynced(&third.0, &third.1, &third.2).unwrap();
        volumes.sync(&file).unwrap();
        for (id, data, _) in [&first, &second, &third] {
            assert_eq!(&read(&volumes, id), data);
        }
        drop((volumes, file));
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        assert_eq!(found.len(), 3, "every record is found after a restart");
        assert_eq!(read(&volumes, &third.0), third.1);
    }

    #[test]
    fn a_half_full_volume_gets_a_spare_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (volumes, _) = Volumes::open(dir.path()).unwrap();
        let half = ((VOLUME_BYTES / 2) / record_len(1 << 20)) as u8;
        for s in 1..=half {
            let (id, data, crcs) = block(s, 1 << 20);
            volumes.put(&id, &data, &crcs).unwrap();
        }
        assert_eq!(
            volumes.prepare_spares(ZERO).unwrap(),
            0,
            "not half full yet"
        );
        let (id, data, crcs) = block(half + 1, 1 << 20);
        volumes.put(&id, &data, &crcs).unwrap();
        assert_eq!(
            volumes.prepare_spares(Duration::from_secs(3600)).unwrap(),
            0,
            "written to just now"
        );
        assert_eq!(volumes.prepare_spares(ZERO).unwrap(), 1);
        assert_eq!(
            volumes.prepare_spares(ZERO).unwrap(),
            0,
            "one spare is enough"
        );
        let spare = &volumes.lock().spares[0].1;
        assert_eq!((spare.zeroed, spare.end), (VOLUME_BYTES, HEAD));
        assert!(spare.head.unwrap().whole);
    }

    #[test]
    fn volumes_of_the_release_before_are_read_and_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A volume as the release before wrote it: records from offset 0, no salt.
        let blocks: Vec<_> = (1..=3).map(|s| block(s, 5_000 * s as usize)).collect();
        let mut bytes = Vec::new();
        for (id, data, crcs) in &blocks {
            let mut head = [0u8; HEADER];
            head[..4].copy_from_slice(LEGACY_MAGIC);
            head[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
            head[8..40].copy_from_slice(&id.0);
            let crc = crc32fast::hash(&head[..40]);
            head[40..].copy_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(data);
            bytes.extend_from_slice(crcs);
        }
        bytes.resize(1 << 20, 0);
        fs::write(dir.path().join("0.vol"), &bytes).unwrap();
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        assert_eq!(found.len(), blocks.len());
        for (id, data, _) in &blocks {
            assert_eq!(read(&volumes, id), *data);
        }
        // New records go to a new volume, with a head.
        let (id, data, crcs) = block(9, 10);
        volumes.put(&id, &data, &crcs).unwrap();
        assert_eq!(volume_of(&volumes, &id), 1);
        // Emptied, the old volume is removed: it has no salt to renew.
        for (id, _, _) in &blocks {
            assert!(volumes.remove(id));
        }
        assert!(!dir.path().join("0.vol").exists());
        assert!(volumes.lock().recycling.is_empty());
    }
}
