//! `vgctl`: the admin and shell client of vg, keeping the original shell client's commands.

mod certs;
mod commands;
mod paths;
mod progress;
mod shell;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vg_fuse::args::ConnArgs;

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
    /// A storage deletes a copy the check finds corrupt, and the cluster makes it again.
    Fsck,
    /// Make the cluster CA and peer certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// The nameserver group: list, add or remove members.
    #[command(subcommand)]
    Nameserver(NameserverCommand),
}

/// `vgctl nameserver ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum NameserverCommand {
    /// Each member: number, name, address, role (leader, follower, learner) and log
    /// position.
    List,
    /// Add a nameserver started with `--join --node-id ID`: it catches up, then votes.
    Add {
        /// Its number (its --node-id).
        id: u64,
        /// `[NAME@]HOST:PORT`: its certificate's name (default `nameserver`) and address.
        member: String,
    },
    /// Remove a member from the group (stop it afterwards).
    Remove {
        /// Its number.
        id: u64,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = vg_wire::cli::init_logging(
        cli.logfile.as_deref(),
        &cli.loglevel,
        vg_wire::cli::LogFormat::Text,
    ) {
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
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = result {
        eprintln!("vgctl: {e:#}");
        std::process::exit(1);
    }
}
