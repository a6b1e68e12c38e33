//! Replies to FUSE requests, whichever way a request came: fuser's reply objects answer
//! those read from `/dev/fuse`, and [`Encoder`] writes the same reply structures
//! (`fuse_entry_out` and the rest, as `include/uapi/linux/fuse.h` lays them out) for
//! those taken from an io_uring queue. fuser cannot send its replies anywhere but its
//! own channel.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

use super::ring;

/// Where the reply to a request from an io_uring queue goes.
pub struct Encoder {
    sender: ring::Sender,
}

impl Encoder {
    pub(super) fn new(sender: ring::Sender) -> Encoder {
        Encoder { sender }
    }

    fn send(self, parts: &[&[u8]]) {
        self.sender.send(0, parts);
    }

    fn error(self, errno: i32) {
        self.sender.send(-errno, &[]);
    }
}

/// `fuse_attr`.
fn put_attr(out: &mut Vec<u8>, attr: &FileAttr) {
    let (at, atn) = time(attr.atime);
    let (mt, mtn) = time(attr.mtime);
    let (ct, ctn) = time(attr.ctime);
    for v in [
        attr.ino,
        attr.size,
        attr.blocks,
        at as u64,
        mt as u64,
        ct as u64,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [
        atn,
        mtn,
        ctn,
        mode(attr.kind) | u32::from(attr.perm),
        attr.nlink,
        attr.uid,
        attr.gid,
        attr.rdev,
        attr.blksize,
        attr.flags,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
}

/// `fuse_entry_out`.
fn put_entry(out: &mut Vec<u8>, ttl: &Duration, attr: &FileAttr, generation: u64) {
    for v in [attr.ino, generation, ttl.as_secs(), ttl.as_secs()] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [ttl.subsec_nanos(), ttl.subsec_nanos()] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    put_attr(out, attr);
}

/// `fuse_open_out`.
fn put_open(out: &mut Vec<u8>, fh: u64, flags: u32) {
    out.extend_from_slice(&fh.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

/// Seconds and nanoseconds from the epoch (negative seconds before it).
fn time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(before) => (
            -(before.duration().as_secs() as i64),
            before.duration().subsec_nanos(),
        ),
    }
}

/// The `S_IF*` bits of a file type.
fn mode(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => libc::S_IFIFO,
        FileType::CharDevice => libc::S_IFCHR,
        FileType::BlockDevice => libc::S_IFBLK,
        FileType::Directory => libc::S_IFDIR,
        FileType::RegularFile => libc::S_IFREG,
        FileType::Symlink => libc::S_IFLNK,
        FileType::Socket => libc::S_IFSOCK,
    }
}

/// Declares a reply type over fuser's and the ring's, with `error`.
macro_rules! reply {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub enum $name {
            Fuser(fuser::$name),
            Ring(Encoder),
        }

        impl From<fuser::$name> for $name {
            fn from(reply: fuser::$name) -> Self {
                $name::Fuser(reply)
            }
        }

        impl $name {
            /// Answers with `errno`.
            pub fn error(self, errno: i32) {
                match self {
                    $name::Fuser(r) => r.error(errno),
                    $name::Ring(r) => r.error(errno),
                }
            }
        }
    };
}

reply!(
    /// An entry (lookup, mknod, mkdir, symlink, link).
    ReplyEntry
);
reply!(
    /// Attributes.
    ReplyAttr
);
reply!(
    /// Bytes (read, readlink).
    ReplyData
);
reply!(
    /// Success alone.
    ReplyEmpty
);
reply!(
    /// An open file or directory handle.
    ReplyOpen
);
reply!(
    /// A count of bytes written.
    ReplyWrite
);
reply!(
    /// File system figures.
    ReplyStatfs
);
reply!(
    /// A created and opened file.
    ReplyCreate
);
reply!(
    /// A conflicting lock, or none.
    ReplyLock
);
reply!(
    /// An extended attribute's value or the list of names, or their size.
    ReplyXattr
);

impl ReplyEntry {
    /// Answers with an entry the kernel may cache for `ttl`.
    pub fn entry(self, ttl: &Duration, attr: &FileAttr, generation: u64) {
        match self {
            ReplyEntry::Fuser(r) => r.entry(ttl, attr, generation),
            ReplyEntry::Ring(r) => {
                let mut out = Vec::with_capacity(128);
                put_entry(&mut out, ttl, attr, generation);
                r.send(&[&out])
            }
        }
    }
}

