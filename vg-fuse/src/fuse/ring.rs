//! FUSE over io_uring (Linux 6.14+, `/sys/module/fuse/parameters/enable_uring`). The
//! kernel puts each request on the queue of the CPU its caller runs on; a thread pinned
//! to that CPU takes it from its ring, runs it through [`Ops`] and commits the reply
//! (which also fetches the next request). A request and its reply then wake threads on
//! the caller's own CPU: through `/dev/fuse` the mount's one reader thread ran wherever
//! the scheduler put it, and the caller and that thread woke each other across CPUs (a
//! third of a metadata call's time on this machine; BENCHMARKS.md, stop 29).
//!
//! Each queue's thread runs a tokio runtime of its own, and its requests' tasks run
//! there, calling the nameserver over a connection of the thread's own: a request, its
//! nameserver call and its reply all happen on the caller's CPU, without waking the
//! mount's other threads.
//!
//! While a request whose caller waits is out (a nameserver call, a block's fetch), the
//! thread polls for the answer for up to [`Ops`]' `poll` instead of sleeping: a
//! sleeping thread's CPU halts, and on a virtual machine waking a halted CPU costs
//! more than the round trip itself (creates, renames, unlinks through the mount took
//! 160 to 200 µs sleeping, 110 to 130 polling; BENCHMARKS.md, stop 32). It yields the
//! CPU at each turn, so a thread ready to run there runs first.
//!
//! fuser keeps the session: it mounts, answers `INIT` (offering `FUSE_OVER_IO_URING`),
//! and reads `/dev/fuse`, which still carries `FORGET` and `INTERRUPT`, and every
//! request if the kernel does not take the rings.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::TimeOrNow;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{debug, error, info, warn};

use super::reply::{
    Encoder, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};
use super::{set_attr, Caller, Ops};

/// `FUSE_OVER_IO_URING`, in the second word of `INIT`'s flags.
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;

/// `fuse_uring_cmd`: hand the kernel an entry's buffers; commit a reply and fetch the next.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Requests each queue holds at once. A request waiting for a lock holds its entry, and
/// the kernel keeps further requests from that CPU until one is free. Each entry has a
/// payload buffer of the largest request or reply (1 MiB), whose pages are only taken
/// by requests that large.
const DEPTH: usize = 32;

/// `IORING_ENTER_GETEVENTS`: also run the completions deferred to this thread.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The header buffer of an entry (`fuse_uring_req_header`): the `fuse_in_header` of a
/// request or the `fuse_out_header` of its reply, the request's first argument (its
/// fixed part), and the entry's sizes.
#[repr(C, align(8))]
struct Header {
    in_out: [u8; 128],
    op_in: [u8; 128],
    /// `fuse_uring_ent_in_out`: flags, commit id (the request's unique), payload size.
    flags: u64,
    commit_id: u64,
    payload_sz: u32,
    padding: u32,
    reserved: u64,
}

/// An entry's buffers, as registered with the kernel, which writes requests into them
/// (in this queue's thread, running the work it deferred there) and reads replies.
/// Only the queue's thread touches them, and never while a reference into them is held
/// elsewhere: a request's arguments are copied out before it runs, its reply written in
/// after.
struct Buffers {
    header: *mut Header,
    payload: *mut u8,
    len: usize,
}

// SAFETY: the pointers are dereferenced only on the queue's thread (`Sender::send`
// checks), which serialises every access.
unsafe impl Send for Buffers {}
// SAFETY: as above.
unsafe impl Sync for Buffers {}

impl Buffers {
    fn new(len: usize) -> Buffers {
        let header = Box::into_raw(Box::new(Header {
            in_out: [0; 128],
            op_in: [0; 128],
            flags: 0,
            commit_id: 0,
            payload_sz: 0,
            padding: 0,
            reserved: 0,
        }));
        let payload = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        Buffers {
            header,
            payload,
            len,
        }
    }

    /// The iovecs `REGISTER` hands the kernel.
    fn iov(&self) -> [libc::iovec; 2] {
        [
            libc::iovec {
                iov_base: self.header.cast(),
                iov_len: std::mem::size_of::<Header>(),
            },
            libc::iovec {
                iov_base: self.payload.cast(),
                iov_len: self.len,
            },
        ]
    }

