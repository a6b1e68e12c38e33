//! `TestCluster`: a fresh CA, a nameserver and N storages on 127.0.0.1, one temp dir.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vg_fuse::client::{Client, Config, Maker};
use vg_wire::tls::{write_file, write_peer, Ca, TlsPaths, Validity};
use vg_wire::Role;

/// Block size of test clusters: small, so that multi-block files stay cheap.
pub const BLOCK: usize = 64 << 10;

/// Polls `check` until it holds, failing the test after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names in a directory, in order.
pub async fn names(client: &Client, dir: vg_wire::Ino) -> Vec<String> {
    client
        .readdir_all(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| String::from_utf8(n).unwrap())
        .collect()
}

/// The tests' one pseudo-random generator (xorshift64: seeded, so a failure replays).
pub struct Rng(pub u64);

impl Rng {
    /// The next number (the state must not be 0).
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// A slice at the start of a block showing all of `data` as its own blob.
pub fn whole_blob_slice(data: &[u8]) -> vg_wire::Slice {
    vg_wire::Slice {
        at: 0,
        len: data.len() as u32,
        blob: vg_wire::BlockId::of(data),
        blob_off: 0,
    }
}

/// A dialer with the identity in `paths`, for requests sent as a peer would, raw.
pub fn dialer(paths: &TlsPaths) -> vg_wire::rpc::Dialer {
    let identity = vg_wire::tls::Identity::load(paths).expect("load identity");
    let endpoint = vg_wire::rpc::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    vg_wire::rpc::Dialer::new(
        endpoint,
        identity.client_config().unwrap(),
        Duration::from_secs(5),
    )
}

/// Where the nameserver runs.
pub enum Nameserver {
    /// In this process.
    InProcess(vg_nameserver::Handle),
    /// A child `vg-nameserver` process (so that it can be SIGKILLed).
    Child(std::process::Child),
}

/// A running test cluster.
pub struct TestCluster {
    /// Holds everything: certs/, meta/, data/NAME/.
    pub dir: tempfile::TempDir,
    /// Nameserver address.
    pub ns_addr: SocketAddr,
    /// The nameserver.
    pub ns: Option<Nameserver>,
    /// Running storages by name.
    pub storages: BTreeMap<String, vg_storage::Handle>,
    /// Storage capacity.
    pub capacity: u64,
    /// Block size of the nameserver.
    pub block_size: usize,
    /// Bytes per second each storage's scrub checks.
    pub scrub_rate: u64,
    /// How often each storage's scrub passes start at most.
    pub scrub_every: Duration,
    /// The members of a nameserver group the storages and clients use instead of
    /// `ns_addr`, if set.
    pub group: Vec<vg_wire::rpc::Target>,
    ca: Ca,
}

impl TestCluster {
    /// The cluster's certificate directory (`certs/` in the original layout).
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Starts a nameserver (R=2, 64 KiB blocks, fast timers) and `n` storages.
    pub async fn start(n: usize, capacity: u64) -> Self {
        Self::start_with(n, capacity, BLOCK, 64 << 20).await
    }

    /// [`TestCluster::start`] with this block size and scrub rate.
    pub async fn start_with(n: usize, capacity: u64, block_size: usize, scrub_rate: u64) -> Self {
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(
            dir,
            &names,
            capacity,
            block_size,
            (scrub_rate, Duration::ZERO),
        )
        .await
    }

    /// [`TestCluster::start_with`] whose scrub makes one pass, at the start, over
    /// storages still empty: whatever finds a damaged copy later is not the scrub.
    pub async fn start_unscrubbed(n: usize, capacity: u64, block_size: usize) -> Self {
        let names: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let day = Duration::from_secs(86_400);
        Self::start_in(dir, &names, capacity, block_size, (8 << 20, day)).await
    }

