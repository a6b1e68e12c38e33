//! Disk steps both servers take the same way: syncing a directory after creating,
//! renaming or removing in it, allocating a file's space ahead of its writes, and
//! writing and reading through O_DIRECT (aligned buffers, the file system's alignment).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
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
