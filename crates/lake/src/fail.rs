//! Failpoints for crash and race tests: `FLOE_FAILPOINTS=name[@n][=sleep:MS],…` makes the
//! process abort (as a SIGKILL would stop it) the n-th time (default first) execution reaches
//! `point(name)`, or, with `=sleep:MS`, pause there that long (printing `failpoint NAME:
//! sleeping` to stderr first, so a test can act while it waits). Unset in production: one
//! relaxed load per call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Action {
    Abort,
    Sleep(Duration),
}

/// Armed failpoints: name → (calls left until due, what then).
type Points = Mutex<HashMap<String, (u64, Action)>>;

static POINTS: OnceLock<Option<Points>> = OnceLock::new();

fn points() -> &'static Option<Points> {
    POINTS.get_or_init(|| {
        let spec = std::env::var("FLOE_FAILPOINTS").ok()?;
        let map = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (point, action) = match s.split_once('=') {
                    Some((p, a)) => {
                        let ms = a
                            .strip_prefix("sleep:")
                            .and_then(|ms| ms.parse().ok())
                            .unwrap_or(0);
                        (p, Action::Sleep(Duration::from_millis(ms)))
                    }
                    None => (s, Action::Abort),
                };
                match point.split_once('@') {
                    Some((name, n)) => (name.to_string(), (n.parse().unwrap_or(1), action)),
                    None => (point.to_string(), (1, action)),
                }
            })
            .collect();
        Some(Mutex::new(map))
    })
}

/// Aborts the process (or pauses) if the failpoint `name` is armed and due.
pub fn point(name: &str) {
    let Some(points) = points() else { return };
    let due = {
        let mut map = points.lock().expect("failpoints lock");
        match map.get_mut(name) {
            Some((left, action)) if *left > 0 => {
                *left -= 1;
                (*left == 0).then_some(*action)
            }
            _ => None,
        }
    };
    match due {
        Some(Action::Abort) => {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
        Some(Action::Sleep(d)) => {
            eprintln!("failpoint {name}: sleeping {} ms", d.as_millis());
            std::thread::sleep(d);
        }
        None => {}
    }
}
