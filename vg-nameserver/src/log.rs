//! Durable metadata: the Raft log of the namespace's changes, with group commit, and the
//! snapshot and vote beside it.
//!
//! Files under the metadata directory:
//! - `log`: records of `len: u32, crc32: u32, payload`, payload = a [`Record`] (a Raft
//!   entry, or a mark), then zeros: the file is allocated ahead of the records
//!   ([`PREALLOCATE`]).
//! - `log.sectors`: the same bytes at the same offsets, up to the last sync round's end,
//!   then zeros: what the sync thread writes in whole sectors and syncs ([`Sectors`]);
//!   it stands for the log after a reboot.
//! - `snapshot`: `b"vgsnap06"`, crc32 of the payload, payload length (u64), payload =
//!   `(last applied log id, membership, Namespace)`; written to `snapshot.tmp`, fsynced,
//!   renamed, directory fsynced. The same bytes are what a member sends a follower that
//!   needs the snapshot.
//! - `vote`: the last vote, crc32 first, replaced the same way.
//!
//! A directory of an older release (a `wal` of `(lsn, Op)` records, a `vgsnap01` to
//! `vgsnap05` snapshot) is converted at open ([`legacy`]): replayed as that release did,
//! written as a snapshot, the `wal` removed.
//!
//! Recovery reads the records and stops at the first one that is empty (the zeros), short
//! or fails its checksum (a torn tail): the file is cut there. Entries are written in
//! index order, so what a power loss leaves is a prefix.
//!
//! Two points in an entry's life: *written* (copied into the file's pages through a shared
//! mapping of its allocated space, [`Mapped`], or handed to the OS with `pwrite` where it
//! cannot allocate ahead: it survives a crash of the process) and *durable* (copied to `log.sectors` and `fdatasync` returned:
//! it survives a power loss).
//! Raft takes an entry as persisted when openraft's callback is called: once written (the
//! default contract: a change is acknowledged once a majority wrote it), or once durable
//! (`--durability strict`).
//!
//! Syncing: a thread of the log's own syncs whatever has been written (group commit). A
//! round starts at once when someone waits for the disk (an `fsync`'s commit, a `Sync`,
//! every append under `--durability strict`), and otherwise [`LINGER`] after the first
//! entry it covers, so that the entries at risk from a power loss are those of one linger
//! and one sync. An entry that names blocks storages acknowledged before syncing them
//! must not be recovered after a power loss unless they synced them, or a layout would
//! name a block that is gone: its [`Proposal::needs`] name those storages; each round of
//! the thread takes what was written so far with the storages it depends on, has the
//! [`Gate`] (the service) ask them to sync, then appends a *mark* (everything before this index passed the gate, written
//! in boot B of the machine) and syncs. Gating the sync alone is not enough: an
//! `fdatasync` takes whatever the file holds, entries written while the gate ran
//! included, and so may the kernel's writeback at any moment; so after a reboot
//! ([`LogStore::open`]) recovery keeps only what the last mark covers. Within one boot
//! the OS lost nothing, and recovery keeps every entry written.
//!
//! Positions: an entry's index is openraft's (the first, the group's membership, is 0);
//! *ends* (`written`, `durable`, a mark's `upto`) are one past the last index they cover,
//! so that 0 means none.

mod legacy;

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, StorageError, Vote};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::namespace::{Namespace, Op};
use crate::raft::{Entry, LogId, Membership, NodeId, TypeConfig};
use vg_wire::{BlockId, Ino};

const SNAPSHOT_MAGIC: &[u8; 8] = b"vgsnap06";
/// The vote's file in the metadata directory.
const VOTE: &str = "vote";
/// How long a sync round waits for more entries when nobody waits for the disk. Rounds
/// back to back (one per change at these rates) cost the nameserver a third of its CPU
/// per metadata change, in thread wake-ups and the disk's interrupts: a create through
/// the mount took 352 µs and 148 µs of its CPU, and 294 and 93 with rounds 2 ms apart
/// (BENCHMARKS.md, stop 27). A power loss may take the changes of this much more time;
/// ext4 commits its journal every 5 s.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);
/// Largest record accepted on recovery; anything larger is a torn or corrupt tail.
const MAX_RECORD: u32 = 64 << 20;
/// Entries kept in memory as appended, the log's newest: openraft reads each entry back
/// to apply it (and a leader to send it to followers) moments after it was appended, and
/// reading it from the file cost a `pread` and a decode per change.
const TAIL_ENTRIES: usize = 1024;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Bytes the log file is allocated ahead of its records. `fdatasync` after writing
/// into allocated space does not have to log a new file size and new extents as well:
/// a change's write and sync took 122 µs appending and 100 µs into allocated space.
const PREALLOCATE: u64 = 16 << 20;

/// The log's copy in whole sectors (see [`Sectors`]).
const SECTORS: &str = "log.sectors";
/// Bytes of zeros written ahead of the copy's end: writing into space never written
/// costs the `fdatasync` after it a change of the file's extents as well.
const ZERO_AHEAD: u64 = 1 << 20;

/// The copy of the log the sync thread writes and syncs instead of the log, in whole
/// sectors through O_DIRECT: an `fdatasync` of the log wrote the 4 KiB page its last
/// records were in (1.04 bytes on disk per byte of fsync'd 4 KiB writes, the log's
/// records being 164 bytes), a round here writes the sectors from the last round's end
/// on (512 bytes). The log itself is written as before and never synced: it holds every
/// entry written, for a restart in the same boot; after a reboot the copy, which holds
/// every round synced, takes its place ([`LogStore::open`]). The copy holds the log's
/// bytes at the same offsets up to `copied`, so a truncation or a purge changes both.
struct Sectors {
    file: Arc<File>,
    /// Alignment of O_DIRECT offsets and lengths.
    align: u64,
    /// End of the log's bytes the copy holds.
    copied: u64,
    /// End of the zeros written ahead.
    zeroed: u64,
    /// Bumped by a truncation or a purge: a round that read the log before does not
    /// write what it read.
    generation: u64,
    /// Syncs a round by a flush of the disk's cache alone, where the copy's `fdatasync`
    /// would write its inode as well ([`vg_wire::disk::CacheFlush`]): the copy's bytes
    /// below `zeroed` are in space whose extents are on disk (the file is synced when
    /// created and after each write of zeros ahead), and rounds write only there.
    flush: Arc<vg_wire::disk::CacheFlush>,
}

impl Sectors {
    /// Opens the copy at `path`, holding `bytes` (the log's first), and writes its first
    /// sector again through it, to know that the file system takes such writes: FUSE
    /// says no alignment, and one is assumed (a page). `None` where it does not.
    fn open(path: &Path, bytes: &[u8], generation: u64) -> Option<Sectors> {
        let assumed = vg_wire::disk::DIRECT_ALIGN as u64;
        let (file, align) = vg_wire::disk::open_direct(path, Some(assumed))?;
        let mut first = vg_wire::disk::AlignedBuf::new(align as usize);
        let n = bytes.len().min(align as usize);
        first.as_mut()[..n].copy_from_slice(&bytes[..n]);
        if let Err(e) = file.write_all_at(&first, 0) {
            warn!(path = %path.display(), error = %e, "the log's copy takes no direct writes; syncing the log itself");
            return None;
        }
        let len = bytes.len() as u64;
        let dir = path.parent().unwrap_or(Path::new("."));
        let flush = Arc::new(vg_wire::disk::CacheFlush::for_dir(dir));
        Some(Sectors {
            file: Arc::new(file),
            align,
            copied: len,
            zeroed: len.max(align),
            generation,
            flush,
        })
    }

    /// Copies the log's bytes from `copied` to `end` in whole sectors (the first
    /// rewritten with the bytes it held, the last ended with zeros), and zeros ahead when
    /// the next round would pass them; the caller syncs.
    fn write(&mut self, log: &File, end: u64) -> std::io::Result<()> {
        if end <= self.copied {
            return Ok(());
        }
        let start = self.copied / self.align * self.align;
        let stop = end.next_multiple_of(self.align);
        let mut buf = vg_wire::disk::AlignedBuf::new((stop - start) as usize);
        log.read_exact_at(&mut buf.as_mut()[..(end - start) as usize], start)?;
        self.file.write_all_at(&buf, start)?;
        self.copied = end;
        if stop + self.align > self.zeroed {
            let at = self.zeroed.max(stop).next_multiple_of(self.align);
            let zeros = vg_wire::disk::AlignedBuf::new(ZERO_AHEAD as usize);
            self.file.write_all_at(&zeros, at)?;
            if self.flush.flushes_alone() {
                self.file.sync_data()?;
            }
            self.zeroed = at + ZERO_AHEAD;
        }
        Ok(())
    }
}

/// A record of the log file.
#[derive(Serialize, Deserialize)]
enum Record {
    /// A Raft entry.
    Entry(Entry),
    /// Every entry before `upto` passed the gate, and this was written in boot `boot`
    /// of the machine, when the entries up to `committed` were known committed.
    Mark {
        upto: u64,
        boot: [u8; 16],
        committed: Option<LogId>,
    },
    /// A [`Record::Mark`] that also says where the entries holding raced writes the
    /// nameserver has not yet checked begin (`unchecked`, `upto` if none): recovery
    /// hands those from there on back for checking. What this release writes.
    Mark2 {
        upto: u64,
        boot: [u8; 16],
        committed: Option<LogId>,
        unchecked: u64,
    },
}

/// A raced write not yet checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RacedWrite {
    /// The file written.
    pub ino: Ino,
    /// The client's upload.
    pub race: u64,
    /// The blobs it names.
    pub blobs: Vec<BlockId>,
    /// The storages the client sent them to.
    pub holders: Vec<String>,
    /// The file's size the write set, and before it.
    pub sizes: (u64, u64),
}

/// The raced writes of an entry not yet checked.
pub type Raced = Vec<RacedWrite>;

/// The raced writes of `entry`, if it has any.
fn raced_in(entry: &Entry) -> Option<Raced> {
    let EntryPayload::Normal(proposal) = &entry.payload else {
        return None;
    };
    let raced: Raced = proposal
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::RacedWrite {
                ino,
                size,
                slices,
                race,
                holders,
                before,
                ..
            } => {
                let blobs: BTreeSet<BlockId> = slices
                    .iter()
                    .flat_map(|(_, list)| list.iter().map(|s| s.blob))
                    .collect();
                Some(RacedWrite {
                    ino: *ino,
                    race: *race,
                    blobs: blobs.into_iter().collect(),
                    holders: holders.clone(),
                    sizes: (*size, *before),
                })
            }
            _ => None,
        })
        .collect();
    (!raced.is_empty()).then_some(raced)
}

/// Where an entry is in the file.
#[derive(Clone, Copy, Debug)]
struct Slot {
    log_id: LogId,
    offset: u64,
    len: u32,
}

