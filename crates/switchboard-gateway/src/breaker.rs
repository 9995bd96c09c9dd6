//! Per-instance circuit breakers.
//!
//! Closed: requests flow; `failure_threshold` failures in a row open it.
//! Open: nothing is sent for `open_for`; then it turns half-open.
//! Half-open: at most `half_open_max` trial requests at once; a success
//! closes it, a failure opens it again.
//!
//! The state sits behind a `std` mutex: each transition is a few
//! comparisons, never held across an await, and a trial slot is taken in
//! the same critical section that checks the state, so concurrent callers
//! cannot exceed the trial limit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses requests.
    pub open_for: Duration,
    /// Trial requests at once in the half-open state.
    pub half_open_max: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
            half_open_max: 1,
        }
    }
}

/// A breaker's state, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the instant.
    Open,
    /// A few trial requests may go.
    HalfOpen,
}

impl BreakerState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trials: u32 },
}

/// One instance's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

/// Permission to send one request; report its outcome with
/// [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    trial: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state now (an open breaker past its time reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may be sent now; takes a trial slot when
    /// half-open.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Some(Permit { trial: false }),
            State::Open { until } if now < until => None,
            State::Open { .. } => {
                *s = State::HalfOpen { trials: 1 };
                Some(Permit { trial: true })
            }
            State::HalfOpen { trials } if trials < self.config.half_open_max => {
                *s = State::HalfOpen { trials: trials + 1 };
                Some(Permit { trial: true })
            }
            State::HalfOpen { .. } => None,
        }
    }

    /// Whether a request could be sent now, without taking a slot (for
    /// choosing among instances).
    pub fn available(&self, now: Instant) -> bool {
        match *self.lock() {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { trials } => trials < self.config.half_open_max,
        }
    }

    /// Reports how a permitted request went. Returns the new state when it
    /// changed.
    pub fn record(&self, permit: Permit, success: bool, now: Instant) -> Option<BreakerState> {
        let mut s = self.lock();
        let before = discriminant(&s);
        *s = match (&*s, success) {
            (State::Closed { .. }, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                if failures + 1 >= self.config.failure_threshold {
                    State::Open {
                        until: now + self.config.open_for,
                    }
                } else {
                    State::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (State::HalfOpen { .. }, true) if permit.trial => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, false) if permit.trial => State::Open {
                until: now + self.config.open_for,
            },
            // A request let through before the breaker opened, finishing
            // now: it says nothing about the present.
            (State::HalfOpen { trials }, _) => State::HalfOpen { trials: *trials },
            (State::Open { until }, _) => State::Open { until: *until },
        };
        let after = discriminant(&s);
        (before != after).then(|| match *s {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        })
    }

    /// Returns an unused trial slot (the request was never sent).
    pub fn release(&self, permit: Permit) {
        if !permit.trial {
            return;
        }
        let mut s = self.lock();
        if let State::HalfOpen { trials } = &mut *s {
            *trials = trials.saturating_sub(1);
        }
    }
}

fn discriminant(s: &State) -> u8 {
    match s {
        State::Closed { .. } => 0,
        State::Open { .. } => 1,
        State::HalfOpen { .. } => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(5),
            half_open_max: 2,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t = Instant::now();
        for ok in [false, false, true, false, false] {
            let p = b.try_acquire(t).expect("closed");
            assert_eq!(b.record(p, ok, t), None);
        }
        let p = b.try_acquire(t).expect("closed");
        assert_eq!(b.record(p, false, t), Some(BreakerState::Open));
        assert_eq!(b.try_acquire(t), None);
        assert_eq!(b.state(t + Duration::from_secs(4)), BreakerState::Open);
    }

    #[test]
    fn half_open_limits_trials_and_decides() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            let p = b.try_acquire(t).expect("closed");
            b.record(p, false, t);
        }
        let later = t + Duration::from_secs(5);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        let p1 = b.try_acquire(later).expect("trial 1");
        let p2 = b.try_acquire(later).expect("trial 2");
        assert_eq!(b.try_acquire(later), None, "only two trials at once");
        // One trial never sent: its slot comes back.
        b.release(p2);
        let p3 = b.try_acquire(later).expect("slot returned");
        assert_eq!(b.record(p1, false, later), Some(BreakerState::Open));
        // p3 ends after the breaker reopened: no effect.
        assert_eq!(b.record(p3, true, later), None);
        let again = later + Duration::from_secs(5);
        let p = b.try_acquire(again).expect("trial");
        assert_eq!(b.record(p, true, again), Some(BreakerState::Closed));
        assert!(b.try_acquire(again).is_some());
    }

    #[test]
    fn concurrent_trials_never_exceed_the_limit() {
        let b = std::sync::Arc::new(breaker());
        let t = Instant::now();
        for _ in 0..3 {
            let p = b.try_acquire(t).expect("closed");
            b.record(p, false, t);
        }
        let later = t + Duration::from_secs(6);
        let granted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..16)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || usize::from(b.try_acquire(later).is_some()))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(granted, 2);
    }
}
