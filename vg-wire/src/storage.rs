//! Messages of the storage service.
//!
//! Block bytes never travel inside a frame: they follow the request frame (uploads) or
//! the response frame (reads) raw on the same QUIC stream.

use serde::{Deserialize, Serialize};

use crate::types::{BlockId, Location};

/// A request to a storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Bytes `offset..offset+len` of a block (`len` 0 means to the end); the answer
    /// [`Response::Data`] is followed by that many raw bytes.
    Read { id: BlockId, offset: u32, len: u32 },
    /// Store a block whose `len` raw bytes follow; forward it to `chain` first-to-last.
    /// Acknowledged once every storage of the chain that could be reached has it.
    Put {
        id: BlockId,
        len: u32,
        chain: Vec<Location>,
    },
    /// The same as `Put`, sent by a storage forwarding along a pipeline (storage role only).
    Forward {
        id: BlockId,
        len: u32,
        chain: Vec<Location>,
    },
    /// Re-hash blocks and say which are intact (for `fsck`).
    Verify { ids: Vec<BlockId> },
}

/// A storage's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// `len` raw bytes follow.
    Data { len: u32 },
    /// The storages (by name) that now hold the block, this one first.
    Stored { holders: Vec<String> },
    /// For each requested block: present and intact.
    Verified(Vec<bool>),
}