    /// A cluster on the metadata and storage directories of `fixture` (a `.tar.xz` of
    /// `meta/` and `data/NAME/` under `tests/fixtures`), with storages `names`.
    pub async fn from_fixture(fixture: &str, names: &[&str], block_size: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let status = std::process::Command::new("tar")
            .arg("-xJf")
            .arg(&archive)
            .arg("-C")
            .arg(dir.path())
            .status()
            .expect("run tar (xz-utils must be installed)");
        assert!(status.success(), "tar -xJf {} failed", archive.display());
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        Self::start_in(dir, &names, 1 << 30, block_size, (64 << 20, Duration::ZERO)).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        names: &[String],
        capacity: u64,
        block_size: usize,
        (scrub_rate, scrub_every): (u64, Duration),
    ) -> Self {
        let ca = Ca::generate("test CA").expect("CA");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let pem = ca.pem();
        write_file(&certs.join("rootCA.crt"), &pem.cert, 0o644).unwrap();
        write_file(&certs.join("rootCA.key"), &pem.key, 0o600).unwrap();
        let mut cluster = TestCluster {
            dir,
            ns_addr: "127.0.0.1:0".parse().unwrap(),
            ns: None,
            storages: BTreeMap::new(),
            capacity,
            block_size,
            scrub_rate,
            scrub_every,
            group: Vec::new(),
            ca,
        };
        cluster.issue("nameserver", Role::Nameserver);
        cluster.issue("client", Role::Client);
        cluster.start_nameserver_in_process().await;
        for name in names {
            cluster.add_storage(name).await;
        }
        cluster.wait_active(names).await;
        cluster
    }

    /// Issues a certificate signed by the cluster CA.
    pub fn issue(&self, name: &str, role: Role) -> TlsPaths {
        let pem = self
            .ca
            .issue(name, role, &["127.0.0.1".into()], Validity::default())
            .unwrap();
        write_peer(&self.certs(), name, &pem).unwrap()
    }

    /// The nameserver, as a raw [`dialer`] addresses it.
    pub fn ns_target(&self) -> vg_wire::rpc::Target {
        vg_wire::rpc::Target {
            name: "nameserver".into(),
            role: Role::Nameserver,
            addr: self.ns_addr,
        }
    }

    fn ns_config(&self, listen: SocketAddr) -> vg_nameserver::Config {
        let mut config = vg_nameserver::Config::new(
            listen,
            self.dir.path().join("meta"),
            TlsPaths::in_dir(&self.certs(), "nameserver"),
        );
        config.block_size = self.block_size as u32;
        config.heartbeat_timeout = Duration::from_millis(1500);
        config.gc_grace = Duration::from_secs(1);
        config.tick = Duration::from_millis(100);
        config
    }

    /// (Re)starts the nameserver in this process, on the same port if it ran before.
    pub async fn start_nameserver_in_process(&mut self) {
        wait_port_free(self.ns_addr).await;
        let handle = vg_nameserver::start(self.ns_config(self.ns_addr))
            .await
            .expect("start nameserver");
        self.ns_addr = handle.addr;
        self.ns = Some(Nameserver::InProcess(handle));
    }

