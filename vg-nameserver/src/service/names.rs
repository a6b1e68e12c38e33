//! The namespace's operations: lookups, listings, and changes to names, attributes and
//! extended attributes.

use vg_wire::error::ErrorCode;
use vg_wire::ns::{Name, Response};
use vg_wire::xattr::SetMode;
use vg_wire::{FileKind, Ino, SetAttr, SetTime, Timestamp};

use super::{Answer, Service};
use crate::error::refuse;
use crate::namespace::{Content, Op};

/// How a new inode is made: its permission bits, the umask of the process making it
/// (applied unless a default ACL replaces it), and its owner.
pub(super) struct Making {
    pub perm: u32,
    pub umask: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Service {
    pub(super) fn lookup(&self, parent: Ino, name: &[u8]) -> Answer {
        self.read(|ns| {
            Ok(Response::Attr(
                ns.get(ns.lookup(parent, name)?)?.attr.clone(),
            ))
        })
    }

    pub(super) fn resolve(&self, path: &str) -> Answer {
        self.read(|ns| Ok(Response::Attr(ns.get(ns.resolve(path)?)?.attr.clone())))
    }

    pub(super) fn get_attr(&self, ino: Ino) -> Answer {
        self.read(|ns| Ok(Response::Attr(ns.get(ino)?.attr.clone())))
    }

    /// Answers a make with the inode's attributes and whether it has extended attributes
    /// (an ACL its parent's default ACL gave it), so that the client need not ask.
    pub(super) fn made(&self, answer: Answer) -> Answer {
        match answer? {
            Response::Attr(attr) => self.read(|ns| {
                let xattrs = ns.has_xattrs(attr.ino);
                Ok(Response::Made { attr, xattrs })
            }),
            other => Ok(other),
        }
    }

    pub(super) fn readlink(&self, ino: Ino) -> Answer {
        self.read(|ns| match &ns.get(ino)?.content {
            Content::Symlink { target } => Ok(Response::Target(target.clone())),
            _ => refuse(
                ErrorCode::Invalid,
                format!("inode {ino}: not a symbolic link"),
            ),
        })
    }

    pub(super) fn read_dir(&self, ino: Ino, offset: u64, limit: u32) -> Answer {
        self.read(|ns| {
            let (entries, more) =
                ns.read_dir(ino, offset, limit.clamp(1, vg_wire::ns::MAX_PAGE))?;
            let xattrs = entries
                .iter()
                .map(|(_, attr)| attr.ino)
                .filter(|ino| ns.has_xattrs(*ino))
                .collect();
            Ok(Response::Entries {
                entries,
                more,
                xattrs,
            })
        })
    }

    pub(super) fn xattrs(&self, ino: Ino) -> Answer {
        self.read(|ns| Ok(Response::Xattrs(ns.xattrs(ino)?)))
    }

    pub(super) async fn mkdir(
        &self,
        parent: Ino,
        name: Name,
        how: Making,
        now: Timestamp,
    ) -> Answer {
        self.mutate(|ns| Op::Mkdir {
            parent,
            name,
            ino: ns.next_ino(),
            perm: ns.creation_perm(parent, how.perm, how.umask),
            uid: how.uid,
            gid: how.gid,
            time: now,
        })
        .await
    }

    pub(super) async fn mknod(
        &self,
        parent: Ino,
        name: Name,
        kind: FileKind,
        how: Making,
        now: Timestamp,
    ) -> Answer {
        self.mutate(|ns| Op::Mknod {
            parent,
            name,
            ino: ns.next_ino(),
            kind,
            perm: ns.creation_perm(parent, how.perm, how.umask),
            uid: how.uid,
            gid: how.gid,
            time: now,
        })
        .await
    }

    /// Makes an empty file; without `exclusive` an existing regular file is opened,
    /// whoever made it.
    pub(super) async fn create(
        &self,
        parent: Ino,
        name: Name,
        how: Making,
        exclusive: bool,
        now: Timestamp,
    ) -> Answer {
        let lookup_name = name.clone();
        let created = self
            .mutate(|ns| Op::Create {
                parent,
                name,
                ino: ns.next_ino(),
                perm: ns.creation_perm(parent, how.perm, how.umask),
                uid: how.uid,
                gid: how.gid,
                time: now,
            })
            .await;
        match created {
            Err(e) if e.code == ErrorCode::Exists && !exclusive => self.read(|ns| {
                let attr = &ns.get(ns.lookup(parent, &lookup_name)?)?.attr;
                if attr.kind != FileKind::File {
                    let shown = String::from_utf8_lossy(&lookup_name);
                    return refuse(ErrorCode::IsDir, format!("{shown}: Is a directory"));
                }
                Ok(Response::Attr(attr.clone()))
            }),
            other => other,
        }
    }

    pub(super) async fn symlink(
        &self,
        parent: Ino,
        name: Name,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
        now: Timestamp,
    ) -> Answer {
        self.mutate(|ns| Op::Symlink {
            parent,
            name,
            ino: ns.next_ino(),
            target,
            uid,
            gid,
            time: now,
        })
        .await
    }

    pub(super) async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: Name,
        now: Timestamp,
    ) -> Answer {
        self.mutate(|_| Op::Link {
            ino,
            new_parent,
            new_name,
            time: now,
        })
        .await
    }

    /// Answers with the attributes of a file that lives on (other names, or pinned).
    pub(super) async fn unlink(&self, parent: Ino, name: Name, now: Timestamp) -> Answer {
        self.mutate(|_| Op::Unlink {
            parent,
            name,
            time: now,
        })
        .await
    }

    pub(super) async fn rmdir(&self, parent: Ino, name: Name, now: Timestamp) -> Answer {
        self.mutate(|_| Op::Rmdir {
            parent,
            name,
            time: now,
        })
        .await
        .map(|_| Response::Done)
    }

    pub(super) async fn rename(
        &self,
        parent: Ino,
        name: Name,
        new_parent: Ino,
        new_name: Name,
        noreplace: bool,
        now: Timestamp,
    ) -> Answer {
        self.mutate(|_| Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            noreplace,
            time: now,
        })
        .await
    }

    pub(super) async fn set_attr(&self, ino: Ino, set: SetAttr, now: Timestamp) -> Answer {
        self.mutate(|_| self.set_attr_op(ino, set, now)).await
    }

    /// A `SetAttr` op with "now" resolved to the request's time.
    pub(super) fn set_attr_op(&self, ino: Ino, mut set: SetAttr, now: Timestamp) -> Op {
        for time in [&mut set.atime, &mut set.mtime].into_iter().flatten() {
            if *time == SetTime::Now {
                *time = SetTime::At(now);
            }
        }
        Op::SetAttr {
            ino,
            set,
            block_size: self.block_size,
            time: now,
        }
    }

    pub(super) async fn set_xattr(
        &self,
        ino: Ino,
        name: Name,
        value: Vec<u8>,
        mode: SetMode,
        now: Timestamp,
    ) -> Answer {
        self.mutate(|_| Op::SetXattr {
            ino,
            name,
            value,
            mode,
            time: now,
        })
        .await
    }

    pub(super) async fn remove_xattr(&self, ino: Ino, name: Name, now: Timestamp) -> Answer {
        self.mutate(|_| Op::RemoveXattr {
            ino,
            name,
            time: now,
        })
        .await
    }
}
