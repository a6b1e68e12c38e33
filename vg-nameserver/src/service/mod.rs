//! The nameserver's request handler: runs each operation (one handler each, in the
//! modules below) on the shared state, logs changes, answers once they are acknowledged.

mod files;
mod gate;
mod group;
mod locking;
mod machine;
mod metrics;
mod names;
mod raced;
mod storages;

use files::Written;
use names::Making;
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use storages::Beat;

use quinn::{RecvStream, SendStream};
use tracing::{debug, info, warn, Instrument};
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::ns::{Request, Response};
use vg_wire::rpc::{at_end, read_request, reply, Dialer, Operation, Peer};
use vg_wire::{BlockId, Ino, Location, Timestamp};

use crate::error::{refuse, Error};
use crate::locks::Locks;
use crate::log::{Capture, LogStore};
use crate::namespace::{Namespace, Op, Release};
use crate::raft::{Committed, LogId, Membership, NodeId, Outcome, Proposal, Raft};
use crate::registry::{Policy, Registry};
use crate::sessions::Sessions;
use crate::Config;
use crate::Durability;

pub(crate) use machine::Machine;

type Answer = std::result::Result<Response, RemoteError>;

/// The refusal of a change after the log was closed: another member (or this one,
/// restarted) will take it.
fn shutting_down() -> RemoteError {
    RemoteError::new(ErrorCode::NotLeader, "nameserver is shutting down")
}

/// Has the log sync the entries about to be proposed without lingering: someone waits
/// for them to be on disk. Before proposing, while the entry is not yet written, so that
/// the sync starts as soon as it is.
fn hurry_next(state: &State) {
    if let Some(log) = &state.log {
        log.expect_next();
    }
}

/// The refusal of a request by a member that does not lead the group (or not yet).
fn not_leading() -> RemoteError {
    RemoteError::new(
        ErrorCode::NotLeader,
        "this nameserver does not lead its group (not yet, or no longer); ask the leader",
    )
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
    /// The log; `None` once closed.
    log: Option<LogStore>,
    registry: Registry,
    sessions: Sessions,
    locks: Locks,
    /// The last entry of the log applied to `ns` (a leader's `ns` has its proposals
    /// after it as well).
    applied: Option<LogId>,
    /// The group's membership as of `applied`.
    membership: Membership,
    /// This member's proposals applied to `ns` and not yet given back by the log, in
    /// order.
    proposed: VecDeque<Proposed>,
    /// Number of the next proposal.
    next_proposal: u64,
    /// The term in which this member leads the group, once it has applied every entry
    /// earlier leaders left: only then does it serve.
    leading: Option<u64>,
    /// A snapshot taken and not yet written: it waits for its entries to settle.
    capture: Option<Capture>,
}

/// What the leader knows of its majority.
#[derive(Default)]
struct Quorum {
    /// The group has no other voter: this member is its majority.
    alone: bool,
    /// When a majority last acknowledged it (its own log and the others' replies).
    acked: Option<Instant>,
}

/// A proposal applied by its proposer: its number, and the blobs its ops released (to
/// be reclaimed once its entry is on disk).
struct Proposed {
    seq: u64,
    released: Vec<(BlockId, Release)>,
}

/// What applying ops under the lock leaves to do after it: the answer's attributes, the
/// proposal to wait for, and a refusal that stopped the ops.
struct Applied {
    attr: Option<vg_wire::Attr>,
    proposal: Option<Proposing>,
    refused: Option<RemoteError>,
}

/// A proposal on its way: where its commit is announced, and the log to wait on for
/// its sync.
struct Proposing {
    committed: Committed,
    log: LogStore,
}

