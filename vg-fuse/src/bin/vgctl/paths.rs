//! vgctl's paths: the cluster's are absolute strings, joined onto a working directory.

use std::path::Path;

/// Splits an absolute path into its parent path and final name.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some((if parent.is_empty() { "/" } else { parent }, name))
}

/// Joins `path` onto the absolute directory `cwd` and normalises `.` and `..`.
pub fn absolute(cwd: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{cwd}/{path}")
    };
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The file name of a local path, for `put` into a directory.
pub fn local_name(path: &Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(absolute("/a/b", "../c/./d"), "/a/c/d");
        assert_eq!(absolute("/a", "/x//y/"), "/x/y");
        assert_eq!(absolute("/", ".."), "/");
        assert_eq!(split_path("/a/b"), Some(("/a", "b")));
        assert_eq!(split_path("/a"), Some(("/", "a")));
        assert_eq!(split_path("/"), None);
    }
}
