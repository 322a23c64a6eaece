//! Upstreams: named groups of endpoints and everything between a request
//! and one of them — balancing, active and passive health, retries with a
//! budget, timeouts, circuit breaking, pooled HTTP/1.1 and multiplexed
//! HTTP/2, TLS. Knows nothing of routes or plugins.
//!
//! The proxy calls [`Upstream::forward`] once per request; that function
//! owns the attempt loop (see `forward.rs`).

pub mod balance;
pub mod budget;
mod connect;
mod dns;
mod endpoints;
mod forward;
mod h2;
mod health;
pub mod outlier;
mod status;
mod tls;

pub use forward::{Exchange, ForwardError, Forwarded};

use crate::config::{ConfigError, UpstreamConfig, UpstreamProtocol};
use arc_swap::ArcSwap;
use budget::RetryBudget;
use bytes::Bytes;
use connect::{ConnectError, Connector};
use endpoints::{Endpoint, EndpointSet};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent to upstreams and returned to clients.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type HttpClient = Client<Connector, Body>;

/// Why the gateway stopped reading a client's request body (raised by the
/// proxy's body wrapper, seen here inside a failed exchange).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled")]
    Stalled,
}

/// Finds a [`BodyError`] in an error's source chain.
pub fn find_body_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cur = e.source();
    }
    None
}

/// Why one exchange with an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connection failed")]
    Connect(#[source] BoxError),
    #[error("connection timed out")]
    ConnectTimeout,
    #[error("connection limit reached")]
    Overflow,
    #[error("exchange failed")]
    Exchange(#[source] BoxError),
}

impl SendError {
    fn from_connect(e: ConnectError) -> SendError {
        match e {
            ConnectError::Timeout => SendError::ConnectTimeout,
            ConnectError::Overflow(_) => SendError::Overflow,
            e => SendError::Connect(e.into()),
        }
    }
}

enum Transport {
    Http1(Box<HttpClient>),
    H2(h2::H2Pool),
}

/// Requests and pending attempts of one upstream, for the circuit breaker.
#[derive(Default)]
struct Load {
    requests: AtomicUsize,
    pending: AtomicUsize,
}

/// One upstream: its endpoints, pools and traffic policy.
pub struct Upstream {
    pub name: String,
    cfg: UpstreamConfig,
    set: ArcSwap<EndpointSet>,
    transport: Transport,
    connector: Connector,
    budget: RetryBudget,
    load: Arc<Load>,
}

impl Upstream {
    /// Builds an upstream and starts its health-check and DNS tasks, which
    /// end when the upstream is dropped (its config reloaded away).
    pub fn new(cfg: &UpstreamConfig) -> Result<Arc<Upstream>, ConfigError> {
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let alpn: &[&[u8]] = match cfg.protocol {
                    UpstreamProtocol::H2 => &[b"h2"],
                    _ => &[b"http/1.1"],
                };
                Some((tls::client_config(&cfg.name, t, alpn)?, t.sni.clone()))
            }
        };
        let connector = Connector::new(
            cfg.connect_timeout,
            tls,
            cfg.circuit_breaker.max_connections,
        );
        let transport = match cfg.protocol {
            UpstreamProtocol::Http1 => {
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(cfg.pool_idle_timeout)
                    .pool_max_idle_per_host(cfg.pool_max_idle_per_endpoint);
                Transport::Http1(Box::new(builder.build(connector.clone())))
            }
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                Transport::H2(h2::H2Pool::new(connector.clone()))
            }
        };
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| {
                let host = connect::host_of(&e.address).to_string();
                Arc::new(Endpoint::new(e.address.clone(), host, e.weight))
            })
            .collect();
        let retry = &cfg.retry;
        let up = Arc::new(Upstream {
            name: cfg.name.clone(),
            set: ArcSwap::from_pointee(EndpointSet::new(endpoints, cfg)),
            transport,
            connector,
            budget: RetryBudget::new(f64::from(retry.budget_percent), retry.min_retry_concurrency),
            load: Arc::default(),
            cfg: cfg.clone(),
        });
        health::spawn(&up);
        dns::spawn(&up);
        Ok(up)
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// An available endpoint's address, for one-off calls (plugin HTTP
    /// calls), or `None` if there is none.
    pub fn pick(&self) -> Option<String> {
        let set = self.set.load();
        let i = set.pick(None, &[], std::time::Instant::now())?;
        Some(set.endpoints[i].address.clone())
    }

    /// Replaces the endpoint list (DNS changed it). Endpoints that stay
    /// keep their state; requests in flight keep the set they started on.
    fn replace_endpoints(&self, list: Vec<(String, String, u32)>) {
        let old = self.set.load_full();
        let mut names = HashMap::new();
        let endpoints: Vec<Arc<Endpoint>> = list
            .into_iter()
            .map(|(address, host, weight)| {
                names.insert(address.clone(), host.clone());
                old.endpoints
                    .iter()
                    .find(|e| e.address == address && e.weight == weight)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(address, host, weight)))
            })
            .collect();
        self.connector.set_names(names);
        if let Transport::H2(pool) = &self.transport {
            pool.retain(|a| endpoints.iter().any(|e| e.address == a));
        }
        self.set
            .store(Arc::new(EndpointSet::new(endpoints, &self.cfg)));
    }

    /// Sends a request whose URI is origin-form (path and query) and whose
    /// `Host` header names the authority to present upstream.
    pub async fn send(
        &self,
        endpoint: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let pq = req.uri().path_and_query().cloned();
        match &self.transport {
            Transport::Http1(client) => {
                *req.uri_mut() = absolute(Scheme::HTTP, endpoint, pq)?;
                *req.version_mut() = Version::HTTP_11;
                client.request(req).await.map_err(|e| {
                    if !e.is_connect() {
                        return SendError::Exchange(e.into());
                    }
                    match find_connect_error(&e) {
                        Some(ConnectError::Timeout) => SendError::ConnectTimeout,
                        Some(ConnectError::Overflow(_)) => SendError::Overflow,
                        _ => SendError::Connect(e.into()),
                    }
                })
            }
            Transport::H2(pool) => {
                // HTTP/2 carries the host as `:authority`, not as a header.
                let authority = req.headers_mut().remove(header::HOST);
                let authority = authority
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(endpoint);
                let scheme = if self.connector.is_tls() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                };
                *req.uri_mut() = absolute(scheme, authority, pq)?;
                *req.version_mut() = Version::HTTP_2;
                pool.send(endpoint, req).await
            }
        }
    }
}

