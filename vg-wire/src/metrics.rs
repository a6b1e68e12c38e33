//! Prometheus metrics: a registry each process fills with
//! the `prometheus-client` crate, served as text at `http://ADDR/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The metrics crate, for the servers' own gauges.
pub use prometheus_client;

/// An operation and how it ended.
type OpOutcome = [(&'static str, &'static str); 2];
/// An operation.
type Op = [(&'static str, &'static str); 1];

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

/// Requests a server answered, by operation and outcome, and how long each took.
#[derive(Clone)]
pub struct Requests {
    answered: Family<OpOutcome, Counter>,
    seconds: Family<Op, Histogram, fn() -> Histogram>,
}

impl Requests {
    /// Registers the request metrics.
    pub fn new(registry: &mut Registry) -> Self {
        let requests = Requests {
            answered: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "vg_requests",
            "Requests answered, by operation and outcome",
            requests.answered.clone(),
        );
        registry.register(
            "vg_request_seconds",
            "Time from a request's arrival to its answer, by operation",
            requests.seconds.clone(),
        );
        requests
    }

    /// Counts one answered request.
    pub fn record(&self, op: &'static str, outcome: &'static str, took: Duration) {
        self.answered
            .get_or_create(&[("op", op), ("outcome", outcome)])
            .inc();
        self.seconds
            .get_or_create(&[("op", op)])
            .observe(took.as_secs_f64());
    }
}

/// Serves `registry` as Prometheus text at `http://addr/metrics` until the process ends;
/// `refresh` runs before each scrape (to set gauges from the process's state).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    refresh: impl Fn() + Send + Sync + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let refresh = Arc::new(refresh);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let (registry, refresh) = (registry.clone(), refresh.clone());
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let response = if head[..n].starts_with(b"GET /metrics") {
                    refresh();
                    let mut body = String::new();
                    let encoded = prometheus_client::encoding::text::encode(
                        &mut body,
                        &registry.lock().expect("metrics lock"),
                    );
                    match encoded {
                        Ok(()) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        Err(_) => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                    }
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(())
}