    /// Writes a reply: `error` (0 or a negative errno) and `parts`, the reply's
    /// structures, for the request `unique`.
    ///
    /// # Safety
    /// On the queue's thread, with no reference into the buffers alive.
    unsafe fn write_reply(&self, unique: u64, mut error: i32, parts: &[&[u8]]) {
        let mut len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.len {
            // Cannot happen: the kernel asked for at most what the buffer holds.
            error!(len, "FUSE reply larger than its buffer");
            (error, len) = (-libc::EIO, 0);
        } else {
            let mut at = 0;
            for part in parts {
                // SAFETY: `at + part.len() <= len <= self.len`; the caller's promise.
                unsafe {
                    std::ptr::copy_nonoverlapping(part.as_ptr(), self.payload.add(at), part.len())
                };
                at += part.len();
            }
        }
        // SAFETY: the caller's promise.
        let header = unsafe { &mut *self.header };
        header.in_out[0..4].copy_from_slice(&((16 + len) as u32).to_ne_bytes());
        header.in_out[4..8].copy_from_slice(&error.to_ne_bytes());
        header.in_out[8..16].copy_from_slice(&unique.to_ne_bytes());
        header.payload_sz = len as u32;
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: both came from `Box::into_raw` in `new`, with these sizes.
        unsafe {
            drop(Box::from_raw(self.header));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.payload,
                self.len,
            )));
        }
    }
}

/// One request slot.
struct Entry {
    bufs: Arc<Buffers>,
    /// The iovecs `REGISTER` points at (kept until the kernel has read them).
    iov: Box<[libc::iovec; 2]>,
    /// The unique of the request being served, echoed by the commit.
    unique: u64,
    live: bool,
    /// Whether the thread polls for the answer of the request being served.
    polled: bool,
}

impl Entry {
    fn new(payload_size: usize) -> Entry {
        let bufs = Arc::new(Buffers::new(payload_size));
        let iov = Box::new(bufs.iov());
        Entry {
            bufs,
            iov,
            unique: 0,
            live: true,
            polled: false,
        }
    }
}

/// A reply made on another thread than its queue's: errno (negative) and bytes.
type Copied = (i32, Vec<u8>);

/// What a queue shares with the tasks that reply to its requests.
struct Shared {
    /// Entries whose replies are written, waiting to be committed; with the reply's
    /// bytes when it was made on another thread (not expected: every task of a queue's
    /// requests runs on its thread).
    done: Mutex<Vec<(usize, Option<Copied>)>>,
    /// Wakes the queue's loop for them.
    notify: tokio::sync::Notify,
}

thread_local! {
    /// The queue this thread serves, if any.
    static SERVING: std::cell::Cell<*const Shared> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Writes a reply into the entry its request came in, for the queue's loop to commit.
pub struct Sender {
    queue: Arc<Shared>,
    entry: usize,
    unique: u64,
    bufs: Arc<Buffers>,
}

impl Sender {
    /// Sends the reply: `error` (0 or a negative errno) and the reply's structures.
    pub fn send(self, error: i32, parts: &[&[u8]]) {
        let own = SERVING.with(|s| std::ptr::eq(s.get(), Arc::as_ptr(&self.queue)));
        let written = match own {
            true => {
                // SAFETY: on the queue's thread, and the request's arguments were
                // copied out before it ran.
                unsafe { self.bufs.write_reply(self.unique, error, parts) };
                None
            }
            false => Some((error, parts.concat())),
        };
        self.queue
            .done
            .lock()
            .expect("done lock")
            .push((self.entry, written));
        self.queue.notify.notify_one();
    }
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// A ring whose completions are run only when its (one) thread asks for them: requests
/// are copied into their entries in that thread, between two of its own steps.
fn new_ring(entries: u32) -> io::Result<Ring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
}

/// Whether this process can make the rings (the kernel may still not offer FUSE over
/// io_uring: it says so in `INIT`). Offering it and then failing to register the queues
/// would leave every request waiting.
pub fn supported() -> bool {
    match new_ring(4) {
        Ok(_) => true,
        Err(e) => {
            info!(error = %e, "io_uring unavailable: serving FUSE through /dev/fuse");
            false
        }
    }
}

/// The CPUs the kernel makes queues for (`num_possible_cpus`: each must be registered
/// before any is used).
fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit(['-', ',']).next()?.parse::<usize>().ok()?;
            Some(last + 1)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Starts a thread per CPU serving that CPU's queue of the session on `device`, whose
/// requests and replies are at most `payload` bytes past their headers.
pub fn start(ops: Ops, device: &OwnedFd, payload: usize) {
    for qid in 0..possible_cpus() {
        let (ops, device) = match device.try_clone() {
            Ok(device) => (ops.clone(), device),
            Err(e) => return error!(error = %e, "cannot duplicate /dev/fuse for the rings"),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("fuse-q{qid}"))
            .spawn(move || {
                if let Err(e) = serve(&ops, &device, qid, payload) {
                    error!(queue = qid, error = %e, "FUSE ring failed");
                }
            });
        if let Err(e) = spawned {
            error!(queue = qid, error = %e, "cannot start a FUSE ring thread");
        }
    }
}

/// Pins this thread to `cpu` (a CPU that is not online is left unpinned).
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it for
    // cpu < CPU_SETSIZE, which is checked.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            debug!(cpu, error = %io::Error::last_os_error(), "not pinned");
        }
    }
}