/// The log file's allocated space, mapped shared: an append copies its records into
/// the file's pages rather than calling `pwrite`, which cost 8 µs of a metadata
/// change's ~100 through the mount (a page fault instead, once per page of records).
/// Written so, the records are in the page cache as a write's would be: a crash of the
/// process loses none of them, and reads and the sync thread's copy see them. The space
/// is allocated before it is mapped, so a store needs no new blocks; one the kernel still
/// cannot back (an I/O error) ends the process with SIGBUS, a crash that loses nothing
/// acknowledged, where `pwrite` would have returned the error.
struct Mapped {
    at: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is only written through `&mut self` (under the log file's lock)
// and unmapped once, on drop; nothing else holds its address.
unsafe impl Send for Mapped {}

impl Mapped {
    /// Maps the first `len` bytes of `file`, which the file holds (allocated): a store
    /// past the file's end would raise SIGBUS.
    fn new(file: &File, len: u64) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        // SAFETY: a fresh shared mapping of an open descriptor; the result is checked.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let at = std::ptr::NonNull::new(at.cast()).ok_or_else(|| std::io::Error::other("mmap"))?;
        Ok(Mapped { at, len })
    }

    /// Copies `buf` to offset `offset`, if the mapping holds all of it.
    fn write(&mut self, buf: &[u8], offset: u64) -> bool {
        let Ok(offset) = usize::try_from(offset) else {
            return false;
        };
        if offset
            .checked_add(buf.len())
            .is_none_or(|end| end > self.len)
        {
            return false;
        }
        // SAFETY: `offset..offset + buf.len()` lies in the mapping (checked above), which
        // the file holds; `buf` is not in it.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), self.at.as_ptr().add(offset), buf.len())
        };
        true
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; nothing refers into it.
        unsafe { libc::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

/// The log file, written at `end` rather than appended to, because of the allocation.
struct LogFile {
    file: File,
    /// `file`'s allocated space mapped, once a write needed it (see [`Mapped`]); dropped
    /// when the file is cut or replaced, as it then may reach past the file's end.
    mapped: Option<Mapped>,
    /// Set once mapping failed: appends are written from then on.
    unmappable: bool,
    /// End of the records.
    end: u64,
    /// Bytes allocated; 0 when the file system cannot allocate ahead (then writes just
    /// extend the file).
    allocated: u64,
    can_allocate: bool,
    /// The entries after the last purged one, in index order.
    slots: VecDeque<Slot>,
    /// The entries of the last `tail.len()` slots, as appended (at most
    /// [`TAIL_ENTRIES`]; none recovered from the file).
    tail: VecDeque<Entry>,
    /// The last entry purged (in the snapshot, and gone from the file or ignored).
    purged: Option<LogId>,
}

impl LogFile {
    /// Writes `buf` after the records (not synced): into the mapping of the allocated
    /// space where the file system allocates ahead, else with `pwrite`.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let end = self.end + buf.len() as u64;
        if end > self.allocated && self.can_allocate {
            let size = end.next_multiple_of(PREALLOCATE);
            match vg_wire::disk::allocate(&self.file, size) {
                Ok(()) => self.allocated = size,
                Err(e) => {
                    warn!(error = %e, "cannot allocate the log ahead; appending");
                    self.can_allocate = false;
                    self.mapped = None;
                }
            }
        }
        if self.can_allocate && !self.unmappable && end <= self.allocated {
            if self.mapped.as_ref().is_none_or(|m| (m.len as u64) < end) {
                // Remapped each time the allocation grows: once per [`PREALLOCATE`].
                self.mapped = None;
                match Mapped::new(&self.file, self.allocated) {
                    Ok(mapped) => self.mapped = Some(mapped),
                    Err(e) => {
                        warn!(error = %e, "cannot map the log; writing it");
                        self.unmappable = true;
                    }
                }
            }
            if self.mapped.as_mut().is_some_and(|m| m.write(buf, self.end)) {
                self.end = end;
                return Ok(());
            }
        }
        self.file.write_all_at(buf, self.end)?;
        self.end = end;
        Ok(())
    }

    /// Cuts the file at `offset` (everything after is gone, allocation included).
    fn cut(&mut self, offset: u64) -> std::io::Result<()> {
        self.mapped = None;
        self.file.set_len(offset)?;
        (self.end, self.allocated) = (offset, offset);
        Ok(())
    }

    /// The entry in the slot at `position` in `slots`: from the tail if it is there.
    fn entry(&self, position: usize) -> std::io::Result<Entry> {
        match position.checked_sub(self.slots.len() - self.tail.len()) {
            Some(at) => Ok(self.tail[at].clone()),
            None => self.read(&self.slots[position]),
        }
    }

    /// Keeps `entries`, just appended, in the tail.
    fn keep(&mut self, entries: Vec<Entry>) {
        self.tail.extend(entries);
        while self.tail.len() > TAIL_ENTRIES {
            self.tail.pop_front();
        }
    }

    /// Drops from the tail the entries whose slots are gone: cut from the end
    /// (`truncate_from`) or purged from the front.
    fn trim_tail(&mut self, cut_from_end: usize) {
        let keep = self.tail.len().saturating_sub(cut_from_end);
        self.tail.truncate(keep);
        while self.tail.len() > self.slots.len() {
            self.tail.pop_front();
        }
    }

    /// The entry in `slot`, read from the file.
    fn read(&self, slot: &Slot) -> std::io::Result<Entry> {
        let mut buf = vec![0; 8 + slot.len as usize];
        self.file.read_exact_at(&mut buf, slot.offset)?;
        match vg_wire::codec::from_bytes::<Record>(&buf[8..]) {
            Ok(Record::Entry(entry)) => Ok(entry),
            _ => Err(std::io::Error::other(format!(
                "log: no entry {} at offset {}",
                slot.log_id, slot.offset
            ))),
        }
    }

    /// The position in `slots` of the entry at `index`.
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.slots.front()?.log_id.index;
        let at = index.checked_sub(first)? as usize;
        (at < self.slots.len()).then_some(at)
    }
}

/// A snapshot of the namespace after `applied`, encoded but not yet written (see
/// [`LogStore::settled`]).
pub struct Capture {
    applied: Option<LogId>,
    inodes: usize,
    bytes: Vec<u8>,
}

/// Makes storages sync what they acknowledged (by name), and has the raced writes whose
/// uploads were not synced (see [`vg_wire::ns::RACE_UNSYNCED`]) in entries before the end
/// given checked; resolves to true once done, or once the storages are no longer there to
/// ask, and to false if the nameserver is stopping (then the log is marked no more:
/// entries after the last mark might name blocks that are not on disk).
pub type Gate =
    Arc<dyn Fn(BTreeSet<String>, u64) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

struct Shared {
    dir: PathBuf,
    /// Lock order: `file`, then the others. Whoever holds `file` is the one writing.
    file: Mutex<LogFile>,
    /// The copy the sync thread syncs; `None` where the file system has no O_DIRECT
    /// (then it syncs the log itself).
    sectors: Mutex<Option<Sectors>>,
    /// End of the entries handed to the OS.
    written: AtomicU64,
    /// Bumped by each truncation: a sync round that saw one does not advance `durable`.
    truncations: AtomicU64,
    /// Storages the entries written and not yet marked depend on, for the next gate.
    needs: Mutex<BTreeSet<String>>,
    /// End of the entries on disk and marked, watched by those who wait for it.
    durable: tokio::sync::watch::Sender<u64>,
    /// The largest end anyone waits to be durable (always written by then): while it is
    /// past `durable`, the sync thread does not linger.
    wanted: AtomicU64,
    /// The end of an entry someone will wait for once it is written ([`LogStore::expect_next`]):
    /// the write that reaches it ends the linger.
    expected: AtomicU64,
    /// Set when a write or fsync failed: nothing more can be acknowledged.
    failed: Mutex<Option<String>>,
    /// Wakes the sync thread: something was written (or the log was dropped).
    wake: Arc<Wake>,
    gate: Mutex<Option<Gate>>,
    /// The boot of the machine this process runs in, written in each mark.
    boot: [u8; 16],
    /// How long the sync thread's syncs take (the mark's write and the `fdatasync`).
    syncs: vg_wire::metrics::Latency,
    /// Under `--durability strict`, openraft's callbacks wait for the entries' sync:
    /// each with the end it needs.
    flushed: Mutex<Vec<(u64, LogFlushed<TypeConfig>)>>,
    /// Whether appends are persisted once durable rather than once written.
    strict: bool,
    /// The last entry known committed, recorded in the next mark.
    committed: Mutex<Option<LogId>>,
    /// Bytes appended since the last snapshot.
    since_snapshot: AtomicU64,
    /// The last entry the snapshot file holds.
    snapshot_applied: Mutex<Option<LogId>>,
    /// Entries holding raced writes the nameserver has not yet checked, by index.
    raced: Mutex<std::collections::BTreeMap<u64, Raced>>,
    /// Entries not yet checked whose unsynced raced writes their client said every storage
    /// acknowledged: the gate has those storages sync them.
    vouched: Mutex<BTreeSet<u64>>,
    /// Entries whose raced writes were checked, with the end the log had then: one undone
    /// counts as unchecked in a mark until its undoing is covered too.
    settling: Mutex<std::collections::BTreeMap<u64, u64>>,
}

impl Shared {
    fn lock_file(&self) -> std::sync::MutexGuard<'_, LogFile> {
        self.file.lock().expect("log file lock")
    }

    /// Appends the mark that the entries before `upto` passed the gate; returns a
    /// descriptor of the file it went into (the file is replaced when the log is purged,
    /// and the new one holds the mark as well), the end of the bytes written, and the
    /// copy's generation.
    fn write_mark(&self, upto: u64) -> std::result::Result<(File, u64, u64), String> {
        let mut file = self.lock_file();
        let mark = frame_record(&self.mark(upto)).map_err(|e| e.to_string())?;
        file.write(&mark).map_err(|e| e.to_string())?;
        let generation = self.sectors().as_ref().map_or(0, |s| s.generation);
        let log = file.file.try_clone().map_err(|e| e.to_string())?;
        Ok((log, file.end, generation))
    }

