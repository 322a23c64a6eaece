//! The WebAssembly plugin host: components built against `wit/plugin.wit`,
//! run in wasmtime with per-call CPU deadlines, memory caps, a stack cap and
//! an output cap, from pools of reused instances.
//!
//! Knows WIT, wasmtime and its own limits; nothing of the proxy, router or
//! upstreams. The proxy calls it through [`Chain`] with plain `http` types,
//! and gives it an [`Outbound`] for the plugins' HTTP calls.

mod bindings;
mod engine;
pub mod kv;
mod pool;
mod state;
pub mod testing;

pub use engine::{PluginEngine, DEFAULT_INSTANCE_SLOTS, MAX_INSTANCE_SLOTS};
pub use pool::InstancePool;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::{HeaderMap, Method, StatusCode};
use std::collections::BTreeMap;
use std::future::{ready, Future, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Per-plugin sandbox limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    pub memory_bytes: usize,
    pub cpu: Duration,
    pub max_output_bytes: usize,
    pub max_instance_uses: u64,
    /// The largest body buffered for the plugin's body phases, and the
    /// largest body it may replace one with.
    pub max_body_bytes: usize,
}

impl Default for PluginLimits {
    /// The defaults of a `[[plugins]]` entry that sets no limits.
    fn default() -> Self {
        PluginLimits {
            memory_bytes: 32 << 20,
            cpu: Duration::from_millis(50),
            max_output_bytes: 1 << 20,
            max_instance_uses: 100_000,
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Instances are reused across requests (module state persists).
    Reuse,
    /// A fresh instance for every call.
    PerRequest,
}

/// What a plugin failed with.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin trapped ({kind}): {detail}")]
    Trap { kind: &'static str, detail: String },
    #[error("plugin rejected its config: {0}")]
    Rejected(String),
    #[error("plugin produced more output than its limit")]
    OutputTooLarge,
    #[error("plugin returned an invalid response: {0}")]
    Invalid(String),
    /// No instance could be made: every one of the engine's
    /// `plugin_instance_slots` is in use. Not the plugin's fault, so a
    /// fail-closed plugin answers 503 whatever its configured status.
    #[error("no free plugin instance slot (all `plugin_instance_slots` are in use): {0}")]
    Capacity(String),
}

impl PluginError {
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Trap { kind, .. } => kind,
            PluginError::Rejected(_) => "config",
            PluginError::OutputTooLarge => "output",
            PluginError::Invalid(_) => "invalid",
            PluginError::Capacity(_) => "capacity",
        }
    }
}

/// Metrics sink for plugin calls; implemented by the metrics module's
/// owner so this module stays free of it.
pub trait PluginMetrics: Send + Sync {
    fn call(&self, plugin: &str, elapsed: Duration);
    fn error(&self, plugin: &str, kind: &'static str);
    fn instances(&self, plugin: &str, delta: i64);
    fn guest_counter(&self, plugin: &str, name: &str, value: u64);
    fn guest_histogram(&self, plugin: &str, name: &str, value: f64);
}

/// A response from a plugin's HTTP call: status, headers, body.
pub type OutboundResponse = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

/// HTTP calls from plugins, limited to the gateway's configured upstreams.
pub trait Outbound: Send + Sync {
    fn has_upstream(&self, name: &str) -> bool;
    fn call<'a>(
        &'a self,
        upstream: &'a str,
        method: &'a str,
        path: &'a str,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<OutboundResponse, String>> + Send + 'a>>;
}

/// Shared by every instance of a plugin.
pub struct PluginMeta {
    pub name: Arc<str>,
    pub limits: PluginLimits,
    pub kv: Arc<dyn kv::Kv>,
    pub metrics: Arc<dyn PluginMetrics>,
}

/// Per-request context passed along the chain (and to the access log).
pub type Context = BTreeMap<String, String>;

/// The request head as plugins see and change it.
pub struct PluginRequest {
    pub method: Method,
    pub scheme: &'static str,
    pub authority: String,
    pub path_and_query: String,
    pub client: SocketAddr,
    pub route: Arc<str>,
    pub headers: HeaderMap,
    pub context: Context,
    /// Set by `set-path`.
    pub path_changed: bool,
    /// Set by `set-authority`.
    pub authority_override: Option<String>,
    /// Set by `set-upstream`.
    pub upstream: Option<String>,
}

/// The response head as plugins see and change it.
pub struct PluginResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub context: Context,
}

