//! An upstream's endpoint set: the endpoints (with their live state), the
//! balancer and the outlier detector built for exactly that list. The set is
//! swapped whole when DNS changes the list; endpoints that stay keep their
//! `Arc` (active requests, health) so nothing in flight is disturbed.

use super::balance::{Balancer, Policy};
use super::outlier::{in_panic, Outlier, OutlierConfig};
use crate::config::{BalancerKind, UpstreamConfig};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One address of an upstream.
pub struct Endpoint {
    /// What is dialled: `ip:port`, or `host:port` before DNS resolved it.
    pub address: String,
    /// The configured host name (SNI, health-check `Host`).
    pub host: String,
    pub weight: u32,
    /// Requests whose attempt on this endpoint is in flight (response body
    /// included): least-request's load, and `/upstreams`.
    pub active: AtomicUsize,
    /// The active health check's verdict; true until a check says otherwise.
    healthy: AtomicBool,
    /// Consecutive health-check passes (positive) or failures (negative).
    streak: AtomicU32,
    fails: AtomicU32,
}

impl Endpoint {
    pub fn new(address: String, host: String, weight: u32) -> Endpoint {
        Endpoint {
            address,
            host,
            weight,
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            fails: AtomicU32::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one health-check result; returns the new verdict if it
    /// changed (after `healthy` passes in a row or `unhealthy` failures).
    pub fn record_check(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let was = self.is_healthy();
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            let n = self
                .streak
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if !was && n >= healthy {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.streak.store(0, Ordering::Relaxed);
            let n = self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if was && n >= unhealthy {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// Counts an attempt as active on its endpoint until dropped.
pub struct ActiveGuard(Arc<Endpoint>);

impl ActiveGuard {
    pub fn enter(e: &Arc<Endpoint>) -> ActiveGuard {
        e.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(e.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    pub outlier: Outlier,
    panic_threshold: u8,
}

fn policy(kind: BalancerKind) -> Policy {
    match kind {
        BalancerKind::RoundRobin => Policy::RoundRobin,
        BalancerKind::WeightedRoundRobin => Policy::WeightedRoundRobin,
        BalancerKind::LeastRequest => Policy::LeastRequest,
        BalancerKind::Random => Policy::Random,
        BalancerKind::ConsistentHash => Policy::ConsistentHash,
    }
}

pub fn outlier_config(cfg: &UpstreamConfig) -> OutlierConfig {
    let o = &cfg.outlier;
    OutlierConfig {
        consecutive_5xx: o.consecutive_5xx,
        consecutive_connect_failures: o.consecutive_connect_failures,
        base_ejection: o.base_ejection_time,
        max_ejection: o.max_ejection_time,
        max_ejection_percent: o.max_ejection_percent,
    }
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, cfg: &UpstreamConfig) -> EndpointSet {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let ids: Vec<&str> = endpoints.iter().map(|e| e.address.as_str()).collect();
        EndpointSet {
            balancer: Balancer::with_ids(policy(cfg.balancer), &weights, &ids),
            outlier: Outlier::new(outlier_config(cfg), endpoints.len()),
            endpoints,
            panic_threshold: cfg.panic_threshold,
        }
    }

    /// Not failing health checks and not ejected.
    pub fn available(&self, i: usize, now: Instant) -> bool {
        self.endpoints[i].is_healthy() && !self.outlier.is_ejected(i, now)
    }

    /// Whether too few endpoints are available, so all are used.
    pub fn in_panic(&self, now: Instant) -> bool {
        let n = self.endpoints.len();
        let up = (0..n).filter(|&i| self.available(i, now)).count();
        in_panic(up, n, self.panic_threshold)
    }

    /// An endpoint for the next attempt: an available one not in `tried`,
    /// else (a retry with every endpoint tried) any available one.
    pub fn pick(&self, key: Option<u64>, tried: &[usize], now: Instant) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let panic = self.in_panic(now);
        let ok = |i: usize| panic || self.available(i, now);
        let load = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
        self.balancer
            .pick(key, |i| ok(i) && !tried.contains(&i), load)
            .or_else(|| {
                if tried.is_empty() {
                    None
                } else {
                    self.balancer.pick(key, ok, load)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_thresholds() {
        let e = Endpoint::new("a:1".into(), "a".into(), 1);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), Some(false));
        assert!(!e.is_healthy());
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), Some(true));
        assert!(e.is_healthy());
        // A failure in between resets the streak of passes, and vice versa.
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(true, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert_eq!(e.record_check(false, 2, 3), None);
        assert!(e.is_healthy());
    }
}
