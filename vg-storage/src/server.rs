//! The storage's request handler: block reads, uploads with pipeline forwarding,
//! verification; plus the background scrub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{RecvStream, SendStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn, Instrument};
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::rpc::{
    at_end, read_end, read_request, reply, respond, Dialer, Operation, Peer, Target,
};
use vg_wire::storage::{Request, Response};
use vg_wire::{codec, BlockId, Location, Role};

use crate::block_store::{BlockStore, CopyId};
use crate::error::Error;
use vg_wire::disk::AlignedBuf;

/// Longest pipeline accepted: more would be a malformed request, not a real cluster.
const MAX_CHAIN: usize = 16;
/// Reads, and uploads (hash and write), up to this size run on the request's own thread.
const SMALL_WORK: usize = 128 << 10;

/// Runs disk or hashing work on this thread when it touches at most [`SMALL_WORK`]
/// bytes, else on the blocking pool: handing small work over costs a thread wake-up,
/// more than reading a few cached pages or hashing a small block.
async fn run_sized<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if bytes <= SMALL_WORK {
        return work();
    }
    on_pool(work).await
}

/// Runs work on the blocking pool.
async fn on_pool<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("storage work does not panic")
}

/// Counts itself in a counter while it lives.
struct Counted<'a> {
    counter: &'a AtomicUsize,
    /// Whether the counter was 0 before.
    alone: bool,
}

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        let alone = counter.fetch_add(1, Ordering::AcqRel) == 0;
        Counted { counter, alone }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a raced upload the nameserver was told is not here stays refused: far
/// longer than an upload may take (three request timeouts).
const FENCE_FOR: Duration = Duration::from_secs(600);
/// A read larger than this is sent in pieces of this size (whole chunks).
const STREAM_PIECE: usize = 1 << 20;
/// Block bytes held in memory by uploads in flight, in MiB.
const INFLIGHT_MIB: u32 = 512;

/// Marks a block as being stored by an upload (see [`Storage::receiving`]) until dropped.
pub(crate) struct Receiving<'a> {
    storage: &'a Storage,
    id: BlockId,
}

impl<'a> Receiving<'a> {
    pub(crate) fn new(storage: &'a Storage, id: BlockId) -> Self {
        *storage
            .receiving
            .lock()
            .expect("receiving lock")
            .entry(id)
            .or_default() += 1;
        Receiving { storage, id }
    }
}

impl<'a> Receiving<'a> {
    /// [`Receiving::new`] for the upload of race `race`, refused if the nameserver was
    /// told this storage does not hold the block for it.
    fn raced(storage: &'a Storage, id: BlockId, race: u64) -> Result<Self, RemoteError> {
        let mut receiving = storage.receiving.lock().expect("receiving lock");
        if storage
            .fenced
            .lock()
            .expect("fence lock")
            .contains_key(&(id, race))
        {
            return Err(RemoteError::new(
                ErrorCode::Conflict,
                format!("block {id}: the nameserver already gave up this raced upload"),
            ));
        }
        *receiving.entry(id).or_default() += 1;
        Ok(Receiving { storage, id })
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        let mut receiving = self.storage.receiving.lock().expect("receiving lock");
        if let Some(count) = receiving.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                receiving.remove(&self.id);
            }
        }
    }
}

/// Block changes not yet told to the nameserver.
#[derive(Default)]
pub struct Changes {
    /// Blocks stored since the last heartbeat, with their lengths.
    pub received: HashMap<BlockId, u32>,
    /// Blocks deleted since the last heartbeat.
    pub removed: Vec<BlockId>,
    /// Blocks found corrupt (and deleted) since the last heartbeat.
    pub bad: Vec<BlockId>,
}

impl Changes {
    /// Records a block stored. One deleted (or found corrupt) earlier in the same round
    /// is no longer reported so: the nameserver, which may already count the new copy,
    /// must not drop it.
    pub fn stored(&mut self, id: BlockId, len: u32) {
        self.removed.retain(|r| *r != id);
        self.bad.retain(|r| *r != id);
        self.received.insert(id, len);
    }

    /// Records a copy found corrupt and deleted, and no longer reports it stored.
    pub fn found_bad(&mut self, id: BlockId) {
        self.received.remove(&id);
        self.bad.push(id);
    }

