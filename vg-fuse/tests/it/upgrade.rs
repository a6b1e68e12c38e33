//! A cluster written by the release before slices starts under this code with every file
//! intact. The fixture `v3-cluster.tar.xz` was made by that release (protocol 3, commit
//! ed1031f) through its mount, with 512 KiB blocks and storages alice and bob: whole
//! blocks in block files and volumes, a `vgsnap01` snapshot, then log records of the old
//! whole-block commits; a file truncated and grown again, a sparse one, a hard link and
//! an overwrite in place. `v3-cluster.sha256` holds what `sha256sum` said of each file.

use std::time::Duration;

use vg_fuse::client::files::{Files, Limits};

use crate::cluster::{eventually, TestCluster};

const FIXTURE_BLOCK: usize = 512 << 10;

async fn check_sums(cluster: &TestCluster, changed: &str, want_changed: &[u8]) {
    let client = cluster.client().await;
    for line in include_str!("../fixtures/v3-cluster.sha256").lines() {
        let (sum, path) = line.split_once("  ").expect("sha256sum line");
        let path = path.trim_start_matches('.');
        let data = cluster.get(&client, path).await.unwrap();
        if path == changed {
            assert!(
                data == want_changed,
                "{path}: the write after the upgrade is not read back"
            );
        } else {
            assert_eq!(
                vg_wire::BlockId::sha256(&data).to_hex(),
                sum,
                "{path} differs after the upgrade"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_the_whole_block_format_reads_back_intact() {
    let mut cluster =
        TestCluster::from_fixture("v3-cluster.tar.xz", &["alice", "bob"], FIXTURE_BLOCK).await;
    let client = cluster.client().await;
    // A converted file takes a small write in the middle like any other: a slice on top of
    // its old whole block.
    let path = "/seq.txt";
    let mut want = cluster.get(&client, path).await.unwrap();
    let ino = client.resolve(path).await.unwrap().ino;
    let limits = Limits {
        max_dirty: 8 << 20,
        partial_blocks: 4,
        cache: 8 << 20,
        read_ahead: 1,
        sync_on_close: false,
        close_idle: vg_fuse::client::files::CLOSE_IDLE,
    };
    let files = Files::new(client.clone(), limits);
    files.open(ino).await.unwrap();
    files.write(ino, 1000, b"UPGRADED").await.unwrap();
    files.flush(ino).await.unwrap();
    files.release(ino).await;
    want[1000..1008].copy_from_slice(b"UPGRADED");
    check_sums(&cluster, path, &want).await;
    // The next start reads the log written on top of the old snapshot (and snapshots in
    // the new format); garbage collection keeps every referenced blob.
    cluster.kill_nameserver();
    cluster.start_nameserver_in_process().await;
    cluster.wait_active(&["alice".into(), "bob".into()]).await;
    eventually("fsck clean", Duration::from_secs(20), || async {
        let blocks = cluster.client().await.list_blocks().await.unwrap();
        blocks.iter().all(|b| b.locations.len() == 2)
    })
    .await;
    check_sums(&cluster, path, &want).await;
}
