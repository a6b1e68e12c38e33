//! The vg storage: keeps replicated blocks on local disk and serves them.
//!
//! [`start`] opens the block store, starts serving, and runs the link to the nameserver
//! (registration, block report, heartbeats, commands) in the background.

pub mod block_store;
pub mod error;
mod maintenance;
mod ns_link;
mod server;
mod volumes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;
use vg_wire::rpc::{Dialer, Nameservers, Target};
use vg_wire::tls::{Identity, TlsPaths};
use vg_wire::Role;

/// How often sparse volumes of small blocks are compacted.
const COMPACT_EVERY: Duration = Duration::from_secs(30);

pub use error::{Error, Result};

/// Everything a storage needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Storage name; must match the certificate's.
    pub name: String,
    /// Address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Address others reach it at (default: the bound address).
    pub advertise: Option<SocketAddr>,
    /// Bytes it may hold.
    pub capacity: u64,
    /// Directory of the blocks.
    pub rootpath: PathBuf,
    /// The nameserver group's members (one for a nameserver alone).
    pub nameservers: Vec<Target>,
    /// CA, certificate and key.
    pub tls: TlsPaths,
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// Bytes per second the background scrub checks: it competes with clients for the
    /// disk and the CPU, so it goes slowly.
    pub scrub_rate: u64,
    /// How often a scrub pass over every block starts at most (`ZERO`: back to back).
    pub scrub_every: Duration,
    /// When a block is acknowledged.
    pub durability: vg_wire::cli::Durability,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl Config {
    /// Defaults for the timings.
    pub fn new(
        name: &str,
        listen: SocketAddr,
        capacity: u64,
        rootpath: PathBuf,
        ns_addr: SocketAddr,
        tls: TlsPaths,
    ) -> Self {
        Config {
            metrics: None,
            name: name.to_string(),
            listen,
            advertise: None,
            capacity,
            rootpath,
            nameservers: vec![Target {
                name: "nameserver".into(),
                role: Role::Nameserver,
                addr: ns_addr,
            }],
            tls,
            heartbeat: Duration::from_secs(1),
            scrub_rate: 8 << 20,
            scrub_every: Duration::from_secs(24 * 3600),
            durability: vg_wire::cli::Durability::Written,
        }
    }
}

/// A running storage.
pub struct Handle {
    /// The address it listens on.
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// Stops at once, as a crash would.
    pub fn kill(&self) {
        self.endpoint.close(0u32.into(), b"storage stopped");
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Runs until the endpoint is closed.
    pub async fn wait(&mut self) {
        for task in &mut self.tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens the block store and starts serving and talking to the nameserver.
pub async fn start(config: Config) -> Result<Handle> {
    let identity = Identity::load(&config.tls)?;
    let (name, role) = identity.name_and_role().map_err(|e| vg_wire::Error::Tls {
        path: config.tls.certfile.display().to_string(),
        reason: e.to_string(),
    })?;
    if role != Role::Storage || name != config.name {
        return Err(vg_wire::Error::Tls {
            path: config.tls.certfile.display().to_string(),
            reason: format!(
                "certificate is for {role} {name}, not storage {}",
                config.name
            ),
        }
        .into());
    }
    let store = tokio::task::spawn_blocking({
        let (root, capacity) = (config.rootpath.clone(), config.capacity);
        move || block_store::BlockStore::open(&root, capacity)
    })
    .await
    .expect("scan task does not panic")?;
    let (store, bad) = store;
    let (endpoint, addr) = vg_wire::rpc::listen(&identity, config.listen)?;
    let advertise = config.advertise.unwrap_or(addr);
    let dialer = Dialer::new(
        endpoint.clone(),
        identity.client_config()?,
        Duration::from_secs(10),
    );
    if config.nameservers.is_empty() {
        return Err(Error::Config("no nameserver given".into()));
    }
    let ns = Nameservers::new(config.nameservers.clone());
    let storage = Arc::new(server::Storage::new(
        config.name.clone(),
        Arc::new(store),
        dialer,
        config.durability == vg_wire::cli::Durability::Strict,
    ));
    if bad > 0 {
        info!(
            bad,
            "corrupt blocks found at start will be re-replicated by the cluster"
        );
    }
    info!(name = %config.name, %addr, %advertise, capacity = config.capacity, root = %config.rootpath.display(), "storage listening");
    let serve = {
        let storage = storage.clone();
        tokio::spawn(vg_wire::rpc::serve(
            endpoint.clone(),
            move |peer, send, recv| storage.clone().handle(peer, send, recv),
        ))
    };
    let link = tokio::spawn(ns_link::run(
        storage.clone(),
        ns,
        advertise,
        config.heartbeat,
    ));
    let mut tasks = vec![serve, link];
    if let Some(metrics) = config.metrics {
        tasks.push(serve_metrics(&storage, metrics).await?);
        info!(addr = %metrics, "metrics served at /metrics");
    }
    tasks.push(tokio::spawn(
        storage
            .clone()
            .scrub_loop(config.scrub_rate, config.scrub_every),
    ));
    tasks.push(tokio::spawn(storage.clone().store_loop(
        COMPACT_EVERY,
        "compact volumes",
        block_store::BlockStore::compact,
    )));
    tasks.push(tokio::spawn(storage.clone().store_loop(
        block_store::SPARE_IDLE,
        "write a spare volume",
        block_store::BlockStore::prepare_spares,
    )));
    Ok(Handle {
        addr,
        endpoint,
        tasks,
    })
}

/// Serves Prometheus metrics at `addr`: requests by operation and outcome with their
/// latency, and the store's capacity, used bytes and blocks, read at each scrape;
/// returns the task serving them.
async fn serve_metrics(
    storage: &Arc<server::Storage>,
    addr: SocketAddr,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut registry = vg_wire::metrics::prometheus_client::registry::Registry::default();
    storage.requests.register(&mut registry);
    let gauges = vg_wire::metrics::Gauges::register(
        &mut registry,
        [
            ("vg_storage_capacity_bytes", "Bytes this storage may hold"),
            (
                "vg_storage_used_bytes",
                "Bytes of blocks this storage holds",
            ),
            ("vg_storage_blocks", "Blocks this storage holds"),
        ],
    );
    let store = storage.store.clone();
    let refresh = move || gauges.set([store.capacity(), store.used(), store.list().len() as u64]);
    vg_wire::metrics::serve(addr, Arc::new(std::sync::Mutex::new(registry)), refresh)
        .await
        .map_err(|e| Error::Io {
            context: format!("serve metrics on {addr}"),
            source: e,
        })
}
