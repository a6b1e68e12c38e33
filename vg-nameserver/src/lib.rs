//! The vg nameserver: namespace, block lists, storage registry and replication.
//!
//! [`start`] runs a nameserver on a tokio runtime and returns a [`Handle`] that reports
//! the bound address and stops it; `main.rs` only parses flags and calls it.

pub mod acl;
pub mod error;
pub mod locks;
pub mod namespace;
pub mod registry;
mod service;
pub mod sessions;
pub mod wal;

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
        self.service.close();
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
    let (endpoint, addr) = vg_wire::rpc::listen(&identity, config.listen)?;
    let dialer = vg_wire::rpc::Dialer::new(
        endpoint.clone(),
        identity.client_config()?,
        Duration::from_secs(10),
    );
    let service = Arc::new(service::Service::open(&config, dialer)?);
    service.install_gate();
    info!(%addr, meta_dir = %config.meta_dir.display(), replication = config.replication, block_size = config.block_size, "nameserver listening");
    let serve = {
        let service = service.clone();
        tokio::spawn(vg_wire::rpc::serve(
            endpoint.clone(),
            move |peer, send, recv| service.clone().handle(peer, send, recv),
        ))
    };
    if let Some(metrics) = config.metrics {
        service.serve_metrics(metrics).await?;
        info!(addr = %metrics, "metrics served at /metrics");
    }
    let ticker = tokio::spawn(service.clone().tick_loop(config.tick));
    Ok(Handle {
        addr,
        endpoint,
        tasks: vec![serve, ticker],
        service,
    })
}