impl PluginRequest {
    /// What an instance's request slot holds between calls.
    fn placeholder() -> PluginRequest {
        PluginRequest {
            method: Method::GET,
            scheme: "http",
            authority: String::new(),
            path_and_query: String::new(),
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            route: Arc::from(""),
            headers: HeaderMap::new(),
            context: Context::new(),
            path_changed: false,
            authority_override: None,
            upstream: None,
        }
    }
}

impl PluginResponse {
    /// What an instance's response slot holds between calls.
    fn placeholder() -> PluginResponse {
        PluginResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            context: Context::new(),
        }
    }
}

/// The phases a plugin declared in `configure`; the others are never
/// called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    pub request_headers: bool,
    pub response_headers: bool,
    pub request_body: bool,
    pub response_body: bool,
}

/// What a plugin decided in one phase.
#[derive(Debug)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Go on with this body instead (body phases only).
    Replace(Bytes),
    /// Answer with this response.
    Respond(PluginReply),
}

/// A response a plugin produced itself.
#[derive(Debug)]
pub struct PluginReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What to do when a plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer the request with `status` (500 by default).
    Closed { status: StatusCode },
    /// Skip the plugin and go on.
    Open,
}

/// One plugin in a chain.
pub struct ChainLink {
    pub pool: Arc<InstancePool>,
    pub failure: FailurePolicy,
}

/// A failed plugin that stops the request (fail-closed).
#[derive(Debug)]
pub struct ChainFailure {
    pub plugin: Arc<str>,
    pub error: PluginError,
    pub status: StatusCode,
}

/// How a phase of the chain ended.
pub enum Outcome {
    Continue,
    Respond(PluginReply),
    Failed(ChainFailure),
}

/// A phase of the chain: ready at once, or boxed when a plugin of it must
/// be entered on a fiber.
type PhaseFuture<'a, T> = Either<Ready<T>, BoxFuture<'a, T>>;

/// Runs plugins in order; a chain is the global, listener and route links
/// one after another.
pub struct Chain<'a> {
    pub parts: [&'a [ChainLink]; 3],
    /// The route the request matched, for log lines.
    pub route: &'a str,
}

