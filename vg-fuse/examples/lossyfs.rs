//! lossyfs: a passthrough file system that loses every write not yet synced when it is
//! killed, to test what a power loss leaves (as Jepsen does with LazyFS).
//!
//! `lossyfs BACKING MOUNTPOINT` mounts the directory BACKING at MOUNTPOINT. Data written
//! to a file through the mount stays in this process's memory, as in a disk's cache,
//! until `fsync` or `fdatasync` of that file writes it to BACKING and syncs it there;
//! reads see it meanwhile. SIGKILL the process and the unsynced data is gone: that is the
//! power cut (then `umount -l MOUNTPOINT` and mount again). Like LazyFS, only file data
//! is held back: creating, renaming, removing and truncating files, and `fallocate`, go
//! to BACKING at once, so a test of this kind checks the order of data against names, not
//! the journaling of directories.
//!
//! With `LOSSYFS_SLOW_FSYNC=TEXT:MS`, an fsync of a file whose path holds TEXT takes
//! effect MS milliseconds after it arrives (the bytes written before it reach BACKING
//! then; a cut before that loses them, and the fsync never returns): a slow disk under
//! some of the files, so that a test can tell whether a program waits for the right
//! syncs in the right order.
//!
//! Every open is direct I/O and attributes are never cached, so that the kernel keeps no
//! copy of what this process will drop. One thread serves everything (and one more the
//! slow fsyncs, in order): this is a test tool, not a fast one.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    consts::FOPEN_DIRECT_IO, FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow,
};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::ZERO;

/// A file's data written since its last sync: whole pages, and the size it has with them.
#[derive(Clone)]
struct Dirty {
    size: u64,
    pages: BTreeMap<u64, Vec<u8>>,
}

struct Lossy {
    backing: PathBuf,
    /// The backing root's inode number, which is shown as 1 (and 1 as it).
    root_ino: u64,
    /// Where each inode seen was last found: parent and name.
    names: HashMap<u64, (u64, OsString)>,
    dirty: HashMap<u64, Dirty>,
    files: HashMap<u64, (u64, File)>,
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
    /// Paths holding this text have their fsyncs applied late, by `slow`.
    slow_paths: Option<String>,
    slow: std::sync::mpsc::Sender<(std::time::Instant, SlowSync)>,
}

/// An fsync applied late: the file, what was written before it, the reply.
struct SlowSync {
    path: PathBuf,
    dirty: Option<Dirty>,
    reply: ReplyEmpty,
}

/// Applies slow fsyncs in the order they came, each `delay` after it arrived.
fn slow_syncs(jobs: std::sync::mpsc::Receiver<(std::time::Instant, SlowSync)>, delay: Duration) {
    for (arrived, job) in jobs {
        std::thread::sleep((arrived + delay).saturating_duration_since(std::time::Instant::now()));
        let result = OpenOptions::new()
            .write(true)
            .open(&job.path)
            .map_err(errno)
            .and_then(|file| apply(&file, job.dirty.as_ref()));
        answer(job.reply, result);
    }
}

/// Writes `dirty` to `file` and syncs it.
fn apply(file: &File, dirty: Option<&Dirty>) -> Result<(), i32> {
    if let Some(dirty) = dirty {
        for (&page, bytes) in &dirty.pages {
            let at = page * PAGE;
            if at >= dirty.size {
                break;
            }
            let len = (dirty.size - at).min(PAGE) as usize;
            file.write_all_at(&bytes[..len], at).map_err(errno)?;
        }
        if file.metadata().map_err(errno)?.len() < dirty.size {
            file.set_len(dirty.size).map_err(errno)?;
        }
    }
    file.sync_data().map_err(errno)
}

/// The backing inode's generation, which changes when its number is reused. Inode
/// numbers are the kernel's node ids here, so without it the kernel takes a new directory
/// that got the number of one just removed for that one, still cached (and, with an alias
/// elsewhere, fails the mkdir with ESTALE). 0 where there is none (symlinks).
fn generation(path: &Path) -> u64 {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return 0;
    };
    let mut generation: libc::c_long = 0;
    // SAFETY: an open descriptor and a long to write to, as FS_IOC_GETVERSION takes.
    match unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETVERSION, &mut generation) } {
        0 => generation as u32 as u64,
        _ => 0,
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn kind(meta: &fs::Metadata) -> FileType {
    let t = meta.file_type();
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    match secs >= 0 {
        true => UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32),
        false => UNIX_EPOCH,
    }
}

