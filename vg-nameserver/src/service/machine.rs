//! The service's state as the Raft group's state machine.
//!
//! A leader applies a request's ops when it serves the request (so that the next request
//! sees them), and proposes them; the log gives the entry back once a majority has it,
//! and [`Machine::apply`] finds it first in [`State::proposed`]: nothing left to do.
//! Followers apply what the log gives them. If a leader loses leadership with proposals
//! the log then drops, its namespace is reloaded from the snapshot and the entries
//! applied ([`Service::reload`]).

use std::io::Cursor;
use std::sync::Weak;
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageError, StoredMembership};
use tracing::warn;

use super::{Service, State};
use crate::log::{decode_snapshot_head, LogStore};
use crate::raft::{Entry, LogId, Member, NodeId, Outcome, TypeConfig};

/// Openraft's handle on the service's state.
pub(crate) struct Machine {
    pub(crate) service: Weak<Service>,
    pub(crate) log: LogStore,
}

fn sm_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageError::from_io_error(
        openraft::ErrorSubject::StateMachine,
        openraft::ErrorVerb::Write,
        std::io::Error::other(e.to_string()),
    )
}

fn snapshot_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageError::from_io_error(
        openraft::ErrorSubject::Snapshot(None),
        openraft::ErrorVerb::Read,
        std::io::Error::other(e.to_string()),
    )
}

impl Machine {
    fn service(&self) -> Option<std::sync::Arc<Service>> {
        self.service.upgrade()
    }

    /// The snapshot file, as openraft sends it to followers.
    fn current(&self) -> crate::Result<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self.log.snapshot_bytes()? else {
            return Ok(None);
        };
        let (applied, membership) =
            decode_snapshot_head(&bytes).map_err(|reason| crate::Error::Corrupt {
                path: "snapshot".into(),
                reason,
            })?;
        let Some(applied) = applied else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id: Some(applied),
                last_membership: membership,
                snapshot_id: format!("{}-{}", applied.leader_id.term, applied.index),
            },
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// The error of a call after the nameserver stopped.
fn stopped() -> StorageError<NodeId> {
    sm_error("nameserver stopped")
}

impl State {
    /// Applies one entry the log gave back, at `log_id`.
    fn apply_entry(&mut self, service: &Service, entry: Entry) -> Outcome {
        let log_id = entry.log_id;
        let outcome = match entry.payload {
            EntryPayload::Blank => Outcome::Applied,
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                Outcome::Applied
            }
            EntryPayload::Normal(proposal) => {
                let mine = self.proposed.front().map(|p| (service.id, p.seq));
                if mine == Some(proposal.by) {
                    let proposed = self.proposed.pop_front().expect("a proposal");
                    self.registry
                        .released(proposed.released, Instant::now(), log_id.index + 1);
                    Outcome::AsProposed
                } else {
                    if !self.proposed.is_empty() {
                        service.reload(self);
                    }
                    for op in &proposal.ops {
                        if let Err(e) = self.ns.apply(op) {
                            // The leader applied it cleanly: the logs disagree. Keep going
                            // so that the rest is not lost.
                            warn!(index = log_id.index, error = %e, "entry's operation refused");
                        }
                    }
                    let released = self.ns.take_released();
                    self.registry
                        .released(released, Instant::now(), log_id.index + 1);
                    Outcome::Applied
                }
            }
        };
        self.applied = Some(log_id);
        outcome
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, Member>), StorageError<NodeId>> {
        let service = self.service().ok_or_else(stopped)?;
        let state = service.lock();
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let service = self.service().ok_or_else(stopped)?;
        let mut state = service.lock();
        Ok(entries
            .into_iter()
            .map(|entry| state.apply_entry(&service, entry))
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            machine: Machine {
                service: self.service.clone(),
                log: self.log.clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let service = self.service().ok_or_else(stopped)?;
        let installed = self
            .log
            .install_snapshot(snapshot.get_ref())
            .map_err(sm_error)?;
        let mut state = service.lock();
        state.ns = installed.ns;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.proposed.clear();
        tracing::info!(applied = ?meta.last_log_id, "snapshot installed from the leader");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.current().map_err(snapshot_error)
    }
}

/// Hands openraft the snapshot file the service wrote ([`Service::snapshot_if_due`]): the
/// service writes it at a moment when its namespace is exactly the applied state, which
/// a leader's is not while proposals are out.
pub(crate) struct Builder {
    machine: Machine,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.machine
            .current()
            .map_err(snapshot_error)?
            .ok_or_else(|| snapshot_error("no snapshot holds an entry yet"))
    }
}
