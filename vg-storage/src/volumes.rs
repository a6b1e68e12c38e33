//! Small blocks, appended to volume files.
//!
//! A small file's block cost a storage four journal commits on a shared ext4 disk: create,
//! `fdatasync`, rename, directory `fsync`. Appending it to a preallocated file and calling
//! `fdatasync` commits no metadata at all, only the data: untar of /usr/include went from
//! about 410 to 510–560 files/s (three alternating runs each).
//!
//! Layout under `volumes/`: `<number>.vol`, each up to [`VOLUME_BYTES`], allocated whole
//! when created. A record is a header (`vgr1`, length, block id, CRC-32 of those), the
//! block's bytes, then the CRC-32 of each chunk as in a block file. Records are written in
//! offset order under a lock, so an acknowledged record (whose `fdatasync` flushed every
//! page written before it) is never preceded by one lost in a crash: the scan at start
//! reads each volume up to its first invalid header. A torn record whose header survived
//! fails its CRCs when read or scrubbed, like a damaged block file.
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

use crate::block_store::{AlignedBuf, DIRECT_ALIGN};
use crate::error::{io_err, Result};
use vg_wire::disk::{allocate, sync_dir};

/// Bytes of each volume file.
pub const VOLUME_BYTES: u64 = 64 << 20;
/// Marks the start of a record.
const MAGIC: &[u8; 4] = b"vgr1";
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

