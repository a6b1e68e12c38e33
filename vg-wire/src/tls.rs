//! TLS: loading and generating certificates, QUIC endpoint configs with mutual
//! authentication, and the identity (name and role) a peer's certificate grants.
//!
//! A vg certificate names its peer in the subject's common name and its role in the
//! organizational unit; its subject alternative names always include the peer name, so
//! a peer is dialled by name whatever address it is reached at.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::codec::VERSION;
use crate::error::{Error, Result};
use crate::types::Role;

/// ALPN protocol id: a peer of another protocol version fails the handshake.
pub fn alpn() -> Vec<u8> {
    format!("vg/{VERSION}").into_bytes()
}

/// Paths of a peer's TLS material.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// The cluster CA certificate.
    pub ca_cert: PathBuf,
    /// This peer's certificate.
    pub certfile: PathBuf,
    /// This peer's private key.
    pub keyfile: PathBuf,
}

impl TlsPaths {
    /// The original's default layout: `DIR/rootCA.crt`, `DIR/NAME/NAME.crt`, `DIR/NAME/NAME.key`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsPaths {
            ca_cert: dir.join("rootCA.crt"),
            certfile: dir.join(name).join(format!("{name}.crt")),
            keyfile: dir.join(name).join(format!("{name}.key")),
        }
    }

    /// Fills unset paths with the defaults under `certs/` for `name`.
    pub fn with_defaults(
        ca_cert: Option<PathBuf>,
        certfile: Option<PathBuf>,
        keyfile: Option<PathBuf>,
        name: &str,
    ) -> Self {
        let defaults = TlsPaths::in_dir(Path::new("certs"), name);
        TlsPaths {
            ca_cert: ca_cert.unwrap_or(defaults.ca_cert),
            certfile: certfile.unwrap_or(defaults.certfile),
            keyfile: keyfile.unwrap_or(defaults.keyfile),
        }
    }
}

/// Loaded TLS material of one peer.
#[derive(Clone)]
pub struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn tls_err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Identity {
    /// Reads the CA certificate, the peer certificate and its key (PEM).
    pub fn load(paths: &TlsPaths) -> Result<Self> {
        let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>> {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_err(path, format!("cannot read certificate: {e}")))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| tls_err(path, format!("bad PEM: {e}")))?;
            if certs.is_empty() {
                return Err(tls_err(path, "no certificate in file"));
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&paths.ca_cert)? {
            roots
                .add(cert)
                .map_err(|e| tls_err(&paths.ca_cert, format!("unusable CA certificate: {e}")))?;
        }
        let chain = read_certs(&paths.certfile)?;
        let key = PrivateKeyDer::from_pem_file(&paths.keyfile)
            .map_err(|e| tls_err(&paths.keyfile, format!("cannot read private key: {e}")))?;
        let identity = Identity {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        };
        identity
            .name_and_role()
            .map_err(|e| tls_err(&paths.certfile, e))?;
        Ok(identity)
    }

    /// The name and role of this peer's own certificate.
    pub fn name_and_role(&self) -> std::result::Result<(String, Role), CertError> {
        cert_identity(&self.chain[0])
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server config: TLS 1.3, client certificate required and verified against the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            Self::provider(),
        )
        .build()
        .map_err(|e| Error::Tls {
            path: "CA".into(),
            reason: e.to_string(),
        })?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls {
                path: "TLS".into(),
                reason: e.to_string(),
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls {
                path: "certificate".into(),
                reason: e.to_string(),
            })?;
        tls.alpn_protocols = vec![alpn()];
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls {
            path: "QUIC".into(),
            reason: e.to_string(),
        })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport(false));
        Ok(config)
    }

    /// Client config: TLS 1.3, presents this peer's certificate, trusts only the CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls {
                path: "TLS".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| Error::Tls {
                path: "certificate".into(),
                reason: e.to_string(),
            })?;
        tls.alpn_protocols = vec![alpn()];
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls {
            path: "QUIC".into(),
            reason: e.to_string(),
        })?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport(false));
        Ok(config)
    }
}

/// Transport settings: windows large enough for 4 MiB blocks in flight, keep-alives so a
/// dead peer is noticed in seconds, many streams per connection, and path MTU discovery
/// up to [`MAX_DATAGRAM`], or [`LOOPBACK_DATAGRAM`] without GSO batches when the peer is
/// on this machine (`loopback`).
pub(crate) fn transport(loopback: bool) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let mut mtu_discovery = quinn::MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(match loopback {
        true => LOOPBACK_DATAGRAM,
        false => MAX_DATAGRAM,
    });
    transport
        .mtu_discovery_config(Some(mtu_discovery))
        .enable_segmentation_offload(!loopback)
        .max_concurrent_bidi_streams(4096u32.into())
        .stream_receive_window((16u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .expect("1.5 s is a valid idle timeout"),
        ));
    Arc::new(transport)
}

/// How often a quiet connection proves it is alive.
const KEEP_ALIVE: Duration = Duration::from_millis(300);

