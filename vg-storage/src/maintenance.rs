//! A storage's work besides answering requests: copying blocks the nameserver asks it
//! to replicate, scrubbing (re-hashing every block, slowly), and compacting and recycling
//! volumes.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vg_wire::rpc::Target;
use vg_wire::{BlockId, Location};

use crate::server::Storage;

impl Storage {
    /// Copies a block from the first source that has it intact.
    pub async fn replicate(&self, id: BlockId, sources: Vec<Location>) {
        if let Some(len) = self.store.len_of(&id) {
            self.changes.lock().expect("changes lock").stored(id, len);
            return;
        }
        for source in sources.iter().filter(|s| s.name != self.name) {
            let target = Target::storage(source);
            let data = match vg_wire::rpc::read_block(&self.dialer, &target, id, 0, 0).await {
                Ok(data) => data,
                Err(e) => {
                    warn!(block = %id, from = %source.name, error = %e, "replica source failed");
                    continue;
                }
            };
            // `put` checks the bytes against the name, off the request thread.
            let (store, len) = (self.store.clone(), data.len() as u32);
            match tokio::task::spawn_blocking(move || store.put(&id, &data))
                .await
                .expect("put does not panic")
            {
                Ok(()) => {
                    info!(block = %id, from = %source.name, "replicated block");
                    self.changes.lock().expect("changes lock").stored(id, len);
                    return;
                }
                Err(crate::Error::Corrupt { .. }) => {
                    warn!(block = %id, from = %source.name, "replica source sent bytes that do not match the block")
                }
                Err(e) => {
                    warn!(block = %id, error = %e, "cannot store replica");
                    return;
                }
            }
        }
    }

    /// Re-hashes every block at `rate` bytes per second, forever, deleting and reporting
    /// corrupt ones.
    pub async fn scrub_loop(self: Arc<Self>, rate: u64) {
        loop {
            let blocks = self.store.list();
            for (id, len) in blocks {
                tokio::time::sleep(Duration::from_secs_f64(len as f64 / rate as f64)).await;
                let store = self.store.clone();
                let intact = tokio::task::spawn_blocking(move || {
                    store.len_of(&id).is_none() || store.verify(&id)
                })
                .await
                .unwrap_or(true);
                if !intact {
                    self.found_bad(id);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reclaims the space of deleted small blocks and keeps a spare volume every `every`,
    /// forever.
    pub async fn compact_loop(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let store = self.store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.compact()).await {
                warn!(error = %e, "volume compaction failed");
            }
        }
    }
}
