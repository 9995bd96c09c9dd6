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
//! The keys are kept in two generations, each spanning at least the
//! longest window asked for (and at least [`MIN_GENERATION`]); the older is
//! dropped when a new one starts, so what is kept is bounded by twice the
//! window's worth of appends (8 bytes and the set's overhead per event).
//! Events appended before the store opened are not known: until a window
//! fits after the newest of them, appends take the query.
//!
//! Writers note their events while they hold the write connection, before
//! they commit: one that rolls back leaves keys of events that were never
//! stored, which only sends a later repeat of them to the query. A
//! generation starts at the store's clock read under the lock, so every
//! event noted before it was appended no later than that.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
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
    current: HashSet<u64>,
    /// When `current` started.
    current_since: UnixMillis,
    previous: HashSet<u64>,
    /// Every event appended since then is in `current` or `previous`.
    complete_since: UnixMillis,
    /// How long a generation spans: the longest window asked for.
    span: i64,
}

impl Seen {
    /// Nothing known yet; `last_appended` is when the newest event in the
    /// log was appended, if there is one.
    pub(crate) fn new(clock: Clock, last_appended: Option<UnixMillis>) -> Self {
        let opened = clock.now_ms();
        Self(Arc::new(Mutex::new(Keys {
            clock,
            hasher: RandomState::new(),
            current: HashSet::new(),
            current_since: opened,
            previous: HashSet::new(),
            complete_since: last_appended.map_or(UnixMillis::MIN, |t| t.saturating_add(1)),
            span: MIN_GENERATION,
        })))
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        // No panic inside; a poisoned lock still holds consistent sets.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records events being appended, by `(source, id)`.
    pub(crate) fn note<'a>(&self, events: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut keys = self.keys();
        keys.rotate();
        for (source, id) in events {
            let h = keys.hasher.hash_one((source, id));
            keys.current.insert(h);
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
        events.into_iter().any(|(source, id, since)| {
            keys.span = keys.span.max(now.saturating_sub(since));
            if since < keys.complete_since {
                return true;
            }
            let h = keys.hasher.hash_one((source, id));
            keys.current.contains(&h) || keys.previous.contains(&h)
        })
    }
}

impl Keys {
    /// Starts a new generation once the current one spans `span`;
    /// answers the time.
    fn rotate(&mut self) -> UnixMillis {
        let now = self.clock.now_ms();
        if now.saturating_sub(self.current_since) >= self.span {
            self.previous = std::mem::take(&mut self.current);
            // What was dropped was appended at or before the previous
            // generation's start.
            self.complete_since = self.current_since.saturating_add(1);
            self.current_since = now;
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

        seen.note([("/s", "a")]);
        let since = at(7_501);
        assert!(seen.may_hold([("/s", "b", since), ("/s", "a", since)]));
        assert!(!seen.may_hold([("/s", "b", since), ("/t", "a", since)]));

        // `a` stays known for at least a window after it was noted...
        assert!(seen.may_hold([("/s", "a", at(12_400))]));
        at(12_500);
        seen.note([("/s", "c")]);
        assert!(seen.may_hold([("/s", "a", at(12_500))]));
        // ...and is forgotten after two.
        at(18_000);
        seen.note([("/s", "d")]);
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
}
