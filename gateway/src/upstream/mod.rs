//! Upstreams: named groups of endpoints, a pooled keep-alive client each, and
//! round-robin selection. Knows nothing of routes or plugins.

use crate::config::{UpstreamConfig, UpstreamProtocol};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent to upstreams and returned to clients.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, Body>;

/// One upstream with its own connection pool.
pub struct Upstream {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub response_timeout: Duration,
    endpoints: Vec<String>,
    cfg: UpstreamConfig,
    next: AtomicUsize,
    client: HttpClient,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_endpoint);
        if cfg.protocol == UpstreamProtocol::H2c {
            builder.http2_only(true);
        }
        Upstream {
            name: cfg.name.clone(),
            protocol: cfg.protocol,
            response_timeout: cfg.response_timeout,
            endpoints: cfg.endpoints.clone(),
            cfg: cfg.clone(),
            next: AtomicUsize::new(0),
            client: builder.build(connector),
        }
    }

    /// The next endpoint in round-robin order, or `None` if there is none.
    pub fn pick(&self) -> Option<&str> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Some(&self.endpoints[i])
    }

    pub fn client(&self) -> &HttpClient {
        &self.client
    }
}

/// All upstreams of one config generation, by name.
#[derive(Default)]
pub struct Upstreams {
    by_name: HashMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// Builds the upstreams of a new config, reusing the pools of unchanged
    /// upstreams from the previous generation so a reload keeps warm
    /// connections.
    pub fn build(cfgs: &[UpstreamConfig], previous: Option<&Upstreams>) -> Upstreams {
        let by_name = cfgs
            .iter()
            .map(|c| {
                let reuse = previous
                    .and_then(|p| p.by_name.get(&c.name))
                    .filter(|u| u.cfg == *c)
                    .cloned();
                (
                    c.name.clone(),
                    reuse.unwrap_or_else(|| Arc::new(Upstream::new(c))),
                )
            })
            .collect();
        Upstreams { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }
}
