//! Disk steps both servers take the same way: syncing a directory after creating,
//! renaming or removing in it, allocating a file's space ahead of its writes, and
//! writing and reading through O_DIRECT (aligned buffers, the file system's alignment).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;

/// Syncs a directory: what was created, renamed or removed in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Allocates `file` up to `size` bytes (reading as zeros), so that later writes into the
/// space need no journal commit for new extents and size. Fails where the file system
/// cannot allocate ahead (tmpfs); appending still works there.
pub fn allocate(file: &File, size: u64) -> std::io::Result<()> {
    let len = libc::off_t::try_from(size).map_err(std::io::Error::other)?;
    // SAFETY: the descriptor is open for the duration of the call; no pointers are passed.
    match unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Makes bytes written into files' already written space durable: without their
/// inodes where the file system would write them for nothing, by their own
/// `fdatasync` elsewhere.
///
/// On ext4 without a journal, `fdatasync` also writes the 4 KiB block of the inode table
/// holding the file's inode whenever the inode changed, and a write changes its
/// modification time at every clock tick: the inode blocks of the storages' volumes and
/// of the nameserver's log took 0.52 bytes on disk per byte of fsync'd 4 KiB writes (a
/// quarter of what the records themselves took). Where a file's size and extents are
/// unchanged since its last `fdatasync` (its writes went into space written before),
/// its bytes are durable once they are written back and the disk's cache is flushed;
/// `fdatasync` of the file system's root directory is that flush, and writes no inode
/// of ours (the root's shares a table block only with the file system's reserved
/// inodes and the first few files made on it, seldom written; were one written often,
/// the flush would write that block as the file's own sync did, no more).
#[derive(Default)]
pub struct CacheFlush {
    /// The file system's root, where a flush of the disk's cache stands in for the
    /// files' own syncs; `None` elsewhere (the default).
    root: Option<File>,
}

/// Inode number of an ext4 file system's root directory.
const EXT4_ROOT_INO: u64 = 2;

impl CacheFlush {
    /// The syncs for files under `dir`: by a flush where its file system is ext4 without
    /// a journal and its root is reachable from `dir` (not a bind mount of a
    /// subdirectory); by each file's `fdatasync` elsewhere, where that costs no inode for
    /// a time change (a journal logs that) or where a clean inode's sync might not flush
    /// the disk.
    pub fn for_dir(dir: &Path) -> CacheFlush {
        CacheFlush {
            root: Self::root_of(dir),
        }
    }

    fn root_of(dir: &Path) -> Option<File> {
        let dir = dir.canonicalize().ok()?;
        let dev = std::fs::metadata(&dir).ok()?.dev();
        let mut top = dir.as_path();
        while let Some(parent) = top.parent() {
            if std::fs::metadata(parent).ok()?.dev() != dev {
                break;
            }
            top = parent;
        }
        let meta = std::fs::metadata(top).ok()?;
        if meta.ino() != EXT4_ROOT_INO || !journal_less_ext4(top, dev) {
            return None;
        }
        File::open(top).ok()
    }

    /// Whether a flush of the disk's cache stands in for the files' own syncs: their
    /// size and extents must then be on disk before data is written into them.
    pub fn flushes_alone(&self) -> bool {
        self.root.is_some()
    }

    /// Makes what was written into `files` durable, given that their size and extents
    /// have not changed since their last `fdatasync`: one flush for them all.
    pub fn sync<'a>(&self, files: impl IntoIterator<Item = &'a File>) -> std::io::Result<()> {
        let Some(root) = &self.root else {
            return files.into_iter().try_for_each(File::sync_data);
        };
        let mut any = false;
        for file in files {
            write_back(file)?;
            any = true;
        }
        match any {
            true => root.sync_data(),
            false => Ok(()),
        }
    }
}

/// Writes back `file`'s dirty pages and waits for them (not its inode).
fn write_back(file: &File) -> std::io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor is open for the duration of the call; no pointers are
    // passed. Offset 0 and length 0 cover the whole file.
    match unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether the file system at `root` (device `dev`) is ext4 without a journal: its
/// statistics directory says its journal thread is `<none>`.
fn journal_less_ext4(root: &Path, dev: u64) -> bool {
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    let Ok(name) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into `stat`, plain data that may start zeroed; `name`
    // is a valid NUL-terminated string.
    let ext4 = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(name.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == EXT4_SUPER_MAGIC
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let device = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|uevent| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
        });
    ext4 && device.is_some_and(|device| {
        std::fs::read_to_string(format!("/sys/fs/ext4/{device}/journal_task"))
            .is_ok_and(|task| task.trim() == "<none>")
    })
}

/// Alignment of O_DIRECT buffers, lengths and offsets (a page: enough for any disk).
pub const DIRECT_ALIGN: usize = 4096;

