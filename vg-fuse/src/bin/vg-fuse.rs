//! `vg-fuse`: mounts a vg cluster. Runs in the foreground until unmounted or sent
//! SIGINT/SIGTERM (then commits everything written and unmounts, or detaches a mount still
//! in use); `--daemon` backgrounds it.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use fuser::MountOption;
use vg_fuse::args::ConnArgs;
use vg_fuse::client::files::{Files, Limits};
use vg_fuse::fuse::VgFs;
use vg_fuse::mount_helper;
use vg_wire::size::{parse_duration, parse_size};

/// Mount a vg cluster as a file system.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to mount.
    #[arg(default_value = "/mnt/vg")]
    mountpoint: PathBuf,
    #[command(flatten)]
    conn: ConnArgs,
    /// Run in the background once mounted.
    #[arg(long)]
    daemon: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given).
    #[arg(long, env = "VG_METRICS")]
    metrics: Option<std::net::SocketAddr>,
    /// Mount read-only (writes fail with EROFS).
    #[arg(long, env = "VG_READ_ONLY")]
    read_only: bool,
    /// How long the kernel may cache attributes and directory entries.
    #[arg(long, env = "VG_ATTR_TTL", default_value = "1s", value_parser = parse_duration)]
    attr_ttl: Duration,
    /// Block uploads in flight before writers wait (bounds dirty memory). 64 MiB
    /// writes sequentially as fast as 256 did, for up to 170 MiB less at the peak.
    #[arg(long, env = "VG_MAX_DIRTY", default_value = "64MiB", value_parser = parse_size)]
    max_dirty: u64,
    /// Partly written blocks a file keeps in memory before the oldest is uploaded as it
    /// is: a random writer over more blocks than this uploads a slice per write.
    #[arg(long, env = "VG_PARTIAL_BLOCKS", default_value_t = 32)]
    partial_blocks: u64,
    /// Size of the block cache.
    #[arg(long, env = "VG_CACHE_SIZE", default_value = "256MiB", value_parser = parse_size)]
    cache_size: u64,
    /// Blocks read ahead of a sequential reader (4: +7% sequential reads over 2, for 6
    /// MiB more at most in the mount; 8 and 16 read no faster).
    #[arg(long, env = "VG_READ_AHEAD", default_value_t = 4)]
    read_ahead: u64,
    /// Make close(2) wait until the file's changes are on disk, as fsync does (by
    /// default, close waits until they are written by the nameserver and the storages).
    #[arg(long, env = "VG_SYNC_ON_CLOSE")]
    sync_on_close: bool,
    /// Turn extended attributes off (ENOTSUP).
    #[arg(long, env = "VG_NO_XATTRS")]
    no_xattrs: bool,
    /// Serve FUSE requests through `/dev/fuse` only, even where the kernel offers
    /// io_uring queues (`enable_uring` of the fuse module).
    #[arg(long, env = "VG_NO_IO_URING")]
    no_io_uring: bool,
    /// How long a thread serving an io_uring queue polls for the answer to a request
    /// whose caller waits before it sleeps (0: never polls). Polling spends CPU that
    /// sleeping would not, to answer sooner: waking a sleeping thread on a virtual
    /// machine costs tens of microseconds.
    #[arg(long, env = "VG_POLL", default_value = "300us", value_parser = parse_duration)]
    poll: Duration,
    #[command(flatten)]
    log: vg_wire::cli::LogArgs,
}

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    let helper = argv
        .first()
        .is_some_and(|a| mount_helper::invoked_as_helper(a));
    if helper {
        argv = match mount_helper::translate(&argv[1..]) {
            Ok(Some(argv)) => argv,
            Ok(None) => return,
            Err(e) => {
                eprintln!("mount.vg: {e}");
                std::process::exit(1);
            }
        };
    }
    let args = Args::parse_from(&argv);
    let result = if args.daemon {
        daemonize(&args, &argv[1..], helper)
    } else {
        run(args)
    };
    if let Err(e) = result {
        eprintln!("vg-fuse: {e:#}");
        std::process::exit(1);
    }
}

/// Whether `path` is a mount point of a vg file system.
fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let (source, target) = (fields.next(), fields.next());
        source == Some("vg") && target == Some(path.to_str().unwrap_or_default())
    })
}

