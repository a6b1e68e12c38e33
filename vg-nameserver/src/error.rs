//! Errors of the nameserver and their wire codes.

use vg_wire::error::{ErrorCode, RemoteError};

/// What can go wrong in the nameserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A namespace or placement operation was refused; goes back to the client as is.
    #[error(transparent)]
    Refused(#[from] RemoteError),
    /// The metadata directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, naming the file.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Persistent metadata is unreadable beyond what torn-tail recovery handles.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The nameserver group could not be started or formed.
    #[error("nameserver group: {0}")]
    Group(String),
    /// Network setup failed.
    #[error(transparent)]
    Wire(#[from] vg_wire::Error),
}

impl Error {
    /// The error as the peer sees it.
    pub fn to_remote(&self) -> RemoteError {
        match self {
            Error::Refused(e) => e.clone(),
            other => RemoteError::new(ErrorCode::Io, other.to_string()),
        }
    }
}

/// Shorthand for refusing with a code and message.
pub fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, RemoteError> {
    Err(RemoteError::new(code, message))
}

/// Result of the nameserver.
pub type Result<T, E = Error> = std::result::Result<T, E>;
