//! Durable metadata: a write-ahead log with group commit, and snapshots.
//!
//! Files under the metadata directory:
//! - `snapshot`: `b"vgsnap05"`, crc32 of the payload, payload length (u64), payload =
//!   `(lsn, Namespace)`; written to `snapshot.tmp`, fsynced, renamed, directory fsynced.
//!   A `vgsnap01` (whole blocks, before slices), `vgsnap02` (before extended
//!   attributes), `vgsnap03` (before pinned inodes) or `vgsnap04` (before numbered
//!   changes) snapshot is read and converted.
//! - `wal`: records of `len: u32, crc32: u32, payload = (lsn, Op)`, appended in LSN order,
//!   then zeros: the file is allocated ahead of the records ([`PREALLOCATE`]).
//!
//! Recovery loads the snapshot, replays records with a larger LSN, and stops at the first
//! record that is empty (the zeros), short or fails its checksum (a torn tail): the file
//! is cut there. Records are written in LSN order, so what a power loss leaves is a
//! prefix of the acknowledged changes, whichever pages reached the disk: replay stops at
//! the first one missing.
//!
//! Two points in a record's life: *written* (handed to the OS with `pwrite`: it survives
//! a crash of the process) and *durable* (`fdatasync` returned: it survives a power
//! loss). Callers append under the namespace lock (cheap, in memory), then either
//! [`DurableWaiter::written`] (the default contract: a change is acknowledged once
//! written) or [`DurableWaiter::wait`] (`--durability strict`, fsync's commits and `Sync`
//! requests). Both yield once first, so that the other requests ready to run append too
//! and N concurrent operations cost one write and one sync.
//!
//! Syncing: a thread of the log's own syncs whatever has been written, starting again as
//! soon as a sync ends if more was written meanwhile (group commit), so that the records
//! at risk from a power loss are those of one sync interval. A record that names blocks
//! storages acknowledged before syncing them must not be recovered after a power loss
//! unless they synced them, or a layout would name a block that is gone: an append says
//! which storages it depends on ([`Wal::append_after`]); each round of the thread takes
//! what was written so far with the storages it depends on, has the [`Gate`] (the
//! service) ask them to sync, then appends a *mark* (an [`Op::Mark`] record: everything
//! up to this LSN passed the gate, written in boot B of the machine) and syncs. Gating
//! the sync alone is not enough: an `fdatasync` takes whatever the file holds, records
//! written while the gate ran included, and so may the kernel's writeback at any moment;
//! so after a reboot ([`Wal::open`]) recovery keeps only what the last mark covers.
//! Within one boot the OS lost nothing, and recovery keeps every record written.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::namespace::{Namespace, NamespaceV1, NamespaceV2, NamespaceV3, NamespaceV4, Op};

const SNAPSHOT_MAGIC: &[u8; 8] = b"vgsnap05";
/// The snapshot format of releases before slices.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"vgsnap01";
/// The snapshot format of releases before extended attributes.
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"vgsnap02";
/// The snapshot format of releases before open-but-unlinked files.
const SNAPSHOT_MAGIC_V3: &[u8; 8] = b"vgsnap03";
/// The snapshot format of releases before numbered changes.
const SNAPSHOT_MAGIC_V4: &[u8; 8] = b"vgsnap04";
/// Largest WAL record accepted on replay; anything larger is a torn or corrupt tail.
const MAX_RECORD: u32 = 64 << 20;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Bytes the log file is allocated ahead of its records. `fdatasync` after writing
/// into allocated space does not have to log a new file size and new extents as well:
/// a change's write and sync took 122 µs appending and 100 µs into allocated space.
const PREALLOCATE: u64 = 16 << 20;

/// The log file, written at `end` rather than appended to, because of the allocation.
struct LogFile {
    file: File,
    /// End of the records.
    end: u64,
    /// Bytes allocated; 0 when the file system cannot allocate ahead (then writes just
    /// extend the file).
    allocated: u64,
    can_allocate: bool,
}

impl LogFile {
    /// Writes `buf` after the records (not synced).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let end = self.end + buf.len() as u64;
        if end > self.allocated && self.can_allocate {
            let size = end.next_multiple_of(PREALLOCATE);
            match vg_wire::disk::allocate(&self.file, size) {
                Ok(()) => self.allocated = size,
                Err(e) => {
                    warn!(error = %e, "cannot allocate the write-ahead log ahead; appending");
                    self.can_allocate = false;
                }
            }
        }
        self.file.write_all_at(buf, self.end)?;
        self.end = end;
        Ok(())
    }

    /// Drops every record (after a snapshot) and the allocation.
    fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        (self.end, self.allocated) = (0, 0);
        Ok(())
    }
}

