//! Nameserver memory per file: builds the state the nameserver keeps for 1M files (the
//! namespace, each file with one block, the block reference counts and the registry's
//! two locations per block) and reports resident bytes per file.
//!
//!     cargo bench -p vg-nameserver --bench memory_per_file [-- FILES]

use std::time::{Duration, Instant};

use vg_nameserver::namespace::{Namespace, Op};
use vg_nameserver::registry::{Policy, Registry};
use vg_wire::{BlockId, Slice, Timestamp, ROOT_INO};

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

fn main() {
    let files: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let per_dir = 1000;
    let before = rss_bytes();
    let started = Instant::now();
    let time = Timestamp::now();
    let mut ns = Namespace::new(time);
    let mut registry = Registry::new(Policy {
        replication: 2,
        heartbeat_timeout: Duration::from_secs(10),
        gc_grace: Duration::from_secs(300),
        replication_timeout: Duration::from_secs(60),
        scan_per_tick: vg_nameserver::registry::SCAN_PER_TICK,
    });
    let now = Instant::now();
    for (i, name) in ["alice", "bob"].iter().enumerate() {
        registry.register(
            name,
            ([127, 0, 0, 1], 9000 + i as u16).into(),
            1 << 50,
            0,
            now,
        );
    }
    let mut refs = vg_nameserver::namespace::Refs::new();
    let mut blocks = Vec::new();
    let mut dir = ROOT_INO;
    for i in 0..files {
        if i % per_dir == 0 {
            dir = ns.next_ino();
            let op = Op::Mkdir {
                parent: ROOT_INO,
                name: format!("dir{}", i / per_dir).into_bytes(),
                ino: dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                time,
            };
            assert!(ns.apply(&op).is_ok());
        }
        let ino = ns.next_ino();
        let create = Op::Create {
            parent: dir,
            name: format!("file{i}.txt").into_bytes(),
            ino,
            perm: 0o644,
            uid: 0,
            gid: 0,
            time,
        };
        assert!(ns.apply(&create).is_ok());
        let id = BlockId::of(&i.to_le_bytes());
        let whole = Slice {
            at: 0,
            len: 10_000,
            blob: id,
            blob_off: 0,
        };
        let commit = Op::Write {
            ino,
            size: 10_000,
            slices: vec![(0, vec![whole])],
            block_size: 4 << 20,
            time,
        };
        assert!(ns.apply(&commit).is_ok());
        refs.insert(id, 1);
        blocks.push((id, 10_000));
    }
    for name in ["alice", "bob"] {
        for chunk in blocks.chunks(10_000) {
            registry
                .report(name, chunk, &refs, now)
                .expect("registered");
        }
    }
    drop(blocks);
    let used = rss_bytes().saturating_sub(before);
    println!(
        "{files} files (one block each, 2 replicas): {:.0} MiB resident, {:.0} bytes per file, built in {:.1} s",
        used as f64 / (1 << 20) as f64,
        used as f64 / files as f64,
        started.elapsed().as_secs_f64()
    );
    // Everything stays alive until measured.
    std::hint::black_box((ns, refs, registry));
}
