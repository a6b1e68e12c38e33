//! Extended attributes: which names vg keeps, and the limits on them. The nameserver
//! enforces these; the mount checks them first to answer without a round trip.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, RemoteError};
use crate::types::FileKind;

/// Longest attribute name, in bytes (Linux's `XATTR_NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Largest attribute value, in bytes (Linux's `XATTR_SIZE_MAX`).
pub const MAX_VALUE: usize = 64 << 10;
/// Most bytes of names and values one inode holds: attributes live in the nameserver's
/// memory, so a file cannot carry megabytes of them.
pub const MAX_TOTAL: usize = 256 << 10;
/// The namespaces kept whole; of `system.`, only the POSIX ACLs below.
const NAMESPACES: [&str; 3] = ["user.", "trusted.", "security."];
/// A POSIX ACL's access attribute (the kernel enforces it; the nameserver keeps the
/// mode in step with it).
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// A directory's default ACL, handed to what is made in it.
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// What a set may do to an existing attribute (`setxattr`'s flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetMode {
    /// Create it or replace it.
    Either,
    /// Fail with `Exists` if it exists (`XATTR_CREATE`).
    Create,
    /// Fail with `NoAttr` if it does not (`XATTR_REPLACE`).
    Replace,
}

/// Checks an attribute name for an inode of `kind`: 1..=255 bytes in a kept namespace;
/// `user.` attributes only on files and directories, as Linux allows.
pub fn check_name(name: &[u8], kind: FileKind) -> Result<(), RemoteError> {
    let shown = String::from_utf8_lossy(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(RemoteError::new(
            ErrorCode::NameTooLong,
            format!(
                "attribute name {shown:?}: {} bytes, 1..={MAX_NAME}",
                name.len()
            ),
        ));
    }
    let acl = name == ACL_ACCESS || name == ACL_DEFAULT;
    if !acl && !NAMESPACES.iter().any(|ns| name.starts_with(ns.as_bytes())) {
        return Err(RemoteError::new(
            ErrorCode::NotSupported,
            format!(
                "attribute {shown}: vg keeps user., trusted., security. attributes and POSIX ACLs"
            ),
        ));
    }
    if acl && kind == FileKind::Symlink {
        return Err(RemoteError::new(
            ErrorCode::NotSupported,
            format!("attribute {shown}: symbolic links have no ACL"),
        ));
    }
    if name.starts_with(b"user.") && !matches!(kind, FileKind::File | FileKind::Dir) {
        return Err(RemoteError::new(
            ErrorCode::Forbidden,
            format!("attribute {shown}: user. attributes belong on files and directories"),
        ));
    }
    Ok(())
}

/// Checks a value's length.
pub fn check_value(name: &[u8], value: &[u8]) -> Result<(), RemoteError> {
    if value.len() > MAX_VALUE {
        return Err(RemoteError::new(
            ErrorCode::TooBig,
            format!(
                "attribute {}: value of {} bytes, at most {MAX_VALUE}",
                String::from_utf8_lossy(name),
                value.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        assert!(check_name(b"user.a", FileKind::File).is_ok());
        assert!(check_name(b"security.capability", FileKind::Symlink).is_ok());
        let code = |r: Result<(), RemoteError>| r.unwrap_err().code;
        assert!(check_name(ACL_ACCESS, FileKind::File).is_ok());
        assert!(check_name(ACL_DEFAULT, FileKind::Dir).is_ok());
        assert_eq!(
            code(check_name(ACL_ACCESS, FileKind::Symlink)),
            ErrorCode::NotSupported
        );
        assert_eq!(
            code(check_name(b"system.other", FileKind::File)),
            ErrorCode::NotSupported
        );
        assert_eq!(
            code(check_name(b"user.a", FileKind::Symlink)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(check_name(b"", FileKind::File)),
            ErrorCode::NameTooLong
        );
        assert_eq!(
            code(check_name(&[b'u'; 256], FileKind::File)),
            ErrorCode::NameTooLong
        );
        assert!(check_value(b"user.a", &[0; MAX_VALUE]).is_ok());
        assert_eq!(
            code(check_value(b"user.a", &[0; MAX_VALUE + 1])),
            ErrorCode::TooBig
        );
    }
}
