//! A file's blocks: layouts, placing new blobs, commits and compactions, and the
//! registry's view of which blobs are kept.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use tracing::debug;
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::ns::{Layout, Placement, Response, Stored};
use vg_wire::rpc::Peer;
use vg_wire::{BlockId, Ino, SetAttr, Slice, Timestamp};

use super::{Answer, Service, State};
use crate::error::refuse;
use crate::log::LogStore;
use crate::namespace::{Content, Op};

/// What a commit carries: the slices written per block and the blobs they were stored
/// in, the new size, attributes set with it, and whether it is an `fsync`'s.
pub(super) struct Written {
    pub ino: Ino,
    pub size: u64,
    pub slices: Vec<(u64, Vec<Slice>)>,
    pub stored: Vec<Stored>,
    pub set: Option<SetAttr>,
    pub sync: bool,
    /// The upload of `stored` races the commit (see `ns::Request::Commit`).
    pub race: Option<u64>,
}

impl Service {
    /// Places a new blob of `len` bytes on storages, away from `exclude`.
    pub(super) async fn place_block(
        &self,
        id: BlockId,
        len: u32,
        exclude: &[String],
        prefer: &[String],
    ) -> Answer {
        if len == 0 || len > self.block_size {
            return refuse(
                ErrorCode::Invalid,
                format!(
                    "block {id:?}: length {len} is outside 1..={}",
                    self.block_size
                ),
            );
        }
        if self.lock().registry.short_of_storages(Instant::now()) {
            return Err(not_settled());
        }
        let placed = match self.place(id, len, exclude, prefer) {
            // Deletes not yet on disk free nothing: once they are, try again.
            Err(e) if e.code == ErrorCode::NoSpace => {
                self.sync().await?;
                self.place(id, len, exclude, prefer)
            }
            Err(e)
                if e.code == ErrorCode::Unavailable
                    && self.lock().registry.settling(Instant::now()) =>
            {
                Err(not_settled())
            }
            other => other,
        };
        Ok(Response::Placement(placed?))
    }

    /// Chooses storages for a new block; when none has room, first takes back the space
    /// of blocks that committed deletes released (those whose op is on disk).
    fn place(
        &self,
        id: BlockId,
        len: u32,
        exclude: &[String],
        prefer: &[String],
    ) -> Result<Placement, RemoteError> {
        let mut state = self.lock();
        let State {
            ns, registry, log, ..
        } = &mut *state;
        let referenced = ns.refs().contains_key(&id);
        match registry.place(id, len, exclude, prefer, referenced, Instant::now()) {
            Err(e) if e.code == ErrorCode::NoSpace => {
                let durable = log.as_ref().map_or(0, LogStore::durable_end);
                match registry.reclaim(ns.refs(), Instant::now(), durable) > 0 {
                    true => registry.place(id, len, exclude, prefer, referenced, Instant::now()),
                    false => Err(e),
                }
            }
            other => other,
        }
    }

