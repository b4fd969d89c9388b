//! Deduplication by event key within an event-time window, per source partition.
//!
//! Producers send every copy of an event to the same partition (the key is the event id), so
//! the owner of a partition sees all copies and can keep, per partition, the keys seen within
//! the window, which trails the newest event of the partition. A flush's decisions are
//! *pending* until its commits land ([`Deduper::commit`]); a failed or discarded flush
//! forgets them ([`Deduper::discard`]) so the replayed messages are judged again the same
//! way. After a restart or a rebalance, a partition's state is rebuilt from the rows the raw
//! table already holds ([`Deduper::load`]).
//!
//! Keys are held as their 128-bit XXH3 hash ([`key_hash`]): 16 bytes and no allocation per
//! key. Two distinct ids of one partition's window share a hash with a probability of about
//! n²/2¹²⁹ (n = ids in the window): 10⁻²⁷ for a million ids.
//!
//! Event ids come from producers, so nothing about the hashing may be predictable: the XXH3
//! hash is seeded at random once per process, and the maps place those hashes with a
//! randomly keyed hasher (aHash), so no choice of ids makes keys pile up in a map's probe
//! sequences. Nothing persists a hash: the state is rebuilt from the raw table's ids, in the
//! process that uses it.
//!
//! The state is capped ([`Deduper::with_max_keys`]): past the cap the oldest keys (by event
//! time, across partitions) are forgotten before their window ends ([`Deduper::enforce_cap`]),
//! and a later duplicate of one of them counts again.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::time::Duration;

/// A source partition: (topic, partition).
pub type Part = (String, i32);

/// The 128-bit hash a key is remembered by: XXH3 with a seed drawn at random once per
/// process (the same key hashes the same within a process, unpredictably across them).
pub fn key_hash(key: &[u8]) -> u128 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0));
    twox_hash::XxHash3_128::oneshot_with_seed(seed, key)
}

/// A key's event time, and whether the pending flush remembered it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: i64,
    pending: bool,
}

type SeenMap = HashMap<u128, Seen, ahash::RandomState>;

/// One partition's keys: committed and pending ones in one map (one probe per row).
///
/// The window trails the partition's newest event, pending ones included, and keys behind
/// it are trimmed as the stream moves on, also in the middle of a flush: the map holds one to
/// two windows of keys, however long a flush spans. Committed
/// keys a pending flush trims or overwrites are set aside, so a discarded flush restores the
/// committed state exactly and its messages are judged again the same way.
pub struct PartState {
    seen: SeenMap,
    /// Committed keys the pending flush trimmed or overwrote (key, event time).
    displaced: Vec<(u128, i64)>,
    /// Keys the pending flush remembered.
    pending: usize,
    /// Newest event time committed.
    watermark: i64,
    /// Newest event time seen, pending included (≥ `watermark`).
    newest: i64,
    /// The horizon at the last trim: the map is trimmed when it has moved on enough.
    trimmed: i64,
    window_us: i64,
}

impl PartState {
    fn new(window_us: i64) -> Self {
        Self {
            seen: SeenMap::default(),
            displaced: Vec::new(),
            pending: 0,
            watermark: i64::MIN,
            newest: i64::MIN,
            trimmed: i64::MIN,
            window_us,
        }
    }

    /// Keys older than this (the window behind the newest event) no longer count.
    fn horizon(&self) -> i64 {
        self.newest.saturating_sub(self.window_us)
    }

    /// Whether `key` (event time `event_us`) is the first occurrence within the window; if
    /// so it is remembered (pending until [`Deduper::commit`]).
    #[inline]
    pub fn first(&mut self, key: &[u8], event_us: i64) -> bool {
        let h = key_hash(key);
        let horizon = self.horizon();
        let fresh = Seen {
            at: event_us,
            pending: true,
        };
        match self.seen.entry(h) {
            std::collections::hash_map::Entry::Occupied(o) if o.get().at >= horizon => {
                return false;
            }
            // A key past the window (not trimmed yet) counts again, as if forgotten.
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let old = o.insert(fresh);
                if !old.pending {
                    self.displaced.push((h, old.at));
                    self.pending += 1;
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(fresh);
                self.pending += 1;
            }
        }
        if event_us > self.newest {
            self.newest = event_us;
            // Trimming walks the whole map: once the horizon has moved a whole window, so each
            // key is visited about twice in its life (five times at a quarter window, three at
            // a half: `retain` was still a quarter of the dedup's CPU in a profile over 417
            // partitions).
            if self.horizon().saturating_sub(self.trimmed) >= self.window_us {
                self.trim();
            }
        }
        true
    }

    fn trim(&mut self) {
        let horizon = self.horizon();
        self.forget_before(horizon);
        self.trimmed = horizon;
    }

