//! The nameserver group: three nameservers replicating the namespace with Raft, in this
//! process, over QUIC with the cluster's certificates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vg_nameserver::raft::Member;
use vg_wire::ns::{Request, Response};
use vg_wire::rpc::{Dialer, Target};
use vg_wire::tls::TlsPaths;
use vg_wire::Role;

use crate::cluster::{bytes, dialer, wait_port_free, TestCluster};

/// Three members on loopback ports, and a client's dialer.
struct Group {
    cluster: TestCluster,
    members: BTreeMap<u64, Member>,
    running: BTreeMap<u64, vg_nameserver::Handle>,
    /// Where each member serves its Prometheus metrics.
    metrics: BTreeMap<u64, SocketAddr>,
    dialer: Dialer,
    /// Numbers the changes sent to the leader.
    seq: std::sync::atomic::AtomicU64,
}

impl Group {
    async fn start(n: u64) -> Self {
        let mut cluster = TestCluster::start(0, 1 << 30).await;
        cluster.kill_nameserver();
        // The members' addresses are known before any starts: ports bound and released.
        let members = (1..=n)
            .map(|id| {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let addr = socket.local_addr().unwrap().to_string();
                let name = "nameserver".to_string();
                (id, Member { name, addr })
            })
            .collect();
        let metrics = (1..=n)
            .map(|id| {
                let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                (id, socket.local_addr().unwrap())
            })
            .collect();
        let dialer = dialer(&TlsPaths::in_dir(&cluster.certs(), "client"));
        let mut group = Group {
            cluster,
            members,
            running: BTreeMap::new(),
            metrics,
            dialer,
            seq: Default::default(),
        };
        for id in 1..=n {
            group.start_member(id).await;
        }
        group
    }

    /// `n` members and `storages` storages (`s0`, `s1`, ...) that follow the group,
    /// once they are active.
    async fn with_storages(n: u64, storages: usize) -> Self {
        let mut group = Group::start(n).await;
        group.cluster.group = group.targets();
        let names: Vec<String> = (0..storages).map(|i| format!("s{i}")).collect();
        for name in &names {
            group.cluster.add_storage(name).await;
        }
        group.cluster.wait_active(&names).await;
        group
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.members[&id].addr.parse().unwrap()
    }

    async fn start_member(&mut self, id: u64) {
        self.start_member_as(id, false).await;
    }

    /// Starts member `id`; with `join`, one that waits to be added to the group.
    async fn start_member_as(&mut self, id: u64, join: bool) {
        let addr = self.addr(id);
        wait_port_free(addr).await;
        let dir = self.cluster.dir.path().join(format!("meta{id}"));
        let tls = TlsPaths::in_dir(&self.cluster.certs(), "nameserver");
        let mut config = vg_nameserver::Config::new(addr, dir, tls);
        config.node_id = id;
        match join {
            true => config.join = true,
            false => config.members = self.members.clone(),
        }
        config.heartbeat = Duration::from_millis(50);
        config.tick = Duration::from_millis(100);
        config.metrics = self.metrics.get(&id).copied();
        let handle = vg_nameserver::start(config).await.expect("start member");
        self.running.insert(id, handle);
    }

    /// The members, as clients and storages dial them.
    fn targets(&self) -> Vec<Target> {
        (1..=self.members.len() as u64)
            .map(|id| Target {
                name: "nameserver".into(),
                role: Role::Nameserver,
                addr: self.addr(id),
            })
            .collect()
    }

    async fn call(&self, id: u64, request: &Request) -> Result<Response, vg_wire::Error> {
        let target = Target {
            name: "nameserver".into(),
            role: Role::Nameserver,
            addr: self.addr(id),
        };
        self.dialer.call(&target, request).await
    }

    /// The member that serves, once one does (within 10 s).
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for &id in self.running.keys() {
                if self
                    .call(
                        id,
                        &Request::GetAttr {
                            ino: vg_wire::ROOT_INO,
                        },
                    )
                    .await
                    .is_ok()
                {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "no member leads after 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `request` to the leader, numbered, so that asking again after a change of
    /// leader applies it once; returns the answer and the member that gave it.
    async fn to_leader(&self, request: &Request) -> (u64, Response) {
        let numbered = Request::Once {
            client: 0x6a0,
            seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            request: Box::new(request.clone()),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let id = self.leader().await;
            match self.call(id, &numbered).await {
                Ok(answer) => return (id, answer),
                Err(e) if (e.is_not_leader() || e.is_transport()) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{} on member {id}: {e}", request_name(request)),
            }
        }
    }

    async fn mkdir(&self, name: &str) {
        let mkdir = Request::Mkdir {
            parent: vg_wire::ROOT_INO,
            name: name.as_bytes().to_vec(),
            perm: 0o755,
            umask: 0,
            uid: 0,
            gid: 0,
        };
        self.to_leader(&mkdir).await;
    }

    /// The names in the root directory as the leader has them, sorted, and the leader.
    async fn names(&self) -> (u64, Vec<String>) {
        let list = Request::ReadDir {
            ino: vg_wire::ROOT_INO,
            offset: 0,
            limit: 100_000,
        };
        match self.to_leader(&list).await {
            (id, Response::Entries { entries, .. }) => {
                let mut names: Vec<String> = entries
                    .into_iter()
                    .map(|(name, _)| String::from_utf8(name).unwrap())
                    .filter(|name| name != "." && name != "..")
                    .collect();
                names.sort();
                (id, names)
            }
            (id, other) => panic!("readdir on member {id}: {other:?}"),
        }
    }

    async fn crash(&mut self, id: u64) {
        self.running.remove(&id).expect("member runs").crash().await;
    }

    /// The value of series `name` in member `id`'s Prometheus metrics.
    async fn metric(&self, id: u64, name: &str) -> Option<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics[&id])
            .await
            .ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Stopped before the runtime goes: a member's log thread may be waiting on it.
        for member in self.running.values() {
            member.kill();
        }
    }
}