    /// Records blocks deleted, and no longer reports them stored.
    pub fn deleted(&mut self, ids: Vec<BlockId>) {
        for id in &ids {
            self.received.remove(id);
        }
        self.removed.extend(ids);
    }
}

/// Shared state of a running storage.
pub struct Storage {
    /// Its name.
    pub name: String,
    /// The blocks.
    pub store: Arc<BlockStore>,
    /// Connections to other storages and the nameserver.
    pub dialer: Dialer,
    /// Changes for the next heartbeat.
    pub changes: Mutex<Changes>,
    /// Blocks uploads are storing now, with how many uploads each: like those stored
    /// since the last heartbeat, a deletion the nameserver decided without knowing of
    /// them leaves them alone (`ns_link::delete_unless_new`).
    pub receiving: Mutex<HashMap<BlockId, u32>>,
    /// Raced uploads (block, race) this storage told the nameserver it does not hold,
    /// and when: refused if they come after all (lock order: `receiving`, then this).
    fenced: Mutex<HashMap<(BlockId, u64), std::time::Instant>>,
    /// Wakes the heartbeat loop early: an upload refused for space asks the nameserver
    /// at once for the deletions that would make room, rather than at the next beat.
    pub wake: tokio::sync::Notify,
    inflight: Semaphore,
    /// Synced small puts writing now.
    syncing: AtomicUsize,
    /// `--durability strict`: every block synced before it is acknowledged.
    strict: bool,
    /// Requests answered, for `--metrics` (set once, when metrics are served).
    pub requests: vg_wire::metrics::Requests,
}

fn mib(len: u32) -> u32 {
    len.div_ceil(1 << 20).max(1)
}

/// The metrics label of an answer.
fn outcome_of(answer: &Result<Response, RemoteError>) -> &'static str {
    answer.as_ref().map_or_else(|e| e.code.name(), |_| "ok")
}

impl Storage {
    /// Shared state around a block store.
    pub fn new(name: String, store: Arc<BlockStore>, dialer: Dialer, strict: bool) -> Self {
        Storage {
            strict,
            name,
            store,
            dialer,
            changes: Mutex::default(),
            receiving: Mutex::default(),
            fenced: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            inflight: Semaphore::new(INFLIGHT_MIB as usize),
            syncing: Default::default(),
            requests: Default::default(),
        }
    }

    /// Serves a request stream: a read, or requests (uploads of small blocks among them)
    /// each in turn on a stream the client keeps until it ends it.
    pub async fn handle(
        self: Arc<Self>,
        peer: Arc<Peer>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        while let Some(request) =
            read_request::<Request, Response>(&peer, &mut send, &mut recv).await
        {
            if !self.serve(&peer, request, &mut send, &mut recv).await {
                return;
            }
        }
        let _ = send.finish();
    }

