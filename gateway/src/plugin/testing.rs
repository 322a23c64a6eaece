//! A test harness for plugin authors: load a built component, configure it,
//! feed it request and response heads and assert on what it did — from
//! `cargo test`, without running a gateway. The plugin runs in the same
//! sandbox (engine, limits, instance pool) as in the gateway.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wasmgate::plugin::testing::{TestPlugin, TestRequest};
//! let plugin = TestPlugin::load("plugins/target/wasm32-wasip2/release/hello_header.wasm", r#"{"greeting":"hi"}"#).await?;
//! let run = plugin.on_request(TestRequest::get("/").header("x-a", "1")).await;
//! assert!(run.reply.is_none());
//! assert_eq!(run.request.headers["x-hello"], "hi");
//! # Ok(()) }
//! ```

use super::kv::{Kv, MemoryKv};
use super::{
    InstancePool, Isolation, Outbound, OutboundResponse, Phases, PluginEngine, PluginError,
    PluginLimits, PluginMeta, PluginMetrics, PluginReply, PluginRequest, PluginResponse, Verdict,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A request head to feed a plugin.
pub struct TestRequest(PluginRequest);

impl TestRequest {
    pub fn new(method: Method, path_and_query: &str) -> TestRequest {
        TestRequest(PluginRequest {
            method,
            scheme: "http",
            authority: "test.local".into(),
            path_and_query: path_and_query.into(),
            client: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
            route: Arc::from("test"),
            headers: HeaderMap::new(),
            context: Default::default(),
            path_changed: false,
            authority_override: None,
            upstream: None,
        })
    }

    pub fn get(path_and_query: &str) -> TestRequest {
        TestRequest::new(Method::GET, path_and_query)
    }

    /// Appends a header; panics on an invalid name or value (test input).
    pub fn header(mut self, name: &str, value: &str) -> TestRequest {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            panic!("invalid test header {name}: {value}");
        };
        self.0.headers.append(n, v);
        self
    }

    pub fn authority(mut self, authority: &str) -> TestRequest {
        self.0.authority = authority.into();
        self
    }

    pub fn context(mut self, key: &str, value: &str) -> TestRequest {
        self.0.context.insert(key.into(), value.into());
        self
    }
}

/// What a plugin did with a request.
pub struct RequestRun {
    /// The request as the plugin left it (headers, path, context, upstream).
    pub request: PluginRequest,
    /// The response it answered with, if it short-circuited.
    pub reply: Option<PluginReply>,
    /// The body it replaced the request body with (body phase only).
    pub body: Option<Bytes>,
}

/// What a plugin did with a response.
pub struct ResponseRun {
    pub response: PluginResponse,
    pub reply: Option<PluginReply>,
    /// The body it replaced the response body with (body phase only).
    pub body: Option<Bytes>,
}

fn split(verdict: Verdict) -> (Option<PluginReply>, Option<Bytes>) {
    match verdict {
        Verdict::Continue => (None, None),
        Verdict::Replace(b) => (None, Some(b)),
        Verdict::Respond(r) => (Some(r), None),
    }
}

/// Counts what the plugin reported, for assertions.
#[derive(Default)]
pub struct RecordedMetrics {
    pub calls: AtomicU64,
    pub errors: Mutex<Vec<&'static str>>,
    pub counters: Mutex<Vec<(String, u64)>>,
}

impl PluginMetrics for RecordedMetrics {
    fn call(&self, _: &str, _: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
    fn error(&self, _: &str, kind: &'static str) {
        if let Ok(mut e) = self.errors.lock() {
            e.push(kind);
        }
    }
    fn instances(&self, _: &str, _: i64) {}
    fn guest_counter(&self, _: &str, name: &str, value: u64) {
        if let Ok(mut c) = self.counters.lock() {
            c.push((name.to_string(), value));
        }
    }
    fn guest_histogram(&self, _: &str, _: &str, _: f64) {}
}

/// The harness has no upstreams: `http-call` fails with a clear message.
struct NoOutbound;

impl Outbound for NoOutbound {
    fn has_upstream(&self, _: &str) -> bool {
        false
    }
    fn call<'a>(
        &'a self,
        upstream: &'a str,
        _: &'a str,
        _: &'a str,
        _: Vec<(String, Vec<u8>)>,
        _: Vec<u8>,
        _: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<OutboundResponse, String>> + Send + 'a>> {
        Box::pin(async move { Err(format!("the test harness has no upstream `{upstream}`")) })
    }
}

