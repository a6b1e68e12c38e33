//! Polling between requests: once a server has started or ended a request, its runtime
//! thread keeps looking at its sockets for a while instead of sleeping, yielding its CPU
//! to the kernel at each turn, at its own priority or, if asked, at the lowest
//! (`SCHED_IDLE`, back to its own as soon as a request starts).
//!
//! On a virtual machine a request that finds the thread asleep waits for its CPU to be
//! woken (the sender's inter-processor interrupt, the host scheduling the virtual CPU
//! again): tens of microseconds, as much as the nameserver's whole work on a metadata
//! change. Creates, renames and unlinks through the mount went 1.1 to 1.9 times as fast
//! (BENCHMARKS.md, stop 43). Polling at `SCHED_IDLE` was the default until stop 46: the
//! scheduler treats a CPU running only such a thread as idle, so each wake-up of the
//! mount's caller moved it onto the poller's CPU and the poller onto the one where the
//! mount's thread polled for its answer, whose yields never let an idle-class thread
//! run: after a pause, whole phases of creates ran at 200 to 340 µs each instead of 60
//! to 100. At its own priority the poller's CPU is busy to the scheduler, the caller
//! stays with the mount's thread, and a yield lets any thread waiting there run first.
//!
//! At `SCHED_IDLE` a thread gets almost no CPU while others want all of it: beside two
//! busy loops a create waited half a second once. A request that finds the thread was
//! kept off its CPU ([`STARVED`]) has polling rest a while; a watchdog thread looks
//! every [`WATCH`] while the poller polls, and gives a thread starved for longer
//! ([`LONG_STARVED`]) while a request waits in its socket its priority back. Starved
//! with nothing to do, it harms nobody: a storage's burst of work, or the mount's own
//! polling on the same CPU, had it rest through whole phases of `rm -rf`. A rest ends
//! early once the CPUs are calm again ([`Pressure`]): one begun in a busy phase (an
//! untar) covered the short metadata phases after it whole. Where the thread could not
//! take its priority back (no `CAP_SYS_NICE`: a container's root, a user), it never
//! lowers it. A thread not seen polling because a task of its own held it (the
//! nameserver's tick takes 1-2 ms each second) is not starved: its CPU time says it ran
//! ([`Poller::was_busy`]).
//!
//! Only on a current-thread runtime: a scheduling policy is a thread's, and only there
//! is the poller's thread the one that serves the requests.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;
use tracing::{debug, info};

/// A request that finds the thread not seen running for this long while it polled (one
/// poll takes microseconds) waited for other threads to leave it a CPU: the poller rests
/// [`REST`].
const STARVED: Duration = Duration::from_micros(500);
/// How long the poller rests after a request waited for it.
const REST: Duration = Duration::from_millis(100);
/// How often the watchdog looks while the poller polls.
const WATCH: Duration = Duration::from_millis(1);
/// A thread the watchdog finds not seen running for this long while it polls, with a
/// request waiting, is starved (CPUs kept busy by others): it gets its priority back
/// and rests [`LONG_REST`].
const LONG_STARVED: Duration = Duration::from_millis(1);
/// How long the poller rests once the watchdog found it starved.
const LONG_REST: Duration = Duration::from_secs(1);
/// How long after the last request the watchdog sleeps until the next wakes it.
const WATCH_IDLE: Duration = Duration::from_secs(1);
/// How often the watchdog measures the CPUs' pressure while the poller rests.
const CALM_SAMPLE: Duration = Duration::from_millis(20);
/// Below this share of a sample's time with a thread waiting for a CPU, the CPUs are
/// calm and a rest ends. Measured on two CPUs: 17% while creates ran with the poller
/// polling, 67% while they ran beside two busy loops, 38% over an untar.
const CALM: f64 = 0.25;

