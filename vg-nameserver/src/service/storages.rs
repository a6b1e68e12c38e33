//! The storages' side: registering, block reports, heartbeats (which carry the
//! registry's commands back), and the cluster's figures.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::warn;
use vg_wire::error::ErrorCode;
use vg_wire::ns::{ClusterStatus, Response, StatFs};
use vg_wire::rpc::Peer;
use vg_wire::BlockId;

use super::{Answer, Service, State};
use crate::error::refuse;
use crate::log::LogStore;

/// What a heartbeat reports: space used, and the blobs received, removed and found bad
/// since the last one.
pub(super) struct Beat {
    pub used: u64,
    pub received: Vec<(BlockId, u32)>,
    pub removed: Vec<BlockId>,
    pub bad: Vec<BlockId>,
}

impl Service {
    /// A storage announces itself, under the name its certificate gives.
    pub(super) fn register(
        &self,
        peer: &Peer,
        name: String,
        addr: SocketAddr,
        capacity: u64,
        used: u64,
    ) -> Answer {
        if name != peer.name {
            warn!(peer = %peer.name, addr = %peer.addr, claimed = %name, "refused: storage registering under another name");
            return refuse(
                ErrorCode::Forbidden,
                format!(
                    "register {name}: refused, the certificate is for storage {}",
                    peer.name
                ),
            );
        }
        self.lock()
            .registry
            .register(&name, addr, capacity, used, Instant::now());
        Ok(Response::Done)
    }

    /// A batch of a storage's block report; answers with the blobs it should delete.
    pub(super) fn report(&self, peer: &Peer, blocks: &[(BlockId, u32)]) -> Answer {
        let mut state = self.lock();
        let State { ns, registry, .. } = &mut *state;
        Ok(Response::Delete(registry.report(
            &peer.name,
            blocks,
            ns.refs(),
            Instant::now(),
        )?))
    }

    /// A storage finished its report and takes part.
    pub(super) fn activate(&self, peer: &Peer) -> Answer {
        self.lock().registry.activate(&peer.name, Instant::now())?;
        Ok(Response::Done)
    }

    /// Answers a heartbeat with the storage's commands.
    pub(super) fn heartbeat(&self, peer: &Peer, beat: Beat) -> Answer {
        let commands = self.lock().registry.heartbeat(
            &peer.name,
            beat.used,
            &beat.received,
            &beat.removed,
            &beat.bad,
            Instant::now(),
        );
        Ok(Response::Commands(commands))
    }

    pub(super) fn statfs(&self, state: &State) -> StatFs {
        let (capacity, free) = state.registry.space();
        let copies = state.registry.wanted().max(1) as u64;
        // Released blocks are reclaimed before a write fails, so they count as free.
        let free = (free + state.registry.garbage()).min(capacity);
        StatFs {
            capacity: capacity / copies,
            free: free / copies,
            inodes: state.ns.len() as u64,
            block_size: self.block_size,
        }
    }

    pub(super) fn status(&self, state: &State) -> ClusterStatus {
        let (under_replicated, missing) = state.registry.replication_health(state.ns.refs());
        let (log_syncs, log_sync_time) = state
            .log
            .as_ref()
            .map_or_else(Default::default, |log| log.syncs().totals());
        ClusterStatus {
            storages: state.registry.status(),
            replication: self.replication,
            block_size: self.block_size,
            inodes: state.ns.len() as u64,
            blocks: state.ns.refs().len() as u64,
            under_replicated,
            missing,
            garbage: state.registry.garbage(),
            sessions: state.sessions.len() as u64,
            open_files: state.sessions.open_files() as u64,
            orphans: state.ns.orphans() as u64,
            locks: state.locks.len() as u64,
            lock_waiters: state.locks.waiters() as u64,
            replicating: state.registry.replicating() as u64,
            log_written: state.log.as_ref().map_or(0, LogStore::written_end),
            log_durable: state.log.as_ref().map_or(0, LogStore::durable_end),
            log_syncs,
            log_sync_seconds: log_sync_time.as_secs_f64(),
            requests: self.requests.totals(),
        }
    }
}
