//! The cluster client: namespace calls to the nameserver, block uploads and reads on
//! storages. Knows nothing of FUSE, so `vgctl`, the FUSE adapter and tests share it.

mod blocks;
pub mod cache;
pub mod compact;
pub mod entries;
pub mod error;
pub mod files;
pub mod session;
pub mod transfer;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vg_wire::error::ErrorCode;
use vg_wire::ns::{self, BlockInfo, ClusterStatus, Layout, Name, StatFs, Stored};
use vg_wire::rpc::{Dialer, Nameservers, Target};
use vg_wire::tls::{Identity, TlsPaths};
use vg_wire::xattr::SetMode;
use vg_wire::{Attr, BlockId, FileKind, Ino, Role, SetAttr, Slice};

pub use blocks::stored;
use entries::EntryCache;
pub use entries::{Cached, Xattrs};
pub use error::{Error, Result};

/// Who makes an inode: its owner, and the umask of the process making it (the
/// nameserver applies it unless the parent's default ACL replaces it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Maker {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits to clear.
    pub umask: u32,
}

impl Maker {
    /// Root, with no umask: what vgctl and tests make.
    pub const ROOT: Maker = Maker {
        uid: 0,
        gid: 0,
        umask: 0,
    };
}

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// The nameserver group's members (one for a nameserver alone).
    pub nameservers: Vec<Target>,
    /// CA, certificate and key of this client.
    pub tls: TlsPaths,
    /// Bound on one request to a server.
    pub request_timeout: Duration,
    /// How long to keep retrying an unreachable nameserver before failing.
    pub unavailable_timeout: Duration,
    /// How long lookups may be answered from directory listings and attributes this
    /// client already has (zero: always ask the nameserver).
    pub entry_ttl: Duration,
}

impl Config {
    /// Defaults for the timeouts.
    /// A client of the nameserver at `ns_addr` (certificate name `nameserver`).
    pub fn new(ns_addr: SocketAddr, tls: TlsPaths) -> Self {
        Config {
            nameservers: vec![Target {
                name: "nameserver".into(),
                role: Role::Nameserver,
                addr: ns_addr,
            }],
            tls,
            request_timeout: Duration::from_secs(10),
            unavailable_timeout: Duration::from_secs(30),
            entry_ttl: Duration::ZERO,
        }
    }
}

/// A connection to a vg cluster. Cheap to clone; clones share connections.
/// When the nameserver answers a commit (see `ns::Request::Commit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Once its record is written: the blobs were uploaded (synced or not) before.
    Written,
    /// Once its record is on disk: an `fsync`'s, whose blobs were uploaded synced.
    Synced,
    /// While its blobs are being uploaded as this race: once its record is on disk, the
    /// blobs synced, or, for a race with `ns::RACE_UNSYNCED`, once written, the blobs
    /// not synced. Refused with `Conflict` where the nameserver cannot take that.
    Raced(u64),
}

#[derive(Clone)]
pub struct Client {
    dialer: Dialer,
    ns: Nameservers,
    unavailable_timeout: Duration,
    /// Storages that recently failed a read, and when: tried last for a while, so that a
    /// dead storage costs one timeout rather than one per block.
    suspects: Arc<Mutex<HashMap<String, Instant>>>,
    /// Blocks uploaded (or being uploaded) but not yet committed, with a count of the
    /// uploads holding each: their garbage-collection grace period is kept fresh.
    held: Arc<Mutex<HashMap<BlockId, u32>>>,
    /// Where the last placement said the next block would go: a small one is sent there
    /// while its placement is asked for (the nameserver keeps the guess if it qualifies).
    guess: Arc<Mutex<Vec<vg_wire::Location>>>,
    /// When the nameserver last refused a commit racing its upload.
    race_refused: Arc<Mutex<[Option<std::time::Instant>; 2]>>,
    /// Raced uploads sent since the last placement asked for (see `race_targets`).
    raced_on_guess: Arc<std::sync::atomic::AtomicU32>,
    /// Races whose uploads every storage acknowledged, not yet told to the nameserver,
    /// and whether a request to tell it is due (see `race_stored`).
    races_stored: Arc<Mutex<(Vec<u64>, bool)>>,
    /// Listings and attributes that answer lookups (none when the TTL is zero).
    entries: Option<Arc<Mutex<EntryCache>>>,
    /// This client's number for its changes, and the number of the last change sent:
    /// a change sent again after its answer was lost keeps its number, so that the
    /// nameserver applies it once ([`ns::Request::Once`]).
    changes: (u64, Arc<AtomicU64>),
    /// Which of this client's answered changes are known on disk.
    durable: Arc<Durable>,
    /// The cluster block size.
    pub block_size: u32,
}

