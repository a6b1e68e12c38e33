//! The nameserver's request handler: runs each operation (one handler each, in the
//! modules below) on the shared state, logs changes, answers once they are acknowledged.

mod files;
mod locking;
mod names;
mod storages;

use files::Written;
use names::Making;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storages::Beat;

use quinn::{RecvStream, SendStream};
use tracing::{debug, info, warn, Instrument};
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::ns::{Request, Response};
use vg_wire::rpc::{read_end, read_request, respond, Dialer, Operation, Peer, Target};
use vg_wire::{storage, BlockId, Ino, Location, Timestamp};

use crate::error::{refuse, Error};
use crate::locks::Locks;
use crate::namespace::{Namespace, Op};
use crate::registry::{Policy, Registry};
use crate::sessions::Sessions;
use crate::wal::{DurableWaiter, Gate, Wal};
use crate::Config;
use crate::Durability;

type Answer = std::result::Result<Response, RemoteError>;

/// The refusal of a change after the log was closed.
fn shutting_down() -> RemoteError {
    RemoteError::new(ErrorCode::Unavailable, "nameserver is shutting down")
}

/// A change a client numbered ([`Request::Once`]): which client, which number.
#[derive(Clone, Copy, Debug)]
struct Numbered {
    client: u64,
    seq: u64,
}

impl Numbered {
    /// Change `seq` of the client that calls itself `client`, known by its certificate's
    /// name too: a client cannot take another certificate's numbers (and have its
    /// changes answered without being applied).
    fn of(peer: &Peer, client: u64, seq: u64) -> Self {
        let mut named = peer.name.as_bytes().to_vec();
        named.extend_from_slice(&client.to_le_bytes());
        let hash = BlockId::of(&named).0;
        let client = u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"));
        Numbered { client, seq }
    }
}

tokio::task_local! {
    /// The number of the change the request being served carries, if it does. Task-local
    /// rather than passed down: only [`Service::mutate_after`], under every handler that
    /// changes the namespace, reads it.
    static NUMBERED: Option<Numbered>;
}

struct State {
    ns: Namespace,
    wal: Option<Wal>,
    registry: Registry,
    sessions: Sessions,
    locks: Locks,
}

/// What applying ops under the lock leaves to do after it: the answer's attributes, the
/// last op's log position and how to wait for it, and a refusal that stopped the ops.
struct Applied {
    attr: Option<vg_wire::Attr>,
    lsn: Option<u64>,
    waiter: DurableWaiter,
    refused: Option<RemoteError>,
}

/// Shared state of a running nameserver.
pub struct Service {
    state: Mutex<State>,
    block_size: u32,
    replication: u32,
    snapshot_bytes: u64,
    durability: Durability,
    /// Asks storages to sync (the log's gate).
    dialer: Dialer,
    /// Set when the nameserver stops: the gate gives up asking.
    stopped: std::sync::atomic::AtomicBool,
    /// Wakes the lock requests waiting: some lock changed or went.
    locks_changed: tokio::sync::Notify,
    /// Requests answered, for `vgctl status` and `--metrics`.
    requests: vg_wire::metrics::Requests,
}

impl Service {
    /// Recovers the namespace from the metadata directory.
    pub fn open(config: &Config, dialer: Dialer) -> crate::Result<Self> {
        let boot = crate::wal::boot_id(&config.boot_id_file)?;
        let (mut wal, ns, recovery) = Wal::open(&config.meta_dir, boot)?;
        info!(
            snapshot_lsn = recovery.snapshot_lsn,
            replayed = recovery.replayed,
            dropped_bytes = recovery.dropped_bytes,
            unmarked = recovery.unmarked,
            inodes = ns.len(),
            "metadata recovered"
        );
        if recovery.replayed > 0 || recovery.dropped_bytes > 0 || recovery.unmarked > 0 {
            wal.snapshot(&ns)?;
        }
        let policy = Policy {
            replication: config.replication,
            heartbeat_timeout: config.heartbeat_timeout,
            gc_grace: config.gc_grace,
            replication_timeout: Duration::from_secs(30).max(config.heartbeat_timeout * 3),
            scan_per_tick: crate::registry::SCAN_PER_TICK,
        };
        Ok(Service {
            state: Mutex::new(State {
                ns,
                wal: Some(wal),
                registry: Registry::new(policy),
                sessions: Sessions::new(config.session_lease, Instant::now()),
                locks: Locks::default(),
            }),
            block_size: config.block_size,
            replication: config.replication,
            snapshot_bytes: config.snapshot_bytes,
            durability: config.durability,
            dialer,
            stopped: Default::default(),
            locks_changed: Default::default(),
            requests: Default::default(),
        })
    }

