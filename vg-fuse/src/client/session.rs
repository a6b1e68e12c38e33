//! The mount's session with the nameserver: which files it holds open, so that a file
//! unlinked (or renamed over) while open here stays readable and writable until its last
//! close, as POSIX has it.
//!
//! Opens cost no round trip: the set of open files is reported in the background a
//! moment after it changes (a file opened and closed within that moment is never
//! reported), and renewed within the nameserver's lease while it is not empty. Only an
//! unlink or a rename over a file this mount opened since the last report waits for one,
//! so that the nameserver knows to keep the file when its last name goes.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};
use vg_wire::Ino;

use super::files::Files;
use super::Result;

/// How long a change of the open set waits before it is reported: opens and closes of
/// this moment go in one report, and a short open not at all.
const BATCH: Duration = Duration::from_millis(100);
/// The wait before reporting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// What the nameserver was last told.
struct Reported {
    /// Sorted.
    open: Vec<Ino>,
    at: Instant,
    renew_every: Duration,
}

/// A mount's session: its id, and what it last reported.
pub struct Session {
    id: u64,
    /// Held while a report is sent, so that reports leave in order.
    reported: Mutex<Reported>,
    changed: Notify,
    /// When the session lapses unless renewed, and the lease; `None` until a report was
    /// answered (see [`Session::before_lock`]).
    lapse: std::sync::Mutex<Option<(Instant, Duration)>>,
}

/// A number no other process is likely to pick: the process id and the time, hashed
/// with a random key.
pub fn random_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

impl Session {
    /// A session with a random id, nothing reported yet.
    pub fn new() -> Self {
        Session {
            id: random_id(),
            reported: Mutex::new(Reported {
                open: Vec::new(),
                at: Instant::now(),
                renew_every: Duration::from_secs(10),
            }),
            changed: Notify::new(),
            lapse: std::sync::Mutex::new(None),
        }
    }

    /// The session's id, which its locks are held under.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Notes that the set of open files changed: reported a moment later.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Before a name goes (unlink, rename over it): reports the open files now if the
    /// file it names (`target`, when known) may be one opened since the last report.
    pub async fn before_unlink(&self, files: &Files, target: Option<Ino>) -> Result<()> {
        let open = files.open_inodes();
        if target.is_some_and(|t| open.binary_search(&t).is_err()) {
            return Ok(());
        }
        let mut reported = self.reported.lock().await;
        if open
            .iter()
            .all(|ino| reported.open.binary_search(ino).is_ok())
        {
            return Ok(());
        }
        self.send(files, &mut reported, open).await
    }

    /// Reports that nothing is open any more, if something was.
    pub async fn end(&self, files: &Files) -> Result<()> {
        let mut reported = self.reported.lock().await;
        match reported.open.is_empty() {
            true => Ok(()),
            false => self.send(files, &mut reported, Vec::new()).await,
        }
    }

    /// Whether the session went a whole lease without a renewal: the nameserver may
    /// have let its locks go.
    pub fn lapsed(&self) -> bool {
        self.lapse
            .lock()
            .expect("lapse lock")
            .is_some_and(|(at, _)| Instant::now() > at)
    }

    /// The nameserver renewed the session (it answered a lock request, which does) at
    /// some time after `asked`, when the request was sent: the lease runs from then, as a
    /// report's does (see [`Session::send`]).
    pub fn renewed(&self, asked: Instant) {
        if let Some((at, lease)) = self.lapse.lock().expect("lapse lock").as_mut() {
            *at = (*at).max(asked + *lease);
        }
    }

    /// Before a lock is asked for: reports now if no report was answered yet. A mount
    /// that does not know its lease cannot tell that it lapsed: one stopped within its
    /// first report's moment ([`BATCH`]) would let its process write under a lock the
    /// nameserver had meanwhile given to another mount.
    pub async fn before_lock(&self, files: &Files) -> Result<()> {
        let known = || self.lapse.lock().expect("lapse lock").is_some();
        if known() {
            return Ok(());
        }
        let mut reported = self.reported.lock().await;
        if known() {
            return Ok(());
        }
        self.send(files, &mut reported, files.open_inodes()).await
    }

    /// Sends a report: the open files, and the locks (taken back after a nameserver
    /// restart; lost, and the files told so, if the session had lapsed).
    async fn send(&self, files: &Files, reported: &mut Reported, open: Vec<Ino>) -> Result<()> {
        let client = files.client();
        let locks = files.locks_held();
        // The lease runs from the report's sending, not from its answer's arrival: an
        // answer that waited (the mount was stopped, the network slow) must not stretch
        // it past the nameserver's, which may have let the locks go meanwhile.
        let sent = Instant::now();
        let (lease, lost) = client.report_session(self.id, open.clone(), locks).await?;
        if lost {
            files.lose_locks();
        }
        reported.open = open;
        reported.at = sent;
        reported.renew_every = (lease / 3).max(BATCH);
        *self.lapse.lock().expect("lapse lock") = Some((reported.at + lease, lease));
        Ok(())
    }

    /// Reports changes and renews the lease until the mount's files are dropped.
    pub async fn run(self: Arc<Self>, files: Weak<Files>) {
        let mut wait = None;
        loop {
            let renew = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.changed.notified() => tokio::time::sleep(BATCH).await,
                _ = renew => {}
            }
            let Some(files) = files.upgrade() else {
                return;
            };
            let open = files.open_inodes();
            let mut reported = self.reported.lock().await;
            let due = !open.is_empty() && reported.at.elapsed() >= reported.renew_every;
            if open != reported.open || due {
                if let Err(e) = self.send(&files, &mut reported, open).await {
                    tracing::warn!(error = %e, "open files not reported to the nameserver; trying again");
                    wait = Some(RETRY);
                    continue;
                }
            }
            wait = (!reported.open.is_empty())
                .then(|| reported.renew_every.saturating_sub(reported.at.elapsed()));
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}
