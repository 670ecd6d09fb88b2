//! Request planning: a device's tags → the fewest reads within protocol limits.
//!
//! Neighbouring tags are coalesced into one read while the hole between them is at most
//! `max_gap` addresses and the read stays within the table's quantity limit. When a read is
//! refused with exception 02 (illegal data address), the poller asks the planner to split it;
//! the split is remembered as a *cut* that later plans never bridge, and a single tag that is
//! still refused is marked unmapped. One bad register therefore never blinds the rest.

use std::collections::BTreeSet;

use super::decode::Table;

/// The span of one tag inside its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagSpan {
    pub table: Table,
    pub start: u16,
    pub width: u16,
}

impl TagSpan {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.width)
    }
}

/// One read request and the tags it serves (indices into the device's tag list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    pub tags: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_gap: u16,
    pub max_registers: u16,
    pub max_bits: u16,
}

/// A search in progress for the address that makes a read fail with exception 02.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The block's tags by address.
    pub tags: Vec<usize>,
    /// Longest prefix known to read.
    good: usize,
    /// Shortest prefix known to fail.
    bad: usize,
    /// Reading `tags[good]` alone decides between an unmapped tag and an unmapped hole.
    single: bool,
}

#[derive(Debug, Clone)]
pub struct Planner {
    spans: Vec<TagSpan>,
    limits: Limits,
    /// (table, address): no read may cover both `address - 1` and `address`.
    cuts: BTreeSet<(Table, u16)>,
    unmapped: BTreeSet<usize>,
    blocks: Vec<ReadBlock>,
}

impl Planner {
    pub fn new(spans: Vec<TagSpan>, limits: Limits) -> Planner {
        let mut p = Planner {
            spans,
            limits,
            cuts: BTreeSet::new(),
            unmapped: BTreeSet::new(),
            blocks: Vec::new(),
        };
        p.replan();
        p
    }

    /// The current reads, in table then address order.
    pub fn blocks(&self) -> &[ReadBlock] {
        &self.blocks
    }