    /// Adds the slices a client wrote (and the attributes set with them) to a file.
    pub(super) async fn commit(&self, peer: &Peer, written: Written, now: Timestamp) -> Answer {
        let Written {
            ino,
            size,
            slices,
            stored,
            set,
            sync,
            race,
        } = written;
        if let Some(race) = race {
            // Its answer would wait for the log's sync, and that for the client's word
            // on the upload, which follows the answer: commit after the upload.
            if !sync && self.durability == vg_wire::cli::Durability::Strict {
                return refuse(
                    ErrorCode::Conflict,
                    "under --durability strict a close's commit follows its upload",
                );
            }
            // The log's gate waits for the check of a race it knows unsynced only.
            if !sync && vg_wire::ns::race_synced(race) {
                return refuse(
                    ErrorCode::Invalid,
                    format!(
                        "inode {ino}: race {race:#x} of a commit not synced lacks RACE_UNSYNCED"
                    ),
                );
            }
            self.race_stored(&stored, slices.iter().flat_map(|(_, new)| new))?;
        } else {
            self.check_stored(&stored, slices.iter().flat_map(|(_, new)| new))?;
        }
        debug!(ino, size, blocks = slices.len(), by = %peer.name, "file written");
        // Blobs this client uploaded with `sync` are on disk, and raced ones are checked
        // (before the log syncs the entry, if not synced: the gate); one the cluster
        // already held (no holders listed) may have been acknowledged unsynced to another
        // client moments ago, so it goes through the gate.
        let synced: HashSet<BlockId> = match sync || race.is_some() {
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
        let (block_size, time) = (self.block_size, now);
        let write = match race {
            Some(race) => {
                let holders: BTreeSet<String> = stored
                    .iter()
                    .flat_map(|(_, _, h)| h.iter().cloned())
                    .collect();
                let holders = holders.into_iter().collect();
                Op::RacedWrite {
                    ino,
                    size,
                    slices,
                    block_size,
                    time,
                    race,
                    holders,
                    before: 0,
                }
            }
            None => Op::Write {
                ino,
                size,
                slices,
                block_size,
                time,
            },
        };
        let set = set.map(|set| self.set_attr_op(ino, set, now));
        let ops: Vec<Op> = std::iter::once(write).chain(set).collect();
        // A raced write says how long the file was before it, for its undoing.
        let build = |ns: &crate::namespace::Namespace| {
            let mut ops = ops;
            if let Some(Op::RacedWrite { before, .. }) = ops.first_mut() {
                *before = ns.get(ino).map_or(0, |inode| inode.attr.size);
            }
            ops
        };
        let answer = self.mutate_after(build, &blobs, sync).await;
        if race.is_some() {
            self.raced_written.notify_one();
        }
        answer
    }

    /// Replaces the first slices of a block, if they are still `prefix`, with `merged`.
    pub(super) async fn compact(
        &self,
        (ino, idx): (Ino, u64),
        prefix: Vec<Slice>,
        merged: Vec<Slice>,
        stored: Vec<Stored>,
    ) -> Answer {
        self.check_stored(&stored, &merged)?;
        debug!(
            ino,
            idx,
            from = prefix.len(),
            to = merged.len(),
            "block compacted"
        );
        let blobs: Vec<BlockId> = merged.iter().map(|s| s.blob).collect();
        let op = Op::CompactSince {
            ino,
            idx,
            read: prefix,
            merged,
            block_size: self.block_size,
        };
        let answer = self.mutate_after(|_| vec![op], &blobs, false).await;
        if matches!(&answer, Err(e) if matches!(e.code, ErrorCode::Conflict | ErrorCode::NotFound))
        {
            self.lock().registry.refused(&blobs, Instant::now());
        }
        answer
    }

    /// Records where the client is uploading the blobs of a raced commit; refuses it with
    /// `Conflict` (the client then commits after its upload) in a group, whose followers
    /// would not check them, or if one of those storages is not active. The slices'
    /// other blobs must be held already ([`all_held`]).
    fn race_stored<'a>(
        &self,
        stored: &[Stored],
        slices: impl IntoIterator<Item = &'a Slice>,
    ) -> Result<(), RemoteError> {
        if !self.quorum.lock().expect("quorum lock").alone {
            return refuse(
                ErrorCode::Conflict,
                "a nameserver group takes no commit racing its upload",
            );
        }
        let mut state = self.lock();
        for (id, len, holders) in stored {
            state.registry.raced(*id, *len, holders)?;
        }
        all_held(&state, slices)
    }

