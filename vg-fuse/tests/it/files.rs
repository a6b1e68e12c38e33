//! The mount's open-file layer (write-back buffering, block cutting, cache, read-ahead)
//! against a real cluster, checked against an in-memory model of the file.

use std::sync::Arc;
use std::time::Duration;

use vg_fuse::client::files::{Files, Limits};
use vg_fuse::client::Maker;
use vg_wire::SetAttr;

use crate::cluster::{bytes, Rng, TestCluster, BLOCK};

fn limits() -> Limits {
    // Small limits so that back-pressure, eviction and re-fetching all happen.
    Limits {
        max_dirty: 4 * BLOCK as u64,
        partial_blocks: 2,
        cache: 6 * BLOCK as u64,
        read_ahead: 1,
        sync_on_close: false,
        close_idle: std::time::Duration::from_millis(100),
    }
}

/// A new file in `root`, open in a fresh open-file layer.
async fn open_new(client: &vg_fuse::client::Client, root: u64, name: &str) -> (u64, Arc<Files>) {
    let attr = client
        .create(root, name.as_bytes(), 0o644, Maker::ROOT, true)
        .await
        .unwrap();
    let files = Files::new(client.clone(), limits());
    files.open_created(&attr).await.unwrap();
    (attr.ino, files)
}

/// Up to `len` bytes of file `ino` as a new client (a mount of its own) reads them after
/// opening it: what was committed.
async fn read_elsewhere(cluster: &TestCluster, ino: u64, len: usize) -> Vec<u8> {
    let other = Files::new(cluster.client().await, limits());
    other.open(ino).await.unwrap();
    let got = other.read(ino, 0, len, true).await.unwrap();
    other.release(ino).await;
    got.to_vec()
}

/// A random read of up to `max_len` bytes, sequential or not, returns what the model holds.
async fn read_matches(
    files: &Arc<Files>,
    ino: u64,
    model: &[u8],
    rng: &mut Rng,
    max_len: u64,
    what: &str,
) {
    let offset = rng.below(model.len() as u64 + 10);
    let len = 1 + rng.below(max_len) as usize;
    let got = files
        .read(ino, offset, len, rng.below(2) == 0)
        .await
        .unwrap();
    let start = (offset as usize).min(model.len());
    let end = (offset as usize + len).min(model.len());
    assert!(
        got == model[start..end],
        "{what}: read {offset}+{len} differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_writes_truncates_and_reads_match_a_model() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    for seed in [0x5eed, 7, 99] {
        check_against_model(&cluster, root, seed).await;
    }
    cluster.wait_replicated(2).await;
}

