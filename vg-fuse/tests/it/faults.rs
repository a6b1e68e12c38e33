//! Crashes, torn logs and bit rot: nothing acknowledged is lost, nothing half-applied.

use std::collections::BTreeMap;
use std::time::Duration;

use vg_fuse::client::{Client, Config, Maker};
use vg_wire::tls::TlsPaths;
use vg_wire::ErrorCode;

use crate::cluster::{bytes, eventually, Rng, TestCluster, BLOCK};

/// A client that gives up quickly when the nameserver is gone (the crash tests want the
/// writers to notice the crash, not to wait for the restart).
async fn impatient_client(cluster: &TestCluster) -> Client {
    let mut config = Config::new(
        cluster.ns_addr,
        TlsPaths::in_dir(&cluster.certs(), "client"),
    );
    config.unavailable_timeout = Duration::from_millis(300);
    config.request_timeout = Duration::from_millis(300);
    Client::connect(&config).await.expect("connect")
}

/// What one writer knows of its directory: names surely present or absent (acknowledged
/// operations), and the names the one unacknowledged operation touched.
#[derive(Default)]
struct Model {
    present: BTreeMap<String, bool>,
    uncertain: Vec<String>,
}

/// Runs metadata operations in `/wN` until one fails (the nameserver died).
async fn writer(client: Client, w: u64, seed: u64) -> Model {
    let mut model = Model::default();
    let Ok(root) = client.resolve("/").await.map(|a| a.ino) else {
        return model;
    };
    let dir = match client
        .mkdir(root, format!("w{w}").as_bytes(), 0o755, Maker::ROOT)
        .await
    {
        Ok(attr) => attr.ino,
        // Made before a crash that lost the answer, or not at all: the nameserver died
        // before this writer began (a loaded machine), and it has nothing to check (the
        // test counts what was acknowledged in all).
        Err(_) => match client.lookup(root, format!("w{w}").as_bytes()).await {
            Ok(attr) => attr.ino,
            Err(_) => return model,
        },
    };
    let mut rng = Rng(seed | 1);
    for i in 0u64.. {
        let state = rng.next();
        let name = format!("n{i}");
        let (result, touched) = match state % 4 {
            0 => (
                client
                    .mkdir(dir, name.as_bytes(), 0o755, Maker::ROOT)
                    .await
                    .map(|_| ()),
                vec![(name, true)],
            ),
            1 => (
                client
                    .create(dir, name.as_bytes(), 0o644, Maker::ROOT, true)
                    .await
                    .map(|_| ()),
                vec![(name, true)],
            ),
            // Rename or unlink an earlier file that is surely there.
            k => match model
                .present
                .iter()
                .find(|(n, p)| **p && n.starts_with('n') && !n.contains('r'))
                .map(|(n, _)| n.clone())
            {
                Some(old) if k == 2 => {
                    let new = format!("{old}r");
                    let r = client
                        .rename(dir, old.as_bytes(), dir, new.as_bytes(), false)
                        .await;
                    (r, vec![(old, false), (new, true)])
                }
                Some(old) => {
                    let attr = client.lookup(dir, old.as_bytes()).await;
                    let r = match attr {
                        Ok(a) if a.kind == vg_wire::FileKind::Dir => {
                            client.rmdir(dir, old.as_bytes()).await
                        }
                        Ok(_) => client.unlink(dir, old.as_bytes()).await.map(drop),
                        Err(e) => Err(e),
                    };
                    (r, vec![(old, false)])
                }
                None => (
                    client
                        .create(dir, name.as_bytes(), 0o644, Maker::ROOT, true)
                        .await
                        .map(|_| ()),
                    vec![(name, true)],
                ),
            },
        };
        match result {
            Ok(()) => model.present.extend(touched),
            Err(_) => {
                model.uncertain = touched.into_iter().map(|(n, _)| n).collect();
                return model;
            }
        }
    }
    unreachable!("the loop ends at the first failure")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameserver_crash_during_metadata_bursts_20_seeded_iterations() {
    let mut cluster = TestCluster::start(0, 1 << 30).await;
    cluster.kill_nameserver();
    let mut acknowledged = 0;
    for iteration in 0..20u64 {
        cluster.start_nameserver_child().await;
        let client = cluster.client().await;
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let client = impatient_client(&cluster).await;
            writers.push(tokio::spawn(writer(
                client,
                iteration * 10 + w,
                iteration * 7919 + w,
            )));
        }
        // Crash at a seeded point of the burst.
        tokio::time::sleep(Duration::from_millis(30 + (iteration * 37) % 200)).await;
        cluster.kill_nameserver();
        let mut models = Vec::new();
        for task in writers {
            models.push(task.await.expect("writer"));
        }
        drop(client);
        cluster.start_nameserver_child().await;
        let client = cluster.client().await;
        acknowledged += models.iter().map(|m| m.present.len()).sum::<usize>();
        for (w, model) in models.iter().enumerate() {
            let path = format!("/w{}", iteration * 10 + w as u64);
            let Ok(dir) = client.resolve(&path).await else {
                assert!(
                    model.present.is_empty(),
                    "iteration {iteration}: {path} lost with acknowledged entries in it"
                );
                continue;
            };
            let names = crate::cluster::names(&client, dir.ino).await;
            for (name, present) in &model.present {
                if model.uncertain.contains(name) {
                    continue;
                }
                assert_eq!(
                    names.contains(name),
                    *present,
                    "iteration {iteration}: {path}/{name} should be present={present}"
                );
            }
            for name in &names {
                assert!(
                    model.present.contains_key(name) || model.uncertain.contains(name),
                    "iteration {iteration}: {path}/{name} appeared from nowhere"
                );
            }
            // A rename is all or nothing: never both names, never neither.
            if let [old, new] = &model.uncertain[..] {
                assert!(
                    names.contains(old) != names.contains(new)
                        || !model.present.get(old).copied().unwrap_or(false),
                    "iteration {iteration}: rename {old} -> {new} half-applied"
                );
            }
        }
        cluster.kill_nameserver();
    }
    // The crashes must have hit bursts in progress, not idle writers.
    assert!(
        acknowledged > 200,
        "only {acknowledged} operations were acknowledged before the crashes"
    );
    eprintln!("20 crashes survived; {acknowledged} acknowledged operations all present");

    // Then a crash during file writes, and `vgctl fsck` once the cluster has settled.
    cluster.start_nameserver_child().await;
    for name in ["s0", "s1"] {
        cluster.add_storage(name).await;
    }
    cluster.wait_active(&["s0".into(), "s1".into()]).await;
    let mut writers = Vec::new();
    let files_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for w in 0..4u64 {
        let client = impatient_client(&cluster).await;
        let local = cluster.dir.path().join(format!("burst{w}"));
        let files_done = files_done.clone();
        writers.push(tokio::spawn(async move {
            let root = client.resolve("/").await.ok()?.ino;
            let mut written = Vec::new();
            for i in 0..50u64 {
                let data = bytes(BLOCK + 1000 * i as usize, w * 100 + i);
                std::fs::write(&local, &data).unwrap();
                let name = format!("data{w}-{i}");
                let Ok(attr) = client
                    .create(root, name.as_bytes(), 0o644, Maker::ROOT, true)
                    .await
                else {
                    break;
                };
                if client.put_file(&local, attr.ino, |_| {}).await.is_err() {
                    break;
                }
                written.push((name, data));
                files_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(written)
        }));
    }
    // The crash comes once files are being written, not before the first one is.
    eventually("the writers wrote 8 files", Duration::from_secs(30), || {
        let done = files_done.load(std::sync::atomic::Ordering::Relaxed);
        async move { done >= 8 }
    })
    .await;
    cluster.kill_nameserver();
    let mut written = Vec::new();
    for task in writers {
        written.extend(task.await.unwrap().unwrap_or_default());
    }
    cluster.start_nameserver_child().await;
    cluster.wait_active(&["s0".into(), "s1".into()]).await;
    let client = cluster.client().await;
    assert!(
        written.len() >= 8,
        "only {} files acknowledged",
        written.len()
    );
    for (name, data) in &written {
        assert!(
            cluster.get(&client, &format!("/{name}")).await.unwrap() == *data,
            "/{name} differs after the crash"
        );
    }
    let fsck = || async {
        std::process::Command::new(env!("CARGO_BIN_EXE_vgctl"))
            .current_dir(cluster.dir.path())
            .env("VG_NS_PORT", cluster.ns_addr.port().to_string())
            .arg("fsck")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    eventually(
        "vgctl fsck clean after the crash",
        Duration::from_secs(30),
        fsck,
    )
    .await;
    eprintln!(
        "crash during writes: {} acknowledged files intact, fsck clean",
        written.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_write_ahead_log_recovers_the_valid_prefix() {
    let mut cluster = TestCluster::start(0, 1 << 30).await;
    cluster.kill_nameserver();
    cluster.start_nameserver_child().await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    for i in 0..50 {
        client
            .mkdir(root, format!("d{i:02}").as_bytes(), 0o755, Maker::ROOT)
            .await
            .unwrap();
    }
    drop(client);
    cluster.kill_nameserver();
    let wal = cluster.dir.path().join("meta").join("log");
    let full = std::fs::read(&wal).unwrap();
    let mut rng = Rng(0x7011);
    for round in 0..5 {
        let state = rng.next();
        let cut = (state as usize) % full.len();
        let mut torn = full[..cut].to_vec();
        torn.extend((0..(state % 50)).map(|i| (i as u8).wrapping_mul(151) ^ 0x5a));
        std::fs::write(&wal, &torn).unwrap();
        // The snapshot holds the group's start (written then): the mkdirs are entries of
        // the log after it.
        cluster.start_nameserver_child().await;
        let client = cluster.client().await;
        let names = crate::cluster::names(&client, root).await;
        // The survivors are exactly a prefix d00, d01, ... of what was written.
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                name,
                &format!("d{i:02}"),
                "round {round}: not a prefix: {names:?}"
            );
        }
        drop(client);
        cluster.kill_nameserver();
        let log = std::fs::read_to_string(cluster.dir.path().join("nameserver.log")).unwrap();
        assert_eq!(
            log.matches("torn or corrupt tail").count(),
            round + 1,
            "round {round}: the nameserver must say it cut the log"
        );
        std::fs::write(&wal, &full).unwrap();
    }
}

/// Inverts the byte at `at` of the file at `path`: bit rot, on a storage's disk.
fn flip_byte(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_rot_is_read_around_detected_and_repaired() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let data = bytes(4 * BLOCK + 99, 11);
    cluster.put(&client, "/rotten", &data).await.unwrap();
    cluster.wait_replicated(2).await;
    // Flip a byte in the middle of every block of one storage, on its disk.
    let victim = "s0";
    let mut flipped = 0;
    for (_, path, offset, len) in
        vg_storage::block_store::on_disk(&cluster.data_dir(victim)).unwrap()
    {
        flip_byte(&path, offset + len as u64 / 2);
        flipped += 1;
    }
    assert!(flipped > 0, "{victim} held no block");
    // Reads return the right bytes, from the other replica where needed.
    assert!(cluster.get(&client, "/rotten").await.unwrap() == data);
    // The bad copies are found (on read or by the scrub), deleted and re-replicated.
    eventually("bad copies repaired", Duration::from_secs(30), || async {
        let Ok(blocks) = client.list_blocks().await else {
            return false;
        };
        let mut all_ok = blocks.iter().all(|b| b.locations.len() == 2);
        for block in &blocks {
            for location in &block.locations {
                all_ok &= client
                    .verify(location, vec![block.id])
                    .await
                    .is_ok_and(|v| v == [true]);
            }
        }
        all_ok
    })
    .await;
    assert!(cluster.get(&client, "/rotten").await.unwrap() == data);
}

/// `vgctl fsck` has every holder re-hash its copies (`Verify`): one found corrupt is
/// deleted and made again then, not only once a reader or the next scrub pass (a day
/// later by default) comes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_a_check_finds_is_repaired() {
    let cluster = TestCluster::start_unscrubbed(2, 1 << 30, BLOCK).await;
    let client = cluster.client().await;
    let data = bytes(3 * BLOCK, 31);
    cluster.put(&client, "/checked", &data).await.unwrap();
    cluster.wait_replicated(2).await;
    let (id, path, offset, len) = vg_storage::block_store::on_disk(&cluster.data_dir("s0"))
        .unwrap()
        .into_iter()
        .next()
        .expect("s0 holds a block");
    flip_byte(&path, offset + len as u64 / 2);
    let s0 = client
        .list_blocks()
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.id == id)
        .expect("the nameserver knows the block")
        .locations
        .into_iter()
        .find(|l| l.name == "s0")
        .expect("s0 holds it");
    assert_eq!(client.verify(&s0, vec![id]).await.unwrap(), [false]);
    eventually(
        "the checked copy made again",
        Duration::from_secs(30),
        || async {
            client
                .verify(&s0, vec![id])
                .await
                .is_ok_and(|v| v == [true])
        },
    )
    .await;
    assert!(cluster.get(&client, "/checked").await.unwrap() == data);
}

