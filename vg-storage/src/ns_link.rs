//! The storage's link to the nameserver: register, report blocks, activate, heartbeat,
//! carry out commands; on any failure, back off and start over (re-registering).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vg_wire::ns::{Command, Request, Response};
use vg_wire::rpc::Target;
use vg_wire::BlockId;

use crate::server::{Changes, Storage};

/// Blocks per report message.
const REPORT_BATCH: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the link forever.
pub async fn run(storage: Arc<Storage>, ns: Target, advertise: SocketAddr, heartbeat: Duration) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&storage, &ns, advertise, heartbeat, &mut backoff).await {
            Ok(()) => info!("nameserver asked to register again"),
            Err(e) => {
                storage.dialer.forget(&ns);
                warn!(nameserver = %ns.addr, error = %e, retry_in = ?backoff, "lost the nameserver; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn session(
    storage: &Arc<Storage>,
    ns: &Target,
    advertise: SocketAddr,
    heartbeat: Duration,
    backoff: &mut Duration,
) -> vg_wire::Result<()> {
    let store = &storage.store;
    let call =
        |request: Request| async move { storage.dialer.call::<_, Response>(ns, &request).await };
    // Changes made before the report are covered by it.
    *storage.changes.lock().expect("changes lock") = Changes::default();
    call(Request::Register {
        name: storage.name.clone(),
        addr: advertise,
        capacity: store.capacity(),
        used: store.used(),
    })
    .await?;
    let blocks = store.list();
    let mut deleted = 0;
    for batch in blocks.chunks(REPORT_BATCH) {
        if let Response::Delete(ids) = call(Request::Report {
            blocks: batch.to_vec(),
        })
        .await?
        {
            deleted += delete_unless_new(storage, ids).len();
        }
    }
    call(Request::Activate).await?;
    info!(nameserver = %ns.addr, blocks = blocks.len(), deleted, "registered and reported blocks");
    *backoff = Duration::from_millis(100);
    let mut interval = tokio::time::interval(heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = storage.wake.notified() => {}
        }
        let changes = std::mem::take(&mut *storage.changes.lock().expect("changes lock"));
        let request = Request::Heartbeat {
            used: store.used(),
            received: changes.received,
            removed: changes.removed,
            bad: changes.bad,
        };
        let Response::Commands(commands) = call(request).await? else {
            continue;
        };
        for command in commands {
            match command {
                Command::Replicate { id, sources } => {
                    let storage = storage.clone();
                    tokio::spawn(async move { storage.replicate(id, sources).await });
                }
                Command::Delete(ids) => {
                    let removed = delete_unless_new(storage, ids);
                    info!(
                        blocks = removed.len(),
                        "deleted blocks on the nameserver's request"
                    );
                }
                Command::Reregister => return Ok(()),
            }
        }
    }
}

/// Deletes blocks on the nameserver's request, except those stored since the report it
/// answers or being stored now: it decided without knowing of those copies (an upload
/// that did not wait for its placement, the same bytes written anew), and the next
/// heartbeat reports them instead. A few at a time under the locks an upload takes to
/// start and to finish, so that none slips between the check and the deletion, and
/// uploads do not wait for a long list. Returns the blocks deleted.
fn delete_unless_new(storage: &Storage, ids: Vec<BlockId>) -> Vec<BlockId> {
    const AT_A_TIME: usize = 256;
    let mut removed = Vec::new();
    for ids in ids.chunks(AT_A_TIME) {
        let mut changes = storage.changes.lock().expect("changes lock");
        let receiving = storage.receiving.lock().expect("receiving lock");
        let new: HashSet<&BlockId> = changes.received.iter().map(|(id, _)| id).collect();
        let gone: Vec<BlockId> = ids
            .iter()
            .filter(|id| !new.contains(id) && !receiving.contains_key(id))
            .filter(|id| storage.store.delete(id))
            .copied()
            .collect();
        drop(receiving);
        changes.deleted(gone.clone());
        removed.extend(gone);
    }
    removed
}
