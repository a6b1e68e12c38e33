//! Messages of the nameserver service.
//!
//! Clients use the namespace and block-placement requests; storages use the
//! registration requests (the nameserver checks the caller's certificate role).

use serde::{Deserialize, Serialize};

use crate::rpc::Operation;
use crate::slices::Slice;
use crate::types::{Attr, BlockId, FileKind, Ino, Location, Role, SetAttr};
use crate::xattr::SetMode;

/// Most directory entries one `ReadDir` answer carries, and block ids one `ListBlocks`
/// page or `KeepBlocks` request: bounds a frame, and how long one request holds the
/// namespace.
pub const MAX_PAGE: u32 = 10_000;

/// A file name as bytes: anything but `/` and NUL, at most 255 bytes.
pub type Name = Vec<u8>;

/// A blob a client uploaded, for the commit that names it: its id, its length, and the
/// storages that acknowledged it.
pub type Stored = (BlockId, u32, Vec<String>);

/// Set in the race of a raced commit whose uploads are acknowledged once written rather
/// than synced (a `close`'s, where an `fsync`'s are synced): the nameserver syncs no log
/// entry naming its blobs before their storages said they hold them synced, so that a
/// power loss never leaves an entry naming a blob that is gone. In the race itself so
/// that the log keeps it.
pub const RACE_UNSYNCED: u64 = 1 << 63;

/// Whether the uploads of race `race` were synced before they were acknowledged.
pub fn race_synced(race: u64) -> bool {
    race & RACE_UNSYNCED == 0
}