fn engine() -> Result<Arc<PluginEngine>, String> {
    static ENGINE: OnceLock<Result<Arc<PluginEngine>, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            PluginEngine::new(None, super::engine::DEFAULT_INSTANCE_SLOTS)
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
}

fn test_response(
    status: u16,
    headers: &[(&str, &str)],
    context: &[(&str, &str)],
) -> PluginResponse {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
    PluginResponse {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        headers: h,
        context: context
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// A loaded, configured plugin.
pub struct TestPlugin {
    pool: Arc<InstancePool>,
    kv: Arc<MemoryKv>,
    pub metrics: Arc<RecordedMetrics>,
}

impl TestPlugin {
    /// Loads with the gateway's default limits.
    pub async fn load(path: impl AsRef<Path>, config_json: &str) -> Result<TestPlugin, String> {
        TestPlugin::load_with(path, config_json, PluginLimits::default(), Isolation::Reuse).await
    }

    pub async fn load_with(
        path: impl AsRef<Path>,
        config_json: &str,
        limits: PluginLimits,
        isolation: Isolation,
    ) -> Result<TestPlugin, String> {
        let engine = engine()?;
        let pre = engine.prepare(path.as_ref())?;
        let kv = Arc::new(MemoryKv::default());
        let metrics = Arc::new(RecordedMetrics::default());
        let meta = Arc::new(PluginMeta {
            name: Arc::from("test"),
            limits,
            kv: kv.clone(),
            metrics: metrics.clone(),
        });
        let pool = InstancePool::new(
            engine,
            pre,
            meta,
            config_json.to_string(),
            Arc::new(NoOutbound),
            isolation,
        )
        .await
        .map_err(|e: PluginError| e.to_string())?;
        Ok(TestPlugin { pool, kv, metrics })
    }

    pub async fn on_request(&self, req: TestRequest) -> RequestRun {
        self.try_on_request(req)
            .await
            .unwrap_or_else(|e| panic!("plugin failed: {e}"))
    }

    /// Like [`on_request`](Self::on_request), returning a failure instead of panicking.
    pub async fn try_on_request(&self, req: TestRequest) -> Result<RequestRun, PluginError> {
        self.request_phase(req, None).await
    }

    /// The request-body phase with this body (whether or not the plugin
    /// declared it: see [`phases`](Self::phases)).
    pub async fn on_request_body(
        &self,
        req: TestRequest,
        body: &[u8],
    ) -> Result<RequestRun, PluginError> {
        self.request_phase(req, Some(body)).await
    }

    async fn request_phase(
        &self,
        req: TestRequest,
        body: Option<&[u8]>,
    ) -> Result<RequestRun, PluginError> {
        let mut request = Box::new(req.0);
        let result = self.pool.call(&mut request, "test", body).await;
        let (reply, body) = split(result?);
        Ok(RequestRun {
            request: *request,
            reply,
            body,
        })
    }

    pub async fn on_response(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        context: &[(&str, &str)],
    ) -> Result<ResponseRun, PluginError> {
        self.response_phase(test_response(status, headers, context), None)
            .await
    }

    /// The response-body phase with this status, headers and body.
    pub async fn on_response_body(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<ResponseRun, PluginError> {
        self.response_phase(test_response(status, headers, &[]), Some(body))
            .await
    }

    async fn response_phase(
        &self,
        mut response: PluginResponse,
        body: Option<&[u8]>,
    ) -> Result<ResponseRun, PluginError> {
        let result = self.pool.call(&mut response, "test", body).await;
        let (reply, body) = split(result?);
        Ok(ResponseRun {
            response,
            reply,
            body,
        })
    }

    /// The phases the plugin declared in `configure`. The harness calls
    /// whichever phase a test asks for, declared or not.
    pub fn phases(&self) -> Phases {
        self.pool.phases
    }

    /// Whether the gateway calls this plugin directly on the worker thread
    /// (the fast path) rather than on a fiber: true unless the plugin
    /// imports an async host function (`http-call`).
    pub fn called_directly(&self) -> bool {
        self.pool.blocking
    }

    /// The instance pool behind the harness, to put the plugin in a
    /// [`Chain`](super::Chain) as the gateway does (the `plugin_call`
    /// benchmark does).
    pub fn pool(&self) -> &Arc<InstancePool> {
        &self.pool
    }

    /// The plugin's key-value store.
    pub fn kv(&self) -> &dyn Kv {
        &*self.kv
    }
}
