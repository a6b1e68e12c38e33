//! What a file block's slice list means: the one rule for which bytes a reader sees.
//!
//! Block `i` of a file is a list of [`Slice`]s, oldest first; each maps a byte range of
//! the block to a range of an immutable blob, and a newer slice hides what it overlaps of
//! older ones. Bytes no slice covers read as zeros. The nameserver uses these functions
//! to keep lists short (dropping slices that newer ones hide whole, trimming at a
//! truncate) and the client to plan reads; both must agree, so they live here.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::types::BlockId;

/// `len` bytes at offset `at` of a file block, stored at `blob_off` of blob `blob`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slice {
    /// Offset inside the block.
    pub at: u32,
    /// Length in bytes (never zero in a stored list).
    pub len: u32,
    /// The blob holding the bytes.
    pub blob: BlockId,
    /// Offset of the first byte inside the blob.
    pub blob_off: u32,
}

impl Slice {
    /// The range of the block it covers.
    pub fn range(&self) -> Range<u32> {
        self.at..self.at + self.len
    }
}

/// Most slices a block may have. Clients compact long before this; the bound keeps one
/// block's list, and the work of planning a read over it, small whatever a peer sends.
pub const MAX_SLICES: usize = 4096;

/// A list this long is compacted, and so is one whose slices reference more than twice
/// the bytes it shows. Rewriting a 4 MiB block costs 4 MiB on each of R storages, so it
/// pays only once much has piled up: 1,024 slices of 4 KiB (a whole block's worth of
/// hidden bytes) cost one byte of rewrite per byte written, per copy. Random 4 KiB
/// fsync'd writes (fsbench phase g, one run each, same hour): 270 to 312 IOPS and 9.2
/// to 9.5 bytes on disk per byte written at 512 slices and 1.5 times; 420 to 477 IOPS
/// and 8.6 at these.
pub const COMPACT_SLICES: usize = 1024;

/// At a file's last close a list this long is compacted.
pub const CLOSE_SLICES: usize = 16;

/// A part of a wanted range as a reader sees it: `source` is the layer that shows there
/// and the offset of `range.start` inside that layer, or `None` for zeros.
pub type Segment<T> = (Range<u32>, Option<(T, u32)>);

/// Paints `layers` (oldest first; each a range of the block and a source) over `want`,
/// and returns `want` cut into segments in order, each showing its newest layer.
pub fn overlay<T: Clone>(
    layers: impl IntoIterator<Item = (Range<u32>, T)>,
    want: Range<u32>,
) -> Vec<Segment<T>> {
    let mut segments: Vec<Segment<T>> = vec![(want.clone(), None)];
    if want.is_empty() {
        return Vec::new();
    }
    for (range, source) in layers {
        let start = range.start.max(want.start);
        let end = range.end.min(want.end);
        if start >= end {
            continue;
        }
        let mut painted = Vec::with_capacity(segments.len() + 2);
        let mut placed = false;
        for (seg, src) in segments {
            if seg.end <= start || seg.start >= end {
                painted.push((seg, src));
                continue;
            }
            if seg.start < start {
                painted.push((seg.start..start, src.clone()));
            }
            if !placed {
                painted.push((start..end, Some((source.clone(), start - range.start))));
                placed = true;
            }
            if seg.end > end {
                let shift = end - seg.start;
                painted.push((end..seg.end, src.map(|(s, off)| (s, off + shift))));
            }
        }
        segments = painted;
    }
    segments
}

/// A part of a block as stored slices show it: the blob and the offset in it of the
/// part's first byte, or `None` for zeros.
pub type BlobSegment = Segment<BlockId>;

/// What `slices` show over `want`: each segment with the blob behind it and the offset
/// of its first byte inside that blob.
pub fn resolve(slices: &[Slice], want: Range<u32>) -> Vec<BlobSegment> {
    overlay(slices.iter().map(|s| (s.range(), *s)), want)
        .into_iter()
        .map(|(range, src)| (range, src.map(|(s, off)| (s.blob, s.blob_off + off))))
        .collect()
}

