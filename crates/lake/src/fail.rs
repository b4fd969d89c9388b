//! Failpoints for crash, race and retry tests: [`arm`] with `name[@n][=action],…` acts the n-th
//! time (default first) execution reaches `point(name)` or `check(name)`. The `floe` binary
//! arms them from the environment variable `FLOE_FAILPOINTS`. Actions:
//! - none: abort the process (as a SIGKILL would stop it);
//! - `sleep:MS`: pause that long (printing `failpoint NAME: sleeping` to stderr first, so a
//!   test can act while it waits);
//! - `error[:K]`: make [`check`] return an error that retrying may mend (an I/O error), that
//!   time and the K-1 times after it (`point` ignores it).
//!
//! Unarmed in production: one relaxed load per call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Action {
    Abort,
    Sleep(Duration),
    /// Fail this many times in a row.
    Error(u64),
}

/// Armed failpoints: name → (calls left until due, what then).
type Points = Mutex<HashMap<String, (u64, Action)>>;

static POINTS: OnceLock<Points> = OnceLock::new();

fn action(spec: &str) -> Action {
    if let Some(ms) = spec.strip_prefix("sleep:") {
        return Action::Sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
    }
    if let Some(times) = spec.strip_prefix("error") {
        let times = times.strip_prefix(':').and_then(|n| n.parse().ok());
        return Action::Error(times.unwrap_or(1).max(1));
    }
    Action::Sleep(Duration::ZERO)
}

/// Arms the failpoints of `spec` (see the module docs) for the rest of the process; a second
/// call changes nothing.
pub fn arm(spec: &str) {
    let map = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (point, action) = match s.split_once('=') {
                Some((p, a)) => (p, action(a)),
                None => (s, Action::Abort),
            };
            match point.split_once('@') {
                Some((name, n)) => (name.to_string(), (n.parse().unwrap_or(1), action)),
                None => (point.to_string(), (1, action)),
            }
        })
        .collect();
    let _ = POINTS.set(Mutex::new(map));
}

/// The action of failpoint `name` if it is armed and due now.
fn due(name: &str) -> Option<Action> {
    let points = POINTS.get()?;
    let mut map = points.lock().expect("failpoints lock");
    let (left, action) = map.get_mut(name)?;
    if *left == 0 {
        return None;
    }
    *left -= 1;
    if *left > 0 {
        return None;
    }
    let fired = *action;
    if let Action::Error(times) = action
        && *times > 1
    {
        // Due again at the next call.
        *times -= 1;
        *left = 1;
    }
    Some(fired)
}

fn act(name: &str, action: Action) {
    match action {
        Action::Abort => {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
        Action::Sleep(d) => {
            eprintln!("failpoint {name}: sleeping {} ms", d.as_millis());
            std::thread::sleep(d);
        }
        Action::Error(_) => {}
    }
}

/// Aborts the process (or pauses) if the failpoint `name` is armed and due.
pub fn point(name: &str) {
    if let Some(action) = due(name) {
        act(name, action);
    }
}

/// [`point`], and an error (one retrying may mend) when `name` is armed with `error`.
pub fn check(name: &str) -> crate::Result<()> {
    match due(name) {
        Some(Action::Error(_)) => {
            eprintln!("failpoint {name}: failing");
            Err(crate::Error::Io {
                context: format!("failpoint {name}"),
                source: std::io::Error::other("injected failure"),
            })
        }
        Some(action) => {
            act(name, action);
            Ok(())
        }
        None => Ok(()),
    }
}
