//! Which events the log may hold a copy of, known in memory.
//!
//! Every append looks for earlier copies of its events (same source and
//! id within the deduplication window). That look-up is a query of its
//! own, a round trip to SQLite's thread before the inserts can be sent,
//! and it almost never finds anything. [`Seen`] holds the hashed
//! `(source, id)` of every event appended lately, by any writer, so an
//! append whose events are all absent from it skips the query and sends
//! its inserts with its `BEGIN`. Only a possible repeat (a real one, or
//! two keys with one hash) takes the query, which decides exactly.
//!
//! The keys are kept in two generations. A new one starts when the
//! current one spans the longest window asked for (at least
//! [`MIN_GENERATION`]) or holds [`MAX_GENERATION`] keys, and the older is
//! dropped: at most twice [`MAX_GENERATION`] keys are kept (8 bytes each
//! and the set's overhead). What is dropped moves `complete_since` past
//! the newest `appended_at` among it, so a window reaching further back
//! takes the query; so do windows reaching back before the store opened,
//! until one fits after the newest event then in the log.
//!
//! The rule is exact whatever the clock does: writers note each event
//! with the `appended_at` it is stored with, while they hold the write
//! connection and before they commit (one that rolls back leaves keys of
//! events that were never stored, which only sends a later repeat of them
//! to the query). The clock only decides when a generation starts.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use switchboard_core::{Clock, UnixMillis};

/// The shortest span of a generation, in milliseconds.
const MIN_GENERATION: i64 = 1_000;
/// The most keys in one generation: past it a new one starts, so that
/// memory stays bounded however long the window or high the rate (at
/// 50,000 events/s, a generation then spans 80 s).
const MAX_GENERATION: usize = 4 << 20;

/// Cheap to clone: the keys are shared.
#[derive(Clone, Debug)]
pub(crate) struct Seen(Arc<Mutex<Keys>>);

#[derive(Debug)]
struct Keys {
    clock: Clock,
    /// Keyed per process, so that colliding keys cannot be chosen.
    hasher: RandomState,
    current: Generation,
    previous: Generation,
    /// Every event in the log appended at or after this is in `current`
    /// or `previous`.
    complete_since: UnixMillis,
    /// How long a generation spans: the longest window asked for.
    span: i64,
}

#[derive(Debug)]
struct Generation {
    keys: HashSet<u64, BuildHasherDefault<Hashed>>,
    /// When it started, by the clock.
    since: UnixMillis,
    /// The newest `appended_at` noted in it.
    newest: UnixMillis,
}

/// The hasher of a set of keys that are keyed hashes already: each is its
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
            keys: HashSet::default(),
            since,
            newest: UnixMillis::MIN,
        }
    }
}

impl Seen {
    /// Nothing known yet; `last_appended` is when the newest event in the
    /// log was appended, if there is one.
    pub(crate) fn new(clock: Clock, last_appended: Option<UnixMillis>) -> Self {
        let opened = clock.now_ms();
        Self(Arc::new(Mutex::new(Keys {
            clock,
            hasher: RandomState::new(),
            current: Generation::new(opened),
            previous: Generation::new(opened),
            complete_since: last_appended.map_or(UnixMillis::MIN, |t| t.saturating_add(1)),
            span: MIN_GENERATION,
        })))
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        // No panic inside; a poisoned lock still holds consistent sets.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records events being stored with `appended_at`, by `(source, id)`.
    pub(crate) fn note<'a>(
        &self,
        appended_at: UnixMillis,
        events: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut keys = self.keys();
        keys.rotate();
        let Keys {
            hasher, current, ..
        } = &mut *keys;
        current.newest = current.newest.max(appended_at);
        for (source, id) in events {
            current.keys.insert(hasher.hash_one((source, id)));
        }
    }