impl ReplyAttr {
    /// Answers with attributes the kernel may cache for `ttl`.
    pub fn attr(self, ttl: &Duration, attr: &FileAttr) {
        match self {
            ReplyAttr::Fuser(r) => r.attr(ttl, attr),
            ReplyAttr::Ring(r) => {
                let mut out = Vec::with_capacity(104);
                out.extend_from_slice(&ttl.as_secs().to_ne_bytes());
                out.extend_from_slice(&ttl.subsec_nanos().to_ne_bytes());
                out.extend_from_slice(&0u32.to_ne_bytes());
                put_attr(&mut out, attr);
                r.send(&[&out])
            }
        }
    }
}

impl ReplyData {
    /// Answers with `data`.
    pub fn data(self, data: &[u8]) {
        match self {
            ReplyData::Fuser(r) => r.data(data),
            ReplyData::Ring(r) => r.send(&[data]),
        }
    }
}

impl ReplyEmpty {
    /// Answers with success.
    pub fn ok(self) {
        match self {
            ReplyEmpty::Fuser(r) => r.ok(),
            ReplyEmpty::Ring(r) => r.send(&[]),
        }
    }
}

impl ReplyOpen {
    /// Answers with handle `fh` and `FOPEN_*` flags.
    pub fn opened(self, fh: u64, flags: u32) {
        match self {
            ReplyOpen::Fuser(r) => r.opened(fh, flags),
            ReplyOpen::Ring(r) => {
                let mut out = Vec::with_capacity(16);
                put_open(&mut out, fh, flags);
                r.send(&[&out])
            }
        }
    }
}

impl ReplyWrite {
    /// Answers with the bytes written.
    pub fn written(self, size: u32) {
        match self {
            ReplyWrite::Fuser(r) => r.written(size),
            ReplyWrite::Ring(r) => {
                let mut out = size.to_ne_bytes().to_vec();
                out.extend_from_slice(&0u32.to_ne_bytes());
                r.send(&[&out])
            }
        }
    }
}

impl ReplyStatfs {
    /// Answers with the file system's figures (`struct kstatfs`).
    #[allow(clippy::too_many_arguments)]
    pub fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) {
        match self {
            ReplyStatfs::Fuser(r) => {
                r.statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, frsize)
            }
            ReplyStatfs::Ring(r) => {
                let mut out = Vec::with_capacity(80);
                for v in [blocks, bfree, bavail, files, ffree] {
                    out.extend_from_slice(&v.to_ne_bytes());
                }
                for v in [bsize, namelen, frsize] {
                    out.extend_from_slice(&v.to_ne_bytes());
                }
                out.resize(80, 0);
                r.send(&[&out])
            }
        }
    }
}

impl ReplyCreate {
    /// Answers with the new file's entry and its open handle.
    pub fn created(self, ttl: &Duration, attr: &FileAttr, generation: u64, fh: u64, flags: u32) {
        match self {
            ReplyCreate::Fuser(r) => r.created(ttl, attr, generation, fh, flags),
            ReplyCreate::Ring(r) => {
                let mut out = Vec::with_capacity(144);
                put_entry(&mut out, ttl, attr, generation);
                put_open(&mut out, fh, flags);
                r.send(&[&out])
            }
        }
    }
}

impl ReplyLock {
    /// Answers with a lock (`F_UNLCK` for none).
    pub fn locked(self, start: u64, end: u64, typ: i32, pid: u32) {
        match self {
            ReplyLock::Fuser(r) => r.locked(start, end, typ, pid),
            ReplyLock::Ring(r) => {
                let mut out = Vec::with_capacity(24);
                out.extend_from_slice(&start.to_ne_bytes());
                out.extend_from_slice(&end.to_ne_bytes());
                out.extend_from_slice(&typ.to_ne_bytes());
                out.extend_from_slice(&pid.to_ne_bytes());
                r.send(&[&out])
            }
        }
    }
}

impl ReplyXattr {
    /// Answers with the size a buffer needs.
    pub fn size(self, size: u32) {
        match self {
            ReplyXattr::Fuser(r) => r.size(size),
            ReplyXattr::Ring(r) => {
                let mut out = size.to_ne_bytes().to_vec();
                out.extend_from_slice(&0u32.to_ne_bytes());
                r.send(&[&out])
            }
        }
    }

    /// Answers with the value or names.
    pub fn data(self, data: &[u8]) {
        match self {
            ReplyXattr::Fuser(r) => r.data(data),
            ReplyXattr::Ring(r) => r.send(&[data]),
        }
    }
}

/// Directory entries as `readdir` (`fuse_dirent`) or `readdirplus`
/// (`fuse_direntplus`) packs them, up to the size the kernel asked for.
pub struct Entries {
    out: Vec<u8>,
    max: usize,
}

