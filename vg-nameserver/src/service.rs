//! The nameserver's request handler: decodes a request, checks the caller's role, runs
//! the operation on the shared state, logs it durably, answers.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream};
use tracing::{debug, info, warn, Instrument};
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::ns::{
    ClusterStatus, Layout, Lock, LockKind, Placement, Request, Response, StatFs, Stored,
};
use vg_wire::rpc::{read_end, read_request, respond, Dialer, Peer, Target};
use vg_wire::{storage, BlockId, Ino, Location, Role, SetTime, Slice, Timestamp};

use crate::error::{refuse, Error};
use crate::locks::{Locks, Owner};
use crate::namespace::{Content, Namespace, Op};
use crate::registry::{Policy, Registry};
use crate::sessions::{self, Sessions};
use crate::wal::{DurableWaiter, Gate, Wal};
use crate::Config;
use crate::Durability;

type Answer = std::result::Result<Response, RemoteError>;

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
}

/// Longest a lock request waits before it answers `WouldBlock` and the client asks
/// again: well within the client's request timeout.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes an owner off the wait-for graph however its lock request ends (granted,
/// refused, or dropped because the client went away).
struct Waiting<'a> {
    service: &'a Service,
    who: Owner,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.service.lock().locks.stop_waiting(self.who);
    }
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
        if let Err(e) = self.apply_locked(state, unpins, &[]) {
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
        let span = tracing::debug_span!("request", op = op_name(&request));
        // A lock request that waits ends when its client goes away (the process was
        // interrupted, the mount stopped): nobody would release the lock it took.
        let waits = matches!(request, Request::Lock { wait: true, .. });
        let gone = send.stopped();
        async {
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
            respond(&mut send, answer).await;
        }
        .instrument(span)
        .await
    }

    async fn dispatch(&self, peer: &Peer, request: Request) -> Answer {
        use Request::*;
        match &request {
            Register { .. } | Report { .. } | Activate | Heartbeat { .. } => {
                peer.require(Role::Storage, op_name(&request))?
            }
            _ => peer.require(Role::Client, op_name(&request))?,
        }
        let now = Timestamp::now();
        match request {
            Lookup { parent, name } => self.read(|ns| {
                Ok(Response::Attr(
                    ns.get(ns.lookup(parent, &name)?)?.attr.clone(),
                ))
            }),
            Resolve { path } => {
                self.read(|ns| Ok(Response::Attr(ns.get(ns.resolve(&path)?)?.attr.clone())))
            }
            GetAttr { ino } => self.read(|ns| Ok(Response::Attr(ns.get(ino)?.attr.clone()))),
            Readlink { ino } => self.read(|ns| match &ns.get(ino)?.content {
                Content::Symlink { target } => Ok(Response::Target(target.clone())),
                _ => refuse(
                    ErrorCode::Invalid,
                    format!("inode {ino}: not a symbolic link"),
                ),
            }),
            ReadDir { ino, offset, limit } => self.read(|ns| {
                let (entries, more) =
                    ns.read_dir(ino, offset, limit.clamp(1, vg_wire::ns::MAX_PAGE))?;
                Ok(Response::Entries { entries, more })
            }),
            Mkdir {
                parent,
                name,
                perm,
                umask,
                uid,
                gid,
            } => {
                self.mutate(|ns| Op::Mkdir {
                    parent,
                    name,
                    ino: ns.next_ino(),
                    perm: ns.creation_perm(parent, perm, umask),
                    uid,
                    gid,
                    time: now,
                })
                .await
            }
            SetXattr {
                ino,
                name,
                value,
                mode,
            } => {
                self.mutate(|_| Op::SetXattr {
                    ino,
                    name,
                    value,
                    mode,
                    time: now,
                })
                .await
            }
            Session { id, open, locks } => {
                if open.len() + locks.len() > sessions::MAX_OPEN {
                    return refuse(
                        ErrorCode::TooBig,
                        format!(
                            "session {id:x}: {} open files reported, at most {}",
                            open.len(),
                            sessions::MAX_OPEN
                        ),
                    );
                }
                let now = Instant::now();
                let mut state = self.lock();
                // A session's first report after a start brings the locks it held
                // before (within the first lease, it gets them back); one this
                // nameserver no longer knows after that lapsed (they are lost). Later
                // reports are not the locks' record: one may leave before a lock is
                // granted and arrive after.
                let settling = state.sessions.settling(now).is_some();
                if settling && !state.sessions.has_reported(id) && !locks.is_empty() {
                    self.reclaim(&mut state, id, &locks);
                }
                let lost = !settling && !state.sessions.knows(id) && !locks.is_empty();
                if lost {
                    warn!(session = %format!("{id:x}"), locks = locks.len(), "a lapsed session reported locks; they are lost");
                }
                state.sessions.report(id, &open, now);
                if open.is_empty() && !state.locks.held_by(id) {
                    state.sessions.end(id);
                }
                self.unpin_unheld(&mut state);
                let ms = state.sessions.lease().as_millis() as u64;
                Ok(Response::Lease { ms, lost })
            }
            Lock {
                session,
                ino,
                lock,
                wait,
            } => self.lock_file(session, ino, lock, wait).await,
            TestLock { session, ino, lock } => {
                let state = self.lock();
                state.ns.get(ino)?;
                let who = Owner {
                    session,
                    owner: lock.owner,
                };
                Ok(Response::Lock(state.locks.conflict(ino, who, &lock)))
            }
            RemoveXattr { ino, name } => {
                self.mutate(|_| Op::RemoveXattr {
                    ino,
                    name,
                    time: now,
                })
                .await
            }
            Xattrs { ino } => self.read(|ns| Ok(Response::Xattrs(ns.xattrs(ino)?))),
            Mknod {
                parent,
                name,
                kind,
                perm,
                umask,
                uid,
                gid,
            } => {
                self.mutate(|ns| Op::Mknod {
                    parent,
                    name,
                    ino: ns.next_ino(),
                    kind,
                    perm: ns.creation_perm(parent, perm, umask),
                    uid,
                    gid,
                    time: now,
                })
                .await
            }
            Create {
                parent,
                name,
                perm,
                umask,
                uid,
                gid,
                exclusive,
            } => {
                let lookup_name = name.clone();
                let created = self
                    .mutate(|ns| Op::Create {
                        parent,
                        name,
                        ino: ns.next_ino(),
                        perm: ns.creation_perm(parent, perm, umask),
                        uid,
                        gid,
                        time: now,
                    })
                    .await;
                match created {
                    // Without O_EXCL an existing regular file is opened, whoever made it.
                    Err(e) if e.code == ErrorCode::Exists && !exclusive => self.read(|ns| {
                        let attr = &ns.get(ns.lookup(parent, &lookup_name)?)?.attr;
                        if attr.kind != vg_wire::FileKind::File {
                            return refuse(
                                ErrorCode::IsDir,
                                e.message.replace("File exists", "Is a directory"),
                            );
                        }
                        Ok(Response::Attr(attr.clone()))
                    }),
                    other => other,
                }
            }
            Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => {
                self.mutate(|ns| Op::Symlink {
                    parent,
                    name,
                    ino: ns.next_ino(),
                    target,
                    uid,
                    gid,
                    time: now,
                })
                .await
            }
            Link {
                ino,
                new_parent,
                new_name,
            } => {
                self.mutate(|_| Op::Link {
                    ino,
                    new_parent,
                    new_name,
                    time: now,
                })
                .await
            }
            // With the attributes of a file that lives on (other names, or pinned).
            Unlink { parent, name } => {
                self.mutate(|_| Op::Unlink {
                    parent,
                    name,
                    time: now,
                })
                .await
            }
            Rmdir { parent, name } => self
                .mutate(|_| Op::Rmdir {
                    parent,
                    name,
                    time: now,
                })
                .await
                .map(|_| Response::Done),
            Rename {
                parent,
                name,
                new_parent,
                new_name,
                noreplace,
            } => {
                self.mutate(|_| Op::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    noreplace,
                    time: now,
                })
                .await
            }
            SetAttr { ino, set } => self.mutate(|_| self.set_attr_op(ino, set, now)).await,
            StatFs => Ok(Response::StatFs(self.statfs(&self.lock()))),
            Sync => self.sync().await,
            Layout { ino } => self.layout(ino),
            PlaceBlock { id, len, exclude } => {
                if len == 0 || len > self.block_size {
                    return refuse(
                        ErrorCode::Invalid,
                        format!(
                            "block {id:?}: length {len} is outside 1..={}",
                            self.block_size
                        ),
                    );
                }
                let placed = match self.place(id, len, &exclude) {
                    // Deletes not yet on disk free nothing: once they are, try again.
                    Err(e) if e.code == ErrorCode::NoSpace => {
                        self.sync().await?;
                        self.place(id, len, &exclude)
                    }
                    other => other,
                };
                Ok(Response::Placement(placed?))
            }
            Commit {
                ino,
                size,
                slices,
                stored,
                set,
                sync,
            } => {
                self.check_stored(&stored, slices.iter().flat_map(|(_, new)| new))?;
                debug!(ino, size, blocks = slices.len(), by = %peer.name, "file written");
                // Blobs this client uploaded with `sync` are on disk; one the cluster
                // already held (no holders listed) may have been acknowledged unsynced
                // to another client moments ago, so it goes through the gate.
                let synced: HashSet<BlockId> = match sync {
                    true => stored
                        .iter()
                        .filter(|(_, _, holders)| !holders.is_empty())
                        .map(|(id, _, _)| *id)
                        .collect(),
                    false => HashSet::new(),
                };
                let blobs: Vec<BlockId> = slices
                    .iter()
                    .flat_map(|(_, new)| new.iter().map(|s| s.blob))
                    .filter(|blob| !synced.contains(blob))
                    .collect();
                let write = Op::Write {
                    ino,
                    size,
                    slices,
                    block_size: self.block_size,
                    time: now,
                };
                let set = set.map(|set| self.set_attr_op(ino, set, now));
                let ops = std::iter::once(write).chain(set).collect();
                self.mutate_after(|_| ops, &blobs, sync).await
            }
            Compact {
                ino,
                idx,
                prefix,
                merged,
                stored,
            } => {
                self.check_stored(&stored, &merged)?;
                debug!(
                    ino,
                    idx,
                    from = prefix.len(),
                    to = merged.len(),
                    "block compacted"
                );
                let blobs: Vec<BlockId> = merged.iter().map(|s| s.blob).collect();
                let op = Op::Compact {
                    ino,
                    idx,
                    prefix,
                    merged,
                    block_size: self.block_size,
                };
                self.mutate_after(|_| vec![op], &blobs, false).await
            }
            Status => Ok(Response::Status(self.status(&self.lock()))),
            KeepBlocks { ids } => {
                self.lock().registry.keep(&ids, Instant::now());
                Ok(Response::Done)
            }
            ListBlocks { after, limit } => {
                let state = self.lock();
                let (blocks, more) =
                    state
                        .registry
                        .list_blocks(state.ns.refs(), after, limit.clamp(1, 100_000));
                Ok(Response::Blocks { blocks, more })
            }
            Register {
                name,
                addr,
                capacity,
                used,
            } => {
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
            Report { blocks } => {
                let mut state = self.lock();
                let State { ns, registry, .. } = &mut *state;
                Ok(Response::Delete(registry.report(
                    &peer.name,
                    &blocks,
                    ns.refs(),
                    Instant::now(),
                )?))
            }
            Activate => {
                self.lock().registry.activate(&peer.name, Instant::now())?;
                Ok(Response::Done)
            }
            Heartbeat {
                used,
                received,
                removed,
                bad,
            } => {
                let commands = self.lock().registry.heartbeat(
                    &peer.name,
                    used,
                    &received,
                    &removed,
                    &bad,
                    Instant::now(),
                );
                Ok(Response::Commands(commands))
            }
        }
    }

    /// Takes back the locks a session held before this nameserver started.
    fn reclaim(&self, state: &mut State, session: u64, locks: &[(Ino, Lock)]) {
        for (ino, lock) in locks {
            let who = Owner {
                session,
                owner: lock.owner,
            };
            if state.locks.try_set(*ino, who, lock).is_err() {
                warn!(
                    ino,
                    "a reclaimed lock conflicts with one reclaimed before; not taken"
                );
            }
        }
        info!(session = %format!("{session:x}"), locks = locks.len(), "locks reclaimed");
    }

    /// Takes, changes or drops a byte-range lock; with `wait`, waits (up to
    /// [`LOCK_WAIT`]) while another owner holds a conflicting one, woken when a lock
    /// changes, and refuses a wait that would close a cycle of waits (a deadlock).
    async fn lock_file(&self, session: u64, ino: Ino, lock: Lock, wait: bool) -> Answer {
        if lock.start > lock.end {
            return refuse(
                ErrorCode::Invalid,
                format!(
                    "inode {ino}: lock range {}..={} is empty",
                    lock.start, lock.end
                ),
            );
        }
        let who = Owner {
            session,
            owner: lock.owner,
        };
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let _waiting = Waiting { service: self, who };
        let mut waited = false;
        loop {
            // Listening before looking, so that a change between the two is not missed.
            let changed = self.locks_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let settling = {
                let mut state = self.lock();
                let state = &mut *state;
                state.ns.get(ino)?;
                let now = Instant::now();
                state.sessions.touch(session, now);
                // A request without wait from the same owner (the mount's, after its
                // caller was interrupted) ends this wait, so that the wait cannot be
                // granted after that request's answer told the mount what it holds.
                if !wait {
                    state.locks.stop_waiting(who);
                } else if waited && !state.locks.is_waiting(who) {
                    return refuse(ErrorCode::WouldBlock, "the wait was given up");
                }
                // After a start, the locks of before are reclaimed first: none is
                // granted anew until the mounts had a lease to report theirs.
                let settling = state
                    .sessions
                    .settling(now)
                    .filter(|_| lock.kind != LockKind::Unlock);
                let taken = match settling {
                    Some(left) if !wait => {
                        return refuse(
                            ErrorCode::WouldBlock,
                            format!(
                            "inode {ino}: locks are being reclaimed after a restart (for {left:?})"
                        ),
                        )
                    }
                    Some(_) => Err(None),
                    None => state.locks.try_set(ino, who, &lock).map_err(Some),
                };
                let holder = match taken {
                    Ok(()) => {
                        self.locks_changed.notify_waiters();
                        return Ok(Response::Done);
                    }
                    Err(holder) => holder,
                };
                let locked = || {
                    format!(
                        "inode {ino}: bytes {}..={} are locked by another owner",
                        lock.start, lock.end
                    )
                };
                if !wait {
                    return refuse(ErrorCode::WouldBlock, locked());
                }
                if holder.is_some_and(|holder| state.locks.would_deadlock(who, holder)) {
                    return refuse(
                        ErrorCode::Deadlock,
                        format!("{}, which waits for a lock this owner holds", locked()),
                    );
                }
                state.locks.wait(who, ino, lock);
                waited = true;
                settling
            };
            // While settling, nothing wakes the waiter: it looks again now and then.
            let woken = match settling {
                Some(left) => {
                    tokio::time::timeout_at(deadline, tokio::time::sleep(left.min(LOCK_WAIT))).await
                }
                None => tokio::time::timeout_at(deadline, changed).await,
            };
            if woken.is_err() {
                return refuse(ErrorCode::WouldBlock, "still locked; ask again");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    fn read(&self, f: impl FnOnce(&Namespace) -> Answer) -> Answer {
        f(&self.lock().ns)
    }

    /// A `SetAttr` op with "now" resolved to the request's time.
    fn set_attr_op(&self, ino: Ino, mut set: vg_wire::SetAttr, now: Timestamp) -> Op {
        for time in [&mut set.atime, &mut set.mtime].into_iter().flatten() {
            if *time == SetTime::Now {
                *time = SetTime::At(now);
            }
        }
        Op::SetAttr {
            ino,
            set,
            block_size: self.block_size,
            time: now,
        }
    }

    /// Chooses storages for a new block; when none has room, first takes back the space
    /// of blocks that committed deletes released (those whose op is on disk).
    fn place(&self, id: BlockId, len: u32, exclude: &[String]) -> Result<Placement, RemoteError> {
        let mut state = self.lock();
        let State {
            ns, registry, wal, ..
        } = &mut *state;
        let referenced = ns.refs().contains_key(&id);
        match registry.place(id, len, exclude, referenced, Instant::now()) {
            Err(e) if e.code == ErrorCode::NoSpace => {
                let durable = wal.as_ref().map_or(0, Wal::durable_lsn);
                match registry.reclaim(ns.refs(), Instant::now(), durable) > 0 {
                    true => registry.place(id, len, exclude, referenced, Instant::now()),
                    false => Err(e),
                }
            }
            other => other,
        }
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
            let wal = state.wal.as_ref().ok_or_else(|| {
                RemoteError::new(ErrorCode::Unavailable, "nameserver is shutting down")
            })?;
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
        let Applied {
            attr,
            lsn,
            waiter,
            refused,
        } = {
            let mut state = self.lock();
            let ops = build(&state.ns);
            self.apply_locked(&mut state, ops, blobs)?
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

    /// Applies ops in order and appends them to the log, under the state lock. The file
    /// an unlink or a rename removes the last name of is pinned first if a session holds
    /// it open, so that it stays readable and writable by inode.
    fn apply_locked(
        &self,
        state: &mut State,
        ops: Vec<Op>,
        blobs: &[BlockId],
    ) -> Result<Applied, RemoteError> {
        let State {
            ns,
            wal,
            registry,
            sessions,
            ..
        } = state;
        let wal = wal.as_mut().ok_or_else(|| {
            RemoteError::new(ErrorCode::Unavailable, "nameserver is shutting down")
        })?;
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

    /// Records where the client saw new blobs stored, then refuses a change naming a blob
    /// the cluster no longer holds (collected while the client was slow to commit): it
    /// must be uploaded again, not referenced.
    fn check_stored<'a>(
        &self,
        stored: &[Stored],
        slices: impl IntoIterator<Item = &'a Slice>,
    ) -> Result<(), RemoteError> {
        let mut state = self.lock();
        for (id, len, holders) in stored {
            state.registry.stored(*id, *len, holders);
        }
        match slices
            .into_iter()
            .find(|s| !state.registry.has_any_location(&s.blob))
        {
            Some(lost) => refuse(
                ErrorCode::Unavailable,
                format!("blob {:?} has no replica; upload it again", lost.blob),
            ),
            None => Ok(()),
        }
    }

    fn layout(&self, ino: Ino) -> Answer {
        let state = self.lock();
        let inode = state.ns.get(ino)?;
        let Content::File { blocks } = &inode.content else {
            return refuse(ErrorCode::IsDir, format!("inode {ino}: not a regular file"));
        };
        let mut seen = std::collections::HashSet::new();
        let locations = blocks
            .iter()
            .flatten()
            .filter(|slice| seen.insert(slice.blob))
            .map(|slice| (slice.blob, state.registry.live_locations(&slice.blob)))
            .collect();
        Ok(Response::Layout(Layout {
            attr: inode.attr.clone(),
            block_size: self.block_size,
            blocks: blocks.clone(),
            locations,
        }))
    }

    fn statfs(&self, state: &State) -> StatFs {
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

    fn status(&self, state: &State) -> ClusterStatus {
        let (under_replicated, missing) = state.registry.replication_health(state.ns.refs());
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
        }
    }
}

fn op_name(request: &Request) -> &'static str {
    use Request::*;
    match request {
        Lookup { .. } => "lookup",
        Resolve { .. } => "resolve",
        GetAttr { .. } => "getattr",
        SetAttr { .. } => "setattr",
        Mkdir { .. } => "mkdir",
        Create { .. } => "create",
        Mknod { .. } => "mknod",
        SetXattr { .. } => "setxattr",
        RemoveXattr { .. } => "removexattr",
        Xattrs { .. } => "xattrs",
        Symlink { .. } => "symlink",
        Readlink { .. } => "readlink",
        Link { .. } => "link",
        Unlink { .. } => "unlink",
        Rmdir { .. } => "rmdir",
        Rename { .. } => "rename",
        ReadDir { .. } => "readdir",
        StatFs => "statfs",
        Sync => "sync",
        Layout { .. } => "layout",
        PlaceBlock { .. } => "place_block",
        Commit { .. } => "commit",
        Compact { .. } => "compact",
        Status => "status",
        ListBlocks { .. } => "list_blocks",
        KeepBlocks { .. } => "keep_blocks",
        Register { .. } => "register",
        Report { .. } => "report",
        Activate => "activate",
        Heartbeat { .. } => "heartbeat",
        Session { .. } => "session",
        Lock { .. } => "lock",
        TestLock { .. } => "test_lock",
    }
}
