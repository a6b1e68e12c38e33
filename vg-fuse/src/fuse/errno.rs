//! The one place where client errors become errno values.

use vg_wire::ErrorCode;

use crate::client::Error;

/// The errno a failed client call returns to the application.
pub fn errno(error: &Error) -> i32 {
    if let Error::Interrupted = error {
        return libc::EINTR;
    }
    match error.code() {
        ErrorCode::NotFound => libc::ENOENT,
        ErrorCode::Exists => libc::EEXIST,
        ErrorCode::NotDir => libc::ENOTDIR,
        ErrorCode::IsDir => libc::EISDIR,
        ErrorCode::NotEmpty => libc::ENOTEMPTY,
        ErrorCode::NoSpace => libc::ENOSPC,
        ErrorCode::Invalid => libc::EINVAL,
        ErrorCode::NameTooLong => libc::ENAMETOOLONG,
        ErrorCode::Forbidden => libc::EPERM,
        ErrorCode::Corrupt
        | ErrorCode::Unavailable
        | ErrorCode::NotLeader
        | ErrorCode::TryAgain
        | ErrorCode::Io
        | ErrorCode::Conflict => libc::EIO,
        ErrorCode::Version => libc::EPROTO,
        ErrorCode::NoAttr => libc::ENODATA,
        ErrorCode::NotSupported => libc::ENOTSUP,
        ErrorCode::TooBig => libc::E2BIG,
        ErrorCode::WouldBlock => libc::EAGAIN,
        ErrorCode::Deadlock => libc::EDEADLK,
        // The kernel then looks the path up again, past its caches, and retries once.
        ErrorCode::Stale => libc::ESTALE,
    }
}

/// Operations vg does not support (fallocate modes other than 0 and KEEP_SIZE).
pub const UNSUPPORTED: i32 = libc::ENOTSUP;
/// Extended attributes under `--no-xattrs`: "not implemented" makes the kernel stop
/// asking (it then answers EOPNOTSUPP itself).
pub const NO_XATTRS: i32 = libc::ENOSYS;
/// Flags vg does not support (e.g. RENAME_EXCHANGE).
pub const BAD_FLAGS: i32 = libc::EINVAL;
/// A negative offset or length.
pub const BAD_RANGE: i32 = libc::EINVAL;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_their_errno() {
        let e = Error::Remote(vg_wire::RemoteError::new(ErrorCode::NoSpace, "full"));
        assert_eq!(errno(&e), libc::ENOSPC);
        let e = Error::Remote(vg_wire::RemoteError::new(ErrorCode::NotEmpty, "x"));
        assert_eq!(errno(&e), libc::ENOTEMPTY);
    }
}
