//! Choosing an instance: round robin, smooth weighted round robin, least
//! outstanding requests (power of two choices) and consistent hashing
//! (rendezvous) on a header.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How a service's requests are spread over its instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// In proportion to each instance's weight, interleaved (smooth
    /// weighted round robin, as nginx does it).
    Weighted,
    /// The less busy of two instances picked at random (power of two
    /// choices on requests in flight).
    LeastRequest,
    /// The same instance for the same value of a header, as long as it is
    /// available (rendezvous hashing: when an instance goes, only its
    /// share moves).
    ConsistentHash {
        /// The header whose value is hashed.
        header: String,
    },
}

impl Algorithm {
    /// The algorithm's name.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::Weighted => "weighted",
            Algorithm::LeastRequest => "least_request",
            Algorithm::ConsistentHash { .. } => "consistent_hash",
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_robin" => Ok(Algorithm::RoundRobin),
            "weighted" => Ok(Algorithm::Weighted),
            "least_request" => Ok(Algorithm::LeastRequest),
            "consistent_hash" => Ok(Algorithm::ConsistentHash {
                header: String::new(),
            }),
            other => Err(format!(
                "unknown balancing {other:?}; use round_robin, weighted, least_request or consistent_hash"
            )),
        }
    }
}

/// What the balancer needs to know of an instance.
pub trait Candidate {
    /// A stable id.
    fn id(&self) -> &str;
    /// Its weight (at least 1).
    fn weight(&self) -> u32;
    /// Requests in flight to it now.
    fn outstanding(&self) -> u64;
}

/// A service's balancing state.
#[derive(Default)]
pub struct Balancer {
    next: AtomicUsize,
    /// Smooth weighted round robin's current weights, by instance. A `std`
    /// mutex: one short pass over the candidates, no await.
    current: Mutex<HashMap<String, i64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Balancer {
    /// Picks one of `candidates` (all available); `key` is the hashed
    /// header's value, when the algorithm hashes.
    pub fn pick<'a, C: Candidate>(
        &self,
        algorithm: &Algorithm,
        candidates: &'a [C],
        key: Option<&str>,
    ) -> Option<&'a C> {
        match candidates.len() {
            0 => return None,
            1 => return candidates.first(),
            _ => {}
        }
        match algorithm {
            Algorithm::RoundRobin => self.round_robin(candidates),
            Algorithm::Weighted => self.weighted(candidates),
            Algorithm::LeastRequest => {
                let n = candidates.len();
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (x, y) = (&candidates[a], &candidates[b]);
                Some(if y.outstanding() < x.outstanding() {
                    y
                } else {
                    x
                })
            }
            Algorithm::ConsistentHash { .. } => match key {
                Some(k) => rendezvous(&self.hasher, candidates, k),
                None => self.round_robin(candidates),
            },
        }
    }

    fn round_robin<'a, C>(&self, candidates: &'a [C]) -> Option<&'a C> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        candidates.get(i % candidates.len())
    }

    fn weighted<'a, C: Candidate>(&self, candidates: &'a [C]) -> Option<&'a C> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget instances that are gone, so the map stays small.
        if current.len() > candidates.len() * 2 {
            current.retain(|id, _| candidates.iter().any(|c| c.id() == id));
        }
        let total: i64 = candidates
            .iter()
            .map(|c| i64::from(c.weight().max(1)))
            .sum();
        let mut best: Option<(usize, i64)> = None;
        for (i, c) in candidates.iter().enumerate() {
            let w = current.entry(c.id().to_owned()).or_insert(0);
            *w += i64::from(c.weight().max(1));
            if best.is_none_or(|(_, bw)| *w > bw) {
                best = Some((i, *w));
            }
        }
        let (i, _) = best?;
        if let Some(w) = current.get_mut(candidates[i].id()) {
            *w -= total;
        }
        candidates.get(i)
    }
}

/// Highest random weight: each (key, instance) pair gets a score; the best
/// wins. Weighted by `-w / ln(u)` with `u` uniform in (0, 1).
fn rendezvous<'a, C: Candidate>(
    hasher: &impl BuildHasher,
    candidates: &'a [C],
    key: &str,
) -> Option<&'a C> {
    candidates
        .iter()
        .max_by(|a, b| score(hasher, *a, key).total_cmp(&score(hasher, *b, key)))
}

