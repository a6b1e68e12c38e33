//! Helpers shared by the vg binaries: TLS flags, host names, log setup and shutdown
//! signals.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tracing_subscriber::EnvFilter;

use crate::tls::TlsPaths;

/// Tells systemd (a `Type=notify` unit) that the service is serving; nothing without
/// systemd.
pub fn ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not tell systemd the service is ready");
    }
}

/// The first address `host` resolves to, with `port`.
pub async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// The nameserver group's members a client or storage was given: `--ns` values
/// (`[NAME@]HOST:PORT`, NAME being the member's certificate name, by default
/// `nameserver`), or else the one nameserver of `--ns-hostname` and `--ns-port`.
pub async fn nameservers(
    ns: &[String],
    hostname: &str,
    port: u16,
) -> Result<Vec<crate::rpc::Target>, String> {
    let target = |name: &str, addr| crate::rpc::Target {
        name: name.to_string(),
        role: crate::Role::Nameserver,
        addr,
    };
    if ns.is_empty() {
        let addr = resolve(hostname, port)
            .await
            .map_err(|e| format!("resolve --ns-hostname {hostname}: {e}"))?;
        return Ok(vec![target("nameserver", addr)]);
    }
    let mut members = Vec::new();
    for item in ns
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (name, addr) = item.split_once('@').unwrap_or(("nameserver", item));
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(host, port)| {
                Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?))
            })
            .ok_or_else(|| format!("--ns {item}: expected [NAME@]HOST:PORT"))?;
        let addr = resolve(host, port)
            .await
            .map_err(|e| format!("--ns {item}: resolve {host}: {e}"))?;
        members.push(target(name, addr));
    }
    match members.is_empty() {
        true => Err("--ns: no nameserver given".into()),
        false => Ok(members),
    }
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
/// How log lines look.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: time, level, message, fields.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The log flags of the servers and the mount.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log to this file instead of stderr.
    #[arg(long, env = "VG_LOGFILE")]
    pub logfile: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, env = "VG_LOGLEVEL", default_value = "info")]
    pub loglevel: String,
    /// Log line format.
    #[arg(long, env = "VG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Sets up logging as the flags say.
    pub fn init(&self) -> std::io::Result<()> {
        init_logging(self.logfile.as_deref(), &self.loglevel, self.log_format)
    }
}

/// Sends log lines at `level` (a filter such as `info` or `vg_storage=debug`) to
/// `logfile`, or to stderr, in `format`.
pub fn init_logging(logfile: Option<&Path>, level: &str, format: LogFormat) -> std::io::Result<()> {
    // The nameserver group's library tells of each step it takes, and of each failed
    // message to a member that is down, several lines a second: the nameserver logs the
    // events an operator needs (leadership, members), unless the filter asks for it.
    let level = match level.contains("openraft") {
        true => level.to_string(),
        false => format!("{level},openraft=off"),
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            install(filter, format, false, std::sync::Mutex::new(file));
        }
        // Colours only for people at a terminal, not for `docker-compose logs` or files.
        None => install(
            filter,
            format,
            std::io::stderr().is_terminal(),
            std::io::stderr,
        ),
    }
    Ok(())
}

fn install<W>(filter: EnvFilter, format: LogFormat, ansi: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
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
