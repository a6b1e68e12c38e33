//! Whole-file transfers for `vgctl put` and `get`: streamed block by block with a few
//! blocks in flight, so memory stays bounded whatever the file size.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use vg_wire::ns::Stored;
use vg_wire::{Attr, BlockId, BlockRef, FileKind, Location, Slice};

use super::{compact, stored, Client, Error, Result};

/// A block uploaded, and the storages that acknowledged it.
type Uploaded = (BlockRef, Vec<Location>);

/// Blocks transferred concurrently.
const IN_FLIGHT: usize = 4;

fn local_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Local {
        path: path.display().to_string(),
        source,
    }
}

impl Client {
    /// Uploads a local file to `ino` (an existing regular file), replacing its content;
    /// `advanced` hears of each block's bytes once stored.
    pub async fn put_file(
        &self,
        local: &Path,
        ino: vg_wire::Ino,
        mut advanced: impl FnMut(u64),
    ) -> Result<Attr> {
        let mut file = std::fs::File::open(local).map_err(local_err(local))?;
        let size = file.metadata().map_err(local_err(local))?.len();
        let block_size = self.block_size as usize;
        let mut pending: VecDeque<tokio::task::JoinHandle<Result<Uploaded>>> = VecDeque::new();
        let mut blocks = Vec::new();
        let mut stored_blobs: Vec<Stored> = Vec::new();
        let mut offset = 0u64;
        loop {
            let mut buf = vec![0u8; block_size];
            let n = read_full(&mut file, &mut buf).map_err(local_err(local))?;
            if n > 0 {
                buf.truncate(n);
                let client = self.clone();
                pending.push_back(tokio::spawn(async move {
                    client.upload_block(buf.into(), false).await
                }));
                offset += n as u64;
            }
            while pending.len() >= IN_FLIGHT || (n == 0 && !pending.is_empty()) {
                let uploaded = pending
                    .pop_front()
                    .expect("non-empty")
                    .await
                    .expect("upload task does not panic");
                let (block, holders) = match uploaded {
                    Ok(uploaded) => uploaded,
                    Err(e) => {
                        // Nothing will be committed: let every block uploaded go.
                        self.unhold(stored_blobs.iter().map(|(id, _, _): &Stored| *id));
                        for task in pending {
                            if let Ok(Ok((block, _))) = task.await {
                                self.unhold([block.id]);
                            }
                        }
                        return Err(e);
                    }
                };
                advanced(block.len as u64);
                stored_blobs.push(stored(block, &holders));
                // Each block replaces, whole, what the file held there.
                let whole = Slice {
                    at: 0,
                    len: block.len,
                    blob: block.id,
                    blob_off: 0,
                };
                blocks.push((blocks.len() as u64, vec![whole]));
            }
            if n == 0 {
                break;
            }
        }
        if offset != size {
            tracing::debug!(
                expected = size,
                read = offset,
                "local file changed size during upload"
            );
        }
        self.commit(
            ino,
            offset,
            blocks,
            stored_blobs,
            None,
            super::Commit::Written,
        )
        .await
    }

    /// Downloads a file to a local path, checking every block against its name, a hash (the
    /// mount checks only the storage's checksums, which is cheaper); `advanced` hears of
    /// each block's bytes once written.
    pub async fn get_file(
        &self,
        ino: vg_wire::Ino,
        local: &Path,
        mut advanced: impl FnMut(u64),
    ) -> Result<u64> {
        let layout = self.layout(ino).await?;
        if layout.attr.kind != FileKind::File {
            return Err(Error::Remote(vg_wire::RemoteError::new(
                vg_wire::ErrorCode::IsDir,
                "not a regular file",
            )));
        }
        let size = layout.attr.size;
        let block_size = layout.block_size as u64;
        let mut out = std::fs::File::create(local).map_err(local_err(local))?;
        let mut pending: VecDeque<tokio::task::JoinHandle<Result<Vec<u8>>>> = VecDeque::new();
        let locations: Arc<HashMap<BlockId, Vec<Location>>> =
            Arc::new(layout.locations.into_iter().collect());
        // Holes at the end of a file are not listed in its layout.
        let n_blocks = size.div_ceil(block_size) as usize;
        let mut next = 0;
        let mut written = 0u64;
        while written < size || !pending.is_empty() {
            while next < n_blocks && pending.len() < IN_FLIGHT {
                let want = (size - next as u64 * block_size).min(block_size) as usize;
                let list = layout.blocks.get(next).cloned().unwrap_or_default();
                let locations = locations.clone();
                let client = self.clone();
                pending.push_back(tokio::spawn(async move {
                    // Holes, and bytes no slice covers, read as zeros.
                    let segments = vg_wire::slices::resolve(&list, 0..want as u32);
                    let blobs = compact::fetch_blobs(&client, &segments, &locations, true).await?;
                    let mut data = vec![0u8; want];
                    for (range, source) in segments {
                        if let Some((id, off)) = source {
                            let bytes = compact::segment_bytes(&blobs, id, off, range.len())?;
                            data[range.start as usize..range.end as usize].copy_from_slice(bytes);
                        }
                    }
                    Ok(data)
                }));
                next += 1;
            }
            let Some(task) = pending.pop_front() else {
                break;
            };
            let data = task.await.expect("download task does not panic")?;
            out.write_all(&data).map_err(local_err(local))?;
            written += data.len() as u64;
            advanced(data.len() as u64);
        }
        out.sync_all().map_err(local_err(local))?;
        Ok(written)
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