struct Pending {
    /// Records appended and not yet written, in LSN order.
    buf: Vec<u8>,
    /// LSN of the last record appended.
    last_lsn: u64,
    /// Storages whose blocks the records in `buf` name, not known to be synced.
    needs: BTreeSet<String>,
}

/// Makes storages sync what they acknowledged (by name); resolves to true once they did,
/// or are no longer there to ask, and to false if the nameserver is stopping (then the
/// log is marked no more: records after the last mark might name blocks that are not on
/// disk).
pub type Gate =
    Arc<dyn Fn(BTreeSet<String>) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

struct Shared {
    /// Lock order: `file`, then `pending`, then `needs`. Whoever holds `file` is the one
    /// writing.
    file: Mutex<LogFile>,
    pending: Mutex<Pending>,
    /// Highest LSN handed to the OS.
    written: AtomicU64,
    /// Storages the records written and not yet marked depend on, for the next gate.
    needs: Mutex<BTreeSet<String>>,
    /// The sync thread is running the gate for needs it took.
    gating: AtomicBool,
    /// Highest LSN on disk and marked, watched by those who wait for it.
    durable: tokio::sync::watch::Sender<u64>,
    /// Set when a write or fsync failed: nothing more can be acknowledged.
    failed: Mutex<Option<String>>,
    /// Wakes the sync thread: something was written (or the log was dropped).
    wake: Arc<Wake>,
    gate: Mutex<Option<Gate>>,
    /// The boot of the machine this process runs in, written in each mark.
    boot: [u8; 16],
    /// How long the sync thread's syncs take (the mark's write and the `fdatasync`).
    syncs: vg_wire::metrics::Latency,
}

impl Shared {
    /// Writes everything appended so far, and wakes the sync thread. The buffer is taken
    /// under the file lock, so records reach the file in LSN order whoever writes.
    fn write_out(&self) {
        let mut file = self.file.lock().expect("wal file lock");
        if self.check().is_err() {
            return;
        }
        let (buf, lsn, needs) = {
            let mut pending = self.pending.lock().expect("wal lock");
            let needs = std::mem::take(&mut pending.needs);
            (std::mem::take(&mut pending.buf), pending.last_lsn, needs)
        };
        if buf.is_empty() {
            return;
        }
        if let Err(e) = file.write(&buf) {
            return self.fail("write", &e);
        }
        // Under the file lock, with `written`: the sync thread takes both at once.
        self.needs.lock().expect("wal lock").extend(needs);
        self.written.store(lsn, Ordering::Release);
        self.wake.set();
    }

    /// Appends the mark that the records up to `upto` passed the gate.
    fn write_mark(&self, upto: u64) {
        let mut file = self.file.lock().expect("wal file lock");
        let result = mark_record(upto, self.boot)
            .map_err(|e| e.to_string())
            .and_then(|mark| file.write(&mark).map_err(|e| e.to_string()));
        if let Err(e) = result {
            self.fail("write", &e);
        }
    }

    fn fail(&self, what: &str, e: &dyn std::fmt::Display) {
        tracing::error!(error = %e, "write-ahead log {what} failed; refusing further changes");
        *self.failed.lock().expect("wal lock") = Some(format!("{what}: {e}"));
        // Wakes the waiters, who then see the failure.
        self.durable.send_modify(|_| {});
    }

    fn check(&self) -> Result<()> {
        match self.failed.lock().expect("wal lock").clone() {
            Some(reason) => Err(Error::Io {
                context: "write-ahead log".into(),
                source: std::io::Error::other(reason),
            }),
            None => Ok(()),
        }
    }

    /// The sync thread, one round after another while more is written: takes what was
    /// written so far and the storages it depends on, has the [`Gate`] ask them to sync,
    /// writes the mark, and syncs the file. Through its own descriptor and without the
    /// file lock, so that writers do not wait for the disk. A thread of its own rather
    /// than a task handing each sync to tokio's blocking pool: that cost two wake-ups per
    /// sync, one of them the request thread's. The gate, which talks to storages, runs on
    /// the nameserver's runtime. Ends when the log is dropped.
    fn sync_loop(
        shared: std::sync::Weak<Shared>,
        wake: Arc<Wake>,
        file: File,
        runtime: tokio::runtime::Handle,
    ) {
        loop {
            wake.wait();
            loop {
                let Some(this) = shared.upgrade() else {
                    return;
                };
                let (written, needs) = {
                    let _file = this.file.lock().expect("wal file lock");
                    let mut needs = this.needs.lock().expect("wal lock");
                    this.gating.store(!needs.is_empty(), Ordering::Release);
                    (
                        this.written.load(Ordering::Acquire),
                        std::mem::take(&mut *needs),
                    )
                };
                if *this.durable.borrow() >= written || this.check().is_err() {
                    break;
                }
                let gate = this.gate.lock().expect("wal lock").clone();
                if let (false, Some(gate)) = (needs.is_empty(), gate) {
                    if !runtime.block_on(gate(needs)) {
                        return;
                    }
                }
                let started = std::time::Instant::now();
                this.write_mark(written);
                this.gating.store(false, Ordering::Release);
                match file.sync_data() {
                    Ok(()) => {
                        this.syncs.observe(started.elapsed());
                        this.durable.send_modify(|d| *d = (*d).max(written));
                    }
                    Err(e) => this.fail("fsync", &e),
                }
            }
        }
    }
}

