//! Connection flags shared by `vg-fuse` and `vgctl`.

use std::time::Duration;

use crate::client::{Client, Config, Error};

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
    /// The nameservers of a group, `[NAME@]HOST:PORT` (NAME: the member's certificate
    /// name, `nameserver` by default), repeated or comma-separated; instead of
    /// `--ns-hostname` and `--ns-port`.
    #[arg(long, env = "VG_NS", value_delimiter = ',', global = true)]
    pub ns: Vec<String>,
    /// Certificate name of this client (picks certs/NAME/NAME.crt).
    #[arg(long, env = "VG_CLIENT_NAME", default_value = "client", global = true)]
    pub name: String,
    #[command(flatten)]
    pub tls: vg_wire::cli::TlsArgs,
    /// Give up on an unreachable cluster after this long (calls then fail with EIO).
    #[arg(long, env = "VG_TIMEOUT", default_value = "30s", value_parser = vg_wire::size::parse_duration, global = true)]
    pub timeout: Duration,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A nameserver's name does not resolve, or `--ns` is malformed.
    #[error("{0}")]
    Resolve(String),
    /// TLS material or the nameserver failed.
    #[error("connect to nameserver {addr}: {source}")]
    Connect {
        /// The addresses dialled.
        addr: String,
        /// The failure.
        source: Error,
    },
}

impl ConnArgs {
    /// The client configuration these flags describe, for resolved nameservers.
    pub fn config(&self, nameservers: Vec<vg_wire::rpc::Target>) -> Config {
        let mut config = Config::new(nameservers[0].addr, self.tls.paths(&self.name));
        config.nameservers = nameservers;
        config.unavailable_timeout = self.timeout;
        config.request_timeout = self.timeout.min(Duration::from_secs(10));
        config
    }

    /// Resolves the nameserver and connects.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        self.connect_caching(Duration::ZERO).await
    }

    /// Resolves the nameserver and connects, answering lookups from what the client
    /// learnt in the last `entry_ttl` (see [`Config::entry_ttl`]).
    pub async fn connect_caching(&self, entry_ttl: Duration) -> Result<Client, ConnectError> {
        let nameservers = vg_wire::cli::nameservers(&self.ns, &self.ns_hostname, self.ns_port)
            .await
            .map_err(ConnectError::Resolve)?;
        let addr = vg_wire::rpc::Nameservers::new(nameservers.clone()).to_string();
        let mut config = self.config(nameservers);
        config.entry_ttl = entry_ttl;
        Client::connect(&config)
            .await
            .map_err(|source| ConnectError::Connect { addr, source })
    }
}
