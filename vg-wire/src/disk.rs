//! Disk steps both servers take the same way: syncing a directory after creating,
//! renaming or removing in it, allocating a file's space ahead of its writes, and
//! appending records (in whole sectors through O_DIRECT where the file system can).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of [`AlignedBuf`]'s memory: a page, enough for any disk's O_DIRECT.
pub const DIRECT_ALIGN: usize = 4096;

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

/// Bytes of zeros written ahead of the records by [`Appender`]. Space a file system
/// allocated ahead reads as zeros but is marked unwritten, so the sync after the first
/// write into each part of it commits the change of marks as well (with 6 KB records,
/// two storages syncing at once on our disk took 232 µs per sync, and 165 µs writing into
/// space zeroed before). Written ahead, the zeros go out with the sync of one record in
/// every this many bytes.
pub const ZERO_AHEAD: u64 = 1 << 20;

/// Appends records to a file, zeroing ahead of them; `direct`, through O_DIRECT in whole
/// sectors where the file system takes it (not tmpfs). Through the page cache, the sync
/// after a small record writes every page the record touches (two for a 4 KiB block's
/// 4,144-byte record); direct, it writes the record's own sectors (512 bytes each on most
/// disks), but each write waits for the disk: for records synced at once anyway. The
/// sector the records end in is kept in memory, so that the next write can start at its
/// beginning. The caller writes records in offset order, one at a time, and syncs the
/// file (any descriptor of it) as before.
pub struct Appender {
    file: File,
    /// Alignment of offsets and lengths: the file system's for O_DIRECT, 1 without it.
    align: u64,
    /// The bytes of the sector the records end in, up to their end.
    tail: Vec<u8>,
    /// End of the zeros written ahead.
    zeroed: u64,
    /// Zeros go no further than this.
    limit: u64,
}

impl Appender {
    /// Opens `path` to append after its first `end` bytes (its records), zeroing ahead
    /// no further than `limit`, `direct` if the file system can. The alignment is the
    /// file system's where it says (statx), else a page's, which any disk takes.
    pub fn open(path: &Path, end: u64, limit: u64, direct: bool) -> std::io::Result<Appender> {
        let opened = match direct {
            true => OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok(),
            false => None,
        };
        let (file, align) = match opened {
            Some(file) => (file, dio_align(path).unwrap_or(DIRECT_ALIGN as u64)),
            None => (OpenOptions::new().write(true).open(path)?, 1),
        };
        let mut appender = Appender {
            file,
            align,
            tail: Vec::new(),
            zeroed: 0,
            limit,
        };
        appender.reset(path, end)?;
        Ok(appender)
    }

    /// Starts again after the first `end` bytes of the file (after a truncation, or at
    /// open): what follows them is zeroed before records go there.
    pub fn reset(&mut self, path: &Path, end: u64) -> std::io::Result<()> {
        let start = end / self.align * self.align;
        let mut tail = vec![0u8; (end - start) as usize];
        // Through the page cache: a direct read would need an aligned buffer.
        File::open(path)?.read_exact_at(&mut tail, start)?;
        self.tail = tail;
        self.zeroed = end.div_ceil(self.align) * self.align;
        Ok(())
    }

    /// End of the zeros written ahead of the records.
    pub fn zeroed(&self) -> u64 {
        self.zeroed
    }

    /// Writes `record` at `offset`, the end of the records so far.
    pub fn write(&mut self, record: &[u8], offset: u64) -> std::io::Result<()> {
        let start = offset - self.tail.len() as u64;
        let end = offset + record.len() as u64;
        let padded = end.div_ceil(self.align) * self.align;
        if padded > self.zeroed {
            let to = (padded + ZERO_AHEAD).min(self.limit.max(padded));
            let to = to.div_ceil(self.align) * self.align;
            let zeros = AlignedBuf::new((to - self.zeroed) as usize);
            self.file.write_all_at(&zeros, self.zeroed)?;
            self.zeroed = to;
        }
        if self.align == 1 {
            return self.file.write_all_at(record, offset);
        }
        let mut buf = AlignedBuf::new((padded - start) as usize);
        let head = self.tail.len();
        buf.as_mut()[..head].copy_from_slice(&self.tail);
        buf.as_mut()[head..head + record.len()].copy_from_slice(record);
        self.file.write_all_at(&buf, start)?;
        let used = (end - start) as usize;
        let kept = (end % self.align) as usize;
        self.tail = buf[used - kept..used].to_vec();
        Ok(())
    }
}

/// The alignment O_DIRECT needs for the file at `path`, if the file system says (statx's
/// `STATX_DIOALIGN`) and it is one [`AlignedBuf`] meets.
fn dio_align(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx only writes into `stat`, plain data that may start zeroed; `name` is
    // a valid NUL-terminated string.
    let stat = unsafe {
        let mut stat: libc::statx = std::mem::zeroed();
        let found = libc::statx(
            libc::AT_FDCWD,
            name.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            &mut stat,
        );
        (found == 0).then_some(stat)?
    };
    let (offset, memory) = (stat.stx_dio_offset_align, stat.stx_dio_mem_align);
    let usable = stat.stx_mask & libc::STATX_DIOALIGN != 0
        && offset.is_power_of_two()
        && offset as usize <= DIRECT_ALIGN
        && memory as usize <= DIRECT_ALIGN;
    usable.then_some(offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of every length up to a few sectors, written one after another, direct or
    /// not, read back as written, with zeros after them.
    #[test]
    fn appender_writes_records_of_any_length() {
        let dir = tempfile::tempdir().unwrap();
        for direct in [true, false] {
            let path = dir.path().join(format!("log-{direct}"));
            std::fs::write(&path, b"start").unwrap();
            let mut writer = Appender::open(&path, 5, 1 << 30, direct).unwrap();
            let mut want = b"start".to_vec();
            for len in (0..1500).step_by(37).chain([4096, 4144, 511, 512, 513]) {
                let record: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                writer.write(&record, want.len() as u64).unwrap();
                want.extend_from_slice(&record);
            }
            let got = std::fs::read(&path).unwrap();
            assert_eq!(&got[..want.len()], &want[..]);
            assert!(got[want.len()..].iter().all(|&b| b == 0));
            // Reopened where a torn record left garbage: it is zeroed before use.
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&[0xff; 100], want.len() as u64).unwrap();
            let mut writer = Appender::open(&path, want.len() as u64, 1 << 30, direct).unwrap();
            writer.write(b"next", want.len() as u64).unwrap();
            want.extend_from_slice(b"next");
            let got = std::fs::read(&path).unwrap();
            assert_eq!(&got[..want.len()], &want[..]);
            assert!(got[want.len()..].iter().all(|&b| b == 0));
        }
    }
}
