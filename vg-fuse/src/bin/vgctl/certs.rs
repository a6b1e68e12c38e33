//! `vgctl certs`: make the cluster CA and peer certificates in the original layout.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use vg_wire::tls::{write_file, write_peer, Ca, Validity};
use vg_wire::Role;

/// Certificate commands.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a new CA and a certificate for each peer: nameserver, storages, client.
    Init {
        /// Directory to write into (DIR/rootCA.crt, DIR/NAME/NAME.crt and .key).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Peers, comma-separated; `nameserver` gets the nameserver role, names starting
        /// with `client` the client role, every other name the storage role.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "nameserver,alice,bob,carol,client"
        )]
        peers: Vec<String>,
        /// Extra host names or addresses every certificate is valid for.
        #[arg(long = "hostname", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        hostnames: Vec<String>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Add one peer certificate signed by the existing CA.
    Add {
        /// Directory holding rootCA.crt and rootCA.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Peer name.
        name: String,
        /// Role: storage, client or nameserver.
        #[arg(long)]
        role: Role,
        /// Extra host names or addresses the certificate is valid for.
        #[arg(long = "hostname", value_delimiter = ',', default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        hostnames: Vec<String>,
        /// Days of validity (negative makes an already expired certificate, for tests).
        #[arg(long, default_value_t = 3650, allow_hyphen_values = true)]
        days: i64,
    },
}

/// The role a peer gets from its name in `certs init`.
fn role_of(name: &str) -> Role {
    if name == "nameserver" {
        Role::Nameserver
    } else if name.starts_with("client") {
        Role::Client
    } else {
        Role::Storage
    }
}

fn check_peer_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-');
    anyhow::ensure!(ok, "peer name {name:?}: use 1-63 letters, digits and '-' (it is also a DNS name in the certificate)");
    Ok(())
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let cert_path = dir.join("rootCA.crt");
    let key_path = dir.join("rootCA.key");
    let cert = std::fs::read_to_string(&cert_path)
        .with_context(|| format!("read {}", cert_path.display()))?;
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("read {}", key_path.display()))?;
    Ca::from_pem(&cert, &key).with_context(|| format!("load CA from {}", dir.display()))
}

fn issue(
    ca: &Ca,
    dir: &Path,
    name: &str,
    role: Role,
    hosts: &[String],
    validity: Validity,
) -> anyhow::Result<()> {
    check_peer_name(name)?;
    let pem = ca
        .issue(name, role, hosts, validity)
        .with_context(|| format!("issue certificate for {name}"))?;
    let paths = write_peer(dir, name, &pem)?;
    println!("{role:<10} {name:<12} {}", paths.certfile.display());
    Ok(())
}

/// Runs a certs command.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init {
            dir,
            peers,
            hostnames,
            force,
        } => {
            let ca_path = dir.join("rootCA.crt");
            anyhow::ensure!(
                force || !ca_path.exists(),
                "{}: a CA already exists (use --force to replace it, or `vgctl certs add`)",
                ca_path.display()
            );
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let ca = Ca::generate("vg cluster CA")?;
            let pem = ca.pem();
            write_file(&ca_path, &pem.cert, 0o644)?;
            write_file(&dir.join("rootCA.key"), &pem.key, 0o600)?;
            println!("{:<10} {:<12} {}", "CA", "rootCA", ca_path.display());
            for name in &peers {
                issue(
                    &ca,
                    &dir,
                    name,
                    role_of(name),
                    &hostnames,
                    Validity::default(),
                )?;
            }
            Ok(())
        }
        CertsCommand::Add {
            dir,
            name,
            role,
            hostnames,
            days,
        } => {
            let ca = load_ca(&dir)?;
            issue(
                &ca,
                &dir,
                &name,
                role,
                &hostnames,
                Validity {
                    from_days_ago: 1 + (-days).max(0),
                    until_days: days,
                },
            )
        }
    }
}
