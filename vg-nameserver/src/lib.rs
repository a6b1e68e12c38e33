//! The vg nameserver: namespace, block lists, storage registry and replication.
//!
//! [`start`] runs a nameserver on a tokio runtime and returns a [`Handle`] that reports
//! the bound address and stops it; `main.rs` only parses flags and calls it.

pub mod acl;
pub mod error;
pub mod locks;
pub mod log;
pub mod namespace;
pub mod raft;
pub mod registry;
mod service;
pub mod sessions;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;
use vg_wire::tls::{Identity, TlsPaths};

pub use error::{Error, Result};
pub use vg_wire::cli::Durability;

/// Everything a nameserver needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Directory of the write-ahead log and snapshots.
    pub meta_dir: PathBuf,
    /// Copies of each block.
    pub replication: u32,
    /// Largest block, in bytes.
    pub block_size: u32,
    /// CA, certificate and key.
    pub tls: TlsPaths,
    /// A storage silent this long is declared down.
    pub heartbeat_timeout: Duration,
    /// Unreferenced blocks are deleted after this long.
    pub gc_grace: Duration,
    /// Period of the replication and failure-detection pass.
    pub tick: Duration,
    /// Log size that triggers a snapshot.
    pub snapshot_bytes: u64,
    /// A mount that does not renew its session within this long loses its holds on
    /// open files (files unlinked while it had them open are freed).
    pub session_lease: Duration,
    /// When a change is acknowledged.
    pub durability: Durability,
    /// The file naming the machine's boot (changed by a reboot, so by a power loss):
    /// recovery after a reboot keeps only the log records marked as synced with the
    /// blobs they name. A test points it elsewhere to simulate power cuts.
    pub boot_id_file: PathBuf,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// This nameserver's number in its group.
    pub node_id: raft::NodeId,
    /// The group to form when the metadata directory holds none yet: every member with
    /// its number. Empty: a group of this nameserver alone.
    pub members: BTreeMap<raft::NodeId, raft::Member>,
    /// Join an existing group (its leader adds this member) rather than form one.
    pub join: bool,
    /// Base of the group's timeouts: heartbeats at this period, elections after 3 to 6
    /// times it without one.
    pub heartbeat: Duration,
    /// How long the runtime's thread polls for the next request after answering one
    /// (see [`vg_wire::poll`]); zero by default here, as it spins on the caller's
    /// thread, which a test may share.
    pub poll: Duration,
    /// Whether that polling runs at the lowest priority (`SCHED_IDLE`) rather than the
    /// thread's own.
    pub poll_idle: bool,
}

impl Config {
    /// Defaults for everything but the address, directory and TLS material.
    pub fn new(listen: SocketAddr, meta_dir: PathBuf, tls: TlsPaths) -> Self {
        Config {
            listen,
            meta_dir,
            replication: 2,
            block_size: 4 << 20,
            tls,
            heartbeat_timeout: Duration::from_secs(10),
            gc_grace: Duration::from_secs(300),
            tick: Duration::from_secs(1),
            snapshot_bytes: 64 << 20,
            session_lease: Duration::from_secs(30),
            durability: Durability::Written,
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            metrics: None,
            node_id: 1,
            members: BTreeMap::new(),
            join: false,
            heartbeat: Duration::from_millis(50),
            poll: Duration::ZERO,
            poll_idle: false,
        }
    }
}

/// A running nameserver.
pub struct Handle {
    /// The address it listens on.
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    service: Arc<service::Service>,
}

impl Handle {
    /// Stops at once, as a crash would: connections are dropped and nothing is flushed
    /// beyond what was already acknowledged.
    pub fn kill(&self) {
        self.service.stop();
        self.endpoint.close(0u32.into(), b"nameserver stopped");
        for task in &self.tasks {
            task.abort();
        }
        let service = self.service.clone();
        tokio::spawn(async move { service.close().await });
    }

    /// [`Handle::kill`], then waits until the log is closed, so that another
    /// nameserver in this process may open the metadata directory.
    pub async fn crash(self) {
        self.kill();
        self.service.close().await;
    }

    /// Stops serving, syncs the log (asking the storages first, for a few seconds at
    /// most) and waits until it is closed.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.service.settle(Duration::from_secs(3)).await;
        self.kill();
        self.endpoint.wait_idle().await;
        self.service.close().await;
    }

    /// Runs until the endpoint is closed.
    pub async fn wait(&mut self) {
        for task in &mut self.tasks {
            let _ = task.await;
        }
    }
}