/// Starts this program again with `argv` but without `--daemon`, detached, and waits
/// until it has mounted; prints its PID, unless run by mount(8) (`helper`), whose
/// caller's terminal then gets no log lines either (only `logfile=` keeps them).
fn daemonize(args: &Args, argv: &[String], helper: bool) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("find own executable")?;
    let argv: Vec<&String> = argv.iter().filter(|a| *a != "--daemon").collect();
    let mut command = std::process::Command::new(exe);
    command
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if args.log.logfile.is_some() || helper {
        command.stderr(std::process::Stdio::null());
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("start the background process")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if is_mounted(&args.mountpoint) {
            if !helper {
                println!("{}", child.id());
            }
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the background process exited ({status}) before mounting; see its log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{}: not mounted after 60 s", args.mountpoint.display())
}

fn run(args: Args) -> anyhow::Result<()> {
    // Blocks are allocated and freed by the megabyte. glibc's defaults keep freed blocks
    // in per-thread arenas, which grew the peak RSS well past the cache limits; returning
    // every block to the system instead (a low mmap threshold) made each new block fault
    // in and zero its pages, 12% of the mount's CPU when reading. So: blocks come from one
    // arena shared by all threads, which keeps up to 64 MiB free for the next ones.
    // SAFETY: mallopt only changes allocator tuning; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
    args.log.init().context("open log file")?;
    // One worker per core but the FUSE thread's: each more worker only adds wake-ups
    // between them (a call's reply woke one worker, which woke another to steal work).
    // On 2 cores, one worker took 14% less of the mount's CPU per create, rename or
    // unlink than two, and per fsync'd 4 KiB write; sequential reads and writes level
    // (BENCHMARKS.md, stop 29). Four workers made metadata calls 10-30% slower than two.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.saturating_sub(1).max(1))
        .enable_all()
        .build()
        .context("start runtime")?;
    let client = rt.block_on(args.conn.connect_caching(args.attr_ttl))?;
    let limits = Limits {
        max_dirty: args.max_dirty,
        partial_blocks: args.partial_blocks,
        cache: args.cache_size,
        read_ahead: args.read_ahead,
        sync_on_close: args.sync_on_close,
        close_idle: vg_fuse::client::files::CLOSE_IDLE,
    };
    let files = {
        // Files starts its session's task on the runtime.
        let _runtime = rt.enter();
        Files::new(client, limits)
    };
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("create {}", args.mountpoint.display()))?;
    let mut options = vec![
        MountOption::FSName("vg".into()),
        MountOption::Subtype("vg".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        if args.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        options.push(MountOption::AllowOther);
    }
    // Resolved before mounting: resolving it after would wait for the mount to serve.
    let resolved = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("resolve {}", args.mountpoint.display()))?;
    let fs = VgFs::new(
        files.clone(),
        rt.handle().clone(),
        args.attr_ttl,
        !args.no_xattrs,
        !args.no_io_uring,
        args.poll,
    );
    let (notifier, device) = (fs.notifier_slot(), fs.device_slot());
    let mut session = fuser::Session::new(fs, &args.mountpoint, &options)
        .with_context(|| format!("mount {}", args.mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    let _ = device.set(
        session
            .as_fd()
            .try_clone_to_owned()
            .context("duplicate /dev/fuse")?,
    );
    vg_fuse::fuse::raise_read_ahead(resolved.clone());
    if let Some(addr) = args.metrics {
        rt.block_on(serve_metrics(&files, addr))
            .with_context(|| format!("serve metrics on {addr}"))?;
    }
    tracing::info!(mountpoint = %args.mountpoint.display(), "mounted");
    vg_wire::cli::ready();
    let signal_files: Arc<Files> = files.clone();
    rt.spawn(async move {
        vg_wire::cli::shutdown_signal().await;
        tracing::info!("signal received: committing open files and unmounting");
        if let Err(e) = signal_files.flush_all().await {
            tracing::error!(error = %e, "commit before unmount failed");
        }
        unmount(&resolved);
    });
    session.run().context("serve FUSE requests")?;
    // The kernel has ended the session, so the mount is gone (a signal's task or
    // `umount` took it away): dropping the session would try to unmount again and log a
    // spurious error.
    std::mem::forget(session);
    rt.block_on(files.flush_all())
        .context("commit open files")?;
    tracing::info!("unmounted");
    Ok(())
}

/// Unmounts `mountpoint` (resolved) after a signal. A mount still in use (a process
/// with a file open or its working directory there) is detached instead, as `umount -l`
/// does: new lookups no longer reach it, and the session ends, so the daemon exits, when
/// the last user lets go. fuser's own unmount would leave such a mount in place and log
/// nothing.
fn unmount(mountpoint: &Path) {
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives both calls.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return;
    }
    let refused = std::io::Error::last_os_error();
    let detached = if refused.raw_os_error() == Some(libc::EPERM) {
        // Not root: the setuid fusermount3 unmounts what this user mounted.
        std::process::Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(mountpoint)
            .status()
            .is_ok_and(|status| status.success())
    } else {
        tracing::warn!(mountpoint = %mountpoint.display(), error = %refused, "unmount refused: detaching the mount; exiting once nothing uses it");
        // SAFETY: as above.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0 }
    };
    if !detached {
        tracing::error!(mountpoint = %mountpoint.display(), error = %refused, "unmount failed");
    }
}

/// Serves Prometheus metrics at `addr`: bytes read and written, block cache hits and
/// misses, dirty bytes and open files, read at each scrape.
async fn serve_metrics(
    files: &Arc<Files>,
    addr: std::net::SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut registry = vg_wire::metrics::prometheus_client::registry::Registry::default();
    registry.register(
        "vg_mount_read_bytes",
        "Bytes read through the mount",
        files.bytes_read.clone(),
    );
    registry.register(
        "vg_mount_written_bytes",
        "Bytes written through the mount",
        files.bytes_written.clone(),
    );
    let gauges = vg_wire::metrics::Gauges::register(
        &mut registry,
        [
            (
                "vg_mount_cache_hits",
                "Block cache lookups that found their block",
            ),
            ("vg_mount_cache_misses", "Block cache lookups that did not"),
            (
                "vg_mount_dirty_bytes",
                "Bytes written and not yet committed",
            ),
            ("vg_mount_open_files", "Files open on this mount"),
        ],
    );
    let files = Arc::downgrade(files);
    let refresh = move || {
        if let Some(files) = files.upgrade() {
            let figures = files.figures();
            gauges.set([
                figures.cache_hits,
                figures.cache_misses,
                figures.dirty_bytes,
                figures.open_files,
            ]);
        }
    };
    vg_wire::metrics::serve(addr, Arc::new(std::sync::Mutex::new(registry)), refresh).await
}