/// A flag and its condition variable: the sync thread's doorbell.
#[derive(Default)]
struct Wake {
    rung: Mutex<bool>,
    cond: Condvar,
}

impl Wake {
    fn set(&self) {
        *self.rung.lock().expect("wal lock") = true;
        self.cond.notify_one();
    }

    /// Waits until rung, and clears it.
    fn wait(&self) {
        let mut rung = self.rung.lock().expect("wal lock");
        while !*rung {
            rung = self.cond.wait(rung).expect("wal lock");
        }
        *rung = false;
    }
}

/// The write-ahead log of one metadata directory.
pub struct Wal {
    dir: PathBuf,
    shared: Arc<Shared>,
    next_lsn: u64,
    bytes_since_snapshot: u64,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// LSN of the snapshot loaded (0 if none).
    pub snapshot_lsn: u64,
    /// Records replayed from the log.
    pub replayed: u64,
    /// Bytes of torn or corrupt tail dropped from the log.
    pub dropped_bytes: u64,
    /// Records dropped because the machine rebooted since they were written and no mark
    /// covers them: they might name blobs the storages lost.
    pub unmarked: u64,
}

/// The machine's boot, from `path` (`/proc/sys/kernel/random/boot_id`: a new one at each
/// boot).
pub fn boot_id(path: &Path) -> Result<[u8; 16]> {
    let text = std::fs::read(path).map_err(io_err(format!("read {}", path.display())))?;
    let hash = vg_wire::BlockId::of(text.trim_ascii()).0;
    Ok(hash[..16].try_into().expect("16 bytes"))
}

/// Reads a snapshot payload of the format before `feature` and converts it.
fn convert<T: serde::de::DeserializeOwned + Into<Namespace>>(
    payload: &[u8],
    feature: &str,
) -> std::result::Result<(u64, Namespace), String> {
    let (lsn, old): (u64, T) = vg_wire::codec::from_bytes(payload).map_err(|e| e.to_string())?;
    info!(
        lsn,
        "snapshot of the format before {feature} read; converted"
    );
    Ok((lsn, old.into()))
}

/// The mark that records up to `upto` passed the gate, written in boot `boot`.
fn mark_record(upto: u64, boot: [u8; 16]) -> Result<Vec<u8>> {
    encode_record(upto, &Op::Mark { boot })
}

fn encode_record(lsn: u64, op: &Op) -> Result<Vec<u8>> {
    let payload = vg_wire::codec::to_bytes(&(lsn, op))?;
    let mut record = Vec::with_capacity(8 + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

/// Parses records from `bytes`; returns them with the offset each starts at, and the
/// length of the valid prefix.
fn parse_records(bytes: &[u8]) -> (Vec<(u64, Op, usize)>, usize) {
    let mut records = Vec::new();
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
        match vg_wire::codec::from_bytes::<(u64, Op)>(payload) {
            Ok((lsn, op)) => records.push((lsn, op, pos)),
            Err(_) => break,
        }
        pos += 8 + len as usize;
    }
    (records, pos)
}

fn sync_dir(dir: &Path) -> Result<()> {
    vg_wire::disk::sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))
}