/// A block larger than a storage's read piece goes out piece by piece, each checked as it
/// comes off the disk: a corrupt piece past the first cuts the stream, the reader takes
/// the block from the other replica, and the bad copy is deleted and made again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_piece_cuts_a_streamed_read() {
    // No scrub: the read must be what finds the damage.
    let cluster = TestCluster::start_with(2, 1 << 30, 4 << 20, 1).await;
    let client = cluster.client().await;
    let data = bytes((8 << 20) + 99, 12);
    let ino = cluster.put(&client, "/big", &data).await.unwrap();
    cluster.wait_replicated(2).await;
    let layout = client.layout(ino).await.unwrap();
    let block = layout.blocks[1][0].blob;
    let holders = layout.locations.iter().find(|(id, _)| *id == block);
    let s0: Vec<_> = holders
        .expect("block 1's blob has locations")
        .1
        .iter()
        .filter(|l| l.name == "s0")
        .cloned()
        .collect();
    assert_eq!(s0.len(), 1, "both storages hold every block");
    // Flip a byte 3 MiB into s0's copy of block 1: its fourth 1 MiB piece.
    let (_, path, offset, _) = vg_storage::block_store::on_disk(&cluster.data_dir("s0"))
        .unwrap()
        .into_iter()
        .find(|(id, ..)| *id == block)
        .expect("s0 holds block 1");
    flip_byte(&path, offset + (3 << 20) + 5);
    assert!(
        client.read_block(block, &s0, 0, 0).await.is_err(),
        "a corrupt copy must not be served"
    );
    assert!(cluster.get(&client, "/big").await.unwrap() == data);
    // s0 deleted its copy and reported it; the nameserver has it copied back. Once
    // (a slow host, CI) a copy s0 verified was gone at the read right after: checked
    // together, until s0 serves the block's bytes. Each new outcome goes to the test's
    // output, which a failure shows.
    let seen = std::sync::Mutex::new(String::new());
    eventually("bad copy replaced", Duration::from_secs(30), || async {
        let verified = client.verify(&s0[0], vec![block]).await;
        let read = client.read_block(block, &s0, 0, 0).await;
        let outcome = format!(
            "verify {verified:?}, read {}",
            match &read {
                Ok(bytes) => format!(
                    "{} bytes, right: {}",
                    bytes.len(),
                    bytes[..] == data[4 << 20..8 << 20]
                ),
                Err(e) => format!("failed: {e}"),
            }
        );
        let mut last = seen.lock().unwrap();
        if *last != outcome {
            eprintln!("s0 now: {outcome}");
            *last = outcome;
        }
        verified.is_ok_and(|v| v == [true]) && read.is_ok_and(|read| read == data[4 << 20..8 << 20])
    })
    .await;
}

