//! Byte-range locks held by mount sessions, with POSIX semantics: an owner's new lock
//! replaces what it held in the range (splitting and merging its own locks), read locks
//! share, a write lock excludes every other owner. `flock` arrives as a whole-file lock of
//! an owner of its own (the open file). In memory only, like the sessions that hold them:
//! a lapsed session's locks go with it.

use std::collections::{HashMap, HashSet};

use vg_wire::locks;
use vg_wire::ns::Lock;
use vg_wire::Ino;

/// Who holds a lock: the kernel's lock owner within a mount's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The mount's session.
    pub session: u64,
    /// The kernel's lock owner on that mount.
    pub owner: u64,
}

/// Every lock, by file, and who waits for what.
#[derive(Default)]
pub struct Locks {
    /// Each file's locks, with the session of their owner.
    files: HashMap<Ino, Vec<(u64, Lock)>>,
    /// What each blocked owner waits for: the edges of the wait-for graph.
    waiting: HashMap<Owner, (Ino, Lock)>,
}

fn owner_of(session: u64, lock: &Lock) -> Owner {
    Owner {
        session,
        owner: lock.owner,
    }
}

impl Locks {
    /// The first lock of another owner that `lock` (read or write) conflicts with.
    pub fn conflict(&self, ino: Ino, who: Owner, lock: &Lock) -> Option<Lock> {
        self.blocker(ino, who, lock).map(|(_, held)| held)
    }

    fn blocker(&self, ino: Ino, who: Owner, lock: &Lock) -> Option<(Owner, Lock)> {
        self.files
            .get(&ino)?
            .iter()
            .map(|(session, held)| (owner_of(*session, held), *held))
            .find(|(owner, held)| *owner != who && locks::conflicts(held, lock))
    }

    /// Takes (or drops) `lock` if no other owner's conflicts; else names the holder.
    pub fn try_set(&mut self, ino: Ino, who: Owner, lock: &Lock) -> Result<(), Owner> {
        if let Some((holder, _)) = self.blocker(ino, who, lock) {
            return Err(holder);
        }
        let held = self.files.entry(ino).or_default();
        let mut mine: Vec<Lock> = Vec::new();
        held.retain(|(session, l)| {
            let is_mine = owner_of(*session, l) == who;
            if is_mine {
                mine.push(*l);
            }
            !is_mine
        });
        let lock = Lock {
            owner: who.owner,
            ..*lock
        };
        locks::apply(&mut mine, &lock);
        held.extend(mine.into_iter().map(|l| (who.session, l)));
        if held.is_empty() {
            self.files.remove(&ino);
        }
        Ok(())
    }

    /// Whether `who` waiting for `holder` closes a cycle of owners each waiting for the
    /// next: then nobody would ever go on (EDEADLK).
    pub fn would_deadlock(&self, who: Owner, holder: Owner) -> bool {
        let mut seen = HashSet::new();
        let mut next = vec![holder];
        while let Some(owner) = next.pop() {
            if owner == who {
                return true;
            }
            if !seen.insert(owner) {
                continue;
            }
            let Some((ino, lock)) = self.waiting.get(&owner) else {
                continue;
            };
            next.extend(
                self.files
                    .get(ino)
                    .into_iter()
                    .flatten()
                    .map(|(session, held)| (owner_of(*session, held), held))
                    .filter(|(o, held)| *o != owner && locks::conflicts(held, lock))
                    .map(|(o, _)| o),
            );
        }
        false
    }

    /// Records that `who` waits for `lock` on `ino`.
    pub fn wait(&mut self, who: Owner, ino: Ino, lock: Lock) {
        self.waiting.insert(who, (ino, lock));
    }

    /// `who` no longer waits.
    pub fn stop_waiting(&mut self, who: Owner) {
        self.waiting.remove(&who);
    }

    /// Whether `who` is recorded as waiting.
    pub fn is_waiting(&self, who: Owner) -> bool {
        self.waiting.contains_key(&who)
    }

