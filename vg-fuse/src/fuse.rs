//! The FUSE adapter: each request, from fuser's session (`/dev/fuse`) or from an
//! io_uring queue ([`ring`]), goes to the matching [`Ops`] call, which converts its
//! arguments, runs the client call (in the serving thread until it has to wait, then on
//! a tokio runtime, so slow calls never block other requests), and replies
//! ([`reply`]) or maps the error to an errno.

pub mod errno;
mod reply;
mod ring;
mod signals;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType, Filesystem, KernelConfig, Request, TimeOrNow};
use tracing::debug;
use vg_wire::ns::{Lock, LockKind};
use vg_wire::xattr::SetMode;
use vg_wire::{Attr, FileKind, Ino, SetAttr, SetTime};

use crate::client::files::Files;
use crate::client::{Cached, Error, Maker, Xattrs};
use errno::errno;
use reply::{
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};

/// `FOPEN_NOFLUSH` (Linux 5.16): no FLUSH request when the descriptor is closed (fuser
/// 0.16 does not name it; older kernels ignore it and send FLUSH as before).
const FOPEN_NOFLUSH: u32 = 1 << 5;

/// `FUSE_HANDLE_KILLPRIV_V2` (Linux 5.11; fuser 0.16 does not name it): the mount takes
/// set-user-ID bits and capabilities away on write, truncate and chown, told so by the
/// flags below, and the kernel stops asking for `security.capability` before each write.
const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
pub(crate) const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FATTR_KILL_SUIDGID` in `fuse_setattr_in.valid`.
pub(crate) const FATTR_KILL_SUIDGID: u32 = 1 << 11;

/// Size the kernel sees as the preferred I/O size (`st_blksize`): large, so that `cp` and
/// friends move big chunks per call.
const IO_SIZE: u32 = 1 << 20;

/// A directory listing held by an open directory handle: name and attributes.
type Listing = Vec<(Vec<u8>, Attr)>;

/// One entry to reply to readdir: inode, next offset, type, name, attributes.
struct DirEntry {
    ino: Ino,
    next: i64,
    kind: FileType,
    name: Vec<u8>,
    attr: Attr,
}

/// Per-open-file handle state.
struct FileHandle {
    append: bool,
    /// End of the last read, to detect sequential readers.
    last_end: u64,
}

/// The file system's operations, shared by every thread that serves FUSE requests (the
/// session's, and with FUSE over io_uring one per CPU).
#[derive(Clone)]
pub(crate) struct Ops {
    files: Arc<Files>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    /// Whether extended attributes are served (else ENOSYS: the kernel stops asking).
    xattrs: bool,
    /// How long a FUSE queue's thread polls for an answer before it sleeps ([`ring`]).
    poll: Duration,
    next_fh: Arc<AtomicU64>,
    handles: Arc<Mutex<HashMap<u64, FileHandle>>>,
    dirs: Arc<Mutex<HashMap<u64, Listing>>>,
    /// Tells the kernel to drop cached pages; set once the session exists.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

/// The mounted file system, as fuser's session serves it.
pub struct VgFs {
    ops: Ops,
    /// The session's `/dev/fuse`, set once the session exists: FUSE over io_uring
    /// registers its queues on it.
    device: Arc<std::sync::OnceLock<std::os::fd::OwnedFd>>,
    /// Whether to offer the kernel FUSE over io_uring.
    uring: bool,
    /// The queues over io_uring serve the requests: `/dev/fuse` brings little more than
    /// forgets, which can wait (see [`FORGET_PAUSE`]).
    ringed: bool,
}

/// How long the `/dev/fuse` thread rests after a forget while io_uring queues serve the
/// requests, so that the next ones arrive batched: an unlink's inode is forgotten at
/// once, and `rm -r` woke that thread once per file, which took a CPU from the
/// threads doing the work on a two-core machine.
const FORGET_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Makes the kernel read ahead [`IO_SIZE`] on the mount at `mountpoint`, so that a
/// sequential reader's FUSE reads are 1 MiB, not 128 KiB (+17% sequential read
/// here): the kernel caps the read-ahead a file system may ask for to its default, and
/// only the mount's `read_ahead_kb` in sysfs raises it. The kernel sets it when the mount
/// starts serving, so a thread waits for that (its `stat` is answered only then) and
/// raises it after. Needs root; without it the default stays, which is only slower.
pub fn raise_read_ahead(mountpoint: std::path::PathBuf) {
    std::thread::spawn(move || {
        let knob = match std::fs::metadata(&mountpoint) {
            Ok(meta) => {
                let dev = std::os::unix::fs::MetadataExt::dev(&meta);
                format!(
                    "/sys/class/bdi/{}:{}/read_ahead_kb",
                    libc::major(dev),
                    libc::minor(dev)
                )
            }
            Err(e) => return debug!(mountpoint = %mountpoint.display(), error = %e, "mount gone"),
        };
        if let Err(e) = std::fs::write(&knob, (IO_SIZE / 1024).to_string()) {
            debug!(path = %knob, error = %e, "cannot raise the mount's read-ahead");
        }
    });
}

fn file_attr(attr: &Attr) -> FileAttr {
    let kind = match attr.kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice(_) => FileType::CharDevice,
        FileKind::BlockDevice(_) => FileType::BlockDevice,
    };
    FileAttr {
        ino: attr.ino,
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime.into(),
        mtime: attr.mtime.into(),
        ctime: attr.ctime.into(),
        crtime: attr.ctime.into(),
        kind,
        perm: attr.perm as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.kind.rdev(),
        blksize: IO_SIZE,
        flags: 0,
    }
}

/// Answers `getxattr` with attribute `name` of `xattrs`, or ENODATA.
fn xattr_value(reply: ReplyXattr, size: u32, xattrs: &Xattrs, name: &[u8]) {
    match xattrs.iter().find(|(n, _)| n == name) {
        Some((_, value)) => xattr_reply(reply, size, value),
        None => reply.error(libc::ENODATA),
    }
}

/// Answers `getxattr`/`listxattr`: the size when asked for it (`size` 0), ERANGE when
/// the caller's buffer is too small, the bytes otherwise.
fn xattr_reply(reply: ReplyXattr, size: u32, data: &[u8]) {
    match size {
        0 => reply.size(data.len() as u32),
        n if (n as usize) < data.len() => reply.error(libc::ERANGE),
        _ => reply.data(data),
    }
}

/// Attributes from the nameserver, with this client's unwritten size and mtime.
async fn overlaid(
    files: Arc<Files>,
    work: impl Future<Output = Result<Attr, Error>>,
) -> Result<Attr, Error> {
    let mut attr = work.await?;
    files.overlay(&mut attr).await;
    Ok(attr)
}

/// Whether a caller lacks `CAP_FSETID` where the kernel does not say (fuser's
/// `/dev/fuse` path, an allocation, a copy into a file): any caller but root is taken to.
fn lacks_fsetid(uid: u32) -> bool {
    uid != 0
}

/// What a write into file `ino` takes away on ext4 (see [`Files::kill_privs`]): also an
/// allocation and a copy into it.
async fn take_privs(files: &Files, ino: u64, kill: bool, xattrs: bool) -> Result<(), Error> {
    let mut set = SetAttr::default();
    files.kill_privs(ino, &mut set, kill, xattrs).await?;
    if set.perm.is_some() {
        files.setattr(ino, set).await?;
    }
    Ok(())
}

/// The attribute change a `setattr` asks for (what it leaves out stays).
fn set_attr(
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
) -> SetAttr {
    SetAttr {
        perm: mode.map(|m| m & 0o7777),
        uid,
        gid,
        size,
        atime: set_time(atime),
        mtime: set_time(mtime),
    }
}

fn set_time(time: Option<TimeOrNow>) -> Option<SetTime> {
    time.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t.into()),
    })
}

/// A request's task between its first poll (in the thread that took the request) and its spawn.
struct Parked {
    state: Mutex<ParkState>,
    runtime: tokio::runtime::Handle,
}

type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

enum ParkState {
    /// Being polled the first time.
    Polling,
    /// Woken while being polled: spawn it as soon as the poll ends.
    Woken,
    /// Waiting for its first wake.
    Parked(Task),
    /// On the runtime, which polls it with its own waker from now on.
    Spawned,
}

impl Parked {
    /// Parks the task after a first poll that left it waiting, or spawns it if it was
    /// woken meanwhile.
    fn park(&self, task: Task) {
        let mut state = self.state.lock().expect("park lock");
        match *state {
            ParkState::Woken => {
                *state = ParkState::Spawned;
                drop(state);
                self.runtime.spawn(task);
            }
            _ => *state = ParkState::Parked(task),
        }
    }
}

impl std::task::Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.lock().expect("park lock");
        match std::mem::replace(&mut *state, ParkState::Spawned) {
            ParkState::Polling | ParkState::Woken => *state = ParkState::Woken,
            ParkState::Parked(task) => {
                drop(state);
                self.runtime.spawn(task);
            }
            ParkState::Spawned => {}
        }
    }
}

impl VgFs {
    /// A file system over the open-file layer, running its calls on `rt`; with `uring`,
    /// served over io_uring if the kernel offers it, each queue's thread polling up to
    /// `poll` for an answer before it sleeps.
    pub fn new(
        files: Arc<Files>,
        rt: tokio::runtime::Handle,
        ttl: Duration,
        xattrs: bool,
        uring: bool,
        poll: Duration,
    ) -> Self {
        let ops = Ops {
            files,
            rt,
            ttl,
            xattrs,
            poll,
            next_fh: Arc::new(AtomicU64::new(1)),
            handles: Arc::default(),
            dirs: Arc::default(),
            notifier: Arc::default(),
        };
        VgFs {
            ops,
            device: Arc::default(),
            uring,
            ringed: false,
        }
    }

    /// Lets forgets pile up in the kernel for [`FORGET_PAUSE`] while io_uring queues serve
    /// the requests, so that the next read of `/dev/fuse` takes them as one batch.
    fn after_forgets(&self) {
        if self.ringed {
            std::thread::sleep(FORGET_PAUSE);
        }
    }

    /// Where the session's notifier goes once the session exists (it owns this).
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.ops.notifier.clone()
    }

    /// Where the session's `/dev/fuse` (a duplicate) goes once the session exists.
    pub fn device_slot(&self) -> Arc<std::sync::OnceLock<std::os::fd::OwnedFd>> {
        self.device.clone()
    }
}

impl Ops {
    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `work` and hands `reply` its value or the errno of its error. The work starts
    /// in this thread and goes on on the runtime only if it has to wait: most writes,
    /// attribute changes and cached answers finish at once, and handing them to a runtime
    /// thread and back cost two thread wake-ups, more than the work itself.
    fn spawn<T, W, R>(&self, name: &'static str, work: W, reply: R)
    where
        T: Send + 'static,
        W: Future<Output = Result<T, Error>> + Send + 'static,
        R: FnOnce(Result<T, i32>) + Send + 'static,
    {
        let mut task = Box::pin(async move {
            let result = work.await.map_err(|e| {
                debug!(op = name, error = %e, "failed");
                errno(&e)
            });
            reply(result);
        });
        // A FUSE ring's thread runs a runtime of its own, which goes on with what its
        // requests wait for; fuser's thread has none and hands them to the main one.
        let runtime = tokio::runtime::Handle::try_current().unwrap_or_else(|_| self.rt.clone());
        let _runtime = runtime.enter();
        // A task that must wait is handed to the runtime only when what it waits for is
        // ready (a reply, mostly): the wake comes from a runtime thread, which then runs
        // the task itself. Spawning it at once woke a runtime thread only to poll it and
        // find it still waiting.
        let parked = Arc::new(Parked {
            state: Mutex::new(ParkState::Polling),
            runtime: runtime.clone(),
        });
        let waker = Waker::from(parked.clone());
        if task
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            parked.park(task);
        }
    }

    /// Replies with an entry, after overlaying this client's unwritten size.
    fn entry(
        &self,
        name: &'static str,
        work: impl Future<Output = Result<Attr, Error>> + Send + 'static,
        reply: ReplyEntry,
    ) {
        self.entry_for(name, self.ttl, work, reply);
    }

    /// [`VgFs::entry`], cacheable by the kernel for `ttl`.
    fn entry_for(
        &self,
        name: &'static str,
        ttl: Duration,
        work: impl Future<Output = Result<Attr, Error>> + Send + 'static,
        reply: ReplyEntry,
    ) {
        self.spawn(name, overlaid(self.files.clone(), work), move |r| match r {
            Ok(attr) => reply.entry(&ttl, &file_attr(&attr), 0),
            Err(e) => reply.error(e),
        });
    }

    /// Replies with attributes, after overlaying this client's unwritten size.
    fn attr(
        &self,
        name: &'static str,
        work: impl Future<Output = Result<Attr, Error>> + Send + 'static,
        reply: ReplyAttr,
    ) {
        self.attr_for(name, self.ttl, work, reply);
    }

    /// [`VgFs::attr`], cacheable by the kernel for `ttl`.
    fn attr_for(
        &self,
        name: &'static str,
        ttl: Duration,
        work: impl Future<Output = Result<Attr, Error>> + Send + 'static,
        reply: ReplyAttr,
    ) {
        self.spawn(name, overlaid(self.files.clone(), work), move |r| match r {
            Ok(attr) => reply.attr(&ttl, &file_attr(&attr)),
            Err(e) => reply.error(e),
        });
    }

    fn empty(
        &self,
        name: &'static str,
        work: impl Future<Output = Result<(), Error>> + Send + 'static,
        reply: ReplyEmpty,
    ) {
        self.spawn(name, work, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn open_dir_entries(&self, ino: Ino, fh: u64, offset: i64) -> Option<Vec<DirEntry>> {
        let dirs = self.dirs.lock().expect("dirs lock");
        let entries = dirs.get(&fh)?;
        Some(
            entries
                .iter()
                .enumerate()
                .skip(offset.max(0) as usize)
                .map(|(i, (name, attr))| {
                    let kind = file_attr(attr).kind;
                    let ino = if name == b"." { ino } else { attr.ino };
                    DirEntry {
                        ino,
                        next: i as i64 + 1,
                        kind,
                        name: name.clone(),
                        attr: attr.clone(),
                    }
                })
                .collect(),
        )
    }
}

/// Who sent a request: the calling process's ids.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) pid: u32,
}

impl Caller {
    /// Who makes an inode: the calling process, whose umask the nameserver applies
    /// unless a default ACL replaces it (the kernel passes it unapplied:
    /// `FUSE_DONT_MASK`).
    fn maker(self, umask: u32) -> Maker {
        Maker {
            uid: self.uid,
            gid: self.gid,
            umask,
        }
    }
}

impl From<&Request<'_>> for Caller {
    fn from(req: &Request<'_>) -> Self {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }
}

/// The lock a `struct flock` of the kernel's describes (none for an unknown type).
fn lock_of(owner: u64, start: u64, end: u64, typ: i32, pid: u32) -> Option<Lock> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return None,
    };
    Some(Lock {
        owner,
        start,
        end,
        kind,
        pid,
    })
}

impl Ops {
    pub(crate) fn lookup(&self, parent: u64, name: &OsStr, reply: ReplyEntry) {
        // What the entry cache knows is answered with its remaining TTL, after overlaying
        // this mount's unwritten changes.
        match self.files.client().cached_lookup(parent, name.as_bytes()) {
            Some(Cached::Absent) => return reply.error(libc::ENOENT),
            Some(Cached::Found(attr, left)) => {
                return self.entry_for("lookup", left, async { Ok(attr) }, reply);
            }
            _ => {}
        }
        let ttl = self.entry_ttl(parent);
        let (files, name) = (self.files.clone(), name.as_bytes().to_vec());
        self.entry_for(
            "lookup",
            ttl,
            async move { files.client().lookup(parent, &name).await },
            reply,
        );
    }

    /// How long the kernel may keep the entries of directory `dir`: none where this mount
    /// took a lock lately, so that each walk asks again, as the entry cache then does
    /// (see `EntryCache::locked_in`).
    fn entry_ttl(&self, dir: u64) -> Duration {
        match self.files.client().looks_up_afresh(dir) {
            true => Duration::ZERO,
            false => self.ttl,
        }
    }

    pub(crate) fn getattr(&self, ino: u64, reply: ReplyAttr) {
        // The kernel asks for a directory's attributes after every change in it (to check
        // permissions on the next lookup); the entry cache keeps them current. A file's
        // cached attributes get this mount's unwritten changes overlaid.
        if let Some((attr, left)) = self.files.client().cached_attr(ino) {
            return self.attr_for("getattr", left, async { Ok(attr) }, reply);
        }
        let files = self.files.clone();
        self.attr("getattr", async move { files.getattr(ino).await }, reply);
    }

    /// `kill`: the caller lacks `CAP_FSETID`, and a change of owner or size takes its
    /// set-user-ID bits away (see [`Files::kill_privs`]).
    pub(crate) fn setattr(&self, ino: u64, mut set: SetAttr, kill: bool, reply: ReplyAttr) {
        let (files, xattrs) = (self.files.clone(), self.xattrs);
        self.attr(
            "setattr",
            async move {
                // A chown or a change of size takes the file's capabilities, whoever asks.
                if kill || set.uid.is_some() || set.gid.is_some() || set.size.is_some() {
                    files.kill_privs(ino, &mut set, kill, xattrs).await?;
                }
                files.setattr(ino, set).await
            },
            reply,
        );
    }

    pub(crate) fn readlink(&self, ino: u64, reply: ReplyData) {
        let files = self.files.clone();
        self.spawn(
            "readlink",
            async move { files.client().readlink(ino).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mknod(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (files, name, by) = (
            self.files.clone(),
            name.as_bytes().to_vec(),
            who.maker(umask),
        );
        let perm = mode & 0o7777;
        let kind = FileKind::special(mode, rdev);
        if kind.is_none() && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(libc::EINVAL);
        }
        self.entry(
            "mknod",
            async move {
                let client = files.client();
                match kind {
                    Some(kind) => client.mknod(parent, &name, kind, perm, by).await,
                    None => client.create(parent, &name, perm, by, true).await,
                }
            },
            reply,
        );
    }

    pub(crate) fn mkdir(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (files, name, by) = (
            self.files.clone(),
            name.as_bytes().to_vec(),
            who.maker(umask),
        );
        self.entry(
            "mkdir",
            async move { files.client().mkdir(parent, &name, mode & 0o7777, by).await },
            reply,
        );
    }

    pub(crate) fn unlink(&self, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (files, name) = (self.files.clone(), name.as_bytes().to_vec());
        self.empty(
            "unlink",
            async move { files.unlink(parent, &name).await },
            reply,
        );
    }

    pub(crate) fn rmdir(&self, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (files, name) = (self.files.clone(), name.as_bytes().to_vec());
        self.empty(
            "rmdir",
            async move { files.client().rmdir(parent, &name).await },
            reply,
        );
    }

    pub(crate) fn symlink(
        &self,
        who: Caller,
        parent: u64,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (files, name, target, uid, gid) = (
            self.files.clone(),
            link_name.as_bytes().to_vec(),
            target.as_os_str().as_bytes().to_vec(),
            who.uid,
            who.gid,
        );
        self.entry(
            "symlink",
            async move {
                files
                    .client()
                    .symlink(parent, &name, &target, uid, gid)
                    .await
            },
            reply,
        );
    }

    pub(crate) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            reply.error(errno::BAD_FLAGS);
            return;
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let (files, name, newname) = (
            self.files.clone(),
            name.as_bytes().to_vec(),
            newname.as_bytes().to_vec(),
        );
        self.empty(
            "rename",
            async move {
                if !noreplace {
                    files.before_unlink(newparent, &newname).await?;
                }
                files
                    .client()
                    .rename(parent, &name, newparent, &newname, noreplace)
                    .await
            },
            reply,
        );
    }

    pub(crate) fn link(&self, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let (files, name) = (self.files.clone(), newname.as_bytes().to_vec());
        self.entry(
            "link",
            async move { files.client().link(ino, newparent, &name).await },
            reply,
        );
    }

    pub(crate) fn open(&self, ino: u64, flags: i32, reply: ReplyOpen) {
        let fh = self.new_fh();
        let (files, handles) = (self.files.clone(), self.handles.clone());
        let append = flags & libc::O_APPEND != 0;
        // A read-only descriptor has nothing to flush at its close: the kernel need not
        // send the request (a round trip through this process per close). Unless this
        // mount holds locks on the file: a close drops its process's locks.
        let read_only = flags & libc::O_ACCMODE == libc::O_RDONLY;
        let no_flush = match read_only && !self.files.has_locks(ino) {
            true => FOPEN_NOFLUSH,
            false => 0,
        };
        self.spawn(
            "open",
            async move { files.open(ino).await },
            move |r| match r {
                Ok(keep_cache) => {
                    handles.lock().expect("handles lock").insert(
                        fh,
                        FileHandle {
                            append,
                            last_end: 0,
                        },
                    );
                    let keep_cache = match keep_cache {
                        true => fuser::consts::FOPEN_KEEP_CACHE,
                        false => 0,
                    };
                    reply.opened(fh, keep_cache | no_flush);
                }
                Err(e) => reply.error(e),
            },
        );
    }

    pub(crate) fn read(&self, ino: u64, fh: u64, offset: i64, size: u32, reply: ReplyData) {
        let offset = offset.max(0) as u64;
        let sequential = {
            let mut handles = self.handles.lock().expect("handles lock");
            match handles.get_mut(&fh) {
                Some(handle) => {
                    let sequential = handle.last_end == offset;
                    handle.last_end = offset + size as u64;
                    sequential
                }
                None => false,
            }
        };
        let (files, counted) = (self.files.clone(), self.files.bytes_read.clone());
        self.spawn(
            "read",
            async move { files.read(ino, offset, size as usize, sequential).await },
            move |r| match r {
                Ok(data) => {
                    counted.inc_by(data.len() as u64);
                    reply.data(&data)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    /// `kill`: the caller lacks `CAP_FSETID`, and the write takes set-user-ID bits away
    /// (see [`Files::kill_privs`]).
    pub(crate) fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: i64,
        data: Vec<u8>,
        kill: bool,
        reply: ReplyWrite,
    ) {
        let append = self
            .handles
            .lock()
            .expect("handles lock")
            .get(&fh)
            .is_some_and(|h| h.append);
        let (files, xattrs) = (self.files.clone(), self.xattrs);
        let (len, counted) = (data.len() as u32, self.files.bytes_written.clone());
        self.spawn(
            "write",
            async move {
                take_privs(&files, ino, kill, xattrs).await?;
                let offset = match append {
                    true => files.size(ino).await.unwrap_or(offset.max(0) as u64),
                    false => offset.max(0) as u64,
                };
                files.write(ino, offset, &data).await
            },
            move |r| match r {
                Ok(()) => {
                    counted.inc_by(u64::from(len));
                    reply.written(len)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    /// `uid`: the caller's; the kernel sends no kill flag with an allocation (see
    /// [`lacks_fsetid`]).
    pub(crate) fn fallocate(
        &self,
        ino: u64,
        offset: i64,
        length: i64,
        mode: i32,
        uid: u32,
        reply: ReplyEmpty,
    ) {
        // Punching holes, zeroing and collapsing ranges are not supported.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(errno::UNSUPPORTED);
        }
        if offset < 0 || length <= 0 {
            return reply.error(errno::BAD_RANGE);
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let kill = lacks_fsetid(uid);
        let (files, xattrs) = (self.files.clone(), self.xattrs);
        self.empty(
            "fallocate",
            async move {
                take_privs(&files, ino, kill, xattrs).await?;
                files
                    .fallocate(ino, offset as u64, length as u64, keep_size)
                    .await
            },
            reply,
        );
    }

    /// `uid`: as for [`Ops::fallocate`], for the file written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_file_range(
        &self,
        ino_in: u64,
        offset_in: i64,
        ino_out: u64,
        offset_out: i64,
        len: u64,
        uid: u32,
        reply: ReplyWrite,
    ) {
        if offset_in < 0 || offset_out < 0 {
            return reply.error(errno::BAD_RANGE);
        }
        // The answer counts bytes in 32 bits; a caller asks again for the rest.
        let len = len.min(1 << 30);
        let kill = lacks_fsetid(uid);
        let (files, xattrs) = (self.files.clone(), self.xattrs);
        self.spawn(
            "copy_file_range",
            async move {
                take_privs(&files, ino_out, kill, xattrs).await?;
                files
                    .copy_range(ino_in, offset_in as u64, ino_out, offset_out as u64, len)
                    .await
            },
            move |r| match r {
                Ok(copied) => reply.written(copied as u32),
                Err(e) => reply.error(e),
            },
        );
    }

    pub(crate) fn flush(&self, ino: u64, lock_owner: u64, reply: ReplyEmpty) {
        let files = self.files.clone();
        // FUSE's flush is what close(2) waits for (release comes after it returns). A
        // close drops the POSIX locks its process holds on the file.
        self.empty(
            "flush",
            async move {
                let closed = files.close(ino).await;
                files.unlock_all(ino, lock_owner).await?;
                closed
            },
            reply,
        );
    }

    pub(crate) fn fsync(&self, ino: u64, reply: ReplyEmpty) {
        let files = self.files.clone();
        self.empty("fsync", async move { files.fsync(ino).await }, reply);
    }

    pub(crate) fn release(&self, ino: u64, fh: u64, flock_owner: Option<u64>, reply: ReplyEmpty) {
        self.handles.lock().expect("handles lock").remove(&fh);
        let files = self.files.clone();
        self.empty(
            "release",
            async move {
                let result = files.flush(ino).await;
                // The open file's `flock` goes with it.
                if let Some(owner) = flock_owner {
                    files.unlock_all(ino, owner).await?;
                }
                files.release(ino).await;
                result
            },
            reply,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn getlk(
        &self,
        ino: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Some(lock) = lock_of(lock_owner, start, end, typ, pid) else {
            return reply.error(errno::BAD_FLAGS);
        };
        let files = self.files.clone();
        self.spawn(
            "getlk",
            async move { files.test_lock(ino, lock).await },
            move |r| match r {
                Ok(Some(held)) => {
                    let typ = match held.kind {
                        LockKind::Write => libc::F_WRLCK,
                        _ => libc::F_RDLCK,
                    };
                    reply.locked(held.start, held.end, typ, held.pid)
                }
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Err(e) => reply.error(e),
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn setlk(
        &self,
        who: Caller,
        ino: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Some(lock) = lock_of(lock_owner, start, end, typ, pid) else {
            return reply.error(errno::BAD_FLAGS);
        };
        let (files, notifier) = (self.files.clone(), self.notifier.clone());
        let interrupted = signals::pending(who.pid);
        self.empty(
            "setlk",
            async move {
                if files.lock(ino, lock, sleep, interrupted).await? {
                    if let Some(notifier) = notifier.get() {
                        // Whole file (length 0): pages another mount's writes made stale.
                        if let Err(e) = notifier.inval_inode(ino, 0, 0) {
                            debug!(ino, error = %e, "page cache not invalidated");
                        }
                    }
                }
                Ok(())
            },
            reply,
        );
    }

    pub(crate) fn opendir(&self, ino: u64, reply: ReplyOpen) {
        let fh = self.new_fh();
        let (files, dirs) = (self.files.clone(), self.dirs.clone());
        self.spawn(
            "opendir",
            async move {
                // The directory's own attributes (for `.` and `..`) come from the entry
                // cache or alongside the listing: a walk of a tree (`ls -lR`, `find`)
                // waited for two round trips in a row per directory.
                let client = files.client();
                let (dir, listing) = match (client.cached_attr(ino), client.cached_listing(ino)) {
                    (Some((dir, _)), Some(listing)) => (dir, listing),
                    (Some((dir, _)), None) => (dir, client.readdir_all(ino).await?),
                    (None, _) => tokio::try_join!(client.getattr(ino), client.readdir_all(ino))?,
                };
                let mut entries = vec![(b".".to_vec(), dir.clone()), (b"..".to_vec(), dir)];
                entries.extend(listing);
                for (_, attr) in entries.iter_mut().skip(2) {
                    files.overlay(attr).await;
                }
                Ok(entries)
            },
            move |r| match r {
                Ok(entries) => {
                    dirs.lock().expect("dirs lock").insert(fh, entries);
                    reply.opened(fh, 0);
                }
                Err(e) => reply.error(e),
            },
        );
    }

    pub(crate) fn readdir(&self, ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(entries) = self.open_dir_entries(ino, fh, offset) else {
            reply.error(libc::EBADF);
            return;
        };
        for e in entries {
            if reply.add(e.ino, e.next, e.kind, OsStr::from_bytes(&e.name)) {
                break;
            }
        }
        reply.ok();
    }

    pub(crate) fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(entries) = self.open_dir_entries(ino, fh, offset) else {
            reply.error(libc::EBADF);
            return;
        };
        let ttl = self.entry_ttl(ino);
        for e in entries {
            if reply.add(
                e.ino,
                e.next,
                OsStr::from_bytes(&e.name),
                &ttl,
                &file_attr(&e.attr),
                0,
            ) {
                break;
            }
        }
        reply.ok();
    }

    pub(crate) fn releasedir(&self, fh: u64, reply: ReplyEmpty) {
        self.dirs.lock().expect("dirs lock").remove(&fh);
        reply.ok();
    }

    pub(crate) fn fsyncdir(&self, reply: ReplyEmpty) {
        // Entries change only in the nameserver's log, so syncing it covers them.
        let files = self.files.clone();
        self.empty(
            "fsyncdir",
            async move { files.client().sync().await },
            reply,
        );
    }

    pub(crate) fn statfs(&self, reply: ReplyStatfs) {
        let files = self.files.clone();
        self.spawn(
            "statfs",
            async move { files.client().statfs().await },
            move |r| match r {
                Ok(s) => {
                    const FRAGMENT: u64 = 4096;
                    let blocks = s.capacity / FRAGMENT;
                    let free = s.free / FRAGMENT;
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        s.inodes,
                        u64::MAX / 2,
                        FRAGMENT as u32,
                        vg_wire::MAX_NAME_LEN as u32,
                        FRAGMENT as u32,
                    );
                }
                Err(e) => reply.error(e),
            },
        );
    }

    pub(crate) fn access(&self, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        &self,
        who: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let fh = self.new_fh();
        let (files, handles, ttl) = (self.files.clone(), self.handles.clone(), self.ttl);
        let (name, by) = (name.as_bytes().to_vec(), who.maker(umask));
        let exclusive = flags & libc::O_EXCL != 0;
        let append = flags & libc::O_APPEND != 0;
        self.spawn(
            "create",
            async move {
                let attr = files
                    .client()
                    .create(parent, &name, mode & 0o7777, by, exclusive)
                    .await?;
                if attr.kind != FileKind::File {
                    return Err(Error::Remote(vg_wire::RemoteError::new(
                        vg_wire::ErrorCode::IsDir,
                        "exists and is not a file",
                    )));
                }
                files.open_created(&attr).await?;
                Ok(attr)
            },
            move |r| match r {
                Ok(attr) => {
                    handles.lock().expect("handles lock").insert(
                        fh,
                        FileHandle {
                            append,
                            last_end: 0,
                        },
                    );
                    reply.created(&ttl, &file_attr(&attr), 0, fh, 0);
                }
                Err(e) => reply.error(e),
            },
        );
    }

    pub(crate) fn getxattr(&self, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(errno::NO_XATTRS);
        }
        // The kernel asks for `security.capability` before every write: a cached set
        // answers here, without a task, a copy of the name or an error to format.
        if let Some(xattrs) = self.files.client().cached_xattrs(ino) {
            return xattr_value(reply, size, &xattrs, name.as_bytes());
        }
        let (files, name) = (self.files.clone(), name.as_bytes().to_vec());
        self.spawn(
            "getxattr",
            async move { files.client().xattrs(ino).await },
            move |r| match r {
                Ok(xattrs) => xattr_value(reply, size, &xattrs, &name),
                Err(e) => reply.error(e),
            },
        );
    }

    pub(crate) fn listxattr(&self, ino: u64, size: u32, reply: ReplyXattr) {
        if !self.xattrs {
            return reply.error(errno::NO_XATTRS);
        }
        let files = self.files.clone();
        self.spawn(
            "listxattr",
            async move { files.client().xattrs(ino).await },
            move |r| match r {
                Ok(xattrs) => {
                    let names: Vec<u8> = xattrs
                        .iter()
                        .flat_map(|(name, _)| name.iter().copied().chain([0]))
                        .collect();
                    xattr_reply(reply, size, &names)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    pub(crate) fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        if !self.xattrs {
            return reply.error(errno::NO_XATTRS);
        }
        let mode = match flags {
            0 => SetMode::Either,
            libc::XATTR_CREATE => SetMode::Create,
            libc::XATTR_REPLACE => SetMode::Replace,
            _ => return reply.error(errno::BAD_FLAGS),
        };
        let (files, name, value) = (self.files.clone(), name.as_bytes().to_vec(), value.to_vec());
        self.empty(
            "setxattr",
            async move { files.client().set_xattr(ino, &name, &value, mode).await },
            reply,
        );
    }

    pub(crate) fn removexattr(&self, ino: u64, name: &OsStr, reply: ReplyEmpty) {
        if !self.xattrs {
            return reply.error(errno::NO_XATTRS);
        }
        let (files, name) = (self.files.clone(), name.as_bytes().to_vec());
        self.empty(
            "removexattr",
            async move { files.client().remove_xattr(ino, &name).await },
            reply,
        );
    }
}

/// fuser's session: `init` and `destroy`, and every request that comes through
/// `/dev/fuse` (all of them without io_uring) handed to [`Ops`].
impl Filesystem for VgFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_write(IO_SIZE);
        let _ = config.set_max_readahead(IO_SIZE);
        let _ = config.set_max_background(64);
        // Ask for what helps and ignore what the kernel lacks.
        for cap in [
            // Clearing set-user-ID bits on write, truncate and chown done here
            // (`Files::kill_privs`): the kernel otherwise asks for `security.capability`
            // before every write, a round trip each (5% of fsync'd 4 KiB writes).
            HANDLE_KILLPRIV_V2,
            fuser::consts::FUSE_DO_READDIRPLUS,
            fuser::consts::FUSE_READDIRPLUS_AUTO,
            fuser::consts::FUSE_PARALLEL_DIROPS,
            fuser::consts::FUSE_ASYNC_READ,
            // Locks held by the nameserver, so that they exclude other mounts too.
            fuser::consts::FUSE_POSIX_LOCKS,
            fuser::consts::FUSE_FLOCK_LOCKS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        if self.ops.xattrs {
            // POSIX ACLs, kept as attributes: the kernel enforces them and passes the
            // umask on unapplied, for the nameserver to apply unless a default ACL
            // replaces it.
            let _ = config
                .add_capabilities(fuser::consts::FUSE_POSIX_ACL | fuser::consts::FUSE_DONT_MASK);
        }
        // Requests over io_uring, served on the caller's CPU: offered only once the
        // rings can be made, since the kernel holds every request until each CPU's
        // queue is registered.
        if let Some(device) = self
            .device
            .get()
            .filter(|_| self.uring && ring::supported())
        {
            match config.add_capabilities(ring::FUSE_OVER_IO_URING) {
                Ok(()) => {
                    ring::start(self.ops.clone(), device, IO_SIZE as usize);
                    self.ringed = true;
                }
                Err(_) => tracing::info!(
                    "the kernel does not offer FUSE over io_uring (enable_uring of the fuse module): serving /dev/fuse"
                ),
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let files = self.ops.files.clone();
        if let Err(e) = self.ops.rt.block_on(files.flush_all()) {
            tracing::error!(error = %e, "data written before unmount could not be committed");
        }
        self.ops.rt.block_on(files.end_session());
    }

    // Inodes live on the nameserver, not in the mount: nothing to release on a forget.
    fn forget(&mut self, _req: &Request<'_>, _ino: u64, _nlookup: u64) {
        self.after_forgets();
    }

    fn batch_forget(&mut self, _req: &Request<'_>, _nodes: &[fuser::fuse_forget_one]) {
        self.after_forgets();
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: fuser::ReplyEntry) {
        self.ops.lookup(parent, name, reply.into())
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: fuser::ReplyAttr) {
        self.ops.getattr(ino, reply.into())
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: fuser::ReplyAttr,
    ) {
        // fuser does not pass the kernel's FATTR_KILL_SUIDGID on: it is set for every
        // chown, and for a truncate by a caller without CAP_FSETID (see `lacks_fsetid`).
        let kill = uid.is_some() || gid.is_some() || (size.is_some() && lacks_fsetid(req.uid()));
        let set = set_attr(mode, uid, gid, size, atime, mtime);
        self.ops.setattr(ino, set, kill, reply.into())
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: fuser::ReplyData) {
        self.ops.readlink(ino, reply.into())
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: fuser::ReplyEntry,
    ) {
        self.ops
            .mknod(req.into(), parent, name, mode, umask, rdev, reply.into())
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: fuser::ReplyEntry,
    ) {
        self.ops
            .mkdir(req.into(), parent, name, mode, umask, reply.into())
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: fuser::ReplyEmpty) {
        self.ops.unlink(parent, name, reply.into())
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: fuser::ReplyEmpty) {
        self.ops.rmdir(parent, name, reply.into())
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: fuser::ReplyEntry,
    ) {
        self.ops
            .symlink(req.into(), parent, link_name, target, reply.into())
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops
            .rename(parent, name, newparent, newname, flags, reply.into())
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: fuser::ReplyEntry,
    ) {
        self.ops.link(ino, newparent, newname, reply.into())
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: fuser::ReplyOpen) {
        self.ops.open(ino, flags, reply.into())
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: fuser::ReplyData,
    ) {
        self.ops.read(ino, fh, offset, size, reply.into())
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        wflags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: fuser::ReplyWrite,
    ) {
        let kill = wflags & WRITE_KILL_SUIDGID != 0;
        self.ops
            .write(ino, fh, offset, data.to_vec(), kill, reply.into())
    }

    fn fallocate(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops
            .fallocate(ino, offset, length, mode, req.uid(), reply.into())
    }

    fn copy_file_range(
        &mut self,
        req: &Request<'_>,
        ino_in: u64,
        _fh_in: u64,
        offset_in: i64,
        ino_out: u64,
        _fh_out: u64,
        offset_out: i64,
        len: u64,
        _flags: u32,
        reply: fuser::ReplyWrite,
    ) {
        self.ops.copy_file_range(
            ino_in,
            offset_in,
            ino_out,
            offset_out,
            len,
            req.uid(),
            reply.into(),
        )
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.flush(ino, lock_owner, reply.into())
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.fsync(ino, reply.into())
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        flock_owner: Option<u64>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.release(ino, fh, flock_owner, reply.into())
    }

    fn getlk(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        self.ops
            .getlk(ino, lock_owner, start, end, typ, pid, reply.into())
    }

    fn setlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.setlk(
            req.into(),
            ino,
            lock_owner,
            start,
            end,
            typ,
            pid,
            sleep,
            reply.into(),
        )
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: fuser::ReplyOpen) {
        self.ops.opendir(ino, reply.into())
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        reply: fuser::ReplyDirectory,
    ) {
        self.ops.readdir(ino, fh, offset, reply.into())
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        reply: fuser::ReplyDirectoryPlus,
    ) {
        self.ops.readdirplus(ino, fh, offset, reply.into())
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.releasedir(fh, reply.into())
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.fsyncdir(reply.into())
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: fuser::ReplyStatfs) {
        self.ops.statfs(reply.into())
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: fuser::ReplyEmpty) {
        self.ops.access(reply.into())
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        self.ops
            .create(req.into(), parent, name, mode, umask, flags, reply.into())
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        self.ops.getxattr(ino, name, size, reply.into())
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: fuser::ReplyXattr) {
        self.ops.listxattr(ino, size, reply.into())
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.setxattr(ino, name, value, flags, reply.into())
    }

    fn removexattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        reply: fuser::ReplyEmpty,
    ) {
        self.ops.removexattr(ino, name, reply.into())
    }
}
