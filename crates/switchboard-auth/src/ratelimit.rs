//! Rate limiting: GCRA (the generic cell rate algorithm), a token bucket
//! kept as one timestamp per key.
//!
//! A key's state is its theoretical arrival time (TAT): when its bucket
//! would be full again. A request at `now` is allowed when
//! `max(TAT, now) + interval - now <= burst × interval`, and moves TAT on
//! by one interval. One number per key, updated under a short lock.
//!
//! [`RateLimiter`] is the trait; [`LocalLimiter`] keeps state in this
//! process. A limiter shared by several hubs implements the same trait on
//! Redis (the same arithmetic in one server-side script), which is why
//! [`RateLimiter::check`] is async.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// How many requests a key may make: `rate` per second on average, up to
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Requests per second, on average.
    pub per_second: f64,
    /// Requests allowed at once (the bucket's size).
    pub burst: u32,
}

impl Quota {
    /// The average gap between requests.
    fn interval(self) -> Duration {
        // Whole nanoseconds, so that the arithmetic below is exact.
        Duration::from_nanos((1e9 / self.per_second.max(1e-6)).round().max(1.0) as u64)
    }
}

/// The answer for one request, with what the rate limit headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// `X-RateLimit-Limit`: the bucket's size.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: requests left right now.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: seconds until the bucket is full again.
    pub reset_s: u64,
    /// `Retry-After`, for a refused request: seconds until one is allowed.
    pub retry_after_s: u64,
}

/// Decides whether a request under a key may go on.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request under `key` against `quota`.
    async fn check(&self, key: &str, quota: Quota) -> Decision;
}

const SHARDS: usize = 16;

/// A limiter whose state lives in this process: sharded maps of key to
/// TAT. Keys whose bucket is full again are dropped by [`LocalLimiter::sweep`],
/// so memory follows the keys active in the last few seconds.
pub struct LocalLimiter {
    /// A `std` mutex: each critical section is one lookup and one
    /// addition, never held across an await.
    shards: Vec<Mutex<HashMap<Box<str>, Instant>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl LocalLimiter {
    /// Decides for `key` at `now`.
    pub fn check_at(&self, key: &str, quota: Quota, now: Instant) -> Decision {
        let interval = quota.interval();
        let burst = quota.burst.max(1);
        let window = interval * burst;
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        let ahead = new_tat - now;
        if ahead > window {
            // Refused: the earliest moment one more fits.
            let wait = ahead - window;
            return Decision {
                allowed: false,
                limit: burst,
                remaining: 0,
                reset_s: ceil_s(tat - now),
                retry_after_s: ceil_s(wait).max(1),
            };
        }
        match map.get_mut(key) {
            Some(t) => *t = new_tat,
            None => {
                map.insert(key.into(), new_tat);
            }
        }
        let left = (window - ahead).as_nanos() / interval.as_nanos();
        Decision {
            allowed: true,
            limit: burst,
            remaining: u32::try_from(left).unwrap_or(u32::MAX),
            reset_s: ceil_s(ahead),
            retry_after_s: 0,
        }
    }

    /// Drops keys whose bucket is full again; returns how many are kept.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| {
                let mut map = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                map.retain(|_, tat| *tat > now);
                map.len()
            })
            .sum()
    }
}

fn ceil_s(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 { s + 1 } else { s }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn check(&self, key: &str, quota: Quota) -> Decision {
        self.check_at(key, quota, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let l = LocalLimiter::default();
        let q = Quota {
            per_second: 10.0,
            burst: 5,
        };
        let t0 = Instant::now();
        let remaining: Vec<u32> = (0..5).map(|_| l.check_at("k", q, t0).remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = l.check_at("k", q, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_s, 1);
        assert_eq!(refused.limit, 5);
        // One interval (100 ms) later, exactly one more fits.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at("k", q, t1).allowed);
        assert!(!l.check_at("k", q, t1).allowed);
        // Other keys are independent.
        assert!(l.check_at("other", q, t1).allowed);
        // After the whole window the bucket is full again.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(l.check_at("k", q, t2).remaining, 4);
    }

    #[test]
    fn sweep_forgets_full_buckets() {
        let l = LocalLimiter::default();
        let q = Quota {
            per_second: 1000.0,
            burst: 1,
        };
        l.check_at("a", q, Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.sweep(), 0);
    }
}
