//! The metadata directory as releases before the Raft log wrote it, read once to convert
//! it: a `wal` file of `(lsn, Op)` records (with marks since stop 18) and a snapshot of
//! format `vgsnap01` to `vgsnap05`, holding `(lsn, Namespace)`.

use std::path::Path;

use tracing::{info, warn};

use super::{io_err, parse_frames, Recovery};
use crate::error::Result;
use crate::namespace::{Namespace, NamespaceV1, NamespaceV2, NamespaceV3, NamespaceV4, Op};

/// The snapshot format of releases before the Raft log.
pub(super) const SNAPSHOT_MAGIC_V5: &[u8; 8] = b"vgsnap05";
/// The snapshot format of releases before slices.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"vgsnap01";
/// The snapshot format of releases before extended attributes.
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"vgsnap02";
/// The snapshot format of releases before open-but-unlinked files.
const SNAPSHOT_MAGIC_V3: &[u8; 8] = b"vgsnap03";
/// The snapshot format of releases before numbered changes.
const SNAPSHOT_MAGIC_V4: &[u8; 8] = b"vgsnap04";

/// Every legacy snapshot magic.
pub(super) const MAGICS: [&[u8; 8]; 5] = [
    SNAPSHOT_MAGIC_V1,
    SNAPSHOT_MAGIC_V2,
    SNAPSHOT_MAGIC_V3,
    SNAPSHOT_MAGIC_V4,
    SNAPSHOT_MAGIC_V5,
];

/// Reads a snapshot payload of the format before `feature` and converts it.
fn convert<T: serde::de::DeserializeOwned + Into<Namespace>>(
    payload: &[u8],
    feature: &str,
) -> std::result::Result<(u64, Namespace), String> {
    let (lsn, old): (u64, T) =
        vg_wire::codec::from_file_bytes(payload).map_err(|e| e.to_string())?;
    info!(
        lsn,
        "snapshot of the format before {feature} read; converted"
    );
    Ok((lsn, old.into()))
}

/// Decodes a legacy snapshot's payload (checked already) by its magic.
pub(super) fn decode_snapshot(
    magic: &[u8],
    payload: &[u8],
) -> std::result::Result<(u64, Namespace), String> {
    match magic {
        m if m == SNAPSHOT_MAGIC_V1 => convert::<NamespaceV1>(payload, "slices"),
        m if m == SNAPSHOT_MAGIC_V2 => convert::<NamespaceV2>(payload, "extended attributes"),
        m if m == SNAPSHOT_MAGIC_V3 => convert::<NamespaceV3>(payload, "pinned inodes"),
        m if m == SNAPSHOT_MAGIC_V4 => convert::<NamespaceV4>(payload, "numbered changes"),
        _ => vg_wire::codec::from_file_bytes(payload).map_err(|e| e.to_string()),
    }
}

/// Replays the legacy `wal` file at `path` onto `ns` (the snapshot's, taken at
/// `snapshot_lsn`), as the releases that wrote it did: after a reboot since its last mark,
/// only what that mark covers.
pub(super) fn replay(
    path: &Path,
    ns: &mut Namespace,
    boot: [u8; 16],
    recovery: &mut Recovery,
) -> Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let (frames, valid) = parse_frames(&bytes);
    let records: Vec<(u64, Op)> = frames
        .into_iter()
        .map_while(|(payload, _)| vg_wire::codec::from_bytes(payload).ok())
        .collect();
    let marks: Vec<(u64, [u8; 16])> = records
        .iter()
        .filter_map(|(lsn, op)| match op {
            Op::Mark { boot } => Some((*lsn, *boot)),
            _ => None,
        })
        .collect();
    // A log without marks was written before them: every record stands.
    let keep_upto = match marks.last() {
        Some((_, written_in)) if *written_in != boot => {
            marks.iter().map(|(upto, _)| *upto).max().unwrap_or(0)
        }
        _ => u64::MAX,
    };
    for (lsn, op) in &records {
        if matches!(op, Op::Mark { .. }) || *lsn <= recovery.snapshot_lsn {
            continue;
        }
        if *lsn > keep_upto {
            recovery.unmarked += 1;
            continue;
        }
        if let Err(e) = ns.apply(op) {
            warn!(lsn, error = %e, "replayed operation refused");
        }
        recovery.replayed += 1;
    }
    recovery.dropped_bytes = bytes[valid..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1);
    ns.take_released();
    Ok(())
}

/// Whether `dir` holds metadata in a legacy format (a `wal` file or an old snapshot).
pub(super) fn present(dir: &Path, snapshot_magic: Option<&[u8]>) -> Result<bool> {
    let old_snapshot = snapshot_magic.is_some_and(|m| MAGICS.iter().any(|old| m == *old));
    let wal = dir.join("wal");
    let old_log = match std::fs::metadata(&wal) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(format!("stat {}", wal.display()))(e)),
    };
    Ok(old_snapshot || old_log)
}

/// A legacy log's record, as those releases encoded it (for tests of the conversion).
#[cfg(test)]
pub(super) fn encode_record(lsn: u64, op: &Op) -> Vec<u8> {
    super::frame(&vg_wire::codec::to_bytes(&(lsn, op)).unwrap())
}
