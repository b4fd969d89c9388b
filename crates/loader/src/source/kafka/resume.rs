//! Where each partition resumes: from the offsets its pipeline's tables committed (read from
//! their snapshots, never from Kafka's group offsets). On assignment, and after a failed
//! flush: the pipeline's partitions are held (paused) for the failure's pause, then sought
//! back to what the tables hold.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use floe_lake::committed_offsets;
use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use super::connect::tp_list;
use super::{Env, State};
use crate::batch::Tp;
use crate::pipeline::Pipe;
use crate::retry::backoff;
use crate::write::ToWriter;
use crate::{Error, Result};

/// How long newly assigned partitions wait for their tables' committed offsets to become
/// readable before the loader gives up (and stops, to be restarted).
const ASSIGN_RETRY: Duration = Duration::from_secs(120);

/// Where one partition stands in a pipeline's tables, from the offset each committed (the
/// next offset it wants; `None`: it holds nothing of the partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Messages from here on are still to be committed to the raw table.
    pub raw_from: i64,
    /// … to the dead-letter table (`i64::MAX` without one).
    pub dlq_from: i64,
    /// … to each aggregate table.
    pub agg_from: Vec<i64>,
    /// Where consumption starts: the smallest of them (`None`: the beginning).
    pub start: Option<i64>,
    /// With aggregates: below which offset the partition's events are aggregated (`None`:
    /// none yet); their dedup state is rebuilt from there.
    pub rebuild_below: Option<Option<i64>>,
}

impl Resume {
    /// From the raw table's committed offset, the dead-letter table's (outer `None`: no
    /// dead-letter table) and each aggregate table's.
    pub fn new(raw: Option<i64>, dlq: Option<Option<i64>>, aggs: &[Option<i64>]) -> Self {
        let mut start = match dlq {
            Some(d) => raw.zip(d).map(|(r, d)| r.min(d)),
            None => raw,
        };
        // Aggregates: the smallest committed offset; `None` (not yet aggregated) wins.
        let mut rebuild_below: Option<Option<i64>> = None;
        for a in aggs {
            start = start.zip(*a).map(|(s, a)| s.min(a));
            rebuild_below = Some(match rebuild_below {
                None => *a,
                Some(m) => m.zip(*a).map(|(m, a)| m.min(a)),
            });
        }
        Self {
            raw_from: raw.unwrap_or(i64::MIN),
            dlq_from: dlq.map_or(i64::MAX, |d| d.unwrap_or(i64::MIN)),
            agg_from: aggs.iter().map(|a| a.unwrap_or(i64::MIN)).collect(),
            start,
            rebuild_below,
        }
    }
}

/// What a pipeline's tables committed: the raw table, the dead-letter table (if any) and
/// each aggregate table.
type Committed = (
    floe_lake::Offsets,
    Option<floe_lake::Offsets>,
    Vec<floe_lake::Offsets>,
);

/// Reads the offsets `pipe`'s tables committed for the consumer group.
async fn read_committed(pipe: &Pipe, env: &Env) -> Result<Committed> {
    let catalog = env.committer.catalog();
    let (_, raw) = catalog.load_metadata(&pipe.raw).await?;
    let raw = committed_offsets(&raw, &env.group)?;
    let dlq = match &pipe.dlq {
        Some(ident) => {
            let (_, meta) = catalog.load_metadata(ident).await?;
            Some(committed_offsets(&meta, &env.group)?)
        }
        None => None,
    };
    let mut aggs = Vec::with_capacity(pipe.aggs.len());
    for ident in &pipe.aggs {
        let (_, meta) = catalog.load_metadata(ident).await?;
        aggs.push(committed_offsets(&meta, &env.group)?);
    }
    Ok((raw, dlq, aggs))
}

impl State {
    /// Reads each table's committed offsets for `tps`, records where each table resumes and
    /// returns where consumption starts (the smallest; `None` = from the beginning).
    /// With `assigned`, pipelines with aggregates rebuild the dedup state of the partitions.
    fn start_offsets(
        &mut self,
        env: &Env,
        tps: &[Tp],
        assigned: bool,
    ) -> Result<Vec<(Tp, Option<i64>)>> {
        let mut starts: HashMap<Tp, Option<i64>> = HashMap::new();
        for pipe in &mut self.pipes {
            let mine: Vec<&Tp> = tps
                .iter()
                .filter(|tp| pipe.cfg.topics.contains(&tp.0))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (raw, dlq, aggs) = env.rt.block_on(read_committed(pipe, env))?;
            let of =
                |o: &floe_lake::Offsets, tp: &Tp| o.get(&tp.0).and_then(|m| m.get(&tp.1)).copied();
            let mut rebuild = Vec::new();
            for tp in mine {
                let agg: Vec<Option<i64>> = aggs.iter().map(|a| of(a, tp)).collect();
                let r = Resume::new(of(&raw, tp), dlq.as_ref().map(|d| of(d, tp)), &agg);
                pipe.raw_from.insert(tp.clone(), r.raw_from);
                pipe.dlq_from.insert(tp.clone(), r.dlq_from);
                for (k, from) in r.agg_from.iter().enumerate() {
                    pipe.agg_from[k].insert(tp.clone(), *from);
                }
                if let Some(below) = r.rebuild_below {
                    rebuild.push((tp.clone(), below));
                }
                starts.insert(tp.clone(), r.start);
                // Where reading resumes: from the beginning, nothing is read yet (a rewind
                // must not leave the position it came from, which the drain check would
                // trust).
                match r.start {
                    Some(s) => self.next_offset.insert(tp.clone(), s),
                    None => self.next_offset.remove(tp),
                };
            }
            if assigned && !rebuild.is_empty() {
                pipe.tell_writer(ToWriter::Assigned(rebuild));
            }
        }
        Ok(starts.into_iter().collect())
    }