/// The 80-byte command of a `fuse_uring_cmd_req`.
fn command(commit_id: u64, qid: usize) -> [u8; 80] {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&(qid as u16).to_ne_bytes());
    cmd
}

/// `REGISTER` for entry `i`: the kernel reads the iovecs (header, payload) and keeps
/// them.
fn register(device: RawFd, qid: usize, i: usize, entry: &Entry) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fd(device), CMD_REGISTER)
        .cmd(command(0, qid))
        .addr(Some(entry.iov.as_ptr() as u64))
        .build()
        .user_data(i as u64);
    // The command's `len` (the number of iovecs, which the kernel checks) has no setter
    // in io-uring 0.7: an SQE128 is 128 plain bytes, `len` the u32 at offset 24.
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: same size, and every bit pattern is a valid SQE (integers and unions).
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn push(ring: &mut Ring, sqe: &squeue::Entry128) {
    // SAFETY: what the entry points at (an entry's iovecs and buffers) lives until the
    // ring is dropped.
    while unsafe { ring.submission().push(sqe) }.is_err() {
        // Full: hand what is queued to the kernel first.
        if let Err(e) = ring.submit() {
            warn!(error = %e, "io_uring submit failed");
        }
    }
}

/// Serves queue `qid` until the session ends, on a runtime of this thread's own: the
/// requests' tasks, and their calls to the nameserver over this thread's own
/// connection, run here, on the CPU their callers run on.
fn serve(ops: &Ops, device: &OwnedFd, qid: usize, payload: usize) -> io::Result<()> {
    pin(qid);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(ops, device, qid, payload))
}

