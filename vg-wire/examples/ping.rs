use std::time::Instant;
use vg_wire::tls::{write_peer, Ca, Identity, Validity};
use vg_wire::types::Role;

fn rt(multi: bool) -> tokio::runtime::Runtime {
    if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }
}

fn main() {
    let multi_client = std::env::args().nth(1).as_deref() == Some("multi");
    let dir = std::env::temp_dir().join("ping-exp");
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::generate("ca").unwrap();
    vg_wire::tls::write_file(&dir.join("rootCA.crt"), &ca.pem().cert, 0o644).unwrap();
    let a = write_peer(
        &dir,
        "a",
        &ca.issue(
            "a",
            Role::Storage,
            &["127.0.0.1".into()],
            Validity::default(),
        )
        .unwrap(),
    )
    .unwrap();
    let b = write_peer(
        &dir,
        "b",
        &ca.issue(
            "b",
            Role::Client,
            &["127.0.0.1".into()],
            Validity::default(),
        )
        .unwrap(),
    )
    .unwrap();
    let ia = Identity::load(&a).unwrap();
    let ib = Identity::load(&b).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt(false).block_on(async move {
            let (server, addr) = vg_wire::rpc::listen(&ia, "127.0.0.1:0".parse().unwrap()).unwrap();
            tx.send(addr).unwrap();
            let conn = server.accept().await.unwrap().await.unwrap();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let req = recv.read_to_end(1024).await.unwrap();
                    send.write_all(&req).await.unwrap();
                    let _ = send.finish();
                });
            }
        });
    });
    let addr = rx.recv().unwrap();
    rt(multi_client).block_on(async move {
        let client = vg_wire::rpc::endpoint(
            "127.0.0.1:0".parse().unwrap(),
            None,
            ib.client_config().unwrap(),
        )
        .unwrap();
        let conn = client.connect(addr, "a").unwrap().await.unwrap();
        for round in 0..2 {
            let n = 5000;
            let t = Instant::now();
            for _ in 0..n {
                let (mut s, mut r) = conn.open_bi().await.unwrap();
                s.write_all(&[7u8; 64]).await.unwrap();
                s.finish().unwrap();
                r.read_to_end(1024).await.unwrap();
            }
            let s = conn.stats();
            println!(
                "round {round}: {:.1} us/rpc; tx dgrams {} rx dgrams {}",
                t.elapsed().as_secs_f64() * 1e6 / n as f64,
                s.udp_tx.datagrams,
                s.udp_rx.datagrams
            );
        }
    });
}
