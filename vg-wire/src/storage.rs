//! Messages of the storage service.
//!
//! Block bytes never travel inside a frame: they follow the request frame (uploads) or
//! the response frame (reads) raw on the same QUIC stream.

use serde::{Deserialize, Serialize};

use crate::rpc::Operation;
use crate::types::{BlockId, Location, Role};

/// A request to a storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Bytes `offset..offset+len` of a block (`len` 0 means to the end); the answer
    /// [`Response::Data`] is followed by that many raw bytes.
    Read { id: BlockId, offset: u32, len: u32 },
    /// Store a block whose `len` raw bytes follow; forward it to `chain` first-to-last.
    /// Acknowledged once every storage of the chain that could be reached has written it
    /// (it survives a crash of the process), or synced it with `sync` (it survives a power
    /// loss; otherwise the storage syncs it in the background, at once). `race`: the
    /// upload of a commit racing it (see `ns::Request::Commit`), refused once the
    /// nameserver was told the storage does not hold the block for that race (`Held`).
    Put {
        id: BlockId,
        len: u32,
        chain: Vec<Location>,
        sync: bool,
        race: Option<u64>,
    },
    /// The same as `Put`, sent by a storage forwarding along a pipeline (storage role only).
    Forward {
        id: BlockId,
        len: u32,
        chain: Vec<Location>,
        sync: bool,
    },
    /// Answers once every block this storage acknowledged before is on its disk (the
    /// nameserver asks before it syncs a log record naming new blocks).
    Sync,
    /// Re-hash blocks and say which are intact (for `fsck`).
    Verify { ids: Vec<BlockId> },
    /// Which of these blocks this storage holds on its disk, once those it is receiving
    /// have arrived (for at most `wait_ms`) and what it holds is synced: the nameserver
    /// asks it of the storages a client uploaded to while its commit raced the upload
    /// (block, race). A block it does not hold, it refuses from then on for that race.
    Held {
        ids: Vec<(BlockId, u64)>,
        wait_ms: u32,
    },
}

/// Bytes of a block covered by one CRC-32 of its checksums.
pub const CHUNK: usize = 64 << 10;

/// The CRC-32 of each [`CHUNK`] of `data` (the last one may be shorter).
pub fn chunk_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(CHUNK).map(crc32fast::hash).collect()
}

/// [`chunk_crcs`] of bytes fed piece by piece as they arrive, each hashed while the copy
/// that took it in left it in the CPU's cache: hashed afterwards, a 4 MiB block is read
/// from memory again (8% of a mount's CPU in a sequential read, BENCHMARKS.md stop 39).
#[derive(Default)]
pub struct ChunkCrcs {
    done: Vec<u32>,
    hasher: crc32fast::Hasher,
    filled: usize,
}

impl ChunkCrcs {
    /// Hashes the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (CHUNK - self.filled).min(bytes.len());
            self.hasher.update(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == CHUNK {
                self.done.push(std::mem::take(&mut self.hasher).finalize());
                self.filled = 0;
            }
        }
    }

    /// The checksums of every byte fed.
    pub fn finish(mut self) -> Vec<u32> {
        if self.filled > 0 {
            self.done.push(self.hasher.finalize());
        }
        self.done
    }
}

/// A storage's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// `len` raw bytes follow. When they are whole chunks (a whole block, or a range that
    /// starts and ends on chunk bounds or the block's end), `crcs` are their checksums as
    /// stored at upload, so the reader checks them end to end; otherwise it is empty.
    Data { len: u32, crcs: Vec<u32> },
    /// The storages (by name) that now hold the block, this one first.
    Stored { holders: Vec<String> },
    /// For each requested block: present and intact.
    Verified(Vec<bool>),
    /// Everything acknowledged before the `Sync` is on disk.
    Synced,
    /// The blocks of a `Held` this storage holds, synced.
    Held(Vec<BlockId>),
}

impl Operation for Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Read { .. } => "read",
            Request::Put { .. } => "put",
            Request::Forward { .. } => "forward",
            Request::Sync => "sync",
            Request::Verify { .. } => "verify",
            Request::Held { .. } => "held",
        }
    }

    /// Only a storage passes a block on along a chain; anyone of the cluster reads,
    /// writes, verifies and asks for a sync.
    fn role(&self) -> Option<Role> {
        match self {
            Request::Forward { .. } => Some(Role::Storage),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_fed_piece_by_piece_are_those_of_the_whole() {
        let data: Vec<u8> = (0..3 * CHUNK + 1_234)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        // Pieces of QUIC's sizes, and ones that end exactly on and across chunk bounds.
        for piece in [1, 1_200, 4_096, CHUNK - 1, CHUNK, CHUNK + 1, data.len()] {
            let mut crcs = ChunkCrcs::default();
            for bytes in data.chunks(piece) {
                crcs.update(bytes);
            }
            assert_eq!(crcs.finish(), chunk_crcs(&data), "pieces of {piece}");
        }
        assert_eq!(ChunkCrcs::default().finish(), chunk_crcs(&[]));
        let mut whole = ChunkCrcs::default();
        whole.update(&data[..2 * CHUNK]);
        assert_eq!(whole.finish(), chunk_crcs(&data[..2 * CHUNK]));
    }
}