async fn check_against_model(cluster: &TestCluster, root: u64, seed: u64) {
    let client = cluster.client().await;
    let (ino, files) = open_new(&client, root, &format!("model{seed}")).await;
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng(seed);
    for step in 0..300u64 {
        match rng.below(10) {
            0..=4 => {
                let offset = rng.below(model.len() as u64 + 2 * BLOCK as u64);
                let len = 1 + rng.below(2 * BLOCK as u64 + 100) as usize;
                let data = bytes(len, step);
                files.write(ino, offset, &data).await.unwrap();
                let end = offset as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
            }
            5 => {
                let size = rng.below(model.len() as u64 + BLOCK as u64);
                files
                    .setattr(
                        ino,
                        SetAttr {
                            size: Some(size),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                model.resize(size as usize, 0);
            }
            6 => files.flush(ino).await.unwrap(),
            _ => {
                let what = format!("seed {seed} step {step}");
                read_matches(&files, ino, &model, &mut rng, 3 * BLOCK as u64, &what).await;
            }
        }
    }
    files.flush(ino).await.unwrap();
    files.release(ino).await;
    assert_eq!(client.getattr(ino).await.unwrap().size, model.len() as u64);
    // Another client sees exactly the model after the close (close-to-open).
    let got = read_elsewhere(cluster, ino, model.len() + 1).await;
    assert!(
        got == model,
        "seed {seed}: committed content differs from the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_one_file_all_land() {
    let cluster = TestCluster::start(2, 1 << 30).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    let ino = client
        .create(root, b"shared", 0o644, Maker::ROOT, true)
        .await
        .unwrap()
        .ino;
    let files = Files::new(client.clone(), limits());
    let writers = 8u64;
    // Regions straddle block boundaries on purpose.
    let piece_len = (BLOCK as u64 + 777) / 4;
    let region = 4 * piece_len;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let files: Arc<Files> = files.clone();
        tasks.push(tokio::spawn(async move {
            files.open(ino).await.unwrap();
            for chunk in 0..4u64 {
                let piece = bytes(piece_len as usize, w * 10 + chunk);
                files
                    .write(ino, w * region + chunk * piece_len, &piece)
                    .await
                    .unwrap();
            }
            files.flush(ino).await.unwrap();
            files.release(ino).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut want = Vec::new();
    for w in 0..writers {
        for chunk in 0..4u64 {
            want.extend(bytes(piece_len as usize, w * 10 + chunk));
        }
    }
    let got = cluster.get(&client, "/shared").await.unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "content of concurrent writers differs");
}

/// Attributes fetched before this client's commit and delivered after it (a `stat`
/// racing with `close`) must not make the file look as it was before the commit: the
/// kernel would take the old size and read the file as empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_older_than_our_commit_give_way() {
    let cluster = TestCluster::start(2, 1 << 30).await;
    for entry_ttl in [
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(60),
    ] {
        let client = cluster.caching_client(entry_ttl).await;
        let root = client.resolve("/").await.unwrap().ino;
        let name = format!("racy{}", entry_ttl.as_secs());
        let created = client
            .create(root, name.as_bytes(), 0o644, Maker::ROOT, true)
            .await
            .unwrap();
        let files = Files::new(client.clone(), limits());
        files.open_created(&created).await.unwrap();
        let data = bytes(BLOCK + 10, 3);
        files.write(created.ino, 0, &data).await.unwrap();
        files.flush(created.ino).await.unwrap();
        // Still open: the file's own state knows the commit.
        let mut stale = created.clone();
        files.overlay(&mut stale).await;
        assert_eq!(
            stale.size,
            data.len() as u64,
            "open, entry TTL {entry_ttl:?}"
        );
        files.release(created.ino).await;
        // Closed: only the entry cache, when there is one, remembers it.
        if !entry_ttl.is_zero() {
            let mut stale = created.clone();
            files.overlay(&mut stale).await;
            assert_eq!(stale.size, data.len() as u64, "closed");
        }
    }
}

/// A rename answers with the moved inode's attributes, so that the renaming client knows
/// the new name without asking (an `rm` or `stat` after `mv` used to cost a lookup round
/// trip), and knows it as the nameserver does: the rename moved its ctime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_file_is_known_under_its_new_name() {
    use vg_fuse::client::Cached;
    let cluster = TestCluster::start(2, 1 << 30).await;
    let client = cluster
        .caching_client(std::time::Duration::from_secs(60))
        .await;
    let root = client.resolve("/").await.unwrap().ino;
    let dir = client
        .mkdir(root, b"d", 0o755, Maker::ROOT)
        .await
        .unwrap()
        .ino;
    let file = client
        .create(dir, b"x", 0o644, Maker::ROOT, true)
        .await
        .unwrap();
    client.rename(dir, b"x", dir, b"y", false).await.unwrap();
    let Some(Cached::Found(known, _)) = client.cached_lookup(dir, b"y") else {
        panic!("the new name is not known after the rename");
    };
    assert_eq!(client.cached_lookup(dir, b"x"), Some(Cached::Absent));
    let fresh = cluster.client().await.resolve("/d/y").await.unwrap();
    assert_eq!(known.ino, file.ino);
    assert_eq!(
        known, fresh,
        "cached attributes differ from the nameserver's"
    );
}

/// Small writes make slices, not whole-block rewrites: random small writes, flushes,
/// truncates, closes (which compact in the background while the writer goes on) and
/// compactions by another client racing with the writer's commits, checked against a
/// byte model after every read and, at the end, through another client. Every block
/// ends with few slices, and the cluster holds little more than the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_writes_and_concurrent_compactions_match_a_model() {
    use vg_fuse::client::compact::compact_blocks;
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let compactor = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    for seed in 1..=6u64 {
        let (ino, files) = open_new(&client, root, &format!("small{seed}")).await;
        let mut model: Vec<u8> = Vec::new();
        let mut rng = Rng(seed * 0x9e37_79b9);
        let span = 3 * BLOCK as u64;
        for step in 0..400u64 {
            match rng.below(20) {
                0..=11 => {
                    let offset = rng.below(span);
                    let len = 1 + rng.below(3000) as usize;
                    let data = bytes(len, seed * 1000 + step);
                    files.write(ino, offset, &data).await.unwrap();
                    let end = offset as usize + len;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                12 | 13 => files.flush(ino).await.unwrap(),
                14 => {
                    let size = rng.below(span);
                    let set = SetAttr {
                        size: Some(size),
                        ..Default::default()
                    };
                    files.setattr(ino, set).await.unwrap();
                    model.resize(size as usize, 0);
                }
                15 => {
                    // Closed and opened again: the close rule waits for the file to stay
                    // closed, which the end of the round does.
                    files.flush(ino).await.unwrap();
                    files.release(ino).await;
                    files.open(ino).await.unwrap();
                }
                16 => {
                    let all: Vec<u64> = (0..3).collect();
                    compact_blocks(&compactor, ino, &all, true).await.unwrap();
                }
                _ => {
                    let what = format!("seed {seed} step {step}");
                    read_matches(&files, ino, &model, &mut rng, 2 * BLOCK as u64, &what).await;
                }
            }
        }
        files.flush(ino).await.unwrap();
        files.release(ino).await;
        let got = read_elsewhere(&cluster, ino, model.len() + 1).await;
        assert!(got == model, "seed {seed}: committed content differs");
        // Left closed, every block is compacted down to one blob's worth of slices.
        crate::cluster::eventually(
            "blocks compacted after the last close",
            std::time::Duration::from_secs(20),
            || async {
                let layout = client.layout(ino).await.unwrap();
                layout
                    .blocks
                    .iter()
                    .all(|list| !vg_wire::slices::wants_compaction(list, true))
            },
        )
        .await;
    }
}

/// A file the mount wrote is compacted by the close rule once it stays closed
/// (`Limits::close_idle`, 100 ms here), not while it is open again: a program that opens,
/// writes and closes in a loop would otherwise rewrite its blocks every few closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_compacted_once_it_stays_closed() {
    let cluster = TestCluster::start(2, 1 << 30).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    let (ino, files) = open_new(&client, root, "appended").await;
    let slices = |client: vg_fuse::client::Client| async move {
        client.layout(ino).await.unwrap().blocks[0].len()
    };
    for i in 0..20u64 {
        files.write(ino, i * 100, &bytes(50, i)).await.unwrap();
        files.flush(ino).await.unwrap();
    }
    assert_eq!(slices(client.clone()).await, 20);
    // Closed and opened again at once, as by the next append of a loop: left as it is.
    files.release(ino).await;
    files.open(ino).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(slices(client.clone()).await, 20, "compacted while open");
    files.release(ino).await;
    crate::cluster::eventually(
        "the block compacted once the file stayed closed",
        std::time::Duration::from_secs(20),
        || async { slices(client.clone()).await == 1 },
    )
    .await;
    let got = read_elsewhere(&cluster, ino, 4000).await;
    let mut want = vec![0u8; 1950];
    for i in 0..20u64 {
        want[(i * 100) as usize..(i * 100 + 50) as usize].copy_from_slice(&bytes(50, i));
    }
    assert!(got == want, "content changed by the compaction");
}

/// Extended attributes through two caching clients: the writer sees its own changes at
/// once, the other within its TTL (its cached set ages out), and they go with the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs_are_seen_by_the_writer_at_once_and_by_others_within_the_ttl() {
    use std::time::Duration;
    use vg_wire::xattr::SetMode;
    let cluster = TestCluster::start(2, 1 << 30).await;
    let (ttl, long) = (Duration::from_millis(300), Duration::from_secs(60));
    let writer = cluster.caching_client(long).await;
    let reader = cluster.caching_client(ttl).await;
    let root = writer.resolve("/").await.unwrap().ino;
    let file = writer
        .create(root, b"f", 0o644, Maker::ROOT, true)
        .await
        .unwrap()
        .ino;
    assert!(reader.xattrs(file).await.unwrap().is_empty());
    assert!(writer.xattrs(file).await.unwrap().is_empty());
    writer
        .set_xattr(file, b"user.k", b"v1", SetMode::Create)
        .await
        .unwrap();
    let want = vec![(b"user.k".to_vec(), b"v1".to_vec())];
    assert_eq!(
        *writer.xattrs(file).await.unwrap(),
        want,
        "the writer's own change"
    );
    crate::cluster::eventually(
        "the reader sees the attribute",
        Duration::from_secs(10),
        || async { *reader.xattrs(file).await.unwrap() == want },
    )
    .await;
    let refused = writer
        .set_xattr(file, b"user.k", b"v2", SetMode::Create)
        .await;
    assert_eq!(refused.unwrap_err().code(), vg_wire::ErrorCode::Exists);
    writer.remove_xattr(file, b"user.k").await.unwrap();
    assert!(writer.xattrs(file).await.unwrap().is_empty());
    writer.unlink(root, b"f").await.unwrap();
    let gone = cluster.client().await.xattrs(file).await.unwrap_err();
    assert_eq!(gone.code(), vg_wire::ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsyncs_race_their_uploads_and_one_that_never_arrives_is_undone() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    // Small writes, each fsynced: most commits race their uploads. Another client
    // asks for the layout right after each fsync (as a database taking a lock does), and
    // reads what they covered.
    let (ino, files) = open_new(&client, root, "db").await;
    let mut model = bytes(4 * BLOCK, 1);
    files.write(ino, 0, &model).await.unwrap();
    files.fsync(ino).await.unwrap();
    let other = cluster.client().await;
    let mut rng = Rng(7);
    for n in 0..100u64 {
        let at = rng.below((model.len() - 4096) as u64) as usize;
        let page = bytes(4096, 100 + n);
        model[at..at + 4096].copy_from_slice(&page);
        files.write(ino, at as u64, &page).await.unwrap();
        files.fsync(ino).await.unwrap();
        other.layout(ino).await.unwrap();
    }
    assert!(cluster.get(&other, "/db").await.unwrap() == model);
    // The layouts waited for the raced blobs' check at the nameserver instead of being
    // sent back to ask again after a pause.
    let status = client.status().await.unwrap();
    let layouts = status.requests.iter().find(|t| t.op == "layout").unwrap();
    assert_eq!(
        layouts.errors, 0,
        "layouts answered \"try again\": {layouts:?}"
    );
    // A raced commit whose upload never comes (the client went away): the storages named
    // say they do not hold the blob once they waited for it, and the write is undone,
    // the bytes it covered reading as before.
    let before = model[..4096].to_vec();
    let lost = bytes(4096, 999);
    let blob = vg_wire::BlockId::of(&lost);
    let slice = crate::cluster::whole_blob_slice(&lost);
    let holders = vec!["s0".to_string(), "s1".to_string()];
    client
        .commit(
            ino,
            model.len() as u64,
            vec![(0, vec![slice])],
            vec![(blob, 4096, holders)],
            None,
            vg_fuse::client::Commit::Raced(42),
        )
        .await
        .unwrap();
    crate::cluster::eventually(
        "the raced write undone",
        Duration::from_secs(30),
        || async {
            let layout = other.layout(ino).await.unwrap();
            !layout.blocks.iter().flatten().any(|s| s.blob == blob)
        },
    )
    .await;
    let got = cluster.get(&other, "/db").await.unwrap();
    assert!(got[..4096] == before[..] && got[4096..] == model[4096..]);
    // The upload, should it come now, is refused: the fsync waiting for it fails.
    let put = vg_wire::storage::Request::Put {
        id: blob,
        len: 4096,
        chain: vec![],
        sync: true,
        race: Some(42),
    };
    let dialer = crate::cluster::dialer(&cluster.issue("late", vg_wire::Role::Client));
    let target = cluster.storage_target("s0");
    let answer = vg_wire::rpc::send_block(&dialer, &target, &put, lost.into()).await;
    assert!(answer.is_err(), "{answer:?}");
}

/// A raced write is taken as stored on its client's word that every storage it named
/// acknowledged the blob (an fsync's synced, a close's written): a layout right after it
/// needs no storage to answer for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raced_write_is_checked_on_its_clients_word() {
    let mut cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    let (ino, files) = open_new(&client, root, "db").await;
    let mut model = bytes(BLOCK, 1);
    files.write(ino, 0, &model).await.unwrap();
    files.fsync(ino).await.unwrap();
    // The first small flush asks for a placement; the next ones race their uploads:
    // fsyncs, then a close's flush.
    for n in 0..4u64 {
        let at = (n * 8192) as usize;
        let page = bytes(4096, 10 + n);
        model[at..at + 4096].copy_from_slice(&page);
        files.write(ino, at as u64, &page).await.unwrap();
        match n {
            3 => files.flush(ino).await.unwrap(),
            _ => files.fsync(ino).await.unwrap(),
        }
    }
    let (fsynced, closed) = (
        vg_wire::BlockId::of(&model[16384..20480]),
        vg_wire::BlockId::of(&model[24576..28672]),
    );
    // No storage is left to answer for the last write: only its client's word checks it.
    for name in ["s0", "s1", "s2"] {
        cluster.kill_storage(name);
    }
    let other = cluster.client().await;
    let layout = other
        .layout(ino)
        .await
        .expect("the layout, not \"try again\"");
    for blob in [fsynced, closed] {
        assert!(
            layout.blocks.iter().flatten().any(|s| s.blob == blob),
            "the last writes' blobs are in the layout"
        );
    }
}

/// A close's raced write, whose uploads are acknowledged unsynced, is synced by the log
/// only once its storages said they synced the blob, or that it never came: then it is
/// undone first. A sync after it waits for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closes_raced_write_is_synced_only_once_its_storages_answered() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let data = bytes(10_000, 3);
    let ino = cluster.put(&client, "/f", &data).await.unwrap();
    let lost = bytes(4096, 4);
    let blob = vg_wire::BlockId::of(&lost);
    let slice = crate::cluster::whole_blob_slice(&lost);
    let commit = |race, sync| vg_wire::ns::Request::Commit {
        ino,
        size: data.len() as u64,
        slices: vec![(0, vec![slice])],
        stored: vec![(blob, 4096, vec!["s0".to_string(), "s1".to_string()])],
        set: None,
        sync,
        race: Some(race),
        races_stored: Vec::new(),
    };
    // A commit answered before its sync must race as unsynced.
    let refused = client.ns_call(commit(5, false)).await.unwrap_err();
    assert_eq!(refused.code(), vg_wire::ErrorCode::Invalid);
    // Its upload never comes (the client went away before its close returned).
    client
        .ns_call(commit(5 | vg_wire::ns::RACE_UNSYNCED, false))
        .await
        .unwrap();
    let written = client.status().await.unwrap().log_written;
    // Settled before the log synced it: the undoing was written first (the storages
    // waited 5 s for an upload on its way).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let synced = loop {
        let status = client.status().await.unwrap();
        if status.log_durable >= written {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the commit never synced"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(
        synced.log_written > written,
        "synced at {} before its undoing",
        synced.log_durable
    );
    let layout = client.layout(ino).await.unwrap();
    assert!(!layout.blocks.iter().flatten().any(|s| s.blob == blob));
    assert!(cluster.get(&client, "/f").await.unwrap() == data);
}

