//! Deduplication by event key within an event-time window, per source partition.
//!
//! Producers send every copy of an event to the same partition (the key is the event id), so
//! the owner of a partition sees all copies and can keep, per partition, the keys seen within
//! the window. A flush's decisions are *pending* until its commits land ([`Deduper::commit`]);
//! a failed or discarded flush forgets them ([`Deduper::discard`]) so the replayed messages
//! are judged again the same way. After a restart or a rebalance, a partition's state is
//! rebuilt from the rows the raw table already holds ([`Deduper::load`]).

use std::collections::HashMap;
use std::time::Duration;

/// A source partition: (topic, partition).
pub type Part = (String, i32);

type Fast<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    seen: Fast<Box<str>, i64>,
    watermark: i64,
}

/// Keys seen per partition within the window.
pub struct Deduper {
    window_us: i64,
    parts: HashMap<Part, State>,
    pending: HashMap<Part, State>,
}

impl Deduper {
    /// Keys are remembered for `window` of event time behind the newest event of their
    /// partition.
    pub fn new(window: Duration) -> Self {
        Self {
            window_us: window.as_micros().min(i64::MAX as u128) as i64,
            parts: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Whether `key` (event time `event_us`) is the first occurrence in `part`; if so it is
    /// remembered (pending until [`Self::commit`]).
    pub fn first(&mut self, part: &Part, key: &str, event_us: i64) -> bool {
        if self
            .parts
            .get(part)
            .is_some_and(|s| s.seen.contains_key(key))
        {
            return false;
        }
        let pending = match self.pending.get_mut(part) {
            Some(p) => p,
            None => self.pending.entry(part.clone()).or_default(),
        };
        if pending.seen.contains_key(key) {
            return false;
        }
        pending.seen.insert(key.into(), event_us);
        pending.watermark = pending.watermark.max(event_us);
        true
    }

    /// The flush landed: pending keys become state, and keys older than the window behind
    /// each partition's newest event are forgotten.
    pub fn commit(&mut self) {
        for (part, pending) in self.pending.drain() {
            let state = self.parts.entry(part).or_default();
            state.watermark = state.watermark.max(pending.watermark);
            state.seen.extend(pending.seen);
            let horizon = state.watermark.saturating_sub(self.window_us);
            state.seen.retain(|_, t| *t >= horizon);
        }
    }

    /// The flush failed or was dropped: forget its decisions.
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// Drops the state of partitions this process no longer owns.
    pub fn forget<'a>(&mut self, parts: impl IntoIterator<Item = &'a Part>) {
        for p in parts {
            self.parts.remove(p);
            self.pending.remove(p);
        }
    }

    /// Replaces a partition's state with keys already committed (rebuilt from the raw table).
    pub fn load(&mut self, part: Part, keys: impl IntoIterator<Item = (String, i64)>) {
        let mut state = State::default();
        for (k, t) in keys {
            state.watermark = state.watermark.max(t);
            state.seen.insert(k.into_boxed_str(), t);
        }
        let horizon = state.watermark.saturating_sub(self.window_us);
        state.seen.retain(|_, t| *t >= horizon);
        self.pending.remove(&part);
        self.parts.insert(part, state);
    }

    /// Keys held (committed state only).
    pub fn len(&self) -> usize {
        self.parts.values().map(|s| s.seen.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The window in microseconds.
    pub fn window_us(&self) -> i64 {
        self.window_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    fn p(n: i32) -> Part {
        ("t".into(), n)
    }

    #[test]
    fn duplicates_within_a_batch_and_across_commits_are_caught_per_partition() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        assert!(d.first(&p(0), "a", 10));
        assert!(!d.first(&p(0), "a", 10), "same batch");
        assert!(
            d.first(&p(1), "a", 10),
            "another partition is another stream"
        );
        d.commit();
        assert!(!d.first(&p(0), "a", 10), "after commit");
        assert!(d.first(&p(0), "b", 20));
        d.discard();
        assert!(d.first(&p(0), "b", 20), "a discarded flush decided nothing");
    }

    #[test]
    fn keys_older_than_the_window_are_forgotten() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        assert!(d.first(&p(0), "old", 0));
        d.commit();
        assert!(d.first(&p(0), "new", 2 * H));
        d.commit();
        assert_eq!(d.len(), 1);
        assert!(d.first(&p(0), "old", 0), "beyond the window: counted again");
    }

    #[test]
    fn state_is_rebuilt_and_forgotten_per_partition() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        d.load(p(3), vec![("x".into(), H), ("y".into(), -1)]);
        assert_eq!(d.len(), 1, "y is outside the window behind x");
        assert!(!d.first(&p(3), "x", H));
        d.forget([&p(3)]);
        assert!(d.is_empty());
        assert!(d.first(&p(3), "x", H));
    }
}
