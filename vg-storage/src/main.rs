//! `vg-storage`: parses flags, sets up logging, runs a storage until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vg_wire::size::{parse_duration, parse_size};

/// A vg storage: keeps replicated blocks on local disk.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Storage name (must match its certificate).
    #[arg(long, env = "VG_NAME")]
    name: String,
    /// Address to listen on; also advertised unless --advertise is given.
    #[arg(long, env = "VG_HOSTNAME", default_value = "127.0.0.1")]
    hostname: String,
    /// UDP port to listen on.
    #[arg(long, env = "VG_PORT", default_value_t = 8001)]
    port: u16,
    /// Address other peers reach this storage at (HOST:PORT).
    #[arg(long, env = "VG_ADVERTISE")]
    advertise: Option<String>,
    /// Bytes this storage may hold (e.g. 1MiB, 10G).
    #[arg(long, env = "VG_CAPACITY", value_parser = parse_size)]
    capacity: u64,
    /// Directory for the blocks.
    #[arg(long, env = "VG_ROOTPATH")]
    rootpath: PathBuf,
    /// Nameserver host.
    #[arg(
        long,
        alias = "ns_hostname",
        env = "VG_NS_HOSTNAME",
        default_value = "127.0.0.1"
    )]
    ns_hostname: String,
    /// Nameserver port.
    #[arg(long, alias = "ns_port", env = "VG_NS_PORT", default_value_t = 8000)]
    ns_port: u16,
    /// The nameservers of a group, `[NAME@]HOST:PORT` (NAME: the member's certificate
    /// name, `nameserver` by default), repeated or comma-separated; instead of
    /// `--ns-hostname` and `--ns-port`.
    #[arg(long, env = "VG_NS", value_delimiter = ',')]
    ns: Vec<String>,
    /// Bytes per second the background scrub re-reads and re-hashes (e.g. 8MiB).
    #[arg(long, env = "VG_SCRUB_RATE", default_value = "8MiB", value_parser = parse_size)]
    scrub_rate: u64,
    /// How often a scrub pass over every block starts at most (e.g. 24h; 0: one pass
    /// after another).
    #[arg(long, env = "VG_SCRUB_EVERY", default_value = "24h", value_parser = parse_duration)]
    scrub_every: std::time::Duration,
    /// When a block is acknowledged: `written` (synced by a background thread at once;
    /// an fsync through the mount waits for it) or `strict` (every reply after its sync).
    #[arg(long, env = "VG_DURABILITY", default_value = "written")]
    durability: vg_wire::cli::Durability,
    #[command(flatten)]
    tls: vg_wire::cli::TlsArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, env = "VG_METRICS")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    log: vg_wire::cli::LogArgs,
}

async fn resolve(host: &str, port: u16, flag: &str) -> anyhow::Result<SocketAddr> {
    vg_wire::cli::resolve(host, port)
        .await
        .with_context(|| format!("resolve {flag} {host}"))
}

// One runtime thread: a request is answered by the thread that received it. With a
// worker per core, each small request woke another thread to run it (random 4 KiB reads
// through the mount: 6,580 → 7,610 IOPS over eight alternating runs, sequential reads
// level). Disk work and hashing run on the blocking pool either way.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("vg-storage: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init().context("open log file")?;
    let listen = resolve(&args.hostname, args.port, "--hostname").await?;
    let nameservers = vg_wire::cli::nameservers(&args.ns, &args.ns_hostname, args.ns_port)
        .await
        .map_err(anyhow::Error::msg)?;
    let advertise = match &args.advertise {
        Some(text) => {
            let (host, port) = text
                .rsplit_once(':')
                .with_context(|| format!("--advertise {text}: expected HOST:PORT"))?;
            Some(
                resolve(
                    host,
                    port.parse()
                        .with_context(|| format!("--advertise {text}: bad port"))?,
                    "--advertise",
                )
                .await?,
            )
        }
        None if listen.ip().is_unspecified() => anyhow::bail!(
            "--hostname {}: listening on all addresses needs --advertise HOST:PORT",
            args.hostname
        ),
        None => None,
    };
    let tls = args.tls.paths(&args.name);
    let mut config = vg_storage::Config::new(
        &args.name,
        listen,
        args.capacity,
        args.rootpath,
        nameservers[0].addr,
        tls,
    );
    config.nameservers = nameservers;
    config.advertise = advertise;
    config.scrub_rate = args.scrub_rate.max(1);
    config.scrub_every = args.scrub_every;
    config.durability = args.durability;
    config.metrics = args.metrics;
    let mut handle = vg_storage::start(config).await.context("start storage")?;
    vg_wire::cli::ready();
    tokio::select! {
        _ = handle.wait() => {}
        _ = vg_wire::cli::shutdown_signal() => {
            tracing::info!("shutting down");
            handle.kill();
        }
    }
    Ok(())
}