/// A request to the nameserver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Finds `name` in directory `parent`.
    Lookup { parent: Ino, name: Name },
    /// Resolves an absolute slash-separated path (symlinks are not followed).
    Resolve { path: String },
    /// Attributes of an inode.
    GetAttr { ino: Ino },
    /// Changes attributes; a size change truncates or extends the file.
    SetAttr { ino: Ino, set: SetAttr },
    /// Makes a directory.
    Mkdir {
        parent: Ino,
        name: Name,
        perm: u32,
        /// The creating process's umask: applied unless the parent has a default ACL.
        umask: u32,
        uid: u32,
        gid: u32,
    },
    /// Makes an empty regular file; with `exclusive`, fails if the name exists,
    /// otherwise returns the existing file.
    Create {
        parent: Ino,
        name: Name,
        perm: u32,
        /// The creating process's umask: applied unless the parent has a default ACL.
        umask: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    },
    /// Makes a symbolic link to `target`.
    Symlink {
        parent: Ino,
        name: Name,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    /// The target of a symbolic link.
    Readlink { ino: Ino },
    /// Adds another name for a file.
    Link {
        ino: Ino,
        new_parent: Ino,
        new_name: Name,
    },
    /// Removes a non-directory name; answers with the file's attributes if it lives on
    /// (other names, or open in a session), else `Done`.
    Unlink { parent: Ino, name: Name },
    /// Removes an empty directory.
    Rmdir { parent: Ino, name: Name },
    /// Moves a name; replaces an existing target unless `noreplace`. Answers with the
    /// moved inode's attributes (its ctime moves).
    Rename {
        parent: Ino,
        name: Name,
        new_parent: Ino,
        new_name: Name,
        noreplace: bool,
    },
    /// Entries of a directory with their attributes, from position `offset`, at most `limit`.
    ReadDir { ino: Ino, offset: u64, limit: u32 },
    /// Cluster capacity and free space.
    StatFs,
    /// Answers once every change acknowledged before it is on the nameserver's disk
    /// (`fsync`, `fsyncdir`; immediate under `--durability strict`).
    Sync,
    /// A file's attributes, blocks and the storages holding each block.
    Layout { ino: Ino },
    /// Where to upload a new block; says if the cluster already holds it. `prefer`:
    /// storages the client already sent the bytes to (a guess at the placement, made so
    /// that a small upload need not wait for this answer), chosen first if they qualify.
    PlaceBlock {
        id: BlockId,
        len: u32,
        exclude: Vec<String>,
        prefer: Vec<String>,
    },
    /// Adds slices on top of blocks of a file (each list in order, newest last) and sets
    /// its size, as one logged step; then applies `set` (attribute changes the client
    /// deferred while it wrote the file), durable with the same log flush. `stored` says
    /// which storages acknowledged each new blob, and its length. With `sync` (an
    /// `fsync`), the blobs of `stored` were synced before they were acknowledged, and the
    /// answer comes once the commit is on disk. With `race`, the client is uploading the
    /// blobs of `stored` (as that race: synced with `sync`, else not, see
    /// [`RACE_UNSYNCED`]) to the storages named while this commit goes to the log,
    /// instead of before: the nameserver asks those storages afterwards, and undoes the
    /// change if none of them has a blob. A nameserver that cannot take that (a group;
    /// under `--durability strict`, an unsynced race) refuses it with `Conflict`, and
    /// the client commits after its upload.
    /// `races_stored` are earlier races of this client that every storage named
    /// acknowledged (see [`Request::RacesStored`]).
    Commit {
        ino: Ino,
        size: u64,
        slices: Vec<(u64, Vec<Slice>)>,
        stored: Vec<Stored>,
        set: Option<SetAttr>,
        sync: bool,
        race: Option<u64>,
        races_stored: Vec<u64>,
    },
    /// Replaces what remains of block `idx`'s slices `prefix` (as the compactor read
    /// them) with `merged` (the same bytes in fewer blobs); slices added since stay on
    /// top. Refused with `Conflict` when readers would see otherwise after
    /// (`slices::compacted`: a truncate or another compaction meanwhile).
    Compact {
        ino: Ino,
        idx: u64,
        prefix: Vec<Slice>,
        merged: Vec<Slice>,
        stored: Vec<Stored>,
    },
    /// Storages and cluster counters, for `vgctl du`, `usage` and `status`.
    Status,
    /// Referenced blocks with their expected and known locations, from `after`, at most `limit`.
    ListBlocks { after: Option<BlockId>, limit: u32 },
    /// Restarts the grace period of blocks uploaded but not yet committed, so that a long
    /// write does not lose them to garbage collection.
    KeepBlocks { ids: Vec<BlockId> },
    /// A storage announces itself (storage role only; `name` must match its certificate).
    Register {
        name: String,
        addr: std::net::SocketAddr,
        capacity: u64,
        used: u64,
    },
    /// Part of a storage's full block report; the answer lists the blocks to delete.
    Report { blocks: Vec<(BlockId, u32)> },
    /// The storage finished its report and takes new blocks.
    Activate,
    /// Liveness, space, and blocks gained, lost or found bad since the last heartbeat.
    Heartbeat {
        used: u64,
        received: Vec<(BlockId, u32)>,
        removed: Vec<BlockId>,
        bad: Vec<BlockId>,
    },
    /// Sets extended attribute `name` of an inode; answers with its attributes (its
    /// ctime moves).
    SetXattr {
        ino: Ino,
        name: Name,
        value: Vec<u8>,
        mode: SetMode,
    },
    /// Removes extended attribute `name`; answers with the inode's attributes.
    RemoveXattr { ino: Ino, name: Name },
    /// Every extended attribute of an inode, names and values (at most
    /// [`crate::xattr::MAX_TOTAL`] bytes: one round trip fills the mount's cache).
    Xattrs { ino: Ino },
    /// Makes a special file (FIFO, socket or device: `kind` says which); fails if the
    /// name exists.
    Mknod {
        parent: Ino,
        name: Name,
        kind: FileKind,
        perm: u32,
        /// The creating process's umask: applied unless the parent has a default ACL.
        umask: u32,
        uid: u32,
        gid: u32,
    },
    /// The inodes a mount's session `id` holds open, all of them (a report replaces the
    /// previous one, so a lost or repeated report does no harm): the last name of one of
    /// them may go while it stays readable and writable by inode. Renewed within the
    /// lease the answer gives, or the session's holds lapse. With them, the locks the
    /// session holds: after a nameserver restart they are taken again (within the
    /// first lease, when nobody else may take a lock).
    Session {
        id: u64,
        open: Vec<Ino>,
        locks: Vec<(Ino, Lock)>,
    },
    /// Takes, changes or drops (`LockKind::Unlock`) a byte-range lock of session `id`;
    /// with `wait`, waits while another owner holds a conflicting one, up to a few
    /// seconds (then `WouldBlock`: ask again). A lock taken is answered with the file's
    /// attributes (which tell the mount whether its layout is still current), a lock
    /// dropped with `Done`.
    Lock {
        session: u64,
        ino: Ino,
        lock: Lock,
        wait: bool,
    },
    /// The first lock of another owner that conflicts with `lock` (`F_GETLK`).
    TestLock { session: u64, ino: Ino, lock: Lock },
    /// A change (see [`Request::is_change`]) that client `client` numbered `seq` and
    /// may send again after losing the answer (a dropped connection, a restarted
    /// nameserver): the nameserver applies it once and answers a repeat as it answered
    /// the first.
    Once {
        client: u64,
        seq: u64,
        request: Box<Request>,
    },
    /// A message from another member of the nameserver group: openraft's types, which
    /// the nameserver encodes (vg-wire does not depend on them).
    Raft { message: Vec<u8> },
    /// The nameserver group's members, their roles and log positions.
    Group,
    /// Adds nameserver `id` (certificate name `name`, listening at `addr`, started with
    /// `--join`) to the group: it catches up as a learner, then votes.
    AddMember { id: u64, name: String, addr: String },
    /// Removes nameserver `id` from the group.
    RemoveMember { id: u64 },
    /// Where the active storages are: a member that follows asks the leader (storages
    /// report to the leader only), so that its log's gate can have them sync.
    Storages,
    /// Raced commits (see [`Request::Commit`]) whose blobs every storage the commit named
    /// acknowledged: the nameserver takes them as stored instead of asking those storages
    /// (and, for races with [`RACE_UNSYNCED`], has them sync before its log syncs the
    /// commit). Clients also send these with their next commit.
    RacesStored { races: Vec<u64> },
}