    fn sectors(&self) -> std::sync::MutexGuard<'_, Option<Sectors>> {
        self.sectors.lock().expect("log lock")
    }

    /// Makes the log's bytes up to `end` durable: copies them to the sector copy and
    /// syncs it, or syncs the log where there is no copy. False if the log was cut or
    /// purged since the round read its end (`generation`): the next round syncs.
    fn sync_to(&self, log: &File, end: u64, generation: u64) -> std::io::Result<bool> {
        let copy = match self.sectors().as_mut() {
            None => None,
            Some(sectors) if sectors.generation != generation => return Ok(false),
            Some(sectors) => {
                sectors.write(log, end)?;
                Some((sectors.file.clone(), sectors.flush.clone()))
            }
        };
        match copy {
            Some((copy, flush)) => flush.sync([&*copy])?,
            None => log.sync_data()?,
        }
        Ok(true)
    }

    /// The mark of the entries before `upto`.
    fn mark(&self, upto: u64) -> Record {
        Record::Mark2 {
            upto,
            boot: self.boot,
            committed: *self.committed.lock().expect("log lock"),
            unchecked: self
                .first_unchecked(upto)
                .map_or(upto, |first| first.min(upto)),
        }
    }

    /// The first entry whose raced writes are not known checked by the entries before
    /// `upto`: not checked yet, or checked (undone, perhaps) by entries from `upto` on.
    fn first_unchecked(&self, upto: u64) -> Option<u64> {
        let raced = self.raced.lock().expect("log lock").keys().next().copied();
        let settling = self.settling.lock().expect("log lock");
        let late = settling
            .iter()
            .find(|(_, &end)| end > upto)
            .map(|(&index, _)| index);
        raced.into_iter().chain(late).min()
    }

    fn fail(&self, what: &str, e: &dyn std::fmt::Display) {
        tracing::error!(error = %e, "log {what} failed; refusing further changes");
        *self.failed.lock().expect("log lock") = Some(format!("{what}: {e}"));
        // Wakes the waiters, who then see the failure.
        self.durable.send_modify(|_| {});
        for (_, callback) in self.flushed.lock().expect("log lock").drain(..) {
            callback.log_io_completed(Err(std::io::Error::other(format!("log {what}: {e}"))));
        }
    }

    fn check(&self) -> Result<()> {
        match self.failed.lock().expect("log lock").clone() {
            Some(reason) => Err(Error::Io {
                context: "log".into(),
                source: std::io::Error::other(reason),
            }),
            None => Ok(()),
        }
    }

    /// Has the sync thread sync everything before `end` without lingering.
    fn hurry(&self, end: u64) {
        self.wanted.fetch_max(end, Ordering::AcqRel);
        self.wake.hurry(|| self.due());
    }

    /// Whether someone waits for entries that are written but not durable: a lingering
    /// sync round then starts at once. An expected entry counts once written: woken
    /// before, the thread would find nothing to sync and go back to waiting, two
    /// context switches on the requesting thread's CPU per `fsync`.
    fn due(&self) -> bool {
        let durable = *self.durable.borrow();
        let expected = self.expected.load(Ordering::Acquire);
        self.wanted.load(Ordering::Acquire) > durable
            || (expected > durable && expected <= self.written.load(Ordering::Acquire))
    }

    /// Waits up to [`LINGER`] for more entries before a sync round, unless someone waits
    /// for what is written and not yet durable.
    fn linger(&self) {
        let deadline = std::time::Instant::now() + LINGER;
        let mut bell = self.wake.lock();
        while !self.due() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            bell.lingering = true;
            bell = self.wake.cond.wait_timeout(bell, left).expect("log lock").0;
        }
        bell.lingering = false;
    }

    /// The entries before `end` holding raced writes not yet checked whose uploads were
    /// not synced, and whether their client vouched for them.
    fn unsynced_raced(&self, end: u64) -> Vec<(u64, Raced, bool)> {
        let raced = self.raced.lock().expect("log lock");
        let vouched = self.vouched.lock().expect("log lock");
        unsynced_in(&raced, end)
            .map(|(&index, writes)| (index, writes.clone(), vouched.contains(&index)))
            .collect()
    }

    /// Whether an entry before `end` holds such a write (each sync round asks).
    fn any_unsynced_raced(&self, end: u64) -> bool {
        unsynced_in(&self.raced.lock().expect("log lock"), end)
            .next()
            .is_some()
    }

    /// Marks everything before `end` durable, and tells openraft about the entries
    /// that waited for it.
    fn advance(&self, end: u64) {
        self.durable.send_modify(|d| *d = (*d).max(end));
        self.settling
            .lock()
            .expect("log lock")
            .retain(|_, &mut checked_at| checked_at > end);
        let ready: Vec<LogFlushed<TypeConfig>> = {
            let mut flushed = self.flushed.lock().expect("log lock");
            let (ready, waiting) = flushed.drain(..).partition(|(at, _)| *at <= end);
            *flushed = waiting;
            ready.into_iter().map(|(_, callback)| callback).collect()
        };
        for callback in ready {
            callback.log_io_completed(Ok(()));
        }
    }

    /// The sync thread, one round after another while more is written: lingers (see
    /// [`LINGER`]), takes what was written so far and the storages it depends on, has
    /// the [`Gate`] ask them to sync, writes the mark, and syncs the file. Through its own
    /// descriptor and without the file lock, so that writers do not wait for the disk. A
    /// thread of its own rather than a task handing each sync to tokio's blocking pool:
    /// that cost two wake-ups per sync, one of them the request thread's. The gate, which
    /// talks to storages, runs on the nameserver's runtime. Ends when the log is dropped.
    fn sync_loop(
        shared: std::sync::Weak<Shared>,
        wake: Arc<Wake>,
        runtime: tokio::runtime::Handle,
    ) {
        loop {
            wake.wait();
            loop {
                let Some(this) = shared.upgrade() else {
                    return;
                };
                this.linger();
                let (written, needs, truncations) = {
                    let _file = this.lock_file();
                    let mut needs = this.needs.lock().expect("log lock");
                    (
                        this.written.load(Ordering::Acquire),
                        std::mem::take(&mut *needs),
                        this.truncations.load(Ordering::Acquire),
                    )
                };
                if *this.durable.borrow() >= written || this.check().is_err() {
                    break;
                }
                let gate = this.gate.lock().expect("log lock").clone();
                let waits = !needs.is_empty() || this.any_unsynced_raced(written);
                if let (true, Some(gate)) = (waits, gate) {
                    if !runtime.block_on(gate(needs, written)) {
                        return;
                    }
                }
                let started = std::time::Instant::now();
                let (log, end, generation) = match this.write_mark(written) {
                    Ok(marked) => marked,
                    Err(e) => return this.fail("write", &e),
                };
                let synced = match this.sync_to(&log, end, generation) {
                    Ok(synced) => synced,
                    Err(e) => return this.fail("fsync", &e),
                };
                this.syncs.observe(started.elapsed());
                // A truncation meanwhile may have cut what this round took: the next
                // round syncs what is there now.
                if synced && this.truncations.load(Ordering::Acquire) == truncations {
                    this.advance(written);
                }
            }
        }
    }
}

/// The entries of `raced` before `end` holding a write whose uploads were not synced.
fn unsynced_in(
    raced: &std::collections::BTreeMap<u64, Raced>,
    end: u64,
) -> impl Iterator<Item = (&u64, &Raced)> {
    raced
        .range(..end)
        .filter(|(_, writes)| writes.iter().any(|w| !vg_wire::ns::race_synced(w.race)))
}

/// The sync thread's doorbell: what it was told, and its condition variable.
#[derive(Default)]
struct Wake {
    bell: Mutex<Bell>,
    cond: Condvar,
}

#[derive(Default)]
struct Bell {
    /// Something was written (or the log dropped) since the thread last looked.
    rung: bool,
    /// The thread waits for `rung`: a write wakes it.
    idle: bool,
    /// The thread lingers: a write wakes it only if that makes a sync due (a wake-up
    /// per change while it lingers would cost what lingering saves).
    lingering: bool,
}

impl Wake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Bell> {
        self.bell.lock().expect("log lock")
    }

    /// Something was written; `due` says whether a sync is (see [`Shared::due`]), asked
    /// under the lock the thread decides to linger under. The thread is woken after the
    /// lock is released: woken under it, it would block on it at once.
    fn set(&self, due: impl FnOnce() -> bool) {
        let wake = {
            let mut bell = self.lock();
            bell.rung = true;
            bell.idle || (bell.lingering && due())
        };
        if wake {
            self.cond.notify_one();
        }
    }

    /// Wakes the thread if it lingers and a sync is due. An idle one has synced
    /// everything written, and the write the hurry is for wakes it.
    fn hurry(&self, due: impl FnOnce() -> bool) {
        let wake = {
            let bell = self.lock();
            bell.lingering && due()
        };
        if wake {
            self.cond.notify_one();
        }
    }

    /// Waits until rung, and clears it.
    fn wait(&self) {
        let mut bell = self.lock();
        bell.idle = true;
        while !bell.rung {
            bell = self.cond.wait(bell).expect("log lock");
        }
        (bell.rung, bell.idle) = (false, false);
    }
}

/// The log of one metadata directory: openraft's log storage, and (cloned) the service's
/// handle on durability and snapshots. The sync thread stops when the last clone goes.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The last entry the snapshot holds.
    pub snapshot: Option<LogId>,
    /// Entries after it in the log.
    pub entries: u64,
    /// Bytes of torn or corrupt tail dropped from the log.
    pub dropped_bytes: u64,
    /// Entries holding raced writes not known checked, by index: the nameserver checks
    /// them once the storages have reported ([`LogStore::raced`]).
    pub raced: std::collections::BTreeMap<u64, Raced>,
    /// Entries dropped because the machine rebooted since they were written and no mark
    /// covers them: they might name blobs the storages lost.
    pub unmarked: u64,
    /// LSN of the legacy snapshot converted, if one was.
    pub snapshot_lsn: u64,
    /// Records replayed from a legacy log.
    pub replayed: u64,
}

/// The state a snapshot holds.
pub struct Snapshot {
    /// The last entry applied to it.
    pub applied: Option<LogId>,
    /// The group's membership then.
    pub membership: Membership,
    /// The namespace.
    pub ns: Namespace,
}

impl Snapshot {
    /// The state before any entry.
    fn empty() -> Self {
        Snapshot {
            applied: None,
            membership: Membership::default(),
            ns: Namespace::default(),
        }
    }
}

/// The machine's boot, from `path` (`/proc/sys/kernel/random/boot_id`: a new one at each
/// boot).
pub fn boot_id(path: &Path) -> Result<[u8; 16]> {
    let text = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    // SHA-256 as before BLAKE3 named blocks: a boot read differently since the last
    // mark would count as a reboot, and drop what the marks do not cover.
    let hash = vg_wire::BlockId::sha256(text.trim_ascii()).0;
    Ok(hash[..16].try_into().expect("16 bytes"))
}

/// A payload framed as a record: length, checksum, payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(8 + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

fn frame_record(record: &Record) -> Result<Vec<u8>> {
    Ok(frame(&vg_wire::codec::to_bytes(record)?))
}

/// Splits `bytes` into framed payloads, each with the offset its frame starts at; stops
/// at the first that is empty, short or fails its checksum. Returns them and the length of
/// the valid prefix.
fn parse_frames(bytes: &[u8]) -> (Vec<(&[u8], usize)>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= 8 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        // Length 0: the allocated space after the last record.
        if len == 0 || len > MAX_RECORD || bytes.len() - pos - 8 < len as usize {
            break;
        }
        let payload = &bytes[pos + 8..pos + 8 + len as usize];
        if crc32fast::hash(payload) != crc {
            break;
        }
        frames.push((payload, pos));
        pos += 8 + len as usize;
    }
    (frames, pos)
}

