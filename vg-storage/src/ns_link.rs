//! The storage's link to the nameserver: register, report blocks, activate, heartbeat,
//! carry out commands; on any failure, back off and start over (re-registering).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vg_wire::ns::{Command, Request, Response};
use vg_wire::rpc::Nameservers;
use vg_wire::BlockId;

use crate::server::{Changes, Storage};

/// Blocks per report message.
const REPORT_BATCH: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the link forever, with the group's leader (each request goes to the member that
/// answered last, or the next one while members do not lead or cannot be reached; a
/// new leader that does not know this storage has it register again).
pub async fn run(
    storage: Arc<Storage>,
    ns: Nameservers,
    advertise: SocketAddr,
    heartbeat: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match session(&storage, &ns, advertise, heartbeat, &mut backoff).await {
            Ok(()) => {
                info!(nameserver = %ns.current().1.addr, "nameserver asked to register again")
            }
            Err(e) => {
                warn!(nameservers = %ns, error = %e, retry_in = ?backoff, "lost the nameserver; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn session(
    storage: &Arc<Storage>,
    ns: &Nameservers,
    advertise: SocketAddr,
    heartbeat: Duration,
    backoff: &mut Duration,
) -> vg_wire::Result<()> {
    let store = &storage.store;
    // One round of the members per request: a failure starts the session over.
    let call = |request: Request| async move {
        ns.call::<_, Response>(&storage.dialer, &request, Duration::ZERO)
            .await
    };
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
    info!(nameserver = %ns.current().1.addr, blocks = blocks.len(), deleted, "registered and reported blocks");
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
            received: changes.received.into_iter().collect(),
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
        let gone: Vec<BlockId> = ids
            .iter()
            .filter(|id| !changes.received.contains_key(id) && !receiving.contains_key(id))
            .filter(|id| storage.store.delete(id))
            .copied()
            .collect();
        drop(receiving);
        changes.deleted(gone.clone());
        removed.extend(gone);
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vg_wire::rpc::Dialer;
    use vg_wire::tls::{Ca, Identity, Validity};
    use vg_wire::Role;

    use super::*;
    use crate::block_store::BlockStore;
    use crate::server::Receiving;

    /// A storage over a new store in `dir`, with a dialer it does not use here.
    fn storage(dir: &Path) -> Storage {
        let ca = Ca::generate("test CA").unwrap();
        vg_wire::tls::write_file(&dir.join("ca.crt"), &ca.pem().cert, 0o644).unwrap();
        let pem = ca
            .issue("s0", Role::Storage, &[], Validity::default())
            .unwrap();
        let mut paths = vg_wire::tls::write_peer(dir, "s0", &pem).unwrap();
        paths.ca_cert = dir.join("ca.crt");
        let identity = Identity::load(&paths).unwrap();
        let endpoint = vg_wire::rpc::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let dialer = Dialer::new(
            endpoint,
            identity.client_config().unwrap(),
            Duration::from_secs(1),
        );
        let (store, _) = BlockStore::open(&dir.join("data"), 1 << 30).unwrap();
        Storage::new("s0".into(), Arc::new(store), dialer, false)
    }

    #[tokio::test]
    async fn deletions_spare_blocks_stored_since_the_report_or_being_stored() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(dir.path());
        let blocks: Vec<BlockId> = (1..=3u8)
            .map(|n| {
                let data = vec![n; 1000];
                let id = BlockId::of(&data);
                storage.store.put(&id, &data).unwrap();
                id
            })
            .collect();
        // The first was reported before the deletion was decided; the second was stored
        // since; the third is being stored again right now.
        storage.changes.lock().unwrap().stored(blocks[1], 1000);
        let receiving = Receiving::new(&storage, blocks[2]);
        assert_eq!(delete_unless_new(&storage, blocks.clone()), [blocks[0]]);
        assert!(storage.store.len_of(&blocks[0]).is_none());
        assert!(storage.store.len_of(&blocks[1]).is_some());
        assert!(storage.store.len_of(&blocks[2]).is_some());
        assert_eq!(storage.changes.lock().unwrap().removed, [blocks[0]]);
        // Once the upload is over and reported, a later deletion takes it.
        drop(receiving);
        *storage.changes.lock().unwrap() = Changes::default();
        assert_eq!(delete_unless_new(&storage, vec![blocks[2]]), [blocks[2]]);
    }
}
