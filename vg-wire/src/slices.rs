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
/// pays only once much has piled up. Above a block's 4 KiB pages (1,024 of a 4 MiB
/// block, the default): a block written a page at a time, as a database writes, keeps at most one
/// slice per page (a page written again hides the slice before whole, which is dropped),
/// and such a list is the block's pages as they are, read as they are; compacted at
/// 1,024 slices it was rewritten once per 4 MiB of pages, a byte more per byte written
/// and per copy, and the rewrite's reads and writes slowed the writes beside it. Only
/// writes smaller than a page or across pages reach this. Random 4 KiB fsync'd writes
/// (fsbench phase g, fresh clusters alternating): 1,108 and 1,110 IOPS at 6.8 and 6.9
/// bytes on disk per byte written at 1,024; 1,518 and 1,553 at 5.0 at 1,536, and the
/// file read cold after at 432 and 451 MB/s against 367 and 336.
pub const COMPACT_SLICES: usize = 1536;

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
    let hidden = hidden_by_units(slices).unwrap_or_else(|| hidden_by_ranges(slices));
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

/// Which slices newer ones hide whole, tracking what newer slices cover as sorted
/// disjoint ranges: each slice costs a binary search, not a sort.
fn hidden_by_ranges(slices: &[Slice]) -> Vec<bool> {
    let mut seen: Vec<Range<u32>> = Vec::new();
    let mut hidden = vec![false; slices.len()];
    for (i, slice) in slices.iter().enumerate().rev() {
        if covers(&seen, &slice.range()) {
            hidden[i] = true;
        } else {
            insert_range(&mut seen, slice.range());
        }
    }
    hidden
}

/// Most units [`Units`] keeps a bit for (8 KiB of bits).
const MAX_UNITS: u32 = 1 << 16;

/// A block seen in units: the largest power of two all offsets and lengths of its
/// slices are multiples of (4 KiB for page-sized writes), one bit each. A commit looks
/// at a block's hundreds of slices, where searching and inserting sorted ranges (or
/// sorting them) was most of the work: applying an fsync'd 4 KiB write on the
/// nameserver, and deciding on the mount whether to compact after it.
struct Units {
    shift: u32,
    bits: Vec<u64>,
}

impl Units {
    /// An empty grid for `slices`, or `None` if it takes more than [`MAX_UNITS`] bits
    /// (byte-sized slices in a large block) or there is nothing to grid.
    fn new(slices: &[Slice]) -> Option<Self> {
        let shift = slices
            .iter()
            .map(|s| (s.at | s.len).trailing_zeros())
            .min()?;
        let mut end = 0;
        for s in slices {
            end = end.max(s.at.checked_add(s.len).filter(|_| s.len > 0)?);
        }
        if end >> shift > MAX_UNITS {
            return None;
        }
        let bits = vec![0u64; (end >> shift).div_ceil(64) as usize];
        Some(Self { shift, bits })
    }

    /// The words `slice` falls in, each with the mask of its bits there.
    fn masks(&self, slice: &Slice) -> impl Iterator<Item = (usize, u64)> {
        unit_masks(slice.at >> self.shift..(slice.at + slice.len) >> self.shift)
    }

    /// Whether every unit of `slice` is set.
    fn covers(&self, slice: &Slice) -> bool {
        self.masks(slice)
            .all(|(w, mask)| self.bits[w] & mask == mask)
    }

    /// Sets the units of `slice`.
    fn add(&mut self, slice: &Slice) {
        for (w, mask) in self.masks(slice) {
            self.bits[w] |= mask;
        }
    }

    /// Bytes of the units set.
    fn bytes(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum::<u64>() << self.shift
    }
}

/// [`hidden_by_ranges`] on a [`Units`] grid, or `None` where there is none.
fn hidden_by_units(slices: &[Slice]) -> Option<Vec<bool>> {
    let mut seen = Units::new(slices)?;
    let mut hidden = vec![false; slices.len()];
    for (i, s) in slices.iter().enumerate().rev() {
        if seen.covers(s) {
            hidden[i] = true;
        } else {
            seen.add(s);
        }
    }
    Some(hidden)
}

