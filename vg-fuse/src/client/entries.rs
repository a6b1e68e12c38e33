//! The entry cache: complete listings of recently used directories and attributes, kept
//! for the mount's attribute TTL, so that a lookup the kernel's caches miss (a new name
//! about to be created, or a dentry the kernel dropped) is answered without a nameserver
//! round trip. It promises what the kernel's own entry and attribute caches promise, and
//! for as long: a change made by another client may be unseen for up to the TTL. Changes
//! made through this client update it at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vg_wire::ns::Name;
use vg_wire::{Attr, FileKind, Ino, Timestamp};

/// Entries over all cached listings; past this the cache starts again empty, so a huge
/// tree walk cannot make it grow without bound.
const MAX_ENTRIES: usize = 200_000;
/// Inodes whose extended attributes are cached (most as "none", from listings); past
/// this that cache starts again empty.
const MAX_XATTR_INODES: usize = 50_000;
/// A directory with more entries than this is never cached whole (relisting it would
/// cost more than the lookups it saves).
const MAX_LISTING: usize = 20_000;
/// How long after this client last took a lock on a file the file's directory is looked
/// up past the caches (see [`EntryCache::locked_in`]).
const AFRESH_AFTER_LOCK: Duration = Duration::from_secs(30);

/// What a lookup can learn from the cache.
#[derive(Debug, PartialEq)]
pub enum Cached {
    /// The name is not in the directory.
    Absent,
    /// The name, its attributes, and how much longer they may be trusted.
    Found(Attr, Duration),
    /// The cache cannot tell; `stale` when the directory was cached before, so that a
    /// fresh listing is worth fetching.
    Unknown { stale: bool },
}

/// Replaces a file's attributes with `known` when those are newer: a file's ctime, set by
/// the nameserver, moves with every change. Directories are left alone, as this client
/// stamps their times itself ([`EntryCache::dir_changed`]).
pub fn keep_newest(attr: &mut Attr, known: &Attr) {
    if attr.kind == FileKind::File && known.ino == attr.ino && known.ctime > attr.ctime {
        *attr = known.clone();
    }
}

struct Listing {
    fetched: Instant,
    names: HashMap<Name, Ino>,
}

/// An inode's extended attributes, by name.
pub type Xattrs = Arc<Vec<(Name, Vec<u8>)>>;

/// Listings and attributes, each valid for `ttl` after it was fetched.
pub struct EntryCache {
    ttl: Duration,
    dirs: HashMap<Ino, Listing>,
    attrs: HashMap<Ino, (Attr, Instant)>,
    /// Every extended attribute of an inode, fetched in one round trip: the kernel asks
    /// for `security.capability` before each write.
    xattrs: HashMap<Ino, (Xattrs, Instant)>,
    entries: usize,
    /// Counts this client's namespace changes, so that a listing fetched while one was
    /// made (and which may miss it) is not kept.
    epoch: u64,
    /// The directory each file was last found in (a lookup, a listing, a change of this
    /// client's: what a cached lookup answers from was recorded so), for
    /// [`EntryCache::locked_in`].
    parents: HashMap<Ino, Ino>,
    /// Directories holding a file this client locked lately, and when it last did.
    locked_dirs: HashMap<Ino, Instant>,
}