    /// Drops every lock of a session (it lapsed); whether it had any.
    pub fn release_session(&mut self, session: u64) -> bool {
        let mut released = false;
        self.files.retain(|_, held| {
            let before = held.len();
            held.retain(|(s, _)| *s != session);
            released |= held.len() < before;
            !held.is_empty()
        });
        self.waiting.retain(|who, _| who.session != session);
        released
    }

    /// Whether a session holds any lock.
    pub fn held_by(&self, session: u64) -> bool {
        self.files.values().flatten().any(|(s, _)| *s == session)
    }

    /// Number of locks held.
    pub fn len(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    /// Number of owners waiting for a lock.
    pub fn waiters(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vg_wire::ns::LockKind;

    const A: Owner = Owner {
        session: 1,
        owner: 10,
    };
    const B: Owner = Owner {
        session: 2,
        owner: 20,
    };

    fn lock(start: u64, end: u64, kind: LockKind) -> Lock {
        Lock {
            owner: 0,
            start,
            end,
            kind,
            pid: 7,
        }
    }

    fn ranges(locks: &Locks, ino: Ino) -> Vec<(u64, u64, bool)> {
        let mut v: Vec<_> = locks.files[&ino]
            .iter()
            .map(|(_, l)| (l.start, l.end, l.kind == LockKind::Write))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn readers_share_writers_exclude_and_ranges_split_and_merge() {
        let mut l = Locks::default();
        l.try_set(1, A, &lock(0, 99, LockKind::Read)).unwrap();
        l.try_set(1, B, &lock(50, 149, LockKind::Read)).unwrap();
        assert_eq!(l.try_set(1, B, &lock(0, 9, LockKind::Write)), Err(A));
        assert_eq!(
            l.conflict(1, B, &lock(0, 9, LockKind::Write)).unwrap().pid,
            7
        );
        // Another file, or bytes nobody holds, are free.
        l.try_set(2, B, &lock(0, 9, LockKind::Write)).unwrap();
        l.try_set(1, B, &lock(200, u64::MAX, LockKind::Write))
            .unwrap();
        // A's own locks never conflict with its new one: the range is replaced.
        assert_eq!(l.try_set(1, A, &lock(40, 59, LockKind::Write)), Err(B));
        l.try_set(1, A, &lock(10, 19, LockKind::Write)).unwrap();
        l.try_set(1, A, &lock(40, 44, LockKind::Unlock)).unwrap();
        let a: Vec<_> = ranges(&l, 1)
            .into_iter()
            .filter(|r| r.1 < 200 && r.0 < 50)
            .collect();
        let split = vec![
            (0, 9, false),
            (10, 19, true),
            (20, 39, false),
            (45, 99, false),
        ];
        assert_eq!(a, split);
        // Back to read: the three merge into one again.
        l.try_set(1, A, &lock(10, 19, LockKind::Read)).unwrap();
        l.try_set(1, A, &lock(40, 44, LockKind::Read)).unwrap();
        assert!(ranges(&l, 1).contains(&(0, 99, false)));
        l.try_set(1, A, &lock(0, u64::MAX, LockKind::Unlock))
            .unwrap();
        assert!(!l.held_by(1));
        assert!(l.release_session(2));
        assert!(l.is_empty());
    }

    #[test]
    fn a_cycle_of_waits_is_a_deadlock() {
        let mut l = Locks::default();
        l.try_set(1, A, &lock(0, 0, LockKind::Write)).unwrap();
        l.try_set(1, B, &lock(1, 1, LockKind::Write)).unwrap();
        // B waits for A's byte; then A asking for B's byte would wait forever.
        assert_eq!(l.try_set(1, B, &lock(0, 0, LockKind::Write)), Err(A));
        assert!(!l.would_deadlock(B, A));
        l.wait(B, 1, lock(0, 0, LockKind::Write));
        assert_eq!(l.try_set(1, A, &lock(1, 1, LockKind::Write)), Err(B));
        assert!(l.would_deadlock(A, B));
        l.stop_waiting(B);
        assert!(!l.would_deadlock(A, B));
        assert!(l.held_by(1) && l.held_by(2) && !l.held_by(3));
        assert_eq!(l.len(), 2);
    }
}