    /// Whether any of `events` (`(source, id, oldest appended_at of a
    /// copy)`) may have a copy in the log; `false` only when none has.
    pub(crate) fn may_hold<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a str, UnixMillis)>,
    ) -> bool {
        let mut keys = self.keys();
        let now = keys.rotate();
        let mut maybe = false;
        for (source, id, since) in events {
            keys.span = keys.span.max(now.saturating_sub(since));
            maybe = maybe
                || since < keys.complete_since
                || keys.holds(keys.hasher.hash_one((source, id)));
        }
        maybe
    }
}

impl Keys {
    fn holds(&self, hash: u64) -> bool {
        self.current.keys.contains(&hash) || self.previous.keys.contains(&hash)
    }

    /// Starts a new generation once the current one spans `span` or is
    /// full, dropping the older; answers the time.
    fn rotate(&mut self) -> UnixMillis {
        let now = self.clock.now_ms();
        let full = self.current.keys.len() >= MAX_GENERATION;
        if full || now.saturating_sub(self.current.since) >= self.span {
            // What is dropped was stored at or before its newest.
            self.complete_since = self
                .complete_since
                .max(self.previous.newest.saturating_add(1));
            std::mem::swap(&mut self.previous, &mut self.current);
            // The dropped set's memory serves the new generation.
            self.current.keys.clear();
            self.current.since = now;
            self.current.newest = UnixMillis::MIN;
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_and_unknown_times_may_be_held() {
        let clock = Clock::manual(1_000);
        // The log's newest event was appended at 1,000.
        let seen = Seen::new(clock.clone(), Some(1_000));
        let window = 5_000;
        let at = |t: i64| {
            clock.advance(t - clock.now_ms());
            t - window
        };
        // Before a window fits after the log's newest event, anything may
        // be held.
        assert!(seen.may_hold([("/s", "a", at(2_000))]));
        assert!(!seen.may_hold([("/s", "a", at(7_500))]));

        seen.note(7_500, [("/s", "a")]);
        let since = at(7_501);
        assert!(seen.may_hold([("/s", "b", since), ("/s", "a", since)]));
        assert!(!seen.may_hold([("/s", "b", since), ("/t", "a", since)]));

        // `a` stays known for at least a window after it was noted...
        assert!(seen.may_hold([("/s", "a", at(12_400))]));
        at(12_500);
        seen.note(12_500, [("/s", "c")]);
        assert!(seen.may_hold([("/s", "a", at(12_500))]));
        // ...and is forgotten after two.
        at(18_000);
        seen.note(18_000, [("/s", "d")]);
        assert!(!seen.may_hold([("/s", "a", at(18_000))]));
        assert!(seen.may_hold([("/s", "c", at(18_000))]));
        // A longer window than any before reaches past what is known.
        assert!(seen.may_hold([("/s", "z", 18_000 - 60_000)]));
    }

    #[test]
    fn an_empty_log_holds_nothing() {
        let seen = Seen::new(Clock::manual(1_000), None);
        assert!(!seen.may_hold([("/s", "a", 1_000 - 60_000)]));
    }

    /// A clock that stepped back (since the log's newest event, or since a
    /// writer stamped its events) does not make a dropped key look absent.
    #[test]
    fn a_clock_stepping_back_loses_no_key() {
        let clock = Clock::manual(1_000_000);
        // The newest event in the log is stamped 300 s ahead of the clock.
        let seen = Seen::new(clock.clone(), Some(1_300_000));
        let window = 120_000;
        for _ in 0..5 {
            clock.advance(60_000);
            seen.note(clock.now_ms(), [("/s", "other")]);
        }
        let since = clock.now_ms() - window;
        assert!(since < 1_300_000);
        assert!(
            seen.may_hold([("/s", "e", since)]),
            "the log's newest may be e"
        );

        // A writer stamped `x` at 2,000,000; the clock then read 1,400,000.
        seen.note(2_000_000, [("/s", "x")]);
        for _ in 0..4 {
            clock.advance(window);
            seen.note(clock.now_ms(), [("/s", "y")]);
        }
        assert!(clock.now_ms() < 2_000_000 + window);
        assert!(
            seen.may_hold([("/s", "x", clock.now_ms() - window)]),
            "x was dropped, yet its window still reaches it"
        );
    }
}