/// A server's poller: [`Poller::serving`] brackets each request, [`Poller::run`] polls.
pub struct Poller {
    /// How long after a request starts or ends the thread polls.
    window: Duration,
    epoch: Instant,
    /// When the last request started or ended, in nanoseconds since `epoch`.
    last: AtomicU64,
    /// Whether it polls at `SCHED_IDLE` rather than at its own priority.
    idle: bool,
    /// Whether the thread polls now (at `SCHED_IDLE`, if `idle`).
    polling: AtomicBool,
    /// When the thread was last seen running (a poll, a request's start or end), in
    /// nanoseconds since `epoch`.
    looked: AtomicU64,
    /// When the watchdog last read the thread's CPU time (nanoseconds since `epoch`),
    /// and that time, to tell a thread kept off its CPU from one busy with a long task.
    sampled_at: AtomicU64,
    sampled_cpu: AtomicU64,
    /// Until when it does not poll, in nanoseconds since `epoch`.
    resting: AtomicU64,
    /// The polling thread's id, for the watchdog.
    tid: AtomicI32,
    /// Rung when a request starts or ends.
    bell: Notify,
    /// Wakes the watchdog from a long sleep.
    watchdog: std::sync::OnceLock<std::thread::Thread>,
    /// The server's socket, if given: the watchdog raises a starved thread only while
    /// datagrams wait in it.
    socket: std::sync::OnceLock<std::net::UdpSocket>,
}

/// A request being served; its start and its end each open the polling window.
pub struct Serving<'a>(&'a Poller);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.touch();
    }
}

impl Poller {
    /// A poller that polls for `window` after each request starts and ends (never if
    /// zero), at `SCHED_IDLE` if `idle`, else at the thread's own priority.
    pub fn new(window: Duration, idle: bool) -> Arc<Self> {
        Arc::new(Poller {
            window,
            idle,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            looked: AtomicU64::new(0),
            sampled_at: AtomicU64::new(0),
            sampled_cpu: AtomicU64::new(0),
            resting: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            bell: Notify::new(),
            watchdog: Default::default(),
            socket: Default::default(),
        })
    }

    /// Has the watchdog raise a starved thread only while datagrams wait in `socket`
    /// (the one the server's requests arrive on): starved with nothing to do, it harms
    /// nobody.
    pub fn watch(&self, socket: std::net::UdpSocket) {
        let _ = self.socket.set(socket);
    }

    /// Whether a request may be waiting: datagrams are in the socket, or no socket is
    /// known.
    fn awaited(&self) -> bool {
        use std::os::fd::AsRawFd;
        let Some(socket) = self.socket.get() else {
            return true;
        };
        let mut fd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, no waiting.
        unsafe { libc::poll(&mut fd, 1, 0) > 0 }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Opens the window: the thread is running now.
    fn touch(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        self.looked.store(now, Ordering::Relaxed);
        self.bell.notify_one();
    }

    /// Notes that a request starts; its start and the end of the returned guard each
    /// open the polling window. The request runs at the thread's own priority (a poller
    /// at `SCHED_IDLE` takes it back first), and a poller found starved rests.
    pub fn serving(&self) -> Serving<'_> {
        let since = self
            .now()
            .saturating_sub(self.looked.load(Ordering::Relaxed));
        if self.raise() && since > nanos(STARVED) && !self.was_busy() {
            self.rest(REST);
        }
        self.touch();
        Serving(self)
    }

    /// Polls for the window after each request starts or ends, forever; returns at once
    /// where it would not poll (no window, a multi-thread runtime, a thread that could
    /// not take its priority back).
    pub async fn run(self: Arc<Self>) {
        if self.window.is_zero()
            || Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread
        {
            return;
        }
        if self.idle && !may_raise() {
            info!("not polling between requests: a thread here cannot take back its priority");
            return;
        }
        // SAFETY: gettid has no arguments and cannot fail.
        self.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
        let weak = Arc::downgrade(&self);
        let watchdog = std::thread::Builder::new()
            .name("poll-watchdog".into())
            .spawn(move || watch(weak));
        match watchdog {
            Ok(handle) => _ = self.watchdog.set(handle.thread().clone()),
            Err(_) => return,
        }
        let window = nanos(self.window);
        loop {
            self.bell.notified().await;
            if let Some(watchdog) = self.watchdog.get() {
                watchdog.unpark();
            }
            loop {
                let now = self.now();
                if now.saturating_sub(self.last.load(Ordering::Relaxed)) >= window
                    || now < self.resting.load(Ordering::Relaxed)
                {
                    break;
                }
                if !self.polling.swap(true, Ordering::AcqRel) && self.idle {
                    set_policy(0, libc::SCHED_IDLE);
                }
                self.looked.store(now, Ordering::Relaxed);
                // Any thread waiting for this CPU runs first. At its own priority the
                // poller would hold the CPU for its slice; at `SCHED_IDLE` too, once
                // picked at an instant nothing else there was eligible, since a woken
                // thread preempts an idle-class one only at its wake-up (a create took
                // as long as the window).
                std::thread::yield_now();
                // The runtime looks at its sockets, without waiting, before it polls
                // this task again.
                tokio::task::yield_now().await;
            }
            self.raise();
        }
    }