    /// Forgets the keys with an event time before `at` (a discarded flush restores the
    /// committed ones); returns how many.
    fn forget_before(&mut self, at: i64) -> usize {
        let before = self.seen.len();
        let (displaced, pending) = (&mut self.displaced, &mut self.pending);
        self.seen.retain(|k, v| {
            let keep = v.at >= at;
            if !keep {
                if v.pending {
                    *pending -= 1;
                } else {
                    displaced.push((*k, v.at));
                }
            }
            keep
        });
        before - self.seen.len()
    }

    fn commit(&mut self) {
        if self.pending > 0 {
            for v in self.seen.values_mut() {
                v.pending = false;
            }
        }
        self.pending = 0;
        self.displaced.clear();
        self.watermark = self.newest;
    }

    fn discard(&mut self) {
        if self.pending > 0 {
            self.seen.retain(|_, v| !v.pending);
        }
        for (k, at) in self.displaced.drain(..) {
            self.seen.insert(k, Seen { at, pending: false });
        }
        self.pending = 0;
        self.newest = self.watermark;
        self.trimmed = self.trimmed.min(self.horizon());
    }

    /// Committed keys held.
    fn committed(&self) -> usize {
        self.seen.len() - self.pending
    }
}

/// Keys seen per partition within the window.
pub struct Deduper {
    window_us: i64,
    parts: HashMap<Part, PartState>,
    max_keys: usize,
}

/// Keys [`Deduper::enforce_cap`] forgot before their window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eviction {
    /// How many.
    pub keys: usize,
    /// Every key with an event time before this (epoch micros) was forgotten.
    pub before_us: i64,
    /// Keys held after.
    pub held: usize,
}

impl Deduper {
    /// Keys are remembered for `window` of event time behind the newest event of their
    /// partition (with no cap; see [`Self::with_max_keys`]).
    pub fn new(window: Duration) -> Self {
        Self {
            window_us: window.as_micros().min(i64::MAX as u128) as i64,
            parts: HashMap::new(),
            max_keys: usize::MAX,
        }
    }

    /// Holds at most about `max_keys` keys (checked by [`Self::enforce_cap`]).
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Keys held, pending ones included.
    pub fn held(&self) -> usize {
        self.parts.values().map(|p| p.seen.len()).sum()
    }

    /// When more than the cap are held, forgets the oldest keys (by event time, across
    /// partitions: the ones least likely to see a duplicate still), down to seven eighths of
    /// the cap so that it does not happen again with the next few keys. Keys of one event
    /// time go together. Committed keys forgotten during a flush come back if the flush is
    /// discarded, so its messages are judged again the same way; they are freed when it
    /// commits.
    pub fn enforce_cap(&mut self) -> Option<Eviction> {
        let held = self.held();
        if held <= self.max_keys {
            return None;
        }
        let excess = held - (self.max_keys - self.max_keys / 8);
        let mut times: Vec<i64> = self
            .parts
            .values()
            .flat_map(|p| p.seen.values().map(|s| s.at))
            .collect();
        let (_, newest_evicted, _) = times.select_nth_unstable(excess - 1);
        let before_us = newest_evicted.saturating_add(1);
        drop(times);
        let keys = self
            .parts
            .values_mut()
            .map(|p| p.forget_before(before_us))
            .sum();
        Some(Eviction {
            keys,
            before_us,
            held: self.held(),
        })
    }

    /// The state of `part`, to judge its rows with [`PartState::first`].
    pub fn part(&mut self, part: &Part) -> &mut PartState {
        if !self.parts.contains_key(part) {
            self.parts
                .insert(part.clone(), PartState::new(self.window_us));
        }
        self.parts.get_mut(part).expect("inserted above")
    }

    /// Whether `key` (event time `event_us`) is the first occurrence in `part`; if so it is
    /// remembered (pending until [`Self::commit`]).
    pub fn first(&mut self, part: &Part, key: &str, event_us: i64) -> bool {
        self.part(part).first(key.as_bytes(), event_us)
    }

