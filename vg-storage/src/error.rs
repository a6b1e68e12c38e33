//! Errors of the storage and their wire codes.

use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::BlockId;

/// Wraps an I/O error with what was being done (`create /path`), for `map_err`.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// What can go wrong in a storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block is not here.
    #[error("block {block}: not stored here")]
    NotFound {
        /// The block.
        block: BlockId,
    },
    /// Bytes do not match the block name or the stored checksums.
    #[error("block {block}: {reason}")]
    Corrupt {
        /// The block.
        block: BlockId,
        /// What does not match.
        reason: String,
    },
    /// The capacity would be exceeded.
    #[error("block {block} ({len} bytes): no space left ({free} bytes free)")]
    NoSpace {
        /// The block.
        block: BlockId,
        /// Its length.
        len: u64,
        /// Bytes still free.
        free: u64,
    },
    /// A byte range outside the block.
    #[error("block {block}: range {offset}+{len} is outside its {size} bytes")]
    BadRange {
        /// The block.
        block: BlockId,
        /// Requested offset.
        offset: u32,
        /// Requested length.
        len: u32,
        /// The block's length.
        size: u32,
    },
    /// Local disk I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the file.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Talking to another peer failed.
    #[error(transparent)]
    Wire(#[from] vg_wire::Error),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// The error as the peer sees it.
    pub fn to_remote(&self) -> RemoteError {
        let code = match self {
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::Corrupt { .. } => ErrorCode::Corrupt,
            Error::NoSpace { .. } => ErrorCode::NoSpace,
            Error::BadRange { .. } => ErrorCode::Invalid,
            Error::Io { .. } => ErrorCode::Io,
            Error::Wire(e) => e.code().unwrap_or(ErrorCode::Unavailable),
            Error::Config(_) => ErrorCode::Invalid,
        };
        RemoteError::new(code, self.to_string())
    }
}

/// Result of the storage.
pub type Result<T, E = Error> = std::result::Result<T, E>;