impl Request {
    /// Whether it changes the namespace, so that sending it again after it was applied
    /// would not do the same (a second create finds the file there).
    pub fn is_change(&self) -> bool {
        use Request::*;
        matches!(
            self,
            SetAttr { .. }
                | Mkdir { .. }
                | Create { .. }
                | Mknod { .. }
                | SetXattr { .. }
                | RemoveXattr { .. }
                | Symlink { .. }
                | Link { .. }
                | Unlink { .. }
                | Rmdir { .. }
                | Rename { .. }
                | Commit { .. }
                | Compact { .. }
        )
    }
}

/// What a lock request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// Shared.
    Read,
    /// Exclusive.
    Write,
    /// Drop the owner's locks in the range.
    Unlock,
}

/// A byte-range lock (`start..=end`; `end` `u64::MAX` is "to the end of the file") of
/// one owner within a session: a process, for POSIX record locks; an open file, for
/// `flock` (which the kernel passes as a lock of the whole file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// The kernel's lock owner.
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
    /// Shared, exclusive, or an unlock.
    pub kind: LockKind,
    /// The holder's process, for `F_GETLK` (meaningful on its own machine only).
    pub pid: u32,
}

/// The nameserver's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Attributes of the inode concerned.
    Attr(Attr),
    /// Attributes of the inode a mkdir, create, mknod or symlink made (or a create
    /// opened), and whether it has extended attributes (an ACL its parent passed on).
    Made { attr: Attr, xattrs: bool },
    /// No payload.
    Done,
    /// A symlink target.
    Target(Vec<u8>),
    /// Directory entries: name and attributes; `more` if the listing continues.
    /// `xattrs`: the entries' inodes that have extended attributes; the others have none
    /// (so that a client walking a tree need not ask each file for them).
    Entries {
        entries: Vec<(Name, Attr)>,
        more: bool,
        xattrs: Vec<Ino>,
    },
    /// Capacity figures.
    StatFs(StatFs),
    /// A file's layout.
    Layout(Layout),
    /// Where to upload a block.
    Placement(Placement),
    /// Cluster state.
    Status(ClusterStatus),
    /// Referenced blocks.
    Blocks { blocks: Vec<BlockInfo>, more: bool },
    /// Blocks the storage must delete.
    Delete(Vec<BlockId>),
    /// Work for a storage.
    Commands(Vec<Command>),
    /// An inode's extended attributes, by name.
    Xattrs(Vec<(Name, Vec<u8>)>),
    /// The answer to a [`Request::Raft`] message, encoded as its question.
    Raft { reply: Vec<u8> },
    /// The nameserver group.
    Group(GroupStatus),
    /// A session's report is recorded; renew it within this many milliseconds. `lost`:
    /// the session had lapsed (it was not renewed within its lease), and the locks it
    /// reported are gone: others may have taken them since.
    Lease { ms: u64, lost: bool },
    /// The conflicting lock, if any.
    Lock(Option<Lock>),
    /// The active storages.
    Storages(Vec<Location>),
}

