//! The vg protocol: everything two vg processes must agree on.
//!
//! Message types ([`ns`], [`storage`]), shared value types ([`types`]), the frame codec
//! ([`codec`], the only caller of bincode), TLS and identity ([`tls`]), and the RPC plumbing
//! on QUIC streams ([`rpc`]) used by servers and clients alike; the disk steps both servers
//! share ([`disk`]).

#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod disk;
pub mod error;
pub mod locks;
#[cfg(feature = "cli")]
pub mod metrics;
pub mod ns;
pub mod poll;
pub mod rpc;
pub mod size;
pub mod slices;
pub mod storage;
pub mod tls;
pub mod types;
pub mod xattr;

pub use bytes::Bytes;
pub use error::{Error, ErrorCode, RemoteError, Result};
pub use slices::Slice;
pub use types::*;
