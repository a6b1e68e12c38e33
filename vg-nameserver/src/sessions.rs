//! Mount sessions and the files they hold open. Kept in memory only: after a restart the
//! mounts report again within one lease, and until then no pinned file is freed.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use vg_wire::Ino;

/// Most inodes one session may report: bounds its memory here whatever a peer sends.
pub const MAX_OPEN: usize = 1 << 20;

struct Session {
    open: BTreeSet<Ino>,
    expires: Instant,
    /// Whether it reported since the start (not only renewed by a lock request).
    reported: bool,
}

/// The sessions of the mounts and how many of them hold each inode.
pub struct Sessions {
    lease: Duration,
    /// Sessions of before a restart may not have reported yet: nothing is unheld before.
    settled_at: Instant,
    sessions: HashMap<u64, Session>,
    holders: HashMap<Ino, u32>,
}

impl Sessions {
    /// No sessions yet, at a start at `now`.
    pub fn new(lease: Duration, now: Instant) -> Self {
        Sessions {
            lease,
            settled_at: now + lease,
            sessions: HashMap::new(),
            holders: HashMap::new(),
        }
    }

    /// These sessions, at a start after which nobody can have been holding anything
    /// (the namespace was never served before).
    pub fn none_before(mut self, now: Instant) -> Self {
        self.settled_at = now;
        self
    }

    /// How long a report holds.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Records that session `id` holds exactly `open`, and renews its lease.
    pub fn report(&mut self, id: u64, open: &[Ino], now: Instant) {
        self.end(id);
        let open: BTreeSet<Ino> = open.iter().copied().collect();
        for &ino in &open {
            *self.holders.entry(ino).or_default() += 1;
        }
        let expires = now + self.lease;
        self.sessions.insert(
            id,
            Session {
                open,
                expires,
                reported: true,
            },
        );
    }

    /// Renews the lease of session `id` (which starts holding nothing if it is new).
    pub fn touch(&mut self, id: u64, now: Instant) {
        let expires = now + self.lease;
        self.sessions
            .entry(id)
            .or_insert_with(|| Session {
                open: BTreeSet::new(),
                expires,
                reported: false,
            })
            .expires = expires;
    }

    /// Whether session `id` is known (reported or renewed since the start, not lapsed).
    pub fn knows(&self, id: u64) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Whether session `id` reported since the start.
    pub fn has_reported(&self, id: u64) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.reported)
    }

    /// How long the sessions of before the start still have to report, if they do.
    pub fn settling(&self, now: Instant) -> Option<Duration> {
        self.settled_at
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }

    /// Ends session `id`: it holds nothing any more.
    pub fn end(&mut self, id: u64) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        for ino in session.open {
            if let Some(count) = self.holders.get_mut(&ino) {
                *count -= 1;
                if *count == 0 {
                    self.holders.remove(&ino);
                }
            }
        }
    }

    /// Ends the sessions not renewed within their lease; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let lapsed: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &lapsed {
            self.end(*id);
        }
        lapsed
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session holds a file open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of files held open, by one session or more.
    pub fn open_files(&self) -> usize {
        self.holders.len()
    }

    /// Whether some session holds `ino` open.
    pub fn holds(&self, ino: Ino) -> bool {
        self.holders.contains_key(&ino)
    }

    /// Of `pinned`, those no session holds, once sessions of before the start had their
    /// lease to report: they can be unpinned (and freed if they have no name left).
    pub fn unheld(&self, pinned: &BTreeSet<Ino>, now: Instant) -> Vec<Ino> {
        if now < self.settled_at {
            return Vec::new();
        }
        pinned
            .iter()
            .filter(|ino| !self.holds(**ino))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_follow_reports_and_lapse_with_the_lease() {
        let start = Instant::now();
        let lease = Duration::from_secs(10);
        let mut s = Sessions::new(lease, start);
        s.report(1, &[5, 6], start);
        s.report(2, &[6], start);
        assert!(s.holds(5) && s.holds(6));
        // Nothing is unheld before the sessions of before a start could report.
        let set = |inos: &[Ino]| inos.iter().copied().collect::<BTreeSet<Ino>>();
        assert_eq!(s.unheld(&set(&[7]), start), Vec::<Ino>::new());
        let later = start + lease;
        assert_eq!(s.unheld(&set(&[5, 6, 7]), later), vec![7]);
        // A report replaces the previous one.
        s.report(1, &[6], later);
        assert!(!s.holds(5) && s.holds(6));
        // Session 2 was last renewed at the start: it lapses, session 1 does not.
        assert_eq!(s.expire(later + Duration::from_secs(1)), vec![2]);
        assert!(s.holds(6));
        s.report(1, &[], later);
        assert!(!s.holds(6) && s.knows(1) && s.len() == 1);
        s.end(1);
        assert!(s.is_empty());
        assert_eq!(s.unheld(&set(&[6]), later), vec![6]);
    }
}
