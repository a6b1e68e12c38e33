//! The real `vgctl` binary against a test cluster: commands, output and errors.

use std::path::Path;
use std::process::{Command, Output};

use crate::cluster::{bytes, TestCluster, BLOCK};

/// Runs vgctl in the cluster directory, where its default `certs/` paths resolve.
fn vgctl(cluster: &TestCluster, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vgctl"))
        .current_dir(cluster.dir.path())
        .env("VG_NS_PORT", cluster.ns_addr.port().to_string())
        .args(args)
        .output()
        .expect("run vgctl")
}

fn ok(cluster: &TestCluster, args: &[&str]) -> String {
    let out = vgctl(cluster, args);
    assert!(
        out.status.success(),
        "vgctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(cluster: &TestCluster, args: &[&str]) -> String {
    let out = vgctl(cluster, args);
    assert!(!out.status.success(), "vgctl {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_the_original_client() {
    let cluster = TestCluster::start(3, 1 << 30).await;
    let dir = cluster.dir.path();
    let local = dir.join("big.bin");
    let data = bytes(3 * BLOCK + 17, 9);
    std::fs::write(&local, &data).unwrap();

    let du = ok(&cluster, &["du"]);
    assert!(
        du.contains("NAME")
            && du.contains("s0")
            && du.contains("s2")
            && du.matches("active").count() == 3,
        "{du}"
    );
    ok(&cluster, &["mkdir", "/docs"]);
    ok(&cluster, &["mkdir", "-p", "/deep/er/path"]);
    ok(&cluster, &["put", local.to_str().unwrap(), "/docs"]);
    let ls = ok(&cluster, &["ls", "/docs"]);
    assert!(
        ls.starts_with("f big.bin")
            && ls.contains(&(3 * BLOCK + 17).to_string())
            && ls.contains("s"),
        "{ls}"
    );
    let stat = ok(&cluster, &["stat", "/docs/big.bin"]);
    assert!(
        stat.contains("blocks: 4") && stat.contains("replicas=2"),
        "{stat}"
    );

    let back = dir.join("back.bin");
    ok(&cluster, &["get", "/docs/big.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data);

    ok(&cluster, &["mv", "/docs/big.bin", "/deep"]);
    assert!(ok(&cluster, &["ls", "/deep"]).contains("big.bin"));
    let err = fails(&cluster, &["get", "/docs/big.bin", back.to_str().unwrap()]);
    assert_eq!(
        err.trim(),
        "vgctl: /docs/big.bin: No such file or directory"
    );
    let err = fails(&cluster, &["rmdir", "/deep"]);
    assert_eq!(err.trim(), "vgctl: /deep: Directory not empty");
    let err = fails(&cluster, &["rm", "/deep"]);
    assert!(err.contains("/deep: Is a directory"), "{err}");
    ok(&cluster, &["rmdir", "-r", "/deep"]);
    ok(&cluster, &["rm", "-r", "/docs"]);
    assert_eq!(ok(&cluster, &["ls", "/"]), "");
    let status = ok(&cluster, &["status"]);
    assert!(status.contains("under-replicated:  0"), "{status}");
    // The request table counts what this test did; put synced, so the log did.
    let answered = |op: &str| {
        status.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(op)).then(|| words.next()?.parse::<u64>().ok())?
        })
    };
    assert!(answered("create").is_some_and(|n| n >= 1), "{status}");
    assert!(answered("rmdir").is_some_and(|n| n >= 1), "{status}");
    let syncs = status
        .lines()
        .find_map(|line| line.strip_prefix("log:"))
        .and_then(|log| {
            log.split("; ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        });
    assert!(syncs.is_some_and(|n| n >= 1), "{status}");
    let fsck = ok(&cluster, &["fsck"]);
    assert!(fsck.contains("0 problems"), "{fsck}");
    let usage = ok(&cluster, &["usage"]);
    assert!(
        usage.contains("capacity:") && usage.contains("3.0 GiB"),
        "{usage}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_shell_keeps_a_current_directory() {
    let cluster = TestCluster::start(2, 1 << 30).await;
    let local = cluster.dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("hello.txt"), b"hello from the shell").unwrap();
    let script = "mkdir /home\ncd /home\npwd\nput hello.txt\nls\nlocal\ncd /nope\nget hello.txt copy.txt\nexit\n";
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgctl"))
        .current_dir(cluster.dir.path())
        .env("VG_NS_PORT", cluster.ns_addr.port().to_string())
        .args(["--local", local.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("/home\n"), "{stdout}");
    assert!(stdout.contains("f hello.txt"), "{stdout}");
    assert!(stdout.contains("hello.txt"), "local listing: {stdout}");
    assert!(
        stderr.contains("/nope: No such file or directory"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(Path::new(&local).join("copy.txt")).unwrap(),
        b"hello from the shell"
    );
}