impl Wal {
    /// Opens the metadata directory and recovers the namespace, on a machine whose boot
    /// is `boot` ([`boot_id`]).
    ///
    /// The sync thread writes a mark after the records it has passed through the gate
    /// and before it syncs them; records written after the last mark may name blobs the
    /// storages had not synced. If the machine rebooted since the last mark (a power
    /// loss, a kernel crash), the OS may have kept such records without their blobs, so
    /// recovery keeps only what the last mark covers; those records were acknowledged as
    /// written, never as synced. Within one boot the OS lost nothing: recovery keeps
    /// every record written, as it must after a crash of the process.
    pub fn open(dir: &Path, boot: [u8; 16]) -> Result<(Wal, Namespace, Recovery)> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let mut recovery = Recovery::default();
        let snapshot_path = dir.join("snapshot");
        let mut ns = match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let (lsn, ns) = Self::decode_snapshot(&bytes).map_err(|reason| Error::Corrupt {
                    path: snapshot_path.display().to_string(),
                    reason,
                })?;
                recovery.snapshot_lsn = lsn;
                ns
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Namespace::default(),
            Err(e) => return Err(io_err(format!("read {}", snapshot_path.display()))(e)),
        };
        ns.rebuild_refs();
        let wal_path = dir.join("wal");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wal_path)
            .map_err(io_err(format!("open {}", wal_path.display())))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err(format!("read {}", wal_path.display())))?;
        let (records, valid) = parse_records(&bytes);
        let marks: Vec<(u64, [u8; 16])> = records
            .iter()
            .filter_map(|(lsn, op, _)| match op {
                Op::Mark { boot } => Some((*lsn, *boot)),
                _ => None,
            })
            .collect();
        // A log without marks was written before them: every record stands. (A round of
        // the sync thread that began before a snapshot may mark less after the snapshot's
        // own mark: the highest counts.)
        let keep_upto = match marks.last() {
            Some((_, written_in)) if *written_in != boot => {
                marks.iter().map(|(upto, _)| *upto).max().unwrap_or(0)
            }
            _ => u64::MAX,
        };
        let mut end = valid;
        let mut last_lsn = recovery.snapshot_lsn;
        for (lsn, op, start) in &records {
            if matches!(op, Op::Mark { .. }) {
                continue;
            }
            if *lsn > keep_upto {
                end = end.min(*start);
                recovery.unmarked += 1;
                continue;
            }
            if *lsn <= recovery.snapshot_lsn {
                continue;
            }
            if let Err(e) = ns.apply(op) {
                // An op was logged only after it applied cleanly, so this means the log
                // and snapshot disagree; keep going so that the rest is not lost.
                warn!(lsn, error = %e, "replayed operation refused");
            }
            last_lsn = *lsn;
            recovery.replayed += 1;
        }
        ns.take_released();
        if recovery.unmarked > 0 {
            warn!(path = %wal_path.display(), records = recovery.unmarked, "the machine rebooted since the log's last mark: dropped the records written after it, as a power loss would have");
        }
        if end < bytes.len() {
            // Zeros are allocated space; anything else is a torn or corrupt record.
            let torn = bytes[valid..]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1);
            recovery.dropped_bytes = torn as u64;
            if torn > 0 {
                warn!(path = %wal_path.display(), offset = valid, dropped = torn, "write-ahead log has a torn or corrupt tail; recovered the valid prefix and cut the rest");
            }
            file.set_len(end as u64)
                .map_err(io_err(format!("truncate {}", wal_path.display())))?;
            file.sync_all()
                .map_err(io_err(format!("fsync {}", wal_path.display())))?;
        }
        let sync_file = file
            .try_clone()
            .map_err(io_err(format!("open {}", wal_path.display())))?;
        let mut log_file = LogFile {
            file,
            end: end as u64,
            allocated: 0,
            can_allocate: true,
        };
        if marks.is_empty() {
            // A log that holds no mark would be taken for one written before marks.
            log_file
                .write(&mark_record(last_lsn, boot)?)
                .and_then(|()| log_file.file.sync_data())
                .map_err(io_err(format!("write {}", wal_path.display())))?;
        }
        let shared = Arc::new(Shared {
            file: Mutex::new(log_file),
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                last_lsn,
                needs: BTreeSet::new(),
            }),
            written: AtomicU64::new(last_lsn),
            needs: Mutex::default(),
            gating: AtomicBool::new(false),
            durable: tokio::sync::watch::Sender::new(last_lsn),
            failed: Mutex::new(None),
            wake: Arc::default(),
            gate: Mutex::new(None),
            boot,
            syncs: Default::default(),
        });
        {
            let (weak, wake) = (Arc::downgrade(&shared), shared.wake.clone());
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("wal-sync".into())
                .spawn(move || Shared::sync_loop(weak, wake, sync_file, runtime))
                .map_err(io_err("start the log's sync thread"))?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            shared,
            next_lsn: last_lsn + 1,
            bytes_since_snapshot: end as u64,
        };
        Ok((wal, ns, recovery))
    }

    fn decode_snapshot(bytes: &[u8]) -> std::result::Result<(u64, Namespace), String> {
        let magic = bytes.get(..8).unwrap_or_default();
        let known = [
            SNAPSHOT_MAGIC,
            SNAPSHOT_MAGIC_V1,
            SNAPSHOT_MAGIC_V2,
            SNAPSHOT_MAGIC_V3,
            SNAPSHOT_MAGIC_V4,
        ];
        if bytes.len() < 20 || !known.iter().any(|m| magic == *m) {
            return Err("not a vg snapshot (bad magic)".into());
        }
        let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let payload = &bytes[20..];
        if payload.len() as u64 != len || crc32fast::hash(payload) != crc {
            return Err("snapshot checksum mismatch".into());
        }
        match magic {
            m if m == SNAPSHOT_MAGIC_V1 => convert::<NamespaceV1>(payload, "slices"),
            m if m == SNAPSHOT_MAGIC_V2 => convert::<NamespaceV2>(payload, "extended attributes"),
            m if m == SNAPSHOT_MAGIC_V3 => convert::<NamespaceV3>(payload, "pinned inodes"),
            m if m == SNAPSHOT_MAGIC_V4 => convert::<NamespaceV4>(payload, "numbered changes"),
            _ => vg_wire::codec::from_bytes(payload).map_err(|e| e.to_string()),
        }
    }

    /// Has the sync thread pass `gate` before each sync of records that name blocks.
    pub fn set_gate(&self, gate: Gate) {
        *self.shared.gate.lock().expect("wal lock") = Some(gate);
    }

    /// Appends an op that has just been applied; returns its LSN. Call under the
    /// namespace lock so that log order is apply order.
    pub fn append(&mut self, op: &Op) -> Result<u64> {
        self.append_after(op, [])
    }

    /// [`Wal::append`] of an op that names blocks the storages `needs` acknowledged
    /// without syncing: the record is not synced before they sync.
    pub fn append_after(
        &mut self,
        op: &Op,
        needs: impl IntoIterator<Item = String>,
    ) -> Result<u64> {
        let lsn = self.next_lsn;
        let record = encode_record(lsn, op)?;
        self.next_lsn += 1;
        self.bytes_since_snapshot += record.len() as u64;
        let mut pending = self.shared.pending.lock().expect("wal lock");
        pending.buf.extend_from_slice(&record);
        pending.last_lsn = lsn;
        pending.needs.extend(needs);
        Ok(lsn)
    }

    /// The LSN of the last record on disk.
    pub fn durable_lsn(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// How long the log's syncs take.
    pub fn syncs(&self) -> &vg_wire::metrics::Latency {
        &self.shared.syncs
    }

    /// The LSN of the last record appended.
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// A receiver to wait on for durability of an LSN, usable without holding the
    /// namespace lock.
    pub fn waiter(&self) -> DurableWaiter {
        DurableWaiter {
            shared: self.shared.clone(),
        }
    }

    /// Whether the log has grown enough that a snapshot would pay off.
    /// Not while records name blobs their storages may not have synced: a snapshot is
    /// synced at once, without the gate, so it waits for a moment when none is pending.
    pub fn wants_snapshot(&self, threshold: u64) -> bool {
        self.bytes_since_snapshot >= threshold && !self.blobs_unsynced()
    }

    /// Whether some record appended names blobs the gate has not yet had synced.
    fn blobs_unsynced(&self) -> bool {
        let shared = &self.shared;
        !shared.pending.lock().expect("wal lock").needs.is_empty()
            || !shared.needs.lock().expect("wal lock").is_empty()
            || shared.gating.load(Ordering::Acquire)
    }

    /// Writes a snapshot of `ns` (which reflects every appended op) and empties the log.
    /// Call under the namespace lock, so that no op is appended meanwhile.
    pub fn snapshot(&mut self, ns: &Namespace) -> Result<()> {
        let lsn = self.next_lsn - 1;
        let payload = vg_wire::codec::to_bytes(&(lsn, ns))?;
        let mut bytes = Vec::with_capacity(20 + payload.len());
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let tmp = self.dir.join("snapshot.tmp");
        let path = self.dir.join("snapshot");
        let mut file = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        file.write_all(&bytes)
            .and_then(|_| file.sync_all())
            .map_err(io_err(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!(
            "rename {} to {}",
            tmp.display(),
            path.display()
        )))?;
        sync_dir(&self.dir)?;
        // The snapshot holds everything up to `lsn`: drop buffered records and empty the
        // log. A crash before the truncation only makes replay skip those records.
        let mut file = self.shared.file.lock().expect("wal file lock");
        let mut pending = self.shared.pending.lock().expect("wal lock");
        pending.buf.clear();
        // The emptied log starts with a mark: one holding none would be taken for a log
        // written before marks.
        let mark = mark_record(lsn, self.shared.boot)?;
        file.clear()
            .and_then(|()| file.write(&mark))
            .and_then(|()| file.file.sync_data())
            .map_err(io_err("empty the log"))?;
        self.shared.written.store(lsn, Ordering::Release);
        self.shared.durable.send_modify(|d| *d = (*d).max(lsn));
        drop(pending);
        drop(file);
        self.bytes_since_snapshot = 0;
        info!(
            lsn,
            inodes = ns.len(),
            bytes = bytes.len(),
            "snapshot written"
        );
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Records whose callers went away unacknowledged: harmless to keep. Not marked or
        // synced here: the storages they may name could not be asked first (a clean stop
        // has the sync thread mark and sync everything before).
        self.shared.write_out();
        // The sync thread ends once it finds the log gone.
        self.shared.wake.set();
    }
}