    /// Tags the device refused to serve (exception 02 on a read of that tag alone).
    pub fn unmapped(&self) -> impl Iterator<Item = usize> + '_ {
        self.unmapped.iter().copied()
    }

    pub fn is_unmapped(&self, tag: usize) -> bool {
        self.unmapped.contains(&tag)
    }

    /// Forgets what was learned, e.g. after a device was reconfigured; the next plan is the
    /// optimistic one again.
    pub fn forget(&mut self) {
        self.cuts.clear();
        self.unmapped.clear();
        self.replan();
    }

    fn limit(&self, table: Table) -> u32 {
        u32::from(if table.is_bits() {
            self.limits.max_bits.min(Table::Coil.max_quantity())
        } else {
            self.limits.max_registers.min(Table::Holding.max_quantity())
        })
    }

    fn replan(&mut self) {
        let mut order: Vec<usize> = (0..self.spans.len())
            .filter(|i| !self.unmapped.contains(i))
            .collect();
        order.sort_by_key(|&i| {
            (
                self.spans[i].table,
                self.spans[i].start,
                self.spans[i].width,
            )
        });
        let mut blocks: Vec<ReadBlock> = Vec::new();
        let mut cur: Option<(Table, u16, u32, Vec<usize>)> = None;
        for i in order {
            let s = self.spans[i];
            if let Some((table, start, end, tags)) = &mut cur {
                let same_table = *table == s.table;
                let gap_ok = u32::from(s.start) <= *end + u32::from(self.limits.max_gap);
                let new_end = (*end).max(s.end());
                let size_ok = new_end - u32::from(*start) <= self.limit(s.table);
                let cut_between = same_table
                    && self
                        .cuts
                        .range((s.table, start.saturating_add(1))..=(s.table, s.start))
                        .next()
                        .is_some();
                if same_table && gap_ok && size_ok && !cut_between {
                    *end = new_end;
                    tags.push(i);
                    continue;
                }
                blocks.push(ReadBlock {
                    table: *table,
                    start: *start,
                    count: (*end - u32::from(*start)) as u16,
                    tags: std::mem::take(tags),
                });
            }
            cur = Some((s.table, s.start, s.end(), vec![i]));
        }
        if let Some((table, start, end, tags)) = cur {
            blocks.push(ReadBlock {
                table,
                start,
                count: (end - u32::from(start)) as u16,
                tags,
            });
        }
        self.blocks = blocks;
    }

    /// Handles exception 02 on `block`. Returns the reads to try instead: two halves, or
    /// nothing when the block was a single register (its tags are then marked unmapped).
    pub fn split(&mut self, block: &ReadBlock) -> Vec<ReadBlock> {
        let mut starts: Vec<u16> = block.tags.iter().map(|&i| self.spans[i].start).collect();
        starts.sort_unstable();
        starts.dedup();
        if starts.len() < 2 {
            for &t in &block.tags {
                self.unmapped.insert(t);
            }
            self.replan();
            return Vec::new();
        }
        let cut = starts[starts.len() / 2];
        self.cuts.insert((block.table, cut));
        self.replan();
        let mut halves = Vec::new();
        for side in [true, false] {
            let tags: Vec<usize> = block
                .tags
                .iter()
                .copied()
                .filter(|&i| (self.spans[i].start < cut) == side)
                .collect();
            let start = tags.iter().map(|&i| self.spans[i].start).min();
            let end = tags.iter().map(|&i| self.spans[i].end()).max();
            if let (Some(start), Some(end)) = (start, end) {
                halves.push(ReadBlock {
                    table: block.table,
                    start,
                    count: (end - u32::from(start)) as u16,
                    tags,
                });
            }
        }
        halves
    }

    /// The read covering exactly these tags (of one table).
    pub fn block_of(&self, tags: &[usize]) -> Option<ReadBlock> {
        let first = *tags.first()?;
        let table = self.spans[first].table;
        let start = tags.iter().map(|&i| self.spans[i].start).min()?;
        let end = tags.iter().map(|&i| self.spans[i].end()).max()?;
        Some(ReadBlock {
            table,
            start,
            count: (end - u32::from(start)) as u16,
            tags: tags.to_vec(),
        })
    }

    /// Starts the search for what makes `block` answer exception 02: the longest prefix of its
    /// tags that reads, then whether the next tag is unmapped or the hole before it is. Every
    /// boundary found costs O(log n) reads and becomes one cut, so the next plan has the fewest
    /// reads around it.
    pub fn probe(&self, block: &ReadBlock) -> Probe {
        let mut tags = block.tags.clone();
        tags.sort_by_key(|&i| (self.spans[i].start, self.spans[i].width));
        let n = tags.len();
        Probe {
            tags,
            good: 0,
            bad: n,
            single: n == 1,
        }
    }

    /// Applies what a finished probe learned; returns the tags still to read (after the
    /// boundary), if any.
    fn learn(&mut self, probe: &Probe, single_ok: bool) -> Vec<usize> {
        let at = probe.good;
        let tag = probe.tags[at];
        if single_ok {
            self.cuts
                .insert((self.spans[tag].table, self.spans[tag].start));
            self.replan();
            probe.tags[at..].to_vec()
        } else {
            self.unmapped.insert(tag);
            self.replan();
            probe.tags[at + 1..].to_vec()
        }
    }

    /// The next read of a probe, or None when it has finished (see [`Planner::probe_result`]).
    pub fn probe_read(&self, probe: &Probe) -> Option<ReadBlock> {
        if probe.single {
            return self.block_of(&probe.tags[probe.good..probe.good + 1]);
        }
        if probe.bad - probe.good > 1 {
            let mid = (probe.good + probe.bad) / 2;
            return self.block_of(&probe.tags[..mid]);
        }
        None
    }

    /// Feeds the outcome of `probe_read` (true: it read; false: exception 02). Returns what to
    /// read next once the probe is done: `Some(rest)` (possibly empty) after the boundary.
    pub fn probe_result(&mut self, probe: &mut Probe, ok: bool) -> Option<Vec<usize>> {
        if probe.single {
            return Some(self.learn(probe, ok));
        }
        let mid = (probe.good + probe.bad) / 2;
        if ok {
            probe.good = mid;
        } else {
            probe.bad = mid;
        }
        if probe.bad - probe.good <= 1 {
            // Prefix `good` reads and prefix `good + 1` does not: read tag `good` alone.
            probe.single = true;
        }
        None
    }

    pub fn span(&self, tag: usize) -> TagSpan {
        self.spans[tag]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(start: u16, width: u16) -> TagSpan {
        TagSpan {
            table: Table::Holding,
            start,
            width,
        }
    }

    fn limits(max_gap: u16) -> Limits {
        Limits {
            max_gap,
            max_registers: 125,
            max_bits: 2000,
        }
    }

    fn shape(p: &Planner) -> Vec<(Table, u16, u16)> {
        p.blocks()
            .iter()
            .map(|b| (b.table, b.start, b.count))
            .collect()
    }

    #[test]
    fn coalesces_neighbours_and_bridges_small_holes() {
        let p = Planner::new(vec![reg(0, 2), reg(2, 2), reg(10, 2)], limits(8));
        assert_eq!(shape(&p), vec![(Table::Holding, 0, 12)]);
        let p = Planner::new(vec![reg(0, 2), reg(2, 2), reg(10, 2)], limits(5));
        assert_eq!(
            shape(&p),
            vec![(Table::Holding, 0, 4), (Table::Holding, 10, 2)]
        );
    }

    #[test]
    fn tables_are_never_mixed() {
        let spans = vec![
            reg(0, 1),
            TagSpan {
                table: Table::Input,
                start: 1,
                width: 1,
            },
            TagSpan {
                table: Table::Coil,
                start: 0,
                width: 1,
            },
            TagSpan {
                table: Table::Coil,
                start: 1999,
                width: 1,
            },
        ];
        let p = Planner::new(spans, limits(2000));
        assert_eq!(
            shape(&p),
            vec![
                (Table::Coil, 0, 2000),
                (Table::Holding, 0, 1),
                (Table::Input, 1, 1)
            ]
        );
    }

    #[test]
    fn respects_the_125_register_and_2000_bit_limits() {
        let spans: Vec<TagSpan> = (0..100).map(|i| reg(i * 2, 2)).collect();
        let p = Planner::new(spans, limits(0));
        assert_eq!(
            shape(&p),
            vec![(Table::Holding, 0, 124), (Table::Holding, 124, 76)]
        );
        assert!(p.blocks().iter().all(|b| b.count <= 125));
        let bits: Vec<TagSpan> = (0..4001)
            .map(|i| TagSpan {
                table: Table::Discrete,
                start: i,
                width: 1,
            })
            .collect();
        let p = Planner::new(bits, limits(0));
        assert_eq!(
            shape(&p),
            vec![
                (Table::Discrete, 0, 2000),
                (Table::Discrete, 2000, 2000),
                (Table::Discrete, 4000, 1)
            ]
        );
    }

    #[test]
    fn a_device_specific_register_limit_is_honoured() {
        let spans: Vec<TagSpan> = (0..10).map(|i| reg(i * 2, 2)).collect();
        let p = Planner::new(
            spans,
            Limits {
                max_gap: 0,
                max_registers: 8,
                max_bits: 2000,
            },
        );
        assert_eq!(
            shape(&p),
            vec![
                (Table::Holding, 0, 8),
                (Table::Holding, 8, 8),
                (Table::Holding, 16, 4)
            ]
        );
    }

    #[test]
    fn bit_tags_sharing_a_register_share_a_read() {
        let p = Planner::new(vec![reg(5, 1), reg(5, 1), reg(6, 2)], limits(0));
        assert_eq!(shape(&p), vec![(Table::Holding, 5, 3)]);
        assert_eq!(p.blocks()[0].tags.len(), 3);
    }

    #[test]
    fn exception_02_splits_until_the_unmapped_register_is_found() {
        // Tags at 0, 2, 4, 6; register 4 is unmapped on the device.
        let mut p = Planner::new(vec![reg(0, 2), reg(2, 2), reg(4, 1), reg(6, 2)], limits(16));
        assert_eq!(shape(&p), vec![(Table::Holding, 0, 8)]);
        let device_refuses = |b: &ReadBlock| b.start <= 4 && 4 < b.start + b.count;
        let mut queue = p.blocks().to_vec();
        let mut reads = 0;
        while let Some(b) = queue.pop() {
            reads += 1;
            if device_refuses(&b) {
                queue.extend(p.split(&b));
            }
            assert!(reads < 20, "split must terminate");
        }
        assert_eq!(p.unmapped().collect::<Vec<_>>(), vec![2]);
        // The next plan reads everything else without touching register 4.
        assert!(p.blocks().iter().all(|b| !device_refuses(b)));
        let served: BTreeSet<usize> = p
            .blocks()
            .iter()
            .flat_map(|b| b.tags.iter().copied())
            .collect();
        assert_eq!(served, [0, 1, 3].into_iter().collect());
        p.forget();
        assert_eq!(shape(&p), vec![(Table::Holding, 0, 8)]);
    }

    /// Drives the probe the way the poller does, against a device that refuses any read
    /// touching `refused`; returns the number of reads it took.
    fn probe_until_clean(p: &mut Planner, refused: &[u16]) -> usize {
        let bad = |b: &ReadBlock| {
            refused
                .iter()
                .any(|a| b.start <= *a && *a < b.start + b.count)
        };
        let mut reads = 0;
        let mut queue: Vec<ReadBlock> = p.blocks().to_vec();
        while let Some(b) = queue.pop() {
            reads += 1;
            assert!(reads < 100, "probing must terminate");
            if !bad(&b) {
                continue;
            }
            let mut probe = p.probe(&b);
            while let Some(r) = p.probe_read(&probe) {
                reads += 1;
                if let Some(rest) = p.probe_result(&mut probe, !bad(&r)) {
                    if let Some(nb) = p.block_of(&rest) {
                        queue.push(nb);
                    }
                    break;
                }
            }
        }
        reads
    }

    #[test]
    fn probing_finds_holes_with_the_fewest_cuts() {
        // The simulator's cell: input tags 0..15 and 20, with 16..19 unmapped.
        let mut spans: Vec<TagSpan> = [0u16, 2, 4, 5, 6, 7, 7, 8, 9, 10, 12, 14]
            .iter()
            .map(|&a| TagSpan {
                table: Table::Input,
                start: a,
                width: if a == 0 || a == 2 || a >= 10 { 2 } else { 1 },
            })
            .collect();
        spans.push(TagSpan {
            table: Table::Input,
            start: 20,
            width: 1,
        });
        let mut p = Planner::new(
            spans,
            Limits {
                max_gap: 16,
                max_registers: 125,
                max_bits: 2000,
            },
        );
        assert_eq!(p.blocks().len(), 1);
        probe_until_clean(&mut p, &[16, 17, 18, 19]);
        assert_eq!(
            shape(&p),
            vec![(Table::Input, 0, 16), (Table::Input, 20, 1)],
            "one cut, at the hole"
        );
        assert!(p.unmapped().next().is_none());
        // An unmapped tag among many is found and only it is excluded.
        let spans: Vec<TagSpan> = (0..20).map(|i| reg(i, 1)).collect();
        let mut p = Planner::new(spans, limits(0));
        let reads = probe_until_clean(&mut p, &[13]);
        assert_eq!(p.unmapped().collect::<Vec<_>>(), vec![13]);
        assert_eq!(
            shape(&p),
            vec![(Table::Holding, 0, 13), (Table::Holding, 14, 6)]
        );
        assert!(reads <= 10, "{reads} reads");
    }

    #[test]
    fn an_unmapped_hole_between_tags_becomes_a_cut() {
        // Tags at 0 and 10; the bridged hole 2..9 contains an unmapped register.
        let mut p = Planner::new(vec![reg(0, 2), reg(10, 2)], limits(16));
        let b = p.blocks()[0].clone();
        let halves = p.split(&b);
        assert_eq!(halves.len(), 2);
        assert!(p.unmapped().next().is_none());
        assert_eq!(
            shape(&p),
            vec![(Table::Holding, 0, 2), (Table::Holding, 10, 2)]
        );
    }
}