/// A connection silent this long is dead. A process killed outright (or its machine) sends
/// nothing more, and UDP has no reset: this bounds how long a mount or storage waits on
/// a nameserver that died before asking another member of the group (failover within 3 s
/// with the group's election under a second; 5 s before the group), and tolerates four
/// keep-alives lost in a row.
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Largest UDP payload a connection grows its packets to when the path allows it (jumbo-frame
/// links; Ethernet paths settle near 1,452 as probes beyond fail).
///
/// Per-packet work (encryption, header protection, acknowledgements, one `recvmsg` slot)
/// dominates block transfers: 1,452-byte packets moved 580 MiB/s on loopback, 6,500-byte
/// ones 1,060 MiB/s. It is not larger because quinn sends up to 10 packets in one GSO
/// `sendmsg`, whose whole payload must fit an IP datagram (64 KiB); bigger packets made
/// those batches fail, which quinn takes for a black hole and drops back to 1,200 bytes.
pub const MAX_DATAGRAM: u16 = 6_500;

/// Largest UDP payload between peers on one machine. Loopback carries 64 KiB datagrams, so
/// there one packet per `sendmsg`, ten times the size of a GSO segment, does the work of a
/// batch with a tenth of the per-packet work: sequential reads through the mount went from
/// 640-690 to 790-830 MiB/s. Off loopback, GSO batches of [`MAX_DATAGRAM`] stay: without
/// them, Ethernet-sized packets would cost a system call each.
pub const LOOPBACK_DATAGRAM: u16 = 65_000;

/// Why a certificate does not name a vg peer.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// It is not an X.509 certificate.
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
    /// It has no common name (the peer's name).
    #[error("certificate has no common name")]
    NoName,
    /// Its organizational unit is missing or not a vg role.
    #[error("certificate has no vg role (organizational unit): {0}")]
    NoRole(String),
    /// The peer presented none.
    #[error("peer presented no certificate")]
    Missing,
}

/// The (name, role) a vg certificate grants: its common name and organizational unit.
pub fn cert_identity(cert: &CertificateDer<'_>) -> std::result::Result<(String, Role), CertError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| CertError::Unparsable(e.to_string()))?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(CertError::NoName)?
        .to_string();
    let role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .ok_or_else(|| CertError::NoRole("none".into()))?
        .parse::<Role>()
        .map_err(CertError::NoRole)?;
    Ok((name, role))
}

/// The (name, role) of the peer at the other end of an authenticated connection.
pub fn peer_identity(conn: &quinn::Connection) -> std::result::Result<(String, Role), CertError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(CertError::Missing)?;
    cert_identity(certs.first().ok_or(CertError::Missing)?)
}

/// A certificate and key in PEM form.
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key.
    pub key: String,
}

/// Validity period of generated certificates.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Days before now the certificate starts being valid.
    pub from_days_ago: i64,
    /// Days after now it stops being valid (negative: already expired).
    pub until_days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Validity {
            from_days_ago: 1,
            until_days: 3650,
        }
    }
}

fn days_from_now(days: i64) -> time::OffsetDateTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(now + days * 86_400)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A cluster CA that signs peer certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn gen_err(e: impl std::fmt::Display) -> Error {
    Error::Tls {
        path: "certificate generation".into(),
        reason: e.to_string(),
    }
}

impl Ca {
    /// Makes a new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "vg");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = days_from_now(-1);
        params.not_after = days_from_now(3650 * 2);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca { cert, key })
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(gen_err)?;
        let params = rcgen::CertificateParams::from_ca_cert_pem(cert_pem).map_err(gen_err)?;
        // Re-signing the parsed parameters yields a certificate with the same subject and
        // key, which is all that issuing needs; the CA file on disk stays the original.
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca { cert, key })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> Pem {
        Pem {
            cert: self.cert.pem(),
            key: self.key.serialize_pem(),
        }
    }

    /// Issues a certificate for peer `name` with `role`, valid for the name itself and
    /// `hosts` (DNS names or IP addresses).
    pub fn issue(
        &self,
        name: &str,
        role: Role,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Pem> {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, role.as_str());
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "vg");
        let mut sans = vec![name.to_string()];
        sans.extend(hosts.iter().cloned());
        sans.dedup();
        for host in sans {
            let san = match host.parse::<IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName(
                    host.clone()
                        .try_into()
                        .map_err(|e| gen_err(format!("{host:?}: {e}")))?,
                ),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        // Every peer both serves and dials (storages forward to storages), so every
        // certificate is good for both ends of a handshake.
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.not_before = days_from_now(-validity.from_days_ago);
        params.not_after = days_from_now(validity.until_days);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(gen_err)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Writes a peer's certificate and key in the original layout (`DIR/NAME/NAME.{crt,key}`),
/// the key readable by its owner only.
pub fn write_peer(dir: &Path, name: &str, pem: &Pem) -> Result<TlsPaths> {
    let paths = TlsPaths::in_dir(dir, name);
    let peer_dir = dir.join(name);
    std::fs::create_dir_all(&peer_dir).map_err(|e| Error::Io {
        context: format!("create {}", peer_dir.display()),
        source: e,
    })?;
    write_file(&paths.certfile, &pem.cert, 0o644)?;
    write_file(&paths.keyfile, &pem.key, 0o600)?;
    Ok(paths)
}

/// Writes a PEM file with the given mode.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| Error::Io {
        context: format!("write {}", path.display()),
        source: e,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}
