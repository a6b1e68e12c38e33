//! Errors of the protocol layer, and the closed error code that crosses the wire.

use serde::{Deserialize, Serialize};

/// A failure a peer reports back, as a closed code plus a human-readable message.
///
/// The message is for people (logs, CLI output); programs act on the code only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// What failed and why, naming the path, block or field.
    pub message: String,
}

impl RemoteError {
    /// A remote error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The closed set of failures a vg server can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No such file, directory, inode or block.
    NotFound,
    /// The name already exists.
    Exists,
    /// A path component or target is not a directory.
    NotDir,
    /// The operation needs a non-directory but got a directory.
    IsDir,
    /// The directory is not empty.
    NotEmpty,
    /// No storage has room for the data.
    NoSpace,
    /// A field of the request is malformed or out of range.
    Invalid,
    /// A name is longer than 255 bytes.
    NameTooLong,
    /// The peer's certificate role does not allow this operation.
    Forbidden,
    /// Stored data failed its checksum.
    Corrupt,
    /// Not enough live storages, or the server is shutting down.
    Unavailable,
    /// A local I/O error on the server.
    Io,
    /// The request was sent with a protocol version this server does not speak.
    Version,
    /// The data changed since the caller read it (a compaction lost a race).
    Conflict,
    /// No such extended attribute.
    NoAttr,
    /// Not supported by vg (e.g. an attribute namespace it does not keep).
    NotSupported,
    /// A value or a set of values is larger than vg takes.
    TooBig,
    /// A lock is held by another owner (asked not to wait).
    WouldBlock,
    /// Waiting for a lock would deadlock: its holder waits for one the asker holds.
    Deadlock,
    /// The file a cached name led to is gone: look the name up again.
    Stale,
    /// The nameserver asked does not lead its group (or the change under way lost its
    /// leader): ask the group again.
    NotLeader,
    /// The server cannot answer this yet (a nameserver that just started leading and has
    /// not heard from the storages): ask it again shortly.
    TryAgain,
}

impl ErrorCode {
    /// A short name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::NotDir => "not_dir",
            ErrorCode::IsDir => "is_dir",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NameTooLong => "name_too_long",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Io => "io",
            ErrorCode::Version => "version",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NoAttr => "no_attr",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::TooBig => "too_big",
            ErrorCode::WouldBlock => "would_block",
            ErrorCode::Deadlock => "deadlock",
            ErrorCode::Stale => "stale",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::TryAgain => "try_again",
        }
    }
}

/// Errors of the protocol layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer answered with an error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A frame could not be read, decoded or written.
    #[error("bad frame: {reason}")]
    BadFrame {
        /// Why the frame was refused.
        reason: String,
    },
    /// The frame is of another protocol version.
    #[error(
        "protocol version {theirs}, this peer speaks {}",
        crate::codec::VERSION
    )]
    Version {
        /// The version the frame carries.
        theirs: u8,
    },
    /// The connection or stream failed.
    #[error("connection to {peer}: {reason}")]
    Connection {
        /// The peer's name and address.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("{peer}: timed out after {secs:.1}s")]
    Timeout {
        /// The peer's name and address.
        peer: String,
        /// How long we waited.
        secs: f64,
    },
    /// A storage sent block bytes that do not match their checksums.
    #[error("{peer} sent block bytes that do not match their checksums")]
    Corrupt {
        /// The storage's name and address.
        peer: String,
    },
    /// Certificates or keys could not be loaded or are unusable.
    #[error("{path}: {reason}")]
    Tls {
        /// The file or peer concerned.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// The remote error code, if the peer answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether a nameserver refused because it does not lead its group (another
    /// member may answer).
    pub fn is_not_leader(&self) -> bool {
        matches!(self, Error::Remote(e) if e.code == ErrorCode::NotLeader)
    }

    /// Whether the server asked to be asked again shortly.
    pub fn is_try_again(&self) -> bool {
        matches!(self, Error::Remote(e) if e.code == ErrorCode::TryAgain)
    }

    /// Whether the failure is of the transport (retrying elsewhere may help).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Error::Connection { .. } | Error::Timeout { .. } | Error::BadFrame { .. }
        )
    }
}

/// Result of the protocol layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
