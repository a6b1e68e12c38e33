//! What one request and its answer cost on vg's transport (QUIC, mutual TLS, streams
//! kept from call to call), and how much depends on where the call starts:
//!
//!   cargo run --release -p vg-wire --example rpc_round_trip [CALLS]
//!
//! A server and a client in this process, on loopback, each with a runtime of its own
//! (the server's on its own thread, as a nameserver's is). Prints the time and the
//! process's CPU (client and server together) per call for calls made
//! - `on its runtime`: by a task on the client's runtime thread (one thread does it all),
//!   through `Dialer::call`, which keeps its stream for the next call;
//! - `from another thread`: started by another thread on a runtime with one worker per
//!   core, as the mount's FUSE thread starts its calls;
//! - `on one stream`: as the first, all requests written straight on one stream (the
//!   floor `Dialer::call` nears).

use std::time::{Duration, Instant};

use vg_wire::rpc::{self, Dialer, Target};
use vg_wire::tls::{Ca, Identity, Validity};
use vg_wire::{codec, Role};

/// CPU time this process has used (user and system; Linux counts it in 100ths of a
/// second).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn report(how: &str, calls: u32, took: Duration, cpu: Duration) {
    println!(
        "{how:>20}: {:>4} us per call, client and server CPU {:>4} us per call",
        took.as_micros() / u128::from(calls),
        cpu.as_micros() / u128::from(calls)
    );
}

fn main() {
    let calls: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = Ca::generate("round-trip CA").expect("CA");
    let identity = |name: &str, role| {
        let pem = ca
            .issue(name, role, &["127.0.0.1".into()], Validity::default())
            .expect("issue");
        let mut paths = vg_wire::tls::write_peer(dir.path(), name, &pem).expect("write");
        paths.ca_cert = dir.path().join("ca.crt");
        vg_wire::tls::write_file(&paths.ca_cert, &ca.pem().cert, 0o644).expect("write CA");
        Identity::load(&paths).expect("load")
    };
    let (server, client) = (
        identity("server", Role::Nameserver),
        identity("client", Role::Client),
    );

    // The server echoes each request frame, on a stream per request or all on one.
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (endpoint, addr) = server_rt
        .block_on(async { rpc::listen(&server, "127.0.0.1:0".parse().unwrap()) })
        .unwrap();
    std::thread::spawn(move || {
        server_rt.block_on(rpc::serve(
            endpoint,
            |_peer, mut send, mut recv| async move {
                while let Ok(frame) = codec::read_frame::<_, Vec<u8>>(&mut recv).await {
                    if codec::write_frame(&mut send, &Ok::<_, vg_wire::RemoteError>(frame))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                let _ = send.finish();
            },
        ))
    });
    let target = Target {
        name: "server".into(),
        role: Role::Nameserver,
        addr,
    };
    let request = vec![7u8; 100];
    let dial = || {
        let endpoint = rpc::endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        Dialer::new(
            endpoint,
            client.client_config().unwrap(),
            Duration::from_secs(10),
        )
    };

    let here = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dialer = here.block_on(async { dial() });
    here.block_on(async {
        let _: Vec<u8> = dialer.call(&target, &request).await.unwrap();
        let (start, cpu0) = (Instant::now(), cpu());
        for _ in 0..calls {
            let _: Vec<u8> = dialer.call(&target, &request).await.unwrap();
        }
        report("on its runtime", calls, start.elapsed(), cpu() - cpu0);
        let (mut send, mut recv) = dialer.open(&target).await.unwrap();
        let (start, cpu0) = (Instant::now(), cpu());
        for _ in 0..calls {
            codec::write_frame(&mut send, &request).await.unwrap();
            let _: Vec<u8> = rpc::read_answer(&mut recv).await.unwrap();
        }
        report("on one stream", calls, start.elapsed(), cpu() - cpu0);
    });

    let workers = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dialer = workers.block_on(async { dial() });
    let call = |dialer: Dialer| {
        let (target, request) = (target.clone(), request.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn(async move {
            let answer: vg_wire::Result<Vec<u8>> = dialer.call(&target, &request).await;
            let _ = tx.send(answer.map(|_| ()));
        });
        rx.recv().unwrap().unwrap();
    };
    call(dialer.clone());
    let (start, cpu0) = (Instant::now(), cpu());
    for _ in 0..calls {
        call(dialer.clone());
    }
    report("from another thread", calls, start.elapsed(), cpu() - cpu0);
}
