//! When a failed upstream request is tried again, and how often.
//!
//! A request is retried only when that is safe: its method is idempotent
//! (GET, HEAD, OPTIONS, PUT, DELETE), or it never reached the upstream (the
//! connection failed); and only if its body can be sent again (none, or
//! small enough to have been kept). Retries wait a backoff and draw on a
//! budget per service, so that when an upstream is failing, retries cannot
//! multiply its load: at most `budget_ratio` of the requests of the last
//! ten seconds, plus `budget_min_per_second`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;

/// Retry settings of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub attempts: u32,
    /// Upstream statuses that are retried (for idempotent requests).
    pub on_status: Vec<u16>,
    /// Wait before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Retries allowed, as a share of requests in the window.
    pub budget_ratio: f64,
    /// Retries allowed per second of the window whatever the traffic.
    pub budget_min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            on_status: vec![502, 503, 504],
            backoff: Duration::from_millis(25),
            budget_ratio: 0.2,
            budget_min_per_second: 3,
        }
    }
}

/// Whether a method may be repeated without changing the outcome.
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

const WINDOW: usize = 10;

/// Requests and retries of the last ten seconds, by second.
#[derive(Debug)]
pub struct RetryBudget {
    slots: Mutex<[(u64, u64, u64); WINDOW]>,
    epoch: Instant,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            slots: Mutex::new([(0, 0, 0); WINDOW]),
            epoch: Instant::now(),
        }
    }
}

impl RetryBudget {
    fn with_slot<T>(
        &self,
        now: Instant,
        f: impl FnOnce(&mut [(u64, u64, u64); WINDOW], usize, u64) -> T,
    ) -> T {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = (second % WINDOW as u64) as usize;
        // A slot from an earlier round of the window starts over.
        if slots[i].0 != second {
            slots[i] = (second, 0, 0);
        }
        f(&mut slots, i, second)
    }

    /// Counts a first attempt.
    pub fn request(&self, now: Instant) {
        self.with_slot(now, |s, i, _| s[i].1 += 1);
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_retry(&self, policy: &RetryPolicy, now: Instant) -> bool {
        self.with_slot(now, |s, i, second| {
            let live = s
                .iter()
                .filter(|(sec, _, _)| second.saturating_sub(*sec) < WINDOW as u64);
            let (requests, retries) = live.fold((0, 0), |(a, b), (_, r, t)| (a + r, b + t));
            let allowed = policy.budget_ratio * requests as f64
                + f64::from(policy.budget_min_per_second) * WINDOW as f64;
            if (retries as f64) < allowed {
                s[i].2 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert!(!idempotent(&m), "{m}");
        }
    }

    #[test]
    fn budget_caps_retries_to_a_share_of_requests() {
        let b = RetryBudget::default();
        let p = RetryPolicy {
            budget_ratio: 0.1,
            budget_min_per_second: 1,
            ..Default::default()
        };
        let now = Instant::now();
        for _ in 0..1000 {
            b.request(now);
        }
        // 10% of 1000 plus 1/s over 10 s.
        let granted = (0..1000).filter(|_| b.try_retry(&p, now)).count();
        assert_eq!(granted, 110);
        // Ten seconds later the window is new.
        let later = now + Duration::from_secs(11);
        assert!(b.try_retry(&p, later));
    }
}
