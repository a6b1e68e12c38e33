//! Helpers shared by the vg binaries: log setup and shutdown signals.

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber: to `logfile` if given, else stderr, at `level`
/// (`error`, `warn`, `info`, `debug`, `trace`, or a full `RUST_LOG`-style filter).
pub fn init_logging(logfile: Option<&Path>, level: &str) -> std::io::Result<()> {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        // Colours only for people at a terminal, not for `docker-compose logs` or files.
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
