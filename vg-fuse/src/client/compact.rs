//! Compaction: a block whose slices are many, or mostly hidden, is rewritten as one blob
//! off the write path, and swapped in by the nameserver only if readers see the same
//! after: what remains of the slices read gives way to it, and slices a concurrent
//! writer added meanwhile stay on top (`vg_wire::slices::compacted`).

use std::collections::HashMap;

use vg_wire::slices::{self, BlobSegment, Slice};
use vg_wire::{BlockId, Bytes, ErrorCode, Ino, Location};

use super::{stored, Client, Error, Result};

/// A compaction the nameserver took: what remained of block `idx`'s slices `prefix` (as
/// read) became `merged`.
pub struct Swap {
    /// The block.
    pub idx: u64,
    /// The slices replaced.
    pub prefix: Vec<Slice>,
    /// The slices that replaced them, all in `blob`.
    pub merged: Vec<Slice>,
    /// The new blob.
    pub blob: BlockId,
    /// The storages that hold it.
    pub holders: Vec<Location>,
}

/// The bytes `list` shows, from the first shown byte to the last, packed in one blob
/// (holes between them as zeros), and where in the block they start. One slice maps
/// them back, not one per run of bytes: a block of scattered small writes would
/// otherwise stay a long list. Reads each blob once, whole.
pub async fn merge(
    client: &Client,
    list: &[Slice],
    block_size: u32,
    locations: &HashMap<BlockId, Vec<Location>>,
) -> Result<Option<(Vec<u8>, u32)>> {
    let segments: Vec<_> = slices::resolve(list, 0..block_size)
        .into_iter()
        .filter(|(_, source)| source.is_some())
        .collect();
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        return Ok(None);
    };
    let (start, end) = (first.0.start, last.0.end);
    let blobs = fetch_blobs(client, &segments, locations, false).await?;
    let mut data = vec![0u8; (end - start) as usize];
    for (range, source) in segments {
        let Some((id, off)) = source else { continue };
        let bytes = segment_bytes(&blobs, id, off, range.len())?;
        data[(range.start - start) as usize..(range.end - start) as usize].copy_from_slice(bytes);
    }
    Ok(Some((data, start)))
}

/// Each blob the segments show, read whole once, up to [`FETCHES`] at a time
/// (`hashed`: checked against its name (hash) as well as the storage's checksums).
pub async fn fetch_blobs(
    client: &Client,
    segments: &[BlobSegment],
    locations: &HashMap<BlockId, Vec<Location>>,
    hashed: bool,
) -> Result<HashMap<BlockId, Vec<u8>>> {
    let mut wanted: Vec<BlockId> = segments
        .iter()
        .filter_map(|(_, s)| s.map(|s| s.0))
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut blobs = HashMap::with_capacity(wanted.len());
    let mut fetches = tokio::task::JoinSet::new();
    let mut next = wanted.into_iter();
    loop {
        while fetches.len() < FETCHES {
            let Some(id) = next.next() else { break };
            let at = locations.get(&id).cloned().unwrap_or_default();
            let client = client.clone();
            fetches.spawn(async move {
                let data = match hashed {
                    true => client.read_block_hashed(id, &at).await,
                    false => client.read_block(id, &at, 0, 0).await,
                };
                data.map(|data| (id, data))
            });
        }
        let Some(done) = fetches.join_next().await else {
            return Ok(blobs);
        };
        let (id, data) = done.expect("blob fetch does not panic")?;
        blobs.insert(id, data);
    }
}

/// Blob fetches in flight at once for a compaction or a `get`: a block of many small
/// slices is as many small blobs, each a round trip.
const FETCHES: usize = 16;

/// The `n` bytes at `off` of a fetched blob; a blob shorter than its slice says is an
/// error, not zeros.
pub fn segment_bytes(
    blobs: &HashMap<BlockId, Vec<u8>>,
    id: BlockId,
    off: u32,
    n: usize,
) -> Result<&[u8]> {
    blobs
        .get(&id)
        .and_then(|blob| blob.get(off as usize..off as usize + n))
        .ok_or_else(|| Error::Unreadable {
            block: id,
            reason: format!("shorter than a slice needs ({n} bytes at {off})"),
        })
}

/// Compacts those of blocks `idxs` of a file whose slices, as the nameserver has them
/// now, call for it (`closing`: the stricter rule of a file's last close). Returns the
/// compactions the nameserver took; one that lost a race with a writer is skipped.
pub async fn compact_blocks(
    client: &Client,
    ino: Ino,
    idxs: &[u64],
    closing: bool,
) -> Result<Vec<Swap>> {
    let layout = client.layout(ino).await?;
    let locations: HashMap<BlockId, Vec<Location>> = layout.locations.into_iter().collect();
    let mut done = Vec::new();
    for &idx in idxs {
        let Some(prefix) = layout.blocks.get(idx as usize) else {
            continue;
        };
        if !slices::wants_compaction(prefix, closing) {
            continue;
        }
        let Some((data, at)) = merge(client, prefix, layout.block_size, &locations).await? else {
            continue;
        };
        // The upload names the blob: its bytes hashed once (off the worker when large).
        let (blob, holders) = client.upload_block(Bytes::from(data), false).await?;
        let merged = vec![Slice {
            at,
            len: blob.len,
            blob: blob.id,
            blob_off: 0,
        }];
        let uploaded = vec![stored(blob, &holders)];
        match client
            .compact(ino, idx, prefix.clone(), merged.clone(), uploaded)
            .await
        {
            Ok(()) => done.push(Swap {
                idx,
                prefix: prefix.clone(),
                merged,
                blob: blob.id,
                holders,
            }),
            Err(e) if e.code() == ErrorCode::Conflict => {
                tracing::debug!(ino, idx, "block changed during its compaction; left as is");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