async fn run(ops: &Ops, device: &OwnedFd, qid: usize, payload: usize) -> io::Result<()> {
    if let Err(e) = ops.files.client().dial_from_this_thread() {
        warn!(queue = qid, error = %e, "no connection of its own: sharing the mount's");
    }
    // Declared before the ring, so dropped after it: the kernel holds the buffers until
    // the ring goes.
    let mut entries: Vec<Entry> = (0..DEPTH).map(|_| Entry::new(payload)).collect();
    let mut ring = new_ring(2 * DEPTH as u32)?;
    // The kernel signals this eventfd as requests arrive (and completions land); the
    // runtime waits on it with everything else.
    // SAFETY: eventfd returns a new descriptor or -1.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if wake < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `wake` is a fresh descriptor owned by nothing else.
    let wake = unsafe { OwnedFd::from_raw_fd(wake) };
    ring.submitter().register_eventfd(wake.as_raw_fd())?;
    // SAFETY: the eventfd is owned by the AsyncFd, open and the same for its life.
    let wake = unsafe { AsyncFd::register_with_interest(wake, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let shared = Arc::new(Shared {
        done: Mutex::default(),
        notify: tokio::sync::Notify::new(),
    });
    SERVING.with(|s| s.set(Arc::as_ptr(&shared)));
    let fd = device.as_raw_fd();
    for (i, entry) in entries.iter().enumerate() {
        push(&mut ring, &register(fd, qid, i, entry));
    }
    let mut started = false;
    let mut completed = Vec::with_capacity(DEPTH);
    // Requests out that the thread polls for, and since when none has moved.
    let mut polled = 0;
    let mut idle_since: Option<Instant> = None;
    loop {
        // Hand the kernel the commits queued, run the work it deferred to this thread
        // (copying arriving requests into their entries) and take what completed.
        let queued = ring.submission().len() as u32;
        // SAFETY: no argument is passed; the SQEs point at this frame's buffers.
        let entered = unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(queued, 0, IORING_ENTER_GETEVENTS, None)
        };
        match entered {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        completed.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        let done = std::mem::take(&mut *shared.done.lock().expect("done lock"));
        if completed.is_empty() && done.is_empty() {
            if polled > 0 && idle_since.get_or_insert_with(Instant::now).elapsed() < ops.poll {
                std::thread::yield_now();
                // The runtime looks at its sockets (without waiting) before it runs
                // this task again.
                tokio::task::yield_now().await;
                continue;
            }
            idle_since = None;
            tokio::select! {
                ready = wake.readable() => {
                    let mut ready = ready?;
                    let mut counter = [0u8; 8];
                    // SAFETY: reads 8 bytes into a live buffer from the eventfd (non-blocking).
                    unsafe { libc::read(wake.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
                    ready.clear_ready();
                }
                () = shared.notify.notified() => {}
            }
            continue;
        }
        for (i, result) in completed.drain(..) {
            match result {
                0 => {
                    if !started {
                        started = true;
                        info!(queue = qid, "serving FUSE requests over io_uring");
                    }
                    entries[i].polled = dispatch(ops, &shared, i, &mut entries[i]);
                    polled += usize::from(entries[i].polled);
                }
                // `REGISTER` before the kernel took fuser's `INIT` reply: again shortly.
                r if r == -libc::EAGAIN && !started => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    push(&mut ring, &register(fd, qid, i, &entries[i]));
                }
                r => {
                    let e = io::Error::from_raw_os_error(-r);
                    match r == -libc::ENOTCONN || r == -libc::ECANCELED {
                        true => debug!(queue = qid, entry = i, error = %e, "FUSE ring entry ended"),
                        false => {
                            error!(queue = qid, entry = i, error = %e, "FUSE ring entry failed")
                        }
                    }
                    entries[i].live = false;
                    if entries.iter().all(|e| !e.live) {
                        return Ok(());
                    }
                }
            }
        }
        idle_since = None;
        for (i, reply) in done {
            let entry = &entries[i];
            polled -= usize::from(entry.polled);
            if let Some((error, body)) = reply {
                // SAFETY: on the queue's thread, between the request and its commit.
                unsafe { entry.bufs.write_reply(entry.unique, error, &[&body]) };
            }
            let commit = opcode::UringCmd80::new(types::Fd(fd), CMD_COMMIT_AND_FETCH)
                .cmd(command(entry.unique, qid))
                .build()
                .user_data(i as u64);
            push(&mut ring, &commit);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The NUL-terminated strings at the start of a request's payload.
fn names(payload: &[u8]) -> impl Iterator<Item = &OsStr> {
    payload
        .split(|&b| b == 0)
        .map(OsStr::from_bytes)
        .chain(std::iter::repeat(OsStr::new("")))
}

/// A `setattr` time: now, or seconds and nanoseconds since the epoch.
fn time(now: bool, secs: u64, nsecs: u32) -> TimeOrNow {
    if now {
        return TimeOrNow::Now;
    }
    let secs = secs as i64;
    let at = match secs >= 0 {
        true => UNIX_EPOCH + Duration::new(secs as u64, nsecs),
        false => {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nsecs.into())
        }
    };
    TimeOrNow::SpecificTime(at)
}

// Request opcodes (`enum fuse_opcode`).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const SETXATTR: u32 = 21;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const REMOVEXATTR: u32 = 24;
const FLUSH: u32 = 25;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const FSYNCDIR: u32 = 30;
const GETLK: u32 = 31;
const SETLK: u32 = 32;
const SETLKW: u32 = 33;
const ACCESS: u32 = 34;
const CREATE: u32 = 35;
const DESTROY: u32 = 38;
const FALLOCATE: u32 = 43;
const READDIRPLUS: u32 = 44;
const RENAME2: u32 = 45;
const COPY_FILE_RANGE: u32 = 47;

// `fuse_setattr_in.valid` bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;

/// `FUSE_RELEASE_FLOCK_UNLOCK` in `fuse_release_in.release_flags`.
const RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;

/// Runs the request in entry `i` (its first argument in `op_in`, the rest in the
/// payload) through `ops`, as fuser's session does for one read from `/dev/fuse`;
/// returns whether the thread polls for its answer.
fn dispatch(ops: &Ops, queue: &Arc<Shared>, i: usize, entry: &mut Entry) -> bool {
    // Everything the request says is copied out first: its reply is written into the
    // same buffers, possibly before the call below returns.
    let (h, a, payload) = {
        // SAFETY: on the queue's thread, which the kernel just handed this request;
        // the references end with this block.
        let header = unsafe { &*entry.bufs.header };
        let len = (header.payload_sz as usize).min(entry.bufs.len);
        // SAFETY: as above; `len` is within the buffer.
        let payload = unsafe { std::slice::from_raw_parts(entry.bufs.payload, len) };
        (header.in_out, header.op_in, payload.to_vec())
    };
    let (opcode, unique, node) = (u32_at(&h, 4), u64_at(&h, 8), u64_at(&h, 16));
    let who = Caller {
        uid: u32_at(&h, 24),
        gid: u32_at(&h, 28),
        pid: u32_at(&h, 32),
    };
    entry.unique = unique;
    let sender = || Sender {
        queue: queue.clone(),
        entry: i,
        unique,
        bufs: entry.bufs.clone(),
    };
    let enc = || Encoder::new(sender());
    if opcode == WRITE {
        // The data moves on with the request: no copy of it but the one above.
        let mut data = payload;
        data.truncate(u32_at(&a, 16) as usize);
        let reply = ReplyWrite::Ring(enc());
        let kill = u32_at(&a, 20) & super::WRITE_KILL_SUIDGID != 0;
        ops.write(node, u64_at(&a, 0), u64_at(&a, 8) as i64, data, kill, reply);
        return false;
    }
    let mut names = names(&payload);
    let mut name = || names.next().unwrap_or_default();
    match opcode {
        LOOKUP => ops.lookup(node, name(), ReplyEntry::Ring(enc())),
        GETATTR => ops.getattr(node, ReplyAttr::Ring(enc())),
        SETATTR => {
            let valid = u32_at(&a, 0);
            let has = |bit: u32| valid & bit != 0;
            let set = set_attr(
                has(FATTR_MODE).then(|| u32_at(&a, 68)),
                has(FATTR_UID).then(|| u32_at(&a, 76)),
                has(FATTR_GID).then(|| u32_at(&a, 80)),
                has(FATTR_SIZE).then(|| u64_at(&a, 16)),
                has(FATTR_ATIME)
                    .then(|| time(has(FATTR_ATIME_NOW), u64_at(&a, 32), u32_at(&a, 56))),
                has(FATTR_MTIME)
                    .then(|| time(has(FATTR_MTIME_NOW), u64_at(&a, 40), u32_at(&a, 60))),
            );
            ops.setattr(
                node,
                set,
                has(super::FATTR_KILL_SUIDGID),
                ReplyAttr::Ring(enc()),
            )
        }
        READLINK => ops.readlink(node, ReplyData::Ring(enc())),
        SYMLINK => {
            let link = name();
            let target = std::path::Path::new(name());
            ops.symlink(who, node, link, target, ReplyEntry::Ring(enc()))
        }
        MKNOD => ops.mknod(
            who,
            node,
            name(),
            u32_at(&a, 0),
            u32_at(&a, 8),
            u32_at(&a, 4),
            ReplyEntry::Ring(enc()),
        ),
        MKDIR => ops.mkdir(
            who,
            node,
            name(),
            u32_at(&a, 0),
            u32_at(&a, 4),
            ReplyEntry::Ring(enc()),
        ),
        UNLINK => ops.unlink(node, name(), ReplyEmpty::Ring(enc())),
        RMDIR => ops.rmdir(node, name(), ReplyEmpty::Ring(enc())),
        RENAME | RENAME2 => {
            let flags = match opcode {
                RENAME2 => u32_at(&a, 8),
                _ => 0,
            };
            let (from, to) = (name(), name());
            ops.rename(
                node,
                from,
                u64_at(&a, 0),
                to,
                flags,
                ReplyEmpty::Ring(enc()),
            )
        }
        LINK => ops.link(u64_at(&a, 0), node, name(), ReplyEntry::Ring(enc())),
        OPEN => ops.open(node, u32_at(&a, 0) as i32, ReplyOpen::Ring(enc())),
        READ => ops.read(
            node,
            u64_at(&a, 0),
            u64_at(&a, 8) as i64,
            u32_at(&a, 16),
            ReplyData::Ring(enc()),
        ),
        STATFS => ops.statfs(ReplyStatfs::Ring(enc())),
        RELEASE => {
            let flock = (u32_at(&a, 12) & RELEASE_FLOCK_UNLOCK != 0).then(|| u64_at(&a, 16));
            ops.release(node, u64_at(&a, 0), flock, ReplyEmpty::Ring(enc()))
        }
        FSYNC => ops.fsync(node, ReplyEmpty::Ring(enc())),
        SETXATTR => {
            let size = u32_at(&a, 0) as usize;
            let key = name();
            let start = (key.len() + 1).min(payload.len());
            let value = &payload[start..(start + size).min(payload.len())];
            ops.setxattr(
                node,
                key,
                value,
                u32_at(&a, 4) as i32,
                ReplyEmpty::Ring(enc()),
            )
        }
        GETXATTR => ops.getxattr(node, name(), u32_at(&a, 0), ReplyXattr::Ring(enc())),
        LISTXATTR => ops.listxattr(node, u32_at(&a, 0), ReplyXattr::Ring(enc())),
        REMOVEXATTR => ops.removexattr(node, name(), ReplyEmpty::Ring(enc())),
        FLUSH => ops.flush(node, u64_at(&a, 16), ReplyEmpty::Ring(enc())),
        OPENDIR => ops.opendir(node, ReplyOpen::Ring(enc())),
        READDIR => ops.readdir(
            node,
            u64_at(&a, 0),
            u64_at(&a, 8) as i64,
            ReplyDirectory::ring(enc(), u32_at(&a, 16) as usize),
        ),
        READDIRPLUS => ops.readdirplus(
            node,
            u64_at(&a, 0),
            u64_at(&a, 8) as i64,
            ReplyDirectoryPlus::ring(enc(), u32_at(&a, 16) as usize),
        ),
        RELEASEDIR => ops.releasedir(u64_at(&a, 0), ReplyEmpty::Ring(enc())),
        FSYNCDIR => ops.fsyncdir(ReplyEmpty::Ring(enc())),
        GETLK => ops.getlk(
            node,
            u64_at(&a, 8),
            u64_at(&a, 16),
            u64_at(&a, 24),
            u32_at(&a, 32) as i32,
            u32_at(&a, 36),
            ReplyLock::Ring(enc()),
        ),
        SETLK | SETLKW => ops.setlk(
            who,
            node,
            u64_at(&a, 8),
            u64_at(&a, 16),
            u64_at(&a, 24),
            u32_at(&a, 32) as i32,
            u32_at(&a, 36),
            opcode == SETLKW,
            ReplyEmpty::Ring(enc()),
        ),
        ACCESS => ops.access(ReplyEmpty::Ring(enc())),
        CREATE => ops.create(
            who,
            node,
            name(),
            u32_at(&a, 4),
            u32_at(&a, 8),
            u32_at(&a, 0) as i32,
            ReplyCreate::Ring(enc()),
        ),
        FALLOCATE => ops.fallocate(
            node,
            u64_at(&a, 8) as i64,
            u64_at(&a, 16) as i64,
            u32_at(&a, 24) as i32,
            who.uid,
            ReplyEmpty::Ring(enc()),
        ),
        COPY_FILE_RANGE => ops.copy_file_range(
            node,
            u64_at(&a, 8) as i64,
            u64_at(&a, 16),
            u64_at(&a, 32) as i64,
            u64_at(&a, 40),
            who.uid,
            ReplyWrite::Ring(enc()),
        ),
        // What fuser's defaults answer: not implemented (the kernel stops asking for
        // most), and nothing for DESTROY, which the session's end handles.
        _ => {
            debug!(opcode, "FUSE request not implemented");
            let reply = ReplyEmpty::Ring(enc());
            match opcode {
                DESTROY => reply.ok(),
                _ => reply.error(libc::ENOSYS),
            }
        }
    }
    polled(opcode)
}

/// Whether a queue's thread polls for the answer of a request with `opcode`: not for
/// a write (answered from memory at once, or behind uploads on the main runtime), a
/// release (its caller does not wait: polling took the CPU from it, creates went
/// slower) or an fsync (a disk's sync, a millisecond: fsync'd writes went slower).
fn polled(opcode: u32) -> bool {
    !matches!(opcode, WRITE | RELEASE | RELEASEDIR | FSYNC | FSYNCDIR)
}