    /// Notes the thread's CPU time now, for [`Poller::was_busy`].
    fn sample(&self) {
        if let Some(cpu) = thread_cpu(self.tid.load(Ordering::Relaxed)) {
            self.sampled_cpu.store(cpu, Ordering::Relaxed);
            self.sampled_at.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Whether the thread ran for most of the time since the watchdog's last sample: it
    /// was not seen polling because a task of its own held it (the nameserver's tick
    /// takes 1-2 ms each second), not because other threads kept it off its CPU. Taken
    /// for starved, the tick stopped its polling for 20 ms to a second every second or
    /// two.
    fn was_busy(&self) -> bool {
        let at = self.sampled_at.load(Ordering::Relaxed);
        let cpu = self.sampled_cpu.load(Ordering::Relaxed);
        let Some(now_cpu) = thread_cpu(self.tid.load(Ordering::Relaxed)) else {
            return false;
        };
        at != 0 && busy(self.now().saturating_sub(at), now_cpu.saturating_sub(cpu))
    }

    /// The thread was kept off its CPU while polling: no polling for `rest`.
    fn rest(&self, rest: Duration) {
        debug!(?rest, "polling starved: resting");
        self.resting
            .store(self.now() + nanos(rest), Ordering::Relaxed);
        self.raise();
    }

    /// Ends the poll, giving the thread its own priority back if it polled at
    /// `SCHED_IDLE` (from any thread); true if it was polling.
    fn raise(&self) -> bool {
        let polling = self.polling.swap(false, Ordering::AcqRel);
        if polling && self.idle {
            set_policy(self.tid.load(Ordering::Relaxed), libc::SCHED_OTHER);
        }
        polling
    }
}

/// The watchdog: while the poller polls, looks every [`WATCH`] whether its thread still
/// runs, and gives it its priority back if not; while it rests, ends the rest once the
/// CPUs are calm. Sleeps once no request came for [`WATCH_IDLE`]; ends with the poller.
fn watch(poller: Weak<Poller>) {
    let mut pressure = Pressure::open();
    loop {
        let Some(p) = poller.upgrade() else {
            return;
        };
        let now = p.now();
        let polling = p.polling.load(Ordering::Acquire);
        if polling
            && now.saturating_sub(p.looked.load(Ordering::Relaxed)) > nanos(LONG_STARVED)
            && p.awaited()
            && !p.was_busy()
        {
            p.rest(LONG_REST);
        }
        if polling {
            p.sample();
        }
        let mut resting = p.resting.load(Ordering::Relaxed);
        // Not a rest begun meanwhile: that one is measured anew.
        if now < resting
            && pressure
                .as_mut()
                .is_some_and(|sampler| sampler.calm(resting))
            && p.resting
                .compare_exchange(resting, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            debug!("CPUs calm: polling again");
            resting = 0;
        }
        let idle = now.saturating_sub(p.last.load(Ordering::Relaxed)) > nanos(WATCH_IDLE);
        drop(p);
        if idle {
            std::thread::park_timeout(WATCH_IDLE);
        } else if now < resting && pressure.is_some() {
            std::thread::sleep(CALM_SAMPLE.min(Duration::from_nanos(resting - now)));
        } else {
            std::thread::sleep(WATCH);
        }
    }
}

/// The machine's CPU pressure (`/proc/pressure/cpu`: how long some runnable thread
/// waited for a CPU), sampled through a rest. The CPUs' idle time cannot tell: the
/// mount's polling keeps them busy without making anyone wait, while two busy loops
/// keep them as busy and make every woken thread wait.
struct Pressure {
    /// The rest (its end) the last sample was taken in, when, and the total it read.
    sample: Option<(u64, Instant, u64)>,
}

impl Pressure {
    /// A sampler, if this kernel reports CPU pressure.
    fn open() -> Option<Self> {
        read_pressure().map(|_| Pressure { sample: None })
    }

    /// Whether the CPUs were calm since the last sample in the rest ending at `rest`.
    fn calm(&mut self, rest: u64) -> bool {
        read_pressure().is_some_and(|total| self.calm_at(rest, Instant::now(), total))
    }

    /// Whether a thread waited for a CPU less than [`CALM`] of the time between the last
    /// sample and this one (`total` at `now`); the first sample of a rest only starts
    /// the measure, and one sooner than [`CALM_SAMPLE`] after it is not taken.
    fn calm_at(&mut self, rest: u64, now: Instant, total: u64) -> bool {
        match self.sample {
            Some((in_rest, at, before)) if in_rest == rest => {
                let elapsed = now.duration_since(at);
                if elapsed < CALM_SAMPLE {
                    return false;
                }
                self.sample = Some((rest, now, total));
                let waited = Duration::from_micros(total.saturating_sub(before));
                waited.as_secs_f64() < CALM * elapsed.as_secs_f64()
            }
            _ => {
                self.sample = Some((rest, now, total));
                false
            }
        }
    }
}

/// The total microseconds some thread waited for a CPU, from `/proc/pressure/cpu`.
fn read_pressure() -> Option<u64> {
    parse_pressure(&std::fs::read_to_string("/proc/pressure/cpu").ok()?)
}

/// The `total=` of a pressure file's `some` line.
fn parse_pressure(text: &str) -> Option<u64> {
    let some = text.lines().find(|line| line.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|field| field.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Whether a thread that ran `cpu` nanoseconds in `wall` was busy rather than kept off
/// its CPU: it ran at least half the time.
fn busy(wall: u64, cpu: u64) -> bool {
    wall > 0 && cpu.saturating_mul(2) >= wall
}

/// Nanoseconds thread `tid` of this process has run, if it still exists.
fn thread_cpu(tid: libc::pid_t) -> Option<u64> {
    if tid == 0 {
        return None;
    }
    // A thread's CPU clock, as `pthread_getcpuclockid` makes it from the thread's id
    // (the kernel's `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`).
    let clock: libc::clockid_t = (!tid << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec; a clock of a thread gone only fails the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// Whether a thread here may go back from `SCHED_IDLE` to `SCHED_OTHER` (it needs
/// `CAP_SYS_NICE` or a high enough `RLIMIT_NICE`): tried on a thread of its own.
fn may_raise() -> bool {
    std::thread::spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER))
        .join()
        .unwrap_or(false)
}

/// Sets thread `tid`'s scheduling policy (0: the calling thread), priority 0; whether it
/// was set.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param; a stale tid only fails the call.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: pid 0 names the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// Yields until the thread's policy is `want`.
    async fn until_policy(want: libc::c_int, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while policy() != want {
            assert!(Instant::now() < deadline, "{what}");
            tokio::task::yield_now().await;
        }
    }

    /// Blocks the thread (no poll runs) until its policy is `SCHED_OTHER`: only the
    /// watchdog can raise it then.
    fn until_raised_off_cpu(what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while policy() != libc::SCHED_OTHER {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(WATCH);
        }
    }

    /// Yields for `time`, checking that the thread stays at `SCHED_OTHER` (resting).
    async fn stays_raised(time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until {
            assert_eq!(policy(), libc::SCHED_OTHER, "polled while resting");
            tokio::task::yield_now().await;
        }
    }

    /// A running poller, its thread lowered after a request.
    async fn lowered(poller: &Arc<Poller>) {
        tokio::spawn(poller.clone().run());
        drop(poller.serving());
        until_policy(libc::SCHED_IDLE, "never lowered").await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_starts_at_the_threads_priority_and_polling_lowers_it() {
        let poller = Poller::new(Duration::from_secs(60), true);
        tokio::spawn(poller.clone().run());
        let serving = poller.serving();
        assert_eq!(policy(), libc::SCHED_OTHER);
        until_policy(libc::SCHED_IDLE, "never lowered while the request waits").await;
        drop(serving);
        let _serving = poller.serving();
        assert_eq!(policy(), libc::SCHED_OTHER, "a request starts lowered");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polls_at_the_threads_own_priority_unless_asked() {
        let poller = Poller::new(Duration::from_secs(60), false);
        tokio::spawn(poller.clone().run());
        drop(poller.serving());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !poller.polling.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "never polled");
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            assert_eq!(policy(), libc::SCHED_OTHER, "lowered while polling");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_starved_poller_rests() {
        let poller = Poller::new(Duration::from_secs(60), true);
        lowered(&poller).await;
        // Off the CPU for longer than a poll takes: the next request finds it starved.
        std::thread::sleep(Duration::from_millis(1));
        drop(poller.serving());
        stays_raised(REST / 2).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stops_polling_after_the_window() {
        let poller = Poller::new(Duration::from_millis(20), true);
        let run = tokio::spawn(poller.clone().run());
        drop(poller.serving());
        until_policy(libc::SCHED_IDLE, "never lowered").await;
        until_policy(libc::SCHED_OTHER, "still polling past its window").await;
        assert!(!run.is_finished());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_watchdog_raises_a_starved_poller() {
        let poller = Poller::new(Duration::from_secs(60), true);
        lowered(&poller).await;
        // Off the CPU without a request: only the watchdog can tell.
        until_raised_off_cpu("the watchdog never raised it");
        stays_raised(Duration::from_millis(200)).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_watchdog_leaves_a_starved_poller_alone_until_a_request_waits() {
        let poller = Poller::new(Duration::from_secs(60), true);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        poller.watch(socket);
        lowered(&poller).await;
        std::thread::sleep(LONG_STARVED * 20);
        assert_eq!(policy(), libc::SCHED_IDLE, "raised with nothing waiting");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"request", addr).unwrap();
        until_raised_off_cpu("the watchdog never raised it");
    }

    /// Holds the thread on its CPU for `time` without yielding.
    fn spin(time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_poller_busy_with_a_long_task_is_not_starved() {
        let poller = Poller::new(Duration::from_secs(60), false);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        poller.watch(socket);
        tokio::spawn(poller.clone().run());
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"request", addr).unwrap();
        // On a loaded machine other threads may really keep this one off its CPU during a
        // spin: one spin of several left alone is enough.
        for _ in 0..5 {
            drop(poller.serving());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !poller.polling.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "never polled");
                tokio::task::yield_now().await;
            }
            // Polling while the watchdog samples the thread, then a task that holds it
            // (the nameserver's tick) with a request waiting; then the request starts.
            let until = Instant::now() + WATCH * 3;
            while Instant::now() < until {
                tokio::task::yield_now().await;
            }
            spin(LONG_STARVED * 20);
            drop(poller.serving());
            if poller.resting.load(Ordering::Relaxed) == 0 {
                return;
            }
            poller.resting.store(0, Ordering::Relaxed);
        }
        panic!("a busy poller was taken for starved every time");
    }

    #[test]
    fn busy_means_running_half_the_time_at_least() {
        assert!(busy(1_000_000, 900_000));
        assert!(busy(1_000_000, 500_000));
        assert!(!busy(1_000_000, 400_000));
        assert!(!busy(0, 0));
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        let before = thread_cpu(tid).expect("this thread's CPU clock");
        spin(Duration::from_millis(5));
        assert!(thread_cpu(tid).unwrap() > before, "spinning takes CPU time");
        assert_eq!(thread_cpu(0), None);
    }

    #[test]
    fn pressure_is_the_some_lines_total() {
        let text = "some avg10=8.05 avg60=20.05 avg300=17.05 total=13575881479\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure(text), Some(13_575_881_479));
        assert_eq!(parse_pressure("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_pressure("some avg10=0.00 total=x\n"), None);
    }

    #[test]
    fn a_rest_ends_only_after_a_calm_sample_of_that_rest() {
        let mut pressure = Pressure { sample: None };
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let waited = |ms: u64| ms * 1000;
        assert!(
            !pressure.calm_at(7, at(0), waited(0)),
            "the first sample only starts"
        );
        assert!(!pressure.calm_at(7, at(5), waited(0)), "too soon to tell");
        assert!(
            pressure.calm_at(7, at(20), waited(4)),
            "4 ms of 20 waited: calm"
        );
        assert!(
            !pressure.calm_at(7, at(40), waited(4 + 6)),
            "6 ms of 20: busy"
        );
        assert!(
            !pressure.calm_at(8, at(60), waited(10)),
            "a new rest starts anew"
        );
        assert!(
            pressure.calm_at(8, at(100), waited(10 + 9)),
            "9 ms of 40: calm"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn does_not_poll_on_a_multi_thread_runtime() {
        let poller = Poller::new(Duration::from_secs(60), true);
        tokio::time::timeout(Duration::from_secs(10), poller.run())
            .await
            .expect("returns at once");
    }
}