    /// [`State::start_offsets`] for newly assigned partitions, tried again while the tables
    /// cannot be read for a reason that may heal (storage or catalog unreachable), for up to
    /// [`ASSIGN_RETRY`]: the consumer cannot poll meanwhile, and past Kafka's
    /// `max.poll.interval.ms` the group would drop this member.
    pub(super) fn start_offsets_retrying(
        &mut self,
        env: &Env,
        tps: &[Tp],
    ) -> Result<Vec<(Tp, Option<i64>)>> {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            match self.start_offsets(env, tps, true) {
                Err(e) if e.is_retryable() && started.elapsed() < ASSIGN_RETRY => {
                    failures += 1;
                    let pause = backoff(failures);
                    tracing::error!(error = %e, retry_in = ?pause, "reading the committed offsets of assigned partitions failed; retrying");
                    std::thread::sleep(pause);
                }
                r => return r,
            }
        }
    }

    /// Drops pipeline `i`'s unflushed batch and holds its partitions for `pause`, after which
    /// [`State::rewind_due`] seeks them back to what the tables hold. The consumer keeps
    /// polling meanwhile (other pipelines go on; the group keeps this member).
    pub(super) fn hold<C: ConsumerContext>(
        &mut self,
        i: usize,
        consumer: &BaseConsumer<C>,
        pause: Duration,
    ) {
        self.pipes[i].discard();
        self.pipes[i].rewind_at = Some(Instant::now() + pause);
        let tpl = tp_list(&self.assigned_to(i));
        if tpl.count() > 0
            && let Err(e) = consumer.pause(&tpl)
        {
            // Only saves fetching what is ignored until the rewind.
            tracing::debug!(error = %e, "pausing partitions failed");
        }
    }

    /// Rewinds the pipelines whose hold is over. One whose tables cannot be read (storage or
    /// catalog unreachable) stays held and is tried again later; an error that retrying does
    /// not mend stops the loader.
    pub(super) fn rewind_due<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, env: &Env) {
        let now = Instant::now();
        for i in 0..self.pipes.len() {
            if self.pipes[i].rewind_at.is_none_or(|at| at > now) {
                continue;
            }
            match self.rewind(i, consumer, env) {
                Ok(()) => self.pipes[i].rewind_at = None,
                Err(e) if e.is_retryable() => {
                    let pipe = &mut self.pipes[i];
                    pipe.failures += 1;
                    let pause = backoff(pipe.failures);
                    tracing::error!(table = %pipe.name, error = %e, retry_in = ?pause, "reading the committed offsets to rewind to failed; retrying");
                    pipe.rewind_at = Some(now + pause);
                }
                Err(e) => {
                    tracing::error!(table = %self.pipes[i].name, error = %e, "reading the committed offsets to rewind to failed");
                    self.fatal.get_or_insert(e);
                }
            }
        }
    }

    /// Seeks pipeline `i`'s partitions back to what its tables hold, and resumes them.
    fn rewind<C: ConsumerContext>(
        &mut self,
        i: usize,
        consumer: &BaseConsumer<C>,
        env: &Env,
    ) -> Result<()> {
        let tps = self.assigned_to(i);
        let starts = self.start_offsets(env, &tps, false)?;
        for (tp, start) in starts {
            let offset = start.map(Offset::Offset).unwrap_or(Offset::Beginning);
            consumer
                .seek(&tp.0, tp.1, offset, Duration::from_secs(10))
                .map_err(|e| Error::kafka(format!("seeking {}[{}]", tp.0, tp.1), e))?;
        }
        let tpl = tp_list(&tps);
        if tpl.count() > 0 {
            consumer
                .resume(&tpl)
                .map_err(|e| Error::kafka(format!("resuming {tps:?}"), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_resumes_at_the_smallest_offset_any_of_its_tables_wants() {
        // Nothing committed anywhere: from the beginning, every table takes everything.
        let r = Resume::new(None, Some(None), &[]);
        assert_eq!(r.start, None);
        assert_eq!((r.raw_from, r.dlq_from), (i64::MIN, i64::MIN));
        assert_eq!(r.rebuild_below, None);
        // No dead-letter table: the raw table alone decides; nothing goes to dead letters.
        let r = Resume::new(Some(40), None, &[]);
        assert_eq!((r.start, r.raw_from, r.dlq_from), (Some(40), 40, i64::MAX));
        // The dead-letter table lags (it records its offsets less often): start there, and
        // the raw table skips what it holds.
        let r = Resume::new(Some(40), Some(Some(25)), &[]);
        assert_eq!((r.start, r.raw_from, r.dlq_from), (Some(25), 40, 25));
        // A dead-letter table that holds nothing of the partition: from the beginning.
        let r = Resume::new(Some(40), Some(None), &[]);
        assert_eq!((r.start, r.dlq_from), (None, i64::MIN));
        // Aggregates: the smallest of all, and the dedup state is rebuilt below the smallest
        // aggregate's offset.
        let r = Resume::new(Some(40), Some(Some(45)), &[Some(30), Some(35)]);
        assert_eq!(r.start, Some(30));
        assert_eq!(r.agg_from, vec![30, 35]);
        assert_eq!(r.rebuild_below, Some(Some(30)));
        // An aggregate that holds nothing of the partition: from the beginning, and nothing
        // to rebuild below.
        let r = Resume::new(Some(40), None, &[Some(30), None]);
        assert_eq!(r.start, None);
        assert_eq!(r.agg_from, vec![30, i64::MIN]);
        assert_eq!(r.rebuild_below, Some(None));
    }
}
