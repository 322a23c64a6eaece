//! Retry budget and retry back-off: how many retries may be in flight, and
//! how long to wait before each.
//!
//! The budget is Envoy's `retry_budget`: retries in flight stay below
//! `budget_percent` of the active requests (rounded down), but
//! `min_retry_concurrency` retries are always allowed. When every endpoint
//! fails, each request gets at most its share of retries instead of
//! multiplying the load on the upstream by the retry count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Envoy's default `budget_percent`.
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
/// Envoy's default `min_retry_concurrency`.
pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

#[derive(Default)]
struct Counts {
    active: AtomicUsize,
    retries: AtomicUsize,
}

/// Retry budget of one upstream. Cheap to share: counters are atomics, and
/// the guards hold an `Arc` of them, so they may outlive a borrow of the
/// budget (e.g. move into a response body).
pub struct RetryBudget {
    /// A fraction, 0.0 ..= 1.0 (or more: a budget above 100% is allowed).
    fraction: f64,
    min_concurrency: usize,
    counts: Arc<Counts>,
}

impl RetryBudget {
    /// Retries allowed while retries in flight < max(`min_retry_concurrency`,
    /// `budget_percent`% of active requests). A negative or NaN percent
    /// counts as 0 (only the minimum concurrency is allowed).
    pub fn new(budget_percent: f64, min_retry_concurrency: u32) -> RetryBudget {
        let fraction = if budget_percent.is_finite() && budget_percent > 0.0 {
            budget_percent / 100.0
        } else {
            0.0
        };
        RetryBudget {
            fraction,
            min_concurrency: usize::try_from(min_retry_concurrency).unwrap_or(usize::MAX),
            counts: Arc::default(),
        }
    }

    /// Counts one active request (from its first attempt to its end, retries
    /// included) until the guard is dropped.
    pub fn request_started(&self) -> RequestGuard {
        self.counts.active.fetch_add(1, Ordering::AcqRel);
        RequestGuard {
            counts: Arc::clone(&self.counts),
        }
    }

    /// Takes one retry from the budget until the guard is dropped; `None`
    /// when the budget is spent.
    pub fn try_retry(&self) -> Option<RetryGuard> {
        let limit = self.limit();
        self.counts
            .retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r < limit).then_some(r + 1)
            })
            .ok()?;
        Some(RetryGuard {
            counts: Arc::clone(&self.counts),
        })
    }

    /// Active requests.
    pub fn active(&self) -> usize {
        self.counts.active.load(Ordering::Acquire)
    }

    /// Retries in flight.
    pub fn retries_in_flight(&self) -> usize {
        self.counts.retries.load(Ordering::Acquire)
    }

    fn limit(&self) -> usize {
        // Exact for any realistic request count (below 2^53).
        let share = (self.active() as f64 * self.fraction).floor() as usize;
        share.max(self.min_concurrency)
    }
}

/// One active request; see [`RetryBudget::request_started`].
#[must_use = "the request counts as active only while the guard lives"]
pub struct RequestGuard {
    counts: Arc<Counts>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.counts.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One retry in flight; see [`RetryBudget::try_retry`].
#[must_use = "the retry counts against the budget only while the guard lives"]
pub struct RetryGuard {
    counts: Arc<Counts>,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.counts.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Exponential back-off with full jitter: a uniformly random wait between
/// zero and `base × 2^attempt`, capped at `max` (`attempt` 0 is the wait
/// before the first retry). Full jitter spreads the retries of many clients
/// that failed together, so they do not hit the upstream in waves.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = 1u32
        .checked_shl(attempt)
        .and_then(|factor| base.checked_mul(factor))
        .map_or(max, |d| d.min(max));
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_concurrency_holds_with_few_requests() {
        let b = RetryBudget::new(20.0, 3);
        let _req = b.request_started();
        let guards: Vec<_> = (0..3).filter_map(|_| b.try_retry()).collect();
        assert_eq!(guards.len(), 3);
        assert!(b.try_retry().is_none());
        assert_eq!(b.retries_in_flight(), 3);
    }

    #[test]
    fn budget_is_a_fraction_of_active_requests() {
        let b = RetryBudget::new(20.0, 3);
        let requests: Vec<_> = (0..100).map(|_| b.request_started()).collect();
        assert_eq!(b.active(), 100);
        let mut retries: Vec<_> = (0..50).filter_map(|_| b.try_retry()).collect();
        assert_eq!(retries.len(), 20);
        // 99 active: 19.8 rounds down, so the 20 in flight are over budget.
        drop(requests);
        let _some: Vec<_> = (0..99).map(|_| b.request_started()).collect();
        retries.pop();
        assert_eq!(b.retries_in_flight(), 19);
        assert!(b.try_retry().is_none());
    }

    #[test]
    fn guards_release_on_drop() {
        let b = RetryBudget::new(50.0, 0);
        {
            let _a = b.request_started();
            let _c = b.request_started();
            let r = b.try_retry();
            assert!(r.is_some());
            assert!(b.try_retry().is_none());
            assert_eq!((b.active(), b.retries_in_flight()), (2, 1));
        }
        assert_eq!((b.active(), b.retries_in_flight()), (0, 0));
        assert!(b.try_retry().is_none(), "no requests, no minimum: no retry");
    }

    #[test]
    fn a_bad_percent_leaves_only_the_minimum() {
        for percent in [-5.0, f64::NAN, f64::NEG_INFINITY] {
            let b = RetryBudget::new(percent, 1);
            let _reqs: Vec<_> = (0..1000).map(|_| b.request_started()).collect();
            let retries: Vec<_> = (0..10).filter_map(|_| b.try_retry()).collect();
            assert_eq!(retries.len(), 1, "{percent}");
        }
    }

    #[test]
    fn backoff_stays_within_its_doubling_ceiling() {
        let base = Duration::from_millis(25);
        let max = Duration::from_millis(250);
        for attempt in 0..6 {
            let ceiling = (base * 2u32.pow(attempt)).min(max);
            let waits: Vec<_> = (0..2000).map(|_| backoff(attempt, base, max)).collect();
            assert!(waits.iter().all(|&w| w <= ceiling), "attempt {attempt}");
            // Jittered: spread over the whole range, not stuck at one end.
            assert!(waits.iter().any(|&w| w < ceiling / 4), "attempt {attempt}");
            assert!(
                waits.iter().any(|&w| w > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn backoff_never_overflows() {
        let max = Duration::from_secs(10);
        for attempt in [31, 32, 64, u32::MAX] {
            assert!(backoff(attempt, Duration::from_secs(1), max) <= max);
        }
        assert!(backoff(3, Duration::MAX, Duration::MAX) <= Duration::MAX);
        assert_eq!(backoff(5, Duration::ZERO, max), Duration::ZERO);
    }
}
