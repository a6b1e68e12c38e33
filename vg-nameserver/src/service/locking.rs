//! Mount sessions and locks: the open files and locks each mount reports, and byte-range
//! locks taken, waited for and given back.

use std::time::{Duration, Instant};

use tracing::{info, warn};
use vg_wire::error::ErrorCode;
use vg_wire::ns::{Lock, LockKind, Response};
use vg_wire::Ino;

use super::{Answer, Service, State};
use crate::error::refuse;
use crate::locks::Owner;
use crate::sessions;

/// Longest a lock request waits before it answers `WouldBlock` and the client asks
/// again: well within the client's request timeout.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes an owner off the wait-for graph however its lock request ends (granted,
/// refused, or dropped because the client went away).
struct Waiting<'a> {
    service: &'a Service,
    who: Owner,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.service.lock().locks.stop_waiting(self.who);
    }
}

impl Service {
    /// A mount's report of its open files (and, after a restart, its locks); answers
    /// with its lease.
    pub(super) fn session(&self, id: u64, open: Vec<Ino>, locks: Vec<(Ino, Lock)>) -> Answer {
        if open.len() + locks.len() > sessions::MAX_OPEN {
            return refuse(
                ErrorCode::TooBig,
                format!(
                    "session {id:x}: {} open files reported, at most {}",
                    open.len(),
                    sessions::MAX_OPEN
                ),
            );
        }
        let now = Instant::now();
        let mut state = self.lock();
        // A session's first report after a start brings the locks it held
        // before (within the first lease, it gets them back); one this
        // nameserver no longer knows after that lapsed (they are lost). Later
        // reports are not the locks' record: one may leave before a lock is
        // granted and arrive after.
        let settling = state.sessions.settling(now).is_some();
        if settling && !state.sessions.has_reported(id) && !locks.is_empty() {
            self.reclaim(&mut state, id, &locks);
        }
        let lost = !settling && !state.sessions.knows(id) && !locks.is_empty();
        if lost {
            warn!(session = %format!("{id:x}"), locks = locks.len(), "a lapsed session reported locks; they are lost");
        }
        state.sessions.report(id, &open, now);
        if open.is_empty() && !state.locks.held_by(id) {
            state.sessions.end(id);
        }
        self.unpin_unheld(&mut state);
        let ms = state.sessions.lease().as_millis() as u64;
        Ok(Response::Lease { ms, lost })
    }

    /// The lock of another owner (on any mount) that `lock` conflicts with.
    pub(super) fn test_lock(&self, session: u64, ino: Ino, lock: Lock) -> Answer {
        let state = self.lock();
        state.ns.get(ino)?;
        let who = Owner {
            session,
            owner: lock.owner,
        };
        Ok(Response::Lock(state.locks.conflict(ino, who, &lock)))
    }

    /// Takes back the locks a session held before this nameserver started.
    fn reclaim(&self, state: &mut State, session: u64, locks: &[(Ino, Lock)]) {
        for (ino, lock) in locks {
            let who = Owner {
                session,
                owner: lock.owner,
            };
            if state.locks.try_set(*ino, who, lock).is_err() {
                warn!(
                    ino,
                    "a reclaimed lock conflicts with one reclaimed before; not taken"
                );
            }
        }
        info!(session = %format!("{session:x}"), locks = locks.len(), "locks reclaimed");
    }

    /// Takes, changes or drops a byte-range lock; with `wait`, waits (up to
    /// [`LOCK_WAIT`]) while another owner holds a conflicting one, woken when a lock
    /// changes, and refuses a wait that would close a cycle of waits (a deadlock).
    pub(super) async fn lock_file(&self, session: u64, ino: Ino, lock: Lock, wait: bool) -> Answer {
        if lock.start > lock.end {
            return refuse(
                ErrorCode::Invalid,
                format!(
                    "inode {ino}: lock range {}..={} is empty",
                    lock.start, lock.end
                ),
            );
        }
        let who = Owner {
            session,
            owner: lock.owner,
        };
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let _waiting = Waiting { service: self, who };
        let mut waited = false;
        loop {
            // Listening before looking, so that a change between the two is not missed.
            let changed = self.locks_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let settling = {
                let mut state = self.lock();
                let state = &mut *state;
                let attr = state.ns.get(ino)?.attr.clone();
                let now = Instant::now();
                state.sessions.touch(session, now);
                // A request without wait from the same owner (the mount's, after its
                // caller was interrupted) ends this wait, so that the wait cannot be
                // granted after that request's answer told the mount what it holds.
                if !wait {
                    state.locks.stop_waiting(who);
                } else if waited && !state.locks.is_waiting(who) {
                    return refuse(ErrorCode::WouldBlock, "the wait was given up");
                }
                // After a start, the locks of before are reclaimed first: none is
                // granted anew until the mounts had a lease to report theirs.
                let settling = state
                    .sessions
                    .settling(now)
                    .filter(|_| lock.kind != LockKind::Unlock);
                let taken = match settling {
                    Some(left) if !wait => {
                        return refuse(
                            ErrorCode::WouldBlock,
                            format!(
                            "inode {ino}: locks are being reclaimed after a restart (for {left:?})"
                        ),
                        )
                    }
                    Some(_) => Err(None),
                    None => state.locks.try_set(ino, who, &lock).map_err(Some),
                };
                let holder = match taken {
                    Ok(()) => {
                        self.locks_changed.notify_waiters();
                        return Ok(match lock.kind {
                            LockKind::Unlock => Response::Done,
                            _ => Response::Attr(attr),
                        });
                    }
                    Err(holder) => holder,
                };
                let locked = || {
                    format!(
                        "inode {ino}: bytes {}..={} are locked by another owner",
                        lock.start, lock.end
                    )
                };
                if !wait {
                    return refuse(ErrorCode::WouldBlock, locked());
                }
                if holder.is_some_and(|holder| state.locks.would_deadlock(who, holder)) {
                    return refuse(
                        ErrorCode::Deadlock,
                        format!("{}, which waits for a lock this owner holds", locked()),
                    );
                }
                state.locks.wait(who, ino, lock);
                waited = true;
                settling
            };
            // While settling, nothing wakes the waiter: it looks again now and then.
            let woken = match settling {
                Some(left) => {
                    tokio::time::timeout_at(deadline, tokio::time::sleep(left.min(LOCK_WAIT))).await
                }
                None => tokio::time::timeout_at(deadline, changed).await,
            };
            if woken.is_err() {
                return refuse(ErrorCode::WouldBlock, "still locked; ask again");
            }
        }
    }
}
