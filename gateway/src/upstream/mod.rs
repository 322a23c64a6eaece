//! Upstreams: named groups of endpoints, a pooled keep-alive client each, and
//! round-robin selection. Knows nothing of routes or plugins.

pub mod balance;
pub mod budget;
pub mod outlier;
mod h2;

use crate::config::{UpstreamConfig, UpstreamProtocol};
use bytes::Bytes;
use http::{header, Request, Response, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
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

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connection failed")]
    Connect(#[source] BoxError),
    #[error("connection timed out")]
    ConnectTimeout,
    #[error("exchange failed")]
    Exchange(#[source] BoxError),
}

enum Transport {
    Http1(Box<HttpClient>),
    H2c(h2::H2Pool),
}

/// One upstream with its own connection pool.
pub struct Upstream {
    pub name: String,
    cfg: UpstreamConfig,
    next: AtomicUsize,
    transport: Transport,
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
        let transport = match cfg.protocol {
            UpstreamProtocol::Http1 => Transport::Http1(Box::new(builder.build(connector))),
            UpstreamProtocol::H2c => Transport::H2c(h2::H2Pool::new(cfg.connect_timeout)),
        };
        Upstream {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            next: AtomicUsize::new(0),
            transport,
        }
    }

    /// The next endpoint in round-robin order, or `None` if there is none.
    pub fn pick(&self) -> Option<&str> {
        let endpoints = &self.cfg.endpoints;
        if endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Some(&endpoints[i])
    }

    /// How long to wait for the response head.
    pub fn response_timeout(&self) -> Duration {
        self.cfg.response_timeout
    }

    /// Sends a request whose URI is origin-form (path and query) and whose
    /// `Host` header names the authority to present upstream.
    pub async fn send(
        &self,
        endpoint: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let pq = req.uri().path_and_query().cloned();
        let path = pq.as_ref().map_or("/", |p| p.as_str());
        match &self.transport {
            Transport::Http1(client) => {
                *req.uri_mut() = absolute(endpoint, path)?;
                *req.version_mut() = Version::HTTP_11;
                client.request(req).await.map_err(|e| {
                    if !e.is_connect() {
                        SendError::Exchange(e.into())
                    } else if has_timeout(&e) {
                        SendError::ConnectTimeout
                    } else {
                        SendError::Connect(e.into())
                    }
                })
            }
            Transport::H2c(pool) => {
                // HTTP/2 carries the host as `:authority`, not as a header.
                let authority = req.headers_mut().remove(header::HOST);
                let authority = authority
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(endpoint);
                *req.uri_mut() = absolute(authority, path)?;
                *req.version_mut() = Version::HTTP_2;
                pool.send(endpoint, req).await
            }
        }
    }
}

fn absolute(authority: &str, path: &str) -> Result<Uri, SendError> {
    format!("http://{authority}{path}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| SendError::Exchange(e.into()))
}

fn has_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = e.source();
    }
    false
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
