//! When a failed batch is tried again: the pauses between attempts and how many attempts each
//! class of failure ([`Retry`]) gets.

use std::time::Duration;

use floe_lake::Retry;

/// Failed flushes in a row, of a failure whose class is unknown, before the loader stops.
pub(crate) const UNKNOWN_ATTEMPTS: u32 = 5;

/// How long a pipeline that stops the loader is held (longer than the loader lives on).
pub(crate) const STOPPING: Duration = Duration::from_secs(3600);

/// What follows a failed flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again after this pause.
    RetryIn(Duration),
    /// Stop the loader; why it is not retried (again), for the stop message.
    Stop(String),
}

/// After `failures` failed flushes in a row, the last of class `retry`: retry after a pause,
/// or stop. Transient failures are retried for as long as they last, unknown ones
/// [`UNKNOWN_ATTEMPTS`] times, permanent ones never.
pub(crate) fn after_failure(retry: Retry, failures: u32) -> Next {
    match retry {
        Retry::Transient => Next::RetryIn(backoff(failures)),
        Retry::Unknown if failures < UNKNOWN_ATTEMPTS => Next::RetryIn(backoff(failures)),
        Retry::Unknown => Next::Stop(format!(
            "it failed {failures} times in a row; the batch is read again after a restart"
        )),
        Retry::Permanent => Next::Stop(
            "retrying cannot mend this; fix the cause and restart (the batch is read again)"
                .to_string(),
        ),
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
        let pause = |failures| match after_failure(Retry::Transient, failures) {
            Next::RetryIn(pause) => pause,
            Next::Stop(why) => panic!("transient: retried, not stopped ({why})"),
        };
        for failures in [1, 5, 50, 10_000] {
            assert!(
                pause(failures) <= Duration::from_secs(32),
                "{:?} after {failures}",
                pause(failures)
            );
        }
        assert!(pause(2) > pause(1));
        for failures in 1..UNKNOWN_ATTEMPTS {
            assert!(matches!(
                after_failure(Retry::Unknown, failures),
                Next::RetryIn(_)
            ));
        }
        let stop = |retry, failures| match after_failure(retry, failures) {
            Next::Stop(why) => why,
            Next::RetryIn(pause) => panic!("{retry:?}: stopped, not retried after {pause:?}"),
        };
        assert!(stop(Retry::Unknown, UNKNOWN_ATTEMPTS).contains("5 times"));
        assert!(stop(Retry::Permanent, 1).contains("cannot mend"));
    }
}