impl Entries {
    fn new(max: usize) -> Entries {
        Entries {
            out: Vec::with_capacity(max.min(64 << 10)),
            max,
        }
    }

    /// Appends an entry (with its attributes for `readdirplus`); false if it does not
    /// fit.
    fn add(
        &mut self,
        plus: Option<(&Duration, &FileAttr, u64)>,
        ino: u64,
        offset: i64,
        kind: FileType,
        name: &OsStr,
    ) -> bool {
        let name = name.as_bytes();
        let dirent = (24 + name.len() + 7) & !7;
        let size = dirent + if plus.is_some() { 128 } else { 0 };
        if self.out.len() + size > self.max {
            return false;
        }
        if let Some((ttl, attr, generation)) = plus {
            put_entry(&mut self.out, ttl, attr, generation);
        }
        let start = self.out.len();
        self.out.extend_from_slice(&ino.to_ne_bytes());
        self.out.extend_from_slice(&offset.to_ne_bytes());
        self.out
            .extend_from_slice(&(name.len() as u32).to_ne_bytes());
        self.out
            .extend_from_slice(&(mode(kind) >> 12).to_ne_bytes());
        self.out.extend_from_slice(name);
        self.out.resize(start + dirent, 0);
        true
    }
}

/// `readdir`'s reply.
pub enum ReplyDirectory {
    Fuser(fuser::ReplyDirectory),
    Ring(Encoder, Entries),
}

impl From<fuser::ReplyDirectory> for ReplyDirectory {
    fn from(reply: fuser::ReplyDirectory) -> Self {
        ReplyDirectory::Fuser(reply)
    }
}

impl ReplyDirectory {
    /// A reply of at most `size` bytes of entries.
    pub(super) fn ring(encoder: Encoder, size: usize) -> Self {
        ReplyDirectory::Ring(encoder, Entries::new(size))
    }

    /// Adds an entry; true if the reply is full (this entry was not added).
    pub fn add(&mut self, ino: u64, offset: i64, kind: FileType, name: &OsStr) -> bool {
        match self {
            ReplyDirectory::Fuser(r) => r.add(ino, offset, kind, name),
            ReplyDirectory::Ring(_, entries) => !entries.add(None, ino, offset, kind, name),
        }
    }

    /// Sends the entries added.
    pub fn ok(self) {
        match self {
            ReplyDirectory::Fuser(r) => r.ok(),
            ReplyDirectory::Ring(r, entries) => r.send(&[&entries.out]),
        }
    }

    /// Answers with `errno`.
    pub fn error(self, errno: i32) {
        match self {
            ReplyDirectory::Fuser(r) => r.error(errno),
            ReplyDirectory::Ring(r, _) => r.error(errno),
        }
    }
}

/// `readdirplus`'s reply.
pub enum ReplyDirectoryPlus {
    Fuser(fuser::ReplyDirectoryPlus),
    Ring(Encoder, Entries),
}

impl From<fuser::ReplyDirectoryPlus> for ReplyDirectoryPlus {
    fn from(reply: fuser::ReplyDirectoryPlus) -> Self {
        ReplyDirectoryPlus::Fuser(reply)
    }
}

impl ReplyDirectoryPlus {
    /// A reply of at most `size` bytes of entries.
    pub(super) fn ring(encoder: Encoder, size: usize) -> Self {
        ReplyDirectoryPlus::Ring(encoder, Entries::new(size))
    }

    /// Adds an entry with its attributes; true if the reply is full (this entry was not
    /// added).
    pub fn add(
        &mut self,
        ino: u64,
        offset: i64,
        name: &OsStr,
        ttl: &Duration,
        attr: &FileAttr,
        generation: u64,
    ) -> bool {
        match self {
            ReplyDirectoryPlus::Fuser(r) => r.add(ino, offset, name, ttl, attr, generation),
            // As fuser does: the entry's inode is its attributes'.
            ReplyDirectoryPlus::Ring(_, entries) => {
                let plus = Some((ttl, attr, generation));
                !entries.add(plus, attr.ino, offset, attr.kind, name)
            }
        }
    }

    /// Sends the entries added.
    pub fn ok(self) {
        match self {
            ReplyDirectoryPlus::Fuser(r) => r.ok(),
            ReplyDirectoryPlus::Ring(r, entries) => r.send(&[&entries.out]),
        }
    }

    /// Answers with `errno`.
    pub fn error(self, errno: i32) {
        match self {
            ReplyDirectoryPlus::Fuser(r) => r.error(errno),
            ReplyDirectoryPlus::Ring(r, _) => r.error(errno),
        }
    }
}
