//! Deduplication by event key within an event-time window, per source partition.
//!
//! Producers send every copy of an event to the same partition (the key is the event id), so
//! the owner of a partition sees all copies and can keep, per partition, the keys seen within
//! the window. A flush's decisions are *pending* until its commits land ([`Deduper::commit`]);
//! a failed or discarded flush forgets them ([`Deduper::discard`]) so the replayed messages
//! are judged again the same way. After a restart or a rebalance, a partition's state is
//! rebuilt from the rows the raw table already holds ([`Deduper::load`]).
//!
//! Keys are held as their 128-bit XXH3 hash ([`key_hash`]): 16 bytes and no allocation per
//! key. Two distinct ids of one partition's window share a hash with a probability of about
//! n²/2¹²⁹ (n = ids in the window): 10⁻²⁷ for a million ids.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

/// A source partition: (topic, partition).
pub type Part = (String, i32);

/// The 128-bit hash a key is remembered by (stable across processes and versions).
pub fn key_hash(key: &[u8]) -> u128 {
    twox_hash::XxHash3_128::oneshot(key)
}

/// The keys are hashes already: the map uses their low bits as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed; kept total for any other use.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type Seen = HashMap<u128, i64, BuildHasherDefault<Prehashed>>;

/// One partition's keys: committed and pending ones in one map (one probe per row); the
/// pending ones are also listed so a discarded flush can take them out.
pub struct PartState {
    seen: Seen,
    pending: Vec<u128>,
    pending_watermark: i64,
    watermark: i64,
    /// Keys older than this (the committed watermark less the window) no longer count.
    horizon: i64,
    /// The horizon at the last trim: the map is trimmed when it has moved on enough.
    trimmed: i64,
}

impl Default for PartState {
    fn default() -> Self {
        Self {
            seen: Seen::default(),
            pending: Vec::new(),
            pending_watermark: i64::MIN,
            watermark: i64::MIN,
            horizon: i64::MIN,
            trimmed: i64::MIN,
        }
    }
}

impl PartState {
    /// Whether `key` (event time `event_us`) is the first occurrence; if so it is remembered
    /// (pending until [`Deduper::commit`]).
    #[inline]
    pub fn first(&mut self, key: &[u8], event_us: i64) -> bool {
        let h = key_hash(key);
        match self.seen.entry(h) {
            // A key past the window (not trimmed yet) counts again, as if forgotten.
            std::collections::hash_map::Entry::Occupied(o) if *o.get() >= self.horizon => false,
            std::collections::hash_map::Entry::Occupied(mut o) => {
                o.insert(event_us);
                self.pending.push(h);
                self.pending_watermark = self.pending_watermark.max(event_us);
                true
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(event_us);
                self.pending.push(h);
                self.pending_watermark = self.pending_watermark.max(event_us);
                true
            }
        }
    }

    fn commit(&mut self, window_us: i64) {
        self.pending.clear();
        self.watermark = self.watermark.max(self.pending_watermark);
        self.trim(window_us);
    }

    fn discard(&mut self) {
        for h in self.pending.drain(..) {
            self.seen.remove(&h);
        }
        self.pending_watermark = self.watermark;
    }

    fn trim(&mut self, window_us: i64) {
        let horizon = self.watermark.saturating_sub(window_us);
        self.horizon = horizon;
        // Trimming walks the whole map: do it when the horizon has moved a sixteenth of the
        // window (keys behind the horizon no longer count even while still held).
        if self.seen.is_empty() || horizon.saturating_sub(self.trimmed) < window_us / 16 {
            return;
        }
        self.seen.retain(|_, t| *t >= horizon);
        self.trimmed = horizon;
    }
}

/// Keys seen per partition within the window.
pub struct Deduper {
    window_us: i64,
    parts: HashMap<Part, PartState>,
}

impl Deduper {
    /// Keys are remembered for `window` of event time behind the newest event of their
    /// partition.
    pub fn new(window: Duration) -> Self {
        Self {
            window_us: window.as_micros().min(i64::MAX as u128) as i64,
            parts: HashMap::new(),
        }
    }

    /// The state of `part`, to judge its rows with [`PartState::first`].
    pub fn part(&mut self, part: &Part) -> &mut PartState {
        if !self.parts.contains_key(part) {
            self.parts.insert(part.clone(), PartState::default());
        }
        self.parts.get_mut(part).expect("inserted above")
    }

    /// Whether `key` (event time `event_us`) is the first occurrence in `part`; if so it is
    /// remembered (pending until [`Self::commit`]).
    pub fn first(&mut self, part: &Part, key: &str, event_us: i64) -> bool {
        self.part(part).first(key.as_bytes(), event_us)
    }

    /// The flush landed: pending keys become state, and keys older than the window behind
    /// each partition's newest event are forgotten.
    pub fn commit(&mut self) {
        for state in self.parts.values_mut() {
            state.commit(self.window_us);
        }
    }

    /// The flush failed or was dropped: forget its decisions.
    pub fn discard(&mut self) {
        for state in self.parts.values_mut() {
            state.discard();
        }
    }

    /// Drops the state of partitions this process no longer owns.
    pub fn forget<'a>(&mut self, parts: impl IntoIterator<Item = &'a Part>) {
        for p in parts {
            self.parts.remove(p);
        }
    }

    /// Replaces a partition's state with keys already committed (rebuilt from the raw table),
    /// given as [`key_hash`]es with their event times.
    pub fn load(&mut self, part: Part, keys: impl IntoIterator<Item = (u128, i64)>) {
        let mut state = PartState::default();
        for (k, t) in keys {
            state.watermark = state.watermark.max(t);
            state.seen.insert(k, t);
        }
        state.pending_watermark = state.watermark;
        state.trim(self.window_us);
        self.parts.insert(part, state);
    }

    /// Keys held (committed state only).
    pub fn len(&self) -> usize {
        self.parts
            .values()
            .map(|s| s.seen.len() - s.pending.len())
            .sum()
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
        d.load(p(3), vec![(key_hash(b"x"), H), (key_hash(b"y"), -1)]);
        assert_eq!(d.len(), 1, "y is outside the window behind x");
        assert!(!d.first(&p(3), "x", H));
        d.forget([&p(3)]);
        assert!(d.is_empty());
        assert!(d.first(&p(3), "x", H));
    }

    #[test]
    fn a_key_behind_the_horizon_counts_again_whether_or_not_it_was_trimmed() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        assert!(d.first(&p(0), "k", 0));
        d.commit();
        // The horizon moves by less than a sixteenth of the window past the key: not trimmed.
        assert!(d.first(&p(0), "late", H + 60_000_000));
        d.commit();
        assert!(
            d.first(&p(0), "k", H + 60_000_000),
            "k is older than the window"
        );
        assert!(!d.first(&p(0), "k", H + 60_000_000), "and now fresh again");
        d.discard();
        assert!(
            d.first(&p(0), "k", H + 60_000_000),
            "the discarded flush decided nothing"
        );
    }
}
