//! Errors of the client library.

use vg_wire::error::{ErrorCode, RemoteError};

/// What can go wrong in a client operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server refused the operation.
    #[error("{}", .0.message)]
    Remote(RemoteError),
    /// The cluster could not be reached, or answered nonsense.
    #[error(transparent)]
    Wire(vg_wire::Error),
    /// No replica of a block could be read intact.
    #[error("block {block}: no intact replica could be read ({reason})")]
    Unreadable {
        /// The block.
        block: vg_wire::BlockId,
        /// The last failure.
        reason: String,
    },
    /// Local file I/O failed.
    #[error("{path}: {source}")]
    Local {
        /// The local path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The calling process got a signal while it waited (for a lock).
    #[error("interrupted by a signal")]
    Interrupted,
    /// The configuration names no nameserver.
    #[error("no nameserver given")]
    NoNameserver,
}

impl From<vg_wire::Error> for Error {
    fn from(e: vg_wire::Error) -> Self {
        match e {
            vg_wire::Error::Remote(remote) => Error::Remote(remote),
            other => Error::Wire(other),
        }
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        Error::Remote(e)
    }
}

impl Error {
    /// The closest wire code, for errno mapping and messages.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Remote(e) => e.code,
            Error::Wire(_) | Error::Unreadable { .. } => ErrorCode::Unavailable,
            Error::Local { .. } => ErrorCode::Io,
            // Not a server's answer; errno() maps it to EINTR before looking here.
            Error::Interrupted => ErrorCode::WouldBlock,
            Error::NoNameserver => ErrorCode::Invalid,
        }
    }

    /// The standard wording of the error for a path, as coreutils would print it.
    pub fn describe(&self) -> String {
        match self {
            Error::Remote(e) => match e.code {
                ErrorCode::NotFound => "No such file or directory".into(),
                ErrorCode::Exists => "File exists".into(),
                ErrorCode::NotDir => "Not a directory".into(),
                ErrorCode::IsDir => "Is a directory".into(),
                ErrorCode::NotEmpty => "Directory not empty".into(),
                ErrorCode::NoSpace => "No space left on device".into(),
                ErrorCode::NameTooLong => "File name too long".into(),
                _ => e.message.clone(),
            },
            other => other.to_string(),
        }
    }
}

/// Result of the client library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