impl Chain<'_> {
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.is_empty())
    }

    /// Whether a plugin of the chain takes part in a response phase.
    pub fn takes_response(&self) -> bool {
        self.links()
            .any(|l| l.pool.phases.response_headers || l.pool.phases.response_body)
    }

    fn links(&self) -> impl Iterator<Item = &ChainLink> {
        self.parts.iter().flat_map(|p| p.iter())
    }

    /// The request-body buffer limit if any plugin of the chain wants the
    /// request body: the smallest `max_body_bytes` among those that do.
    pub fn request_body_limit(&self) -> Option<usize> {
        self.body_limit(|p| p.request_body)
    }

    /// Like [`request_body_limit`](Self::request_body_limit), for responses.
    pub fn response_body_limit(&self) -> Option<usize> {
        self.body_limit(|p| p.response_body)
    }

    fn body_limit(&self, wants: impl Fn(Phases) -> bool) -> Option<usize> {
        self.links()
            .filter(|l| wants(l.pool.phases))
            .map(|l| l.pool.meta.limits.max_body_bytes)
            .min()
    }

    /// The request-headers phase of every plugin, on `req` in place.
    pub fn on_request<'a>(
        &'a self,
        req: &'a mut Box<PluginRequest>,
        request_id: &'a str,
    ) -> PhaseFuture<'a, Outcome> {
        self.phase(req, None, request_id)
    }

    /// The response-headers phase of every plugin, on `resp` in place.
    pub fn on_response<'a>(
        &'a self,
        resp: &'a mut PluginResponse,
        request_id: &'a str,
    ) -> PhaseFuture<'a, Outcome> {
        self.phase(resp, None, request_id)
    }

    /// The request-body phase of the plugins that asked for it; `body` is
    /// left as they made it.
    pub fn on_request_body<'a>(
        &'a self,
        req: &'a mut Box<PluginRequest>,
        body: &'a mut Bytes,
        request_id: &'a str,
    ) -> PhaseFuture<'a, Outcome> {
        self.phase(req, Some(body), request_id)
    }

    /// The response-body phase of the plugins that asked for it.
    pub fn on_response_body<'a>(
        &'a self,
        resp: &'a mut PluginResponse,
        body: &'a mut Bytes,
        request_id: &'a str,
    ) -> PhaseFuture<'a, Outcome> {
        self.phase(resp, Some(body), request_id)
    }

    /// One phase through the chain, on the head (and the body, for a body
    /// phase) in place; only plugins that declared the phase. When every
    /// one of them can be called directly (none imports an async host
    /// function) the phase runs at once, on this thread, and the future is
    /// ready; otherwise it is a boxed future that enters the plugins on
    /// fibers.
    fn phase<'a, H: ChainHead>(
        &'a self,
        head: &'a mut H,
        mut body: Option<&'a mut Bytes>,
        request_id: &'a str,
    ) -> PhaseFuture<'a, Outcome> {
        let with_body = body.is_some();
        if self.takers::<H>(with_body).all(|l| l.pool.blocking) {
            let phase = H::phase(with_body);
            for link in self.takers::<H>(with_body) {
                let result =
                    link.pool
                        .call_blocking(head, request_id, body.as_deref().map(|b| &b[..]));
                if let Some(o) = self.step(link, result, &mut body, request_id, phase) {
                    return Either::Left(ready(o));
                }
            }
            Either::Left(ready(Outcome::Continue))
        } else {
            Either::Right(Box::pin(self.run(head, body, request_id)))
        }
    }

    /// A phase of a chain in which some plugin must be entered on a fiber.
    async fn run<H: ChainHead>(
        &self,
        head: &mut H,
        mut body: Option<&mut Bytes>,
        request_id: &str,
    ) -> Outcome {
        let with_body = body.is_some();
        let phase = H::phase(with_body);
        for link in self.takers::<H>(with_body) {
            let result = link
                .pool
                .call(head, request_id, body.as_deref().map(|b| &b[..]))
                .await;
            if let Some(outcome) = self.step(link, result, &mut body, request_id, phase) {
                return outcome;
            }
        }
        Outcome::Continue
    }

    /// The links that take part in a phase.
    fn takers<H: ChainHead>(&self, with_body: bool) -> impl Iterator<Item = &ChainLink> {
        self.links()
            .filter(move |l| H::wants(l.pool.phases, with_body))
    }

    /// After one plugin: takes a replaced body, applies the failure policy;
    /// `None` means go on to the next plugin.
    fn step(
        &self,
        link: &ChainLink,
        result: Result<Verdict, PluginError>,
        body: &mut Option<&mut Bytes>,
        request_id: &str,
        phase: &str,
    ) -> Option<Outcome> {
        if let Ok(Verdict::Replace(new)) = result {
            if let Some(body) = body.as_deref_mut() {
                *body = new;
            }
            return None;
        }
        self.settle(link, result, request_id, phase)
    }

    /// Applies the failure policy; `None` means go on to the next plugin.
    fn settle(
        &self,
        link: &ChainLink,
        result: Result<Verdict, PluginError>,
        request_id: &str,
        phase: &str,
    ) -> Option<Outcome> {
        let meta = &link.pool.meta;
        match result {
            Ok(Verdict::Continue | Verdict::Replace(_)) => None,
            Ok(Verdict::Respond(reply)) => Some(Outcome::Respond(reply)),
            Err(error) => {
                meta.metrics.error(&meta.name, error.kind());
                match link.failure {
                    FailurePolicy::Open => {
                        tracing::warn!(plugin = %meta.name, route = self.route, request_id, phase, kind = error.kind(), error = %error, "plugin failed; skipped (fail-open)");
                        None
                    }
                    FailurePolicy::Closed { status } => {
                        tracing::error!(plugin = %meta.name, route = self.route, request_id, phase, kind = error.kind(), error = %error, "plugin failed; request refused (fail-closed)");
                        let status = match error {
                            PluginError::Capacity(_) => StatusCode::SERVICE_UNAVAILABLE,
                            _ => status,
                        };
                        Some(Outcome::Failed(ChainFailure {
                            plugin: meta.name.clone(),
                            error,
                            status,
                        }))
                    }
                }
            }
        }
    }
}

/// A head that goes through the chain: the request's or the response's.
trait ChainHead: pool::Lent {
    /// The phase's name in log lines.
    fn phase(body: bool) -> &'static str;
    /// Whether a plugin with these phases takes part in the head phase
    /// (`body` false) or the body phase.
    fn wants(phases: Phases, body: bool) -> bool;
}

impl ChainHead for Box<PluginRequest> {
    fn phase(body: bool) -> &'static str {
        if body {
            "request-body"
        } else {
            "request"
        }
    }
    fn wants(phases: Phases, body: bool) -> bool {
        if body {
            phases.request_body
        } else {
            phases.request_headers
        }
    }
}

impl ChainHead for PluginResponse {
    fn phase(body: bool) -> &'static str {
        if body {
            "response-body"
        } else {
            "response"
        }
    }
    fn wants(phases: Phases, body: bool) -> bool {
        if body {
            phases.response_body
        } else {
            phases.response_headers
        }
    }
}
