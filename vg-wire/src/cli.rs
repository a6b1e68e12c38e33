//! Helpers shared by the vg binaries: TLS flags, host names, log setup and shutdown
//! signals.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;

use tracing_subscriber::EnvFilter;

use crate::tls::TlsPaths;

/// The first address `host` resolves to, with `port`.
pub async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// The TLS flags of every binary; unset paths default to the original layout under
/// `certs/` for the peer's name.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA certificate [default: certs/rootCA.crt].
    #[arg(long, alias = "ca_cert", env = "VG_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// This peer's certificate [default: certs/NAME/NAME.crt].
    #[arg(long, env = "VG_CERTFILE", global = true)]
    pub certfile: Option<std::path::PathBuf>,
    /// This peer's private key [default: certs/NAME/NAME.key].
    #[arg(long, env = "VG_KEYFILE", global = true)]
    pub keyfile: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The paths for peer `name`.
    pub fn paths(&self, name: &str) -> TlsPaths {
        TlsPaths::with_defaults(
            self.ca_cert.clone(),
            self.certfile.clone(),
            self.keyfile.clone(),
            name,
        )
    }
}

/// Installs the global log subscriber: to `logfile` if given, else stderr, at `level`
/// (`error`, `warn`, `info`, `debug`, `trace`, or a full `RUST_LOG`-style filter).
pub fn init_logging(logfile: Option<&Path>, level: &str) -> std::io::Result<()> {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        // Colours only for people at a terminal, not for `docker-compose logs` or files.
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// When a server acknowledges a change (ARCHITECTURE.md, "Durability").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Once written (the nameserver's log, a storage's block): it survives any crash of
    /// the process; a thread syncs continuously in the background, and `Sync` requests
    /// wait for it.
    #[default]
    Written,
    /// Once synced: every reply waits for the disk.
    Strict,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "written" => Ok(Durability::Written),
            "strict" => Ok(Durability::Strict),
            other => Err(format!(
                "unknown durability {other:?}: expected written or strict"
            )),
        }
    }
}