    /// Answers one request; true if the client keeps the stream for more.
    async fn serve(
        &self,
        peer: &Peer,
        request: Request,
        send: &mut SendStream,
        recv: &mut RecvStream,
    ) -> bool {
        let block = match &request {
            Request::Read { id, .. } | Request::Put { id, .. } | Request::Forward { id, .. } => {
                Some(*id)
            }
            Request::Verify { .. } | Request::Sync | Request::Held { .. } => None,
        };
        let span = tracing::debug_span!("request", op = request.name(), block = ?block);
        let (op, started) = (request.name(), std::time::Instant::now());
        let (outcome, kept) = async {
            match request {
                Request::Read { id, offset, len } => {
                    read_end(recv).await;
                    self.read(id, offset, len, send).await;
                    ("ok", false)
                }
                // A forward is a put along the chain (only storages may ask it: the front
                // door checked).
                Request::Put {
                    id,
                    len,
                    chain,
                    sync,
                    race,
                } => {
                    let answer = self.put(peer, (id, race), len, chain, sync, recv).await;
                    // A put refused may have left its bytes unread: its stream ends.
                    let last = answer.is_err() || at_end(recv).await;
                    let outcome = outcome_of(&answer);
                    reply(send, answer, last).await;
                    (outcome, !last)
                }
                Request::Forward {
                    id,
                    len,
                    chain,
                    sync,
                } => {
                    let answer = self.put(peer, (id, None), len, chain, sync, recv).await;
                    // A put refused may have left its bytes unread: its stream ends.
                    let last = answer.is_err() || at_end(recv).await;
                    let outcome = outcome_of(&answer);
                    reply(send, answer, last).await;
                    (outcome, !last)
                }
                Request::Sync => {
                    let last = at_end(recv).await;
                    let store = self.store.clone();
                    let answer = on_pool(move || store.wait_synced())
                        .await
                        .map(|()| Response::Synced)
                        .map_err(|e| e.to_remote());
                    let outcome = outcome_of(&answer);
                    reply(send, answer, last).await;
                    (outcome, !last)
                }
                Request::Held { ids, wait_ms } => {
                    let last = at_end(recv).await;
                    let answer = self.held(ids, wait_ms).await;
                    let outcome = outcome_of(&answer);
                    reply(send, answer, last).await;
                    (outcome, !last)
                }
                Request::Verify { ids } => {
                    let last = at_end(recv).await;
                    let answer = self.check(ids).await;
                    reply(send, Ok(Response::Verified(answer)), last).await;
                    ("ok", !last)
                }
            }
        }
        .instrument(span)
        .await;
        self.requests.record(op, outcome, started.elapsed());
        kept
    }

