//! The nameserver's Prometheus metrics: what it registers, and how each scrape reads
//! the service's state into it.

use std::sync::{Arc, Mutex, Weak};

use vg_wire::metrics::prometheus_client::registry::Registry;
use vg_wire::metrics::{Gauges, LabelledGauges};

use super::Service;
use crate::error::Error;

/// The gauges a scrape sets from the service.
struct Figures {
    namespace: Gauges<14>,
    group: Gauges<4>,
    storages: LabelledGauges<5>,
}

impl Figures {
    fn register(registry: &mut Registry) -> Self {
        let namespace = Gauges::register(
            registry,
            [
                ("vg_inodes", "Inodes in the namespace"),
                ("vg_blocks", "Blobs files reference"),
                (
                    "vg_blocks_under_replicated",
                    "Blobs with fewer than R live copies: the re-replication backlog",
                ),
                ("vg_blocks_missing", "Blobs with no live copy"),
                (
                    "vg_replications",
                    "Copies of under-replicated blobs under way",
                ),
                (
                    "vg_garbage_bytes",
                    "Bytes of blobs no file references, not reclaimed yet",
                ),
                ("vg_sessions", "Mount sessions with open files or locks"),
                ("vg_open_files", "Files open on some mount"),
                (
                    "vg_orphans",
                    "Files without a name kept for their open descriptors",
                ),
                ("vg_locks", "Locks held"),
                ("vg_lock_waiters", "Owners waiting for a lock"),
                (
                    "vg_wal_written_lsn",
                    "Last change appended to the write-ahead log",
                ),
                (
                    "vg_wal_durable_lsn",
                    "Last change of the write-ahead log on disk",
                ),
                (
                    "vg_wal_gate_storage_syncs",
                    "Syncs storages made before the log synced entries naming their unsynced blobs",
                ),
            ],
        );
        let group = Gauges::register(
            registry,
            [
                (
                    "vg_group_leader",
                    "1 while this member leads the nameserver group",
                ),
                ("vg_group_term", "The group's term as this member knows it"),
                ("vg_group_voters", "Members of the group that vote"),
                (
                    "vg_group_applied",
                    "Entries of the group's log this member applied",
                ),
            ],
        );
        let storages = LabelledGauges::register(
            registry,
            "storage",
            [
                ("vg_storage_up", "1 while the storage is active"),
                ("vg_storage_capacity_bytes", "Bytes the storage may hold"),
                ("vg_storage_used_bytes", "Bytes of blobs the storage holds"),
                (
                    "vg_storage_garbage_bytes",
                    "Of those, bytes of blobs no file references",
                ),
                ("vg_storage_blocks", "Blobs the storage holds"),
            ],
        );
        Figures {
            namespace,
            group,
            storages,
        }
    }

    /// Sets every gauge from the service as it is now.
    fn refresh(&self, service: &Weak<Service>) {
        let Some(service) = service.upgrade() else {
            return;
        };
        let s = service.status(&service.lock());
        self.namespace.set([
            s.inodes,
            s.blocks,
            s.under_replicated,
            s.missing,
            s.replicating,
            s.garbage,
            s.sessions,
            s.open_files,
            s.orphans,
            s.locks,
            s.lock_waiters,
            s.log_written,
            s.log_durable,
            service
                .gate_syncs
                .load(std::sync::atomic::Ordering::Relaxed),
        ]);
        let raft = service.raft().metrics().borrow().clone();
        self.group.set([
            u64::from(raft.current_leader == Some(service.id)),
            raft.current_term,
            raft.membership_config.membership().voter_ids().count() as u64,
            raft.last_applied.map_or(0, |l| l.index + 1),
        ]);
        self.storages.set(s.storages.into_iter().map(|storage| {
            let up = u64::from(storage.state == vg_wire::ns::StorageState::Active);
            let values = [
                up,
                storage.capacity,
                storage.used,
                storage.garbage,
                storage.blocks,
            ];
            (storage.name, values)
        }));
    }
}

impl Service {
    /// Serves Prometheus metrics at `addr`: requests by operation and outcome with
    /// their latency, the log's sync latency, and gauges of the namespace, sessions,
    /// locks, replication, each storage and the nameserver group, read at each scrape;
    /// returns the task serving them.
    pub async fn serve_metrics(
        self: &Arc<Self>,
        addr: std::net::SocketAddr,
    ) -> crate::Result<tokio::task::JoinHandle<()>> {
        let mut registry = Registry::default();
        self.requests.register(&mut registry);
        if let Some(log) = &self.lock().log {
            log.syncs().register(
                &mut registry,
                "vg_wal_sync_seconds",
                "Time the write-ahead log's syncs take (a mark's write and fdatasync)",
            );
        }
        let figures = Figures::register(&mut registry);
        let service = Arc::downgrade(self);
        let refresh = move || figures.refresh(&service);
        vg_wire::metrics::serve(addr, Arc::new(Mutex::new(registry)), refresh)
            .await
            .map_err(|e| Error::Io {
                context: format!("serve metrics on {addr}"),
                source: e,
            })
    }
}
