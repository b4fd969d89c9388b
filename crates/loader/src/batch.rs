//! The batch stage: what a pipeline has read since its last flush, as the offset ranges each
//! of its tables (raw, dead letters, each aggregate) is to record, the positions the consumer
//! resumes from once they are committed, and per decoded row which tables take it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use floe_lake::OffsetRange;

use crate::aggregates::RowRouting;

/// A topic-partition.
pub(crate) type Tp = (String, i32);

/// Maps keyed by topic-partition, touched for every message: a fast non-cryptographic hash.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Per topic-partition, the first offset read and the one after the last: `[first, next)`.
pub(crate) type Ranges = FastMap<Tp, (i64, i64)>;

/// One batch of a pipeline: from its first message to its flush.
#[derive(Default)]
pub(crate) struct Batch {
    pub id: u64,
    /// Messages the batch holds (rows, dead letters, tombstones, rows only re-checked).
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// When its first message came.
    pub started: Option<Instant>,
    pub raw_ranges: Ranges,
    pub dlq_ranges: Ranges,
    /// One per aggregate table.
    pub agg_ranges: Vec<Ranges>,
    /// Per decoded row of the current chunk, when the pipeline has aggregates.
    pub routing: Option<RowRouting>,
    /// A chunk of this batch went to the writer (a discard must tell it).
    pub chunks_sent: bool,
}