fn sync_dir(dir: &Path) -> Result<()> {
    vg_wire::disk::sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))
}

/// Writes `bytes` to `dir/name` through a temporary file, synced and renamed.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io_err(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))?;
    sync_dir(dir)
}

/// Writes `bytes`, the log's, as its sector copy ([`Sectors`]); where the file system
/// has no O_DIRECT, removes the copy instead: one left from before would take the log's
/// place after a reboot.
fn copy_log(dir: &Path, bytes: &[u8], generation: u64) -> Result<Option<Sectors>> {
    let path = dir.join(SECTORS);
    let sectors = replace_file(dir, SECTORS, bytes)
        .map(|()| Sectors::open(&path, bytes, generation))
        .inspect_err(|_| {
            // Not written whole: a copy from before must not stand for the log either.
            let _ = std::fs::remove_file(&path);
        })?;
    if sectors.is_none() {
        std::fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
        sync_dir(dir)?;
    }
    Ok(sectors)
}

/// The boot the last mark in the log's `bytes` was written in.
fn last_boot(bytes: &[u8]) -> Option<[u8; 16]> {
    let (frames, _) = parse_frames(bytes);
    frames.iter().rev().find_map(|(payload, _)| {
        match vg_wire::codec::from_bytes::<Record>(payload) {
            Ok(Record::Mark { boot, .. } | Record::Mark2 { boot, .. }) => Some(boot),
            _ => None,
        }
    })
}

