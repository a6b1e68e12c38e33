//! The rule of POSIX byte-range locks for one owner, shared by the nameserver's lock
//! table and a mount's record of its own locks (which it reports, so that it gets them
//! back after a nameserver restart).

use crate::ns::{Lock, LockKind};

/// Whether `held` covers any byte of `start..=end`.
pub fn overlaps(held: &Lock, start: u64, end: u64) -> bool {
    held.start <= end && start <= held.end
}

/// Whether `held` (another owner's) keeps `lock` from being granted: they overlap and
/// one of them is exclusive. An unlock conflicts with nothing.
pub fn conflicts(held: &Lock, lock: &Lock) -> bool {
    lock.kind != LockKind::Unlock
        && overlaps(held, lock.start, lock.end)
        && (lock.kind == LockKind::Write || held.kind == LockKind::Write)
}

/// Applies `lock` to `mine`, the locks its owner holds on one file: what the owner held
/// in the range is replaced (the parts outside it stay), and adjacent or overlapping
/// locks of one kind become one.
pub fn apply(mine: &mut Vec<Lock>, lock: &Lock) {
    let mut kept = Vec::with_capacity(mine.len() + 2);
    for held in mine.drain(..) {
        if !overlaps(&held, lock.start, lock.end) {
            kept.push(held);
            continue;
        }
        if held.start < lock.start {
            kept.push(Lock {
                end: lock.start - 1,
                ..held
            });
        }
        if held.end > lock.end {
            kept.push(Lock {
                start: lock.end + 1,
                ..held
            });
        }
    }
    if lock.kind != LockKind::Unlock {
        kept.push(*lock);
    }
    kept.sort_by_key(|l| l.start);
    for held in kept {
        match mine.last_mut() {
            Some(last) if last.kind == held.kind && held.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(held.end);
            }
            _ => mine.push(held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(start: u64, end: u64, kind: LockKind) -> Lock {
        Lock {
            owner: 1,
            start,
            end,
            kind,
            pid: 7,
        }
    }

    #[test]
    fn ranges_split_and_merge() {
        let mut mine = Vec::new();
        apply(&mut mine, &lock(0, 99, LockKind::Read));
        apply(&mut mine, &lock(10, 19, LockKind::Write));
        apply(&mut mine, &lock(40, 44, LockKind::Unlock));
        let ranges: Vec<_> = mine.iter().map(|l| (l.start, l.end, l.kind)).collect();
        assert_eq!(
            ranges,
            vec![
                (0, 9, LockKind::Read),
                (10, 19, LockKind::Write),
                (20, 39, LockKind::Read),
                (45, 99, LockKind::Read)
            ]
        );
        apply(&mut mine, &lock(10, 19, LockKind::Read));
        apply(&mut mine, &lock(40, 44, LockKind::Read));
        assert_eq!(mine, vec![lock(0, 99, LockKind::Read)]);
        apply(&mut mine, &lock(0, u64::MAX, LockKind::Unlock));
        assert!(mine.is_empty());
        // Readers share; a writer conflicts with both kinds; an unlock with nothing.
        let read = lock(0, 9, LockKind::Read);
        assert!(!conflicts(&read, &lock(5, 5, LockKind::Read)));
        assert!(conflicts(&read, &lock(9, 20, LockKind::Write)));
        assert!(!conflicts(&read, &lock(10, 20, LockKind::Write)));
        assert!(!conflicts(&read, &lock(0, 9, LockKind::Unlock)));
    }
}
