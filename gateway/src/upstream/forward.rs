//! One request's way to an upstream: circuit breaker, endpoint choice,
//! attempts under the per-try deadline, retries (budget, back-off, another
//! endpoint), outcomes fed to outlier detection, all under the request's
//! whole deadline.
//!
//! A retry happens only before anything of the response reached the client:
//! the attempt loop ends when an attempt's response head is accepted, and a
//! response with a retryable status is dropped unread. Only requests whose
//! body is empty are retried (the body is streamed, never buffered), and
//! only methods in the retry policy (idempotent ones by default).

use super::budget::{backoff, RequestGuard};
use super::endpoints::ActiveGuard;
use super::outlier::Outcome;
use super::{find_body_error, Body, BoxError, Load, SendError, Upstream};
use crate::config::{HashOn, RetryOn, RouteUpstreamPolicy};
use crate::metrics;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming, SizeHint};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Header sent upstream on retried attempts: the attempt's number (2, 3, …).
pub const ATTEMPTS_HEADER: &str = "x-wasmgate-attempts";

/// What the proxy hands over: the request as it should go upstream.
pub struct Exchange<'a> {
    pub head: http::request::Parts,
    pub body: Body,
    /// The client's request has no body (so it can be sent again).
    pub body_empty: bool,
    /// An upgrade (WebSocket): never retried.
    pub upgrade: bool,
    pub client_ip: IpAddr,
    /// The route's overrides of timeouts and retries.
    pub policy: &'a RouteUpstreamPolicy,
}

/// The result and what the access log wants to know about it.
pub struct Forwarded {
    pub result: Result<Response<Body>, ForwardError>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<String>,
    pub attempts: u32,
}

/// Why no upstream response could be returned.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no available endpoint")]
    NoEndpoint,
    #[error("upstream overflow: {0} limit reached")]
    Overflow(&'static str),
    #[error("connection failed")]
    Connect(#[source] BoxError),
    #[error("connection timed out")]
    ConnectTimeout,
    #[error("no response within the per-try timeout")]
    PerTryTimeout,
    #[error("no response within the request timeout")]
    RequestTimeout,
    #[error("exchange failed")]
    Exchange(#[source] BoxError),
}

impl ForwardError {
    fn outcome(&self) -> Option<Outcome> {
        match self {
            ForwardError::Connect(_) | ForwardError::ConnectTimeout => {
                Some(Outcome::ConnectFailure)
            }
            // The client's body failed: not the endpoint's fault.
            ForwardError::Exchange(e) if is_body_error(e.as_ref()) => None,
            // A reset before the response head: a local-origin failure.
            ForwardError::Exchange(_) => Some(Outcome::ConnectFailure),
            ForwardError::PerTryTimeout => Some(Outcome::Timeout),
            _ => None,
        }
    }

    fn retryable(&self, on: &RetryOn) -> Option<&'static str> {
        match self {
            ForwardError::Connect(_) | ForwardError::ConnectTimeout if on.connect_failure => {
                Some("connect_failure")
            }
            ForwardError::Exchange(e) if on.reset && !is_body_error(e.as_ref()) => Some("reset"),
            ForwardError::PerTryTimeout if on.timeout => Some("timeout"),
            _ => None,
        }
    }
}

/// The client's body failed (too large, stalled): not the upstream's
/// fault, never retried.
fn is_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    find_body_error(e).is_some()
}

/// Counters held while a request is active (until its response body ends).
struct Guards {
    _request: RequestGuard,
    _load: LoadGuard,
    _active: Option<ActiveGuard>,
}

