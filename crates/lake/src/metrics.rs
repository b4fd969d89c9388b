//! Metric names of commits, shared by every writer (loader, replay, maintenance).

/// Commit latency in seconds (histogram, label `table`).
pub const COMMIT_SECONDS: &str = "floe_commit_duration_seconds";
/// Commit attempts lost to concurrent writers (label `table`).
pub const COMMIT_CONFLICTS: &str = "floe_commit_conflicts_total";

/// Records a successful commit's latency and lost races.
pub fn record_commit(table: &str, committed: &crate::Committed) {
    metrics::histogram!(COMMIT_SECONDS, "table" => table.to_string())
        .record(committed.elapsed.as_secs_f64());
    if committed.attempts > 1 {
        metrics::counter!(COMMIT_CONFLICTS, "table" => table.to_string())
            .increment(u64::from(committed.attempts - 1));
    }
}
