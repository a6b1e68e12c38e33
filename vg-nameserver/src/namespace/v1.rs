//! The namespace as older snapshots hold it, read once at the first start after an
//! upgrade; the next snapshot is written in the current format. Releases before slices
//! (`vgsnap01`): a file's block `i` was one whole blob or a hole. Releases before extended
//! attributes (`vgsnap02`): the namespace without them. Releases before open-but-unlinked
//! files (`vgsnap03`): the namespace without pinned inodes. Releases before numbered
//! changes (`vgsnap04`): the namespace without the changes clients numbered.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;
use vg_wire::ns::Name;
use vg_wire::{Attr, BlockRef, Ino, Slice};

use super::{Content, Inode, Namespace};

/// What an inode held.
#[derive(Deserialize)]
enum ContentV1 {
    Dir {
        entries: BTreeMap<Name, Ino>,
        parent: Ino,
    },
    /// `len` of a block was how many of its bytes belonged to the file.
    File {
        blocks: Vec<Option<BlockRef>>,
    },
    Symlink {
        target: Vec<u8>,
    },
}

#[derive(Deserialize)]
struct InodeV1 {
    attr: Attr,
    content: ContentV1,
}

/// The namespace of a `vgsnap01` snapshot (the derived fields were never stored).
#[derive(Deserialize)]
pub struct NamespaceV1 {
    inodes: HashMap<Ino, Box<InodeV1>>,
    next_ino: Ino,
}

impl From<NamespaceV1> for Namespace {
    fn from(old: NamespaceV1) -> Self {
        let inodes = old
            .inodes
            .into_iter()
            .map(|(ino, inode)| {
                let content = match inode.content {
                    ContentV1::Dir { entries, parent } => Content::Dir { entries, parent },
                    ContentV1::Symlink { target } => Content::Symlink { target },
                    ContentV1::File { blocks } => Content::File {
                        blocks: blocks
                            .into_iter()
                            .map(|block| {
                                block
                                    .filter(|b| b.len > 0)
                                    .map(|b| Slice {
                                        at: 0,
                                        len: b.len,
                                        blob: b.id,
                                        blob_off: 0,
                                    })
                                    .into_iter()
                                    .collect()
                            })
                            .collect(),
                    },
                };
                let inode = Inode {
                    attr: inode.attr,
                    content,
                };
                (ino, Box::new(inode))
            })
            .collect();
        Namespace::from_inodes(inodes, old.next_ino)
    }
}

/// The namespace of a `vgsnap02` snapshot: the current one without extended attributes.
#[derive(Deserialize)]
pub struct NamespaceV2 {
    inodes: HashMap<Ino, Box<Inode>>,
    next_ino: Ino,
}

impl From<NamespaceV2> for Namespace {
    fn from(old: NamespaceV2) -> Self {
        Namespace::from_inodes(old.inodes, old.next_ino)
    }
}

/// The namespace of a `vgsnap03` snapshot: the current one without pinned inodes.
#[derive(Deserialize)]
pub struct NamespaceV3 {
    inodes: HashMap<Ino, Box<Inode>>,
    next_ino: Ino,
    xattrs: HashMap<Ino, BTreeMap<Name, Vec<u8>>>,
}

impl From<NamespaceV3> for Namespace {
    fn from(old: NamespaceV3) -> Self {
        let mut ns = Namespace::from_inodes(old.inodes, old.next_ino);
        ns.xattrs = old.xattrs;
        ns
    }
}

/// The namespace of a `vgsnap04` snapshot: the current one without numbered changes.
#[derive(Deserialize)]
pub struct NamespaceV4 {
    inodes: HashMap<Ino, Box<Inode>>,
    next_ino: Ino,
    xattrs: HashMap<Ino, BTreeMap<Name, Vec<u8>>>,
    pinned: BTreeSet<Ino>,
}

impl From<NamespaceV4> for Namespace {
    fn from(old: NamespaceV4) -> Self {
        let mut ns = Namespace::from_inodes(old.inodes, old.next_ino);
        ns.xattrs = old.xattrs;
        ns.pinned = old.pinned;
        ns
    }
}

/// The `vgsnap04` payload of a namespace (for tests of the conversion).
#[cfg(test)]
pub fn encode_v4(lsn: u64, ns: &Namespace) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct V4<'a> {
        inodes: &'a HashMap<Ino, Box<Inode>>,
        next_ino: Ino,
        xattrs: &'a HashMap<Ino, BTreeMap<Name, Vec<u8>>>,
        pinned: &'a BTreeSet<Ino>,
    }
    let v4 = V4 {
        inodes: &ns.inodes,
        next_ino: ns.next_ino,
        xattrs: &ns.xattrs,
        pinned: &ns.pinned,
    };
    vg_wire::codec::to_bytes(&(lsn, v4)).expect("encodes")
}

/// The `vgsnap03` payload of a namespace (for tests of the conversion).
#[cfg(test)]
pub fn encode_v3(lsn: u64, ns: &Namespace) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct V3<'a> {
        inodes: &'a HashMap<Ino, Box<Inode>>,
        next_ino: Ino,
        xattrs: &'a HashMap<Ino, BTreeMap<Name, Vec<u8>>>,
    }
    let v3 = V3 {
        inodes: &ns.inodes,
        next_ino: ns.next_ino,
        xattrs: &ns.xattrs,
    };
    vg_wire::codec::to_bytes(&(lsn, v3)).expect("encodes")
}

/// The `vgsnap02` payload of a namespace (for tests of the conversion).
#[cfg(test)]
pub fn encode_v2(lsn: u64, ns: &Namespace) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct V2<'a> {
        inodes: &'a HashMap<Ino, Box<Inode>>,
        next_ino: Ino,
    }
    let v2 = V2 {
        inodes: &ns.inodes,
        next_ino: ns.next_ino,
    };
    vg_wire::codec::to_bytes(&(lsn, v2)).expect("encodes")
}