    /// Has the log ask the storages a record depends on to sync before it syncs the
    /// record.
    pub fn install_gate(self: &Arc<Self>) {
        let service = Arc::downgrade(self);
        let gate: Gate = Arc::new(move |needs| {
            let service = service.clone();
            Box::pin(async move {
                match service.upgrade() {
                    Some(service) => service.sync_storages(needs).await,
                    None => false,
                }
            })
        });
        if let Some(wal) = &self.lock().wal {
            wal.set_gate(gate);
        }
    }

    /// Stops asking storages to sync (the endpoint is closing).
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Closes the log (stops its flusher).
    pub fn close(&self) {
        self.state.lock().expect("state lock").wal.take();
    }

    /// Runs the registry's periodic pass, and ends sessions whose lease lapsed, forever.
    pub async fn tick_loop(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let mut state = self.state.lock().expect("state lock");
            let State {
                ns,
                registry,
                wal,
                sessions,
                locks,
            } = &mut *state;
            let durable = wal.as_ref().map_or(0, Wal::durable_lsn);
            registry.tick(ns.refs(), Instant::now(), durable);
            let lapsed = sessions.expire(Instant::now());
            if !lapsed.is_empty() {
                info!(
                    lapsed = lapsed.len(),
                    "sessions lapsed; their open files and locks are released"
                );
                if lapsed
                    .iter()
                    .fold(false, |any, id| locks.release_session(*id) | any)
                {
                    self.locks_changed.notify_waiters();
                }
            }
            self.unpin_unheld(&mut state);
        }
    }

    /// Unpins the files no session holds open any more: those without a name left go.
    /// Nobody waits for these records: a crash before them leaves files pinned, and the
    /// next start unpins them again.
    fn unpin_unheld(&self, state: &mut State) {
        let unpins: Vec<Op> = state
            .sessions
            .unheld(state.ns.pinned(), Instant::now())
            .into_iter()
            .map(|ino| Op::Unpin { ino })
            .collect();
        if unpins.is_empty() {
            return;
        }
        debug!(files = unpins.len(), "open files released");
        if let Err(e) = self.apply_locked(state, unpins, &[], None) {
            warn!(error = %e.message, "open files not released");
        }
    }

    /// Serves one request stream.
    pub async fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let Some(request) = read_request::<Request, Response>(&peer, &mut send, &mut recv).await
        else {
            return;
        };
        read_end(&mut recv).await;
        let (request, numbered) = match request {
            Request::Once {
                client,
                seq,
                request,
            } => (*request, Some(Numbered::of(&peer, client, seq))),
            request => (request, None),
        };
        let span = tracing::debug_span!("request", op = request.name(), peer = %peer.name);
        // A lock request that waits ends when its client goes away (the process was
        // interrupted, the mount stopped): nobody would release the lock it took.
        let waits = matches!(request, Request::Lock { wait: true, .. });
        let gone = send.stopped();
        let (op, started) = (request.name(), Instant::now());
        let served = async {
            let answer = match waits {
                true => tokio::select! {
                    answer = self.dispatch(&peer, request) => answer,
                    _ = gone => return debug!("client went away; lock request dropped"),
                },
                false => self.dispatch(&peer, request).await,
            };
            if let Err(e) = &answer {
                debug!(code = ?e.code, error = %e.message, "refused");
            }
            let outcome = answer.as_ref().map_or_else(|e| e.code.name(), |_| "ok");
            self.requests.record(op, outcome, started.elapsed());
            respond(&mut send, answer).await;
        };
        NUMBERED.scope(numbered, served).instrument(span).await
    }

    /// Serves Prometheus metrics at `addr`: requests by operation and outcome with
    /// their latency, the log's sync latency, and gauges of the namespace, sessions,
    /// locks, replication and each storage, read at each scrape.
    pub async fn serve_metrics(self: &Arc<Self>, addr: std::net::SocketAddr) -> crate::Result<()> {
        use vg_wire::metrics::{Gauges, LabelledGauges};
        let mut registry = vg_wire::metrics::prometheus_client::registry::Registry::default();
        self.requests.register(&mut registry);
        if let Some(wal) = &self.lock().wal {
            wal.syncs().register(
                &mut registry,
                "vg_wal_sync_seconds",
                "Time the write-ahead log's syncs take (a mark's write and fdatasync)",
            );
        }
        let gauges = Gauges::register(
            &mut registry,
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
            ],
        );
        let storages = LabelledGauges::register(
            &mut registry,
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
        let registry = Arc::new(Mutex::new(registry));
        let service = Arc::downgrade(self);
        let refresh = move || {
            let Some(service) = service.upgrade() else {
                return;
            };
            let s = service.status(&service.lock());
            gauges.set([
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
            ]);
            storages.set(s.storages.into_iter().map(|storage| {
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
        };
        vg_wire::metrics::serve(addr, registry, refresh)
            .await
            .map_err(|e| Error::Io {
                context: format!("serve metrics on {addr}"),
                source: e,
            })
    }

    /// Runs a request (its role was checked at the front door) by its operation's
    /// handler: names and attributes in `names`, blocks in `files`, storages in
    /// `storages`, sessions and locks in `locking`.
    async fn dispatch(&self, peer: &Peer, request: Request) -> Answer {
        use Request::*;
        let now = Timestamp::now();
        match request {
            Lookup { parent, name } => self.lookup(parent, &name),
            Resolve { path } => self.resolve(&path),
            GetAttr { ino } => self.get_attr(ino),
            Readlink { ino } => self.readlink(ino),
            ReadDir { ino, offset, limit } => self.read_dir(ino, offset, limit),
            Xattrs { ino } => self.xattrs(ino),
            #[rustfmt::skip]
            Mkdir { parent, name, perm, umask, uid, gid } => {
                self.made(self.mkdir(parent, name, Making { perm, umask, uid, gid }, now).await)
            },
            #[rustfmt::skip]
            Create { parent, name, perm, umask, uid, gid, exclusive } => {
                let how = Making { perm, umask, uid, gid };
                self.made(self.create(parent, name, how, exclusive, now).await)
            }
            #[rustfmt::skip]
            Mknod { parent, name, kind, perm, umask, uid, gid } => {
                let how = Making { perm, umask, uid, gid };
                self.made(self.mknod(parent, name, kind, how, now).await)
            }
            #[rustfmt::skip]
            Symlink { parent, name, target, uid, gid } => {
                self.made(self.symlink(parent, name, target, uid, gid, now).await)
            },
            #[rustfmt::skip]
            Link { ino, new_parent, new_name } => self.link(ino, new_parent, new_name, now).await,
            Unlink { parent, name } => self.unlink(parent, name, now).await,
            Rmdir { parent, name } => self.rmdir(parent, name, now).await,
            #[rustfmt::skip]
            Rename { parent, name, new_parent, new_name, noreplace } => {
                self.rename(parent, name, new_parent, new_name, noreplace, now).await
            },
            SetAttr { ino, set } => self.set_attr(ino, set, now).await,
            #[rustfmt::skip]
            SetXattr { ino, name, value, mode } => self.set_xattr(ino, name, value, mode, now).await,
            RemoveXattr { ino, name } => self.remove_xattr(ino, name, now).await,
            StatFs => Ok(Response::StatFs(self.statfs(&self.lock()))),
            Sync => self.sync().await,
            Layout { ino } => self.layout(ino),
            #[rustfmt::skip]
            PlaceBlock { id, len, exclude, prefer } => self.place_block(id, len, &exclude, &prefer).await,
            #[rustfmt::skip]
            Commit { ino, size, slices, stored, set, sync } => {
                let written = Written { ino, size, slices, stored, set, sync };
                self.commit(peer, written, now).await
            }
            #[rustfmt::skip]
            Compact { ino, idx, prefix, merged, stored } => {
                self.compact((ino, idx), prefix, merged, stored).await
            },
            Status => Ok(Response::Status(self.status(&self.lock()))),
            KeepBlocks { ids } => self.keep_blocks(&ids),
            ListBlocks { after, limit } => self.list_blocks(after, limit),
            #[rustfmt::skip]
            Register { name, addr, capacity, used } => {
                self.register(peer, name, addr, capacity, used)
            },
            Report { blocks } => self.report(peer, &blocks),
            Activate => self.activate(peer),
            #[rustfmt::skip]
            Heartbeat { used, received, removed, bad } => {
                self.heartbeat(peer, Beat { used, received, removed, bad })
            },
            Session { id, open, locks } => self.session(id, open, locks),
            #[rustfmt::skip]
            Lock { session, ino, lock, wait } => self.lock_file(session, ino, lock, wait).await,
            TestLock { session, ino, lock } => self.test_lock(session, ino, lock),
            Once { .. } => refuse(
                ErrorCode::Invalid,
                "a numbered change holds another numbered change",
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    fn read(&self, f: impl FnOnce(&Namespace) -> Answer) -> Answer {
        f(&self.lock().ns)
    }

    /// Waits (at most `within`) until every change acknowledged so far is marked and on
    /// disk: what a clean stop does while the storages can still be asked to sync, so
    /// that a reboot after it keeps everything.
    pub async fn settle(&self, within: Duration) {
        match tokio::time::timeout(within, self.sync()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "log not synced at stop"),
            Err(_) => warn!(
                "log not synced at stop: storages did not answer; a reboot now would drop the last changes"
            ),
        }
    }

    /// Answers once every change acknowledged so far is on disk.
    async fn sync(&self) -> Answer {
        let (lsn, waiter) = {
            let state = self.lock();
            let wal = state.wal.as_ref().ok_or_else(shutting_down)?;
            (wal.last_lsn(), wal.waiter())
        };
        waiter.wait(lsn).await.map_err(|e: Error| e.to_remote())?;
        Ok(Response::Done)
    }

    /// Applies an op, logs it, and answers with the inode's attributes once it is
    /// acknowledged (written to the log, or synced under `--durability strict`).
    async fn mutate(&self, build: impl FnOnce(&Namespace) -> Op) -> Answer {
        self.mutate_ops(|ns| vec![build(ns)]).await
    }

    /// Applies ops in order and logs them; answers once they are acknowledged, with the
    /// attributes of the last one's inode. Each op is whole: if one is refused, those
    /// before it stand and the refusal is the answer.
    async fn mutate_ops(&self, build: impl FnOnce(&Namespace) -> Vec<Op>) -> Answer {
        self.mutate_after(build, &[], false).await
    }

    /// [`Service::mutate_ops`] of ops naming `blobs` that storages may not have synced
    /// yet: the log is not synced before their holders sync them. With `durable`, the
    /// answer waits until the ops are on disk.
    async fn mutate_after(
        &self,
        build: impl FnOnce(&Namespace) -> Vec<Op>,
        blobs: &[BlockId],
        durable: bool,
    ) -> Answer {
        let numbered = NUMBERED.try_with(|n| *n).ok().flatten();
        let Applied {
            attr,
            lsn,
            waiter,
            refused,
        } = {
            let mut state = self.lock();
            match numbered.and_then(|n| Some((n, state.ns.answered().get(n.client, n.seq)?))) {
                Some((n, ino)) => Self::answer_again(&state, n, ino)?,
                None => {
                    let ops = build(&state.ns);
                    self.apply_locked(&mut state, ops, blobs, numbered)?
                }
            }
        };
        if let Some(lsn) = lsn {
            match durable || self.durability == Durability::Strict {
                true => waiter.wait(lsn).await,
                false => waiter.written(lsn).await,
            }
            .map_err(|e: Error| e.to_remote())?;
        }
        if let Some(refusal) = refused {
            return Err(refusal);
        }
        Ok(attr.map(Response::Attr).unwrap_or(Response::Done))
    }

    /// The answer to a repeat of a numbered change that was applied, its answer naming
    /// `ino`: the inode as it is now. Given once the log has what the first one logged.
    fn answer_again(
        state: &State,
        numbered: Numbered,
        ino: Option<Ino>,
    ) -> Result<Applied, RemoteError> {
        let wal = state.wal.as_ref().ok_or_else(shutting_down)?;
        debug!(
            client = numbered.client,
            seq = numbered.seq,
            "change sent again: answered as the first time"
        );
        let attr = match ino {
            Some(ino) => Some(state.ns.get(ino)?.attr.clone()),
            None => None,
        };
        Ok(Applied {
            attr,
            lsn: Some(wal.last_lsn()),
            waiter: wal.waiter(),
            refused: None,
        })
    }

    /// Applies ops in order and appends them to the log, under the state lock, and
    /// then, if they were a client's numbered change and none was refused, the record
    /// that it was applied. The file an unlink or a rename removes the last name of is
    /// pinned first if a session holds it open, so that it stays readable and writable
    /// by inode.
    fn apply_locked(
        &self,
        state: &mut State,
        ops: Vec<Op>,
        blobs: &[BlockId],
        numbered: Option<Numbered>,
    ) -> Result<Applied, RemoteError> {
        let State {
            ns,
            wal,
            registry,
            sessions,
            ..
        } = state;
        let wal = wal.as_mut().ok_or_else(shutting_down)?;
        let needs: BTreeSet<String> = blobs
            .iter()
            .flat_map(|blob| registry.live_locations(blob))
            .map(|l| l.name)
            .collect();
        let (mut last, mut lsn, mut refused) = (None, None, None);
        for op in ops {
            // Only while some file is open anywhere: an unlink costs no lookup more.
            let pin = (sessions.open_files() > 0)
                .then(|| ns.unlinks(&op))
                .flatten()
                .filter(|ino| sessions.holds(*ino) && !ns.pinned().contains(ino))
                .map(|ino| Op::Pin { ino });
            for op in pin.iter().chain([&op]) {
                match ns.apply(op) {
                    Ok(ino) => {
                        lsn = Some(
                            wal.append_after(op, needs.clone())
                                .map_err(|e| e.to_remote())?,
                        );
                        last = Some(ino);
                    }
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if refused.is_some() {
                break;
            }
        }
        if let (Some(n), true, None) = (numbered, lsn.is_some(), &refused) {
            // After the ops: a crash between them loses the record, not the ops, and a
            // repeat is then applied again, as without numbers; never the other way.
            let op = Op::Applied {
                client: n.client,
                seq: n.seq,
                ino: last,
            };
            ns.apply(&op)?;
            lsn = Some(wal.append(&op).map_err(|e| e.to_remote())?);
        }
        registry.released(ns.take_released(), Instant::now(), lsn.unwrap_or(0));
        if wal.wants_snapshot(self.snapshot_bytes) {
            if let Err(e) = wal.snapshot(ns) {
                tracing::error!(error = %e, "snapshot failed; the log keeps growing");
            }
        }
        let attr = last.and_then(|ino: Ino| ns.get(ino).ok().map(|i| i.attr.clone()));
        Ok(Applied {
            attr,
            lsn,
            waiter: wal.waiter(),
            refused,
        })
    }

    /// Has each storage in `needs` that is still active sync what it acknowledged;
    /// returns true once all did (retrying those that failed to answer) or are no longer
    /// active (their copies are re-made elsewhere, from copies already synced), false if
    /// the nameserver stopped meanwhile.
    pub async fn sync_storages(&self, mut needs: BTreeSet<String>) -> bool {
        use std::sync::atomic::Ordering;
        while !self.stopped.load(Ordering::Acquire) {
            let targets: Vec<Location> = {
                let state = self.lock();
                needs
                    .iter()
                    .filter_map(|name| state.registry.active_location(name))
                    .collect()
            };
            if targets.is_empty() {
                return true;
            }
            let mut calls = tokio::task::JoinSet::new();
            for target in targets {
                let dialer = self.dialer.clone();
                calls.spawn(async move {
                    let answer = dialer
                        .call::<_, storage::Response>(
                            &Target::storage(&target),
                            &storage::Request::Sync,
                        )
                        .await;
                    (target.name, answer)
                });
            }
            while let Some(Ok((name, answer))) = calls.join_next().await {
                match answer {
                    Ok(storage::Response::Synced) => {
                        needs.remove(&name);
                    }
                    other => {
                        warn!(storage = %name, answer = ?other, "storage did not sync; asking again")
                    }
                }
            }
            if needs.is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}
