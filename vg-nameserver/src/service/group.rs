//! The nameserver group's administration: its members, adding and removing them.

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use tracing::info;
use vg_wire::error::{ErrorCode, RemoteError};
use vg_wire::ns::{GroupStatus, MemberStatus, Response};

use super::{Answer, Service};

/// The refusal of a membership change the group did not make.
fn not_changed(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::new(
        ErrorCode::Unavailable,
        format!("membership not changed: {e}"),
    )
}

impl Service {
    /// The members, their roles and how far their logs go.
    pub(super) fn group_status(&self) -> Answer {
        let metrics = self.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replication = metrics.replication.unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(&id, member)| {
                let role = match id {
                    _ if id == self.id => "leader",
                    _ if voters.contains(&id) => "follower",
                    _ => "learner",
                };
                let log = match id == self.id {
                    true => metrics.last_log_index.map(|i| i + 1),
                    false => replication.get(&id).copied().flatten().map(|l| l.index + 1),
                };
                MemberStatus {
                    id,
                    name: member.name.clone(),
                    addr: member.addr.clone(),
                    role: role.into(),
                    log,
                }
            })
            .collect();
        Ok(Response::Group(GroupStatus {
            term: metrics.current_term,
            committed: metrics.last_applied.map_or(0, |l| l.index + 1),
            members,
        }))
    }

    /// Adds member `id`: a learner until it has the log, then a voter.
    pub(super) async fn add_member(&self, id: u64, name: String, addr: String) -> Answer {
        let member = crate::raft::parse_members(&format!("{id}={name}@{addr}"))
            .map_err(|e| RemoteError::new(ErrorCode::Invalid, e))?
            .remove(&id)
            .expect("the member parsed");
        let raft = self.raft();
        raft.add_learner(id, member.clone(), true)
            .await
            .map_err(not_changed)?;
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(not_changed)?;
        info!(member = id, name = %member.name, addr = %member.addr, "nameserver joined the group");
        self.group_status()
    }

    /// Removes member `id` from the group.
    pub(super) async fn remove_member(&self, id: u64) -> Answer {
        let membership = self.raft().metrics().borrow().membership_config.clone();
        if membership.membership().get_node(&id).is_none() {
            return Err(RemoteError::new(
                ErrorCode::NotFound,
                format!("nameserver {id} is not a member of the group"),
            ));
        }
        self.raft()
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(not_changed)?;
        info!(member = id, "nameserver left the group");
        self.group_status()
    }

    /// Whether this leader heard from a majority recently enough to serve: a leader cut
    /// off from the others stops answering within an election timeout, before another
    /// is elected, so that it never answers from a namespace a new leader has changed.
    pub(super) fn has_quorum(&self) -> bool {
        let quorum = self.quorum.lock().expect("quorum lock");
        let lease = std::time::Duration::from_millis(self.raft().config().election_timeout_min);
        quorum.alone || quorum.acked.is_some_and(|at| at.elapsed() < lease)
    }
}
