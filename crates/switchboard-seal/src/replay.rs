//! The recipient's guard against replayed messages.

use std::collections::{HashMap, VecDeque};

use crate::SealError;

/// Refuses a message sent outside `window` of now, or one (sender, id)
/// already accepted. Remembers accepted ids only as long as their
/// `sent_at` is inside the window: an older copy is refused by its time.
/// Memory is bounded too: past `capacity` ids the oldest are forgotten,
/// and from then on nothing sent before the newest forgotten one is
/// accepted (refused as expired), so a forgotten id cannot come back.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: i64,
    capacity: usize,
    seen: HashMap<(String, String), i64>,
    order: VecDeque<(i64, String, String)>,
    /// Messages sent at or before this are refused: ids this old may have
    /// been forgotten to keep within `capacity`.
    floor_ms: i64,
}

impl ReplayGuard {
    /// A guard accepting messages sent up to `window_ms` before or after
    /// now.
    pub fn new(window_ms: i64) -> Self {
        Self::with_capacity(window_ms, usize::MAX)
    }

    /// The same, remembering at most `capacity` ids.
    pub fn with_capacity(window_ms: i64, capacity: usize) -> Self {
        Self {
            window_ms: window_ms.max(1),
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            floor_ms: i64::MIN,
        }
    }

    /// Checks a message's time and id at `now_ms` and remembers it.
    pub fn check(
        &mut self,
        from: &str,
        id: &str,
        sent_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), SealError> {
        self.forget_before(now_ms - self.window_ms);
        if (sent_at_ms - now_ms).abs() > self.window_ms || sent_at_ms <= self.floor_ms {
            return Err(SealError::OutsideWindow {
                sent_at_ms,
                now_ms,
                window_ms: self.window_ms,
            });
        }
        let key = (from.to_owned(), id.to_owned());
        if self.seen.contains_key(&key) {
            return Err(SealError::Replayed {
                from: from.to_owned(),
                id: id.to_owned(),
            });
        }
        self.seen.insert(key, sent_at_ms);
        self.order
            .push_back((sent_at_ms, from.to_owned(), id.to_owned()));
        while self.seen.len() > self.capacity {
            let Some((at, from, id)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&(from, id));
            self.floor_ms = self.floor_ms.max(at);
        }
        Ok(())
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn forget_before(&mut self, cutoff: i64) {
        // Entries are pushed in arrival order, which is nearly time order;
        // one sent later than a newer arrival stays until that one goes.
        while let Some((at, _, _)) = self.order.front() {
            if *at >= cutoff {
                break;
            }
            if let Some((_, from, id)) = self.order.pop_front() {
                self.seen.remove(&(from, id));
            }
        }
    }
}