/// Recovers the metadata and starts serving.
pub async fn start(config: Config) -> Result<Handle> {
    if config.replication == 0
        || config.block_size == 0
        || config.block_size > vg_wire::codec::MAX_FRAME
    {
        return Err(Error::Refused(vg_wire::error::RemoteError::new(
            vg_wire::ErrorCode::Invalid,
            format!(
                "replication must be at least 1 and block size 1..={} bytes",
                vg_wire::codec::MAX_FRAME
            ),
        )));
    }
    let identity = Identity::load(&config.tls)?;
    let (endpoint, addr, socket) = vg_wire::rpc::listen_watched(&identity, config.listen)?;
    let dialer = vg_wire::rpc::Dialer::new(
        endpoint.clone(),
        identity.client_config()?,
        Duration::from_secs(10),
    );
    let (service, log) = service::Service::open(&config, dialer.clone())?;
    service.poller.watch(socket);
    let service = Arc::new(service);
    service.install_gate();
    let raft = join_group(&config, &identity, addr, &service, log, dialer).await?;
    service.set_raft(raft.clone());
    let leadership = tokio::spawn(service.clone().follow_leadership());
    info!(%addr, meta_dir = %config.meta_dir.display(), replication = config.replication, block_size = config.block_size, node_id = config.node_id, "nameserver listening");
    let serve = {
        let service = service.clone();
        tokio::spawn(vg_wire::rpc::serve(
            endpoint.clone(),
            move |peer, send, recv| service.clone().handle(peer, send, recv),
        ))
    };
    let mut tasks = vec![serve, leadership];
    if let Some(metrics) = config.metrics {
        tasks.push(service.serve_metrics(metrics).await?);
        info!(addr = %metrics, "metrics served at /metrics");
    }
    tasks.push(tokio::spawn(service.clone().tick_loop(config.tick)));
    tasks.push(tokio::spawn(service.clone().check_raced_loop()));
    tasks.push(tokio::spawn(service.poller.clone().run()));
    if config.members.len() <= 1 && !config.join {
        // Alone, it leads at once (after applying what its log holds): serve from the
        // start rather than refuse the first requests.
        let mut metrics = raft.metrics();
        let leading = metrics.wait_for(|m| m.current_leader == Some(config.node_id));
        if tokio::time::timeout(Duration::from_secs(10), leading)
            .await
            .is_err()
        {
            tracing::warn!("not leading its group of one after 10 s");
        }
        service.wait_leading(Duration::from_secs(10)).await;
    }
    Ok(Handle {
        addr,
        endpoint,
        tasks,
        service,
    })
}

/// Starts this nameserver's member of its group, and forms the group if the metadata
/// directory holds none yet (`config.members`, or this nameserver alone).
async fn join_group(
    config: &Config,
    identity: &Identity,
    addr: SocketAddr,
    service: &Arc<service::Service>,
    log: log::LogStore,
    dialer: vg_wire::rpc::Dialer,
) -> Result<raft::Raft> {
    let heartbeat = config.heartbeat.as_millis().max(1) as u64;
    let raft_config = openraft::Config {
        cluster_name: "vg".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: heartbeat * 3,
        election_timeout_max: heartbeat * 6,
        // The service writes the snapshot file when its namespace is exactly the applied
        // state, and then has openraft take it.
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    }
    .validate()
    .map_err(|e| group_error(format!("group settings: {e}")))?;
    let machine = service::Machine {
        service: Arc::downgrade(service),
        log: log.clone(),
    };
    let network = raft::Network { dialer };
    let raft = raft::Raft::new(config.node_id, Arc::new(raft_config), network, log, machine)
        .await
        .map_err(|e| group_error(format!("start the group's member: {e}")))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| group_error(e.to_string()))?;
    if !initialized && config.join {
        info!("waiting for the group's leader to add this nameserver");
    } else if !initialized {
        let members = match config.members.is_empty() {
            true => {
                let (name, _) = identity
                    .name_and_role()
                    .map_err(|e| group_error(e.to_string()))?;
                BTreeMap::from([(
                    config.node_id,
                    raft::Member {
                        name,
                        addr: addr.to_string(),
                    },
                )])
            }
            false => config.members.clone(),
        };
        info!(members = ?members, "forming the nameserver group");
        if let Err(e) = raft.initialize(members).await {
            // Another member formed it first: this one joins.
            tracing::debug!(error = %e, "group already formed");
        }
    }
    Ok(raft)
}

fn group_error(message: String) -> Error {
    Error::Group(message)
}
