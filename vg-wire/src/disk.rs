//! Disk steps both servers take the same way: syncing a directory after creating,
//! renaming or removing in it, and allocating a file's space ahead of its writes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

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