/// A sync with no change answered since the last one known on disk asks nothing of the
/// nameserver (sqlite syncs the directory right after the fsync of a journal it made);
/// after a change it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_after_an_fsync_covering_every_change_needs_no_round_trip() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    let syncs = || async {
        let status = client.status().await.unwrap();
        let sync = status.requests.iter().find(|t| t.op == "sync");
        sync.map_or(0, |t| t.answered)
    };
    let (ino, files) = open_new(&client, root, "journal").await;
    files.write(ino, 0, &bytes(4096, 1)).await.unwrap();
    files.fsync(ino).await.unwrap();
    let before = syncs().await;
    client.sync().await.unwrap();
    assert_eq!(
        syncs().await,
        before,
        "the fsync's commit covered the create"
    );
    client.mkdir(root, b"d", 0o755, Maker::ROOT).await.unwrap();
    client.sync().await.unwrap();
    assert_eq!(syncs().await, before + 1, "the mkdir was not synced");
    client.sync().await.unwrap();
    assert_eq!(syncs().await, before + 1);
}

/// A lock taken makes lookups in the locked file's directory see another mount's changes
/// at once, past the entry cache: sqlite on two mounts, once it holds its lock, asks
/// whether a journal is there, and took one the other mount had just removed for one a
/// crash left (and failed rolling it back: the test-posix case, now and then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_makes_its_directory_looked_up_afresh() {
    use vg_wire::ns::{Lock, LockKind};
    let cluster = TestCluster::start(3, 1 << 30).await;
    let other = cluster.client().await;
    let client = cluster.caching_client(Duration::from_secs(60)).await;
    let root = client.resolve("/").await.unwrap().ino;
    let (db, files) = open_new(&client, root, "db").await;
    other
        .create(root, b"db-journal", 0o644, Maker::ROOT, true)
        .await
        .unwrap();
    client.readdir_all(root).await.unwrap();
    other.unlink(root, b"db-journal").await.unwrap();
    assert!(
        client.lookup(root, b"db-journal").await.is_ok(),
        "a listing is trusted for its TTL"
    );
    let shared = Lock {
        owner: 1,
        start: 0,
        end: u64::MAX,
        kind: LockKind::Read,
        pid: 1,
    };
    files
        .lock(db, shared, false, std::future::pending())
        .await
        .unwrap();
    let gone = client.lookup(root, b"db-journal").await.unwrap_err();
    assert_eq!(gone.code(), vg_wire::ErrorCode::NotFound);
    other
        .create(root, b"db-wal", 0o644, Maker::ROOT, true)
        .await
        .unwrap();
    assert!(client.lookup(root, b"db-wal").await.is_ok());
    assert!(
        client.cached_listing(root).is_none(),
        "nor listed from the cache"
    );
}
