//! `vgctl`: the admin and shell client of vg, keeping the original shell client's commands.

mod certs;
mod commands;
mod shell;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vg_fuse::client::{Client, Config};
use vg_wire::tls::TlsPaths;

/// Command-line client of a vg cluster. With no command: an interactive shell.
#[derive(Parser, Debug)]
#[command(version, name = "vgctl")]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Local directory that relative local paths of put/get start from.
    #[arg(long, env = "VG_LOCAL", default_value = ".")]
    pub local: PathBuf,
    /// Log to this file instead of stderr.
    #[arg(long, env = "VG_LOGFILE")]
    pub logfile: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, env = "VG_LOGLEVEL", default_value = "error")]
    pub loglevel: String,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How to reach and authenticate to the cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Nameserver host.
    #[arg(
        long,
        alias = "ns_hostname",
        env = "VG_NS_HOSTNAME",
        default_value = "127.0.0.1",
        global = true
    )]
    pub ns_hostname: String,
    /// Nameserver port.
    #[arg(
        long,
        alias = "ns_port",
        env = "VG_NS_PORT",
        default_value_t = 8000,
        global = true
    )]
    pub ns_port: u16,
    /// Certificate name of this client (picks certs/NAME/NAME.crt).
    #[arg(long, env = "VG_CLIENT_NAME", default_value = "client", global = true)]
    pub name: String,
    /// CA certificate [default: certs/rootCA.crt].
    #[arg(long, alias = "ca_cert", env = "VG_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate [default: certs/NAME/NAME.crt].
    #[arg(long, env = "VG_CERTFILE", global = true)]
    pub certfile: Option<PathBuf>,
    /// Client key [default: certs/NAME/NAME.key].
    #[arg(long, env = "VG_KEYFILE", global = true)]
    pub keyfile: Option<PathBuf>,
    /// Give up on an unreachable cluster after this long.
    #[arg(long, env = "VG_TIMEOUT", default_value = "15s", value_parser = vg_wire::size::parse_duration, global = true)]
    pub timeout: std::time::Duration,
}

impl ConnArgs {
    /// Connects to the cluster.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let ns_addr = tokio::net::lookup_host((self.ns_hostname.as_str(), self.ns_port))
            .await
            .with_context(|| format!("resolve --ns-hostname {}", self.ns_hostname))?
            .next()
            .with_context(|| format!("--ns-hostname {}: no address", self.ns_hostname))?;
        let tls = TlsPaths::with_defaults(
            self.ca_cert.clone(),
            self.certfile.clone(),
            self.keyfile.clone(),
            &self.name,
        );
        let mut config = Config::new(ns_addr, tls);
        config.unavailable_timeout = self.timeout;
        Client::connect(&config)
            .await
            .with_context(|| format!("connect to nameserver {ns_addr}"))
    }
}

/// Commands of both the command line and the shell.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Cluster capacity, used and free space.
    Usage,
    /// Storages: name, address, free, capacity, state, blocks.
    Du,
    /// List a directory: type, name, size, storages holding it.
    Ls {
        /// Directory or file [default: current directory].
        path: Option<String>,
    },
    /// Attributes, blocks and replicas of a file or directory.
    Stat {
        /// Path to describe.
        path: String,
    },
    /// Make a directory.
    Mkdir {
        /// Make parents as needed; no error if it exists.
        #[arg(short, long)]
        parents: bool,
        /// Directory to make.
        path: String,
    },
    /// Remove a directory.
    Rmdir {
        /// Remove its content too.
        #[arg(short, long)]
        recursive: bool,
        /// Directory to remove.
        path: String,
    },
    /// Upload a local file.
    Put {
        /// Local file.
        local: PathBuf,
        /// Destination file or directory [default: current directory].
        dfs: Option<String>,
    },
    /// Download a file.
    Get {
        /// File in vg.
        dfs: String,
        /// Local destination file or directory [default: the --local directory].
        local: Option<PathBuf>,
    },
    /// Remove a file (or, with -r, a directory tree).
    Rm {
        /// Remove directories and their content.
        #[arg(short, long)]
        recursive: bool,
        /// Path to remove.
        path: String,
    },
    /// Move or rename a file or directory.
    Mv {
        /// Source path.
        src: String,
        /// Destination path or existing directory.
        dst: String,
    },
    /// Storages, under-replicated blocks, capacity.
    Status,
    /// Check that every referenced block has its replicas, intact; non-zero exit if not.
    Fsck,
    /// Make the cluster CA and peer certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = vg_wire::cli::init_logging(cli.logfile.as_deref(), &cli.loglevel) {
        eprintln!("vgctl: open log file: {e}");
        std::process::exit(1);
    }
    let result = match cli.command {
        None => shell::run(&cli.conn, cli.local.clone()).await,
        Some(Command::Certs(certs)) => certs::run(certs),
        Some(command) => match cli.conn.connect().await {
            Ok(client) => {
                commands::Session::new(client, cli.local.clone())
                    .run(command)
                    .await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("vgctl: {e:#}");
        std::process::exit(1);
    }
}