fn to_timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    }
}

impl Lossy {
    fn ino(&self, backing_ino: u64) -> u64 {
        match backing_ino {
            i if i == self.root_ino => 1,
            1 => self.root_ino,
            i => i,
        }
    }

    fn path(&self, ino: u64) -> Result<PathBuf, i32> {
        if ino == 1 {
            return Ok(self.backing.clone());
        }
        let (parent, name) = self.names.get(&ino).ok_or(libc::ESTALE)?;
        Ok(self.path(*parent)?.join(name))
    }

    fn attr(&self, ino: u64, meta: &fs::Metadata) -> FileAttr {
        let size = self.dirty.get(&ino).map_or(meta.len(), |d| d.size);
        FileAttr {
            ino,
            size,
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(meta),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    /// Stats `name` in `parent` and remembers where its inode is; also returns the
    /// inode's generation.
    fn entry(&mut self, parent: u64, name: &OsStr) -> Result<(FileAttr, u64), i32> {
        let path = self.path(parent)?.join(name);
        let meta = fs::symlink_metadata(&path).map_err(errno)?;
        let ino = self.ino(meta.ino());
        self.names.insert(ino, (parent, name.to_owned()));
        Ok((self.attr(ino, &meta), generation(&path)))
    }

    fn getattr_of(&self, ino: u64) -> Result<FileAttr, i32> {
        let meta = fs::symlink_metadata(self.path(ino)?).map_err(errno)?;
        Ok(self.attr(ino, &meta))
    }

    /// Forgets unsynced data of a file whose last name went, before its inode number is
    /// reused by another file.
    fn forget_if_gone(&mut self, ino: Option<u64>) {
        if let Some(ino) = ino {
            if self
                .path(ino)
                .map_or(true, |p| fs::symlink_metadata(p).is_err())
            {
                self.dirty.remove(&ino);
                self.names.remove(&ino);
            }
        }
    }

    fn ino_at(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let path = self.path(parent).ok()?.join(name);
        fs::symlink_metadata(path).ok().map(|m| self.ino(m.ino()))
    }

    fn add_file(&mut self, ino: u64, file: File) -> u64 {
        self.next_fh += 1;
        self.files.insert(self.next_fh, (ino, file));
        self.next_fh
    }

    fn open_backing(&self, ino: u64) -> Result<File, i32> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(ino)?)
            .map_err(errno)
    }

    /// Applies a file's unsynced data to the backing file and syncs it there.
    fn sync_file(&mut self, ino: u64) -> Result<(), i32> {
        let file = self.open_backing(ino)?;
        apply(&file, self.dirty.remove(&ino).as_ref())
    }

    fn dirty_of(&mut self, ino: u64, file: &File) -> Result<&mut Dirty, i32> {
        match self.dirty.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => Ok(e.insert(Dirty {
                size: file.metadata().map_err(errno)?.len(),
                pages: BTreeMap::new(),
            })),
        }
    }
}

/// Answers an operation with no result.
fn answer(reply: ReplyEmpty, result: Result<(), i32>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Reads up to `buf.len()` bytes at `at`, zeros past the end of the file.
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf[done..].fill(0);
    Ok(())
}

