//! The aggregate path's CPU time, counted where it runs: the `floe_aggregate_cpu_microseconds_total`
//! metric and the process totals `floe bench` reports per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::metrics::AGGREGATE_CPU;

/// Where the aggregate path spends CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateStage {
    /// Judging each row's event id and copying the rows the aggregates read, without the
    /// duplicates (on the writer task).
    Dedup,
    /// The aggregate queries (DataFusion) on each chunk, and merges of their partials.
    Query,
    /// Encoding the partials to Parquet and committing them.
    Write,
}

impl AggregateStage {
    /// Every stage, in the order of [`aggregate_cpu`].
    pub const ALL: [AggregateStage; 3] = [Self::Dedup, Self::Query, Self::Write];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Dedup => "dedup",
            Self::Query => "query",
            Self::Write => "write",
        }
    }
}

/// CPU time of the aggregate path in this process, per stage (nanoseconds).
static AGGREGATE_CPU_NS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// CPU time the aggregate path used in this process so far, per stage (in the order of
/// [`AggregateStage::ALL`]): `floe bench` reports it per event.
pub fn aggregate_cpu() -> [Duration; 3] {
    AGGREGATE_CPU_NS
        .each_ref()
        .map(|n| Duration::from_nanos(n.load(Ordering::Relaxed)))
}

/// The calling thread's CPU time so far (zero where the platform has no thread clock).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Counts CPU time against one stage of a pipeline's aggregate path: the
/// [`AGGREGATE_CPU`] counter and the process total of [`aggregate_cpu`].
#[derive(Clone)]
pub struct CpuMeter {
    stage: AggregateStage,
    counter: metrics::Counter,
    /// Nanoseconds counted by this meter (the counter gets whole microseconds of it).
    ns: Arc<AtomicU64>,
}

impl CpuMeter {
    /// A meter of `stage` for the pipeline loading `table`.
    pub fn new(table: &str, stage: AggregateStage) -> Self {
        Self {
            stage,
            counter: metrics::counter!(AGGREGATE_CPU, "table" => table.to_string(), "stage" => stage.label()),
            ns: Arc::default(),
        }
    }

    /// Adds `cpu`.
    pub fn add(&self, cpu: Duration) {
        let ns = cpu.as_nanos().min(u64::MAX as u128) as u64;
        if ns == 0 {
            return;
        }
        AGGREGATE_CPU_NS[self.stage as usize].fetch_add(ns, Ordering::Relaxed);
        let before = self.ns.fetch_add(ns, Ordering::Relaxed);
        let micros = (before + ns) / 1000 - before / 1000;
        if micros > 0 {
            self.counter.increment(micros);
        }
    }

    /// Adds the calling thread's CPU time since `start` (a [`thread_cpu`] reading).
    pub fn since(&self, start: Duration) {
        self.add(thread_cpu().saturating_sub(start));
    }

    /// Runs `f`, adding the thread CPU time of each of its polls (a poll runs on one thread;
    /// the time between polls, spent on other tasks, is not counted).
    pub async fn time<F: std::future::Future>(&self, f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            let start = thread_cpu();
            let out = f.as_mut().poll(cx);
            self.since(start);
            out
        })
        .await
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    /// Busy work the optimizer cannot drop.
    fn spin(until: Duration) -> u64 {
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < until {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        x
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_meter_counts_the_cpu_of_polls_not_the_waits_between_them() {
        let meter = CpuMeter::new("t", AggregateStage::Write);
        let before = aggregate_cpu()[AggregateStage::Write as usize];
        meter
            .time(async {
                spin(Duration::from_millis(30));
                // Waiting (no CPU) between two polls is not counted.
                tokio::time::sleep(Duration::from_millis(200)).await;
                spin(Duration::from_millis(30));
            })
            .await;
        let counted = meter.ns.load(Ordering::Relaxed);
        assert!(
            (60_000_000..150_000_000).contains(&counted),
            "counted {counted} ns for 60 ms of work and 200 ms of sleep"
        );
        let process = aggregate_cpu()[AggregateStage::Write as usize] - before;
        assert!(process >= Duration::from_nanos(counted));
    }
}