/// A zeroed byte buffer whose start is aligned for O_DIRECT, so that received blocks can
/// be written without another copy.
pub struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, aligned.
    pub fn new(len: usize) -> Self {
        let buf = vec![0u8; len + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { buf, start, len }
    }

    /// An empty aligned buffer with room for `capacity` bytes, filled by
    /// [`AlignedBuf::extend`]: an upload's bytes are copied in as they arrive, without
    /// zeroing 4 MiB first (5% of a storage's CPU while taking a sequential write).
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf: Vec<u8> = Vec::with_capacity(capacity + DIRECT_ALIGN);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        buf.resize(start, 0);
        AlignedBuf { buf, start, len: 0 }
    }

    /// `len` bytes of `file` at `offset` (whole sectors of a file opened with O_DIRECT
    /// are read into the buffer's whole length, rounded up).
    pub fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Self> {
        let whole = len.next_multiple_of(DIRECT_ALIGN);
        let mut buf = AlignedBuf::with_capacity(whole);
        while buf.len < len {
            let at = offset + buf.len as u64;
            match read_spare(file, &mut buf.buf, whole - buf.len, at)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => buf.len += n,
            }
        }
        Ok(buf)
    }

    /// Its first `len` bytes, without a copy.
    pub fn into_bytes(self, len: usize) -> Bytes {
        let start = self.start;
        Bytes::from(self.buf).slice(start..start + len.min(self.len))
    }

    /// Appends `bytes`, up to the capacity asked for: past it, the vector would move and
    /// the buffer lose its alignment.
    pub fn extend(&mut self, bytes: &[u8]) {
        assert!(
            self.buf.len() + bytes.len() <= self.buf.capacity(),
            "aligned buffer filled past its capacity"
        );
        self.buf.extend_from_slice(bytes);
        self.len += bytes.len();
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Opens `path` for writing with O_DIRECT, if its file system takes it and says its
/// alignment (statx's `STATX_DIOALIGN`) one [`AlignedBuf`] meets, or, where it does not
/// say (FUSE), takes `assumed`; returns the file and the alignment of offsets and
/// lengths. `None` on tmpfs, say.
pub fn open_direct(path: &Path, assumed: Option<u64>) -> Option<(File, u64)> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx only writes into `stat`, plain data that may start zeroed; `name` is a
    // valid NUL-terminated string.
    let stat = unsafe {
        let mut stat: libc::statx = std::mem::zeroed();
        let mask = libc::STATX_DIOALIGN;
        let found = libc::statx(libc::AT_FDCWD, name.as_ptr(), 0, mask, &mut stat);
        (found == 0).then_some(stat)?
    };
    let (align, memory) = (stat.stx_dio_offset_align, stat.stx_dio_mem_align);
    let align = match stat.stx_mask & libc::STATX_DIOALIGN != 0 {
        true => (align.is_power_of_two()
            && align as usize <= DIRECT_ALIGN
            && memory as usize <= DIRECT_ALIGN)
            .then_some(align as u64)?,
        false => assumed?,
    };
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    Some((file, align))
}

/// Reads up to `want` bytes of `file` at `offset` into the unused capacity of `buf` (at
/// least `want`), which grows by the count returned (0 at the end of the file).
pub fn read_spare(
    file: &File,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
) -> std::io::Result<usize> {
    let at = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    let spare = &mut buf.spare_capacity_mut()[..want];
    let (ptr, max) = (spare.as_mut_ptr(), spare.len());
    loop {
        // SAFETY: the descriptor is open for the duration of the call, and `pread` writes
        // at most `max` bytes into the vector's unused capacity at `ptr`.
        let n = unsafe { libc::pread(file.as_raw_fd(), ptr.cast(), max, at) };
        if n >= 0 {
            // SAFETY: `pread` initialised the `n` bytes after the vector's length.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_cache_flush_stands_in_only_on_journal_less_ext4() {
        // tmpfs: its files' own sync is free, and a flush of the root would not do.
        assert!(!CacheFlush::for_dir(Path::new("/dev/shm")).flushes_alone());
        let dir = tempfile::tempdir().unwrap();
        let journal_less = journal_less_ext4(Path::new("/"), std::fs::metadata("/").unwrap().dev());
        let flush = CacheFlush::for_dir(dir.path());
        if std::fs::metadata("/").unwrap().dev() == std::fs::metadata(dir.path()).unwrap().dev() {
            assert_eq!(flush.flushes_alone(), journal_less);
        }
        let mut file = File::create(dir.path().join("f")).unwrap();
        file.write_all(b"bytes").unwrap();
        file.sync_data().unwrap();
        file.write_all(b" more").unwrap();
        flush.sync([&file]).unwrap();
        flush.sync([]).unwrap();
    }
}
