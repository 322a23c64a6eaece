//! Passive health: outlier detection from the outcomes of real requests, and
//! the panic threshold. Pure: time comes in as an `Instant` argument, so the
//! rules are unit-tested without sleeping.
//!
//! Rules (Envoy's consecutive-error detectors, inline rather than on a sweep):
//! - `consecutive_5xx` failed attempts in a row (5xx response, per-try
//!   timeout or connect failure) or `consecutive_connect_failures` connect
//!   failures in a row eject the endpoint. A success ends both streaks, a
//!   response of any status ends the connect-failure streak. A threshold of
//!   0 turns that detector off.
//! - An ejection lasts `base_ejection × n`, `n` counting this ejection and
//!   the earlier ones not yet forgotten, capped at `max_ejection` (never
//!   below `base_ejection`). Outcomes of attempts that finish while the
//!   endpoint is ejected are ignored; when the ejection ends, the endpoint
//!   simply gets traffic again.
//! - Forgetting: once an ejection has ended, every full `base_ejection` the
//!   endpoint spends without being ejected again forgets one past ejection
//!   (applied when its next outcome is recorded).
//! - At most `max_ejection_percent` of the endpoints (rounded down) are
//!   ejected at once, but always at least one when there are two or more
//!   (as Envoy, which ejects a host whenever none is ejected yet), and never
//!   all of them: an upstream is never emptied by ejection alone. One
//!   endpoint on its own is never ejected; 0% turns ejection off.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Outlier detection settings of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failed attempts in a row (5xx, timeout, connect failure) that eject;
    /// 0 = off.
    pub consecutive_5xx: u32,
    /// Connect failures in a row that eject; 0 = off.
    pub consecutive_connect_failures: u32,
    /// Length of a first ejection, and the period after which one past
    /// ejection is forgotten.
    pub base_ejection: Duration,
    /// Longest ejection, however often the endpoint was ejected.
    pub max_ejection: Duration,
    /// Most endpoints ejected at once, in percent, rounded down but at least
    /// one of two or more; 0 = never eject.
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    /// Envoy's defaults: 5 and 5 in a row, 30 s growing to at most 300 s,
    /// 10% (so one endpoint of up to 19).
    fn default() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 5,
            consecutive_connect_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// The outcome of one attempt on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head below 500.
    Success,
    /// A 5xx response head.
    Status5xx,
    /// The connection could not be made (refused, reset, connect timeout).
    ConnectFailure,
    /// Connected, but no response head within the per-try timeout.
    Timeout,
}

#[derive(Default)]
struct Endpoint {
    failures: AtomicU32,
    connect_failures: AtomicU32,
    /// Times ejected, less those forgotten.
    ejections: AtomicU32,
    /// End of the current or last ejection, in ticks; 0 = never ejected.
    ejected_until: AtomicU64,
    /// Start of the healthy stretch that forgetting counts from, in ticks.
    forget_from: AtomicU64,
}

/// Outlier state of one upstream's endpoints (index = endpoint index).
/// Lock-free on the request path; ejecting takes a short lock so that the
/// max-ejection cap holds under concurrency.
pub struct Outlier {
    cfg: OutlierConfig,
    /// Time zero of the ticks (nanoseconds) stored in the atomics.
    epoch: Instant,
    endpoints: Box<[Endpoint]>,
    ejecting: Mutex<()>,
}

impl Outlier {
    /// Fresh state: nothing ejected, no streaks.
    pub fn new(cfg: OutlierConfig, endpoints: usize) -> Outlier {
        Outlier {
            cfg,
            epoch: Instant::now(),
            endpoints: (0..endpoints).map(|_| Endpoint::default()).collect(),
            ejecting: Mutex::new(()),
        }
    }