/// Counts of a client's changes: those the nameserver answered, and how many of the
/// first of those are known to be on its disk. A sync with no change answered since
/// needs no round trip: `sqlite` syncs the directory right after the fsync of a journal
/// it created, whose commit, answered once on disk, covered the creation already.
#[derive(Default)]
struct Durable {
    answered: AtomicU64,
    synced: AtomicU64,
}

thread_local! {
    /// The dialer of a thread with a runtime of its own (see
    /// [`Client::dial_from_this_thread`]); kept for the thread's life.
    static THREAD_DIALER: Cell<Option<&'static Dialer>> = const { Cell::new(None) };
}

fn not_found(name: &[u8]) -> Error {
    Error::Remote(vg_wire::RemoteError::new(
        ErrorCode::NotFound,
        format!("{}: no such entry", String::from_utf8_lossy(name)),
    ))
}

fn unexpected(what: &str, answer: impl std::fmt::Debug) -> Error {
    Error::Wire(vg_wire::Error::BadFrame {
        reason: format!("{what}: unexpected answer {answer:?}"),
    })
}

impl Client {
    /// Loads the TLS material and connects to the nameserver.
    pub async fn connect(config: &Config) -> Result<Self> {
        let identity = Identity::load(&config.tls)?;
        let first = config.nameservers.first().ok_or(Error::NoNameserver)?;
        let endpoint = vg_wire::rpc::dialing_endpoint(first.addr)?;
        let mut client = Client {
            dialer: Dialer::new(endpoint, identity.client_config()?, config.request_timeout),
            ns: Nameservers::new(config.nameservers.clone()),
            unavailable_timeout: config.unavailable_timeout,
            suspects: Arc::default(),
            held: Arc::default(),
            guess: Arc::default(),
            race_refused: Arc::default(),
            raced_on_guess: Arc::default(),
            races_stored: Arc::default(),
            entries: (!config.entry_ttl.is_zero())
                .then(|| Arc::new(Mutex::new(EntryCache::new(config.entry_ttl)))),
            changes: (session::random_id(), Arc::default()),
            durable: Arc::default(),
            block_size: 0,
        };
        client.block_size = client.statfs().await?.block_size;
        tokio::spawn(blocks::keep_held_blocks(
            Arc::downgrade(&client.held),
            client.dialer.clone(),
            client.ns.clone(),
        ));
        Ok(client)
    }

    /// Sends a request to the nameserver, retrying while it is unreachable (e.g.
    /// restarting) for up to the configured time. A change is numbered, so that the
    /// nameserver applies it once however often it is sent.
    pub async fn ns_call(&self, request: ns::Request) -> Result<ns::Response> {
        let change = request.is_change();
        let request = match change {
            true => ns::Request::Once {
                client: self.changes.0,
                seq: self.changes.1.fetch_add(1, Ordering::Relaxed),
                request: Box::new(request),
            },
            false => request,
        };
        let answer = self
            .ns
            .call(self.thread_dialer(), &request, self.unavailable_timeout)
            .await;
        // Whatever the answer: a change whose answer was lost may have been applied.
        if change {
            self.durable.answered.fetch_add(1, Ordering::AcqRel);
        }
        Ok(answer?)
    }

    /// This thread's dialer, else the client's.
    pub(crate) fn thread_dialer(&self) -> &Dialer {
        THREAD_DIALER.with(Cell::get).unwrap_or(&self.dialer)
    }