/// Sorted, merged ranges.
fn merge(mut ranges: Vec<Range<u32>>) -> Vec<Range<u32>> {
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u32>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Adds `range` to sorted, disjoint `ranges`, merging those it overlaps or touches.
fn insert_range(ranges: &mut Vec<Range<u32>>, range: Range<u32>) {
    let first = ranges.partition_point(|r| r.end < range.start);
    let last = ranges.partition_point(|r| r.start <= range.end);
    if first == last {
        ranges.insert(first, range);
        return;
    }
    let merged = ranges[first].start.min(range.start)..ranges[last - 1].end.max(range.end);
    ranges.splice(first..last, [merged]);
}

fn covers(merged: &[Range<u32>], range: &Range<u32>) -> bool {
    let i = merged.partition_point(|r| r.end < range.end);
    merged
        .get(i)
        .is_some_and(|r| r.start <= range.start && r.end >= range.end)
}

/// Drops the slices that newer ones hide whole and returns them (their blobs lose a
/// reference). What readers see does not change.
pub fn drop_hidden(slices: &mut Vec<Slice>) -> Vec<Slice> {
    // What newer slices cover, as sorted disjoint ranges: a commit runs this over lists
    // of hundreds of slices, so each slice costs a binary search, not a sort.
    let mut seen: Vec<Range<u32>> = Vec::new();
    let mut hidden = vec![false; slices.len()];
    for (i, slice) in slices.iter().enumerate().rev() {
        if covers(&seen, &slice.range()) {
            hidden[i] = true;
        } else {
            insert_range(&mut seen, slice.range());
        }
    }
    let mut dropped = Vec::new();
    let mut i = 0;
    slices.retain(|s| {
        let keep = !hidden[i];
        i += 1;
        if !keep {
            dropped.push(*s);
        }
        keep
    });
    dropped
}

/// Clips the slices to the first `end` bytes of the block (a truncate) and returns those
/// dropped whole. Bytes past `end` then read as zeros if the file grows again.
pub fn trim(slices: &mut Vec<Slice>, end: u32) -> Vec<Slice> {
    let mut dropped = Vec::new();
    slices.retain_mut(|s| {
        if s.at >= end {
            dropped.push(*s);
            return false;
        }
        s.len = s.len.min(end - s.at);
        true
    });
    dropped
}

/// Bytes readers see (covered by some slice) and bytes the slices reference in total.
pub fn usage(slices: &[Slice]) -> (u64, u64) {
    let visible = merge(slices.iter().map(Slice::range).collect())
        .iter()
        .map(|r| (r.end - r.start) as u64)
        .sum();
    let referenced = slices.iter().map(|s| s.len as u64).sum();
    (visible, referenced)
}

/// Whether a block's list should be rewritten as one blob: too many slices to read
/// quickly, or too many referenced bytes hidden (space the cluster holds for nothing).
/// At a file's last close (`closing`) the bar is lower: the file is likely done with,
/// and what it leaves behind is what the cluster keeps.
pub fn wants_compaction(slices: &[Slice], closing: bool) -> bool {
    let (max_slices, max_ratio) = if closing {
        (CLOSE_SLICES, 1.25)
    } else {
        (COMPACT_SLICES, 2.0)
    };
    if slices.len() >= max_slices {
        return true;
    }
    if slices.len() < 2 {
        return false;
    }
    let (visible, referenced) = usage(slices);
    referenced as f64 > visible as f64 * max_ratio
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8) -> BlockId {
        BlockId([n; 32])
    }

    fn slice(at: u32, len: u32, n: u8) -> Slice {
        Slice {
            at,
            len,
            blob: blob(n),
            blob_off: 0,
        }
    }

    /// The bytes a list shows, as a plain model: blob `n`'s byte `k` is `n + k` (mod 256).
    fn model(slices: &[Slice], size: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; size as usize];
        for s in slices {
            for k in 0..s.len {
                if let Some(b) = bytes.get_mut((s.at + k) as usize) {
                    *b = s.blob.0[0].wrapping_add((s.blob_off + k) as u8);
                }
            }
        }
        bytes
    }

    fn shown(slices: &[Slice], size: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (range, src) in resolve(slices, 0..size) {
            for k in 0..range.len() as u32 {
                bytes.push(match src {
                    Some((id, off)) => id.0[0].wrapping_add((off + k) as u8),
                    None => 0,
                });
            }
        }
        bytes
    }

    #[test]
    fn newer_slices_hide_older_ones() {
        let slices = [slice(0, 10, 1), slice(2, 3, 2), slice(8, 4, 3)];
        let segments = resolve(&slices, 0..14);
        let ranges: Vec<_> = segments.iter().map(|s| s.0.clone()).collect();
        assert_eq!(ranges, vec![0..2, 2..5, 5..8, 8..12, 12..14]);
        assert_eq!(segments[2].1, Some((blob(1), 5)));
        assert_eq!(segments[4].1, None);
        assert_eq!(shown(&slices, 14), model(&slices, 14));
    }

    #[test]
    fn hidden_slices_are_dropped_and_trim_clips() {
        let mut slices = vec![
            slice(2, 2, 1),
            slice(0, 4, 2),
            slice(4, 4, 3),
            slice(3, 2, 4),
        ];
        let dropped = drop_hidden(&mut slices);
        assert_eq!(dropped, vec![slice(2, 2, 1)]);
        assert_eq!(slices.len(), 3);
        let dropped = trim(&mut slices, 4);
        assert_eq!(dropped, vec![slice(4, 4, 3)]);
        assert_eq!(slices, vec![slice(0, 4, 2), slice(3, 1, 4)]);
        assert_eq!(usage(&slices), (4, 5));
    }

    #[test]
    fn compaction_is_wanted_for_long_or_mostly_hidden_lists() {
        assert!(!wants_compaction(&[slice(0, 10, 1)], true));
        assert!(!wants_compaction(&[slice(0, 10, 1), slice(0, 4, 2)], false));
        assert!(wants_compaction(&[slice(0, 10, 1), slice(0, 4, 2)], true));
        assert!(!wants_compaction(&[slice(0, 10, 1), slice(0, 9, 2)], false));
        assert!(wants_compaction(
            &[slice(0, 10, 1), slice(0, 9, 2), slice(0, 9, 3)],
            false
        ));
        let many: Vec<Slice> = (0..COMPACT_SLICES as u32)
            .map(|i| slice(i * 2, 1, 1))
            .collect();
        assert!(wants_compaction(&many, false));
        assert!(wants_compaction(&many[..CLOSE_SLICES], true));
        assert!(!wants_compaction(&many[..CLOSE_SLICES], false));
    }

    /// Random lists against the byte model: what `resolve` shows is what painting the
    /// slices in order gives, and dropping hidden slices or trimming changes nothing a
    /// reader can see below the cut.
    #[test]
    fn model_based_random_lists() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as u32
        };
        for _ in 0..5000 {
            let size = 1 + next(64);
            let mut slices: Vec<Slice> = (0..next(12))
                .map(|_| {
                    let at = next(size);
                    Slice {
                        at,
                        len: 1 + next(size - at),
                        blob: blob(next(250) as u8 + 1),
                        blob_off: next(100),
                    }
                })
                .collect();
            let before = model(&slices, size);
            assert_eq!(shown(&slices, size), before);
            drop_hidden(&mut slices);
            assert_eq!(model(&slices, size), before);
            let cut = next(size + 1);
            trim(&mut slices, cut);
            let mut expected = before.clone();
            expected[cut as usize..].fill(0);
            assert_eq!(shown(&slices, size), expected);
            assert!(slices.iter().all(|s| s.len > 0 && s.at + s.len <= cut));
        }
    }
}