/// What the nameserver answers `request` sent raw, as a client that lost the answer
/// before sends it again: again while the connection fails (the nameserver restarting).
async fn send(
    dialer: &vg_wire::rpc::Dialer,
    cluster: &TestCluster,
    request: &vg_wire::ns::Request,
) -> Result<vg_wire::ns::Response, vg_wire::Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match dialer.call(&cluster.ns_target(), request).await {
            Err(e) if e.is_transport() && std::time::Instant::now() < deadline => {
                dialer.forget(&cluster.ns_target());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answer => return answer,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_change_sent_again_is_applied_once_across_crashes() {
    use vg_wire::ns::{Request, Response};
    let mut cluster = TestCluster::start(0, 1 << 30).await;
    cluster.kill_nameserver();
    cluster.start_nameserver_child().await;
    let dialer = crate::cluster::dialer(&TlsPaths::in_dir(&cluster.certs(), "client"));
    let create = Request::Create {
        parent: vg_wire::ROOT_INO,
        name: b"f".to_vec(),
        perm: 0o644,
        umask: 0o022,
        uid: 0,
        gid: 0,
        exclusive: true,
    };
    let rename = Request::Rename {
        parent: vg_wire::ROOT_INO,
        name: b"f".to_vec(),
        new_parent: vg_wire::ROOT_INO,
        new_name: b"g".to_vec(),
        noreplace: false,
    };
    let numbered = |seq: u64, request: &Request| Request::Once {
        client: 77,
        seq,
        request: Box::new(request.clone()),
    };
    let made = |answer: Result<Response, vg_wire::Error>| match answer {
        Ok(Response::Made { attr, .. }) => attr.ino,
        other => panic!("expected the file made, got {other:?}"),
    };
    let ino = made(send(&dialer, &cluster, &numbered(1, &create)).await);
    send(&dialer, &cluster, &numbered(2, &rename))
        .await
        .unwrap();
    // Sent again, unnumbered, both are refused: the file is there, the name gone.
    let refused = |answer: Result<Response, vg_wire::Error>, code| match answer {
        Err(vg_wire::Error::Remote(e)) => assert_eq!(e.code, code, "{e}"),
        other => panic!("expected {code:?}, got {other:?}"),
    };
    refused(send(&dialer, &cluster, &rename).await, ErrorCode::NotFound);
    // Numbered, each is answered as the first time: after the answer was lost, after a
    // crash (the log replayed), after a second one (the snapshot written at the restart).
    for round in 0..3 {
        assert_eq!(
            made(send(&dialer, &cluster, &numbered(1, &create)).await),
            ino,
            "round {round}"
        );
        send(&dialer, &cluster, &numbered(2, &rename))
            .await
            .unwrap_or_else(|e| panic!("round {round}: rename sent again: {e}"));
        cluster.kill_nameserver();
        cluster.start_nameserver_child().await;
    }
    // A new number is a new change; so is the same number from another certificate.
    refused(
        send(&dialer, &cluster, &numbered(3, &rename)).await,
        ErrorCode::NotFound,
    );
    let other = crate::cluster::dialer(&cluster.issue("other-client", vg_wire::Role::Client));
    assert_ne!(
        made(send(&other, &cluster, &numbered(1, &create)).await),
        ino
    );
    // A removal sent again is answered as the first one was (its inode is gone), before
    // and after a crash; unnumbered, it is refused.
    let mkdir = Request::Mkdir {
        parent: vg_wire::ROOT_INO,
        name: b"d".to_vec(),
        perm: 0o755,
        umask: 0o022,
        uid: 0,
        gid: 0,
    };
    let rmdir = Request::Rmdir {
        parent: vg_wire::ROOT_INO,
        name: b"d".to_vec(),
    };
    send(&dialer, &cluster, &numbered(10, &mkdir))
        .await
        .unwrap();
    send(&dialer, &cluster, &numbered(11, &rmdir))
        .await
        .unwrap();
    for round in 0..2 {
        send(&dialer, &cluster, &numbered(11, &rmdir))
            .await
            .unwrap_or_else(|e| panic!("round {round}: rmdir sent again: {e}"));
        cluster.kill_nameserver();
        cluster.start_nameserver_child().await;
    }
    refused(send(&dialer, &cluster, &rmdir).await, ErrorCode::NotFound);
    let client = cluster.client().await;
    let names = crate::cluster::names(&client, vg_wire::ROOT_INO).await;
    assert_eq!(names, ["f", "g"]);
}

/// A power cut can leave a synced record's header on disk and not its bytes: the volume
/// lists the blob again after the restart. A raced write whose only copy is such a record
/// must be undone, not kept on that storage's word (the layout would name a blob nobody
/// can read: what once failed a power-loss round with EIO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raced_write_whose_only_copy_was_torn_is_undone() {
    use std::os::unix::fs::FileExt;
    // No scrub: it would find the torn record first, and the check must not need it.
    let mut cluster = TestCluster::start_with(3, 1 << 30, BLOCK, 1).await;
    let client = cluster.client().await;
    let data = bytes(10_000, 21);
    let ino = cluster.put(&client, "/db", &data).await.unwrap();
    // The raced upload reaches s0 alone and is synced there.
    let lost = bytes(4096, 22);
    let blob = vg_wire::BlockId::of(&lost);
    let slice = crate::cluster::whole_blob_slice(&lost);
    let race = 77;
    let put = vg_wire::storage::Request::Put {
        id: blob,
        len: lost.len() as u32,
        chain: vec![],
        sync: true,
        race: Some(race),
    };
    let dialer = crate::cluster::dialer(&cluster.issue("racer", vg_wire::Role::Client));
    let target = cluster.storage_target("s0");
    vg_wire::rpc::send_block(&dialer, &target, &put, lost.into())
        .await
        .unwrap();
    // The power cut: s0 stops, and its record keeps the header while the bytes read as
    // the zeros written ahead of it.
    cluster.kill_storage("s0");
    let (_, path, offset, len) = vg_storage::block_store::on_disk(&cluster.data_dir("s0"))
        .unwrap()
        .into_iter()
        .find(|(id, ..)| *id == blob)
        .expect("s0 holds the raced blob");
    assert!(
        path.extension().is_some_and(|e| e == "vol"),
        "a volume record"
    );
    let volume = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    volume
        .write_all_at(&vec![0u8; len as usize], offset)
        .unwrap();
    let listed = vg_storage::block_store::on_disk(&cluster.data_dir("s0")).unwrap();
    assert!(listed.iter().any(|(id, ..)| *id == blob), "still listed");
    // The commit the fsync sent beside the upload.
    client
        .commit(
            ino,
            data.len() as u64,
            vec![(0, vec![slice])],
            vec![(blob, 4096, vec!["s0".to_string()])],
            None,
            vg_fuse::client::Commit::Raced(race),
        )
        .await
        .unwrap();
    cluster.add_storage("s0").await;
    eventually(
        "the raced write undone",
        Duration::from_secs(30),
        || async {
            // "Try again" while the check waits for s0.
            client
                .layout(ino)
                .await
                .is_ok_and(|l| !l.blocks.iter().flatten().any(|s| s.blob == blob))
        },
    )
    .await;
    assert!(cluster.get(&client, "/db").await.unwrap() == data);
}
