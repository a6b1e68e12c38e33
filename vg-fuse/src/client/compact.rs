//! Compaction: a block whose slices are many, or mostly hidden, is rewritten as one blob
//! off the write path, and swapped in by the nameserver only if the block's slices are
//! still those read (a compare-and-swap on the list's prefix), so that a concurrent
//! writer never loses bytes: its slices, added meanwhile, stay on top.

use std::collections::HashMap;
use std::ops::Range;

use vg_wire::slices::{self, Slice};
use vg_wire::{BlockId, Bytes, ErrorCode, Ino, Location};

use super::{Client, Error, Result};

/// A compaction the nameserver took: block `idx`'s first slices `prefix` became `merged`.
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

/// The bytes `list` shows (holes left out) packed in one blob, and the slices that map
/// them back: adjacent bytes become one slice. Reads each blob once, whole.
pub async fn merge(
    client: &Client,
    list: &[Slice],
    block_size: u32,
    locations: &HashMap<BlockId, Vec<Location>>,
) -> Result<(Vec<u8>, Vec<(u32, u32, u32)>)> {
    let segments = slices::resolve(list, 0..block_size);
    let blobs = fetch_blobs(client, &segments, locations, false).await?;
    let mut data = Vec::new();
    let mut pieces: Vec<(u32, u32, u32)> = Vec::new();
    for (range, source) in segments {
        let Some((id, off)) = source else { continue };
        let n = range.len();
        let bytes = segment_bytes(&blobs, id, off, n)?;
        match pieces.last_mut() {
            Some(last) if last.0 + last.1 == range.start => last.1 += n as u32,
            _ => pieces.push((range.start, n as u32, data.len() as u32)),
        }
        data.extend_from_slice(bytes);
    }
    Ok((data, pieces))
}

/// Each blob the segments show, read whole once (`hashed`: checked against its SHA-256
/// as well as the storage's checksums).
pub async fn fetch_blobs(
    client: &Client,
    segments: &[(Range<u32>, Option<(BlockId, u32)>)],
    locations: &HashMap<BlockId, Vec<Location>>,
    hashed: bool,
) -> Result<HashMap<BlockId, Vec<u8>>> {
    let mut blobs = HashMap::new();
    for (_, source) in segments {
        if let Some((id, _)) = source {
            if !blobs.contains_key(id) {
                let at = locations.get(id).map_or(&[][..], Vec::as_slice);
                let data = match hashed {
                    true => client.read_block_hashed(*id, at).await?,
                    false => client.read_block(*id, at, 0, 0).await?,
                };
                blobs.insert(*id, data);
            }
        }
    }
    Ok(blobs)
}

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
            block: id.to_hex(),
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
        let (data, pieces) = merge(client, prefix, layout.block_size, &locations).await?;
        if data.is_empty() {
            continue;
        }
        let (blob, holders) = client.upload_block(Bytes::from(data)).await?;
        let merged: Vec<Slice> = pieces
            .iter()
            .map(|&(at, len, blob_off)| Slice {
                at,
                len,
                blob: blob.id,
                blob_off,
            })
            .collect();
        let names = holders.iter().map(|l| l.name.clone()).collect();
        let stored = vec![(blob.id, blob.len, names)];
        match client
            .compact(ino, idx, prefix.clone(), merged.clone(), stored)
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
