//! When a failed batch is tried again: the pauses between attempts and how many attempts each
//! class of failure ([`Retry`]) gets.

use std::time::Duration;

use floe_lake::Retry;

/// Failed flushes in a row, of a failure whose class is unknown, before the loader stops.
pub(crate) const UNKNOWN_ATTEMPTS: u32 = 5;

/// How long a pipeline that stops the loader is held (longer than the loader lives on).
pub(crate) const STOPPING: Duration = Duration::from_secs(3600);

/// After `failures` failed flushes in a row, the last of class `retry`: the pause before the
/// next attempt, or `None` to stop. Transient failures are retried for as long as they last,
/// unknown ones [`UNKNOWN_ATTEMPTS`] times, permanent ones never.
pub(crate) fn retry_after(retry: Retry, failures: u32) -> Option<Duration> {
    match retry {
        Retry::Transient => Some(backoff(failures)),
        Retry::Unknown if failures < UNKNOWN_ATTEMPTS => Some(backoff(failures)),
        Retry::Unknown | Retry::Permanent => None,
    }
}

/// Why a failure of class `retry` after `attempts` is not retried (again), for the stop
/// message.
pub(crate) fn verdict(retry: Retry, attempts: u32) -> String {
    match retry {
        Retry::Unknown => {
            format!("it failed {attempts} times in a row; the batch is read again after a restart")
        }
        _ => "retrying cannot mend this; fix the cause and restart (the batch is read again)"
            .to_string(),
    }
}

/// The pause after `failures` failed attempts in a row: 0.5 s, doubling up to 32 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failures.clamp(1, 7)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_retry_for_ever_unknown_ones_a_few_times_permanent_ones_never() {
        for failures in [1, 5, 50, 10_000] {
            let pause = retry_after(Retry::Transient, failures).expect("transient: retried");
            assert!(
                pause <= Duration::from_secs(32),
                "{pause:?} after {failures}"
            );
        }
        assert!(retry_after(Retry::Transient, 2) > retry_after(Retry::Transient, 1));
        for failures in 1..UNKNOWN_ATTEMPTS {
            assert!(retry_after(Retry::Unknown, failures).is_some());
        }
        assert_eq!(retry_after(Retry::Unknown, UNKNOWN_ATTEMPTS), None);
        assert_eq!(retry_after(Retry::Permanent, 1), None);
        assert!(verdict(Retry::Unknown, 5).contains("5 times"));
        assert!(verdict(Retry::Permanent, 1).contains("cannot mend"));
    }
}