impl Filesystem for Lossy {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.entry(parent, name) {
            Ok((attr, generation)) => reply.entry(&TTL, &attr, generation),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.getattr_of(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
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
        reply: ReplyAttr,
    ) {
        let result = (|| -> Result<FileAttr, i32> {
            let path = self.path(ino)?;
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)?;
            }
            if let Some(size) = size {
                // A truncate is metadata: it goes to the backing file at once.
                self.open_backing(ino)?.set_len(size).map_err(errno)?;
                if let Some(dirty) = self.dirty.get_mut(&ino) {
                    dirty.pages.retain(|&p, _| p * PAGE < size);
                    if let Some(last) = dirty.pages.get_mut(&(size / PAGE)) {
                        last[(size % PAGE) as usize..].fill(0);
                    }
                    dirty.size = size;
                }
            }
            if atime.is_some() || mtime.is_some() {
                let times = [to_timespec(atime), to_timespec(mtime)];
                let c = std::ffi::CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| libc::EINVAL)?;
                // SAFETY: a valid C string and two timespecs.
                if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } != 0 {
                    return Err(errno(std::io::Error::last_os_error()));
                }
            }
            self.getattr_of(ino)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.path(parent).and_then(|p| {
            let path = p.join(name);
            fs::create_dir(&path).map_err(errno)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777))
                .map_err(errno)?;
            self.entry(parent, name)
        });
        match result {
            Ok((attr, generation)) => reply.entry(&TTL, &attr, generation),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let ino = self.ino_at(parent, name);
        let result = self
            .path(parent)
            .and_then(|p| fs::remove_file(p.join(name)).map_err(errno));
        self.forget_if_gone(ino);
        answer(reply, result);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let result = self.path(parent);
        answer(
            reply,
            result.and_then(|p| fs::remove_dir(p.join(name)).map_err(errno)),
        );
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (moved, replaced) = (self.ino_at(parent, name), self.ino_at(newparent, newname));
        let result = (|| -> Result<(), i32> {
            let from = std::ffi::CString::new(self.path(parent)?.join(name).as_os_str().as_bytes())
                .map_err(|_| libc::EINVAL)?;
            let to =
                std::ffi::CString::new(self.path(newparent)?.join(newname).as_os_str().as_bytes())
                    .map_err(|_| libc::EINVAL)?;
            // SAFETY: two valid C strings.
            let r = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    flags,
                )
            };
            match r {
                0 => Ok(()),
                _ => Err(errno(std::io::Error::last_os_error())),
            }
        })();
        if result.is_ok() {
            if let Some(moved) = moved {
                self.names.insert(moved, (newparent, newname.to_owned()));
            }
            if replaced != moved {
                self.forget_if_gone(replaced);
            }
        }
        answer(reply, result);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let result = self.open_backing(ino).and_then(|file| {
            if flags & libc::O_TRUNC != 0 {
                file.set_len(0).map_err(errno)?;
                self.dirty.remove(&ino);
            }
            Ok(self.add_file(ino, file))
        });
        match result {
            Ok(fh) => reply.opened(fh, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| -> Result<(FileAttr, u64, u64), i32> {
            let path = self.path(parent)?.join(name);
            let replaced = self.ino_at(parent, name);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(flags & libc::O_TRUNC != 0)
                .create_new(flags & libc::O_EXCL != 0)
                .mode(mode & !umask & 0o7777)
                .open(&path)
                .map_err(errno)?;
            let (attr, generation) = self.entry(parent, name)?;
            if replaced != Some(attr.ino) || flags & libc::O_TRUNC != 0 {
                self.dirty.remove(&attr.ino);
            }
            Ok((attr, generation, self.add_file(attr.ino, file)))
        })();
        match result {
            Ok((attr, generation, fh)) => {
                reply.created(&TTL, &attr, generation, fh, FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some((_, file)) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let result = (|| -> Result<Vec<u8>, i32> {
            let offset = offset as u64;
            let len = match self.dirty.get(&ino) {
                Some(d) => d.size,
                None => file.metadata().map_err(errno)?.len(),
            };
            let end = (offset + size as u64).min(len);
            if end <= offset {
                return Ok(Vec::new());
            }
            let mut buf = vec![0u8; (end - offset) as usize];
            read_at(file, &mut buf, offset).map_err(errno)?;
            if let Some(dirty) = self.dirty.get(&ino) {
                for (&page, bytes) in dirty.pages.range(offset / PAGE..end.div_ceil(PAGE)) {
                    let (from, to) = ((page * PAGE).max(offset), ((page + 1) * PAGE).min(end));
                    buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(
                        &bytes[(from - page * PAGE) as usize..(to - page * PAGE) as usize],
                    );
                }
            }
            Ok(buf)
        })();
        match result {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some((_, file)) = self.files.remove(&fh) else {
            return reply.error(libc::EBADF);
        };
        let result = (|| -> Result<(), i32> {
            let offset = offset as u64;
            let end = offset + data.len() as u64;
            let dirty = self.dirty_of(ino, &file)?;
            for page in offset / PAGE..end.div_ceil(PAGE) {
                let bytes = match dirty.pages.entry(page) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let mut bytes = vec![0u8; PAGE as usize];
                        if page * PAGE < dirty.size {
                            read_at(&file, &mut bytes, page * PAGE).map_err(errno)?;
                            let valid = (dirty.size - page * PAGE).min(PAGE) as usize;
                            bytes[valid..].fill(0);
                        }
                        e.insert(bytes)
                    }
                };
                let (from, to) = ((page * PAGE).max(offset), ((page + 1) * PAGE).min(end));
                bytes[(from - page * PAGE) as usize..(to - page * PAGE) as usize]
                    .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            }
            dirty.size = dirty.size.max(end);
            Ok(())
        })();
        self.files.insert(fh, (ino, file));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        // Closing syncs nothing, as on a real disk.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(&fh);
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let path = match self.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let slow = self.slow_paths.as_deref();
        if slow.is_some_and(|text| path.to_string_lossy().contains(text)) {
            // The pages stay dirty here too: reads see them, and a cut drops them until
            // the late fsync has written them.
            let dirty = self.dirty.get(&ino).cloned();
            let job = SlowSync { path, dirty, reply };
            let _ = self.slow.send((std::time::Instant::now(), job));
            return;
        }
        answer(reply, self.sync_file(ino));
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some((_, file)) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        // SAFETY: an open descriptor.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) };
        if r != 0 {
            return reply.error(errno(std::io::Error::last_os_error()));
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if let Some(dirty) = self.dirty.get_mut(&ino) {
            dirty.size = dirty.size.max(len);
        }
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let result = (|| -> Result<u64, i32> {
            let path = self.path(ino)?;
            let parent = self.names.get(&ino).map_or(1, |(p, _)| *p);
            let mut entries = vec![
                (ino, FileType::Directory, OsString::from(".")),
                (parent, FileType::Directory, OsString::from("..")),
            ];
            for entry in fs::read_dir(&path).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                let meta = entry.metadata().map_err(errno)?;
                entries.push((self.ino(meta.ino()), kind(&meta), entry.file_name()));
            }
            self.next_fh += 1;
            self.dirs.insert(self.next_fh, entries);
            Ok(self.next_fh)
        })();
        match result {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(&fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.path(ino);
        answer(
            reply,
            result.and_then(|p| File::open(p).and_then(|d| d.sync_all()).map_err(errno)),
        );
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let Ok(c) = std::ffi::CString::new(self.backing.as_os_str().as_bytes()) else {
            return reply.error(libc::EINVAL);
        };
        // SAFETY: a valid C string and a zeroed out-struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return reply.error(errno(std::io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let [backing, mountpoint] = &args[..] else {
        eprintln!("usage: lossyfs BACKING MOUNTPOINT");
        std::process::exit(2);
    };
    let backing = Path::new(backing);
    let root_ino = match fs::metadata(backing) {
        Ok(meta) if meta.is_dir() => meta.ino(),
        Ok(_) => {
            eprintln!("lossyfs: {}: not a directory", backing.display());
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("lossyfs: {}: {e}", backing.display());
            std::process::exit(1);
        }
    };
    let (slow_paths, delay) = match std::env::var("LOSSYFS_SLOW_FSYNC") {
        Ok(spec) if !spec.is_empty() => {
            match spec.rsplit_once(':').map(|(t, ms)| (t, ms.parse::<u64>())) {
                Some((text, Ok(ms))) => (Some(text.to_string()), Duration::from_millis(ms)),
                _ => {
                    eprintln!("lossyfs: LOSSYFS_SLOW_FSYNC={spec:?}: expected TEXT:MILLISECONDS");
                    std::process::exit(2);
                }
            }
        }
        _ => (None, Duration::ZERO),
    };
    let (slow, jobs) = std::sync::mpsc::channel();
    std::thread::spawn(move || slow_syncs(jobs, delay));
    let fs = Lossy {
        backing: backing.to_path_buf(),
        root_ino,
        names: HashMap::new(),
        dirty: HashMap::new(),
        files: HashMap::new(),
        dirs: HashMap::new(),
        next_fh: 0,
        slow_paths,
        slow,
    };
    let options = [
        MountOption::FSName("lossyfs".into()),
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
    ];
    if let Err(e) = fuser::mount2(fs, mountpoint, &options) {
        eprintln!("lossyfs: mount {}: {e}", Path::new(mountpoint).display());
        std::process::exit(1);
    }
}
