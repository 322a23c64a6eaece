//! The request's life, phase by phase, in [`handle`]:
//!
//! 1. **admit**: request id, request-line length, smuggling check, host and
//!    path normalisation;
//! 2. **route**: the router picks a route (404 if none);
//! 3. **direct**: a direct-response route answers here;
//! 4. **upstream request**: path rewritten, hop-by-hop headers stripped,
//!    forwarding headers and route header ops applied, body wrapped with
//!    size and progress limits;
//! 5. **exchange**: `Upstream::forward` picks endpoints, sends, retries and
//!    times out (circuit breaker included);
//! 6. **response**: hop-by-hop headers stripped, `Via` and route header ops
//!    applied, upgrades tunnelled;
//! 7. **log**: when the response body ends, one access-log event and the
//!    request metrics.
//!
//! Every failure is a [`ProxyError`], turned into a response in one place.

mod body;
mod error;
mod headers;
mod upgrade;

pub use error::ProxyError;
pub use headers::{is_upgrade, ClientIp};

use crate::config::{DirectResponse, HeaderOps, Limits, RouteAction, RouteUpstreamPolicy};
use crate::metrics::{self, RouteLabel, RouteStatus};
use crate::plugin::{Context, Outcome, PluginReply, PluginRequest, PluginResponse};
use crate::router::{self, RequestHead};
use crate::runtime::Snapshot;
use crate::upstream::{find_body_error, Body, BodyError, Exchange, ForwardError};
use body::{LimitedBody, ObservedBody};
use bytes::Bytes;
use headers::{ClientSide, X_REQUEST_ID};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the proxy knows about the client connection a request came on.
pub struct ConnCtx {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// `client`'s IP as header text, for the forwarding headers.
    pub client_ip: headers::ClientIp,
    pub tls: bool,
    pub trust_forwarded: bool,
    pub limits: Limits,
    pub shared: Arc<ConnShared>,
}

/// State shared between a connection's I/O guard and its requests.
pub struct ConnShared {
    born: std::time::Instant,
    /// When the last response finished, in µs since `born` (0: none yet).
    last_done_us: AtomicU64,
    /// Set by the HTTP/1 head scanner when a request carried both
    /// `Content-Length` and `Transfer-Encoding` (hyper would silently drop
    /// the former; we refuse the request instead).
    pub smuggling: AtomicBool,
    /// Requests whose response has not finished yet.
    pub in_flight: AtomicUsize,
    /// Requests started on this connection.
    pub started: AtomicU64,
}

/// The plugin context as `k=v k=v` in the access log.
struct ContextDisplay<'a>(&'a Context);

impl std::fmt::Display for ContextDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Counts a request as in flight on its connection until dropped, which
/// happens when its response body ends or the request is abandoned.
struct InFlight(Arc<ConnShared>);