/// The header of a record.
fn header(id: &BlockId, len: u32) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(MAGIC);
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..40].copy_from_slice(&id.0);
    let crc = crc32fast::hash(&header[..40]);
    header[40..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The block id and length a header holds, if it is one.
fn parse_header(header: &[u8; HEADER]) -> Option<(BlockId, u32)> {
    let crc = u32::from_le_bytes(header[40..].try_into().expect("4 bytes"));
    if &header[..4] != MAGIC || crc32fast::hash(&header[..40]) != crc {
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

/// The records of a volume up to its first invalid header (tombstones have length 0;
/// `Loc::volume` is left 0), and where they end.
fn records(file: &File) -> std::io::Result<(Vec<(BlockId, Loc)>, u64)> {
    let size = file.metadata()?.len();
    let mut found = Vec::new();
    let mut end = 0;
    let mut head = [0u8; HEADER];
    while end + HEADER as u64 <= size {
        file.read_exact_at(&mut head, end)?;
        let Some((id, len)) = parse_header(&head) else {
            break;
        };
        let bytes = record_len(len);
        if end + bytes > size {
            break;
        }
        found.push((
            id,
            Loc {
                volume: 0,
                offset: end,
                len,
            },
        ));
        end += bytes;
    }
    Ok((found, end))
}

/// What the volumes in `dir` hold: each volume's number, file and end of records, and
/// the live record of each block (a block's last record wins; a tombstone removes it).
type Replayed = (Vec<(u32, File, u64)>, HashMap<BlockId, Loc>);

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
        let (records, end) = records(&file).map_err(io_err(format!("read {}", path.display())))?;
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
        volumes.push((number, file, end));
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
    /// Opens `path` with O_DIRECT, if its file system takes it and says its alignment
    /// (statx's `STATX_DIOALIGN`), one [`AlignedBuf`] meets.
    fn open(path: &Path) -> Option<Direct> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::OpenOptionsExt;
        let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: statx only writes into `stat`, plain data that may start zeroed; `name`
        // is a valid NUL-terminated string.
        let stat = unsafe {
            let mut stat: libc::statx = std::mem::zeroed();
            let mask = libc::STATX_DIOALIGN;
            let found = libc::statx(libc::AT_FDCWD, name.as_ptr(), 0, mask, &mut stat);
            (found == 0).then_some(stat)?
        };
        let (align, memory) = (stat.stx_dio_offset_align, stat.stx_dio_mem_align);
        let usable = stat.stx_mask & libc::STATX_DIOALIGN != 0
            && align.is_power_of_two()
            && align as usize <= DIRECT_ALIGN
            && memory as usize <= DIRECT_ALIGN;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        usable.then_some(Direct {
            file,
            align: align as u64,
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
}

struct State {
    index: HashMap<BlockId, Loc>,
    volumes: HashMap<u32, Volume>,
    /// The volume records are appended to, once one is needed.
    active: Option<u32>,
    next: u32,
}

/// The small blocks of one storage.
pub struct Volumes {
    dir: PathBuf,
    state: Mutex<State>,
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
        let mut volumes: HashMap<u32, Volume> = files
            .into_iter()
            .map(|(number, file, end)| {
                let file = Arc::new(file);
                // These take no new records (see below): nothing to zero ahead of.
                let volume = Volume {
                    file,
                    direct: None,
                    end,
                    live: 0,
                    zeroed: end,
                };
                (number, volume)
            })
            .collect();
        for loc in index.values() {
            volumes.get_mut(&loc.volume).expect("replayed").live += record_len(loc.len);
        }
        let state = State {
            next: volumes.keys().max().map_or(0, |n| n + 1),
            index,
            volumes,
            active: None,
        };
        let blocks = state.index.iter().map(|(id, l)| (*id, l.len)).collect();
        info!(dir = %dir.display(), volumes = state.volumes.len(), blocks = state.index.len(), "volumes scanned");
        let volumes = Volumes {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
        };
        // Volumes from before the restart take no new records; drop the empty ones.
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

    /// A new volume, allocated whole and durably named.
    fn create(&self, number: u32) -> Result<Volume> {
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
        file.sync_all()
            .and_then(|_| sync_dir(&self.dir))
            .map_err(io_err(format!("sync {}", path.display())))?;
        Ok(Volume {
            file: Arc::new(file),
            direct: Direct::open(&path),
            end: 0,
            live: 0,
            zeroed: 0,
        })
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
        record.extend_from_slice(&header(id, len));
        record.extend_from_slice(data);
        record.extend_from_slice(crcs);
        let (file, loc) = {
            let mut state = self.lock();
            if moving.is_some() && state.index.get(id) != moving.as_ref() {
                return Ok(None);
            }
            let (volume, offset, file) = self.write(&mut state, &record, sync)?;
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
        let synced = file
            .sync_data()
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

    /// Writes a record at the end of the volume in use (a new one when it is full), under
    /// the lock so that records land in offset order, through O_DIRECT if it is to be
    /// `synced` at once (see the module doc). Returns the volume, the record's offset,
    /// and the file to sync.
    fn write(
        &self,
        state: &mut State,
        record: &[u8],
        synced: bool,
    ) -> Result<(u32, u64, Arc<File>)> {
        let bytes = record.len() as u64;
        let number = match state.active {
            Some(n) if state.volumes[&n].end + bytes <= VOLUME_BYTES => n,
            _ => {
                let number = state.next;
                let volume = self.create(number)?;
                state.next += 1;
                state.volumes.insert(number, volume);
                if let Some(old) = state.active.replace(number) {
                    self.drop_if_empty(state, old);
                }
                number
            }
        };
        let volume = state.volumes.get_mut(&number).expect("active volume");
        let offset = volume.end;
        let write_err = || io_err(format!("write {}", self.path(number).display()));
        // A direct write ends at a sector's end, which must be zeroed already.
        let sector = volume.direct.as_ref().map_or(1, |d| d.align);
        if (offset + bytes).next_multiple_of(sector) > volume.zeroed {
            let to = (offset + bytes + ZERO_AHEAD).min(VOLUME_BYTES);
            let zeros = vec![0u8; (to - volume.zeroed) as usize];
            volume
                .file
                .write_all_at(&zeros, volume.zeroed)
                .map_err(write_err())?;
            if volume.direct.is_some() {
                // Written back now, the zeros' pages are clean by the time direct writes
                // reach them, which would otherwise write each back whole first.
                start_writeback(&volume.file, volume.zeroed, to - volume.zeroed);
            }
            volume.zeroed = to;
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
        if let Err(e) = self.write(&mut state, &header(id, 0), false) {
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

    /// Removes a volume not in use once nothing in it is live.
    fn drop_if_empty(&self, state: &mut State, number: u32) {
        if state.active == Some(number) || state.volumes.get(&number).is_none_or(|v| v.live > 0) {
            return;
        }
        state.volumes.remove(&number);
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
        let (end, zeroed) = {
            let state = volumes.lock();
            (state.volumes[&0].end, state.volumes[&0].zeroed)
        };
        // Zeroed with the first record, enough for the next ones.
        let first = record_len(blocks[0].1.len() as u32);
        assert_eq!(zeroed, first + ZERO_AHEAD, "zeros are written ahead");
        assert!(end < zeroed);
        drop(volumes);
        // A crash while a fourth record was being written: its header made it, not all
        // of its bytes; then garbage that is no header.
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("0.vol"))
            .unwrap();
        file.write_all_at(&header(&BlockId([9; 32]), u32::MAX), end)
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
        assert_eq!(volumes.extent(&id).unwrap().offset, HEADER as u64);
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

    #[test]
    fn space_comes_back_from_emptied_and_sparse_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let (volumes, _) = Volumes::open(dir.path()).unwrap();
        // Fill a little more than one volume with 1 MiB blocks.
        let n = (VOLUME_BYTES / record_len(1 << 20)) as u8 + 1;
        let blocks: Vec<_> = (1..=n).map(|s| block(s, 1 << 20)).collect();
        for (id, data, crcs) in &blocks {
            volumes.put(id, data, crcs).unwrap();
        }
        assert!(dir.path().join("1.vol").exists());
        // Most of volume 0 deleted: compaction moves the rest and removes it.
        let (keep, gone) = blocks[..blocks.len() - 1].split_at(5);
        for (id, _, _) in gone {
            assert!(volumes.remove(id));
        }
        assert!(!volumes.remove(&gone[0].0));
        assert_eq!(volumes.compact().unwrap(), 1);
        assert!(!dir.path().join("0.vol").exists());
        for (id, data, _) in keep {
            assert_eq!(read(&volumes, id), *data);
        }
        // Deletions survive a restart; everything deleted from a volume no longer in use:
        // removed at once (its tombstones went to a new volume, itself removed once a
        // restart finds nothing live in it).
        assert!(volumes.remove(&keep[0].0));
        drop(volumes);
        assert_eq!(on_disk(dir.path()).unwrap().len(), keep.len());
        let (volumes, found) = Volumes::open(dir.path()).unwrap();
        assert_eq!(found.len(), keep.len());
        assert!(volumes.extent(&keep[0].0).is_none());
        for (id, _) in &found {
            assert!(volumes.remove(id));
        }
        assert!(!dir.path().join("1.vol").exists());
        drop(volumes);
        assert!(Volumes::open(dir.path()).unwrap().1.is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