/// The name of a request, for messages.
fn request_name(request: &Request) -> &'static str {
    use vg_wire::rpc::Operation;
    request.name()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_keeps_every_acknowledged_change_across_leader_crashes() {
    let mut group = Group::start(3).await;
    let mut want: Vec<String> = (0..60).map(|i| format!("d{i:03}")).collect();
    for name in &want {
        group.mkdir(name).await;
    }
    // Followers refuse, and say so (asked again if leadership moved meanwhile).
    let root = Request::GetAttr {
        ino: vg_wire::ROOT_INO,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = group.leader().await;
        let follower = *group.running.keys().find(|&&id| id != leader).unwrap();
        match group.call(follower, &root).await {
            Err(vg_wire::Error::Remote(e)) => {
                assert!(e.message.contains("does not lead"), "{e}");
                break;
            }
            other => assert!(Instant::now() < deadline, "a follower answered {other:?}"),
        }
    }
    // The leader dies: another leads, with every change the dead one acknowledged.
    let first = group.leader().await;
    let crashed = Instant::now();
    group.crash(first).await;
    let (second, names) = group.names().await;
    eprintln!(
        "member {second} leads {:?} after member {first} crashed",
        crashed.elapsed()
    );
    assert_ne!(second, first);
    assert_eq!(names, want);
    for i in 0..40 {
        let name = format!("e{i:03}");
        group.mkdir(&name).await;
        want.push(name);
    }
    // The first comes back (a follower now, it catches up), and the leader dies: the
    // two left elect one of them, which has everything.
    group.start_member(first).await;
    let second = group.leader().await;
    group.crash(second).await;
    let (third, names) = group.names().await;
    assert_ne!(third, second);
    assert_eq!(names, want);
    group.mkdir("after").await;
    want.insert(0, "after".into());
    // With both of them needed for a majority, each has it all: stop the leader and
    // restart it, and whichever leads serves the lot.
    let third = group.leader().await;
    group.crash(third).await;
    group.start_member(third).await;
    let (fourth, names) = group.names().await;
    assert_eq!(names, want, "member {fourth} lost changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_lose_nothing_acknowledged_while_leaders_crash() {
    let mut group = Group::with_storages(3, 3).await;
    let client = group.cluster.client().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4u64 {
        let (client, stop) = (client.clone(), stop.clone());
        let dir = group.cluster.dir.path().join(format!("w{w}"));
        writers.spawn(async move {
            std::fs::create_dir_all(&dir).unwrap();
            let root = client.resolve("/").await.unwrap().ino;
            let mut done = Vec::new();
            for i in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                // A burst of metadata, then a file written under a temporary name and
                // renamed into place, as editors and package managers do.
                let seed = w * 1_000_000 + i;
                let tmp = format!("w{w}-{i}.tmp");
                let attr = client
                    .create(
                        root,
                        tmp.as_bytes(),
                        0o644,
                        vg_fuse::client::Maker::ROOT,
                        true,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("create {tmp}: {e}"));
                let local = dir.join("data");
                std::fs::write(&local, bytes(3000 + (i as usize % 5) * 20_000, seed)).unwrap();
                client
                    .put_file(&local, attr.ino, |_| {})
                    .await
                    .unwrap_or_else(|e| panic!("write {tmp}: {e}"));
                let name = format!("w{w}-{i}");
                client
                    .rename(root, tmp.as_bytes(), root, name.as_bytes(), false)
                    .await
                    .unwrap_or_else(|e| panic!("rename {tmp}: {e}"));
                done.push((name, seed, 3000 + (i as usize % 5) * 20_000));
            }
            done
        });
    }
    let mut rng = crate::cluster::Rng(0x6a0);
    let mut failovers = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(400))).await;
        let leader = group.leader().await;
        let crashed = Instant::now();
        group.crash(leader).await;
        group.leader().await;
        failovers.push(crashed.elapsed());
        group.start_member(leader).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    while let Some(done) = writers.join_next().await {
        acknowledged.extend(done.expect("a writer failed"));
    }
    eprintln!(
        "failovers {failovers:?}; {} files written",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 8,
        "the writers made no progress: {acknowledged:?}"
    );
    for (name, seed, len) in &acknowledged {
        let data = group
            .cluster
            .get(&client, &format!("/{name}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(data == bytes(*len, *seed), "{name}: content differs");
    }
}

/// Runs the real vgctl against the group (`--ns` with every member, including those
/// added); returns its standard output, or its standard error if it failed.
fn vgctl(group: &Group, args: &[&str]) -> Result<String, String> {
    let members: Vec<String> = group.members.values().map(|m| m.addr.clone()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vgctl"))
        .current_dir(group.cluster.dir.path())
        .arg("--ns")
        .arg(members.join(","))
        .args(["--timeout", "10s"])
        .args(args)
        .output()
        .expect("run vgctl");
    match out.status.success() {
        true => Ok(String::from_utf8(out.stdout).unwrap()),
        false => Err(String::from_utf8(out.stderr).unwrap()),
    }
}

/// The role `vgctl nameserver list` gives member `id`, if it lists it.
fn role(listed: &str, id: u64) -> Option<String> {
    listed.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.first() == Some(&id.to_string().as_str())).then(|| fields[3].to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_follower_is_replaced_through_vgctl_and_the_group_heals() {
    let mut group = Group::start(3).await;
    group.cluster.group = group.targets();
    let client = group.cluster.client().await;
    let listed = vgctl(&group, &["nameserver", "list"]).unwrap();
    let roles: Vec<String> = (1..=3).filter_map(|id| role(&listed, id)).collect();
    assert_eq!(
        roles.iter().filter(|r| *r == "leader").count(),
        1,
        "{listed}"
    );
    assert_eq!(
        roles.iter().filter(|r| *r == "follower").count(),
        2,
        "{listed}"
    );
    let root = client.resolve("/").await.unwrap().ino;
    let maker = vg_fuse::client::Maker::ROOT;
    for i in 0..20 {
        let name = format!("d{i}");
        client
            .mkdir(root, name.as_bytes(), 0o755, maker)
            .await
            .unwrap();
    }
    // A follower dies for good.
    let leader = group.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (dead, other) = (followers[0], followers[1]);
    group.crash(dead).await;
    // A new nameserver, started to join: added, it catches up and votes; the dead one
    // is removed.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    drop(socket);
    let name = "nameserver".to_string();
    group.members.insert(
        4,
        Member {
            name,
            addr: addr.clone(),
        },
    );
    group.start_member_as(4, true).await;
    let added = vgctl(&group, &["nameserver", "add", "4", &addr]).unwrap();
    assert_eq!(role(&added, 4).as_deref(), Some("follower"), "{added}");
    let removed = vgctl(&group, &["nameserver", "remove", &dead.to_string()]).unwrap();
    assert_eq!(role(&removed, dead), None, "{removed}");
    let stranger = vgctl(&group, &["nameserver", "remove", "9"]).unwrap_err();
    assert!(stranger.contains("not a member"), "{stranger}");
    // Healed: the group of the leader, the other follower and the new one loses another
    // member and goes on.
    group.crash(other).await;
    client.mkdir(root, b"healed", 0o755, maker).await.unwrap();
    assert_eq!(group.names().await.1.len(), 21);
    // The new member has the log: with the other back and the leader gone, whichever
    // of the two leads serves every change.
    group.start_member(other).await;
    group.crash(leader).await;
    let (next, names) = group.names().await;
    assert!(next == other || next == 4, "member {next} leads");
    assert_eq!(names.len(), 21, "{names:?}");
    assert!(names.contains(&"healed".to_string()));
}

/// A follower's log waits for the storages as the leader's does: before it syncs entries
/// naming blobs that storages acknowledged as written but not synced, it has those
/// storages sync (learning from the leader where they are, as storages report to the
/// leader only). Otherwise a power loss of every machine at once could leave a follower,
/// leader next, with a layout naming a blob that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_have_the_storages_sync_before_their_logs_do() {
    let group = Group::with_storages(3, 2).await;
    let client = group.cluster.client().await;
    // Uploads not synced, commits not synced: the entries name blobs the storages have
    // only written.
    for i in 0..5 {
        group
            .cluster
            .put(&client, &format!("/f{i}"), &bytes(10_000, i))
            .await
            .unwrap();
    }
    let gate = "vg_wal_gate_storage_syncs";
    for id in 1..=3 {
        crate::cluster::eventually(
            &format!("member {id}'s log has the storages sync"),
            Duration::from_secs(20),
            || async { group.metric(id, gate).await.is_some_and(|n| n > 0.0) },
        )
        .await;
    }
}
