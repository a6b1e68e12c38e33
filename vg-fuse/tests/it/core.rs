//! Data path and fault tolerance of the cluster core.

use std::time::Duration;

use vg_fuse::client::Maker;
use vg_wire::ErrorCode;

use crate::cluster::{bytes, eventually, TestCluster, BLOCK};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_round_trip_around_block_boundaries() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    // Sizes on each side of the block boundaries, where cutting goes wrong.
    for (i, len) in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17]
        .into_iter()
        .enumerate()
    {
        let data = bytes(len, i as u64);
        let path = format!("/f{len}");
        cluster.put(&client, &path, &data).await.unwrap();
        let back = cluster.get(&client, &path).await.unwrap();
        assert_eq!(back.len(), len, "{path}");
        assert!(back == data, "{path}: content differs");
        assert_eq!(client.resolve(&path).await.unwrap().size, len as u64);
    }
    // Overwriting with a shorter file drops the tail.
    cluster.put(&client, "/f196625", b"short").await.unwrap();
    assert_eq!(cluster.get(&client, "/f196625").await.unwrap(), b"short");
    cluster.wait_replicated(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_stores_identical_blocks_once() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let data = bytes(4 * BLOCK, 7);
    cluster.put(&client, "/a", &data).await.unwrap();
    cluster.wait_replicated(2).await;
    let on_disk = || {
        ["s0", "s1", "s2"]
            .iter()
            .map(|n| cluster.blocks_on_disk(n))
            .sum::<usize>()
    };
    assert_eq!(on_disk(), 8);
    cluster.put(&client, "/b", &data).await.unwrap();
    assert_eq!(cluster.get(&client, "/b").await.unwrap(), data);
    assert_eq!(client.status().await.unwrap().blocks, 4);
    // A small block is sent to the storages the client guessed while the nameserver is
    // asked; those copies are extra replicas, which go with the next rounds.
    eventually(
        "the extra copies are deleted",
        Duration::from_secs(20),
        || async { on_disk() == 8 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_storage_is_re_replicated_and_restart_is_reconciled() {
    let mut cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    let keep = bytes(5 * BLOCK + 3, 1);
    let doomed = bytes(3 * BLOCK, 2);
    cluster.put(&client, "/keep", &keep).await.unwrap();
    cluster.put(&client, "/doomed", &doomed).await.unwrap();
    cluster.wait_replicated(2).await;
    let victim = "s0".to_string();
    let stale_before = cluster.blocks_on_disk(&victim);
    assert!(stale_before > 0, "s0 should hold some blocks");

    cluster.kill_storage(&victim);
    cluster.wait_active(&["s1".into(), "s2".into()]).await;
    cluster.wait_replicated(2).await;
    assert_eq!(cluster.get(&client, "/keep").await.unwrap(), keep);

    // While s0 is down, delete a file: s0's copies of it become stale.
    let root = client.resolve("/").await.unwrap().ino;
    client.unlink(root, b"doomed").await.unwrap();
    cluster.add_storage(&victim).await;
    cluster
        .wait_active(&["s0".into(), "s1".into(), "s2".into()])
        .await;
    // Stale blocks are deleted after the grace period, extra copies trimmed to R=2.
    eventually(
        "stale and extra copies removed",
        Duration::from_secs(20),
        || async {
            let total: usize = ["s0", "s1", "s2"]
                .iter()
                .map(|n| cluster.blocks_on_disk(n))
                .sum();
            total == 2 * 6
        },
    )
    .await;
    cluster.wait_replicated(2).await;
    assert_eq!(cluster.get(&client, "/keep").await.unwrap(), keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_go_around_a_storage_that_died_unnoticed() {
    let mut cluster = TestCluster::start(3, 1 << 30).await;
    let client = cluster.client().await;
    // Warm the client's connection to every storage, so each upload to s0 finds it
    // dead instead of dialing.
    cluster
        .put(&client, "/warm", &bytes(6 * BLOCK, 3))
        .await
        .unwrap();
    cluster.kill_storage("s0");
    // s0 is still active on the nameserver for a while: placements name it, each send
    // to it fails, and the client places that copy elsewhere (small blocks go to both
    // storages at once, so one copy is acknowledged and one fails).
    let data = bytes(8 * BLOCK + 5, 4);
    cluster.put(&client, "/after", &data).await.unwrap();
    assert_eq!(cluster.get(&client, "/after").await.unwrap(), data);
    let ino = client.resolve("/after").await.unwrap().ino;
    let layout = client.layout(ino).await.unwrap();
    assert_eq!(layout.blocks.len(), 9);
    for (i, (_, holders)) in layout.locations.iter().enumerate() {
        let mut names: Vec<&str> = holders.iter().map(|l| l.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["s1", "s2"], "block {i} of /after");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameserver_sigkill_loses_nothing_acknowledged() {
    let mut cluster = TestCluster::start(0, 1 << 30).await;
    // Move the nameserver into a child process so that it can be SIGKILLed.
    cluster.kill_nameserver();
    cluster.start_nameserver_child().await;
    for name in ["s0", "s1"] {
        cluster.add_storage(name).await;
    }
    cluster.wait_active(&["s0".into(), "s1".into()]).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    let dir = client
        .mkdir(root, b"dir", 0o755, Maker::ROOT)
        .await
        .unwrap();
    let mut files = Vec::new();
    for i in 0..20u64 {
        let data = bytes((i as usize) * 9_999, i);
        cluster
            .put(&client, &format!("/dir/file{i}"), &data)
            .await
            .unwrap();
        files.push(data);
    }
    client
        .rename(dir.ino, b"file0", root, b"moved", false)
        .await
        .unwrap();
    cluster.kill_nameserver();
    cluster.start_nameserver_child().await;
    cluster.wait_active(&["s0".into(), "s1".into()]).await;
    let client = cluster.client().await;
    assert_eq!(cluster.get(&client, "/moved").await.unwrap(), files[0]);
    for (i, data) in files.iter().enumerate().skip(1) {
        assert!(
            cluster
                .get(&client, &format!("/dir/file{i}"))
                .await
                .unwrap()
                == *data,
            "file{i}"
        );
    }
    assert_eq!(client.readdir_all(dir.ino).await.unwrap().len(), 19);
    cluster.wait_replicated(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storages_reconnect_to_a_restarted_nameserver() {
    let mut cluster = TestCluster::start(2, 1 << 30).await;
    let client = cluster.client().await;
    let data = bytes(2 * BLOCK + 5, 3);
    cluster.put(&client, "/f", &data).await.unwrap();
    cluster.kill_nameserver();
    cluster.start_nameserver_in_process().await;
    cluster.wait_active(&["s0".into(), "s1".into()]).await;
    cluster.wait_replicated(2).await;
    // The old client reconnects by itself.
    assert_eq!(cluster.get(&client, "/f").await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_refuses_with_enospc_and_keeps_earlier_files() {
    // Two storages of 8 blocks each, R=2: room for 8 blocks of file data.
    let cluster = TestCluster::start(2, 8 * BLOCK as u64).await;
    let client = cluster.client().await;
    let first = bytes(5 * BLOCK, 1);
    cluster.put(&client, "/first", &first).await.unwrap();
    let err = cluster
        .put(&client, "/second", &bytes(6 * BLOCK, 2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoSpace, "{err}");
    assert_eq!(err.describe(), "No space left on device");
    assert_eq!(cluster.get(&client, "/first").await.unwrap(), first);
    // The failed file was never committed: it is empty, not half-written.
    assert_eq!(client.resolve("/second").await.unwrap().size, 0);
    // Deleting frees the space again (after the grace period for the failed upload).
    let root = client.resolve("/").await.unwrap().ino;
    client.unlink(root, b"first").await.unwrap();
    eventually("space freed", Duration::from_secs(20), || async {
        cluster
            .put(&client, "/second", &bytes(6 * BLOCK, 2))
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        cluster.get(&client, "/second").await.unwrap(),
        bytes(6 * BLOCK, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_operations() {
    let cluster = TestCluster::start(2, 1 << 30).await;
    let client = cluster.client().await;
    let root = client.resolve("/").await.unwrap().ino;
    let a = client.mkdir(root, b"a", 0o755, Maker::ROOT).await.unwrap();
    assert_eq!(
        client
            .mkdir(root, b"a", 0o755, Maker::ROOT)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::Exists
    );
    cluster.put(&client, "/a/f", b"hello").await.unwrap();
    // Without O_EXCL, create opens an existing file and refuses an existing directory.
    let f0 = client.resolve("/a/f").await.unwrap().ino;
    assert_eq!(
        client
            .create(a.ino, b"f", 0o644, Maker::ROOT, false)
            .await
            .unwrap()
            .ino,
        f0
    );
    assert_eq!(
        client
            .create(a.ino, b"f", 0o644, Maker::ROOT, true)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::Exists
    );
    assert_eq!(
        client
            .create(root, b"a", 0o644, Maker::ROOT, false)
            .await
            .unwrap_err()
            .code(),
        ErrorCode::IsDir
    );
    assert_eq!(
        client.rmdir(root, b"a").await.unwrap_err().code(),
        ErrorCode::NotEmpty
    );
    let f = client.resolve("/a/f").await.unwrap();
    client.link(f.ino, root, b"hard").await.unwrap();
    assert_eq!(client.getattr(f.ino).await.unwrap().nlink, 2);
    client.symlink(root, b"sym", b"a/f", 0, 0).await.unwrap();
    let sym = client.resolve("/sym").await.unwrap();
    assert_eq!(client.readlink(sym.ino).await.unwrap(), b"a/f");
    client.rename(a.ino, b"f", root, b"g", false).await.unwrap();
    assert_eq!(cluster.get(&client, "/g").await.unwrap(), b"hello");
    client.rmdir(root, b"a").await.unwrap();
    let set = vg_wire::SetAttr {
        perm: Some(0o600),
        uid: Some(7),
        size: Some(2),
        ..Default::default()
    };
    let attr = client.setattr(f.ino, set).await.unwrap();
    assert_eq!((attr.perm, attr.uid, attr.size), (0o600, 7, 2));
    assert_eq!(cluster.get(&client, "/hard").await.unwrap(), b"he");
    let names = crate::cluster::names(&client, root).await;
    assert_eq!(names, ["g", "hard", "sym"]);
    let statfs = client.statfs().await.unwrap();
    assert_eq!(statfs.capacity, (2u64 << 30) / 2);
    for bad in [&b""[..], b"..", b"x/y", b"nul\0", &[b'n'; 256]] {
        assert!(
            client.mkdir(root, bad, 0o755, Maker::ROOT).await.is_err(),
            "{bad:?}"
        );
    }
}