    /// (Re)starts the nameserver as a child process of the real binary.
    pub async fn start_nameserver_child(&mut self) {
        wait_port_free(self.ns_addr).await;
        let exe = binary("vg-nameserver");
        let child = std::process::Command::new(exe)
            .current_dir(self.dir.path())
            .args([
                "--hostname",
                "127.0.0.1",
                "--port",
                &self.ns_addr.port().to_string(),
                "--meta-dir",
                "meta",
            ])
            .args([
                "--block-size",
                &self.block_size.to_string(),
                "--heartbeat-timeout",
                "1500ms",
                "--gc-grace",
                "1s",
                "--loglevel",
                "info",
                "--logfile",
                "nameserver.log",
            ])
            .spawn()
            .expect("spawn vg-nameserver");
        self.ns = Some(Nameserver::Child(child));
        // Dialling before it listens costs a QUIC retransmission timeout (about a second).
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::UdpSocket::bind(self.ns_addr).is_ok() {
            if let Some(Nameserver::Child(child)) = &mut self.ns {
                if let Some(status) = child.try_wait().expect("poll nameserver") {
                    let log = std::fs::read_to_string(self.dir.path().join("nameserver.log"))
                        .unwrap_or_default();
                    panic!("nameserver exited ({status}) before listening; its log:\n{log}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "nameserver child not listening after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the nameserver abruptly: abort in-process, SIGKILL a child.
    pub fn kill_nameserver(&mut self) {
        match self.ns.take() {
            Some(Nameserver::InProcess(handle)) => handle.kill(),
            Some(Nameserver::Child(mut child)) => {
                child.kill().expect("SIGKILL nameserver");
                child.wait().expect("reap nameserver");
            }
            None => {}
        }
    }

    /// Starts a storage `name` (issuing its certificate if needed).
    pub async fn add_storage(&mut self, name: &str) {
        let certs = self.certs();
        if !certs.join(name).exists() {
            self.issue(name, Role::Storage);
        }
        let mut config = vg_storage::Config::new(
            name,
            "127.0.0.1:0".parse().unwrap(),
            self.capacity,
            self.data_dir(name),
            self.ns_addr,
            TlsPaths::in_dir(&certs, name),
        );
        config.heartbeat = Duration::from_millis(200);
        config.scrub_rate = self.scrub_rate;
        config.scrub_every = self.scrub_every;
        if !self.group.is_empty() {
            config.nameservers = self.group.clone();
        }
        let handle = vg_storage::start(config).await.expect("start storage");
        self.storages.insert(name.to_string(), handle);
    }

    /// A storage's block directory.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("data").join(name)
    }

    /// Stops a storage abruptly.
    pub fn kill_storage(&mut self, name: &str) {
        self.storages.remove(name).expect("storage runs").kill();
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        self.caching_client(Duration::ZERO).await
    }

    /// A connected client answering lookups from what it learnt in the last `entry_ttl`,
    /// as the mount does.
    pub async fn caching_client(&self, entry_ttl: Duration) -> Client {
        let mut config = Config::new(self.ns_addr, TlsPaths::in_dir(&self.certs(), "client"));
        config.unavailable_timeout = Duration::from_secs(20);
        config.entry_ttl = entry_ttl;
        if !self.group.is_empty() {
            config.nameservers = self.group.clone();
        }
        Client::connect(&config).await.expect("connect client")
    }

    /// Waits until exactly these storages are active.
    pub async fn wait_active(&self, names: &[String]) {
        let client = self.client().await;
        eventually(
            &format!("storages {names:?} active"),
            Duration::from_secs(20),
            || async {
                let Ok(status) = client.status().await else {
                    return false;
                };
                let mut active: Vec<String> = status
                    .storages
                    .iter()
                    .filter(|s| s.state == vg_wire::ns::StorageState::Active)
                    .map(|s| s.name.clone())
                    .collect();
                active.sort();
                let mut want = names.to_vec();
                want.sort();
                active == want
            },
        )
        .await;
    }

    /// Waits until every referenced block has `copies` live replicas and none is under-replicated.
    pub async fn wait_replicated(&self, copies: usize) {
        let client = self.client().await;
        eventually(
            &format!("every block on {copies} storages"),
            Duration::from_secs(30),
            || async {
                match client.list_blocks().await {
                    Ok(blocks) => blocks.iter().all(|b| b.locations.len() == copies),
                    Err(_) => false,
                }
            },
        )
        .await;
    }

    /// Blocks on a storage's disk (block files and live volume records).
    pub fn blocks_on_disk(&self, name: &str) -> usize {
        vg_storage::block_store::on_disk(&self.data_dir(name))
            .unwrap()
            .len()
    }

    /// Where storage `name` is, to send it requests raw.
    pub fn storage_target(&self, name: &str) -> vg_wire::rpc::Target {
        vg_wire::rpc::Target {
            name: name.into(),
            role: Role::Storage,
            addr: self.storages[name].addr,
        }
    }

    /// Writes a file through the client; returns its inode.
    pub async fn put(
        &self,
        client: &Client,
        path: &str,
        data: &[u8],
    ) -> vg_fuse::client::Result<vg_wire::Ino> {
        let local = self.dir.path().join("upload.tmp");
        std::fs::write(&local, data).unwrap();
        let (parent, name) = path.rsplit_once('/').expect("an absolute path");
        let parent = if parent.is_empty() { "/" } else { parent };
        let parent = client.resolve(parent).await?.ino;
        let attr = client
            .create(parent, name.as_bytes(), 0o644, Maker::ROOT, false)
            .await?;
        client.put_file(&local, attr.ino, |_| {}).await?;
        Ok(attr.ino)
    }

    /// Reads a whole file through the client.
    pub async fn get(&self, client: &Client, path: &str) -> vg_fuse::client::Result<Vec<u8>> {
        let ino = client.resolve(path).await?.ino;
        let local = self.dir.path().join("download.tmp");
        client.get_file(ino, &local, |_| {}).await?;
        Ok(std::fs::read(&local).unwrap())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for storage in self.storages.values() {
            storage.kill();
        }
        self.kill_nameserver();
    }
}

/// Waits until a killed in-process server has released its UDP port.
pub async fn wait_port_free(addr: SocketAddr) {
    if addr.port() == 0 {
        return;
    }
    eventually(
        &format!("UDP {addr} free"),
        Duration::from_secs(10),
        || async { std::net::UdpSocket::bind(addr).is_ok() },
    )
    .await;
}

/// Path of a workspace binary built by `cargo build` next to this test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build` before `cargo test` (scripts/test.sh does)",
        path.display()
    );
    path
}