/// Cluster-wide space, as `statfs` needs it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatFs {
    /// Sum of active storages' capacities, divided by the replication factor.
    pub capacity: u64,
    /// Free bytes for file data, after replication.
    pub free: u64,
    /// Number of inodes.
    pub inodes: u64,
    /// Cluster block size.
    pub block_size: u32,
}

/// A file's blocks and where their blobs are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    /// The file's attributes.
    pub attr: Attr,
    /// Cluster block size: block `i` covers bytes `i*block_size ..`.
    pub block_size: u32,
    /// The slices of block `i` of the file, oldest first (see [`crate::slices`]); an
    /// empty list is a hole that reads as zeros.
    pub blocks: Vec<Vec<Slice>>,
    /// Each blob the slices name, with the live storages holding it in preference order.
    pub locations: Vec<(BlockId, Vec<Location>)>,
}

/// Where to upload a new block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Placement {
    /// Upload to the first, which forwards along the rest (empty if `stored`).
    pub targets: Vec<Location>,
    /// The cluster already holds this block with enough replicas: no upload needed.
    pub stored: bool,
    /// Where the next block would go: a client may send a small one there while it asks
    /// for its placement, and name them in `prefer`.
    pub next: Vec<Location>,
}

/// What a storage is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageState {
    /// Registered, still reporting its blocks.
    Joining,
    /// Takes and serves blocks.
    Active,
    /// Missed its heartbeats; its blocks are being re-replicated.
    Down,
}

/// One storage as the nameserver sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StorageStatus {
    /// Name from its certificate.
    pub name: String,
    /// Advertised address.
    pub addr: std::net::SocketAddr,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Bytes used by blocks.
    pub used: u64,
    /// Of those, bytes of blocks no file references any more (reclaimed when needed).
    pub garbage: u64,
    /// Joining, active or down.
    pub state: StorageState,
    /// Number of blocks it holds.
    pub blocks: u64,
}

/// A member of the nameserver group, for `vgctl nameserver list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its number.
    pub id: u64,
    /// Its certificate's name.
    pub name: String,
    /// Where it listens.
    pub addr: String,
    /// `leader`, `follower` (a voter) or `learner` (catching up, not voting).
    pub role: String,
    /// One past the last log entry it is known to have (the leader's own log, or what
    /// it has replicated to the member); `None` if unknown.
    pub log: Option<u64>,
}

/// The nameserver group, as its leader sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The leader's term.
    pub term: u64,
    /// One past the last entry committed.
    pub committed: u64,
    /// Every member.
    pub members: Vec<MemberStatus>,
}