/// The bytes of a snapshot file holding `ns` after `applied`.
fn encode_snapshot(
    applied: Option<LogId>,
    membership: &Membership,
    ns: &Namespace,
) -> Result<Vec<u8>> {
    let payload = vg_wire::codec::to_file_bytes(&(applied, membership, ns))?;
    let mut bytes = Vec::with_capacity(20 + payload.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// The magic and checked payload of snapshot file bytes.
fn snapshot_payload(bytes: &[u8]) -> std::result::Result<(&[u8], &[u8]), String> {
    let magic = bytes.get(..8).unwrap_or_default();
    if bytes.len() < 20 || !(magic == SNAPSHOT_MAGIC || legacy::MAGICS.iter().any(|m| magic == *m))
    {
        return Err("not a vg snapshot (bad magic)".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[20..];
    if payload.len() as u64 != len || crc32fast::hash(payload) != crc {
        return Err("snapshot checksum mismatch".into());
    }
    Ok((magic, payload))
}

/// The checked payload of a snapshot file of this release.
fn this_release(bytes: &[u8]) -> std::result::Result<&[u8], String> {
    let (magic, payload) = snapshot_payload(bytes)?;
    if magic != SNAPSHOT_MAGIC {
        return Err("a snapshot of an older release, not this one's".into());
    }
    Ok(payload)
}

/// Decodes the bytes of a snapshot file of this release.
pub fn decode_snapshot(bytes: &[u8]) -> std::result::Result<Snapshot, String> {
    let payload = this_release(bytes)?;
    let (applied, membership, mut ns): (Option<LogId>, Membership, Namespace) =
        vg_wire::codec::from_file_bytes(payload).map_err(|e| e.to_string())?;
    ns.rebuild_refs();
    Ok(Snapshot {
        applied,
        membership,
        ns,
    })
}

/// The applied log id and membership a snapshot file holds, without decoding its
/// namespace (what openraft asks of the snapshot it sends).
pub fn decode_snapshot_head(
    bytes: &[u8],
) -> std::result::Result<(Option<LogId>, Membership), String> {
    vg_wire::codec::from_file_prefix(this_release(bytes)?).map_err(|e| e.to_string())
}

/// Reads the snapshot file of `dir`; converts a directory of an older release first.
fn read_snapshot(dir: &Path, boot: [u8; 16], recovery: &mut Recovery) -> Result<Snapshot> {
    let path = dir.join("snapshot");
    let corrupt = |reason| Error::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let magic = bytes.as_deref().and_then(|b| b.get(..8));
    if magic != Some(SNAPSHOT_MAGIC.as_slice()) && legacy::present(dir, magic)? {
        let mut ns = match &bytes {
            Some(bytes) => {
                let (magic, payload) = snapshot_payload(bytes).map_err(corrupt)?;
                let (lsn, ns) = legacy::decode_snapshot(magic, payload).map_err(corrupt)?;
                recovery.snapshot_lsn = lsn;
                ns
            }
            None => Namespace::default(),
        };
        ns.rebuild_refs();
        legacy::replay(&dir.join("wal"), &mut ns, boot, recovery)?;
        let membership = Membership::default();
        replace_file(dir, "snapshot", &encode_snapshot(None, &membership, &ns)?)?;
        info!(
            snapshot_lsn = recovery.snapshot_lsn,
            replayed = recovery.replayed,
            unmarked = recovery.unmarked,
            "metadata of an older release converted to this one's log"
        );
    }
    // A `wal` beside a snapshot of this release was converted into it.
    match std::fs::remove_file(dir.join("wal")) {
        Ok(()) => sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove {}", dir.join("wal").display()))(e)),
    }
    match std::fs::read(&path) {
        Ok(bytes) => decode_snapshot(&bytes).map_err(corrupt),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Snapshot::empty()),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// Reads the log file and cuts what recovery does not keep (see [`LogStore::open`]): a
/// torn or corrupt tail, entries written after the last mark of an earlier boot, and
/// marks what it keeps if no mark covers it. Returns the file, one past the last entry
/// kept, and the highest commit a mark recorded.
fn recover(
    mut file: File,
    path: &Path,
    boot: [u8; 16],
    applied: Option<LogId>,
    recovery: &mut Recovery,
) -> Result<(LogFile, u64, Option<LogId>)> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(io_err(format!("read {}", path.display())))?;
    let (frames, mut valid) = parse_frames(&bytes);
    let mut records = Vec::with_capacity(frames.len());
    for (payload, offset) in frames {
        match vg_wire::codec::from_bytes::<Record>(payload) {
            Ok(record) => records.push((record, offset, payload.len() as u32)),
            Err(_) => {
                valid = offset;
                break;
            }
        }
    }
    let marks: Vec<(u64, [u8; 16], Option<LogId>, u64)> = records
        .iter()
        .filter_map(|(record, _, _)| match record {
            Record::Mark {
                upto,
                boot,
                committed,
            } => Some((*upto, *boot, *committed, *upto)),
            Record::Mark2 {
                upto,
                boot,
                committed,
                unchecked,
            } => Some((*upto, *boot, *committed, *unchecked)),
            Record::Entry(_) => None,
        })
        .collect();
    // Raced writes from the last mark's first unchecked entry on are checked again: the
    // nameserver that wrote them may have stopped before it checked them.
    let unchecked = marks.last().map_or(0, |m| m.3);
    // A round of the sync thread that began before a purge may mark less after the
    // purge's own mark: the highest counts.
    let marked = marks.iter().map(|m| m.0).max().unwrap_or(0);
    let keep_before = match marks.last() {
        Some((_, written_in, _, _)) if *written_in == boot => u64::MAX,
        _ => marked,
    };
    let mut end = valid as u64;
    let mut slots = VecDeque::new();
    for (record, offset, len) in &records {
        let Record::Entry(entry) = record else {
            continue;
        };
        if entry.log_id.index >= keep_before {
            end = end.min(*offset as u64);
            recovery.unmarked += 1;
        } else if Some(entry.log_id) > applied {
            slots.push_back(Slot {
                log_id: entry.log_id,
                offset: *offset as u64,
                len: *len,
            });
            if entry.log_id.index >= unchecked {
                if let Some(raced) = raced_in(entry) {
                    recovery.raced.insert(entry.log_id.index, raced);
                }
            }
        }
    }
    if recovery.unmarked > 0 {
        warn!(path = %path.display(), entries = recovery.unmarked, "the machine rebooted since the log's last mark: dropped the entries written after it, as a power loss would have");
    }
    recovery.entries = slots.len() as u64;
    if (end as usize) < bytes.len() {
        // Zeros are allocated space; anything else is a torn or corrupt record.
        let torn = bytes[valid..]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |i| i + 1);
        recovery.dropped_bytes = torn as u64;
        if torn > 0 {
            warn!(path = %path.display(), offset = valid, dropped = torn, "log has a torn or corrupt tail; recovered the valid prefix and cut the rest");
        }
        file.set_len(end)
            .and_then(|()| file.sync_all())
            .map_err(io_err(format!("truncate {}", path.display())))?;
    }
    let written = slots
        .back()
        .map(|s| s.log_id.index + 1)
        .or(applied.map(|a| a.index + 1))
        .unwrap_or(0);
    let committed = marks
        .iter()
        .filter_map(|m| m.2)
        .max()
        .filter(|c| c.index < written);
    let mut log_file = LogFile {
        file,
        mapped: None,
        unmappable: false,
        end,
        allocated: 0,
        can_allocate: true,
        slots,
        tail: VecDeque::new(),
        purged: applied,
    };
    // What is kept is marked: a reboot before the next mark keeps it. And so is this
    // boot, at once: until a mark of it is in the log, a restart within it would take
    // the process's crash for a reboot and put the synced copy in the log's place,
    // losing what was written since (entries acknowledged as written, when a sync round
    // had not yet run since the first start after a reboot).
    if recovery.unmarked > 0 || marks.last().is_none_or(|m| m.1 != boot) {
        let mark = frame_record(&Record::Mark2 {
            upto: written,
            boot,
            committed,
            unchecked: recovery.raced.keys().next().map_or(written, |&i| i),
        })?;
        log_file
            .write(&mark)
            .and_then(|()| log_file.file.sync_data())
            .map_err(io_err(format!("write {}", path.display())))?;
    }
    Ok((log_file, written, committed))
}

/// After a reboot, puts the log's sector copy in the log's place: the log was never
/// synced, so the OS may have lost any of it, while the copy holds every round synced.
/// Within one boot the log holds everything written and stays.
fn take_copy_after_reboot(dir: &Path, log: &Path, boot: [u8; 16]) -> Result<()> {
    let copy = dir.join(SECTORS);
    if !copy.exists() {
        return Ok(());
    }
    let bytes = match std::fs::read(log) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(format!("read {}", log.display()))(e)),
    };
    if last_boot(&bytes) == Some(boot) {
        return Ok(());
    }
    info!(path = %copy.display(), "the machine rebooted: the log's synced copy replaces it");
    std::fs::rename(&copy, log).map_err(io_err(format!(
        "rename {} to {}",
        copy.display(),
        log.display()
    )))?;
    sync_dir(dir)
}

impl LogStore {
    /// Opens the metadata directory on a machine whose boot is `boot` ([`boot_id`]):
    /// the log, and the snapshot to start the state machine from. Appends are persisted
    /// for openraft once durable if `strict`, once written otherwise.
    ///
    /// The sync thread writes a mark after the entries it has passed through the gate
    /// and before it syncs them; entries written after the last mark may name blobs the
    /// storages had not synced. If the machine rebooted since the last mark (a power
    /// loss, a kernel crash), the OS may have kept such entries without their blobs, so
    /// recovery keeps only what the last mark covers; those entries were acknowledged as
    /// written, never as synced. Within one boot the OS lost nothing, and recovery keeps
    /// every entry written.
    pub fn open(
        dir: &Path,
        boot: [u8; 16],
        strict: bool,
    ) -> Result<(LogStore, Snapshot, Recovery)> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut recovery = Recovery::default();
        let snapshot = read_snapshot(dir, boot, &mut recovery)?;
        recovery.snapshot = snapshot.applied;
        let path = dir.join("log");
        take_copy_after_reboot(dir, &path, boot)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        let (log_file, written, committed) =
            recover(file, &path, boot, snapshot.applied, &mut recovery)?;
        let end = log_file.end;
        let mut bytes = vec![0; end as usize];
        log_file
            .file
            .read_exact_at(&mut bytes, 0)
            .map_err(io_err(format!("read {}", path.display())))?;
        let sectors = copy_log(dir, &bytes, 0)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            file: Mutex::new(log_file),
            sectors: Mutex::new(sectors),
            written: AtomicU64::new(written),
            truncations: AtomicU64::new(0),
            needs: Mutex::default(),
            durable: tokio::sync::watch::Sender::new(written),
            wanted: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            failed: Mutex::new(None),
            wake: Arc::default(),
            gate: Mutex::new(None),
            boot,
            syncs: Default::default(),
            flushed: Mutex::default(),
            strict,
            committed: Mutex::new(committed),
            since_snapshot: AtomicU64::new(end),
            snapshot_applied: Mutex::new(snapshot.applied),
            raced: Mutex::new(recovery.raced.clone()),
            settling: Mutex::default(),
            vouched: Mutex::default(),
        });
        {
            let (weak, wake) = (Arc::downgrade(&shared), shared.wake.clone());
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("log-sync".into())
                .spawn(move || Shared::sync_loop(weak, wake, runtime))
                .map_err(io_err("start the log's sync thread"))?;
        }
        Ok((LogStore { shared }, snapshot, recovery))
    }

    /// Has the sync thread pass `gate` before each sync of entries that name blocks.
    pub fn set_gate(&self, gate: Gate) {
        *self.shared.gate.lock().expect("log lock") = Some(gate);
    }

    /// End of the entries on disk (one past the last one's index).
    pub fn durable_end(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// End of the entries written (one past the last one's index).
    pub fn written_end(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// How long the log's syncs take.
    pub fn syncs(&self) -> &vg_wire::metrics::Latency {
        &self.shared.syncs
    }

    /// Has the sync thread sync the next entry written without lingering: someone will
    /// wait for it to be on disk.
    pub fn expect_next(&self) {
        let shared = &self.shared;
        let next = shared.written.load(Ordering::Acquire) + 1;
        shared.expected.fetch_max(next, Ordering::AcqRel);
    }

    /// Resolves once the entries before `end` are on disk (the sync thread syncs them
    /// after the storages they depend on, and marks them); fails if the log can no longer
    /// be written.
    pub async fn durable(&self, end: u64) -> Result<()> {
        let mut durable = self.shared.durable.subscribe();
        if *durable.borrow() < end {
            self.shared.hurry(end);
        }
        loop {
            self.shared.check()?;
            if *durable.borrow_and_update() >= end {
                return Ok(());
            }
            if durable.changed().await.is_err() {
                return self.shared.check();
            }
        }
    }

    /// Whether the log has grown enough since the last snapshot that one would pay off,
    /// or the snapshot holds no entry (the namespace of an older release, converted, or
    /// a new one) while `applied` is one: the snapshot is how new members get the
    /// namespace.
    pub fn wants_snapshot(&self, threshold: u64, applied: Option<LogId>) -> bool {
        let unsnapshotted = self
            .shared
            .snapshot_applied
            .lock()
            .expect("log lock")
            .is_none()
            && applied.is_some();
        unsnapshotted || self.shared.since_snapshot.load(Ordering::Relaxed) >= threshold
    }

    /// Takes a snapshot of `ns` after `applied` (every entry up to it applied, none
    /// after), to be written once [`LogStore::settled`].
    pub fn capture(
        &self,
        applied: Option<LogId>,
        membership: &Membership,
        ns: &Namespace,
    ) -> Result<Capture> {
        Ok(Capture {
            applied,
            inodes: ns.len(),
            bytes: encode_snapshot(applied, membership, ns)?,
        })
    }

    /// Whether the entries `capture` holds passed the gate and are on disk, and their
    /// raced writes are checked: a snapshot is synced at once, without the gate, and
    /// recovery hands back for checking only the raced writes of entries after it. Later
    /// entries do not hold it back, so that continuous fsyncs (an unchecked raced write
    /// at almost every moment) do not keep the log from being snapshotted. Hurries the
    /// log's sync if they are not on disk yet.
    pub fn settled(&self, capture: &Capture) -> bool {
        let end = capture.applied.map_or(0, |id| id.index + 1);
        if self.durable_end() < end {
            self.shared.hurry(end);
            return false;
        }
        // One undone by an entry the capture does not hold counts as unchecked.
        self.shared
            .first_unchecked(end)
            .is_none_or(|first| first >= end)
    }

    /// Writes `capture` as the snapshot, unless the snapshot already holds as much (one
    /// a leader sent meanwhile); returns whether it did. Openraft then purges the log up
    /// to it.
    pub fn write_capture(&self, capture: Capture) -> Result<bool> {
        let mut current = self.shared.snapshot_applied.lock().expect("log lock");
        if current.is_some() && *current >= capture.applied {
            return Ok(false);
        }
        replace_file(&self.shared.dir, "snapshot", &capture.bytes)?;
        *current = capture.applied;
        self.shared.since_snapshot.store(0, Ordering::Relaxed);
        info!(
            applied = ?capture.applied,
            inodes = capture.inodes,
            bytes = capture.bytes.len(),
            "snapshot written"
        );
        Ok(true)
    }

    /// The entries holding raced writes not yet checked, by index.
    pub fn raced(&self) -> Vec<(u64, Raced)> {
        let raced = self.shared.raced.lock().expect("log lock");
        raced.iter().map(|(i, r)| (*i, r.clone())).collect()
    }

    /// The raced writes of entry `index` are checked: every blob they name is stored,
    /// or, `undone`, some undone by a later entry, already written: then only a mark that
    /// covers what is written now says so.
    pub fn checked(&self, index: u64, undone: bool) {
        self.shared.vouched.lock().expect("log lock").remove(&index);
        if self
            .shared
            .raced
            .lock()
            .expect("log lock")
            .remove(&index)
            .is_some()
            && undone
        {
            let end = self.shared.written.load(Ordering::Acquire);
            self.shared
                .settling
                .lock()
                .expect("log lock")
                .insert(index, end);
        }
    }

    /// The client of entry `index`'s unsynced raced writes said every storage they went
    /// to acknowledged them: the gate has those storages sync them, and then they are
    /// checked.
    pub fn vouched(&self, index: u64) {
        if self
            .shared
            .raced
            .lock()
            .expect("log lock")
            .contains_key(&index)
        {
            self.shared.vouched.lock().expect("log lock").insert(index);
        }
    }

    /// The entries before `end` holding raced writes not yet checked whose uploads were
    /// not synced, and whether their client vouched for them.
    pub fn unsynced_raced(&self, end: u64) -> Vec<(u64, Raced, bool)> {
        self.shared.unsynced_raced(end)
    }

    /// The snapshot file's bytes, if there is one.
    pub fn snapshot_bytes(&self) -> Result<Option<Vec<u8>>> {
        let path = self.shared.dir.join("snapshot");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
        }
    }

    /// What the snapshot file holds (an empty namespace before the first).
    pub fn snapshot(&self) -> Result<Snapshot> {
        match self.snapshot_bytes()? {
            Some(bytes) => decode_snapshot(&bytes).map_err(|reason| Error::Corrupt {
                path: self.shared.dir.join("snapshot").display().to_string(),
                reason,
            }),
            None => Ok(Snapshot::empty()),
        }
    }

    /// Installs a snapshot a leader sent (`bytes`, as its file); openraft then purges
    /// the log up to it.
    pub fn install_snapshot(&self, bytes: &[u8]) -> Result<Snapshot> {
        let snapshot = decode_snapshot(bytes).map_err(|reason| Error::Corrupt {
            path: "snapshot from the leader".into(),
            reason,
        })?;
        // Under the lock `write_capture` holds while it writes the file: an older
        // capture of this member's must not replace what the leader sent.
        let mut current = self.shared.snapshot_applied.lock().expect("log lock");
        replace_file(&self.shared.dir, "snapshot", bytes)?;
        *current = snapshot.applied;
        self.shared.since_snapshot.store(0, Ordering::Relaxed);
        Ok(snapshot)
    }

    /// The entries with indexes in `range`, those the log still has.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>> {
        use std::ops::Bound;
        let file = self.shared.lock_file();
        let Some(first) = file.slots.front().map(|s| s.log_id.index) else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => first,
        };
        let skip = start.saturating_sub(first) as usize;
        (skip..file.slots.len())
            .take_while(|&at| range.contains(&file.slots[at].log_id.index))
            .map(|at| file.entry(at).map_err(io_err("read the log")))
            .collect()
    }

    /// Appends `entries` (not synced); returns the end they reach.
    fn append_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<u64> {
        let shared = &self.shared;
        let mut file = shared.lock_file();
        shared.check()?;
        let (mut buf, mut slots, mut needs) = (Vec::new(), Vec::new(), BTreeSet::new());
        let (mut raced, mut appended) = (Vec::new(), Vec::new());
        for entry in entries {
            if let EntryPayload::Normal(proposal) = &entry.payload {
                needs.extend(proposal.needs.iter().cloned());
            }
            if let Some(r) = raced_in(&entry) {
                raced.push((entry.log_id.index, r));
            }
            let log_id = entry.log_id;
            // The record owns the entry while it is framed; the tail keeps it after.
            let record = Record::Entry(entry);
            let framed = frame_record(&record)?;
            let Record::Entry(entry) = record else {
                unreachable!("an entry's record")
            };
            slots.push(Slot {
                log_id,
                offset: file.end + buf.len() as u64,
                len: framed.len() as u32 - 8,
            });
            buf.extend_from_slice(&framed);
            appended.push(entry);
        }
        let Some(last) = slots.last().map(|s| s.log_id) else {
            return Ok(shared.written.load(Ordering::Acquire));
        };
        if let Err(e) = file.write(&buf) {
            shared.fail("write", &e);
            return Err(io_err("write the log")(e));
        }
        file.slots.extend(slots);
        file.keep(appended);
        shared.needs.lock().expect("log lock").extend(needs);
        shared.raced.lock().expect("log lock").extend(raced);
        shared
            .since_snapshot
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        shared.written.store(last.index + 1, Ordering::Release);
        // After the file lock, which the woken thread takes first.
        drop(file);
        shared.wake.set(|| shared.due());
        Ok(last.index + 1)
    }

    /// Cuts the entries from `log_id` on (a leader's log replaces them).
    fn truncate_from(&self, log_id: LogId) -> Result<()> {
        let shared = &self.shared;
        let mut file = shared.lock_file();
        let Some(at) = file.position(log_id.index) else {
            return Ok(());
        };
        let offset = file.slots[at].offset;
        file.cut(offset).map_err(io_err("truncate the log"))?;
        if let Some(sectors) = shared.sectors().as_mut() {
            // Records past the cut left in the copy would come back after a reboot.
            sectors
                .file
                .set_len(offset)
                .map_err(io_err("truncate the log's copy"))?;
            sectors.generation += 1;
            (sectors.copied, sectors.zeroed) = (offset, offset);
        }
        let cut = file.slots.len() - at;
        file.slots.truncate(at);
        file.trim_tail(cut);
        shared
            .raced
            .lock()
            .expect("log lock")
            .retain(|&index, _| index < log_id.index);
        shared.truncations.fetch_add(1, Ordering::AcqRel);
        shared.written.store(log_id.index, Ordering::Release);
        shared.durable.send_modify(|d| *d = (*d).min(log_id.index));
        Ok(())
    }

    /// Drops the entries up to `log_id` (a snapshot holds them): the file is rewritten
    /// with those after it, behind a mark of what is durable.
    fn purge_upto(&self, log_id: LogId) -> Result<()> {
        let shared = &self.shared;
        let mut file = shared.lock_file();
        file.purged = file.purged.max(Some(log_id));
        while file.slots.front().is_some_and(|s| s.log_id <= log_id) {
            file.slots.pop_front();
        }
        file.trim_tail(0);
        let from = file.slots.front().map_or(file.end, |s| s.offset);
        let mut kept = vec![0; (file.end - from) as usize];
        file.file
            .read_exact_at(&mut kept, from)
            .map_err(io_err("read the log"))?;
        let mut bytes = frame_record(&shared.mark(self.durable_end()))?;
        let mark_len = bytes.len() as u64;
        bytes.extend_from_slice(&kept);
        replace_file(&shared.dir, "log", &bytes)?;
        {
            let mut sectors = shared.sectors();
            if let Some(old) = sectors.take() {
                *sectors = copy_log(&shared.dir, &bytes, old.generation + 1)?;
            }
        }
        let path = shared.dir.join("log");
        file.mapped = None;
        file.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        (file.end, file.allocated) = (bytes.len() as u64, bytes.len() as u64);
        for slot in &mut file.slots {
            slot.offset = slot.offset - from + mark_len;
        }
        Ok(())
    }
}