/// The words of a bitmap that `units` (not empty) falls in, each with the mask of its
/// bits there.
fn unit_masks(units: Range<u32>) -> impl Iterator<Item = (usize, u64)> {
    let (first, last) = (units.start / 64, (units.end - 1) / 64);
    (first..=last).map(move |w| {
        let lo = if w == first { units.start % 64 } else { 0 };
        let hi = if w == last {
            (units.end - 1) % 64 + 1
        } else {
            64
        };
        (w as usize, (u64::MAX >> (64 - (hi - lo))) << lo)
    })
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
    let visible = match Units::new(slices) {
        Some(mut units) => {
            slices.iter().for_each(|s| units.add(s));
            units.bytes()
        }
        None => visible_by_ranges(slices),
    };
    let referenced = slices.iter().map(|s| s.len as u64).sum();
    (visible, referenced)
}

/// Bytes `slices` cover, by sorting and merging their ranges.
fn visible_by_ranges(slices: &[Slice]) -> u64 {
    merge(slices.iter().map(Slice::range).collect())
        .iter()
        .map(|r| (r.end - r.start) as u64)
        .sum()
}

/// A compaction of `list`: `read` is the list as the compactor read it and `merged`
/// shows what `read` shows. What remains of `read` at the bottom of `list` (in order)
/// gives way to `merged`, under the slices added since, if readers see the same after:
/// each slice of `read` gone from `list` must have been hidden whole by slices after it
/// (dropped as hidden by a commit on top; a truncate clips or drops slices without
/// covering them, and a compaction replaces them: those refuse). Returns the new list
/// and the slices of `list` replaced, or `None` if the compaction no longer applies.
///
/// A prefix of `list` equal to `read` was the rule once: under random rewrites nearly
/// every commit hides some older slice whole and drops it, so compactions that take
/// longer than a few commits lost that race over and over, each a 4 MiB blob per copy
/// written for nothing (83 of 93 in one minute of fsync'd 4 KiB writes).
pub fn compacted(
    list: &[Slice],
    read: &[Slice],
    merged: &[Slice],
) -> Option<(Vec<Slice>, Vec<Slice>)> {
    // `list` opens with a subsequence of `read`: which of `read` are still there.
    let mut kept = vec![false; read.len()];
    let (mut r, mut head) = (0, 0);
    while let Some(slice) = list.get(head) {
        let Some(k) = read[r..].iter().position(|s| s == slice) else {
            break;
        };
        kept[r + k] = true;
        r += k + 1;
        head += 1;
    }
    if head == 0 {
        return None;
    }
    // Each gone slice lies under what followed it in `read` and still is in `list`, and
    // under everything added since.
    for (i, gone) in read.iter().enumerate().filter(|(i, _)| !kept[*i]) {
        let over: Vec<Range<u32>> = read[i + 1..]
            .iter()
            .zip(&kept[i + 1..])
            .filter(|(_, &kept)| kept)
            .map(|(s, _)| s)
            .chain(&list[head..])
            .map(Slice::range)
            .filter(|r| r.start < gone.at + gone.len && r.end > gone.at)
            .collect();
        if !covers(&merge(over), &gone.range()) {
            return None;
        }
    }
    let after: Vec<Slice> = merged.iter().chain(&list[head..]).copied().collect();
    Some((after, list[..head].to_vec()))
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

    /// Seeded pseudo-random numbers below the bound asked for (xorshift).
    fn numbers(mut seed: u64) -> impl FnMut(u32) -> u32 {
        move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as u32
        }
    }

    /// `n` slices at random places of a block of `size` bytes.
    fn random_slices(next: &mut impl FnMut(u32) -> u32, n: u32, size: u32) -> Vec<Slice> {
        (0..n)
            .map(|_| {
                let at = next(size);
                Slice {
                    at,
                    len: 1 + next(size - at),
                    blob: blob(next(250) as u8 + 1),
                    blob_off: next(100),
                }
            })
            .collect()
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

    #[test]
    fn a_compaction_applies_under_slices_that_hid_some_of_what_it_read() {
        let read = vec![slice(0, 10, 1), slice(2, 2, 2), slice(6, 2, 3)];
        let merged = vec![slice(0, 10, 9)];
        // A commit on top hid slice 2 whole, and it was dropped.
        let list = vec![slice(0, 10, 1), slice(6, 2, 3), slice(1, 4, 4)];
        let (after, replaced) = compacted(&list, &read, &merged).unwrap();
        assert_eq!(after, vec![slice(0, 10, 9), slice(1, 4, 4)]);
        assert_eq!(replaced, vec![slice(0, 10, 1), slice(6, 2, 3)]);
        // Gone without being covered (a truncate dropped it): refused.
        let list = vec![slice(0, 10, 1), slice(6, 2, 3)];
        assert_eq!(compacted(&list, &read, &merged), None);
        // Clipped (a truncate): refused.
        let list = vec![slice(0, 5, 1)];
        assert_eq!(compacted(&list, &read, &merged), None);
        // Compacted by someone else meanwhile: refused.
        let list = vec![slice(0, 10, 8), slice(1, 4, 4)];
        assert_eq!(compacted(&list, &read, &merged), None);
    }

    /// Compactions racing commits, against the byte model: whatever the commits hid and
    /// dropped meanwhile, an accepted compaction changes nothing a reader sees.
    #[test]
    fn model_based_compactions_under_commits() {
        let mut next = numbers(0x2545_f491_4f6c_dd1d);
        let mut taken = 0;
        for round in 0..5000u32 {
            let size = 1 + next(64);
            let mut random = |n: u32| random_slices(&mut next, n, size);
            let mut list = random(1 + round % 12);
            drop_hidden(&mut list);
            let read = list.clone();
            // The compactor's blob: what `read` shows, as blob 0 (holes as zeros too).
            let shows = model(&read, size);
            // Commits on top meanwhile, each dropping what it hides; maybe a truncate.
            for _ in 0..round % 4 {
                let new = random(1 + round % 3);
                list.extend(new);
                drop_hidden(&mut list);
            }
            if round % 7 == 0 {
                trim(&mut list, size / 2);
            }
            let before = model(&list, size);
            let merged_blob = BlockId([0; 32]);
            let merged = vec![Slice {
                at: 0,
                len: size,
                blob: merged_blob,
                blob_off: 0,
            }];
            let Some((after, replaced)) = compacted(&list, &read, &merged) else {
                continue;
            };
            taken += 1;
            assert!(replaced.iter().all(|s| read.contains(s)));
            // What readers see after: the compactor's bytes under the slices kept on top.
            let mut seen = shows.clone();
            for s in &after[1..] {
                for k in 0..s.len {
                    seen[(s.at + k) as usize] = s.blob.0[0].wrapping_add((s.blob_off + k) as u8);
                }
            }
            assert_eq!(seen, before, "round {round}: {list:?} read {read:?}");
        }
        assert!(taken > 1000, "only {taken} compactions applied");
    }

    /// Hidden slices and visible bytes found by units and by ranges agree, at every
    /// granularity.
    #[test]
    fn hidden_slices_and_visible_bytes_by_units_are_those_by_ranges() {
        let mut next = numbers(0x51_7cc1_b727_220a);
        let mut by_units = 0;
        for round in 0..5000u32 {
            let unit = 1 << (round % 13);
            let (size, n) = (1 + next(64), 1 + next(40));
            let mut slices = random_slices(&mut next, n, size);
            for s in &mut slices {
                (s.at, s.len) = (s.at * unit, s.len * unit);
            }
            let ranges = hidden_by_ranges(&slices);
            if let Some(units) = hidden_by_units(&slices) {
                assert_eq!(units, ranges, "{slices:?}");
                by_units += 1;
            }
            assert_eq!(usage(&slices).0, visible_by_ranges(&slices), "{slices:?}");
        }
        assert!(by_units > 4000, "only {by_units} lists went by units");
        // Byte-sized slices over a large block go by ranges.
        assert!(hidden_by_units(&[slice(1, 1, 1), slice(1 << 20, 1, 2)]).is_none());
    }

    /// Random lists against the byte model: what `resolve` shows is what painting the
    /// slices in order gives, and dropping hidden slices or trimming changes nothing a
    /// reader can see below the cut.
    #[test]
    fn model_based_random_lists() {
        let mut next = numbers(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let size = 1 + next(64);
            let n = next(12);
            let mut slices = random_slices(&mut next, n, size);
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
