//! Redelivery delays: fixed, linear, exponential or Fibonacci, capped, with
//! optional jitter.

use std::str::FromStr;
use std::time::Duration;

/// How the delay grows with each failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    /// Always `initial`.
    Fixed,
    /// `initial × n` after the n-th failure.
    Linear,
    /// `initial × 2^(n-1)`.
    Exponential,
    /// `initial × fib(n)`: 1, 1, 2, 3, 5, 8, …
    Fibonacci,
}

impl BackoffKind {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Linear => "linear",
            Self::Exponential => "exponential",
            Self::Fibonacci => "fibonacci",
        }
    }
}

impl FromStr for BackoffKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fixed" => Ok(Self::Fixed),
            "linear" => Ok(Self::Linear),
            "exponential" => Ok(Self::Exponential),
            "fibonacci" => Ok(Self::Fibonacci),
            other => Err(format!(
                "must be fixed, linear, exponential or fibonacci, not {other:?}"
            )),
        }
    }
}

/// A redelivery policy's delays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// How the delay grows.
    pub kind: BackoffKind,
    /// The delay after the first failure.
    pub initial: Duration,
    /// No delay is longer than this.
    pub max: Duration,
    /// Each delay is moved at random by up to this fraction of itself
    /// (0 = none, 0.2 = ±20 %), so consumers that failed together do not
    /// retry together.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            kind: BackoffKind::Exponential,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before the next delivery after `failures` failed ones
    /// (1 for the first failure), before jitter.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let n = failures.max(1);
        let factor: u64 = match self.kind {
            BackoffKind::Fixed => 1,
            BackoffKind::Linear => u64::from(n),
            BackoffKind::Exponential => 1u64.checked_shl(n - 1).unwrap_or(u64::MAX),
            BackoffKind::Fibonacci => fibonacci(n),
        };
        let ms = u64::try_from(self.initial.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_millis(ms).min(self.max)
    }

    /// The delay with jitter applied, never above `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let base = self.base_delay(failures);
        if self.jitter <= 0.0 {
            return base;
        }
        let spread = base.as_secs_f64() * self.jitter.min(1.0);
        let moved = base.as_secs_f64() + spread * (fastrand::f64() * 2.0 - 1.0);
        Duration::from_secs_f64(moved.max(0.0)).min(self.max)
    }
}

fn fibonacci(n: u32) -> u64 {
    let (mut a, mut b) = (1u64, 1u64);
    for _ in 1..n {
        let next = a.saturating_add(b);
        a = b;
        b = next;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: BackoffKind) -> Backoff {
        Backoff {
            kind,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: 0.0,
        }
    }

    #[test]
    fn each_kind_grows_as_named_and_stops_at_max() {
        let ms = |kind, n| policy(kind).base_delay(n).as_millis();
        let table: &[(BackoffKind, [u128; 7])] = &[
            (BackoffKind::Fixed, [100, 100, 100, 100, 100, 100, 100]),
            (BackoffKind::Linear, [100, 200, 300, 400, 500, 600, 700]),
            (
                BackoffKind::Exponential,
                [100, 200, 400, 800, 1600, 2000, 2000],
            ),
            (BackoffKind::Fibonacci, [100, 100, 200, 300, 500, 800, 1300]),
        ];
        for (kind, want) in table {
            let got: Vec<u128> = (1..=7).map(|n| ms(*kind, n)).collect();
            assert_eq!(got, want, "{kind:?}");
        }
        assert_eq!(ms(BackoffKind::Exponential, 200), 2000, "no overflow");
        assert_eq!(ms(BackoffKind::Fibonacci, 500), 2000, "no overflow");
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = Backoff {
            jitter: 0.5,
            ..policy(BackoffKind::Fixed)
        };
        let delays: Vec<u128> = (0..500).map(|_| p.delay(1).as_millis()).collect();
        assert!(delays.iter().all(|d| (50..=150).contains(d)), "{delays:?}");
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "jitter moved nothing"
        );
    }
}
