//! `vg-nameserver`: parses flags, sets up logging, runs the nameserver until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vg_wire::size::{parse_duration, parse_size};

/// The vg nameserver: namespace, block lists, storage registry.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "VG_HOSTNAME", default_value = "127.0.0.1")]
    hostname: String,
    /// UDP port to listen on.
    #[arg(long, env = "VG_PORT", default_value_t = 8000)]
    port: u16,
    /// Directory for the write-ahead log and snapshots.
    #[arg(long, alias = "meta_dir", env = "VG_META_DIR", default_value = "meta")]
    meta_dir: PathBuf,
    /// Copies of each block.
    #[arg(long, env = "VG_REPLICATION", default_value_t = 2)]
    replication: u32,
    /// Largest block (e.g. 4MiB, 64KiB).
    #[arg(long, alias = "block_size", env = "VG_BLOCK_SIZE", default_value = "4MiB", value_parser = parse_size)]
    block_size: u64,
    /// A storage silent this long is declared down.
    #[arg(long, alias = "heartbeat_timeout", env = "VG_HEARTBEAT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    heartbeat_timeout: std::time::Duration,
    /// Unreferenced blocks (uploads never committed, deleted files) are removed after this long.
    #[arg(long, alias = "gc_grace", env = "VG_GC_GRACE", default_value = "5m", value_parser = parse_duration)]
    gc_grace: std::time::Duration,
    /// A mount silent this long loses its holds on open files: files unlinked while it
    /// had them open are freed.
    #[arg(long, env = "VG_SESSION_LEASE", default_value = "30s", value_parser = parse_duration)]
    session_lease: std::time::Duration,
    /// When a change is acknowledged: `written` (in the log file, synced continuously in
    /// the background; fsync waits for the sync) or `strict` (every reply after its sync).
    #[arg(long, env = "VG_DURABILITY", default_value = "written")]
    durability: vg_nameserver::Durability,
    /// The file naming the machine's boot; tests of power loss point it elsewhere.
    #[arg(
        long,
        env = "VG_BOOT_ID_FILE",
        default_value = "/proc/sys/kernel/random/boot_id",
        hide = true
    )]
    boot_id_file: PathBuf,
    /// This nameserver's number in its group.
    #[arg(long, env = "VG_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// The group to form on a first start, every member with its number (this one
    /// included): `ID=[NAME@]HOST:PORT,...`, NAME being the member's certificate name
    /// (default `nameserver`). Without it, a group of this nameserver alone. Ignored
    /// once the metadata directory holds a group.
    #[arg(long, env = "VG_PEERS", value_parser = vg_nameserver::raft::parse_members)]
    peers: Option<std::collections::BTreeMap<u64, vg_nameserver::raft::Member>>,
    /// Join an existing group instead of forming one: wait until its leader adds this
    /// nameserver (`vgctl nameserver add ID [NAME@]HOST:PORT`).
    #[arg(long, env = "VG_JOIN", conflicts_with = "peers")]
    join: bool,
    /// How long to poll for the next request after answering one, yielding the CPU at
    /// each turn, instead of sleeping (0: never): a request that finds the nameserver
    /// asleep waits for its CPU to wake, tens of µs on a virtual machine.
    #[arg(long, env = "VG_NS_POLL", default_value = "200us", value_parser = parse_duration)]
    poll: std::time::Duration,
    /// Poll at the lowest CPU priority (`SCHED_IDLE`; needs `CAP_SYS_NICE` to take the
    /// thread's priority back) instead of the thread's own.
    #[arg(long, env = "VG_NS_POLL_IDLE")]
    poll_idle: bool,
    #[command(flatten)]
    tls: vg_wire::cli::TlsArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, env = "VG_METRICS")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    log: vg_wire::cli::LogArgs,
}

// One thread: a metadata request costs microseconds of CPU, while handing it between
// worker threads (QUIC endpoint, connection, request task) costs a wake-up each; on one
// thread a lookup measured 15% faster. Durability waits run on the WAL's own thread.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("vg-nameserver: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init().context("open log file")?;
    let listen = vg_wire::cli::resolve(&args.hostname, args.port)
        .await
        .with_context(|| format!("resolve --hostname {}", args.hostname))?;
    let block_size = u32::try_from(args.block_size).context("--block-size: too large")?;
    let tls = args.tls.paths("nameserver");
    let mut config = vg_nameserver::Config::new(listen, args.meta_dir, tls);
    config.replication = args.replication;
    config.block_size = block_size;
    config.heartbeat_timeout = args.heartbeat_timeout;
    config.gc_grace = args.gc_grace;
    anyhow::ensure!(
        args.session_lease >= std::time::Duration::from_secs(1),
        "--session-lease {:?}: at least 1s (mounts renew within a third of it)",
        args.session_lease
    );
    config.session_lease = args.session_lease;
    config.durability = args.durability;
    config.boot_id_file = args.boot_id_file;
    config.metrics = args.metrics;
    config.poll = args.poll;
    config.poll_idle = args.poll_idle;
    config.node_id = args.node_id;
    config.join = args.join;
    if let Some(peers) = args.peers {
        anyhow::ensure!(
            peers.contains_key(&args.node_id),
            "--peers does not name this nameserver's --node-id {}",
            args.node_id
        );
        config.members = peers;
    }
    let mut handle = vg_nameserver::start(config)
        .await
        .context("start nameserver")?;
    vg_wire::cli::ready();
    tokio::select! {
        _ = handle.wait() => {}
        _ = vg_wire::cli::shutdown_signal() => {
            tracing::info!("shutting down");
            handle.stop().await;
        }
    }
    Ok(())
}
