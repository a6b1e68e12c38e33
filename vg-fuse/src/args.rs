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
    /// The nameserver's name does not resolve.
    #[error("resolve --ns-hostname {host}: {reason}")]
    Resolve {
        /// The host given.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// TLS material or the nameserver failed.
    #[error("connect to nameserver {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: std::net::SocketAddr,
        /// The failure.
        source: Error,
    },
}

impl ConnArgs {
    /// The client configuration these flags describe, for a resolved address.
    pub fn config(&self, ns_addr: std::net::SocketAddr) -> Config {
        let mut config = Config::new(ns_addr, self.tls.paths(&self.name));
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
        let resolve_err = |reason: String| ConnectError::Resolve {
            host: self.ns_hostname.clone(),
            reason,
        };
        let ns_addr = vg_wire::cli::resolve(&self.ns_hostname, self.ns_port)
            .await
            .map_err(|e| resolve_err(e.to_string()))?;
        let mut config = self.config(ns_addr);
        config.entry_ttl = entry_ttl;
        Client::connect(&config)
            .await
            .map_err(|source| ConnectError::Connect {
                addr: ns_addr,
                source,
            })
    }
}