impl Batch {
    /// An empty batch of a pipeline with `aggregates` aggregate tables.
    pub fn new(id: u64, aggregates: usize) -> Self {
        Self {
            id,
            agg_ranges: vec![FastMap::default(); aggregates],
            routing: (aggregates > 0).then(|| RowRouting {
                aggs: vec![Some(Vec::new()); aggregates],
                raw: Some(Vec::new()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Records that the message at `offset` of `tp` is in the batch for the raw table, the
    /// dead-letter table and the aggregates of `to_aggs` (bit k: aggregate k).
    pub fn record(&mut self, tp: &Tp, offset: i64, to_raw: bool, to_dlq: bool, to_aggs: u64) {
        if to_raw {
            extend(&mut self.raw_ranges, tp, offset);
        }
        if to_dlq {
            extend(&mut self.dlq_ranges, tp, offset);
        }
        for (k, ranges) in self.agg_ranges.iter_mut().enumerate() {
            if to_aggs & (1 << k) != 0 {
                extend(ranges, tp, offset);
            }
        }
    }

    /// Where each partition resumes once the batch is committed: past the last offset any of
    /// its tables took.
    pub fn positions(&self) -> BTreeMap<Tp, i64> {
        let mut positions: BTreeMap<Tp, i64> = BTreeMap::new();
        for (tp, (_, next)) in self
            .raw_ranges
            .iter()
            .chain(self.dlq_ranges.iter())
            .chain(self.agg_ranges.iter().flatten())
        {
            let e = positions.entry(tp.clone()).or_insert(*next);
            *e = (*e).max(*next);
        }
        positions
    }
}

/// Extends `tp`'s range to `offset` (the offsets of a partition come in order).
fn extend(ranges: &mut Ranges, tp: &Tp, offset: i64) {
    match ranges.get_mut(tp) {
        Some(r) => r.1 = offset + 1,
        None => {
            ranges.insert(tp.clone(), (offset, offset + 1));
        }
    }
}

/// `ranges` (`[first, next)` per topic-partition) as a table records them, by topic and
/// partition.
pub(crate) fn offset_ranges<'a>(
    ranges: impl IntoIterator<Item = (&'a Tp, &'a (i64, i64))>,
) -> Vec<OffsetRange> {
    let mut v: Vec<OffsetRange> = ranges
        .into_iter()
        .map(|((t, p), (first, next))| OffsetRange {
            topic: t.clone(),
            partition: *p,
            first: *first,
            next: *next,
        })
        .collect();
    v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    v
}

/// Keeps the entries of `v` (one per row) whose row is kept.
pub(crate) fn retain_rows<T>(v: &mut Vec<T>, keep: &[bool]) {
    let mut row = keep.iter();
    v.retain(|_| *row.next().expect("one entry per row"));
}

/// Takes the routing collected for a chunk as it is (to be filtered before it is sent).
pub(crate) fn take_raw_routing(routing: &mut Option<RowRouting>) -> Option<RowRouting> {
    let r = routing.as_mut()?;
    Some(RowRouting {
        parts: std::mem::take(&mut r.parts),
        raw: r.raw.as_mut().map(std::mem::take),
        aggs: r
            .aggs
            .iter_mut()
            .map(|m| m.as_mut().map(std::mem::take))
            .collect(),
    })
}

/// Turns the routing collected for a chunk into the form sent: all-true masks become `None`.
pub(crate) fn take_routing(routing: &mut Option<RowRouting>) -> Option<Box<RowRouting>> {
    let mut out = take_raw_routing(routing)?;
    let all = |m: &Option<Vec<bool>>| m.as_ref().is_none_or(|m| m.iter().all(|b| *b));
    if all(&out.raw) {
        out.raw = None;
    }
    for m in &mut out.aggs {
        if all(m) {
            *m = None;
        }
    }
    Some(Box::new(out))
}

/// Offsets of a table that flushes keep receiving no rows for: recorded with the next rows,
/// or once `interval` has passed since the last record, or before the loader stops — not
/// every flush, so such a table's metadata does not change once a flush. A restart re-reads
/// at most `interval` of the topic for it (the messages are decoded again and still have no
/// row for it).
pub(crate) struct IdleOffsets {
    interval: Duration,
    pending: BTreeMap<Tp, (i64, i64)>,
    recorded_at: Instant,
}

impl IdleOffsets {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            pending: BTreeMap::new(),
            recorded_at: Instant::now(),
        }
    }

    /// Adds a flush's ranges; returns every pending range if they are to be recorded now.
    pub fn take(
        &mut self,
        ranges: &[OffsetRange],
        has_rows: bool,
        last: bool,
    ) -> Option<Vec<OffsetRange>> {
        for r in ranges {
            let e = self
                .pending
                .entry((r.topic.clone(), r.partition))
                .or_insert((r.first, r.next));
            e.0 = e.0.min(r.first);
            e.1 = e.1.max(r.next);
        }
        if self.pending.is_empty()
            || !(has_rows || last || self.recorded_at.elapsed() >= self.interval)
        {
            return None;
        }
        Some(offset_ranges(&self.pending))
    }

    /// The ranges [`Self::take`] returned were recorded.
    pub fn recorded(&mut self) {
        self.pending.clear();
        self.recorded_at = Instant::now();
    }

    /// A flush failed: the loader rewinds to the recorded offsets, so nothing is pending.
    pub fn forget(&mut self) {
        self.pending.clear();
    }

    /// Partitions revoked: another member records their offsets from now on.
    pub fn forget_partitions(&mut self, parts: &[Tp]) {
        for tp in parts {
            self.pending.remove(tp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> Tp {
        (t.to_string(), p)
    }

    fn range(t: &str, p: i32, first: i64, next: i64) -> OffsetRange {
        OffsetRange {
            topic: t.into(),
            partition: p,
            first,
            next,
        }
    }

    #[test]
    fn each_table_records_the_ranges_it_took_and_the_consumer_resumes_past_all() {
        let mut b = Batch::new(7, 2);
        let (a0, a1, b0) = (tp("a", 0), tp("a", 1), tp("b", 0));
        // a[0]: 10..13 to the raw table; 11 also a dead letter; 12 only to aggregate 1.
        b.record(&a0, 10, true, false, 0b01);
        b.record(&a0, 11, true, true, 0b11);
        b.record(&a0, 12, false, false, 0b10);
        // a[1] and b[0]: only the dead-letter table still needs them.
        b.record(&a1, 5, false, true, 0);
        b.record(&b0, 100, false, true, 0);
        b.record(&b0, 101, false, true, 0);
        assert_eq!(offset_ranges(&b.raw_ranges), vec![range("a", 0, 10, 12)]);
        assert_eq!(
            offset_ranges(&b.dlq_ranges),
            vec![
                range("a", 0, 11, 12),
                range("a", 1, 5, 6),
                range("b", 0, 100, 102)
            ]
        );
        assert_eq!(offset_ranges(&b.agg_ranges[0]), vec![range("a", 0, 10, 12)]);
        assert_eq!(offset_ranges(&b.agg_ranges[1]), vec![range("a", 0, 11, 13)]);
        let positions = b.positions();
        assert_eq!(positions.get(&a0), Some(&13));
        assert_eq!(positions.get(&a1), Some(&6));
        assert_eq!(positions.get(&b0), Some(&102));
        assert_eq!(positions.len(), 3);
        assert_eq!(b.id, 7);
        assert_eq!(b.routing.as_ref().map(|r| r.aggs.len()), Some(2));
        assert!(Batch::new(0, 0).routing.is_none());
    }

    #[test]
    fn routing_masks_that_keep_every_row_are_sent_as_none() {
        let mut routing = Some(RowRouting {
            parts: vec![(0, 0), (0, 1), (0, 1)],
            raw: Some(vec![true, true, true]),
            aggs: vec![Some(vec![true, false, true]), Some(vec![true; 3])],
        });
        let sent = take_routing(&mut routing).expect("routing");
        assert_eq!(sent.raw, None);
        assert_eq!(sent.aggs, vec![Some(vec![true, false, true]), None]);
        assert_eq!(sent.parts.len(), 3);
        // What was collected is taken: the next chunk starts empty, with the same shape.
        let left = routing.expect("kept");
        assert!(left.parts.is_empty());
        assert_eq!(left.raw, Some(Vec::new()));
        assert_eq!(left.aggs, vec![Some(Vec::new()), Some(Vec::new())]);
        let mut rows = vec![1, 2, 3, 4];
        retain_rows(&mut rows, &[true, false, false, true]);
        assert_eq!(rows, vec![1, 4]);
    }

    #[test]
    fn idle_offsets_wait_for_rows_the_interval_or_the_last_flush() {
        let mut idle = IdleOffsets::new(Duration::from_secs(3600));
        assert_eq!(idle.take(&[range("a", 0, 0, 10)], false, false), None);
        assert_eq!(idle.take(&[range("a", 0, 10, 20)], false, false), None);
        // Rows come: everything pending goes, merged per partition.
        let due = idle.take(&[range("a", 1, 3, 4)], true, false).expect("due");
        assert_eq!(due, vec![range("a", 0, 0, 20), range("a", 1, 3, 4)]);
        idle.recorded();
        assert_eq!(idle.take(&[], false, true), None, "nothing pending");
        // The last flush before a stop records what is pending, rows or not.
        assert!(idle.take(&[range("a", 0, 20, 30)], false, true).is_some());
        // A failed flush rewinds: nothing stays pending.
        idle.forget();
        assert_eq!(idle.take(&[], false, true), None);
        // Revoked partitions are another member's to record.
        idle.take(&[range("a", 0, 30, 31), range("a", 1, 4, 5)], false, false);
        idle.forget_partitions(&[tp("a", 0)]);
        assert_eq!(idle.take(&[], true, false), Some(vec![range("a", 1, 4, 5)]));
        // Once the interval passed, a flush without rows records too.
        let mut soon = IdleOffsets::new(Duration::ZERO);
        assert!(soon.take(&[range("a", 0, 0, 1)], false, false).is_some());
    }
}
