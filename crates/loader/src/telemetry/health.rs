//! `/health`: whether the loader commits while messages wait.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// What `/health` looks at: the last commit and whether messages are waiting.
#[derive(Debug)]
pub struct Health {
    last_commit_ms: AtomicI64,
    lag: AtomicI64,
    stale_after: Duration,
}

impl Health {
    /// Unhealthy when no commit happened for `stale_after` while messages wait.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            last_commit_ms: AtomicI64::new(chrono::Utc::now().timestamp_millis()),
            lag: AtomicI64::new(0),
            stale_after,
        }
    }

    /// Records a commit.
    pub fn committed(&self) {
        self.last_commit_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Records the total consumer lag.
    pub fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// `Ok(text)` when healthy, `Err(reason)` otherwise.
    pub fn check(&self) -> Result<String, String> {
        let age_ms =
            chrono::Utc::now().timestamp_millis() - self.last_commit_ms.load(Ordering::Relaxed);
        let lag = self.lag.load(Ordering::Relaxed);
        let age = Duration::from_millis(age_ms.max(0) as u64);
        if lag > 0 && age > self.stale_after {
            Err(format!(
                "unhealthy: no commit for {}s while {lag} messages wait",
                age.as_secs()
            ))
        } else {
            Ok(format!("ok: last commit {}s ago, lag {lag}", age.as_secs()))
        }
    }
}
