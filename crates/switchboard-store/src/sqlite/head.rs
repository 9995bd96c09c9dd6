//! The log's head, as every writer that appends moves it and as its
//! readers follow it.
//!
//! Two watches hold the same offset. `head` wakes its receivers at every
//! commit that appends. `news` is what live delivery follows (the bus's
//! dispatcher): a commit of the group commit whose events no live
//! subscription takes (the bus's test, see `EventLog::follow`) moves it
//! without waking anyone, unless [`NEWS_LAG`] offsets went by unannounced.
//! Under a publish load no one follows live, the dispatcher thus sleeps,
//! where it used to be woken on another thread at every commit. Other
//! writers append hub events, which the hub's own subscriptions follow:
//! their commits always wake both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use switchboard_bus::Event;
use switchboard_bus::log::Wanted;
use tokio::sync::watch;

/// Offsets a quiet move may leave unannounced, well inside the window of
/// fresh events kept in memory (`events::RECENT`), so that a dispatcher
/// woken later finds them there, not in the store.
const NEWS_LAG: u64 = 1024;

/// The head; cheap to clone.
#[derive(Clone)]
pub(crate) struct Head(Arc<Inner>);

struct Inner {
    head: watch::Sender<u64>,
    news: watch::Sender<u64>,
    wanted: RwLock<Option<Wanted>>,
    /// The last offset `news` woke its receivers for.
    told: AtomicU64,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Head").field(&*self.0.head.borrow()).finish()
    }
}

impl Head {
    pub(crate) fn new(at: u64) -> Self {
        Self(Arc::new(Inner {
            head: watch::Sender::new(at),
            news: watch::Sender::new(at),
            wanted: RwLock::new(None),
            told: AtomicU64::new(at),
        }))
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.head.subscribe()
    }

    pub(crate) fn news(&self) -> watch::Receiver<u64> {
        self.0.news.subscribe()
    }

    pub(crate) fn follow(&self, wanted: Wanted) {
        *self.0.wanted.write().unwrap_or_else(|p| p.into_inner()) = Some(wanted);
    }

    /// Moves both forward to `seq` (never back), waking their receivers.
    pub(crate) fn advance(&self, seq: u64) {
        forward(&self.0.head, seq, true);
        forward(&self.0.news, seq, true);
        self.0.told.fetch_max(seq, Ordering::AcqRel);
    }

    /// Moves both forward to `seq`, the last of `events` just committed;
    /// wakes the receivers of `news` only if someone follows one of them
    /// live, or too many offsets went by since it last did.
    pub(crate) fn appended(&self, seq: u64, events: &[Arc<Event>]) {
        // The head first: whoever subscribes from now on starts after
        // these events, and whoever subscribed before is seen below.
        forward(&self.0.head, seq, true);
        let wanted = self.0.wanted.read().unwrap_or_else(|p| p.into_inner());
        let tell = seq.saturating_sub(self.0.told.load(Ordering::Acquire)) >= NEWS_LAG
            || wanted.as_ref().is_none_or(|wanted| wanted(events));
        drop(wanted);
        forward(&self.0.news, seq, tell);
        if tell {
            self.0.told.fetch_max(seq, Ordering::AcqRel);
        }
    }
}

/// Moves `watch` forward to `seq` (never back); wakes its receivers if it
/// moved and `wake`.
fn forward(watch: &watch::Sender<u64>, seq: u64, wake: bool) {
    watch.send_if_modified(|h| {
        let moved = seq > *h;
        *h = (*h).max(seq);
        moved && wake
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_bus::NewEvent;

    fn events(offsets: std::ops::RangeInclusive<u64>) -> Vec<Arc<Event>> {
        offsets
            .map(|o| {
                let e = NewEvent {
                    id: format!("e{o}"),
                    source: "/test".into(),
                    event_type: "t".into(),
                    topic: "a.b".into(),
                    subject: None,
                    time: None,
                    datacontenttype: "application/json".into(),
                    data: None,
                    extensions: Default::default(),
                };
                Arc::new(Event::new(e, o, 0))
            })
            .collect()
    }

    #[test]
    fn news_wakes_only_for_wanted_events_or_after_a_long_quiet() {
        let head = Head::new(0);
        let mut all = head.subscribe();
        let mut news = head.news();
        head.follow(Arc::new(|events: &[Arc<Event>]| {
            events.iter().any(|e| e.offset % 100 == 0)
        }));

        head.appended(3, &events(1..=3));
        assert!(all.has_changed().is_ok_and(|c| c));
        assert!(news.has_changed().is_ok_and(|c| !c), "no one wanted 1..=3");
        assert_eq!(*all.borrow_and_update(), 3);
        assert_eq!(*news.borrow(), 3, "the offset moves all the same");

        head.appended(100, &events(4..=100));
        assert!(news.has_changed().is_ok_and(|c| c), "100 was wanted");
        assert_eq!(*news.borrow_and_update(), 100);

        // Unwanted, but NEWS_LAG offsets since the last wake: woken.
        head.appended(150, &events(101..=150));
        assert!(news.has_changed().is_ok_and(|c| !c));
        head.appended(100 + NEWS_LAG, &events(1101..=1124));
        assert!(news.has_changed().is_ok_and(|c| c));
        assert_eq!(*news.borrow_and_update(), 100 + NEWS_LAG);

        // Other writers' appends always wake.
        head.advance(100 + NEWS_LAG + 1);
        assert!(news.has_changed().is_ok_and(|c| c));
        assert!(all.has_changed().is_ok_and(|c| c));
    }

    #[test]
    fn without_a_test_every_append_wakes() {
        let head = Head::new(7);
        let mut news = head.news();
        head.appended(8, &events(8..=8));
        assert!(news.has_changed().is_ok_and(|c| c));
        assert_eq!(*news.borrow_and_update(), 8);
        head.appended(8, &events(8..=8));
        assert!(news.has_changed().is_ok_and(|c| !c), "nothing moved");
    }
}