/// Cluster state for `vgctl status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every storage ever registered since the nameserver started.
    pub storages: Vec<StorageStatus>,
    /// Replication factor.
    pub replication: u32,
    /// Block size.
    pub block_size: u32,
    /// Number of inodes.
    pub inodes: u64,
    /// Number of distinct referenced blocks.
    pub blocks: u64,
    /// Referenced blocks with fewer live replicas than the target.
    pub under_replicated: u64,
    /// Referenced blocks with no live replica at all.
    pub missing: u64,
    /// Bytes held by blocks no file references any more (all copies), reclaimed after
    /// the grace period or as soon as a write needs the room.
    pub garbage: u64,
    /// Mount sessions holding files open.
    pub sessions: u64,
    /// Files those sessions hold open.
    pub open_files: u64,
    /// Files whose last name went while open, kept until their last close.
    pub orphans: u64,
    /// Byte-range and whole-file locks held.
    pub locks: u64,
    /// Lock requests waiting for one of them.
    pub lock_waiters: u64,
    /// Copies of under-replicated blocks under way (the re-replication backlog is
    /// `under_replicated`).
    pub replicating: u64,
    /// Last change appended to the write-ahead log.
    pub log_written: u64,
    /// Last change synced to disk.
    pub log_durable: u64,
    /// Syncs of the write-ahead log since the nameserver started.
    pub log_syncs: u64,
    /// Their total time, in seconds.
    pub log_sync_seconds: f64,
    /// Requests answered since the nameserver started, by operation.
    pub requests: Vec<OpTotals>,
}

/// Requests of one operation a server answered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OpTotals {
    /// The operation's name.
    pub op: String,
    /// How many were answered.
    pub answered: u64,
    /// Of those, how many were answered with an error.
    pub errors: u64,
    /// Their total time from arrival to answer, in seconds.
    pub seconds: f64,
}

/// A referenced block, for `fsck`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Its id.
    pub id: BlockId,
    /// Its length.
    pub len: u32,
    /// Live storages holding it.
    pub locations: Vec<Location>,
    /// How many copies it should have (min of R and active storages).
    pub wanted: u32,
}

/// Work the nameserver hands a storage in a heartbeat answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Fetch this block from one of `sources` and keep it.
    Replicate { id: BlockId, sources: Vec<Location> },
    /// Delete these blocks.
    Delete(Vec<BlockId>),
    /// Register again (the nameserver restarted or lost track of this storage).
    Reregister,
}

impl Operation for Request {
    fn name(&self) -> &'static str {
        use Request::*;
        match self {
            Lookup { .. } => "lookup",
            Resolve { .. } => "resolve",
            GetAttr { .. } => "getattr",
            SetAttr { .. } => "setattr",
            Mkdir { .. } => "mkdir",
            Create { .. } => "create",
            Mknod { .. } => "mknod",
            SetXattr { .. } => "setxattr",
            RemoveXattr { .. } => "removexattr",
            Xattrs { .. } => "xattrs",
            Symlink { .. } => "symlink",
            Readlink { .. } => "readlink",
            Link { .. } => "link",
            Unlink { .. } => "unlink",
            Rmdir { .. } => "rmdir",
            Rename { .. } => "rename",
            ReadDir { .. } => "readdir",
            StatFs => "statfs",
            Sync => "sync",
            Layout { .. } => "layout",
            PlaceBlock { .. } => "place_block",
            Commit { .. } => "commit",
            RacesStored { .. } => "races_stored",
            Compact { .. } => "compact",
            Status => "status",
            ListBlocks { .. } => "list_blocks",
            KeepBlocks { .. } => "keep_blocks",
            Register { .. } => "register",
            Report { .. } => "report",
            Activate => "activate",
            Heartbeat { .. } => "heartbeat",
            Session { .. } => "session",
            Lock { .. } => "lock",
            TestLock { .. } => "test_lock",
            Once { request, .. } => request.name(),
            Raft { .. } => "raft",
            Group => "group",
            AddMember { .. } => "add_member",
            RemoveMember { .. } => "remove_member",
            Storages => "storages",
        }
    }

    /// Storages register, report and heartbeat; group members talk Raft and ask where
    /// storages are; everything else is a client's.
    fn role(&self) -> Option<Role> {
        use Request::*;
        match self {
            Register { .. } | Report { .. } | Activate | Heartbeat { .. } => Some(Role::Storage),
            Once { request, .. } => request.role(),
            Raft { .. } | Storages => Some(Role::Nameserver),
            _ => Some(Role::Client),
        }
    }
}