/// Shared state of a running nameserver.
pub struct Service {
    /// This member's number in the group.
    id: NodeId,
    /// The group; set once at start, right after the service.
    raft: OnceLock<Raft>,
    /// Mirrors [`State::leading`] for the front door.
    leading: tokio::sync::watch::Sender<Option<u64>>,
    /// When a majority last acknowledged this leader.
    quorum: Mutex<Quorum>,
    state: Mutex<State>,
    /// The registry's rules, for the fresh registry of each leadership.
    policy: Policy,
    /// How long a session report holds.
    session_lease: Duration,
    block_size: u32,
    replication: u32,
    snapshot_bytes: u64,
    durability: Durability,
    /// Asks storages to sync (the log's gate).
    dialer: Dialer,
    /// Where the storages were when this member last asked the leader (a follower's
    /// gate: storages report to the leader only).
    storages_seen: Mutex<std::collections::HashMap<String, Location>>,
    /// Syncs the log's gate had storages make, for `--metrics`.
    gate_syncs: std::sync::atomic::AtomicU64,
    /// Set when the nameserver stops: the gate gives up asking.
    stopped: std::sync::atomic::AtomicBool,
    /// Wakes the lock requests waiting: some lock changed or went.
    locks_changed: tokio::sync::Notify,
    /// Requests answered, for `vgctl status` and `--metrics`.
    requests: vg_wire::metrics::Requests,
    /// Keeps the thread polling between requests (see [`vg_wire::poll`]).
    pub(crate) poller: Arc<vg_wire::poll::Poller>,
    /// Wakes the check of raced writes: one was committed.
    raced_written: tokio::sync::Notify,
    /// A layout waits for a raced write: check them all now.
    raced_wanted: std::sync::atomic::AtomicBool,
    /// Counts the rounds of the raced writes' check that settled some: a layout naming
    /// an unchecked blob waits for the next.
    raced_settled: tokio::sync::watch::Sender<u64>,
}

impl Service {
    /// Opens the metadata directory: the log, and the namespace of the last snapshot
    /// (openraft then applies the entries after it).
    pub fn open(config: &Config, dialer: Dialer) -> crate::Result<(Self, LogStore)> {
        let boot = crate::log::boot_id(&config.boot_id_file)?;
        let strict = config.durability == Durability::Strict;
        let (log, snapshot, recovery) = LogStore::open(&config.meta_dir, boot, strict)?;
        info!(
            snapshot = ?recovery.snapshot,
            entries = recovery.entries,
            dropped_bytes = recovery.dropped_bytes,
            unmarked = recovery.unmarked,
            inodes = snapshot.ns.len(),
            "metadata recovered"
        );
        let policy = Policy {
            replication: config.replication,
            heartbeat_timeout: config.heartbeat_timeout,
            gc_grace: config.gc_grace,
            replication_timeout: Duration::from_secs(30).max(config.heartbeat_timeout * 3),
            scan_per_tick: crate::registry::SCAN_PER_TICK,
        };
        let service = Service {
            id: config.node_id,
            policy: policy.clone(),
            session_lease: config.session_lease,
            raft: OnceLock::new(),
            leading: tokio::sync::watch::Sender::new(None),
            quorum: Mutex::default(),
            state: Mutex::new(State {
                ns: snapshot.ns,
                log: Some(log.clone()),
                registry: Registry::new(policy),
                sessions: Sessions::new(config.session_lease, Instant::now()),
                locks: Locks::default(),
                applied: snapshot.applied,
                membership: snapshot.membership,
                proposed: VecDeque::new(),
                next_proposal: 0,
                leading: None,
                capture: None,
            }),
            block_size: config.block_size,
            replication: config.replication,
            snapshot_bytes: config.snapshot_bytes,
            durability: config.durability,
            dialer,
            storages_seen: Mutex::default(),
            gate_syncs: Default::default(),
            stopped: Default::default(),
            locks_changed: Default::default(),
            requests: Default::default(),
            poller: vg_wire::poll::Poller::new(config.poll, config.poll_idle),
            raced_written: Default::default(),
            raced_wanted: Default::default(),
            raced_settled: tokio::sync::watch::Sender::new(0),
        };
        Ok((service, log))
    }

    /// The group.
    fn raft(&self) -> &Raft {
        self.raft.get().expect("the group starts with the service")
    }

    /// Joins the group `raft` runs (once, at start).
    pub fn set_raft(&self, raft: Raft) {
        let _ = self.raft.set(raft);
    }

    /// Stops asking storages to sync (the endpoint is closing).
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops the group's member and closes the log (stops its sync thread).
    pub async fn close(&self) {
        if let Some(raft) = self.raft.get() {
            let _ = raft.shutdown().await;
        }
        self.state.lock().expect("state lock").log.take();
    }

