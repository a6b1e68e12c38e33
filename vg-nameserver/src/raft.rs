//! The nameserver group's Raft types, and the network between its members.
//!
//! The log's entries are [`Proposal`]s: the ops one request made, as the leader applied
//! them. A member's messages to another (append, vote, snapshot) travel as
//! [`vg_wire::ns::Request::Raft`] frames whose bytes are openraft's own types, encoded
//! here: vg-wire carries them without depending on openraft.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::net::SocketAddr;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use vg_wire::rpc::{Dialer, Target};
use vg_wire::{ns, Role};

use crate::namespace::Op;

/// A member's number in the group.
pub type NodeId = u64;

/// A member of the nameserver group: the name its certificate carries and its address
/// (`host:port`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Common name of its certificate.
    pub name: String,
    /// Where it listens.
    pub addr: String,
}

impl Member {
    /// The member as a peer to dial, once its address is resolved.
    pub(crate) async fn target(&self) -> std::io::Result<Target> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{}: no address", self.addr)))?;
        Ok(Target {
            name: self.name.clone(),
            role: Role::Nameserver,
            addr,
        })
    }
}

/// Parses a group's members, `ID=[NAME@]HOST:PORT,...` (NAME defaults to `nameserver`,
/// the name `vgctl certs init` gives a nameserver's certificate).
pub fn parse_members(text: &str) -> Result<BTreeMap<NodeId, Member>, String> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, rest) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected ID=[NAME@]HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("{item:?}: member number {id:?} is not a number"))?;
        let (name, addr) = rest.split_once('@').unwrap_or(("nameserver", rest));
        if !addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(format!("{item:?}: address {addr:?} is not HOST:PORT"));
        }
        let member = Member {
            name: name.to_string(),
            addr: addr.to_string(),
        };
        if members.insert(id, member).is_some() {
            return Err(format!("member {id} named twice"));
        }
    }
    match members.is_empty() {
        true => Err("no member named".into()),
        false => Ok(members),
    }
}

/// One request's changes, as the leader applied them: a log entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Proposal {
    /// The ops, in the order they apply.
    pub ops: Vec<Op>,
    /// Storages that acknowledged blobs these ops name without syncing them: the entry
    /// is not synced before they sync.
    pub needs: BTreeSet<String>,
    /// The member that proposed it and its number there: how the proposer knows its own
    /// entry when the log gives it back to apply.
    pub by: (NodeId, u64),
}

/// How a member applied an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The proposer had applied it when it proposed it, and the log kept it there.
    AsProposed,
    /// Applied from the log (a follower, or a proposer whose earlier proposals the log
    /// lost to a change of leader).
    Applied,
}

openraft::declare_raft_types!(
    /// The nameserver group's types.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = NodeId,
        Node = Member,
);

/// The group as openraft runs it.
pub type Raft = openraft::Raft<TypeConfig>;
/// A position in the log.
pub type LogId = openraft::LogId<NodeId>;
/// An entry of the log.
pub type Entry = openraft::Entry<TypeConfig>;
/// What a proposal's proposer waits on: the entry's log id once applied.
pub type Committed = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;
/// The membership as last applied.
pub type Membership = openraft::StoredMembership<NodeId, Member>;

/// A message from one member to another, in a [`ns::Request::Raft`] frame.
#[derive(Serialize, Deserialize)]
pub enum Message {
    /// Entries to append (or a heartbeat).
    Append(AppendEntriesRequest<TypeConfig>),
    /// A request for a vote.
    Vote(VoteRequest<NodeId>),
    /// A chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to an [`Message::Append`].
pub type AppendReply = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
/// The answer to a [`Message::Vote`].
pub type VoteReply = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
/// The answer to a [`Message::Snapshot`].
pub type SnapshotReply =
    Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;

/// Opens connections to members over the nameserver's QUIC endpoint.
#[derive(Clone)]
pub struct Network {
    /// Dials members with the nameserver's certificate.
    pub dialer: Dialer,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Connection {
        Connection {
            id: target,
            dialer: self.dialer.clone(),
            member: node.clone(),
        }
    }
}

fn unreachable<E: std::error::Error + 'static, F: std::error::Error>(
    e: &E,
) -> RPCError<NodeId, Member, F> {
    RPCError::Unreachable(Unreachable::new(e))
}

/// Messages to one member.
pub struct Connection {
    id: NodeId,
    dialer: Dialer,
    member: Member,
}

impl Connection {
    /// Sends `message` and decodes the member's answer, `Result<T, E>`.
    async fn send<T, E>(
        &self,
        message: Message,
        timeout: std::time::Duration,
    ) -> Result<T, RPCError<NodeId, Member, E>>
    where
        T: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let target = self.member.target().await.map_err(|e| unreachable(&e))?;
        let bytes = vg_wire::codec::to_bytes(&message)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let request = ns::Request::Raft { message: bytes };
        let call = self.dialer.call::<_, ns::Response>(&target, &request);
        let answer = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(ns::Response::Raft { reply })) => reply,
            Ok(Ok(other)) => {
                let e = std::io::Error::other(format!("{target}: unexpected answer {other:?}"));
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{target}: no answer"),
                );
                return Err(unreachable(&e));
            }
        };
        let reply: Result<T, E> = vg_wire::codec::from_bytes(&answer)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        reply.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.id, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.send(Message::Append(rpc), option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Message::Snapshot(rpc), option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.send(Message::Vote(rpc), option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_parsed_and_bad_ones_named() {
        let members =
            parse_members("1=127.0.0.1:7000, 2=ns2@[::1]:7001,3=ns3@vg.example:7002").unwrap();
        assert_eq!(members[&1].name, "nameserver");
        assert_eq!(
            (members[&2].name.as_str(), members[&2].addr.as_str()),
            ("ns2", "[::1]:7001")
        );
        assert_eq!(members[&3].addr, "vg.example:7002");
        for (bad, says) in [
            ("1=127.0.0.1", "not HOST:PORT"),
            ("x=127.0.0.1:7000", "not a number"),
            ("127.0.0.1:7000", "expected ID="),
            ("1=a:1,1=b:2", "named twice"),
            ("", "no member"),
        ] {
            let e = parse_members(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
