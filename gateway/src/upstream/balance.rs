//! Load balancing: which endpoint of an upstream a request goes to. Pure:
//! endpoint health, ejection and load are asked through closures, so the
//! policies are unit-tested without I/O.
//!
//! | policy | distribution over the eligible endpoints | cost per pick |
//! |---|---|---|
//! | `RoundRobin` | in turn, exactly equal; weights ignored | one atomic add |
//! | `WeightedRoundRobin` | smooth weighted round-robin (nginx): over any `Σw` picks each endpoint gets exactly its weight, interleaved (weights 1:2 → `b a b`, not `a b b`) | one atomic add on a precomputed cycle; a plain round-robin when all weights are equal; a short lock and one pass over the endpoints when the pick is ineligible or the cycle too long to precompute |
//! | `LeastRequest` | power of two choices: two candidates drawn at random (weighted), the one with fewer active requests per unit of weight wins | two random draws |
//! | `Random` | weighted random | one random draw |
//! | `ConsistentHash` | Maglev: a key always lands on the same endpoint while it is eligible; a share of keys proportional to its weight per endpoint | a table lookup |
//!
//! "Eligible" is the caller's business (healthy, not ejected, not already
//! tried by this request); an ineligible endpoint is never picked and the
//! others keep their relative shares.

mod maglev;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use maglev::Maglev;

/// How a [`Balancer`] spreads requests over the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    Random,
    ConsistentHash,
}

impl Policy {
    /// The policy's snake_case name, for metrics, the admin listener and
    /// (suggested) the config file.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::WeightedRoundRobin => "weighted_round_robin",
            Policy::LeastRequest => "least_request",
            Policy::Random => "random",
            Policy::ConsistentHash => "consistent_hash",
        }
    }
}

/// Picks endpoints of one upstream by index. Built once per upstream and
/// config generation; `Send + Sync`, shared by all requests.
pub struct Balancer {
    policy: Policy,
    weights: Box<[u64]>,
    /// Running sums of `weights`, for weighted random draws.
    cumulative: Box<[u64]>,
    /// All weights equal: the weighted policies take their unweighted path.
    uniform: bool,
    next: AtomicUsize,
    /// Smooth weighted round-robin: one full cycle of picks (`Σw` long),
    /// when it is short enough to precompute.
    cycle: Box<[u32]>,
    /// Smooth weighted round-robin computed live: each endpoint's current
    /// weight.
    current: Mutex<Box<[i64]>>,
    /// Consistent hash only.
    maglev: Option<Maglev>,
}

