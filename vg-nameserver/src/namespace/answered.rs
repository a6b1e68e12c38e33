//! Changes a client may send again: which ones were applied, and with which inode.
//!
//! A client numbers each change it sends ([`vg_wire::ns::Request::Once`]) and sends it
//! again, with the same number, when the answer was lost (a dropped connection, a
//! nameserver restarted after logging the change). Applied twice, the repeat would be
//! answered wrongly: a second create finds the file there, a second rename finds the
//! name gone. So each applied change leaves an [`super::Op::Applied`] record, which
//! replay and the snapshot keep in [`Answered`], and a repeat is answered from it.
//! Bounded whatever clients send: the newest [`PER_CLIENT`] numbers of each client, and
//! at most [`MAX_ENTRIES`] in all, those of the client heard from least recently going
//! first. Every step depends only on the order of the records, so replicas of the log
//! agree.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use vg_wire::Ino;

/// Numbers kept per client: more than the changes a client has in flight at once.
pub const PER_CLIENT: usize = 1024;

/// Numbers kept in all (about 40 bytes each).
pub const MAX_ENTRIES: usize = 1 << 18;

/// The numbered changes applied, by client.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Answered {
    clients: HashMap<u64, Numbers>,
    /// Clients by the tick of their last change: the first is the least recent.
    by_tick: BTreeMap<u64, u64>,
    /// Counts the changes recorded.
    ticks: u64,
    /// Numbers kept in all.
    entries: usize,
}

/// One client's numbered changes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Numbers {
    /// Each change's number and the inode its answer named, if any.
    applied: BTreeMap<u64, Option<Ino>>,
    /// The tick of its last change.
    tick: u64,
}

impl Answered {
    /// If change `seq` of `client` was applied: the inode its answer named, if any.
    pub fn get(&self, client: u64, seq: u64) -> Option<Option<Ino>> {
        self.clients.get(&client)?.applied.get(&seq).copied()
    }

    /// Records that change `seq` of `client` was applied, its answer naming `ino`.
    pub fn record(&mut self, client: u64, seq: u64, ino: Option<Ino>) {
        self.ticks += 1;
        let numbers = self.clients.entry(client).or_default();
        self.by_tick.remove(&numbers.tick);
        numbers.tick = self.ticks;
        self.by_tick.insert(self.ticks, client);
        if numbers.applied.insert(seq, ino).is_none() {
            self.entries += 1;
        }
        if numbers.applied.len() > PER_CLIENT {
            numbers.applied.pop_first();
            self.entries -= 1;
        }
        // The client just recorded is the most recent, so it is never the one dropped.
        while self.entries > MAX_ENTRIES {
            let Some((_, oldest)) = self.by_tick.pop_first() else {
                break;
            };
            if let Some(gone) = self.clients.remove(&oldest) {
                self.entries -= gone.applied.len();
            }
        }
    }

    /// Numbers kept in all.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_finds_the_first_answer() {
        let mut answered = Answered::default();
        assert_eq!(answered.get(7, 1), None);
        answered.record(7, 1, Some(42));
        answered.record(7, 2, None);
        assert_eq!(answered.get(7, 1), Some(Some(42)));
        assert_eq!(answered.get(7, 2), Some(None));
        // Another client's numbers are its own.
        assert_eq!(answered.get(8, 1), None);
    }

    #[test]
    fn each_client_keeps_its_newest_numbers() {
        let mut answered = Answered::default();
        for seq in 0..PER_CLIENT as u64 + 10 {
            answered.record(1, seq, Some(seq));
        }
        assert_eq!(answered.len(), PER_CLIENT);
        assert_eq!(answered.get(1, 9), None, "the oldest numbers went");
        assert_eq!(answered.get(1, 10), Some(Some(10)));
    }

    #[test]
    fn the_least_recent_clients_go_first_when_full() {
        let mut answered = Answered::default();
        let clients = (MAX_ENTRIES / PER_CLIENT) as u64;
        for client in 0..clients {
            for seq in 0..PER_CLIENT as u64 {
                answered.record(client, seq, None);
            }
        }
        assert_eq!(answered.len(), MAX_ENTRIES);
        // Client 0 is heard from again: client 1 is now the least recent.
        answered.record(0, 5_000, None);
        answered.record(clients, 0, None);
        assert!(answered.len() <= MAX_ENTRIES);
        assert_eq!(answered.get(1, 0), None, "the least recent client went");
        assert_eq!(answered.get(0, 5_000), Some(None));
        assert_eq!(answered.get(clients, 0), Some(None));
        assert_eq!(answered.get(2, 0), Some(None));
    }
}
