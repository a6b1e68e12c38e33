//! The log's gate: before the log syncs entries that name blobs storages acknowledged as
//! written but not synced, those storages sync them, as do those of the raced writes
//! among them whose uploads were not synced (once their client vouched for them, or
//! checked, see `service::raced`), so that a power loss never leaves a synced entry
//! naming a blob that is gone. The leader finds the storages in its
//! registry; a follower, whose registry is empty (storages report to the leader only),
//! asks the leader where they are, and keeps the answer.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use vg_wire::ns::{Request, Response};
use vg_wire::rpc::Target;
use vg_wire::{storage, Location};

use super::{Answer, Service};
use crate::log::Gate;

/// How long the gate waits before asking again a storage that did not sync, or a leader
/// that did not say where the storages are.
const RETRY: Duration = Duration::from_millis(100);

impl Service {
    /// Has the log ask the storages a record depends on to sync before it syncs the
    /// record.
    pub fn install_gate(self: &Arc<Self>) {
        let service = Arc::downgrade(self);
        let gate: Gate = Arc::new(move |needs, end| {
            let service = service.clone();
            Box::pin(async move {
                let Some(service) = service.upgrade() else {
                    return false;
                };
                let Some((holders, vouched)) = service.unsynced_races(end).await else {
                    return false;
                };
                let mut needs = needs;
                needs.extend(holders);
                if !needs.is_empty() && !service.sync_storages(needs).await {
                    return false;
                }
                if let Some(log) = service.lock().log.clone() {
                    for index in vouched {
                        log.checked(index, false);
                    }
                }
                true
            })
        });
        if let Some(log) = &self.lock().log {
            log.set_gate(gate);
        }
    }

    /// Has each storage in `needs` that is still active sync what it acknowledged;
    /// returns true once all did (retrying those that failed to answer) or are no longer
    /// active (their copies are re-made elsewhere, from copies already synced), false if
    /// the nameserver stopped meanwhile.
    pub async fn sync_storages(&self, mut needs: BTreeSet<String>) -> bool {
        while !self.stopped.load(Ordering::Acquire) {
            let Some(targets) = self.locate_storages(&needs).await else {
                tokio::time::sleep(RETRY).await;
                continue;
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
                        self.gate_syncs.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        warn!(storage = %name, answer = ?other, "storage did not sync; asking again");
                        // Perhaps it moved: a follower asks the leader again.
                        self.storages_seen.lock().expect("seen lock").remove(&name);
                    }
                }
            }
            if needs.is_empty() {
                return true;
            }
            tokio::time::sleep(RETRY).await;
        }
        false
    }

    /// Where the active storages among `names` are; `None` if that cannot be known now
    /// (no leader to ask, or it did not answer). The registry of a member that leads
    /// knows them once they reported; before that (a member that just took over) the
    /// storages it saw as a follower stand in. A follower asks the leader for those it
    /// has not seen.
    async fn locate_storages(&self, names: &BTreeSet<String>) -> Option<Vec<Location>> {
        let (mut found, unknown, reported) = {
            let state = self.lock();
            let (mut found, mut unknown) = (Vec::new(), Vec::new());
            for name in names {
                match state.registry.active_location(name) {
                    Some(location) => found.push(location),
                    None => unknown.push(name),
                }
            }
            let reported = state.leading.is_some() && !state.registry.settling(Instant::now());
            (found, unknown, reported)
        };
        if unknown.is_empty() || reported {
            // A storage the registry does not hold active has its copies re-made
            // elsewhere, from copies already synced.
            return Some(found);
        }
        let missing = {
            let seen = self.storages_seen.lock().expect("seen lock");
            unknown.iter().any(|name| !seen.contains_key(*name))
        };
        if missing {
            let leader = self.raft().metrics().borrow().current_leader;
            match leader {
                Some(leader) if leader != self.id => self.ask_leader_for_storages().await?,
                // Leading, before the storages reported: those not seen are skipped.
                Some(_) => {}
                None => return None,
            }
        }
        let seen = self.storages_seen.lock().expect("seen lock");
        found.extend(unknown.iter().filter_map(|name| seen.get(*name).cloned()));
        Some(found)
    }

    /// Where the active storages are (a follower's gate asks the leader).
    pub(super) fn active_storages(&self) -> Answer {
        Ok(Response::Storages(self.lock().registry.active_locations()))
    }

    /// Learns from the leader where the active storages are.
    async fn ask_leader_for_storages(&self) -> Option<()> {
        let member = {
            let metrics = self.raft().metrics().borrow().clone();
            let leader = metrics.current_leader?;
            metrics
                .membership_config
                .membership()
                .get_node(&leader)?
                .clone()
        };
        let target = member.target().await.ok()?;
        let storages = match self.dialer.call(&target, &Request::Storages).await {
            Ok(Response::Storages(storages)) => storages,
            other => {
                debug!(leader = %member.addr, answer = ?other.map(|_| ()), "the leader did not say where the storages are");
                return None;
            }
        };
        let mut seen = self.storages_seen.lock().expect("seen lock");
        *seen = storages.into_iter().map(|s| (s.name.clone(), s)).collect();
        Some(())
    }
}
