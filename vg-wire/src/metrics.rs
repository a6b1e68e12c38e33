//! Prometheus metrics: a registry each process fills with
//! the `prometheus-client` crate, served as text at `http://ADDR/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::ns::OpTotals;

/// The metrics crate, for the servers' own gauges.
pub use prometheus_client;

/// An operation and how it ended.
type OpOutcome = [(&'static str, &'static str); 2];
/// An operation.
type Op = [(&'static str, &'static str); 1];
/// One label naming what a labelled gauge is about (a storage, say).
type About = [(&'static str, String); 1];

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

/// Requests a server answered, by operation and outcome, and how long each took; kept
/// always (for `vgctl status`) and registered for Prometheus when metrics are served.
#[derive(Clone)]
pub struct Requests {
    answered: Family<OpOutcome, Counter>,
    seconds: Family<Op, Histogram, fn() -> Histogram>,
    totals: Arc<Mutex<BTreeMap<&'static str, OpTotals>>>,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            answered: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
            totals: Arc::default(),
        }
    }
}

impl Requests {
    /// Registers the request metrics with `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vg_requests",
            "Requests answered, by operation and outcome",
            self.answered.clone(),
        );
        registry.register(
            "vg_request_seconds",
            "Time from a request's arrival to its answer, by operation",
            self.seconds.clone(),
        );
    }

    /// Counts one answered request; `outcome` is `"ok"` or the refusal's code name.
    pub fn record(&self, op: &'static str, outcome: &'static str, took: Duration) {
        self.answered
            .get_or_create(&[("op", op), ("outcome", outcome)])
            .inc();
        self.seconds
            .get_or_create(&[("op", op)])
            .observe(took.as_secs_f64());
        let mut totals = self.totals.lock().expect("metrics lock");
        let totals = totals.entry(op).or_insert_with(|| OpTotals {
            op: op.into(),
            ..OpTotals::default()
        });
        totals.answered += 1;
        totals.errors += u64::from(outcome != "ok");
        totals.seconds += took.as_secs_f64();
    }

    /// The totals so far, by operation name.
    pub fn totals(&self) -> Vec<OpTotals> {
        self.totals
            .lock()
            .expect("metrics lock")
            .values()
            .cloned()
            .collect()
    }
}

/// Gauges set from a process's state at each scrape.
pub struct Gauges<const N: usize>([Gauge; N]);

impl<const N: usize> Gauges<N> {
    /// Registers one gauge per (name, help).
    pub fn register(registry: &mut Registry, named: [(&'static str, &'static str); N]) -> Self {
        Gauges(named.map(|(name, help)| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        }))
    }

    /// Sets the gauges, in the order they were registered.
    pub fn set(&self, values: [u64; N]) {
        for (gauge, value) in self.0.iter().zip(values) {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
}

/// Gauges with one series per thing (a storage, say), labelled `label="name"`.
pub struct LabelledGauges<const N: usize> {
    label: &'static str,
    families: [Family<About, Gauge>; N],
}

impl<const N: usize> LabelledGauges<N> {
    /// Registers one family per (name, help), whose series carry `label`.
    pub fn register(
        registry: &mut Registry,
        label: &'static str,
        named: [(&'static str, &'static str); N],
    ) -> Self {
        let families = named.map(|(name, help)| {
            let family = Family::<About, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        });
        LabelledGauges { label, families }
    }

    /// Replaces every series with `rows`: a name and its values in registration order.
    pub fn set(&self, rows: impl IntoIterator<Item = (String, [u64; N])>) {
        for family in &self.families {
            family.clear();
        }
        for (name, values) in rows {
            let labels = [(self.label, name)];
            for (family, value) in self.families.iter().zip(values) {
                family
                    .get_or_create(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }
}

/// How long something repeated took: a histogram for Prometheus, and a count and a total
/// a process can report itself.
#[derive(Clone)]
pub struct Latency {
    histogram: Histogram,
    count: Arc<AtomicU64>,
    nanos: Arc<AtomicU64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: latency_histogram(),
            count: Arc::default(),
            nanos: Arc::default(),
        }
    }
}

impl Latency {
    /// Registers the histogram as `name` with `registry`.
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.histogram.clone());
    }

    /// Counts one occurrence that took `took`.
    pub fn observe(&self, took: Duration) {
        self.histogram.observe(took.as_secs_f64());
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many occurrences, and their total time.
    pub fn totals(&self) -> (u64, Duration) {
        (
            self.count.load(Ordering::Relaxed),
            Duration::from_nanos(self.nanos.load(Ordering::Relaxed)),
        )
    }
}

/// Serves `registry` as Prometheus text at `http://addr/metrics` until the returned task
/// is aborted (or the process ends); `refresh` runs before each scrape (to set gauges
/// from the process's state).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    refresh: impl Fn() + Send + Sync + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let refresh = Arc::new(refresh);
    Ok(tokio::spawn(async move {
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
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn labelled_gauges_keep_only_the_last_rows() {
        let mut registry = Registry::default();
        let gauges = LabelledGauges::register(&mut registry, "storage", [("vg_up", "Up")]);
        gauges.set([("alice".to_string(), [1]), ("bob".to_string(), [0])]);
        gauges.set([("alice".to_string(), [1])]);
        let text = encode(&registry);
        assert!(text.contains("vg_up{storage=\"alice\"} 1\n"), "{text}");
        assert!(!text.contains("bob"), "{text}");
    }

    #[test]
    fn requests_and_latency_keep_totals_for_people() {
        let mut registry = Registry::default();
        let requests = Requests::default();
        requests.register(&mut registry);
        requests.record("create", "ok", Duration::from_millis(2));
        requests.record("create", "exists", Duration::from_millis(4));
        let totals = requests.totals();
        assert_eq!((totals[0].answered, totals[0].errors), (2, 1));
        assert!((totals[0].seconds - 0.006).abs() < 1e-9);
        let text = encode(&registry);
        assert!(
            text.contains("vg_requests_total{op=\"create\",outcome=\"exists\"} 1\n"),
            "{text}"
        );

        let syncs = Latency::default();
        syncs.register(&mut registry, "vg_sync_seconds", "Syncs");
        syncs.observe(Duration::from_micros(300));
        assert_eq!(syncs.totals(), (1, Duration::from_micros(300)));
        assert!(encode(&registry).contains("vg_sync_seconds_count 1\n"));
    }
}