struct LoadGuard(Arc<Load>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

struct PendingGuard(Arc<Load>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reserves one unit of `counter` below `max`, or says no.
fn reserve(counter: &std::sync::atomic::AtomicUsize, max: usize) -> bool {
    if counter.fetch_add(1, Ordering::AcqRel) >= max {
        counter.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    true
}

impl Upstream {
    /// Forwards one request, retrying as the policy allows.
    pub async fn forward(&self, x: Exchange<'_>) -> Forwarded {
        let mut out = Forwarded {
            result: Err(ForwardError::NoEndpoint),
            endpoint: None,
            attempts: 0,
        };
        let breaker = &self.cfg.circuit_breaker;
        if !reserve(&self.load.requests, breaker.max_requests) {
            self.overflow("requests");
            out.result = Err(ForwardError::Overflow("requests"));
            return out;
        }
        let load = LoadGuard(self.load.clone());
        let request = self.budget.request_started();
        let deadline = x
            .policy
            .request_timeout
            .or(self.cfg.request_timeout)
            .map(|t| Instant::now() + t);
        let result = match deadline {
            Some(d) => {
                match tokio::time::timeout_at(d.into(), self.attempts(x, deadline, &mut out)).await
                {
                    Ok(r) => r,
                    Err(_) => Err(ForwardError::RequestTimeout),
                }
            }
            None => self.attempts(x, None, &mut out).await,
        };
        out.result = result.map(|(resp, active)| {
            let guards = Guards {
                _request: request,
                _load: load,
                _active: active,
            };
            resp.map(|b| {
                GuardedBody {
                    inner: b,
                    _guards: guards,
                }
                .boxed_unsync()
            })
        });
        out
    }

    fn overflow(&self, kind: &'static str) {
        metrics::global().upstream_overflow(&self.name, kind);
    }

    async fn attempts(
        &self,
        x: Exchange<'_>,
        deadline: Option<Instant>,
        out: &mut Forwarded,
    ) -> Result<(Response<Incoming>, Option<ActiveGuard>), ForwardError> {
        let Exchange {
            mut head,
            body,
            body_empty,
            upgrade,
            client_ip,
            policy,
        } = x;
        let retry = &self.cfg.retry;
        let on = policy.retry_on.as_ref().unwrap_or(&retry.on);
        let methods = policy.retry_methods.as_ref().unwrap_or(&retry.methods);
        let max_retries = policy.max_retries.unwrap_or(retry.max_retries);
        let can_retry = max_retries > 0
            && body_empty
            && !upgrade
            && methods.contains(&head.method)
            && head.method != Method::CONNECT;
        let per_try = policy.per_try_timeout.unwrap_or(self.cfg.per_try_timeout);
        let key = self.hash_key(&head, client_ip);
        let set = self.set.load_full();
        let mut tried: Vec<usize> = Vec::new();
        let mut body = Some(body);
        let mut _retry_guard = None;
        loop {
            let attempt = out.attempts;
            let now = Instant::now();
            let Some(i) = set.pick(key, &tried, now) else {
                return Err(ForwardError::NoEndpoint);
            };
            let endpoint = set.endpoints[i].clone();
            out.endpoint = Some(endpoint.address.clone());
            out.attempts += 1;
            tried.push(i);
            if !reserve(&self.load.pending, self.cfg.circuit_breaker.max_pending) {
                self.overflow("pending");
                return Err(ForwardError::Overflow("pending"));
            }
            let pending = PendingGuard(self.load.clone());
            let active = ActiveGuard::enter(&endpoint);
            // Keep the head for a later attempt only if there can be one.
            let parts = if can_retry {
                head.clone()
            } else {
                std::mem::replace(&mut head, Request::new(()).into_parts().0)
            };
            let mut req = Request::from_parts(
                parts,
                body.take().unwrap_or_else(|| {
                    Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed_unsync()
                }),
            );
            if attempt > 0 {
                req.headers_mut()
                    .insert(ATTEMPTS_HEADER, HeaderValue::from(attempt + 1));
            }
            let limit = match deadline {
                Some(d) => per_try.min(d.saturating_duration_since(now)),
                None => per_try,
            };
            let sent = tokio::time::timeout(limit, self.send(&endpoint.address, req)).await;
            drop(pending);
            let (failure, reason) = match sent {
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let outcome = if status >= 500 {
                        Outcome::Status5xx
                    } else {
                        Outcome::Success
                    };
                    self.record(&set, i, outcome);
                    if !(can_retry && on.status(status)) {
                        return Ok((resp, Some(active)));
                    }
                    (Ok(resp), "status")
                }
                Ok(Err(SendError::Overflow)) => {
                    self.overflow("connections");
                    return Err(ForwardError::Overflow("connections"));
                }
                Ok(Err(e)) => {
                    let e = match e {
                        SendError::Connect(e) => ForwardError::Connect(e),
                        SendError::ConnectTimeout => ForwardError::ConnectTimeout,
                        SendError::Exchange(e) => ForwardError::Exchange(e),
                        SendError::Overflow => ForwardError::Overflow("connections"),
                    };
                    if let Some(o) = e.outcome() {
                        self.record(&set, i, o);
                    }
                    match e.retryable(on) {
                        Some(reason) if can_retry => (Err(e), reason),
                        _ => return Err(e),
                    }
                }
                Err(_) => {
                    self.record(&set, i, Outcome::Timeout);
                    let e = if deadline.is_some_and(|d| Instant::now() >= d) {
                        ForwardError::RequestTimeout
                    } else {
                        ForwardError::PerTryTimeout
                    };
                    match e.retryable(on) {
                        Some(reason) if can_retry => (Err(e), reason),
                        _ => return Err(e),
                    }
                }
            };
            // Another attempt? If not, the last answer goes back as it is
            // (a response keeps counting as active on its endpoint).
            let give_up = |f: Result<Response<Incoming>, ForwardError>, active| match f {
                Ok(resp) => Ok((resp, Some(active))),
                Err(e) => Err(e),
            };
            if attempt >= max_retries {
                return give_up(failure, active);
            }
            let m = metrics::global();
            // This request's previous retry no longer counts as in flight.
            _retry_guard = None;
            match self.budget.try_retry() {
                Some(g) => _retry_guard = Some(g),
                None => {
                    m.upstream_retry_budget_exhausted(&self.name);
                    return give_up(failure, active);
                }
            }
            let wait = backoff(attempt, retry.backoff_base, retry.backoff_max);
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return give_up(failure, active);
            }
            m.upstream_retry(&self.name, reason);
            // The failed response (if any) is dropped unread before waiting.
            drop(failure);
            drop(active);
            tokio::time::sleep(wait).await;
        }
    }

    fn record(&self, set: &super::endpoints::EndpointSet, i: usize, outcome: Outcome) {
        if set.outlier.record(i, outcome, Instant::now()) {
            let addr = &set.endpoints[i].address;
            tracing::warn!(upstream = %self.name, endpoint = %addr, ?outcome, "endpoint ejected");
            metrics::global().upstream_ejection(&self.name, addr);
        }
    }

    /// The consistent-hash key of a request, if the upstream hashes.
    fn hash_key(&self, head: &http::request::Parts, client_ip: IpAddr) -> Option<u64> {
        use super::balance::hash_key;
        let on = self.cfg.hash_on.as_ref()?;
        match on {
            HashOn::ClientIp => Some(hash_key(client_ip.to_string().as_bytes())),
            HashOn::Header(name) => head.headers.get(name).map(|v| hash_key(v.as_bytes())),
            HashOn::Cookie(name) => head
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| hash_key(v.as_bytes())),
            HashOn::Query(name) => head.uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| hash_key(v.as_bytes()))
            }),
        }
    }
}

/// The upstream's response body, holding the request's counters until it
/// ends or is dropped.
struct GuardedBody {
    inner: Incoming,
    _guards: Guards,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