    /// Sends this thread's requests to the nameserver over a connection of its own,
    /// driven by the runtime this thread runs (FUSE over io_uring: a request, its
    /// nameserver call and its reply then all happen on the caller's CPU).
    pub fn dial_from_this_thread(&self) -> Result<()> {
        let dialer: &'static Dialer = Box::leak(Box::new(self.dialer.rebound()?));
        THREAD_DIALER.with(|d| d.set(Some(dialer)));
        Ok(())
    }

    async fn attr_call(&self, request: ns::Request) -> Result<Attr> {
        match self.ns_call(request).await? {
            ns::Response::Attr(attr) => Ok(attr),
            other => Err(unexpected("attributes", other)),
        }
    }

    /// Sends a request that makes an inode; records in the entry cache whether it has
    /// extended attributes.
    async fn make_call(&self, request: ns::Request) -> Result<Attr> {
        match self.ns_call(request).await? {
            ns::Response::Made { attr, xattrs } => {
                if !xattrs {
                    self.cache(|c| c.made_plain(attr.ino));
                }
                Ok(attr)
            }
            other => Err(unexpected("attributes", other)),
        }
    }

    async fn done_call(&self, request: ns::Request) -> Result<()> {
        self.ns_call(request).await.map(|_| ())
    }

    /// Attributes of the inode at an absolute path (symlinks are not followed).
    pub async fn resolve(&self, path: &str) -> Result<Attr> {
        self.attr_call(ns::Request::Resolve {
            path: path.to_string(),
        })
        .await
    }

    /// Runs `update` on the entry cache, if there is one.
    fn cache<T>(&self, update: impl FnOnce(&mut EntryCache) -> T) -> Option<T> {
        self.entries
            .as_ref()
            .map(|cache| update(&mut cache.lock().expect("entry cache lock")))
    }

    /// What the entry cache alone knows of `name` in `parent` (none without a cache).
    pub fn cached_lookup(&self, parent: Ino, name: &[u8]) -> Option<Cached> {
        // Not "absent": too long (`lookup` says so).
        if name.len() > vg_wire::MAX_NAME_LEN {
            return None;
        }
        self.cache(|c| c.lookup(parent, name))
    }

    /// Attributes the entry cache still trusts, and for how much longer.
    pub fn cached_attr(&self, ino: Ino) -> Option<(Attr, Duration)> {
        self.cache(|c| c.fresh_attr(ino)).flatten()
    }

    /// A directory's listing, if the entry cache still trusts all of it (see
    /// [`EntryCache::listing`]).
    pub fn cached_listing(&self, ino: Ino) -> Option<Vec<(Name, Attr)>> {
        self.cache(|c| c.listing(ino)).flatten()
    }

    /// Replaces a file's attributes with newer ones the entry cache holds (see
    /// [`EntryCache::newest`]).
    pub fn newest(&self, attr: &mut Attr) {
        self.cache(|c| c.newest(attr));
    }

    /// Whether lookups in `dir` must skip the caches: this client took a lock on a file
    /// there lately (see [`EntryCache::locked_in`]).
    pub fn looks_up_afresh(&self, dir: Ino) -> bool {
        self.cache(|c| c.looks_up_afresh(dir)).unwrap_or(false)
    }

