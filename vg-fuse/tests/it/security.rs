//! Authentication, roles and hostile input against live servers.

use std::net::SocketAddr;
use std::time::Duration;

use vg_wire::rpc::Dialer;
use vg_wire::tls::{write_peer, Ca, TlsPaths, Validity};
use vg_wire::{codec, ns, storage, BlockId, ErrorCode, Role};

use crate::cluster::{dialer, Rng, TestCluster};

fn register(name: &str) -> ns::Request {
    ns::Request::Register {
        name: name.into(),
        addr: "127.0.0.1:9".parse::<SocketAddr>().unwrap(),
        capacity: 1,
        used: 0,
    }
}

async fn refused_code<T: std::fmt::Debug>(result: vg_wire::Result<T>) -> ErrorCode {
    match result {
        Err(vg_wire::Error::Remote(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let cluster = TestCluster::start(1, 1 << 30).await;
    let client = dialer(&TlsPaths::in_dir(&cluster.certs(), "client"));
    // A client certificate cannot register as a storage...
    let answer = client
        .call::<_, ns::Response>(&cluster.ns_target(), &register("client"))
        .await;
    assert_eq!(refused_code(answer).await, ErrorCode::Forbidden);
    // ...nor forward blocks storage-to-storage.
    let forward = storage::Request::Forward {
        id: BlockId::of(b"x"),
        len: 1,
        chain: vec![],
        sync: false,
    };
    let answer = client
        .call::<_, storage::Response>(&cluster.storage_target("s0"), &forward)
        .await;
    assert_eq!(refused_code(answer).await, ErrorCode::Forbidden);
    // A storage can register only under its own name.
    let mallory = cluster.issue("mallory", Role::Storage);
    let mallory = dialer(&mallory);
    let answer = mallory
        .call::<_, ns::Response>(&cluster.ns_target(), &register("s0"))
        .await;
    assert_eq!(refused_code(answer).await, ErrorCode::Forbidden);
    // ...and cannot use the namespace.
    let answer = mallory
        .call::<_, ns::Response>(&cluster.ns_target(), &ns::Request::StatFs)
        .await;
    assert_eq!(refused_code(answer).await, ErrorCode::Forbidden);
    // s0 is still registered and active after all that.
    cluster.wait_active(&["s0".into()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_expired_certificates_are_refused_at_the_handshake() {
    let cluster = TestCluster::start(1, 1 << 30).await;
    // A complete identity from another CA: it trusts neither side.
    let other = tempfile::tempdir().unwrap();
    let foreign_ca = Ca::generate("foreign CA").unwrap();
    let pem = foreign_ca.pem();
    vg_wire::tls::write_file(&other.path().join("rootCA.crt"), &pem.cert, 0o644).unwrap();
    let paths = write_peer(
        other.path(),
        "client",
        &foreign_ca
            .issue("client", Role::Client, &[], Validity::default())
            .unwrap(),
    )
    .unwrap();
    // Trust the real CA so that only the server's check of our certificate can fail.
    let paths = TlsPaths {
        ca_cert: cluster.certs().join("rootCA.crt"),
        ..paths
    };
    let foreign = dialer(&paths);
    let err = foreign
        .call::<_, ns::Response>(&cluster.ns_target(), &ns::Request::StatFs)
        .await
        .unwrap_err();
    assert!(
        err.is_transport(),
        "foreign CA must fail the handshake: {err}"
    );

    let expired_dir = tempfile::tempdir().unwrap();
    let _ = expired_dir;
    let ca_pem = std::fs::read_to_string(cluster.certs().join("rootCA.crt")).unwrap();
    let ca_key = std::fs::read_to_string(cluster.certs().join("rootCA.key")).unwrap();
    let ca = Ca::from_pem(&ca_pem, &ca_key).unwrap();
    let expired = ca
        .issue(
            "old-client",
            Role::Client,
            &[],
            Validity {
                from_days_ago: 10,
                until_days: -1,
            },
        )
        .unwrap();
    let paths = write_peer(&cluster.certs(), "old-client", &expired).unwrap();
    let err = dialer(&paths)
        .call::<_, ns::Response>(&cluster.ns_target(), &ns::Request::StatFs)
        .await
        .unwrap_err();
    assert!(
        err.is_transport(),
        "expired certificate must fail the handshake: {err}"
    );

    // A certificate re-issued from the CA files on disk (as `vgctl certs add` does) works.
    let fresh = ca
        .issue("new-client", Role::Client, &[], Validity::default())
        .unwrap();
    let paths = write_peer(&cluster.certs(), "new-client", &fresh).unwrap();
    dialer(&paths)
        .call::<_, ns::Response>(&cluster.ns_target(), &ns::Request::StatFs)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_are_refused_and_servers_keep_serving() {
    let cluster = TestCluster::start(1, 1 << 30).await;
    let client = dialer(&TlsPaths::in_dir(&cluster.certs(), "client"));
    let targets = [cluster.ns_target(), cluster.storage_target("s0")];
    let mut rng = Rng(0x1234_5678_9abc_def0);
    let mut next = || rng.next();
    let good = codec::encode(&ns::Request::StatFs).unwrap();
    for round in 0..200 {
        let target = &targets[round % 2];
        let mut frame = match round % 4 {
            // Random bytes.
            0 => (0..next() % 64).map(|_| next() as u8).collect::<Vec<u8>>(),
            // A valid header claiming a huge payload.
            1 => {
                let mut f = good[..8].to_vec();
                f[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
                f
            }
            // A truncated valid frame.
            2 => good[..(next() as usize % good.len())].to_vec(),
            // A valid header with a garbage payload.
            _ => {
                let mut f = good.clone();
                for byte in &mut f[8..] {
                    *byte = next() as u8;
                }
                f
            }
        };
        if round % 8 == 7 {
            frame[2] = 99; // unknown protocol version
        }
        let (mut send, mut recv) = client.open(target).await.unwrap();
        let _ = send.write_all(&frame).await;
        let _ = send.finish();
        // Either an error answer or the stream closes; never a success, never a hang.
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            codec::read_frame::<_, Result<ns::Response, vg_wire::RemoteError>>(&mut recv),
        )
        .await
        .expect("server answers");
        if let Ok(Ok(response)) = answer {
            panic!("round {round}: garbage got a successful answer {response:?}");
        }
    }
    // Another protocol version gets `Version` from both servers (one front door).
    for target in &targets {
        let mut frame = good.clone();
        frame[2] = 99;
        let (mut send, mut recv) = client.open(target).await.unwrap();
        send.write_all(&frame).await.unwrap();
        let _ = send.finish();
        let answer =
            codec::read_frame::<_, Result<ns::Response, vg_wire::RemoteError>>(&mut recv).await;
        let refused = answer.expect("an answer frame").unwrap_err();
        assert_eq!(
            refused.code,
            ErrorCode::Version,
            "{}: {refused}",
            target.name
        );
    }
    // Both servers still serve.
    client
        .call::<_, ns::Response>(&targets[0], &ns::Request::StatFs)
        .await
        .unwrap();
    let read = storage::Request::Read {
        id: BlockId::of(b"absent"),
        offset: 0,
        len: 0,
    };
    let answer = client
        .call::<_, storage::Response>(&targets[1], &read)
        .await;
    assert_eq!(refused_code(answer).await, ErrorCode::NotFound);
    // Out-of-range block requests get clear refusals.
    let put = storage::Request::Put {
        id: BlockId::of(b"x"),
        len: u32::MAX,
        chain: vec![],
        sync: false,
        race: None,
    };
    assert_eq!(
        refused_code(client.call::<_, storage::Response>(&targets[1], &put).await).await,
        ErrorCode::Invalid
    );
    // An upload whose bytes stop short of its length is refused, saying how far it got.
    let put = storage::Request::Put {
        id: BlockId::of(b"0123456789"),
        len: 100,
        chain: vec![],
        sync: false,
        race: None,
    };
    let (mut send, mut recv) = client.open(&targets[1]).await.unwrap();
    send.write_all(&codec::encode(&put).unwrap()).await.unwrap();
    send.write_all(b"0123456789").await.unwrap();
    let _ = send.finish();
    let answer =
        codec::read_frame::<_, Result<storage::Response, vg_wire::RemoteError>>(&mut recv).await;
    let refused = answer.expect("an answer frame").unwrap_err();
    assert_eq!(refused.code, ErrorCode::Invalid, "{refused}");
    assert!(
        refused.message.contains("after 10 of 100 bytes"),
        "{refused}"
    );
}

/// A dialer that presents no client certificate at all (but trusts the cluster CA).
fn anonymous_dialer(cluster: &TestCluster) -> Dialer {
    use rustls::pki_types::pem::PemObject;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(cluster.certs().join("rootCA.crt"))
        .unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![vg_wire::tls::alpn()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let endpoint = vg_wire::rpc::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    Dialer::new(endpoint, config, Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_with_the_peer_address_and_reason() {
    let mut cluster = TestCluster::start(0, 1 << 30).await;
    cluster.kill_nameserver();
    cluster.start_nameserver_child().await;
    let target = cluster.ns_target();
    // No certificate at all.
    let err = anonymous_dialer(&cluster)
        .call::<_, ns::Response>(&target, &ns::Request::StatFs)
        .await
        .unwrap_err();
    assert!(
        err.is_transport(),
        "no certificate must fail the handshake: {err}"
    );
    // A self-signed client certificate, with a valid-looking name and role.
    let other = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "client");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "client");
    let cert = params.self_signed(&key).unwrap();
    vg_wire::tls::write_file(&other.path().join("self.crt"), &cert.pem(), 0o644).unwrap();
    vg_wire::tls::write_file(&other.path().join("self.key"), &key.serialize_pem(), 0o600).unwrap();
    let paths = TlsPaths {
        ca_cert: cluster.certs().join("rootCA.crt"),
        certfile: other.path().join("self.crt"),
        keyfile: other.path().join("self.key"),
    };
    let err = dialer(&paths)
        .call::<_, ns::Response>(&target, &ns::Request::StatFs)
        .await
        .unwrap_err();
    assert!(
        err.is_transport(),
        "a self-signed certificate must fail the handshake: {err}"
    );
    // A client certificate trying to register as a storage.
    let client = dialer(&TlsPaths::in_dir(&cluster.certs(), "client"));
    let answer = client
        .call::<_, ns::Response>(&target, &register("client"))
        .await;
    assert_eq!(refused_code(answer).await, ErrorCode::Forbidden);
    cluster.kill_nameserver();
    let log = std::fs::read_to_string(cluster.dir.path().join("nameserver.log")).unwrap();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("handshake failed") && l.contains("addr=127.0.0.1")),
        "no handshake refusal logged:\n{log}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("needs the storage role") && l.contains("addr=127.0.0.1")),
        "no role refusal logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_block_requests_are_refused() {
    let cluster = TestCluster::start(2, 1 << 30).await;
    let client = cluster.client().await;
    cluster
        .put(&client, "/f", &crate::cluster::bytes(1000, 1))
        .await
        .unwrap();
    let ino = client.resolve("/f").await.unwrap().ino;
    let layout = client.layout(ino).await.unwrap();
    let blob = layout.blocks[0][0].blob;
    let raw = dialer(&TlsPaths::in_dir(&cluster.certs(), "client"));
    let target = cluster.storage_target("s0");
    for (offset, len) in [(u32::MAX, 1), (10, u32::MAX), (1000, 1), (999, 2)] {
        let read = storage::Request::Read {
            id: blob,
            offset,
            len,
        };
        assert_eq!(
            refused_code(raw.call::<_, storage::Response>(&target, &read).await).await,
            ErrorCode::Invalid,
            "offset {offset} len {len}"
        );
    }
    // Sizes past the block size and beyond the maximum file size are refused by the nameserver.
    let place = ns::Request::PlaceBlock {
        id: blob,
        len: u32::MAX,
        exclude: vec![],
        prefer: vec![],
    };
    assert_eq!(
        refused_code(
            raw.call::<_, ns::Response>(&cluster.ns_target(), &place)
                .await
        )
        .await,
        ErrorCode::Invalid
    );
    let huge = vg_wire::SetAttr {
        size: Some(u64::MAX),
        ..Default::default()
    };
    assert_eq!(
        client.setattr(ino, huge).await.unwrap_err().code(),
        ErrorCode::Invalid
    );
    assert_eq!(
        client.getattr(ino).await.unwrap().size,
        1000,
        "nothing changed by the refusals"
    );
}

/// A nameserver whose placements name no storage (a bug, or a peer that lies): the upload
/// fails with an error that says so, the client goes on serving, and nothing panics
/// (the upload indexed the first target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_naming_no_storage_fails_the_upload_without_a_panic() {
    use vg_wire::rpc::{read_request, respond};
    // 1 MiB blocks, so that a block goes down a pipeline (whose head is the first target).
    let cluster = TestCluster::start_with(2, 1 << 30, 1 << 20, 64 << 20).await;
    // A go-between with a nameserver certificate: it passes every request on to the real
    // nameserver, but answers placements with an empty list.
    let paths = cluster.issue("liar", Role::Nameserver);
    let identity = vg_wire::tls::Identity::load(&paths).unwrap();
    let (endpoint, addr) = vg_wire::rpc::listen(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
    let upstream = dialer(&TlsPaths::in_dir(&cluster.certs(), "client"));
    let real = cluster.ns_target();
    tokio::spawn(vg_wire::rpc::serve(
        endpoint,
        move |peer, mut send, mut recv| {
            let (upstream, real) = (upstream.clone(), real.clone());
            async move {
                let Some(request) =
                    read_request::<ns::Request, ns::Response>(&peer, &mut send, &mut recv).await
                else {
                    return;
                };
                let answer = match request {
                    ns::Request::PlaceBlock { .. } => Ok(ns::Response::Placement(ns::Placement {
                        targets: vec![],
                        stored: false,
                        next: vec![],
                    })),
                    request => upstream
                        .call::<_, ns::Response>(&real, &request)
                        .await
                        .map_err(|e| match e {
                            vg_wire::Error::Remote(e) => e,
                            e => vg_wire::RemoteError::new(ErrorCode::Unavailable, e.to_string()),
                        }),
                };
                respond(&mut send, answer).await;
            }
        },
    ));

    let mut config =
        vg_fuse::client::Config::new(addr, TlsPaths::in_dir(&cluster.certs(), "client"));
    config.nameservers[0].name = "liar".into();
    config.unavailable_timeout = Duration::from_secs(2);
    let client = vg_fuse::client::Client::connect(&config).await.unwrap();
    let err = cluster
        .put(&client, "/f", &crate::cluster::bytes(600_000, 7))
        .await
        .expect_err("an upload with nowhere to go");
    assert!(
        err.to_string().contains("placed it on no storage"),
        "the error says why: {err}"
    );
    // The client still serves what needs no placement.
    let root = client.resolve("/").await.unwrap().ino;
    client
        .mkdir(root, b"after", 0o755, vg_fuse::client::Maker::ROOT)
        .await
        .unwrap();
    assert!(client.resolve("/after").await.is_ok());
}