    /// The blocks of `ids` held here, synced and intact. A block not here yet may be on its way:
    /// its upload raced the commit the nameserver checks, so the answer waits (at most
    /// `wait_ms`) until none of them is missing or being received, polling: a rare wait.
    ///
    /// Those still missing then are fenced: their race's upload, if it comes after all,
    /// is refused, so that the client's `fsync` fails rather than succeeds on a commit
    /// the nameserver undoes.
    async fn held(&self, ids: Vec<(BlockId, u64)>, wait_ms: u32) -> Result<Response, RemoteError> {
        let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms.into());
        while self.still_missing(&ids, deadline) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let ids: Vec<BlockId> = ids.into_iter().map(|(id, _)| id).collect();
        let store = self.store.clone();
        // Verified, not just listed: after a power cut a record whose header survived
        // and whose bytes did not is listed, and a raced write kept on its word would
        // name a blob nobody can read (what failed a power-loss round: a torn record on
        // the one storage the write reached). Small blobs, and a rare request.
        on_pool(move || {
            store.wait_synced()?;
            Ok(ids.into_iter().filter(|id| store.verify(id)).collect())
        })
        .await
        .map(Response::Held)
        .map_err(|e: Error| e.to_remote())
    }

    /// Whether a block of `ids` is still missing or being received; past `deadline`,
    /// fences those missing and says no.
    fn still_missing(&self, ids: &[(BlockId, u64)], deadline: std::time::Instant) -> bool {
        let receiving = self.receiving.lock().expect("receiving lock");
        let missing = |id: &BlockId| !receiving.contains_key(id) && self.store.len_of(id).is_none();
        let pending = ids
            .iter()
            .any(|(id, _)| receiving.contains_key(id) || missing(id));
        if !pending || std::time::Instant::now() < deadline {
            return pending;
        }
        let mut fenced = self.fenced.lock().expect("fence lock");
        fenced.retain(|_, at| at.elapsed() < FENCE_FOR);
        let now = std::time::Instant::now();
        for (id, race) in ids.iter().filter(|(id, _)| missing(id)) {
            fenced.insert((*id, *race), now);
        }
        false
    }

    /// Notes a corrupt copy of a block: deleted here, reported so the cluster
    /// re-replicates it. A copy stored since (the re-replicated one, while a slow read
    /// or scrub still held the corrupt one) is not touched.
    pub(crate) fn found_bad(&self, id: BlockId, copy: CopyId) {
        if self.store.delete_copy(&id, copy) {
            warn!(block = %id, "corrupt block deleted; the nameserver will re-replicate it");
            self.changes.lock().expect("changes lock").found_bad(id);
        }
    }

    /// [`Storage::found_bad`] when a read of copy `copy` failed because it is corrupt.
    fn found_bad_if_corrupt(&self, id: BlockId, copy: Option<CopyId>, e: &Error) {
        if let (Error::Corrupt { .. }, Some(copy)) = (e, copy) {
            self.found_bad(id, copy);
        }
    }

    async fn read(&self, id: BlockId, offset: u32, len: u32, send: &mut SendStream) {
        let store = self.store.clone();
        // Reads only the checksums: small.
        let plan = run_sized(0, move || {
            // The copy a failed plan was about: its errors do not say.
            let copy = store.copy_of(&id);
            store.plan_read(&id, offset, len).map_err(|e| (e, copy))
        });
        let plan = match plan.await {
            Ok(plan) => plan,
            Err((e, copy)) => return self.refuse_read(id, copy, e, send).await,
        };
        if !plan.is_whole_chunks() || plan.chunks.len() <= STREAM_PIECE {
            let (store, copy) = (self.store.clone(), plan.copy);
            match run_sized(plan.chunks.len(), move || store.read_planned(plan)).await {
                Ok(read) => {
                    let header = Ok::<_, RemoteError>(Response::Data {
                        len: read.data.len() as u32,
                        crcs: read.crcs,
                    });
                    if codec::write_frame(send, &header).await.is_ok() {
                        let _ = send.write_chunk(read.data.into()).await;
                    }
                    let _ = send.finish();
                }
                Err(e) => self.refuse_read(id, Some(copy), e, send).await,
            }
            return;
        }
        // A large read goes out piece by piece, each checked as it comes off the disk, so
        // that the disk reads the next piece while QUIC sends this one: a whole block read
        // first and sent after kept the disk and the network waiting on each other.
        let header = Ok::<_, RemoteError>(Response::Data {
            len: plan.chunks.len() as u32,
            crcs: plan.crcs.clone(),
        });
        if codec::write_frame(send, &header).await.is_err() {
            return;
        }
        let copy = plan.copy;
        let plan = Arc::new(plan);
        for start in plan.chunks.clone().step_by(STREAM_PIECE) {
            let piece = start..(start + STREAM_PIECE).min(plan.chunks.end);
            let (store, plan) = (self.store.clone(), plan.clone());
            let read = run_sized(piece.len(), move || store.read_piece(&plan, piece)).await;
            match read {
                Ok(data) => {
                    if send.write_chunk(data).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The header went out already: cut the stream, so that the reader
                    // takes the block from another replica.
                    self.found_bad_if_corrupt(id, Some(copy), &e);
                    warn!(block = %id, error = %e, "read failed part way");
                    let _ = send.reset(1u32.into());
                    return;
                }
            }
        }
        let _ = send.finish();
    }

    /// Answers a read of copy `copy` that cannot be served; a corrupt copy is deleted
    /// and reported.
    async fn refuse_read(
        &self,
        id: BlockId,
        copy: Option<CopyId>,
        e: Error,
        send: &mut SendStream,
    ) {
        self.found_bad_if_corrupt(id, copy, &e);
        debug!(block = %id, error = %e, "read refused");
        respond::<Response>(send, Err(e.to_remote())).await;
    }

    async fn put(
        &self,
        peer: &Peer,
        (id, race): (BlockId, Option<u64>),
        len: u32,
        chain: Vec<Location>,
        sync: bool,
        recv: &mut RecvStream,
    ) -> Result<Response, RemoteError> {
        if len == 0 || len > codec::MAX_FRAME || chain.len() > MAX_CHAIN {
            return Err(RemoteError::new(
                ErrorCode::Invalid,
                format!(
                    "block {id}: length {len} or chain of {} is out of range",
                    chain.len()
                ),
            ));
        }
        let _permit = self
            .inflight
            .acquire_many(mib(len))
            .await
            .expect("semaphore is never closed");
        let mut data = AlignedBuf::with_capacity(len as usize);
        // Checksummed as they come, while in the cache (a pass over the block saved).
        let mut crcs = vg_wire::storage::ChunkCrcs::default();
        while data.len() < len as usize {
            let why = match recv.read_chunk(len as usize - data.len(), true).await {
                Ok(Some(chunk)) => {
                    data.extend(&chunk.bytes);
                    crcs.update(&chunk.bytes);
                    continue;
                }
                Ok(None) => "the stream ended".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(RemoteError::new(
                ErrorCode::Invalid,
                format!(
                    "block {id}: upload cut short after {} of {len} bytes: {why}",
                    data.len()
                ),
            ));
        }
        let data = Arc::new(data);
        // The first storage of a pipeline checks the bytes against the name before
        // forwarding them; the next ones trust it (storage certificates are the cluster's).
        if peer.role != Role::Storage {
            let hashed = data.clone();
            let matches = run_sized(data.len(), move || id.names(&hashed)).await;
            if !matches {
                return Err(Error::Corrupt {
                    block: id,
                    reason: "uploaded bytes do not match the block name".into(),
                }
                .to_remote());
            }
        }
        let sync = sync || self.strict;
        // Until the block is recorded stored (below), or the upload fails.
        let _receiving = match race {
            Some(race) => Receiving::raced(self, id, race)?,
            None => Receiving::new(self, id),
        };
        // A small block goes into a volume with one `pwrite` into the page cache: handing
        // that to the blocking pool cost two thread wake-ups, more than the write. A
        // synced one waits for the disk and holds up every other request meanwhile, so
        // it runs here only while no other synced put is writing and none is to be
        // forwarded (else the pool's threads sync them side by side): on a busy machine
        // the pool's thread waited for a CPU longer than the disk took (see
        // BENCHMARKS.md, stop 39).
        let local = {
            let (store, data) = (self.store.clone(), data.clone());
            let len = data.len();
            let crcs = crcs.finish();
            let work = move || store.put_received(&id, &data, &crcs, sync);
            let (syncing, last) = (&self.syncing, chain.is_empty());
            async move {
                if !sync {
                    return run_sized(len, work).await;
                }
                let writing = Counted::new(syncing);
                match writing.alone && last && len <= SMALL_WORK {
                    true => work(),
                    false => on_pool(work).await,
                }
            }
        };
        let forward = async {
            let Some((next, rest)) = chain.split_first() else {
                return Vec::new();
            };
            match self.forward(next, rest, id, data.clone(), sync).await {
                Ok(holders) => holders,
                Err(e) => {
                    warn!(block = %id, next = %next, error = %e, "pipeline forward failed; the replicator will make the missing copies");
                    Vec::new()
                }
            }
        };
        let (local, forwarded) = tokio::join!(local, forward);
        if matches!(local, Err(crate::Error::NoSpace { .. })) {
            self.wake.notify_one();
        }
        local.map_err(|e| e.to_remote())?;
        self.changes.lock().expect("changes lock").stored(id, len);
        debug!(block = %id, from = %peer.name, "stored");
        let mut holders = vec![self.name.clone()];
        holders.extend(forwarded);
        Ok(Response::Stored { holders })
    }

    async fn forward(
        &self,
        next: &Location,
        rest: &[Location],
        id: BlockId,
        data: Arc<AlignedBuf>,
        sync: bool,
    ) -> vg_wire::Result<Vec<String>> {
        let request = Request::Forward {
            id,
            len: data.len() as u32,
            chain: rest.to_vec(),
            sync,
        };
        let data = vg_wire::rpc::share(data);
        vg_wire::rpc::send_block(&self.dialer, &Target::storage(next), &request, data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_report_where_each_block_ended() {
        let (a, b) = (BlockId([1; 32]), BlockId([2; 32]));
        let mut changes = Changes::default();
        // Deleted, then stored again (the same bytes written anew): reported stored.
        changes.deleted(vec![a, b]);
        changes.stored(a, 10);
        // Stored, then deleted: reported deleted.
        changes.stored(b, 20);
        changes.deleted(vec![b]);
        assert_eq!(changes.received, HashMap::from([(a, 10)]));
        assert_eq!(changes.removed, vec![b]);
        // Found corrupt, then stored again (re-replicated within the round): reported
        // stored; stored, then found corrupt: reported bad only.
        let (c, d) = (BlockId([3; 32]), BlockId([4; 32]));
        changes.found_bad(c);
        changes.stored(c, 30);
        changes.stored(d, 40);
        changes.found_bad(d);
        assert_eq!(changes.received, HashMap::from([(a, 10), (c, 30)]));
        assert_eq!(changes.bad, vec![d]);
    }
}