/// Waits until an LSN is written or on disk.
pub struct DurableWaiter {
    shared: Arc<Shared>,
}

impl DurableWaiter {
    /// Resolves once `lsn` is on disk (the sync thread syncs it after the storages it
    /// depends on, and marks it); fails if the log can no longer be written.
    pub async fn wait(self, lsn: u64) -> Result<()> {
        tokio::task::yield_now().await;
        if self.shared.written.load(Ordering::Acquire) < lsn {
            self.shared.write_out();
        }
        let mut durable = self.shared.durable.subscribe();
        loop {
            self.shared.check()?;
            if *durable.borrow_and_update() >= lsn {
                return Ok(());
            }
            if durable.changed().await.is_err() {
                return self.shared.check();
            }
        }
    }

    /// Resolves once `lsn` is written to the log file (the sync thread then syncs it);
    /// fails if the log can no longer be written.
    pub async fn written(self, lsn: u64) -> Result<()> {
        tokio::task::yield_now().await;
        if self.shared.written.load(Ordering::Acquire) < lsn {
            self.shared.write_out();
        }
        self.shared.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vg_wire::{FileKind, Timestamp, ROOT_INO};

    /// The boot the tests run in; another one is a reboot.
    const BOOT: [u8; 16] = [1; 16];

    fn mkdir_op(ns: &Namespace, name: &str) -> Op {
        Op::Mkdir {
            parent: ROOT_INO,
            name: name.into(),
            ino: ns.next_ino(),
            perm: 0o755,
            uid: 0,
            gid: 0,
            time: Timestamp::now(),
        }
    }

    /// Applies and appends a mkdir of `/name` naming blobs on storages `needs`; its LSN.
    fn append_mkdir(wal: &mut Wal, ns: &mut Namespace, name: &str, needs: &[&str]) -> u64 {
        let op = mkdir_op(ns, name);
        ns.apply(&op).unwrap();
        wal.append_after(&op, needs.iter().map(|n| n.to_string()))
            .unwrap()
    }

    async fn write_ops(dir: &Path, names: &[&str]) {
        let (mut wal, mut ns, _) = Wal::open(dir, BOOT).unwrap();
        let mut last = 0;
        for name in names {
            last = append_mkdir(&mut wal, &mut ns, name, &[]);
        }
        wal.waiter().wait(last).await.unwrap();
    }

    #[tokio::test]
    async fn replay_restores_acknowledged_ops() {
        let dir = tempfile::tempdir().unwrap();
        write_ops(dir.path(), &["a", "b", "c"]).await;
        let (_, ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.replayed, 3);
        assert!(ns.resolve("/c").is_ok());
    }

    #[tokio::test]
    async fn a_written_record_survives_the_process_and_the_sync_thread_syncs_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut ns, _) = Wal::open(dir.path(), BOOT).unwrap();
        let lsn = append_mkdir(&mut wal, &mut ns, "a", &[]);
        wal.waiter().written(lsn).await.unwrap();
        // Another open of the directory, as after a crash of this process, replays it.
        let (_, again, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.replayed, 1);
        assert!(again.resolve("/a").is_ok());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while *wal.shared.durable.borrow() < lsn {
            assert!(std::time::Instant::now() < deadline, "never synced");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
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
            Arc::new(move |needs| {
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
    async fn a_record_naming_unsynced_blocks_is_synced_only_after_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut ns, _) = Wal::open(dir.path(), BOOT).unwrap();
        let (gate, mut asked, release) = held_gate();
        wal.set_gate(gate);
        let lsn = append_mkdir(&mut wal, &mut ns, "a", &["s1"]);
        wal.waiter().written(lsn).await.unwrap();
        let needs = asked.recv().await.unwrap();
        assert_eq!(needs.into_iter().collect::<Vec<_>>(), ["s1"]);
        let durable = tokio::spawn(wal.waiter().wait(lsn));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!durable.is_finished(), "synced before the storages were");
        assert!(!wal.wants_snapshot(0), "a snapshot would skip the gate");
        release.add_permits(1);
        durable.await.unwrap().unwrap();
        assert!(wal.wants_snapshot(0));
        // A record naming no blocks does not ask anyone.
        let lsn = append_mkdir(&mut wal, &mut ns, "b", &[]);
        wal.waiter().wait(lsn).await.unwrap();
        assert!(asked.try_recv().is_err());
    }