impl Balancer {
    /// One weight per endpoint (index = endpoint index; a weight of 0 counts
    /// as 1). Endpoints are identified by their index, so for
    /// [`Policy::ConsistentHash`] prefer [`Balancer::with_ids`].
    pub fn new(policy: Policy, weights: &[u32]) -> Balancer {
        let ids: Vec<String> = (0..weights.len()).map(|i| i.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Balancer::with_ids(policy, weights, &ids)
    }

    /// Like [`Balancer::new`], with a stable identity per endpoint (its
    /// `host:port`). Only consistent hashing uses it: the Maglev table is
    /// built from the identities, not the indices, so when an endpoint leaves
    /// the endpoint list, keys on the remaining endpoints stay where they
    /// were (all but a few percent). An endpoint without an id is named by
    /// its index.
    pub fn with_ids(policy: Policy, weights: &[u32], ids: &[&str]) -> Balancer {
        let weights: Box<[u64]> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let maglev = (policy == Policy::ConsistentHash).then(|| {
            let named: Vec<String> = (0..weights.len())
                .map(|i| ids.get(i).map_or_else(|| i.to_string(), |s| s.to_string()))
                .collect();
            Maglev::new(&named, &weights)
        });
        let cycle = if policy == Policy::WeightedRoundRobin && !uniform {
            smooth_cycle(&weights)
        } else {
            Box::new([])
        };
        Balancer {
            policy,
            cycle,
            current: Mutex::new(vec![0; weights.len()].into_boxed_slice()),
            weights,
            cumulative,
            uniform,
            next: AtomicUsize::new(0),
            maglev,
        }
    }

    /// The policy this balancer was built with.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks an endpoint index. `eligible(i)`: endpoint `i` may be chosen
    /// (healthy, not ejected, not already tried by this request). `load(i)`:
    /// active requests on `i` (least-request only). `key`: hash of the
    /// consistent-hash key, see [`hash_key`] (consistent hash only; `None`
    /// picks at random). Returns `None` only when no endpoint is eligible.
    pub fn pick(
        &self,
        key: Option<u64>,
        eligible: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        if self.weights.is_empty() {
            return None;
        }
        match self.policy {
            Policy::RoundRobin => self.round_robin(&eligible),
            Policy::WeightedRoundRobin if self.uniform => self.round_robin(&eligible),
            Policy::WeightedRoundRobin => self.weighted_round_robin(&eligible),
            Policy::LeastRequest => self.two_choices(&eligible, &load),
            Policy::Random => self.random(&eligible),
            Policy::ConsistentHash => match (key, &self.maglev) {
                (Some(key), Some(table)) => table.lookup(key, &eligible, self.weights.len()),
                _ => self.random(&eligible),
            },
        }
    }

    /// The endpoint whose turn it is; if that one is ineligible, its turn
    /// goes to the eligible endpoints in rotation (the `c / n` below), so
    /// the others still share evenly.
    fn round_robin(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        let i = c % n;
        if eligible(i) {
            return Some(i);
        }
        let m = (0..n).filter(|&j| eligible(j)).count();
        if m == 0 {
            return None;
        }
        (0..n)
            .filter(|&j| eligible(j))
            .nth((c / n) % m)
            .or_else(|| (0..n).find(|&j| eligible(j)))
    }

    /// The next pick of the precomputed smooth cycle; if that endpoint is
    /// ineligible, its turn goes to the eligible ones by a live smooth
    /// weighted round-robin among them, so they keep their proportions.
    fn weighted_round_robin(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        if !self.cycle.is_empty() {
            let c = self.next.fetch_add(1, Ordering::Relaxed) % self.cycle.len();
            let i = self.cycle[c] as usize;
            if eligible(i) {
                return Some(i);
            }
        }
        self.smooth_weighted(eligible)
    }

    /// nginx's smooth weighted round-robin, over the eligible endpoints only:
    /// each adds its weight to its current weight, the largest wins and
    /// gives back the total. Ineligible endpoints sit the round out, so the
    /// rest keep their proportions.
    fn smooth_weighted(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        // A panic in `eligible` leaves the weights consistent enough to go on.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let w = i64::try_from(w).unwrap_or(i64::MAX);
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }

    /// Power of two choices: two weighted-random candidates, the one with
    /// the lower `load / weight` wins (ties to the first, so at equal load
    /// the weighted draw alone decides).
    fn two_choices(
        &self,
        eligible: &impl Fn(usize) -> bool,
        load: &impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let a = self.random(eligible)?;
        let b = self.random(eligible)?;
        let cost = |i: usize, other: usize| (load(i) as u128) * u128::from(self.weights[other]);
        Some(if cost(b, a) < cost(a, b) { b } else { a })
    }

    /// Weighted random over the eligible endpoints. A few draws over all
    /// endpoints first, keeping the first eligible one (rejection sampling);
    /// if all of them hit ineligible endpoints, one draw over the eligible
    /// ones. Either way exactly proportional to weight.
    fn random(&self, eligible: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.weights.len();
        let total = self.cumulative[n - 1];
        for _ in 0..REJECTION_DRAWS {
            let i = if self.uniform {
                fastrand::usize(..n)
            } else {
                let r = fastrand::u64(..total);
                self.cumulative.partition_point(|&c| c <= r)
            };
            if eligible(i) {
                return Some(i);
            }
        }
        let eligible_total: u64 = (0..n)
            .filter(|&j| eligible(j))
            .map(|j| self.weights[j])
            .sum();
        if eligible_total == 0 {
            return None;
        }
        let mut r = fastrand::u64(..eligible_total);
        let mut last = None;
        for j in (0..n).filter(|&j| eligible(j)) {
            if r < self.weights[j] {
                return Some(j);
            }
            r -= self.weights[j];
            last = Some(j);
        }
        // Only reached when eligibility changed under us.
        last
    }
}

/// Draws over all endpoints before counting the eligible ones: with a
/// quarter ineligible, 4 draws all miss 1 time in 256.
const REJECTION_DRAWS: usize = 4;

/// Longest smooth weighted round-robin cycle precomputed, counted in
/// endpoint visits (`Σw × endpoints`), so building stays under a few ms.
const MAX_CYCLE_WORK: u64 = 1 << 22;

/// One full cycle of nginx's smooth weighted round-robin with every
/// endpoint eligible; empty if too long to precompute.
fn smooth_cycle(weights: &[u64]) -> Box<[u32]> {
    let total: u64 = weights.iter().sum();
    if total.saturating_mul(weights.len() as u64) > MAX_CYCLE_WORK {
        return Box::new([]);
    }
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        cycle.push(best as u32);
    }
    cycle.into_boxed_slice()
}

/// Stable 64-bit hash of a consistent-hash key (header or cookie value,
/// query parameter, client IP): 64-bit FNV-1a followed by the MurmurHash3
/// `fmix64` finalizer, which spreads FNV's weak low bits. Fixed constants,
/// no per-process seed, so every gateway instance and every restart sends a
/// key to the same endpoint.
pub fn hash_key(bytes: &[u8]) -> u64 {
    fmix64(fnv1a(0xcbf2_9ce4_8422_2325, bytes))
}

fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests;