fn storage_error(verb: ErrorVerb, subject: ErrorSubject<NodeId>, e: Error) -> StorageError<NodeId> {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError<NodeId>> {
        self.entries(range)
            .map_err(|e| storage_error(ErrorVerb::Read, ErrorSubject::Logs, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(
        &mut self,
    ) -> std::result::Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let file = self.shared.lock_file();
        let last = file.slots.back().map(|s| s.log_id).or(file.purged);
        Ok(LogState {
            last_purged_log_id: file.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(
        &mut self,
        vote: &Vote<NodeId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let write = || -> Result<()> {
            let payload = vg_wire::codec::to_bytes(vote)?;
            replace_file(&self.shared.dir, VOTE, &frame(&payload))
        };
        write().map_err(|e| storage_error(ErrorVerb::Write, ErrorSubject::Vote, e))
    }

    async fn read_vote(
        &mut self,
    ) -> std::result::Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let path = self.shared.dir.join(VOTE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StorageError::from_io_error(
                    ErrorSubject::Vote,
                    ErrorVerb::Read,
                    e,
                ))
            }
        };
        match parse_frames(&bytes).0.first() {
            Some((payload, 0)) => vg_wire::codec::from_bytes(payload).map(Some).map_err(|e| {
                StorageError::from_io_error(
                    ErrorSubject::Vote,
                    ErrorVerb::Read,
                    std::io::Error::other(e.to_string()),
                )
            }),
            _ => Err(StorageError::from_io_error(
                ErrorSubject::Vote,
                ErrorVerb::Read,
                std::io::Error::other(format!("{}: corrupt", path.display())),
            )),
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        *self.shared.committed.lock().expect("log lock") = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError<NodeId>> {
        Ok(*self.shared.committed.lock().expect("log lock"))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let end = self
            .append_entries(entries)
            .map_err(|e| storage_error(ErrorVerb::Write, ErrorSubject::Logs, e))?;
        match self.shared.strict {
            true => {
                self.shared
                    .flushed
                    .lock()
                    .expect("log lock")
                    .push((end, callback));
                self.shared.hurry(end);
                // Synced meanwhile: the sync thread may not come back for it.
                if self.durable_end() >= end {
                    self.shared.advance(end);
                }
            }
            false => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError<NodeId>> {
        self.truncate_from(log_id)
            .map_err(|e| storage_error(ErrorVerb::Write, ErrorSubject::Logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id)
            .map_err(|e| storage_error(ErrorVerb::Write, ErrorSubject::Logs, e))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The sync thread holds a weak reference: it ends once it finds the log gone (a
        // lingering one at the end of its linger).
        self.wake.set(|| false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::Op;
    use crate::raft::Proposal;
    use openraft::testing::log_id;
    use vg_wire::{Timestamp, ROOT_INO};

    /// The boot the tests run in; another one is a reboot.
    const BOOT: [u8; 16] = [1; 16];

    fn mkdir(ino: u64, name: &str) -> Op {
        Op::Mkdir {
            parent: ROOT_INO,
            name: name.into(),
            ino,
            perm: 0o755,
            uid: 0,
            gid: 0,
            time: Timestamp::now(),
        }
    }

    /// Entry `index` of term 1: a mkdir of `/d{index}` naming blobs on storages `needs`.
    fn entry(index: u64, needs: &[&str]) -> Entry {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Proposal {
                ops: vec![mkdir(100 + index, &format!("d{index}"))],
                needs: needs.iter().map(|n| n.to_string()).collect(),
                by: (1, index),
            }),
        }
    }

    fn open(dir: &Path, boot: [u8; 16]) -> (LogStore, Snapshot, Recovery) {
        LogStore::open(dir, boot, false).unwrap()
    }

    fn indexes(log: &LogStore) -> Vec<u64> {
        log.entries(..)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// A snapshot of `ns` after `applied`, not yet written.
    fn capture_at(log: &LogStore, applied: Option<LogId>, ns: &Namespace) -> Capture {
        log.capture(applied, &Membership::default(), ns).unwrap()
    }

    /// Writes a snapshot of `ns` after `applied` at once.
    fn write_snapshot(log: &LogStore, applied: Option<LogId>, ns: &Namespace) {
        assert!(log.write_capture(capture_at(log, applied, ns)).unwrap());
    }

    /// Appends entries `range` and waits for their sync.
    async fn append_synced(log: &LogStore, range: std::ops::Range<u64>) {
        let end = log.append_entries(range.map(|i| entry(i, &[]))).unwrap();
        log.durable(end).await.unwrap();
    }

    #[tokio::test]
    async fn entries_written_survive_the_process_and_the_sync_thread_syncs_them() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        let end = log.append_entries((0..3).map(|i| entry(i, &[]))).unwrap();
        assert_eq!((end, log.written_end()), (3, 3));
        // Another open of the directory, as after a crash of this process, finds them.
        let (again, _, rec) = open(dir.path(), BOOT);
        assert_eq!((rec.entries, indexes(&again)), (3, vec![0, 1, 2]));
        let e = again.entries(1..2).unwrap().remove(0);
        assert!(matches!(e.payload, EntryPayload::Normal(p) if p.by == (1, 1)));
        tokio::time::timeout(std::time::Duration::from_secs(10), log.durable(3))
            .await
            .expect("never synced")
            .unwrap();
    }

    #[tokio::test]
    async fn a_sync_is_due_once_the_entry_someone_will_wait_for_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 0..1).await;
        log.expect_next();
        // Woken now, the sync thread would find nothing new and wait again.
        assert!(!log.shared.due());
        let end = log.append_entries([entry(1, &[])]).unwrap();
        // Written: the round starts without lingering (unless it already ran).
        let due = log.shared.due();
        assert!(
            due || log.durable_end() >= end,
            "a lingering round waits for more"
        );
        log.durable(end).await.unwrap();
        assert!(!log.shared.due());
    }

    /// A gate that reports what it is asked and passes when `release` has a permit (or
    /// gives up when it is closed).
    fn held_gate() -> (
        Gate,
        tokio::sync::mpsc::UnboundedReceiver<BTreeSet<String>>,
        Arc<tokio::sync::Semaphore>,
    ) {
        let (asked_tx, asked) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let gate: Gate = {
            let release = release.clone();
            Arc::new(move |needs, _end| {
                asked_tx.send(needs).unwrap();
                let release = release.clone();
                Box::pin(async move {
                    match release.acquire().await {
                        Ok(permit) => {
                            permit.forget();
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
        };
        (gate, asked, release)
    }

    #[tokio::test]
    async fn an_entry_naming_unsynced_blocks_is_synced_only_after_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        let (gate, mut asked, release) = held_gate();
        log.set_gate(gate);
        let end = log.append_entries([entry(0, &["s1"])]).unwrap();
        let needs = asked.recv().await.unwrap();
        assert_eq!(needs.into_iter().collect::<Vec<_>>(), ["s1"]);
        let durable = tokio::spawn({
            let log = log.clone();
            async move { log.durable(end).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!durable.is_finished(), "synced before the storages were");
        let capture = capture_at(&log, Some(log_id(1, 1, 0)), &Namespace::default());
        assert!(!log.settled(&capture), "a snapshot would skip the gate");
        release.add_permits(1);
        durable.await.unwrap().unwrap();
        assert!(log.settled(&capture));
        // An entry naming no blocks does not ask anyone.
        append_synced(&log, 1..2).await;
        assert!(asked.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_entry_with_an_unsynced_raced_write_is_synced_only_after_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        let (gate, mut asked, release) = held_gate();
        log.set_gate(gate);
        // A synced race (an fsync's) is checked after the sync: no gate.
        let end = log.append_entries([raced(0, 1)]).unwrap();
        log.durable(end).await.unwrap();
        assert!(asked.try_recv().is_err(), "a synced race asked the gate");
        log.checked(0, false);
        // An unsynced one (a close's) names no storage to sync, yet waits for the gate.
        let race = 9 | vg_wire::ns::RACE_UNSYNCED;
        let end = log.append_entries([raced_as(1, 2, race)]).unwrap();
        let needs = tokio::time::timeout(std::time::Duration::from_secs(10), asked.recv())
            .await
            .expect("the gate was not asked");
        assert!(needs.unwrap().is_empty());
        let durable = tokio::spawn({
            let log = log.clone();
            async move { log.durable(end).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !durable.is_finished(),
            "synced before the write was checked"
        );
        log.checked(1, false);
        release.add_permits(1);
        durable.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_undone_raced_write_is_unchecked_in_marks_until_they_cover_its_undoing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        // The sync thread waits at the gate for entry 0: the test moves `durable` itself.
        let (gate, mut asked, release) = held_gate();
        log.set_gate(gate);
        log.append_entries([entry(0, &["s1"])]).unwrap();
        asked.recv().await.unwrap();
        let unchecked = |upto| {
            let Record::Mark2 { unchecked, .. } = log.shared.mark(upto) else {
                panic!("not a mark");
            };
            unchecked
        };
        log.append_entries([raced(1, 1), raced(2, 2)]).unwrap();
        // Entry 1's blob was held; entry 2's write was undone by entry 3.
        log.checked(1, false);
        assert_eq!(unchecked(3), 2);
        log.append_entries([entry(3, &[])]).unwrap();
        log.checked(2, true);
        assert_eq!(unchecked(3), 2, "a mark before the undoing");
        assert_eq!(unchecked(4), 4);
        // A snapshot without the undoing waits until it is on disk (recovery then
        // replays it from the log).
        let capture = capture_at(&log, Some(log_id(1, 1, 2)), &Namespace::default());
        log.shared.advance(3);
        assert!(!log.settled(&capture), "the undoing is not on disk");
        log.shared.advance(4);
        assert!(log.settled(&capture));
        assert_eq!(unchecked(3), 3, "forgotten once the undoing is on disk");
        release.close();
    }

    #[tokio::test]
    async fn after_a_reboot_only_what_a_mark_covers_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        let (gate, mut asked, release) = held_gate();
        log.set_gate(gate);
        append_synced(&log, 0..1).await;
        // A commit naming a blob not yet synced, and a change behind it: both written
        // (acknowledged), neither marked while the gate waits for the storage.
        log.append_entries([entry(1, &["s1"])]).unwrap();
        asked.recv().await.unwrap();
        log.append_entries([entry(2, &[])]).unwrap();
        // Whatever of them reached the disk (an fdatasync takes the whole file, and so
        // may the kernel's writeback), a reboot now drops them; a crash of the process
        // keeps them, as the OS does.
        log.shared.lock_file().file.sync_data().unwrap();
        let (same_boot, _, rec) = open(dir.path(), BOOT);
        assert_eq!((rec.entries, rec.unmarked), (3, 0));
        assert_eq!(indexes(&same_boot), [0, 1, 2]);
        let (rebooted, _, rec) = open(dir.path(), [2; 16]);
        assert_eq!((rec.entries, rec.unmarked), (1, 2));
        assert_eq!(indexes(&rebooted), [0]);
        // The cut is on disk: the next open finds the same, and entries appended after
        // it are kept.
        let (again, _, rec) = open(dir.path(), [2; 16]);
        assert_eq!((rec.entries, rec.unmarked), (1, 0));
        append_synced(&again, 1..2).await;
        let (after, _, _) = open(dir.path(), [3; 16]);
        assert_eq!(indexes(&after), [0, 1]);
        release.close();
    }

    /// Entry `index`: a raced write of blob `blob` into file 7.
    fn raced(index: u64, blob: u8) -> Entry {
        raced_as(index, blob, 9)
    }

    /// Entry `index` of term 1: a raced write of race `race` naming blob `[blob]` on s1.
    fn raced_as(index: u64, blob: u8, race: u64) -> Entry {
        let slice = vg_wire::Slice {
            at: 0,
            len: 4,
            blob: BlockId::of(&[blob]),
            blob_off: 0,
        };
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Proposal {
                ops: vec![Op::RacedWrite {
                    ino: 7,
                    size: 4,
                    slices: vec![(0, vec![slice])],
                    block_size: 4096,
                    time: Timestamp::now(),
                    race,
                    holders: vec!["s1".into()],
                    before: 0,
                }],
                needs: BTreeSet::new(),
                by: (1, index),
            }),
        }
    }

    #[tokio::test]
    async fn raced_writes_not_checked_are_handed_back_at_every_open() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 0..1).await;
        let end = log
            .append_entries([raced(1, 1), entry(2, &[]), raced(3, 3)])
            .unwrap();
        log.durable(end).await.unwrap();
        let blob = |b: u8| {
            vec![RacedWrite {
                ino: 7,
                race: 9,
                blobs: vec![BlockId::of(&[b])],
                holders: vec!["s1".into()],
                sizes: (4, 0),
            }]
        };
        assert_eq!(log.raced(), [(1, blob(1)), (3, blob(3))]);
        // Not checked: a restart, or a reboot (the entries were synced), hands both back.
        let (_, _, rec) = open(dir.path(), BOOT);
        assert_eq!(rec.raced.keys().collect::<Vec<_>>(), [&1, &3]);
        let (reopened, _, rec) = open(dir.path(), [2; 16]);
        assert_eq!((rec.entries, rec.unmarked), (4, 0));
        assert_eq!(reopened.raced(), [(1, blob(1)), (3, blob(3))]);
        // Checked, and said so by the next mark: only what is still unchecked comes back.
        reopened.checked(1, false);
        append_synced(&reopened, 4..5).await;
        let (again, _, rec) = open(dir.path(), [3; 16]);
        assert_eq!(rec.raced.keys().collect::<Vec<_>>(), [&3]);
        again.checked(3, false);
        append_synced(&again, 5..6).await;
        let (last, _, rec) = open(dir.path(), [4; 16]);
        assert!(rec.raced.is_empty() && last.raced().is_empty());
        assert_eq!(indexes(&last), [0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_snapshot_waits_for_the_raced_writes_it_holds_only() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        let end = log.append_entries([raced(0, 1)]).unwrap();
        log.durable(end).await.unwrap();
        let capture = capture_at(&log, Some(log_id(1, 1, 0)), &Namespace::default());
        assert!(!log.settled(&capture), "its raced write is not checked");
        // Under continuous fsyncs a later raced write is always unchecked: the snapshot
        // holds none of them, and is written anyway.
        let end = log.append_entries([raced(1, 2)]).unwrap();
        log.checked(0, false);
        assert!(log.settled(&capture), "held back by a later raced write");
        log.durable(end).await.unwrap();
        assert!(log.write_capture(capture).unwrap());
        // Recovery after a reboot still hands the later one back for checking.
        drop(log);
        let (again, snapshot, rec) = open(dir.path(), [2; 16]);
        assert_eq!(snapshot.applied, Some(log_id(1, 1, 0)));
        assert_eq!(rec.raced.keys().collect::<Vec<_>>(), [&1]);
        // An older capture does not replace a newer snapshot.
        let old = capture_at(&again, None, &Namespace::default());
        assert!(!again.write_capture(old).unwrap());
    }

    #[tokio::test]
    async fn torn_tail_is_dropped_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 0..3).await;
        let file = std::fs::read(dir.path().join("log")).unwrap();
        let full = &file[..parse_frames(&file).1];
        for cut in 0..full.len() {
            let case = tempfile::tempdir().unwrap();
            let mut bytes = full[..cut].to_vec();
            bytes.extend_from_slice(&[0xAB; 7]);
            std::fs::write(case.path().join("log"), &bytes).unwrap();
            let (cut_log, _, rec) = open(case.path(), BOOT);
            assert!(rec.dropped_bytes > 0, "cut {cut}");
            // A prefix.
            let kept = indexes(&cut_log);
            assert_eq!(
                kept,
                (0..kept.len() as u64).collect::<Vec<_>>(),
                "cut {cut}"
            );
            // The file was cut to its valid prefix: opening again drops nothing.
            let (again, _, rec) = open(case.path(), BOOT);
            assert_eq!(rec.dropped_bytes, 0);
            assert_eq!(indexes(&again), kept);
        }
    }

    #[tokio::test]
    async fn allocated_space_is_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 0..2).await;
        let size = std::fs::metadata(dir.path().join("log")).unwrap().len();
        assert_eq!(size, PREALLOCATE, "the log is allocated ahead");
        drop(log);
        // Entries written after a reopen land after the first ones, not at the end of
        // the allocated space.
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 2..3).await;
        let (_, _, rec) = open(dir.path(), BOOT);
        assert_eq!((rec.entries, rec.dropped_bytes), (3, 0));
    }

    /// What a reboot leaves of a log none of whose writes the OS wrote back: zeros.
    fn lose_the_log(dir: &Path) {
        let path = dir.join("log");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::write(&path, vec![0; len as usize]).unwrap();
    }

    /// Stops `log` as a crash would: once this returns its sync thread writes nothing more
    /// (a round under way holds the log until it ends).
    fn crash(log: LogStore) {
        let shared = Arc::downgrade(&log.shared);
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shared.strong_count() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the sync thread never let go"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[tokio::test]
    async fn after_a_reboot_the_synced_copy_stands_for_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 0..3).await;
        // The sync thread syncs the copy, not the log: the log may be lost to a power cut.
        // Each store stops before the next opens: a sync round of the one before, still
        // running, wrote over the next one's files once in ten runs beside other tests.
        crash(log);
        lose_the_log(dir.path());
        let (rebooted, _, rec) = open(dir.path(), [2; 16]);
        assert_eq!((rec.entries, rec.dropped_bytes), (3, 0));
        assert_eq!(indexes(&rebooted), [0, 1, 2]);
        // The copy is made again from what was recovered, and takes what follows.
        append_synced(&rebooted, 3..4).await;
        crash(rebooted);
        lose_the_log(dir.path());
        let (again, _, _) = open(dir.path(), [3; 16]);
        assert_eq!(indexes(&again), [0, 1, 2, 3]);
        // Within one boot the log itself holds everything written, synced or not.
        again.append_entries([entry(4, &[])]).unwrap();
        crash(again);
        let (same_boot, _, _) = open(dir.path(), [3; 16]);
        assert_eq!(indexes(&same_boot), [0, 1, 2, 3, 4]);
    }

    /// Each entry `entries` would answer with (from the tail or the file) against the
    /// one in the file, by their bytes; returns how many the tail holds.
    fn tail_agrees_with_the_file(log: &LogStore) -> usize {
        let file = log.shared.lock_file();
        assert!(file.tail.len() <= TAIL_ENTRIES.min(file.slots.len()));
        for at in 0..file.slots.len() {
            let answered = vg_wire::codec::to_bytes(&file.entry(at).unwrap()).unwrap();
            let stored = vg_wire::codec::to_bytes(&file.read(&file.slots[at]).unwrap()).unwrap();
            assert!(answered == stored, "entry {at} differs from the file's");
        }
        file.tail.len()
    }

    #[tokio::test]
    async fn the_tail_in_memory_answers_as_the_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        let n = TAIL_ENTRIES as u64 + 10;
        append_synced(&log, 0..n).await;
        assert_eq!(tail_agrees_with_the_file(&log), TAIL_ENTRIES);
        // A new leader's entries in place of the last five, then of all but three.
        let blank = |term, index| Entry {
            log_id: log_id(term, term, index),
            payload: EntryPayload::Blank,
        };
        log.truncate_from(log_id(1, 1, n - 5)).unwrap();
        log.append_entries((n - 5..n - 2).map(|i| blank(2, i)))
            .unwrap();
        assert_eq!(tail_agrees_with_the_file(&log), TAIL_ENTRIES - 2);
        log.truncate_from(log_id(1, 1, 3)).unwrap();
        assert_eq!(tail_agrees_with_the_file(&log), 0);
        log.append_entries((3..6).map(|i| blank(3, i))).unwrap();
        assert_eq!(tail_agrees_with_the_file(&log), 3);
        assert_eq!(indexes(&log), [0, 1, 2, 3, 4, 5]);
        // A purge drops the entries it covers from both.
        write_snapshot(&log, Some(log_id(3, 3, 4)), &Namespace::default());
        log.purge_upto(log_id(3, 3, 4)).unwrap();
        assert_eq!(tail_agrees_with_the_file(&log), 1);
        assert_eq!(indexes(&log), [5]);
    }

    #[tokio::test]
    async fn appends_past_the_allocation_are_mapped_again_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        // Entries of ~50 KB, until the log passes its first allocation.
        let big = |index: u64| Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Proposal {
                ops: (0..200)
                    .map(|i| {
                        mkdir(
                            index * 1000 + i,
                            &format!("{index}-{i}-{}", "x".repeat(240)),
                        )
                    })
                    .collect(),
                needs: Default::default(),
                by: (1, index),
            }),
        };
        let mut n = 0;
        loop {
            let end = log.shared.lock_file().end;
            if end > PREALLOCATE + (1 << 20) {
                break;
            }
            log.append_entries([big(n)]).unwrap();
            n += 1;
        }
        {
            let file = log.shared.lock_file();
            assert!(
                file.end > PREALLOCATE,
                "the log passed its first allocation"
            );
            let mapped = file
                .mapped
                .as_ref()
                .expect("appends go through the mapping");
            assert!(mapped.len as u64 >= file.end);
        }
        assert_eq!(tail_agrees_with_the_file(&log), n as usize);
        crash(log);
        let (again, _, rec) = open(dir.path(), BOOT);
        assert_eq!((rec.entries, rec.dropped_bytes), (n, 0));
        assert_eq!(indexes(&again), (0..n).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn truncated_entries_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 0..5).await;
        log.truncate_from(log_id(1, 1, 2)).unwrap();
        assert_eq!(indexes(&log), [0, 1]);
        assert_eq!((log.written_end(), log.durable_end()), (2, 2));
        // A new leader's entries in their place, shorter than those they replace.
        let replaced = Entry {
            log_id: log_id(2, 2, 2),
            payload: EntryPayload::Blank,
        };
        let end = log.append_entries([replaced]).unwrap();
        log.durable(end).await.unwrap();
        let terms = |log: &LogStore| -> Vec<u64> {
            let entries = log.entries(..).unwrap();
            entries.iter().map(|e| e.log_id.leader_id.term).collect()
        };
        assert_eq!(terms(&open(dir.path(), BOOT).0), [1, 1, 2]);
        // Nor from the synced copy after a reboot.
        lose_the_log(dir.path());
        assert_eq!(terms(&open(dir.path(), [2; 16]).0), [1, 1, 2]);
    }

    #[tokio::test]
    async fn a_purge_keeps_the_entries_after_it_across_reopens_and_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        append_synced(&log, 0..6).await;
        let mut ns = Namespace::default();
        for e in log.entries(..4).unwrap() {
            if let EntryPayload::Normal(p) = e.payload {
                ns.apply(&p.ops[0]).unwrap();
            }
        }
        write_snapshot(&log, Some(log_id(1, 1, 3)), &ns);
        log.purge_upto(log_id(1, 1, 3)).unwrap();
        assert_eq!(indexes(&log), [4, 5]);
        append_synced(&log, 6..7).await;
        // A reboot first: the purge's copy and the rounds after it stand for the log.
        for boot in [[2; 16], BOOT] {
            if boot != BOOT {
                lose_the_log(dir.path());
            }
            let (again, snapshot, rec) = open(dir.path(), boot);
            assert_eq!(indexes(&again), [4, 5, 6], "boot {boot:?}");
            assert_eq!((rec.snapshot, rec.unmarked), (Some(log_id(1, 1, 3)), 0));
            assert!(snapshot.ns.resolve("/d3").is_ok() && snapshot.ns.resolve("/d4").is_err());
        }
        // Purging everything leaves a log that takes new entries.
        log.purge_upto(log_id(1, 1, 6)).unwrap();
        assert!(indexes(&log).is_empty());
        append_synced(&log, 7..8).await;
        let (again, _, _) = open(dir.path(), BOOT);
        assert_eq!(indexes(&again), [7]);
    }

    #[tokio::test]
    async fn the_vote_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _, _) = open(dir.path(), BOOT);
        assert_eq!(log.read_vote().await.unwrap(), None);
        let vote = Vote::new_committed(3, 2);
        log.save_vote(&vote).await.unwrap();
        let (mut again, _, _) = open(dir.path(), BOOT);
        assert_eq!(again.read_vote().await.unwrap(), Some(vote));
        std::fs::write(dir.path().join("vote"), b"garbage").unwrap();
        assert!(
            again.read_vote().await.is_err(),
            "a corrupt vote is not taken as none"
        );
    }

    fn write_legacy_snapshot(dir: &Path, magic: &[u8], payload: &[u8]) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(payload);
        std::fs::write(dir.join("snapshot"), bytes).unwrap();
    }

    #[tokio::test]
    async fn a_directory_of_the_release_before_the_raft_log_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        // A vgsnap05 snapshot at LSN 1 and a `wal` going on from it, with a mark.
        let mut ns = Namespace::new(Timestamp::now());
        let a = ns.apply(&mkdir(ns.next_ino(), "a")).unwrap();
        ns.apply(&Op::Applied {
            client: 5,
            seq: 9,
            ino: Some(a),
        })
        .unwrap();
        let payload = vg_wire::codec::to_bytes(&(1u64, &ns)).unwrap();
        write_legacy_snapshot(dir.path(), legacy::SNAPSHOT_MAGIC_V5, &payload);
        let b = mkdir(ns.next_ino(), "b");
        let mut wal = legacy::encode_record(2, &b);
        wal.extend(legacy::encode_record(2, &Op::Mark { boot: BOOT }));
        wal.extend(legacy::encode_record(
            3,
            &mkdir(ns.next_ino() + 1, "unmarked"),
        ));
        std::fs::write(dir.path().join("wal"), &wal).unwrap();
        // Rebooted since: the record after the mark goes, as that release did.
        let (log, snapshot, rec) = open(dir.path(), [2; 16]);
        assert_eq!((rec.snapshot_lsn, rec.replayed, rec.unmarked), (1, 1, 1));
        assert!(snapshot.ns.resolve("/a").is_ok() && snapshot.ns.resolve("/b").is_ok());
        assert!(snapshot.ns.resolve("/unmarked").is_err());
        assert_eq!(snapshot.ns.answered().get(5, 9), Some(Some(a)));
        assert!(!dir.path().join("wal").exists());
        assert!(indexes(&log).is_empty());
        // Converted once: the next open reads this release's snapshot.
        let (_, again, rec) = open(dir.path(), [2; 16]);
        assert_eq!((rec.snapshot_lsn, rec.replayed), (0, 0));
        assert!(again.ns.resolve("/b").is_ok());
    }

    #[tokio::test]
    async fn a_log_from_before_marks_is_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for (lsn, name) in [(1, "a"), (2, "b")] {
            bytes.extend(legacy::encode_record(lsn, &mkdir(100 + lsn, name)));
        }
        std::fs::write(dir.path().join("wal"), &bytes).unwrap();
        let (_, snapshot, rec) = open(dir.path(), [2; 16]);
        assert_eq!((rec.replayed, rec.unmarked), (2, 0));
        assert!(snapshot.ns.resolve("/b").is_ok());
    }

    #[tokio::test]
    async fn snapshots_of_older_formats_are_converted() {
        let mut ns = Namespace::new(Timestamp::now());
        let kept = ns.apply(&mkdir(ns.next_ino(), "kept")).unwrap();
        ns.apply(&Op::SetXattr {
            ino: kept,
            name: b"user.a".to_vec(),
            value: b"1".to_vec(),
            mode: vg_wire::xattr::SetMode::Either,
            time: Timestamp::now(),
        })
        .unwrap();
        let open_file = ns
            .apply(&Op::Create {
                parent: ROOT_INO,
                name: b"open".to_vec(),
                ino: ns.next_ino(),
                perm: 0o644,
                uid: 0,
                gid: 0,
                time: Timestamp::now(),
            })
            .unwrap();
        ns.apply(&Op::Pin { ino: open_file }).unwrap();
        let formats = [
            (b"vgsnap02", crate::namespace::encode_v2(7, &ns), 0, false),
            (b"vgsnap03", crate::namespace::encode_v3(7, &ns), 1, false),
            (b"vgsnap04", crate::namespace::encode_v4(7, &ns), 1, true),
        ];
        for (magic, payload, xattrs, pinned) in formats {
            let dir = tempfile::tempdir().unwrap();
            write_legacy_snapshot(dir.path(), magic, &payload);
            let (_, snapshot, rec) = open(dir.path(), BOOT);
            assert_eq!(rec.snapshot_lsn, 7);
            let ino = snapshot.ns.resolve("/kept").unwrap();
            assert_eq!(snapshot.ns.xattrs(ino).unwrap().len(), xattrs, "{magic:?}");
            assert_eq!(
                snapshot.ns.pinned().contains(&open_file),
                pinned,
                "{magic:?}"
            );
            assert!(snapshot.ns.answered().is_empty());
        }
    }

    #[tokio::test]
    async fn a_snapshot_larger_than_a_frame_is_written_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _) = open(dir.path(), BOOT);
        let mut ns = Namespace::new(Timestamp::now());
        let long = "x".repeat(240);
        for i in 0..(vg_wire::codec::MAX_FRAME as u64 / 240 + 1000) {
            ns.apply(&mkdir(ns.next_ino(), &format!("{long}{i}")))
                .unwrap();
        }
        write_snapshot(&log, Some(log_id(1, 1, 9)), &ns);
        let (_, snapshot, _) = open(dir.path(), BOOT);
        assert_eq!(snapshot.ns.len(), ns.len());
        // What openraft asks of it is read without the namespace.
        let bytes = log.snapshot_bytes().unwrap().unwrap();
        let (applied, membership) = decode_snapshot_head(&bytes).unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 9)));
        assert_eq!(membership, Membership::default());
        assert!(decode_snapshot_head(&bytes[..bytes.len() - 1]).is_err());
    }
}
