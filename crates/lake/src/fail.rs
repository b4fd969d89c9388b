//! Failpoints for crash tests: `FLOE_FAILPOINTS=name[@n],…` makes the process abort (as a
//! SIGKILL would stop it) the n-th time (default first) execution reaches `point(name)`.
//! Unset in production: one relaxed load per call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;

static POINTS: OnceLock<Option<Mutex<HashMap<String, u64>>>> = OnceLock::new();

fn points() -> &'static Option<Mutex<HashMap<String, u64>>> {
    POINTS.get_or_init(|| {
        let spec = std::env::var("FLOE_FAILPOINTS").ok()?;
        let map = spec
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| match s.trim().split_once('@') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (s.trim().to_string(), 1),
            })
            .collect();
        Some(Mutex::new(map))
    })
}

/// Aborts the process if the failpoint `name` is armed and due.
pub fn point(name: &str) {
    let Some(points) = points() else { return };
    let mut map = points.lock().expect("failpoints lock");
    if let Some(left) = map.get_mut(name) {
        *left -= 1;
        if *left == 0 {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}