    /// Records the outcome of one attempt; returns true if this ejected the
    /// endpoint.
    pub fn record(&self, idx: usize, outcome: Outcome, now: Instant) -> bool {
        let Some(e) = self.endpoints.get(idx) else {
            return false;
        };
        let t = self.ticks(now);
        if t < e.ejected_until.load(Ordering::Acquire) {
            return false;
        }
        self.forget(e, t);
        let trips = |streak: &AtomicU32, threshold: u32| {
            let n = streak.fetch_add(1, Ordering::AcqRel).saturating_add(1);
            threshold > 0 && n >= threshold
        };
        let trip = match outcome {
            Outcome::Success => {
                e.failures.store(0, Ordering::Release);
                e.connect_failures.store(0, Ordering::Release);
                false
            }
            Outcome::Status5xx | Outcome::Timeout => {
                e.connect_failures.store(0, Ordering::Release);
                trips(&e.failures, self.cfg.consecutive_5xx)
            }
            Outcome::ConnectFailure => {
                let connect = trips(&e.connect_failures, self.cfg.consecutive_connect_failures);
                trips(&e.failures, self.cfg.consecutive_5xx) || connect
            }
        };
        trip && self.eject(idx, t)
    }

    /// Whether endpoint `idx` is ejected at `now` (false for an unknown index).
    pub fn is_ejected(&self, idx: usize, now: Instant) -> bool {
        self.endpoints
            .get(idx)
            .is_some_and(|e| self.ticks(now) < e.ejected_until.load(Ordering::Acquire))
    }

    /// Times endpoint `idx` was ejected, less those forgotten as of its last
    /// recorded outcome; its next ejection lasts `base × (this + 1)`.
    pub fn ejections(&self, idx: usize) -> u32 {
        self.endpoints
            .get(idx)
            .map_or(0, |e| e.ejections.load(Ordering::Acquire))
    }

    /// How many endpoints are ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        let t = self.ticks(now);
        self.endpoints
            .iter()
            .filter(|e| t < e.ejected_until.load(Ordering::Acquire))
            .count()
    }

    /// Most endpoints that may be ejected at once.
    fn max_ejected(&self) -> usize {
        let n = self.endpoints.len();
        if n < 2 || self.cfg.max_ejection_percent == 0 {
            return 0;
        }
        let percent = usize::from(self.cfg.max_ejection_percent.min(100));
        (n * percent / 100).clamp(1, n - 1)
    }

    fn eject(&self, idx: usize, t: u64) -> bool {
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(PoisonError::into_inner);
        let e = &self.endpoints[idx];
        if t < e.ejected_until.load(Ordering::Acquire) {
            return false;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|o| t < o.ejected_until.load(Ordering::Acquire))
            .count();
        if ejected >= self.max_ejected() {
            // The streak stays above the threshold: the next failure tries
            // again, and succeeds once another ejection has ended.
            return false;
        }
        let n = e.ejections.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        let length = self
            .cfg
            .base_ejection
            .saturating_mul(n)
            .min(self.cfg.max_ejection.max(self.cfg.base_ejection));
        let until = t.saturating_add(nanos(length));
        e.ejected_until.store(until, Ordering::Release);
        e.forget_from.store(until, Ordering::Release);
        e.failures.store(0, Ordering::Release);
        e.connect_failures.store(0, Ordering::Release);
        true
    }

    /// Forgets one past ejection per full `base_ejection` since the last
    /// ejection ended (or since the last time one was forgotten).
    fn forget(&self, e: &Endpoint, t: u64) {
        if e.ejections.load(Ordering::Acquire) == 0 {
            return;
        }
        let period = nanos(self.cfg.base_ejection).max(1);
        let from = e.forget_from.load(Ordering::Acquire);
        let periods = t.saturating_sub(from) / period;
        if periods == 0 {
            return;
        }
        let moved = e.forget_from.compare_exchange(
            from,
            from + periods * period,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        // Whoever moves `forget_from` does the forgetting, once.
        if moved.is_ok() {
            let periods = u32::try_from(periods).unwrap_or(u32::MAX);
            let _ = e
                .ejections
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(periods))
                });
        }
    }

    fn ticks(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Envoy's panic threshold: when fewer than `panic_threshold_percent` of an
/// upstream's endpoints are healthy (not failing health checks, not
/// ejected), balance over all of them instead, because a few survivors
/// taking all the traffic would fall over too. Envoy's default is 50; 0
/// turns panic mode off. An upstream without endpoints is not in panic.
pub fn in_panic(healthy: usize, total: usize, panic_threshold_percent: u8) -> bool {
    (healthy as u128) * 100 < (total as u128) * u128::from(panic_threshold_percent.min(100))
}

#[cfg(test)]
mod tests;