    /// Records where the client saw new blobs stored, then refuses a change naming a blob
    /// the cluster no longer holds ([`all_held`]).
    fn check_stored<'a>(
        &self,
        stored: &[Stored],
        slices: impl IntoIterator<Item = &'a Slice>,
    ) -> Result<(), RemoteError> {
        let mut state = self.lock();
        for (id, len, holders) in stored {
            state.registry.stored(*id, *len, holders);
        }
        all_held(&state, slices)
    }

    /// A file's slices and where their blobs are. One naming a raced blob not yet
    /// checked (its client's word, or a round trip to its storages, after the commit's
    /// answer) has the check made now and waits for it, up to [`LAYOUT_WAIT`], then is
    /// answered "try again".
    pub(super) async fn layout(&self, ino: Ino) -> Answer {
        let mut settled = self.raced_settled.subscribe();
        let deadline = tokio::time::Instant::now() + LAYOUT_WAIT;
        let mut wanted = false;
        loop {
            let blob = match self.layout_now(ino) {
                Ok(answer) => return answer,
                Err(Unchecked(blob)) => blob,
            };
            if !std::mem::replace(&mut wanted, true) {
                self.want_raced_checked();
            }
            if tokio::time::timeout_at(deadline, settled.changed())
                .await
                .is_err()
            {
                // A raced upload not yet known to have arrived: the layout may be undone.
                return refuse(
                    ErrorCode::TryAgain,
                    format!("blob {blob:?} of inode {ino}: its upload is being checked; ask again"),
                );
            }
        }
    }

    /// The layout of `ino` as it is now, unless it names a raced blob not yet checked.
    fn layout_now(&self, ino: Ino) -> Result<Answer, Unchecked> {
        let state = self.lock();
        let inode = match state.ns.get(ino) {
            Ok(inode) => inode,
            Err(e) => return Ok(Err(e)),
        };
        let Content::File { blocks } = &inode.content else {
            return Ok(refuse(
                ErrorCode::IsDir,
                format!("inode {ino}: not a regular file"),
            ));
        };
        let mut seen = std::collections::HashSet::new();
        let locations: Vec<_> = blocks
            .iter()
            .flatten()
            .filter(|slice| seen.insert(slice.blob))
            .map(|slice| (slice.blob, state.registry.live_locations(&slice.blob)))
            .collect();
        if locations.iter().any(|(_, at)| at.is_empty()) && state.registry.settling(Instant::now())
        {
            return Ok(Err(not_settled()));
        }
        if let Some((blob, _)) = locations
            .iter()
            .find(|(blob, _)| state.registry.is_unchecked(blob))
        {
            return Err(Unchecked(*blob));
        }
        Ok(Ok(Response::Layout(Layout {
            attr: inode.attr.clone(),
            block_size: self.block_size,
            blocks: blocks.clone(),
            locations,
        })))
    }

    /// Keeps blobs a client is still uploading or committing from the collector.
    pub(super) fn keep_blocks(&self, ids: &[BlockId]) -> Answer {
        self.lock().registry.keep(ids, Instant::now());
        Ok(Response::Done)
    }

    /// A page of the referenced blobs and where they are (for `vgctl fsck`).
    pub(super) fn list_blocks(&self, after: Option<BlockId>, limit: u32) -> Answer {
        let state = self.lock();
        let (blocks, more) =
            state
                .registry
                .list_blocks(state.ns.refs(), after, limit.clamp(1, 100_000));
        Ok(Response::Blocks { blocks, more })
    }
}

/// How long a layout naming a raced blob not yet checked waits for the check before it
/// is answered "try again" (and the client asks again).
const LAYOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A layout named this raced blob, not yet checked.
struct Unchecked(BlockId);

/// Refuses a change naming a blob the cluster no longer holds (collected while the
/// client was slow to commit): it must be uploaded again, not referenced.
fn all_held<'a>(
    state: &State,
    slices: impl IntoIterator<Item = &'a Slice>,
) -> Result<(), RemoteError> {
    match slices
        .into_iter()
        .find(|s| !state.registry.has_any_location(&s.blob))
    {
        Some(_) if state.registry.settling(Instant::now()) => Err(not_settled()),
        Some(lost) => refuse(
            ErrorCode::Unavailable,
            format!("blob {:?} has no replica; upload it again", lost.blob),
        ),
        None => Ok(()),
    }
}

/// The refusal of a request that needs storages this nameserver has not heard from yet
/// (it has just started leading): asked again, it is answered once they have registered.
fn not_settled() -> RemoteError {
    RemoteError::new(
        ErrorCode::TryAgain,
        "this nameserver has only just started leading: storages are still reporting their blocks; ask again",
    )
}