    /// Runs the registry's periodic pass, and ends sessions whose lease lapsed, forever.
    pub async fn tick_loop(self: Arc<Self>, period: Duration) {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if self.tick() {
                // Openraft takes the file as its snapshot, and purges the log up to it.
                if let Err(e) = self.raft().trigger().snapshot().await {
                    warn!(error = %e, "the group's member stopped");
                }
            }
        }
    }

    /// One round of [`Service::tick_loop`]; returns whether it wrote a snapshot.
    fn tick(&self) -> bool {
        let mut state = self.lock();
        let State {
            ns,
            registry,
            log,
            sessions,
            locks,
            ..
        } = &mut *state;
        let durable = log.as_ref().map_or(0, LogStore::durable_end);
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
        if state.leading.is_some() {
            self.unpin_unheld(&mut state);
        }
        self.snapshot_if_due(&mut state)
    }

    /// Takes a snapshot if the log has grown enough since the last, at a moment when
    /// the namespace is exactly the state the log's applied entries make (no proposal of
    /// this member's is out), and writes it once the entries it holds are settled (at
    /// once, or at a later tick); returns whether it wrote one.
    fn snapshot_if_due(&self, state: &mut State) -> bool {
        let Some(log) = &state.log else {
            return false;
        };
        let failed = |e: Error| {
            tracing::error!(error = %e, "snapshot failed; the log keeps growing");
            false
        };
        let capture = match state.capture.take() {
            Some(capture) => capture,
            None if !state.proposed.is_empty()
                || !log.wants_snapshot(self.snapshot_bytes, state.applied) =>
            {
                return false
            }
            None => match log.capture(state.applied, &state.membership, &state.ns) {
                Ok(capture) => capture,
                Err(e) => return failed(e),
            },
        };
        if !log.settled(&capture) {
            state.capture = Some(capture);
            return false;
        }
        log.write_capture(capture).unwrap_or_else(failed)
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

    /// Serves a request stream: its one request, or, on a stream the client keeps, each
    /// request in turn until the client ends it.
    pub async fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        while let Some(request) =
            read_request::<Request, Response>(&peer, &mut send, &mut recv).await
        {
            let last = at_end(&mut recv).await;
            self.serve(&peer, request, &mut send, last).await;
            if last {
                return;
            }
        }
        let _ = send.finish();
    }

    /// Answers one request; the answer ends the stream if the request is its `last`.
    async fn serve(&self, peer: &Peer, request: Request, send: &mut SendStream, last: bool) {
        let _serving = self.poller.serving();
        let (request, numbered) = match request {
            Request::Once {
                client,
                seq,
                request,
            } => (*request, Some(Numbered::of(peer, client, seq))),
            request => (request, None),
        };
        let span = tracing::debug_span!("request", op = request.name(), peer = %peer.name);
        // A lock request that waits ends when its client goes away (the process was
        // interrupted, the mount stopped): nobody would release the lock it took.
        let waits = matches!(request, Request::Lock { wait: true, .. });
        let (op, started) = (request.name(), Instant::now());
        let served = async {
            let answer = if let Request::Raft { message } = &request {
                self.raft_message(message).await
            } else if self.leading.borrow().is_none() || !self.has_quorum() {
                Err(not_leading())
            } else if waits {
                tokio::select! {
                    answer = self.dispatch(peer, request) => answer,
                    _ = send.stopped() => return debug!("client went away; lock request dropped"),
                }
            } else {
                self.dispatch(peer, request).await
            };
            if let Err(e) = &answer {
                debug!(code = ?e.code, error = %e.message, "refused");
            }
            let outcome = answer.as_ref().map_or_else(|e| e.code.name(), |_| "ok");
            self.requests.record(op, outcome, started.elapsed());
            reply(send, answer, last).await;
        };
        NUMBERED.scope(numbered, served).instrument(span).await
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
            Layout { ino } => self.layout(ino).await,
            #[rustfmt::skip]
            PlaceBlock { id, len, exclude, prefer } => self.place_block(id, len, &exclude, &prefer).await,
            #[rustfmt::skip]
            Commit { ino, size, slices, stored, set, sync, race, races_stored } => {
                self.races_stored(&races_stored);
                let written = Written { ino, size, slices, stored, set, sync, race };
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
            Raft { .. } => refuse(ErrorCode::Invalid, "a group message in a numbered change"),
            Group => self.group_status(),
            AddMember { id, name, addr } => self.add_member(id, name, addr).await,
            RemoveMember { id } => self.remove_member(id).await,
            Storages => self.active_storages(),
            RacesStored { races } => {
                self.races_stored(&races);
                Ok(Response::Done)
            }
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
        let Some(log) = self.lock().log.clone() else {
            return;
        };
        match tokio::time::timeout(within, log.durable(log.written_end())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "log not synced at stop"),
            Err(_) => warn!(
                "log not synced at stop: storages did not answer; a reboot now would drop the last changes"
            ),
        }
    }

    /// Answers once every change acknowledged so far is on disk: proposes an empty
    /// entry, and waits for it to be committed and synced.
    async fn sync(&self) -> Answer {
        let proposal = {
            let mut state = self.lock();
            hurry_next(&state);
            self.propose(&mut state, Vec::new(), BTreeSet::new())?
        };
        self.committed(proposal, true).await?;
        Ok(Response::Done)
    }

    /// Applies an op, proposes it, and answers with the inode's attributes once it is
    /// acknowledged (committed: written by a majority, or synced under `--durability
    /// strict`).
    async fn mutate(&self, build: impl FnOnce(&Namespace) -> Op) -> Answer {
        self.mutate_ops(|ns| vec![build(ns)]).await
    }

    /// Applies ops in order and proposes them; answers once they are acknowledged, with
    /// the attributes of the last one's inode. Each op is whole: if one is refused, those
    /// before it stand and the refusal is the answer.
    async fn mutate_ops(&self, build: impl FnOnce(&Namespace) -> Vec<Op>) -> Answer {
        self.mutate_after(build, &[], false).await
    }

    /// [`Service::mutate_ops`] of ops naming `blobs` that storages may not have synced
    /// yet: the entry is not synced before their holders sync them. With `durable`, the
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
            proposal,
            refused,
        } = {
            let mut state = self.lock();
            if durable {
                hurry_next(&state);
            }
            match numbered.and_then(|n| Some((n, state.ns.answered().get(n.client, n.seq)?))) {
                Some((n, ino)) => self.answer_again(&mut state, n, ino)?,
                None => {
                    let ops = build(&state.ns);
                    self.apply_locked(&mut state, ops, blobs, numbered)?
                }
            }
        };
        if let Some(proposal) = proposal {
            self.committed(proposal, durable).await?;
        }
        if let Some(refusal) = refused {
            return Err(refusal);
        }
        Ok(attr.map(Response::Attr).unwrap_or(Response::Done))
    }

    /// Waits until `proposal` is committed (and with `durable`, or under `--durability
    /// strict`, on this member's disk; [`hurry_next`] first).
    async fn committed(&self, proposal: Proposing, durable: bool) -> Result<(), RemoteError> {
        let Proposing { committed, log } = proposal;
        let log_id = match committed.await {
            Ok(Ok(response)) if response.data == Outcome::AsProposed => response.log_id,
            // The log lost an earlier proposal of this member's to a change of leader:
            // this one was applied without it, and its answer may not be what the
            // namespace says now. The client sends it again, numbered: the leader
            // answers from the namespace.
            Ok(Ok(_)) => {
                return refuse(
                    ErrorCode::NotLeader,
                    "the nameserver group changed leader while the change was under way",
                )
            }
            // Lost leadership before the entry was committed: the next leader may still
            // commit it; sent again, numbered, it is applied once.
            Ok(Err(e)) => {
                return refuse(ErrorCode::NotLeader, format!("change not committed: {e}"))
            }
            Err(_) => return Err(shutting_down()),
        };
        if durable || self.durability == Durability::Strict {
            log.durable(log_id.index + 1)
                .await
                .map_err(|e: Error| e.to_remote())?;
        }
        Ok(())
    }

    /// The answer to a repeat of a numbered change that was applied, its answer naming
    /// `ino`: the inode as it is now. Given once the log has what the first one logged
    /// (an empty proposal after it is committed).
    fn answer_again(
        &self,
        state: &mut State,
        numbered: Numbered,
        ino: Option<Ino>,
    ) -> Result<Applied, RemoteError> {
        debug!(
            client = numbered.client,
            seq = numbered.seq,
            "change sent again: answered as the first time"
        );
        // As the first answer was made: the inode's attributes if it still exists (an
        // unlink or rmdir named the inode it removed, and answered without them).
        let attr = ino.and_then(|ino| state.ns.get(ino).ok().map(|i| i.attr.clone()));
        Ok(Applied {
            attr,
            proposal: Some(self.propose(state, Vec::new(), BTreeSet::new())?),
            refused: None,
        })
    }

    /// Applies ops in order and proposes them, under the state lock, and then, if they
    /// were a client's numbered change and none was refused, the record that it was
    /// applied. The file an unlink or a rename removes the last name of is pinned first
    /// if a session holds it open, so that it stays readable and writable by inode.
    fn apply_locked(
        &self,
        state: &mut State,
        ops: Vec<Op>,
        blobs: &[BlockId],
        numbered: Option<Numbered>,
    ) -> Result<Applied, RemoteError> {
        if state.leading.is_none() {
            return Err(not_leading());
        }
        let needs: BTreeSet<String> = blobs
            .iter()
            .flat_map(|blob| state.registry.live_locations(blob))
            .map(|l| l.name)
            .collect();
        let (mut applied, mut last, mut refused) = (Vec::new(), None, None);
        let State { ns, sessions, .. } = state;
        for op in ops {
            // Only while some file is open anywhere: an unlink costs no lookup more.
            let pin = (sessions.open_files() > 0)
                .then(|| ns.unlinks(&op))
                .flatten()
                .filter(|ino| sessions.holds(*ino) && !ns.pinned().contains(ino))
                .map(|ino| Op::Pin { ino });
            for op in pin.into_iter().chain([op]) {
                match ns.apply(&op) {
                    Ok(ino) => {
                        applied.push(op);
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
        if let (Some(n), false, None) = (numbered, applied.is_empty(), &refused) {
            // After the ops: a crash between them loses the record, not the ops, and a
            // repeat is then applied again, as without numbers; never the other way.
            let op = Op::Applied {
                client: n.client,
                seq: n.seq,
                ino: last,
            };
            ns.apply(&op)?;
            applied.push(op);
        }
        let attr = last.and_then(|ino: Ino| ns.get(ino).ok().map(|i| i.attr.clone()));
        let proposal = match applied.is_empty() {
            true => None,
            false => Some(self.propose(state, applied, needs)?),
        };
        Ok(Applied {
            attr,
            proposal,
            refused,
        })
    }

    /// Proposes `ops`, just applied to the namespace, to the group (an empty proposal is
    /// a barrier: committed once everything before it is). Under the state lock, so
    /// that entries are in the order of application.
    fn propose(
        &self,
        state: &mut State,
        ops: Vec<Op>,
        needs: BTreeSet<String>,
    ) -> Result<Proposing, RemoteError> {
        if state.leading.is_none() {
            return Err(not_leading());
        }
        let log = state.log.clone().ok_or_else(shutting_down)?;
        let seq = state.next_proposal;
        state.next_proposal += 1;
        let released = state.ns.take_released();
        state.proposed.push_back(Proposed { seq, released });
        let proposal = Proposal {
            ops,
            needs,
            by: (self.id, seq),
        };
        // Openraft's proposal is a send on a channel: it completes when first polled.
        let mut send = std::pin::pin!(self.raft().client_write_ff(proposal));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match send.as_mut().poll(&mut context) {
            std::task::Poll::Ready(Ok(committed)) => Ok(Proposing { committed, log }),
            _ => {
                // Never in the log: what the namespace has of it goes.
                self.reload(state);
                Err(shutting_down())
            }
        }
    }

    /// Rebuilds the namespace from the snapshot and the log's entries up to the last
    /// applied one, dropping what this member's proposals not in the log did (the log
    /// lost them to a change of leader, or never had them).
    fn reload(&self, state: &mut State) {
        let Some(log) = state.log.clone() else {
            return;
        };
        let rebuilt = log.snapshot().and_then(|snapshot| {
            let from = snapshot.applied.map_or(0, |a| a.index + 1);
            let to = state.applied.map_or(0, |a| a.index + 1);
            let mut ns = snapshot.ns;
            for entry in log.entries(from..to)? {
                if let openraft::EntryPayload::Normal(proposal) = entry.payload {
                    for op in &proposal.ops {
                        if let Err(e) = ns.apply(op) {
                            warn!(index = entry.log_id.index, error = %e, "entry's operation refused");
                        }
                    }
                }
            }
            ns.take_released();
            Ok(ns)
        });
        match rebuilt {
            Ok(ns) => {
                warn!(
                    dropped = state.proposed.len(),
                    "changes proposed here did not reach the log: namespace rebuilt from the log"
                );
                state.ns = ns;
                state.proposed.clear();
            }
            Err(e) => {
                // Serving from a namespace the log does not make would be worse than
                // stopping.
                tracing::error!(error = %e, "cannot rebuild the namespace from the log; stopping");
                std::process::abort();
            }
        }
    }

    /// Follows the group's state: this member serves once it leads and has applied the
    /// entries earlier leaders left (its first entry as leader is committed), and stops
    /// serving when it no longer leads.
    pub async fn follow_leadership(self: Arc<Self>) {
        let mut metrics = self.raft().metrics();
        loop {
            let (leads, last_log, term) = {
                let m = metrics.borrow_and_update();
                if let Err(e) = &m.running_state {
                    tracing::error!(error = %e, "the group's member stopped; this nameserver no longer serves");
                }
                let leads =
                    m.state == openraft::ServerState::Leader && m.current_leader == Some(self.id);
                let mut quorum = self.quorum.lock().expect("quorum lock");
                quorum.alone = m.membership_config.membership().voter_ids().eq([self.id]);
                quorum.acked = m
                    .millis_since_quorum_ack
                    .filter(|_| leads)
                    .and_then(|ms| Instant::now().checked_sub(Duration::from_millis(ms)));
                (leads, m.last_log_index, m.current_term)
            };
            // Openraft reports after every step: the state lock only for a change of role
            // or of term. The term counts: reports are coalesced, and a member that lost
            // leadership and won it back between two of them must catch up again (on the
            // entries the leader in between committed) before it serves.
            let wanted = leads.then_some(term);
            if *self.leading.borrow() != wanted {
                let mut state = self.lock();
                if state.leading.is_some() && state.leading != wanted {
                    info!(
                        term = state.leading,
                        "no longer leading the nameserver group"
                    );
                    state.leading = None;
                }
                if !state.proposed.is_empty() && state.leading.is_none() {
                    self.reload(&mut state);
                }
                let caught_up = state.applied.map(|a| a.index) >= last_log;
                if leads && state.leading.is_none() && caught_up {
                    info!(term, "leading the nameserver group");
                    self.start_leading(&mut state, term);
                }
                self.leading.send_replace(state.leading);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Takes over the leader's soft state anew: storages register and report their
    /// blocks again (and no copies are made for a heartbeat timeout, until they have),
    /// mounts report their sessions and take their locks again within the first lease.
    fn start_leading(&self, state: &mut State, term: u64) {
        let now = Instant::now();
        state.registry = Registry::new(self.policy.clone());
        state
            .registry
            .hold_copies_until(now + self.policy.heartbeat_timeout);
        if let Some(log) = &state.log {
            let raced = log.raced();
            let writes = raced.iter().flat_map(|(_, writes)| writes.iter());
            let blobs = writes.flat_map(|w| w.blobs.iter().copied());
            state.registry.unchecked(blobs);
        }
        // The first leader of a new namespace (its log holds the group's start and this
        // term's first entry, its tree only the root): no mount had a session before, so
        // locks need not wait a lease for theirs (sqlite right after `up.sh` would get
        // "database is locked").
        let sessions = Sessions::new(self.session_lease, now);
        state.sessions = match state.applied.is_none_or(|a| a.index <= 1) && state.ns.len() == 1 {
            true => sessions.none_before(now),
            false => sessions,
        };
        state.locks = Locks::default();
        state.leading = Some(term);
    }

    /// Waits (at most `within`) until this member serves.
    pub async fn wait_leading(&self, within: Duration) {
        let mut leading = self.leading.subscribe();
        let _ = tokio::time::timeout(within, leading.wait_for(Option::is_some)).await;
    }

    /// Serves a message from another member of the group.
    async fn raft_message(&self, message: &[u8]) -> Answer {
        use crate::raft::Message;
        let message: Message = vg_wire::codec::from_bytes(message)
            .map_err(|e| RemoteError::new(ErrorCode::Invalid, format!("group message: {e}")))?;
        let raft = self.raft();
        let reply = match message {
            Message::Append(rpc) => vg_wire::codec::to_bytes(&raft.append_entries(rpc).await),
            Message::Vote(rpc) => vg_wire::codec::to_bytes(&raft.vote(rpc).await),
            Message::Snapshot(rpc) => vg_wire::codec::to_bytes(&raft.install_snapshot(rpc).await),
        }
        .map_err(|e| RemoteError::new(ErrorCode::Io, format!("group message answer: {e}")))?;
        Ok(Response::Raft { reply })
    }
}
