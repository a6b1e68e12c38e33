//! POSIX ACLs, kept as the kernel passes them: the extended attributes
//! `system.posix_acl_access` and `system.posix_acl_default`, in Linux's xattr format
//! (a version word, then 8-byte entries). The kernel enforces them; the nameserver keeps
//! them and the mode in step (a set ACL moves the mode, a chmod moves the ACL) and hands
//! a directory's default ACL to what is made in it, as ext4 does.

use vg_wire::error::{ErrorCode, RemoteError};
pub use vg_wire::xattr::{ACL_ACCESS as ACCESS, ACL_DEFAULT as DEFAULT};

/// The xattr format's version word (`POSIX_ACL_XATTR_VERSION`).
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
/// Most entries one ACL may have: the kernel reads an ACL into one page.
const MAX_ENTRIES: usize = (4096 - 4) / 8;

/// One entry: whom it names (`tag`, and `id` for a named user or group) and its
/// read/write/execute bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Parses and checks an ACL attribute's value as the kernel does: one owner, owning
    /// group and other entry each, a mask if any named entry is there, bits within rwx.
    pub fn parse(value: &[u8]) -> Result<Acl, RemoteError> {
        let bad = |why: &str| RemoteError::new(ErrorCode::Invalid, format!("POSIX ACL: {why}"));
        let (head, body) = value
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("shorter than its version word"))?;
        if u32::from_le_bytes(*head) != VERSION {
            return Err(bad("not version 2"));
        }
        if body.len() % 8 != 0 || body.len() / 8 > MAX_ENTRIES {
            return Err(bad(&format!("{} bytes of entries", body.len())));
        }
        let entries: Vec<Entry> = body
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        if entries.iter().any(|e| e.perm > 7) {
            return Err(bad("permission bits beyond rwx"));
        }
        if let Some(e) = entries
            .iter()
            .find(|e| ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag))
        {
            return Err(bad(&format!("unknown entry tag {:#x}", e.tag)));
        }
        if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 {
            return Err(bad("needs exactly one owner, owning group and other entry"));
        }
        let named = count(USER) + count(GROUP);
        if count(MASK) > 1 || (named > 0 && count(MASK) == 0) {
            return Err(bad("needs one mask entry when it names users or groups"));
        }
        Ok(Acl { entries })
    }

    /// The attribute value of this ACL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// Whether the ACL says no more than a mode does (owner, owning group, other).
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The mode's permission bits this ACL implies: the group bits are the mask's when
    /// there is one (`posix_acl_equiv_mode`).
    pub fn mode(&self) -> u32 {
        let perm = |tag| self.entry(tag).map_or(0, |e| u32::from(e.perm));
        let group = match self.entry(MASK) {
            Some(mask) => u32::from(mask.perm),
            None => perm(GROUP_OBJ),
        };
        perm(USER_OBJ) << 6 | group << 3 | perm(OTHER)
    }

    /// Follows a chmod: owner, mask (or owning group) and other take the mode's bits
    /// (`posix_acl_chmod`).
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.entry(MASK).is_some();
        for e in &mut self.entries {
            match e.tag {
                USER_OBJ => e.perm = (mode >> 6 & 7) as u16,
                MASK => e.perm = (mode >> 3 & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = (mode >> 3 & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                _ => {}
            }
        }
    }

    /// Turns a parent's default ACL into the access ACL of an inode made with `mode`:
    /// each class keeps only what both allow (`posix_acl_create`); returns the mode's
    /// permission bits that result (the umask is not applied: the ACL replaces it).
    pub fn inherit(&mut self, mode: u32) -> u32 {
        let has_mask = self.entry(MASK).is_some();
        for e in &mut self.entries {
            let allowed = match e.tag {
                USER_OBJ => mode >> 6 & 7,
                MASK => mode >> 3 & 7,
                GROUP_OBJ if !has_mask => mode >> 3 & 7,
                OTHER => mode & 7,
                _ => 7,
            };
            e.perm &= allowed as u16;
        }
        self.mode()
    }

    fn entry(&self, tag: u16) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }
}

/// The attribute value of an ACL of (tag, perm, id) entries, for tests.
#[cfg(test)]
pub fn value_of(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    tests::acl(entries).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    #[test]
    fn parse_round_trips_and_refuses_what_the_kernel_would() {
        let named = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::parse(&named.encode()).unwrap(), named);
        let code = |value: &[u8]| Acl::parse(value).unwrap_err().code;
        assert_eq!(code(b""), ErrorCode::Invalid);
        assert_eq!(code(&[1, 0, 0, 0]), ErrorCode::Invalid);
        let mut odd = named.encode();
        odd.push(0);
        assert_eq!(code(&odd), ErrorCode::Invalid);
        // A named user without a mask, a missing "other", bits beyond rwx.
        let no_mask = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 9),
            (GROUP_OBJ, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(code(&no_mask.encode()), ErrorCode::Invalid);
        assert_eq!(
            code(&acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0)]).encode()),
            ErrorCode::Invalid
        );
        assert_eq!(
            code(&acl(&[(USER_OBJ, 8, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]).encode()),
            ErrorCode::Invalid
        );
    }

    #[test]
    fn mode_chmod_and_inheritance_follow_the_mask() {
        let mut a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 6, 0),
            (OTHER, 4, 0),
        ]);
        assert!(!a.is_minimal());
        // The group bits shown are the mask's.
        assert_eq!(a.mode(), 0o764);
        a.chmod(0o750);
        assert_eq!(a.mode(), 0o750);
        assert_eq!(
            a.entry(GROUP_OBJ).unwrap().perm,
            5,
            "the owning group keeps its bits"
        );
        assert_eq!(
            a.entry(USER).unwrap().perm,
            7,
            "named entries stay; the mask limits them"
        );

        let minimal = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        assert!(minimal.is_minimal());
        assert_eq!(minimal.mode(), 0o644);

        // A file made with 0666 under a default ACL of rwx, named rwx, mask rwx, other r-x.
        let mut default = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        assert_eq!(default.inherit(0o666), 0o664);
        assert_eq!(default.entry(USER).unwrap().perm, 7);
        assert_eq!(default.entry(MASK).unwrap().perm, 6);
        assert_eq!(default.entry(OTHER).unwrap().perm, 4);
    }
}