    /// The flush landed: its keys become committed state.
    pub fn commit(&mut self) {
        for state in self.parts.values_mut() {
            state.commit();
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
        let mut state = PartState::new(self.window_us);
        for (k, at) in keys {
            state.watermark = state.watermark.max(at);
            state.seen.insert(k, Seen { at, pending: false });
        }
        state.newest = state.watermark;
        state.trim();
        self.parts.insert(part, state);
    }

    /// Keys held (committed state only).
    pub fn len(&self) -> usize {
        self.parts.values().map(PartState::committed).sum()
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

    #[test]
    fn a_long_flush_holds_at_most_two_windows_of_keys() {
        let mut d = Deduper::new(Duration::from_secs(3600));
        // Ten windows of events in one flush, 100 per window.
        for i in 0..1000i64 {
            assert!(d.first(&p(0), &format!("k{i}"), i * H / 100));
        }
        let held = d.parts[&p(0)].seen.len();
        assert!(held <= 201, "{held} keys held for a window of 100");
        d.commit();
        assert!(!d.first(&p(0), "k999", 999 * H / 100));
        assert!(d.first(&p(0), "k0", 0), "long behind the window");
    }

    #[test]
    fn over_the_cap_the_oldest_keys_are_forgotten_first() {
        let mut d = Deduper::new(Duration::from_secs(86_400)).with_max_keys(80);
        // 100 keys a minute apart over two partitions, all within the window.
        for i in 0..100i64 {
            assert!(d.first(&p((i % 2) as i32), &format!("k{i}"), i * 60_000_000));
        }
        d.commit();
        let e = d.enforce_cap().expect("over the cap");
        // Down to 7/8 of the cap: the 30 oldest go.
        assert_eq!(e.keys, 30);
        assert_eq!(e.held, 70);
        assert_eq!(e.before_us, 29 * 60_000_000 + 1);
        assert_eq!(d.enforce_cap(), None);
        assert!(
            !d.first(&p(1), "k99", 99 * 60_000_000),
            "recent: still known"
        );
        assert!(!d.first(&p(0), "k30", 30 * 60_000_000), "the oldest kept");
        assert!(
            d.first(&p(1), "k29", 29 * 60_000_000),
            "forgotten early: counted again"
        );
    }

    #[test]
    fn keys_forgotten_during_a_discarded_flush_come_back() {
        let mut d = Deduper::new(Duration::from_secs(3600)).with_max_keys(4);
        for i in 0..4i64 {
            assert!(d.first(&p(0), &format!("old{i}"), i));
        }
        d.commit();
        for i in 0..4i64 {
            assert!(d.first(&p(0), &format!("new{i}"), 100 + i));
        }
        let e = d.enforce_cap().expect("over the cap");
        assert_eq!(e.keys, 4, "the four committed ones: the oldest");
        assert!(d.first(&p(0), "old0", 0), "forgotten");
        d.discard();
        assert!(
            !d.first(&p(0), "old0", 0),
            "the discarded flush decided nothing"
        );
        assert!(d.first(&p(0), "new0", 100), "and new0 was never committed");
    }

    #[test]
    fn hashes_are_seeded_and_keys_spread_over_the_map() {
        // Not XXH3's fixed-key hash: another process hashes ids differently.
        assert_ne!(
            key_hash(b"event-1"),
            twox_hash::XxHash3_128::oneshot(b"event-1")
        );
        assert_eq!(key_hash(b"event-1"), key_hash(b"event-1"));
        // Keys whose hashes share their low 64 bits (as crafted ids would under a fixed key
        // and a map using those bits as they are) still spread over the map.
        let seen = SeenMap::default();
        let hasher = seen.hasher();
        let buckets: std::collections::HashSet<u64> = (0..10_000u128)
            .map(|i| hasher.hash_one(i << 64) & 0xffff)
            .collect();
        assert!(buckets.len() > 5_000, "{} buckets", buckets.len());
    }

    /// What the deduper must decide: a message counts unless its key counted before at an
    /// event time within the window behind the newest counted event; a discarded flush
    /// decided nothing.
    #[derive(Clone, Default)]
    struct Model {
        counted: HashMap<String, i64>,
        newest: Option<i64>,
    }

    impl Model {
        fn first(&mut self, key: &str, at: i64, window: i64) -> bool {
            let horizon = self.newest.map_or(i64::MIN, |n| n - window);
            if self.counted.get(key).is_some_and(|t| *t >= horizon) {
                return false;
            }
            self.counted.insert(key.to_string(), at);
            self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
            true
        }
    }

    proptest::proptest! {
        #[test]
        fn decisions_match_the_model_across_commits_and_discards(
            flushes in proptest::collection::vec(
                (proptest::collection::vec((0u8..12, 0i64..40, 0i64..6), 1..60), proptest::bool::weighted(0.7)),
                1..8,
            ),
        ) {
            // A window of 10 time units; events drift forward with jitter, keys repeat.
            let window = 10;
            let mut d = Deduper::new(Duration::from_micros(window as u64));
            let mut model = Model::default();
            let mut clock = 0i64;
            for (messages, lands) in flushes {
                let events: Vec<(String, i64)> = messages
                    .iter()
                    .map(|(key, step, back)| {
                        clock += step / 8;
                        (format!("k{key}"), clock - back)
                    })
                    .collect();
                let before = model.clone();
                let mut decided = Vec::new();
                for (key, at) in &events {
                    let ours = d.first(&p(0), key, *at);
                    proptest::prop_assert_eq!(ours, model.first(key, *at, window), "{} at {}", key, at);
                    decided.push(ours);
                }
                if !lands {
                    // The flush fails; its messages are read and judged again, the same way.
                    d.discard();
                    model = before;
                    for ((key, at), first_time) in events.iter().zip(&decided) {
                        let ours = d.first(&p(0), key, *at);
                        proptest::prop_assert_eq!(ours, model.first(key, *at, window));
                        proptest::prop_assert_eq!(ours, *first_time, "{} at {} judged otherwise on replay", key, at);
                    }
                }
                d.commit();
            }
        }
    }
}
