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

pub use engine::PluginEngine;
pub use pool::InstancePool;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use std::collections::BTreeMap;
use std::future::Future;
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
}

impl PluginError {
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Trap { kind, .. } => kind,
            PluginError::Rejected(_) => "config",
            PluginError::OutputTooLarge => "output",
            PluginError::Invalid(_) => "invalid",
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

    fn links(&self) -> impl Iterator<Item = &ChainLink> {
        self.parts.iter().flat_map(|p| p.iter())
    }

    pub async fn on_request(
        &self,
        mut req: PluginRequest,
        request_id: &str,
    ) -> (PluginRequest, Outcome) {
        for link in self.links() {
            let (back, result) = link.pool.on_request(req, request_id).await;
            req = back;
            match self.settle(link, result, request_id, "request") {
                Some(outcome) => return (req, outcome),
                None => continue,
            }
        }
        (req, Outcome::Continue)
    }

    pub async fn on_response(
        &self,
        mut resp: PluginResponse,
        request_id: &str,
    ) -> (PluginResponse, Outcome) {
        for link in self.links() {
            let (back, result) = link.pool.on_response(resp, request_id).await;
            resp = back;
            match self.settle(link, result, request_id, "response") {
                Some(outcome) => return (resp, outcome),
                None => continue,
            }
        }
        (resp, Outcome::Continue)
    }

    /// Applies the failure policy; `None` means go on to the next plugin.
    fn settle(
        &self,
        link: &ChainLink,
        result: Result<Option<PluginReply>, PluginError>,
        request_id: &str,
        phase: &str,
    ) -> Option<Outcome> {
        let meta = &link.pool.meta;
        match result {
            Ok(None) => None,
            Ok(Some(reply)) => Some(Outcome::Respond(reply)),
            Err(error) => {
                meta.metrics.error(&meta.name, error.kind());
                match link.failure {
                    FailurePolicy::Open => {
                        tracing::warn!(plugin = %meta.name, route = self.route, request_id, phase, kind = error.kind(), error = %error, "plugin failed; skipped (fail-open)");
                        None
                    }
                    FailurePolicy::Closed { status } => {
                        tracing::error!(plugin = %meta.name, route = self.route, request_id, phase, kind = error.kind(), error = %error, "plugin failed; request refused (fail-closed)");
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