    #[tokio::test]
    async fn after_a_reboot_only_what_a_mark_covers_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut ns, _) = Wal::open(dir.path(), BOOT).unwrap();
        let (gate, mut asked, release) = held_gate();
        wal.set_gate(gate);
        let lsn = append_mkdir(&mut wal, &mut ns, "synced", &[]);
        wal.waiter().wait(lsn).await.unwrap();
        // A commit naming a blob not yet synced, and a change behind it: both written
        // (acknowledged), neither marked while the gate waits for the storage.
        let lsn = append_mkdir(&mut wal, &mut ns, "commit", &["s1"]);
        wal.waiter().written(lsn).await.unwrap();
        asked.recv().await.unwrap();
        let lsn = append_mkdir(&mut wal, &mut ns, "behind", &[]);
        wal.waiter().written(lsn).await.unwrap();
        // Whatever of them reached the disk (an fdatasync takes the whole file, and so
        // may the kernel's writeback), a reboot now drops them; a crash of the process
        // keeps them, as the OS does.
        wal.shared.file.lock().unwrap().file.sync_data().unwrap();
        let (_, same_boot, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!((rec.replayed, rec.unmarked), (3, 0));
        assert!(same_boot.resolve("/behind").is_ok());
        let (_, rebooted, rec) = Wal::open(dir.path(), [2; 16]).unwrap();
        assert_eq!((rec.replayed, rec.unmarked), (1, 2));
        assert!(rebooted.resolve("/synced").is_ok());
        assert!(rebooted.resolve("/commit").is_err() && rebooted.resolve("/behind").is_err());
        // The cut is on disk: the next open finds the same.
        let (_, again, rec) = Wal::open(dir.path(), [2; 16]).unwrap();
        assert_eq!((rec.replayed, rec.unmarked), (1, 0));
        assert_eq!(again.len(), rebooted.len());
        release.close();
    }

    #[tokio::test]
    async fn a_log_from_before_marks_is_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut ns = Namespace::default();
        let mut bytes = Vec::new();
        for (lsn, name) in [(1, "a"), (2, "b")] {
            let op = mkdir_op(&ns, name);
            ns.apply(&op).unwrap();
            bytes.extend(encode_record(lsn, &op).unwrap());
        }
        std::fs::write(dir.path().join("wal"), &bytes).unwrap();
        let (_, ns, rec) = Wal::open(dir.path(), [2; 16]).unwrap();
        assert_eq!((rec.replayed, rec.unmarked), (2, 0));
        assert!(ns.resolve("/b").is_ok());
    }

    #[tokio::test]
    async fn torn_tail_is_dropped_at_every_cut() {
        let dir = tempfile::tempdir().unwrap();
        write_ops(dir.path(), &["a", "b", "c"]).await;
        let file = std::fs::read(dir.path().join("wal")).unwrap();
        let full = &file[..parse_records(&file).1];
        for cut in 0..full.len() {
            let case = tempfile::tempdir().unwrap();
            let mut bytes = full[..cut].to_vec();
            bytes.extend_from_slice(&[0xAB; 7]);
            std::fs::write(case.path().join("wal"), &bytes).unwrap();
            let (_, ns, rec) = Wal::open(case.path(), BOOT).unwrap();
            assert!(rec.dropped_bytes > 0, "cut {cut}");
            assert_eq!(ns.len() as u64, 1 + rec.replayed, "cut {cut}");
            // The file was cut to its valid prefix: opening again drops nothing.
            let (_, _, again) = Wal::open(case.path(), BOOT).unwrap();
            assert_eq!(again.dropped_bytes, 0);
            assert_eq!(again.replayed, rec.replayed);
        }
    }

    #[tokio::test]
    async fn allocated_space_is_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        write_ops(dir.path(), &["a", "b"]).await;
        let size = std::fs::metadata(dir.path().join("wal")).unwrap().len();
        assert_eq!(size, PREALLOCATE, "the log is allocated ahead");
        // Records written after a reopen land after the first ones, not at the end of
        // the allocated space.
        write_ops(dir.path(), &["c"]).await;
        let (_, ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!((rec.replayed, rec.dropped_bytes), (3, 0));
        assert!(ns.resolve("/a").is_ok() && ns.resolve("/c").is_ok());
    }

    fn write_snapshot(dir: &Path, magic: &[u8; 8], payload: &[u8]) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(payload);
        std::fs::write(dir.join("snapshot"), bytes).unwrap();
    }

    #[tokio::test]
    async fn snapshot_before_xattrs_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let mut ns = Namespace::new(Timestamp::now());
        let op = mkdir_op(&ns, "kept");
        ns.apply(&op).unwrap();
        let payload = crate::namespace::encode_v2(7, &ns);
        write_snapshot(dir.path(), SNAPSHOT_MAGIC_V2, &payload);
        let (_, ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.snapshot_lsn, 7);
        let kept = ns.resolve("/kept").unwrap();
        assert!(ns.xattrs(kept).unwrap().is_empty());
    }

    #[tokio::test]
    async fn snapshot_before_pins_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let mut ns = Namespace::new(Timestamp::now());
        let op = mkdir_op(&ns, "kept");
        let kept = ns.apply(&op).unwrap();
        ns.apply(&Op::SetXattr {
            ino: kept,
            name: b"user.a".to_vec(),
            value: b"1".to_vec(),
            mode: vg_wire::xattr::SetMode::Either,
            time: Timestamp::now(),
        })
        .unwrap();
        write_snapshot(
            dir.path(),
            SNAPSHOT_MAGIC_V3,
            &crate::namespace::encode_v3(9, &ns),
        );
        let (mut wal, ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.snapshot_lsn, 9);
        assert_eq!(ns.xattrs(kept).unwrap().len(), 1);
        assert!(ns.pinned().is_empty());
        // Written again in the current format, it reads back the same.
        wal.snapshot(&ns).unwrap();
        drop(wal);
        let (_, ns, _) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(ns.xattrs(kept).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn snapshot_before_numbered_changes_is_converted_and_numbers_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut ns = Namespace::new(Timestamp::now());
        let kept = ns
            .apply(&Op::Create {
                parent: ROOT_INO,
                name: b"kept".to_vec(),
                ino: ns.next_ino(),
                perm: 0o644,
                uid: 0,
                gid: 0,
                time: Timestamp::now(),
            })
            .unwrap();
        ns.apply(&Op::Pin { ino: kept }).unwrap();
        write_snapshot(
            dir.path(),
            SNAPSHOT_MAGIC_V4,
            &crate::namespace::encode_v4(11, &ns),
        );
        let (mut wal, mut ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.snapshot_lsn, 11);
        assert!(ns.pinned().contains(&kept));
        assert!(ns.answered().is_empty());
        // A numbered change logged, then in a snapshot: both keep its number.
        let applied = Op::Applied {
            client: 5,
            seq: 9,
            ino: Some(kept),
        };
        ns.apply(&applied).unwrap();
        let lsn = wal.append(&applied).unwrap();
        wal.waiter().wait(lsn).await.unwrap();
        drop(wal);
        let (mut wal, ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.replayed, 1);
        assert_eq!(ns.answered().get(5, 9), Some(Some(kept)));
        wal.snapshot(&ns).unwrap();
        drop(wal);
        let (_, ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.replayed, 0);
        assert_eq!(ns.answered().get(5, 9), Some(Some(kept)));
        assert!(ns.pinned().contains(&kept));
    }

    #[tokio::test]
    async fn snapshot_then_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, mut ns, _) = Wal::open(dir.path(), BOOT).unwrap();
            append_mkdir(&mut wal, &mut ns, "a", &[]);
            let dev = Op::Mknod {
                parent: ROOT_INO,
                name: b"dev".to_vec(),
                ino: ns.next_ino(),
                kind: FileKind::CharDevice(0x0103),
                perm: 0o600,
                uid: 0,
                gid: 0,
                time: Timestamp::now(),
            };
            ns.apply(&dev).unwrap();
            wal.append_after(&dev, []).unwrap();
            wal.snapshot(&ns).unwrap();
            let lsn = append_mkdir(&mut wal, &mut ns, "b", &[]);
            wal.waiter().wait(lsn).await.unwrap();
        }
        let (_, ns, rec) = Wal::open(dir.path(), BOOT).unwrap();
        assert_eq!(rec.snapshot_lsn, 2);
        assert_eq!(rec.replayed, 1);
        assert!(ns.resolve("/a").is_ok() && ns.resolve("/b").is_ok());
        let dev = ns.get(ns.resolve("/dev").unwrap()).unwrap();
        assert_eq!(dev.attr.kind, FileKind::CharDevice(0x0103));
    }
}
