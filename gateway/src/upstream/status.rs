//! What `/upstreams` on the admin listener shows: per upstream, its policy
//! and load; per endpoint, its address, weight, health and ejection.

use super::Upstream;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Upstream {
    pub fn status(&self) -> Value {
        let set = self.set.load_full();
        let now = Instant::now();
        let endpoints: Vec<Value> = set
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                json!({
                    "address": e.address,
                    "host": e.host,
                    "weight": e.weight,
                    "healthy": e.is_healthy(),
                    "ejected": set.outlier.is_ejected(i, now),
                    "ejections": set.outlier.ejections(i),
                    "active_requests": e.active.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({
            "name": self.name,
            "protocol": self.cfg.protocol,
            "balancer": self.cfg.balancer,
            "tls": self.cfg.tls.is_some(),
            "panic": set.in_panic(now),
            "active_requests": self.load.requests.load(Ordering::Relaxed),
            "pending": self.load.pending.load(Ordering::Relaxed),
            "open_connections": self.connector.open(),
            "retries_in_flight": self.budget.retries_in_flight(),
            "endpoints": endpoints,
        })
    }
}