    /// Attributes of `name` in directory `parent`; from the entry cache when it knows.
    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        vg_wire::check_name_len(name).map_err(Error::Remote)?;
        match self.cached_lookup(parent, name) {
            Some(Cached::Found(attr, _)) => return Ok(attr),
            Some(Cached::Absent) => return Err(not_found(name)),
            // A directory in use: one listing answers this and the next lookups.
            Some(Cached::Unknown { stale: true }) => {
                let entries = self.readdir_all(parent).await?;
                return match entries.into_iter().find(|(n, _)| n == name) {
                    Some((_, attr)) => Ok(attr),
                    None => Err(not_found(name)),
                };
            }
            _ => {}
        }
        let attr = self
            .attr_call(ns::Request::Lookup {
                parent,
                name: name.to_vec(),
            })
            .await
            .inspect_err(|e| self.forget_dir_on(e, ErrorCode::NotFound, parent))?;
        self.cache(|c| {
            c.attr(&attr);
            c.found_in(parent, &attr);
        });
        Ok(attr)
    }

    /// Forgets the listing of `dir` when the nameserver's answer `e` (`NotFound` for a
    /// name the cache may list, `Exists` for one it may not) shows the listing was wrong.
    fn forget_dir_on(&self, e: &Error, code: ErrorCode, dir: Ino) {
        if e.code() == code {
            self.cache(|c| c.forget_dir(dir));
        }
    }

    /// Attributes of an inode.
    pub async fn getattr(&self, ino: Ino) -> Result<Attr> {
        let attr = self
            .attr_call(ns::Request::GetAttr { ino })
            .await
            .map_err(|e| self.stale(ino, e))?;
        self.cache(|c| c.attr(&attr));
        Ok(attr)
    }

    /// An inode asked for by number is gone (removed on another mount, or freed at its
    /// last close): the cached name that led here is stale. Forgetting its attributes
    /// makes the next lookup of the name ask the nameserver; ESTALE makes the kernel
    /// look the path up again and retry.
    fn stale(&self, ino: Ino, e: Error) -> Error {
        if e.code() != ErrorCode::NotFound {
            return e;
        }
        self.cache(|c| c.changed(ino));
        Error::Remote(vg_wire::RemoteError::new(
            ErrorCode::Stale,
            format!("inode {ino}: gone; its name was stale"),
        ))
    }

    /// Changes attributes.
    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr> {
        self.cache(|c| c.changed(ino));
        let chmod = set.perm.is_some();
        let attr = self.attr_call(ns::Request::SetAttr { ino, set }).await?;
        self.cache(|c| {
            c.attr(&attr);
            // A chmod moves the access ACL too.
            if chmod {
                c.forget_xattrs(ino);
            }
        });
        Ok(attr)
    }

    /// Records a name this client added (`made`: see [`EntryCache::added`]), or why the
    /// cache was wrong.
    fn added(&self, parent: Ino, name: &[u8], made: bool, result: Result<Attr>) -> Result<Attr> {
        match &result {
            Ok(attr) => _ = self.cache(|c| c.added(parent, name, attr, made)),
            Err(e) => self.forget_dir_on(e, ErrorCode::Exists, parent),
        }
        result
    }

    /// Records a name this client removed (a directory if `dir`), or why the cache was
    /// wrong.
    fn removed<T>(&self, parent: Ino, name: &[u8], dir: bool, result: Result<T>) -> Result<T> {
        match &result {
            Ok(_) => _ = self.cache(|c| c.removed(parent, name, dir)),
            Err(e) => self.forget_dir_on(e, ErrorCode::NotFound, parent),
        }
        result
    }

    /// Makes a directory.
    pub async fn mkdir(&self, parent: Ino, name: &[u8], perm: u32, by: Maker) -> Result<Attr> {
        let Maker { uid, gid, umask } = by;
        let result = self
            .make_call(ns::Request::Mkdir {
                parent,
                name: name.to_vec(),
                perm,
                umask,
                uid,
                gid,
            })
            .await;
        self.added(parent, name, true, result)
    }

    /// Makes an empty file (or returns the existing one unless `exclusive`).
    pub async fn create(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u32,
        by: Maker,
        exclusive: bool,
    ) -> Result<Attr> {
        let Maker { uid, gid, umask } = by;
        let result = self
            .make_call(ns::Request::Create {
                parent,
                name: name.to_vec(),
                perm,
                umask,
                uid,
                gid,
                exclusive,
            })
            .await;
        self.added(parent, name, exclusive, result)
    }

    /// The extended attributes of an inode the entry cache still trusts.
    pub fn cached_xattrs(&self, ino: Ino) -> Option<Xattrs> {
        self.cache(|c| c.fresh_xattrs(ino)).flatten()
    }

    /// Every extended attribute of an inode; from the entry cache when it has them.
    pub async fn xattrs(&self, ino: Ino) -> Result<Xattrs> {
        if let Some(xattrs) = self.cached_xattrs(ino) {
            return Ok(xattrs);
        }
        let (asked, epoch) = (Instant::now(), self.cache(|c| c.epoch()));
        match self.ns_call(ns::Request::Xattrs { ino }).await? {
            ns::Response::Xattrs(list) => {
                let xattrs = Arc::new(list);
                if let Some(epoch) = epoch {
                    self.cache(|c| c.xattrs_fetched(ino, xattrs.clone(), asked, epoch));
                }
                Ok(xattrs)
            }
            other => Err(unexpected("xattrs", other)),
        }
    }

    /// Sets an extended attribute.
    pub async fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: SetMode,
    ) -> Result<()> {
        self.xattr_call(
            ino,
            ns::Request::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
                mode,
            },
        )
        .await
    }

    /// Removes an extended attribute.
    pub async fn remove_xattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.xattr_call(
            ino,
            ns::Request::RemoveXattr {
                ino,
                name: name.to_vec(),
            },
        )
        .await
    }

    /// Sends a change of `ino`'s extended attributes.
    async fn xattr_call(&self, ino: Ino, request: ns::Request) -> Result<()> {
        let result = self.attr_call(request).await;
        // Once answered: what was cached, or is being fetched, may predate the change.
        self.cache(|c| c.forget_xattrs(ino));
        let attr = result?;
        self.cache(|c| c.attr(&attr));
        Ok(())
    }

    /// Makes a FIFO, socket or device node.
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        by: Maker,
    ) -> Result<Attr> {
        let Maker { uid, gid, umask } = by;
        let result = self
            .make_call(ns::Request::Mknod {
                parent,
                name: name.to_vec(),
                kind,
                perm,
                umask,
                uid,
                gid,
            })
            .await;
        self.added(parent, name, true, result)
    }

    /// Makes a symbolic link.
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let result = self
            .make_call(ns::Request::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                uid,
                gid,
            })
            .await;
        self.added(parent, name, true, result)
    }

    /// Target of a symbolic link.
    pub async fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        match self.ns_call(ns::Request::Readlink { ino }).await? {
            ns::Response::Target(target) => Ok(target),
            other => Err(unexpected("readlink", other)),
        }
    }

    /// Adds a hard link.
    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        let result = self
            .attr_call(ns::Request::Link {
                ino,
                new_parent,
                new_name: new_name.to_vec(),
            })
            .await;
        self.added(new_parent, new_name, true, result)
    }

    /// Tells the nameserver which files session `id` holds open, and its locks; returns
    /// the lease to renew the report within, and whether the session's locks were lost.
    pub async fn report_session(
        &self,
        id: u64,
        open: Vec<Ino>,
        locks: Vec<(Ino, ns::Lock)>,
    ) -> Result<(Duration, bool)> {
        match self
            .ns_call(ns::Request::Session { id, open, locks })
            .await?
        {
            ns::Response::Lease { ms, lost } => Ok((Duration::from_millis(ms), lost)),
            other => Err(unexpected("a lease", other)),
        }
    }

    /// Takes, changes or drops a lock of `session` on `ino`; with `wait`, until granted
    /// (the nameserver answers a wait after a few seconds, and is asked again) or until
    /// `interrupted` resolves (the caller got a signal): then [`Error::Interrupted`],
    /// unless the lock was granted meanwhile. Returns the file's attributes when the
    /// nameserver said them with a lock taken.
    pub async fn lock(
        &self,
        session: u64,
        ino: Ino,
        lock: ns::Lock,
        wait: bool,
        interrupted: impl Future<Output = ()>,
    ) -> Result<Option<Attr>> {
        let granted = |answer: ns::Response| match answer {
            ns::Response::Attr(attr) => Some(attr),
            _ => None,
        };
        let request = |wait| ns::Request::Lock {
            session,
            ino,
            lock,
            wait,
        };
        tokio::pin!(interrupted);
        loop {
            let answer = tokio::select! {
                answer = self.ns_call(request(wait)) => answer,
                () = interrupted.as_mut(), if wait => {
                    // The dropped wait may have been granted just before; asking once
                    // without waiting settles it either way (the nameserver drops the
                    // owner's earlier wait on such a request), so the lock this mount
                    // records is the one the nameserver holds.
                    return match self.ns_call(request(false)).await {
                        Err(e) if e.code() == ErrorCode::WouldBlock => Err(Error::Interrupted),
                        other => other.map(granted),
                    };
                }
            };
            match answer {
                Err(e) if wait && e.code() == ErrorCode::WouldBlock => continue,
                other => return other.map(granted),
            }
        }
    }

    /// The lock of another owner that `lock` conflicts with, if any.
    pub async fn test_lock(
        &self,
        session: u64,
        ino: Ino,
        lock: ns::Lock,
    ) -> Result<Option<ns::Lock>> {
        match self
            .ns_call(ns::Request::TestLock { session, ino, lock })
            .await?
        {
            ns::Response::Lock(found) => Ok(found),
            other => Err(unexpected("a lock", other)),
        }
    }

    /// Removes a non-directory; returns its attributes if it lives on (other names, or
    /// open somewhere).
    pub async fn unlink(&self, parent: Ino, name: &[u8]) -> Result<Option<Attr>> {
        let answer = self
            .ns_call(ns::Request::Unlink {
                parent,
                name: name.to_vec(),
            })
            .await;
        let result = match answer {
            Ok(ns::Response::Attr(attr)) => Ok(Some(attr)),
            Ok(ns::Response::Done) => Ok(None),
            Ok(other) => Err(unexpected("attributes or nothing", other)),
            Err(e) => Err(e),
        };
        let result = self.removed(parent, name, false, result);
        if let Ok(Some(attr)) = &result {
            self.cache(|c| c.attr(attr));
        }
        result
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let result = self
            .done_call(ns::Request::Rmdir {
                parent,
                name: name.to_vec(),
            })
            .await;
        self.removed(parent, name, true, result)
    }

    /// Renames. The moved inode's attributes, which the nameserver answers with, stay
    /// cached under the new name: a lookup of it (an `rm` or `stat` after `mv`) is then
    /// answered here instead of costing a round trip.
    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        noreplace: bool,
    ) -> Result<()> {
        let result = self
            .attr_call(ns::Request::Rename {
                parent,
                name: name.to_vec(),
                new_parent,
                new_name: new_name.to_vec(),
                noreplace,
            })
            .await;
        match &result {
            Ok(attr) => {
                self.cache(|c| {
                    c.renamed(parent, name, new_parent, new_name);
                    c.attr(attr);
                });
            }
            Err(e) => {
                self.forget_dir_on(e, ErrorCode::NotFound, parent);
                self.forget_dir_on(e, ErrorCode::Exists, new_parent);
            }
        }
        result.map(|_| ())
    }

    /// A whole directory listing.
    pub async fn readdir_all(&self, ino: Ino) -> Result<Vec<(Name, Attr)>> {
        let (mut all, mut with_xattrs) = (Vec::new(), HashSet::new());
        let epoch = self.cache(|c| c.epoch());
        loop {
            let offset = all.len() as u64;
            let request = ns::Request::ReadDir {
                ino,
                offset,
                limit: 5000,
            };
            let more = match self.ns_call(request).await? {
                ns::Response::Entries {
                    entries,
                    more,
                    xattrs,
                } => {
                    all.extend(entries);
                    with_xattrs.extend(xattrs);
                    more
                }
                other => return Err(unexpected("readdir", other)),
            };
            if !more {
                if let Some(epoch) = epoch {
                    self.cache(|c| c.listed(ino, &all, &with_xattrs, epoch));
                }
                return Ok(all);
            }
        }
    }

    /// Cluster space.
    pub async fn statfs(&self) -> Result<StatFs> {
        match self.ns_call(ns::Request::StatFs).await? {
            ns::Response::StatFs(statfs) => Ok(statfs),
            other => Err(unexpected("statfs", other)),
        }
    }

    /// Returns once every change this client had answered is on the nameserver's disk,
    /// with the blobs its entries name synced by their storages (the log's gate); at
    /// once if none was answered since the last time that was known.
    pub async fn sync(&self) -> Result<()> {
        let answered = self.durable.answered.load(Ordering::Acquire);
        if self.durable.synced.load(Ordering::Acquire) >= answered {
            return Ok(());
        }
        match self.ns_call(ns::Request::Sync).await? {
            ns::Response::Done => {
                self.durable.synced.fetch_max(answered, Ordering::AcqRel);
                Ok(())
            }
            other => Err(unexpected("sync", other)),
        }
    }

    /// Storages and replication counters.
    pub async fn status(&self) -> Result<ClusterStatus> {
        match self.ns_call(ns::Request::Status).await? {
            ns::Response::Status(status) => Ok(status),
            other => Err(unexpected("status", other)),
        }
    }

    /// The nameserver group: members, roles, log positions. `change` adds or removes a
    /// member first.
    pub async fn group(&self, change: Option<ns::Request>) -> Result<ns::GroupStatus> {
        match self.ns_call(change.unwrap_or(ns::Request::Group)).await? {
            ns::Response::Group(group) => Ok(group),
            other => Err(unexpected("the nameserver group", other)),
        }
    }

    /// A file's blocks and their locations.
    pub async fn layout(&self, ino: Ino) -> Result<Layout> {
        let answer = self.ns_call(ns::Request::Layout { ino }).await;
        match answer.map_err(|e| self.stale(ino, e))? {
            ns::Response::Layout(layout) => Ok(layout),
            other => Err(unexpected("layout", other)),
        }
    }

    /// Every referenced block with its live locations.
    pub async fn list_blocks(&self) -> Result<Vec<BlockInfo>> {
        let mut all: Vec<BlockInfo> = Vec::new();
        loop {
            let after = all.last().map(|b| b.id);
            match self
                .ns_call(ns::Request::ListBlocks {
                    after,
                    limit: ns::MAX_PAGE,
                })
                .await?
            {
                ns::Response::Blocks { blocks, more } => {
                    all.extend(blocks);
                    if !more {
                        return Ok(all);
                    }
                }
                other => return Err(unexpected("list blocks", other)),
            }
        }
    }

    /// Adds slices on top of blocks of a file and sets its size, as one step, answered
    /// as `how` says. The new blobs are no longer held against garbage collection
    /// afterwards, whatever the outcome.
    pub async fn commit(
        &self,
        ino: Ino,
        size: u64,
        slices: Vec<(u64, Vec<Slice>)>,
        stored: Vec<Stored>,
        set: Option<SetAttr>,
        how: Commit,
    ) -> Result<Attr> {
        let ids: Vec<BlockId> = stored.iter().map(|(id, _, _)| *id).collect();
        self.cache(|c| c.changed(ino));
        let (sync, race) = match how {
            Commit::Written => (false, None),
            Commit::Synced => (true, None),
            Commit::Raced(race) => (ns::race_synced(race), Some(race)),
        };
        let answered = self.durable.answered.load(Ordering::Acquire);
        let result = self
            .attr_call(ns::Request::Commit {
                ino,
                size,
                slices,
                stored,
                set,
                sync,
                race,
                races_stored: self.take_races_stored(),
            })
            .await;
        if sync && result.is_ok() {
            // Answered once on disk, after every change answered before it was sent.
            self.durable
                .synced
                .fetch_max(answered + 1, Ordering::AcqRel);
        }
        self.unhold(ids);
        if let Ok(attr) = &result {
            self.cache(|c| c.attr(attr));
        }
        result
    }

    /// Replaces the first slices of a block, if they still are `prefix`, with `merged`
    /// (see `ns::Request::Compact`); the new blobs are no longer held afterwards.
    pub async fn compact(
        &self,
        ino: Ino,
        idx: u64,
        prefix: Vec<Slice>,
        merged: Vec<Slice>,
        stored: Vec<Stored>,
    ) -> Result<()> {
        let ids: Vec<BlockId> = stored.iter().map(|(id, _, _)| *id).collect();
        let result = self
            .ns_call(ns::Request::Compact {
                ino,
                idx,
                prefix,
                merged,
                stored,
            })
            .await;
        self.unhold(ids);
        result.map(|_| ())
    }
}