impl EntryCache {
    /// An empty cache whose contents are trusted for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        EntryCache {
            ttl,
            dirs: HashMap::new(),
            attrs: HashMap::new(),
            xattrs: HashMap::new(),
            entries: 0,
            epoch: 0,
            parents: HashMap::new(),
            locked_dirs: HashMap::new(),
        }
    }

    /// Notes that file `attr` is named in directory `dir`.
    pub fn found_in(&mut self, dir: Ino, attr: &Attr) {
        if attr.kind != FileKind::File {
            return;
        }
        if self.parents.len() >= MAX_ENTRIES {
            self.parents.clear();
        }
        self.parents.insert(attr.ino, dir);
    }

    /// Notes that this client took a lock on file `ino`: for [`AFRESH_AFTER_LOCK`] its
    /// directory is looked up past the caches, its own and the kernel's. Programs on
    /// several mounts coordinate through a directory under a lock (sqlite, once it holds
    /// its lock, asks whether a journal is there), and a name another mount removed a
    /// moment ago must not look present then: sqlite takes such a journal for one left by
    /// a crash and fails trying to roll it back.
    pub fn locked_in(&mut self, ino: Ino) {
        let Some(&dir) = self.parents.get(&ino) else {
            return;
        };
        let now = Instant::now();
        self.locked_dirs
            .retain(|_, at| now.duration_since(*at) < AFRESH_AFTER_LOCK);
        self.locked_dirs.insert(dir, now);
    }

    /// Whether lookups in `dir` skip the caches (see [`EntryCache::locked_in`]).
    pub fn looks_up_afresh(&self, dir: Ino) -> bool {
        self.locked_dirs
            .get(&dir)
            .is_some_and(|at| at.elapsed() < AFRESH_AFTER_LOCK)
    }

    /// What the cache knows of `name` in `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Cached {
        if self.looks_up_afresh(parent) {
            return Cached::Unknown { stale: false };
        }
        let Some(listing) = self.dirs.get(&parent) else {
            return Cached::Unknown { stale: false };
        };
        if listing.fetched.elapsed() >= self.ttl {
            return Cached::Unknown { stale: true };
        }
        match listing.names.get(name) {
            None => Cached::Absent,
            Some(ino) => match self.fresh_attr(*ino) {
                Some((attr, left)) => Cached::Found(attr, left),
                None => Cached::Unknown { stale: false },
            },
        }
    }

    /// The attributes of an inode while they may be trusted, and for how much longer
    /// (so that the kernel caches them no longer than this cache would).
    pub fn fresh_attr(&self, ino: Ino) -> Option<(Attr, Duration)> {
        let (attr, at) = self.attrs.get(&ino)?;
        let left = self.ttl.checked_sub(at.elapsed())?;
        Some((attr.clone(), left))
    }

    /// A whole listing of `dir`, in the nameserver's order (by name), while it and the
    /// attributes of every entry may be trusted: `rm -r` opens each directory twice in a
    /// row (once to see whether it is empty), and `find` and `du` follow `ls`.
    pub fn listing(&self, dir: Ino) -> Option<Vec<(Name, Attr)>> {
        if !self.fresh_listing(dir) || self.looks_up_afresh(dir) {
            return None;
        }
        let mut all = self.dirs[&dir]
            .names
            .iter()
            .map(|(name, ino)| Some((name.clone(), self.fresh_attr(*ino)?.0)))
            .collect::<Option<Vec<_>>>()?;
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(all)
    }

    /// The extended attributes of an inode while they may be trusted.
    pub fn fresh_xattrs(&self, ino: Ino) -> Option<Xattrs> {
        let (xattrs, at) = self.xattrs.get(&ino)?;
        (at.elapsed() < self.ttl).then(|| xattrs.clone())
    }

    /// Records the extended attributes of an inode, whose fetch started at `at` in
    /// `epoch`; dropped if this client changed attributes meanwhile (the answer may
    /// predate the change).
    pub fn xattrs_fetched(&mut self, ino: Ino, xattrs: Xattrs, at: Instant, epoch: u64) {
        if epoch != self.epoch {
            return;
        }
        if self.xattrs.len() >= MAX_XATTR_INODES {
            self.xattrs.clear();
        }
        self.xattrs.insert(ino, (xattrs, at));
    }

    /// Forgets the extended attributes of an inode: this client changed them.
    pub fn forget_xattrs(&mut self, ino: Ino) {
        self.xattrs.remove(&ino);
        self.epoch += 1;
    }

    /// Records a change this client made to directory `dir`'s entries at `time`: as the
    /// nameserver does, its times move to `time`, its size counts its entries and its
    /// link count its subdirectories. Saves the kernel's `getattr` of the parent after
    /// every create (it needs the parent's attributes to check permissions).
    pub fn dir_changed(&mut self, dir: Ino, time: Timestamp, entries: i64, subdirs: i64) {
        if let Some((attr, _)) = self.attrs.get_mut(&dir) {
            attr.mtime = time;
            attr.ctime = time;
            attr.size = attr.size.saturating_add_signed(entries);
            attr.nlink = attr.nlink.saturating_add_signed(subdirs as i32);
        }
    }

    /// The current epoch: pass it to [`EntryCache::listed`] for a listing fetched from now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Records a whole listing of `dir`, whose fetch started at `epoch`; a listing that
    /// may have missed one of this client's changes is dropped instead.
    pub fn listed(
        &mut self,
        dir: Ino,
        entries: &[(Name, Attr)],
        with_xattrs: &HashSet<Ino>,
        epoch: u64,
    ) {
        self.forget_dir(dir);
        if entries.len() > MAX_LISTING || epoch != self.epoch {
            return;
        }
        if self.entries + entries.len() > MAX_ENTRIES {
            self.dirs.clear();
            self.attrs.clear();
            self.entries = 0;
        }
        let now = Instant::now();
        let names = entries
            .iter()
            .map(|(name, attr)| (name.clone(), attr.ino))
            .collect();
        for (_, attr) in entries {
            self.insert_attr(attr, now);
            self.found_in(dir, attr);
        }
        // The listing says which entries have no extended attributes at all: `ls -l`,
        // `cp -a` and `tar` ask every file for some (`security.selinux`, ACLs), and
        // this answers them without a round trip each.
        if self.xattrs.len() + entries.len() > MAX_XATTR_INODES {
            self.xattrs.clear();
        }
        if entries.len() <= MAX_XATTR_INODES {
            let none = Xattrs::default();
            for (_, attr) in entries {
                match with_xattrs.contains(&attr.ino) {
                    // What was cached may predate them (another client set some).
                    true => _ = self.xattrs.remove(&attr.ino),
                    false => _ = self.xattrs.insert(attr.ino, (none.clone(), now)),
                }
            }
        }
        self.entries += entries.len();
        self.dirs.insert(
            dir,
            Listing {
                fetched: now,
                names,
            },
        );
    }

    /// Records fresh attributes of an inode.
    pub fn attr(&mut self, attr: &Attr) {
        if self.attrs.contains_key(&attr.ino) || self.entries < MAX_ENTRIES {
            self.insert_attr(attr, Instant::now());
        }
    }

    /// Keeps `attr` unless what is known of the file is newer: a fetch that started
    /// before this client's commit and ended after it must not undo what the commit
    /// returned (the file would look empty to the client that just wrote it).
    fn insert_attr(&mut self, attr: &Attr, now: Instant) {
        let mut attr = attr.clone();
        self.newest(&mut attr);
        self.attrs.insert(attr.ino, (attr, now));
    }

    /// Replaces a file's attributes with the newer ones this cache holds, whatever their
    /// age.
    pub fn newest(&self, attr: &mut Attr) {
        if let Some((known, _)) = self.attrs.get(&attr.ino) {
            keep_newest(attr, known);
        }
    }

    /// Forgets the attributes of an inode that changed in a way not known here.
    pub fn changed(&mut self, ino: Ino) {
        self.attrs.remove(&ino);
    }

    /// Records a name this client added (create, mkdir, symlink, link); `made` when the
    /// call could only succeed by adding it (all but a create without `O_EXCL`, which
    /// may open a file that was there). A new directory is known to be empty.
    pub fn added(&mut self, parent: Ino, name: &[u8], attr: &Attr, made: bool) {
        self.epoch += 1;
        let fresh = self.fresh_listing(parent);
        let mut new = made;
        if let Some(listing) = self.dirs.get_mut(&parent) {
            if listing.names.insert(name.to_vec(), attr.ino).is_none() {
                self.entries += 1;
                new |= fresh;
            }
        }
        if new {
            // The nameserver stamped the parent with the new inode's time.
            let subdirs = i64::from(attr.kind == FileKind::Dir);
            self.dir_changed(parent, attr.ctime, 1, subdirs);
        } else {
            // A name that may have been there (a create without O_EXCL opens it), in a
            // directory not listed lately.
            self.changed(parent);
        }
        self.attr(attr);
        self.found_in(parent, attr);
        if attr.kind == FileKind::Dir {
            self.listed(attr.ino, &[], &HashSet::new(), self.epoch);
        }
    }

    /// Records that an inode this client just made has no extended attributes (its
    /// parent passed it no ACL), as the nameserver answered: untar and `cp -a` into the
    /// mount need not ask each new file for them.
    pub fn made_plain(&mut self, ino: Ino) {
        if self.xattrs.len() >= MAX_XATTR_INODES {
            self.xattrs.clear();
        }
        self.xattrs.insert(ino, (Xattrs::default(), Instant::now()));
    }

    /// Records a name this client removed (unlink, or rmdir when `dir`). The name left
    /// the parent whether or not a listing of it is still held, so the parent's cached
    /// attributes are adjusted, not dropped: dropping them cost the kernel's next
    /// `getattr` of the parent a round trip, for every removal once the listing had aged.
    pub fn removed(&mut self, parent: Ino, name: &[u8], dir: bool) {
        self.take_name(parent, name);
        self.dir_changed(parent, Timestamp::now(), -1, -i64::from(dir));
    }

    /// Drops `name` from a listing of `parent` and what is known of its inode; whether
    /// the listing had it.
    fn take_name(&mut self, parent: Ino, name: &[u8]) -> bool {
        self.epoch += 1;
        let Some(ino) = self
            .dirs
            .get_mut(&parent)
            .and_then(|listing| listing.names.remove(name))
        else {
            return false;
        };
        self.entries -= 1;
        self.attrs.remove(&ino);
        self.forget_dir(ino);
        true
    }

    /// Whether `dir` has a listing still within its TTL.
    fn fresh_listing(&self, dir: Ino) -> bool {
        self.dirs
            .get(&dir)
            .is_some_and(|listing| listing.fetched.elapsed() < self.ttl)
    }

    /// Records a rename this client made.
    pub fn renamed(&mut self, parent: Ino, name: &[u8], new_parent: Ino, new_name: &[u8]) {
        let moved = self
            .dirs
            .get(&parent)
            .and_then(|listing| listing.names.get(name).copied());
        let moved_file = moved
            .and_then(|ino| self.attrs.get(&ino))
            .is_some_and(|(attr, _)| attr.kind != FileKind::Dir);
        let fresh = self.fresh_listing(parent);
        let replaced = self.take_name(new_parent, new_name);
        self.take_name(parent, name);
        if let Some(dir) = moved.and_then(|ino| self.parents.get_mut(&ino)) {
            *dir = new_parent;
        }
        match moved {
            Some(ino) if self.dirs.contains_key(&new_parent) => {
                let listing = self.dirs.get_mut(&new_parent).expect("checked");
                listing.names.insert(new_name.to_vec(), ino);
                self.entries += 1;
            }
            // Where the name went is not known: that listing is no longer complete.
            _ => self.forget_dir(new_parent),
        }
        // The common case, a file renamed within a directory, keeps one entry fewer if it
        // replaced another; anything else is left for the nameserver to tell.
        if moved_file && parent == new_parent && fresh {
            self.dir_changed(parent, Timestamp::now(), -i64::from(replaced), 0);
        } else {
            self.changed(parent);
            self.changed(new_parent);
        }
    }

    /// Forgets what is known of a directory (a call showed the cache was wrong).
    pub fn forget_dir(&mut self, dir: Ino) {
        if let Some(listing) = self.dirs.remove(&dir) {
            self.entries -= listing.names.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: Ino, kind: FileKind) -> Attr {
        Attr {
            ino,
            kind,
            size: 0,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
        }
    }

    #[test]
    fn answers_from_complete_listings_only_while_fresh() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        assert_eq!(cache.lookup(1, b"a"), Cached::Unknown { stale: false });
        let dir = attr(2, FileKind::Dir);
        cache.added(1, b"d", &dir, true);
        assert_eq!(cache.lookup(2, b"x"), Cached::Absent);
        let file = attr(3, FileKind::File);
        cache.added(2, b"x", &file, false);
        assert!(matches!(cache.lookup(2, b"x"), Cached::Found(ref a, _) if *a == file));
        cache.dir_changed(2, Timestamp { secs: 5, nanos: 0 }, 1, 1);
        let (dir_now, _) = cache.fresh_attr(2).unwrap();
        assert_eq!((dir_now.size, dir_now.nlink, dir_now.mtime.secs), (2, 2, 5));
        cache.changed(3);
        assert_eq!(cache.lookup(2, b"x"), Cached::Unknown { stale: false });
        cache.renamed(2, b"x", 2, b"y");
        assert_eq!(cache.lookup(2, b"x"), Cached::Absent);
        assert_eq!(cache.lookup(2, b"y"), Cached::Unknown { stale: false });
        cache.removed(2, b"y", false);
        assert_eq!(cache.lookup(2, b"y"), Cached::Absent);
        // A rename into a directory not cached says nothing of it.
        cache.renamed(2, b"z", 9, b"w");
        assert_eq!(cache.lookup(9, b"w"), Cached::Unknown { stale: false });

        let mut expired = EntryCache::new(Duration::ZERO);
        expired.listed(
            5,
            &[(b"n".to_vec(), file)],
            &HashSet::new(),
            expired.epoch(),
        );
        assert_eq!(expired.lookup(5, b"n"), Cached::Unknown { stale: true });
    }

    #[test]
    fn a_listing_is_given_whole_while_every_entry_is_fresh() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        assert_eq!(cache.listing(1), None);
        let (b, a) = (attr(7, FileKind::File), attr(8, FileKind::Dir));
        let entries = [(b"b".to_vec(), b.clone()), (b"a".to_vec(), a.clone())];
        cache.listed(1, &entries, &HashSet::new(), cache.epoch());
        // In the nameserver's order, whatever order the cache keeps them in.
        let sorted = vec![(b"a".to_vec(), a), (b"b".to_vec(), b)];
        assert_eq!(cache.listing(1), Some(sorted.clone()));
        // This client's own changes show at once.
        let c = attr(9, FileKind::File);
        cache.added(1, b"c", &c, false);
        let mut with_c = sorted.clone();
        with_c.push((b"c".to_vec(), c));
        assert_eq!(cache.listing(1), Some(with_c));
        cache.removed(1, b"c", false);
        assert_eq!(cache.listing(1), Some(sorted));
        // An entry whose attributes are not trusted any more: the listing is fetched.
        cache.changed(7);
        assert_eq!(cache.listing(1), None);

        let mut expired = EntryCache::new(Duration::ZERO);
        expired.listed(1, &entries, &HashSet::new(), expired.epoch());
        assert_eq!(expired.listing(1), None);
    }

    #[test]
    fn a_name_surely_made_adjusts_the_parent_without_its_listing() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        let mut dir = attr(2, FileKind::Dir);
        (dir.size, dir.nlink) = (3, 2);
        cache.attr(&dir);
        cache.added(2, b"sub", &attr(5, FileKind::Dir), true);
        let (now, _) = cache.fresh_attr(2).unwrap();
        assert_eq!((now.size, now.nlink), (4, 3));
        // A create without O_EXCL may have opened a file that was there: the parent's
        // attributes are no longer known.
        cache.added(2, b"f", &attr(6, FileKind::File), false);
        assert!(cache.fresh_attr(2).is_none());
    }

    #[test]
    fn a_removal_adjusts_the_parent_without_its_listing() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        let mut dir = attr(2, FileKind::Dir);
        (dir.size, dir.nlink) = (3, 3);
        // Attributes known (from a getattr), but no listing of the directory.
        cache.attr(&dir);
        cache.removed(2, b"sub", true);
        let (now, _) = cache.fresh_attr(2).unwrap();
        assert_eq!((now.size, now.nlink), (2, 2));
        cache.removed(2, b"file", false);
        let (now, _) = cache.fresh_attr(2).unwrap();
        assert_eq!((now.size, now.nlink), (1, 2));
    }

    #[test]
    fn huge_directories_are_not_cached() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        let entries: Vec<(Name, Attr)> = (0..MAX_LISTING as u64 + 1)
            .map(|i| (i.to_string().into_bytes(), attr(i + 10, FileKind::File)))
            .collect();
        cache.listed(1, &entries, &HashSet::new(), cache.epoch());
        assert_eq!(cache.lookup(1, b"nope"), Cached::Unknown { stale: false });
    }

    #[test]
    fn a_listing_fetched_across_a_change_is_dropped() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        let epoch = cache.epoch();
        cache.added(1, b"new", &attr(7, FileKind::File), false);
        cache.listed(1, &[], &HashSet::new(), epoch);
        assert_eq!(cache.lookup(1, b"new"), Cached::Unknown { stale: false });
    }

    #[test]
    fn xattrs_fetched_across_a_change_are_not_kept() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        let xattrs: Xattrs = Arc::new(vec![(b"user.a".to_vec(), b"1".to_vec())]);
        let epoch = cache.epoch();
        cache.forget_xattrs(7);
        cache.xattrs_fetched(7, xattrs.clone(), Instant::now(), epoch);
        assert!(cache.fresh_xattrs(7).is_none());
        cache.xattrs_fetched(7, xattrs.clone(), Instant::now(), cache.epoch());
        assert_eq!(cache.fresh_xattrs(7), Some(xattrs));
    }

    #[test]
    fn a_listing_tells_which_entries_have_no_xattrs() {
        let mut cache = EntryCache::new(Duration::from_secs(60));
        let entries = [
            (b"plain".to_vec(), attr(7, FileKind::File)),
            (b"tagged".to_vec(), attr(8, FileKind::File)),
        ];
        cache.made_plain(8);
        cache.listed(1, &entries, &HashSet::from([8]), cache.epoch());
        assert_eq!(cache.fresh_xattrs(7), Some(Xattrs::default()));
        // Another client gave it some since this one made it.
        assert!(cache.fresh_xattrs(8).is_none());
        // This client's own change is not hidden by what the listing said.
        cache.forget_xattrs(7);
        assert!(cache.fresh_xattrs(7).is_none());
    }
}
