//! The log's deduplication index, kept in memory.
//!
//! A publish that repeats the `(source, id)` of an event appended within
//! the deduplication window is answered with the stored copy. [`Seen`]
//! maps the hashed `(source, id)` of every event appended within the
//! longest window asked for, by any writer, to the event's offset, as
//! JetStream keeps the message ids of its duplicate window. The log has
//! no index by `(source, id)`: an index whose keys arrive in random order
//! dirties a random page of it for each event, and every page a commit
//! dirties is written to the WAL.
//!
//! A look-up gives the offsets of events whose key has the same hash; the
//! caller reads those rows and compares them exactly, so two keys with
//! one hash, or a key noted by a transaction that rolled back, cost a
//! read and never a wrong answer. What is missing is loaded from the log:
//! at start nothing is held, and the first append whose window reaches
//! back before the store opened loads the events appended within it
//! (found by offset, since `appended_at` never decreases along the log;
//! see [`Seen::stamp`]).
//!
//! Keys are kept in generations, each started when the newest spans a
//! quarter of the longest window asked for (at least
//! [`MIN_GENERATION`]); the oldest is dropped once its newest event is
//! older than that window. Memory follows the events appended within the
//! window: 20–40 bytes each (a 2-minute window at 50,000 events/s holds
//! 6 million).
//!
//! Writers stamp and note their events while they hold the write
//! connection, before they commit.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use switchboard_core::{Clock, UnixMillis};

/// The shortest span of a generation, in milliseconds.
const MIN_GENERATION: i64 = 1_000;

/// Cheap to clone: the keys are shared.
#[derive(Clone, Debug)]
pub(crate) struct Seen(Arc<Mutex<Keys>>);

#[derive(Debug)]
struct Keys {
    clock: Clock,
    /// Keyed per process, so that colliding keys cannot be chosen.
    hasher: RandomState,
    /// Oldest first; never empty.
    generations: VecDeque<Generation>,
    /// Every event in the log appended at or after this is held.
    complete_since: UnixMillis,
    /// The longest window asked for, in milliseconds.
    span: i64,
    /// The newest stamp given: stamps never go back.
    stamped: UnixMillis,
}

#[derive(Debug)]
struct Generation {
    /// Hashed key to offset.
    keys: HashMap<u64, u64, BuildHasherDefault<Hashed>>,
    /// Further offsets of hashes already in `keys` (two keys with one
    /// hash, or a repeat of a key whose first insert rolled back).
    more: Vec<(u64, u64)>,
    /// When it started, by the clock.
    since: UnixMillis,
    /// The newest `appended_at` noted in it.
    newest: UnixMillis,
}

/// The hasher of a map whose keys are keyed hashes already: each is its
/// own hash, not hashed again.
#[derive(Debug, Default)]
struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

impl Generation {
    fn new(since: UnixMillis) -> Self {
        Self {
            keys: HashMap::default(),
            more: Vec::new(),
            since,
            newest: UnixMillis::MIN,
        }
    }

    fn insert(&mut self, hash: u64, offset: u64) {
        if let Some(first) = self.keys.insert(hash, offset) {
            // Keep both: the first goes back, the later one aside.
            self.keys.insert(hash, first);
            self.more.push((hash, offset));
        }
    }

    fn offsets(&self, hash: u64, out: &mut Vec<u64>) {
        if let Some(&offset) = self.keys.get(&hash) {
            out.push(offset);
            out.extend(
                self.more
                    .iter()
                    .filter(|(h, _)| *h == hash)
                    .map(|&(_, offset)| offset),
            );
        }
    }
}

/// A look-up reached back before what is held: the events appended from
/// `since` up to (not including) `until` must be loaded first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Missing {
    pub(crate) since: UnixMillis,
    pub(crate) until: UnixMillis,
}