impl InFlight {
    fn enter(shared: &Arc<ConnShared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        shared.started.fetch_add(1, Ordering::Relaxed);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let us = self.0.born.elapsed().as_micros().max(1) as u64;
        self.0.last_done_us.store(us, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Default for ConnShared {
    fn default() -> Self {
        ConnShared {
            born: std::time::Instant::now(),
            last_done_us: AtomicU64::new(0),
            smuggling: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
        }
    }
}

impl ConnShared {
    /// When the last response on this connection finished, if any.
    pub fn last_done(&self) -> Option<std::time::Instant> {
        match self.last_done_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.born + std::time::Duration::from_micros(us)),
        }
    }

    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// Fields of the access-log event, filled in as the request moves on.
struct Access {
    start: Instant,
    request_id: HeaderValue,
    method: http::Method,
    host: String,
    path: String,
    route: Option<Arc<str>>,
    endpoint: Option<String>,
    /// Upstream attempts (more than one when retried).
    attempts: u32,
    bytes_in: Arc<AtomicU64>,
    /// The plugins' per-request context.
    context: Context,
}

/// Handles one request on a config snapshot. Never fails: errors become
/// responses.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
    snap: Arc<Snapshot>,
) -> Response<Body> {
    let in_flight = InFlight::enter(&conn.shared);
    let request_id = headers::request_id(req.headers());
    let mut access = Access {
        start: Instant::now(),
        request_id: request_id.clone(),
        method: req.method().clone(),
        host: String::new(),
        path: req.uri().path().to_string(),
        route: None,
        endpoint: None,
        attempts: 0,
        bytes_in: Arc::new(AtomicU64::new(0)),
        context: Context::new(),
    };
    let mut resp = match proxy(req, &conn, &snap, &mut access).await {
        Ok(resp) => resp,
        Err(e) => {
            if let Some((upstream, kind)) = e.upstream_kind() {
                metrics::global().upstream_error(upstream, kind);
                tracing::warn!(request_id = ?request_id, error = %e, "upstream failure");
            }
            e.into_response(request_id.to_str().unwrap_or("-"))
        }
    };
    resp.headers_mut().insert(&X_REQUEST_ID, request_id);
    let status = resp.status();
    let access_log = snap.config.log.access_log;
    let client = conn.client;
    resp.map(move |b| {
        ObservedBody::new(b, move |bytes_out, complete| {
            drop(in_flight);
            finish(access, status, client, bytes_out, complete, access_log);
        })
        .boxed_unsync()
    })
}

/// Phase 7: metrics and the access-log event.
fn finish(
    a: Access,
    status: StatusCode,
    client: SocketAddr,
    bytes_out: u64,
    complete: bool,
    log: bool,
) {
    let elapsed = a.start.elapsed();
    let route = a.route.as_deref().unwrap_or("");
    let m = metrics::global();
    m.requests
        .get_or_create(&RouteStatus {
            route: route.to_string(),
            status: status.as_u16(),
        })
        .inc();
    m.request_duration
        .get_or_create(&RouteLabel {
            route: route.to_string(),
        })
        .observe(elapsed.as_secs_f64());
    if log {
        tracing::info!(
            target: "wasmgate::access",
            request_id = a.request_id.to_str().unwrap_or("-"),
            client = %client,
            method = %a.method,
            host = %a.host,
            path = %a.path,
            route,
            upstream = a.endpoint.as_deref().unwrap_or(""),
            attempts = a.attempts,
            context = %ContextDisplay(&a.context),
            status = status.as_u16(),
            bytes_in = a.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            complete,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "access"
        );
    }
}

async fn proxy(
    mut req: Request<Incoming>,
    conn: &ConnCtx,
    snap: &Snapshot,
    access: &mut Access,
) -> Result<Response<Body>, ProxyError> {
    // Phase 1: admit.
    let limits = &conn.limits;
    let line_len =
        req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if line_len > limits.max_request_line_bytes {
        return Err(ProxyError::UriTooLong);
    }
    if req.version() <= Version::HTTP_11
        && req.headers().contains_key(header::TRANSFER_ENCODING)
        && conn.shared.smuggling.load(Ordering::Relaxed)
    {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let authority = request_authority(&req)?;
    let host = host_without_port(&authority).to_ascii_lowercase();
    access.host.clone_from(&host);
    let path = router::normalize_path(req.uri().path())
        .ok_or(ProxyError::BadRequest("request target must be a path"))?
        .into_owned();

    // Phase 2: route.
    let head = RequestHead {
        listener: &conn.listener,
        host: &host,
        path: &path,
        query: req.uri().query(),
        method: req.method(),
        headers: req.headers(),
    };
    let matched = snap.router.lookup(&head).ok_or(ProxyError::NoRoute)?;
    let route = matched.route;
    let route_name = snap.route_name(matched.index);
    access.route = Some(route_name.clone());
    if let Some(len) = content_length(&req) {
        if len > limits.max_body_bytes {
            return Err(ProxyError::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
    }
    let upgrade = is_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let query = parts.uri.query().map(str::to_string);
    let with_query = |p: &str| match &query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_string(),
    };
    let mut target = Target {
        path_and_query: with_query(
            router::rewrite_path(&matched, &path)
                .as_deref()
                .unwrap_or(&path),
        ),
        host: match &route.action {
            RouteAction::Forward(f) => f.host_rewrite.clone().unwrap_or_else(|| authority.clone()),
            RouteAction::Direct(_) => authority.clone(),
        },
        upstream: match &route.action {
            RouteAction::Forward(f) => Some(f.upstream.clone()),
            RouteAction::Direct(_) => None,
        },
    };

    // Phase 3: request plugins (heads, then the body if one asked for it).
    let chain = snap.chain(&conn.listener, matched.index);
    let mut body = RequestBody::Streaming(incoming);
    if !chain.is_empty() {
        // Boxed: each plugin call lends it to the instance and takes it
        // back, which moves a pointer rather than the whole head.
        let mut preq = Box::new(PluginRequest {
            method: parts.method.clone(),
            scheme: if conn.tls { "https" } else { "http" },
            authority: authority.clone(),
            path_and_query: with_query(&path),
            client: conn.client,
            route: route_name,
            headers: std::mem::take(&mut parts.headers),
            context: Context::new(),
            path_changed: false,
            authority_override: None,
            upstream: None,
        });
        // The chain's futures are ready at once, or boxed when a plugin
        // must be entered on a fiber: this future stays small either way.
        let request_id = access.request_id.to_str().unwrap_or("-");
        let mut outcome = chain.on_request(&mut preq, request_id).await;
        let limit = chain.request_body_limit();
        if let (Outcome::Continue, Some(limit), false) = (&outcome, limit, upgrade) {
            body = match body {
                RequestBody::Streaming(incoming) => {
                    let read = read_request_body(incoming, limit, limits, &access.bytes_in).await;
                    let mut data = match read {
                        Ok(data) => data,
                        Err(e) => {
                            access.context = preq.context;
                            return Err(e);
                        }
                    };
                    outcome = chain
                        .on_request_body(&mut preq, &mut data, request_id)
                        .await;
                    RequestBody::Buffered(data)
                }
                buffered => buffered,
            };
        }
        parts.headers = preq.headers;
        access.context = preq.context;
        match outcome {
            Outcome::Continue => {}
            Outcome::Respond(reply) => return Ok(plugin_reply(reply)),
            Outcome::Failed(f) => return Err(ProxyError::plugin(f)),
        }
        if preq.path_changed {
            target.path_and_query = preq.path_and_query;
        }
        if let Some(a) = preq.authority_override {
            target.host = a;
        }
        if preq.upstream.is_some() && target.upstream.is_some() {
            target.upstream = preq.upstream;
        }
    }

    // Phases 4–6: a direct response, or the upstream's.
    let mut resp = match &route.action {
        RouteAction::Direct(d) => direct_response(d),
        RouteAction::Forward(f) => {
            let forwarding = Forwarding {
                policy: &f.upstream_policy,
                conn,
                snap,
                target,
                upgrade,
                client_upgrade,
                authority: &authority,
                request_headers: &route.request_headers,
            };
            // Boxed: the forwarding future is most of this one's size, and
            // hyper moves the request's future twice; inline, every request
            // (direct responses too) would copy it both times.
            Box::pin(forward(forwarding, parts, body, access)).await?
        }
    };
    route.response_headers.apply(resp.headers_mut());

    // Phase 7: response plugins (heads, then the body if one asked for it).
    if chain.takes_response() {
        let (mut head, mut body) = resp.into_parts();
        let mut presp = PluginResponse {
            status: head.status,
            headers: std::mem::take(&mut head.headers),
            context: std::mem::take(&mut access.context),
        };
        let request_id = access.request_id.to_str().unwrap_or("-");
        let mut outcome = chain.on_response(&mut presp, request_id).await;
        let limit = chain.response_body_limit();
        if let (Outcome::Continue, Some(limit)) = (&outcome, limit) {
            if response_has_body(&access.method, presp.status) {
                let (mut data, trailers) = match read_response_body(body, limit).await {
                    Ok(read) => read,
                    Err(e) => {
                        access.context = presp.context;
                        return Err(e);
                    }
                };
                outcome = chain
                    .on_response_body(&mut presp, &mut data, request_id)
                    .await;
                set_content_length(&mut presp.headers, data.len());
                body = buffered_body(data, trailers);
            }
        }
        head.status = presp.status;
        head.headers = presp.headers;
        access.context = presp.context;
        match outcome {
            Outcome::Continue => resp = Response::from_parts(head, body),
            Outcome::Respond(reply) => resp = plugin_reply(reply),
            Outcome::Failed(f) => return Err(ProxyError::plugin(f)),
        }
    }
    Ok(resp)
}

/// The request body on its way upstream: streamed from the client, or
/// buffered for the plugins' body phase.
enum RequestBody {
    Streaming(Incoming),
    Buffered(Bytes),
}

/// Buffers the request body for the plugins, up to the smaller of their
/// limit and the listener's (413 beyond it, 408 if it stalls).
async fn read_request_body(
    incoming: Incoming,
    plugin_limit: usize,
    limits: &Limits,
    seen: &Arc<AtomicU64>,
) -> Result<Bytes, ProxyError> {
    let limit = limits.max_body_bytes.min(plugin_limit as u64);
    let body = LimitedBody::new(incoming, limit, limits.body_read_timeout, seen.clone());
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(match find_body_error(&*e) {
            Some(BodyError::TooLarge(limit)) => ProxyError::BodyTooLarge { limit: *limit },
            Some(BodyError::Stalled) => ProxyError::BodyTimeout,
            None => ProxyError::BadRequest("request body could not be read"),
        }),
    }
}

/// Whether a response to this request can carry a body (RFC 9110 §6.4.1).
fn response_has_body(method: &http::Method, status: StatusCode) -> bool {
    method != http::Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// Buffers the response body for the plugins, keeping its trailers; 502
/// beyond `limit`.
async fn read_response_body(
    mut body: Body,
    limit: usize,
) -> Result<(Bytes, Option<http::HeaderMap>), ProxyError> {
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::ResponseBody(error_chain(&*e)))?;
        match frame.into_data() {
            Ok(chunk) if data.len() + chunk.len() > limit => {
                return Err(ProxyError::ResponseBodyTooLarge { limit });
            }
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// A buffered body with its trailers, if it had any.
fn buffered_body(data: Bytes, trailers: Option<http::HeaderMap>) -> Body {
    let full = Full::new(data).map_err(|never| match never {});
    match trailers {
        None => full.boxed_unsync(),
        Some(t) => full
            .with_trailers(std::future::ready(Some(Ok(t))))
            .boxed_unsync(),
    }
}

/// Frames a buffered body by length (`Transfer-Encoding` is hop-by-hop and
/// already gone).
fn set_content_length(headers: &mut http::HeaderMap, len: usize) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// Where a request goes, after the route and the plugins had their say.
struct Target {
    path_and_query: String,
    host: String,
    upstream: Option<String>,
}

struct Forwarding<'a> {
    conn: &'a ConnCtx,
    snap: &'a Snapshot,
    target: Target,
    upgrade: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    authority: &'a str,
    request_headers: &'a HeaderOps,
    policy: &'a RouteUpstreamPolicy,
}

/// Phases 4–6: builds the upstream request, exchanges it, cleans the
/// response.
async fn forward(
    f: Forwarding<'_>,
    parts: http::request::Parts,
    body: RequestBody,
    access: &mut Access,
) -> Result<Response<Body>, ProxyError> {
    let Forwarding {
        conn,
        snap,
        target,
        upgrade,
        client_upgrade,
        authority,
        request_headers,
        policy,
    } = f;
    let limits = &conn.limits;
    // Phase 4: upstream request.
    let name = target.upstream.unwrap_or_default();
    let upstream = snap
        .upstreams
        .get(&name)
        .ok_or_else(|| ProxyError::NoEndpoint {
            upstream: name.clone(),
        })?;
    let uri: Uri = target
        .path_and_query
        .parse()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
    let parts_version = parts.version;
    let mut out = Request::builder().method(parts.method).uri(uri);
    let headers = out
        .headers_mut()
        .ok_or(ProxyError::BadRequest("invalid request"))?;
    *headers = parts.headers;
    let had_body = headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING);
    headers::strip_hop_by_hop(headers, upgrade);
    headers::add_forwarding(
        headers,
        &ClientSide {
            ip: &conn.client_ip,
            tls: conn.tls,
            host: authority,
            trust_forwarded: conn.trust_forwarded,
            version: parts.version,
        },
    );
    if let Ok(v) = HeaderValue::from_str(&target.host) {
        headers.insert(header::HOST, v);
    }
    headers.insert(&X_REQUEST_ID, access.request_id.clone());
    request_headers.apply(headers);
    // Only a request without a body can be sent again (retries).
    let body_empty = upgrade
        || match &body {
            RequestBody::Streaming(incoming) => hyper::body::Body::is_end_stream(incoming),
            RequestBody::Buffered(data) => data.is_empty(),
        };
    let body: Body = match body {
        _ if upgrade => Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
        RequestBody::Streaming(incoming) => LimitedBody::new(
            incoming,
            limits.max_body_bytes,
            limits.body_read_timeout,
            access.bytes_in.clone(),
        )
        .boxed_unsync(),
        RequestBody::Buffered(data) => {
            if !data.is_empty() || had_body {
                set_content_length(headers, data.len());
            }
            buffered_body(data, None)
        }
    };
    let out = out
        .body(body)
        .map_err(|_| ProxyError::BadRequest("invalid request"))?;

    // Phase 5: exchange (the upstream picks endpoints, retries, times out).
    let (head, body) = out.into_parts();
    let forwarded = upstream
        .forward(Exchange {
            head,
            body,
            body_empty,
            upgrade,
            client_ip: conn.client.ip(),
            policy,
        })
        .await;
    access.endpoint = forwarded.endpoint;
    access.attempts = forwarded.attempts;
    let mut resp = forwarded
        .result
        .map_err(|e| upstream_error(&upstream.name, access.endpoint.as_deref().unwrap_or(""), e))?;

    // Phase 6: response.
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
    let version = resp.version();
    headers::append_via(resp.headers_mut(), version);
    // The client gets its own protocol version back, whatever the upstream spoke.
    *resp.version_mut() = parts_version;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        upgrade::tunnel(client_upgrade, upstream_upgrade, access.request_id.clone());
    }
    Ok(resp)
}

fn plugin_reply(reply: PluginReply) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(reply.body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = reply.status;
    *resp.headers_mut() = reply.headers;
    resp
}

/// Phase 5's failures as the proxy's errors.
fn upstream_error(upstream: &str, endpoint: &str, err: ForwardError) -> ProxyError {
    let (upstream, endpoint) = (upstream.to_string(), endpoint.to_string());
    match err {
        ForwardError::NoEndpoint => ProxyError::NoEndpoint { upstream },
        ForwardError::Overflow(limit) => ProxyError::UpstreamOverflow { upstream, limit },
        ForwardError::ConnectTimeout => ProxyError::UpstreamConnectTimeout { upstream, endpoint },
        ForwardError::Connect(_) => ProxyError::UpstreamConnect { upstream, endpoint },
        ForwardError::PerTryTimeout => ProxyError::UpstreamTimeout { upstream, endpoint },
        ForwardError::RequestTimeout => ProxyError::UpstreamRequestTimeout { upstream },
        ForwardError::Exchange(e) => match find_body_error(e.as_ref()) {
            Some(BodyError::TooLarge(limit)) => ProxyError::BodyTooLarge { limit: *limit },
            Some(BodyError::Stalled) => ProxyError::BodyTimeout,
            None => ProxyError::UpstreamProtocol {
                upstream,
                endpoint,
                reason: error_chain(e.as_ref()),
            },
        },
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The authority the client addressed: `:authority` on HTTP/2, else `Host`.
fn request_authority(req: &Request<Incoming>) -> Result<String, ProxyError> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_string());
    }
    match req.headers().get(header::HOST).map(|h| h.to_str()) {
        Some(Ok(h)) if !h.is_empty() => Ok(h.to_string()),
        Some(_) => Err(ProxyError::BadRequest("invalid Host header")),
        None if req.version() == Version::HTTP_10 => Ok(String::new()),
        None => Err(ProxyError::BadRequest("missing Host header")),
    }
}

fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split(']')
            .next()
            .map_or(authority, |h| &authority[..h.len() + 1]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn direct_response(d: &DirectResponse) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(d.body.clone()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = d.status;
    if let Ok(ct) = HeaderValue::from_str(&d.content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}