/// Spawns on the current runtime; without one (never the case in the
/// gateway) the task is skipped rather than panicking.
fn spawn_task(f: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}

/// The absolute-form URI for the upstream request, from parts already
/// parsed (no string to format and parse again).
fn absolute(
    scheme: Scheme,
    authority: &str,
    path_and_query: Option<PathAndQuery>,
) -> Result<Uri, SendError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(
        Authority::try_from(authority)
            .map_err(|e: http::uri::InvalidUri| SendError::Exchange(e.into()))?,
    );
    parts.path_and_query = Some(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts).map_err(|e| SendError::Exchange(e.into()))
}

fn find_connect_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// All upstreams of one config generation, by name.
#[derive(Default)]
pub struct Upstreams {
    by_name: HashMap<String, Arc<Upstream>>,
}

impl Upstreams {
    /// Builds the upstreams of a new config, reusing unchanged upstreams
    /// from the previous generation so a reload keeps warm connections,
    /// health and ejection state.
    pub fn build(
        cfgs: &[UpstreamConfig],
        previous: Option<&Upstreams>,
    ) -> Result<Upstreams, Vec<ConfigError>> {
        let mut by_name = HashMap::new();
        let mut errors = Vec::new();
        for c in cfgs {
            let reuse = previous
                .and_then(|p| p.by_name.get(&c.name))
                .filter(|u| u.cfg == *c)
                .cloned();
            let up = match reuse {
                Some(u) => u,
                None => match Upstream::new(c) {
                    Ok(u) => u,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
            };
            by_name.insert(c.name.clone(), up);
        }
        if errors.is_empty() {
            Ok(Upstreams { by_name })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }

    /// Every upstream, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        let mut all: Vec<&Arc<Upstream>> = self.by_name.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }
}