impl Seen {
    /// Nothing held yet; `last_appended` is when the newest event in the
    /// log was appended, if there is one.
    pub(crate) fn new(clock: Clock, last_appended: Option<UnixMillis>) -> Self {
        let opened = clock.now_ms();
        Self(Arc::new(Mutex::new(Keys {
            clock,
            hasher: RandomState::new(),
            generations: VecDeque::from([Generation::new(opened)]),
            complete_since: last_appended.map_or(UnixMillis::MIN, |t| t.saturating_add(1)),
            span: MIN_GENERATION,
            stamped: last_appended.unwrap_or(UnixMillis::MIN),
        })))
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        // No panic inside; a poisoned lock still holds consistent maps.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `appended_at` of events about to be stored: the clock, or the
    /// last stamp if the clock is behind it, so that `appended_at` never
    /// decreases along the log (the log is searched by time that way).
    /// Called while holding the write connection.
    pub(crate) fn stamp(&self) -> UnixMillis {
        let mut keys = self.keys();
        let now = keys.clock.now_ms();
        keys.stamped = keys.stamped.max(now);
        keys.stamped
    }

    /// Records events stored with `appended_at`: `(source, id, offset)`.
    pub(crate) fn note<'a>(
        &self,
        appended_at: UnixMillis,
        events: impl IntoIterator<Item = (&'a str, &'a str, u64)>,
    ) {
        let mut keys = self.keys();
        keys.rotate();
        let Keys {
            hasher,
            generations,
            ..
        } = &mut *keys;
        let Some(current) = generations.back_mut() else {
            return;
        };
        current.newest = current.newest.max(appended_at);
        for (source, id, offset) in events {
            current.insert(hasher.hash_one((source, id)), offset);
        }
    }

    /// The offsets of events that may be earlier copies of `events`
    /// (`(source, id, oldest appended_at of a copy)`), oldest first; or
    /// what must be loaded before the answer is complete.
    pub(crate) fn copies<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a str, UnixMillis)>,
    ) -> Result<Vec<u64>, Missing> {
        let mut keys = self.keys();
        let now = keys.rotate();
        let mut found = Vec::new();
        let mut reach = UnixMillis::MAX;
        for (source, id, since) in events {
            keys.span = keys.span.max(now.saturating_sub(since));
            reach = reach.min(since);
            let hash = keys.hasher.hash_one((source, id));
            for g in &keys.generations {
                g.offsets(hash, &mut found);
            }
        }
        if reach < keys.complete_since {
            return Err(Missing {
                since: reach,
                until: keys.complete_since,
            });
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    /// Starts loading the events of the log appended within `missing`.
    pub(crate) fn loading(&self, missing: Missing) -> Loading {
        Loading {
            hasher: self.keys().hasher.clone(),
            missing,
            loaded: Generation::new(missing.since),
        }
    }

    /// Holds what was loaded, which must be every event appended within
    /// its `missing`.
    pub(crate) fn loaded(&self, loading: Loading) {
        let mut keys = self.keys();
        // Only a load of exactly what was missing makes the keys complete
        // further back (one writer at a time loads, so nothing moved).
        if keys.complete_since == loading.missing.until {
            keys.complete_since = loading.missing.since;
        }
        keys.generations.push_front(loading.loaded);
    }

    /// How many keys are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        let keys = self.keys();
        keys.generations
            .iter()
            .map(|g| g.keys.len() + g.more.len())
            .sum()
    }
}

/// Keys being loaded from the log (see [`Seen::loading`]), one event at a
/// time, so that no copy of the events is held meanwhile.
#[derive(Debug)]
pub(crate) struct Loading {
    hasher: RandomState,
    missing: Missing,
    loaded: Generation,
}

impl Loading {
    /// One event of the log: `(source, id)`, its offset and when it was
    /// appended.
    pub(crate) fn add(&mut self, source: &str, id: &str, offset: u64, appended_at: UnixMillis) {
        self.loaded.newest = self.loaded.newest.max(appended_at);
        let hash = self.hasher.hash_one((source, id));
        self.loaded.insert(hash, offset);
    }
}