fn score<C: Candidate>(hasher: &impl BuildHasher, c: &C, key: &str) -> f64 {
    let mut h = hasher.build_hasher();
    key.hash(&mut h);
    c.id().hash(&mut h);
    let bits = h.finish();
    // A uniform value in (0, 1), never 0.
    let u = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(c.weight().max(1)) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct I(&'static str, u32, u64);

    impl Candidate for I {
        fn id(&self) -> &str {
            self.0
        }
        fn weight(&self) -> u32 {
            self.1
        }
        fn outstanding(&self) -> u64 {
            self.2
        }
    }

    fn counts(picks: impl Iterator<Item = &'static str>) -> HashMap<&'static str, usize> {
        let mut m = HashMap::new();
        for p in picks {
            *m.entry(p).or_insert(0) += 1;
        }
        m
    }

    #[test]
    fn round_robin_takes_turns() {
        let b = Balancer::default();
        let c = [I("a", 1, 0), I("b", 1, 0), I("c", 1, 0)];
        let got =
            counts((0..300).map(|_| b.pick(&Algorithm::RoundRobin, &c, None).map_or("", |i| i.0)));
        assert_eq!(
            got.values()
                .copied()
                .collect::<Vec<_>>()
                .iter()
                .sum::<usize>(),
            300
        );
        assert!(got.values().all(|n| *n == 100), "{got:?}");
    }

    #[test]
    fn weighted_is_exact_and_interleaved() {
        let b = Balancer::default();
        let c = [I("a", 5, 0), I("b", 1, 0), I("c", 1, 0)];
        let seq: Vec<&str> = (0..7)
            .map(|_| b.pick(&Algorithm::Weighted, &c, None).map_or("", |i| i.0))
            .collect();
        // Smooth: a, a, b, a, c, a, a (nginx's example for 5:1:1).
        assert_eq!(seq, ["a", "a", "b", "a", "c", "a", "a"]);
        let got =
            counts((0..700).map(|_| b.pick(&Algorithm::Weighted, &c, None).map_or("", |i| i.0)));
        assert_eq!((got["a"], got["b"], got["c"]), (500, 100, 100));
    }

    #[test]
    fn least_request_avoids_the_busy() {
        let b = Balancer::default();
        let c = [I("idle", 1, 0), I("busy", 1, 50)];
        for _ in 0..100 {
            assert_eq!(
                b.pick(&Algorithm::LeastRequest, &c, None).map(|i| i.0),
                Some("idle")
            );
        }
        // With many, the busiest is never picked (it always loses its pair).
        let c = [I("a", 1, 1), I("b", 1, 2), I("c", 1, 3), I("d", 1, 90)];
        let got = counts((0..1000).map(|_| {
            b.pick(&Algorithm::LeastRequest, &c, None)
                .map_or("", |i| i.0)
        }));
        assert_eq!(got.get("d"), None, "{got:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_little() {
        let b = Balancer::default();
        let alg = Algorithm::ConsistentHash {
            header: "x-user".into(),
        };
        let all = [I("a", 1, 0), I("b", 1, 0), I("c", 1, 0), I("d", 1, 0)];
        let keys: Vec<String> = (0..400).map(|k| format!("user-{k}")).collect();
        let before: Vec<&str> = keys
            .iter()
            .map(|k| b.pick(&alg, &all, Some(k)).map_or("", |i| i.0))
            .collect();
        // Same key, same instance.
        for (k, was) in keys.iter().zip(&before) {
            assert_eq!(b.pick(&alg, &all, Some(k)).map(|i| i.0), Some(*was));
        }
        // Spread over all four.
        let spread = counts(before.iter().copied());
        assert_eq!(spread.len(), 4);
        assert!(spread.values().all(|n| *n > 60), "{spread:?}");
        // Remove "c": only c's keys move.
        let three = [I("a", 1, 0), I("b", 1, 0), I("d", 1, 0)];
        for (k, was) in keys.iter().zip(&before) {
            let now = b.pick(&alg, &three, Some(k)).map_or("", |i| i.0);
            if *was != "c" {
                assert_eq!(now, *was);
            }
        }
    }
}