impl Keys {
    /// Starts a new generation once the newest spans a quarter of the
    /// longest window, and drops the oldest ones once nothing in them can
    /// be inside a window; answers the time.
    fn rotate(&mut self) -> UnixMillis {
        let now = self.clock.now_ms();
        let quarter = (self.span / 4).max(MIN_GENERATION);
        if self
            .generations
            .back()
            .is_none_or(|g| now.saturating_sub(g.since) >= quarter)
        {
            self.generations.push_back(Generation::new(now));
        }
        let horizon = now.saturating_sub(self.span);
        while self.generations.len() > 1
            && self.generations.front().is_some_and(|g| g.newest < horizon)
        {
            if let Some(dropped) = self.generations.pop_front() {
                // What is dropped was stored at or before its newest.
                self.complete_since = self.complete_since.max(dropped.newest.saturating_add(1));
            }
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_never_go_back() {
        let clock = Clock::manual(5_000);
        let seen = Seen::new(clock.clone(), Some(7_000));
        // The log's newest event is ahead of the clock.
        assert_eq!(seen.stamp(), 7_000);
        clock.advance(3_000);
        assert_eq!(seen.stamp(), 8_000);
        clock.advance(-2_000);
        assert_eq!(seen.stamp(), 8_000);
    }

    #[test]
    fn noted_keys_are_found_within_the_window_and_forgotten_after() {
        let clock = Clock::manual(1_000);
        let seen = Seen::new(clock.clone(), None);
        let window = 8_000;
        let since = || clock.now_ms() - window;
        seen.note(1_000, [("/s", "a", 1), ("/s", "b", 2)]);
        assert_eq!(seen.copies([("/s", "a", since())]), Ok(vec![1]));
        assert_eq!(
            seen.copies([("/s", "b", since()), ("/s", "a", since())]),
            Ok(vec![1, 2])
        );
        assert_eq!(seen.copies([("/t", "a", since())]), Ok(vec![]));

        // Still held while a window may reach it...
        for t in 1..=8 {
            clock.advance(1_000);
            seen.note(clock.now_ms(), [("/s", "later", 2 + t)]);
            assert_eq!(seen.copies([("/s", "a", since())]), Ok(vec![1]), "{t}");
        }
        // ...and dropped once none can.
        clock.advance(3_000);
        seen.note(clock.now_ms(), [("/s", "c", 20)]);
        assert_eq!(seen.copies([("/s", "a", since())]), Ok(vec![]));
        assert_eq!(seen.copies([("/s", "c", since())]), Ok(vec![20]));
        assert!(seen.len() < 10, "{} keys held", seen.len());
    }

    #[test]
    fn a_window_reaching_back_before_the_store_opened_asks_for_a_load_once() {
        let clock = Clock::manual(100_000);
        // The log's newest event was appended at 99,000.
        let seen = Seen::new(clock.clone(), Some(99_000));
        let since = 100_000 - 60_000;
        let missing = Missing {
            since,
            until: 99_001,
        };
        assert_eq!(seen.copies([("/s", "old", since)]), Err(missing));
        let mut loading = seen.loading(missing);
        loading.add("/s", "old", 7, 98_000);
        loading.add("/s", "older", 6, 50_000);
        seen.loaded(loading);
        assert_eq!(seen.copies([("/s", "old", since)]), Ok(vec![7]));
        assert_eq!(seen.copies([("/s", "new", since)]), Ok(vec![]));
        // A longer window than any before asks for what lies before.
        assert_eq!(
            seen.copies([("/s", "old", since - 1)]),
            Err(Missing {
                since: since - 1,
                until: since
            })
        );
    }

    #[test]
    fn an_empty_log_needs_no_load() {
        let seen = Seen::new(Clock::manual(1_000), None);
        assert_eq!(seen.copies([("/s", "a", 1_000 - 60_000)]), Ok(vec![]));
    }

    #[test]
    fn offsets_of_one_hash_are_all_kept() {
        let mut g = Generation::new(0);
        g.insert(42, 1);
        g.insert(42, 5);
        g.insert(43, 2);
        let mut out = Vec::new();
        g.offsets(42, &mut out);
        assert_eq!(out, [1, 5]);
    }

    /// A key stamped ahead of the clock (the clock stepped back) is held
    /// for as long as a window measured by the clock may reach it.
    #[test]
    fn a_clock_stepping_back_loses_no_key() {
        let clock = Clock::manual(2_000_000);
        let seen = Seen::new(clock.clone(), None);
        let window = 120_000;
        assert_eq!(
            seen.copies([("/s", "x", clock.now_ms() - window)]),
            Ok(vec![])
        );
        let at = seen.stamp();
        seen.note(at, [("/s", "x", 1)]);
        clock.advance(-600_000);
        for n in 0..6 {
            clock.advance(110_000);
            let at = seen.stamp();
            seen.note(at, [("/s", "y", 2 + n)]);
        }
        assert!(clock.now_ms() > 2_000_000);
        assert!(clock.now_ms() - window < 2_000_000);
        assert_eq!(
            seen.copies([("/s", "x", clock.now_ms() - window)]),
            Ok(vec![1])
        );
    }
}
