//! What a plugin instance's store holds, and the host side of every WIT
//! import: the request and response heads, logging, KV, metrics and
//! outbound HTTP.

use super::bindings::wasmgate::plugin::{host, request, response, types};
use super::{Outbound, PluginMeta, PluginRequest, PluginResponse};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Which head the call in progress was lent, if any: the WIT `request` and
/// `response` functions act on it, and trap in any other phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lending {
    None,
    Request,
    Response,
}

/// A response a plugin made to answer with (the WIT `reply` resource), as
/// it gave it: checked when a phase returns it.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The most replies a plugin may hold at once (it returns one per phase at
/// most; one that keeps making them without dropping them fails with kind
/// `output` instead of growing the table).
const MAX_LIVE_REPLIES: u32 = 8;

pub struct PluginState {
    /// The request head during a request phase (swapped in for the call and
    /// back out after it; a placeholder in between). Boxed, as the gateway
    /// holds it, so that lending it swaps two pointers.
    pub request: Box<PluginRequest>,
    /// The response head during a response phase, likewise.
    pub response: PluginResponse,
    pub lending: Lending,
    /// Replies made and not yet returned or dropped.
    pub live_replies: u32,
    /// WASI's resources (the guest's standard library may open streams)
    /// and the replies the plugin made.
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub limits: StoreLimits,
    pub meta: Arc<PluginMeta>,
    pub outbound: Arc<dyn Outbound>,
    /// The request being served, for log lines.
    pub request_id: String,
    /// Set when the plugin tried to hand the host more than its output cap.
    pub output_exceeded: bool,
    /// When the current call started, and how much of it was spent waiting
    /// for outbound calls: that time does not count against `cpu_limit`.
    pub call_started: Instant,
    pub waited: Duration,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

type R<T> = wasmtime::Result<T>;

impl PluginState {
    /// The request head of the call in progress.
    fn req(&mut self) -> R<&mut PluginRequest> {
        match self.lending {
            Lending::Request => Ok(&mut self.request),
            _ => Err(outside("request", "on-request and on-request-body")),
        }
    }

    /// The response head of the call in progress.
    fn resp(&mut self) -> R<&mut PluginResponse> {
        match self.lending {
            Lending::Response => Ok(&mut self.response),
            _ => Err(outside("response", "on-response and on-response-body")),
        }
    }

    /// Refuses values over the plugin's output cap.
    fn admit(&mut self, len: usize) -> Result<(), String> {
        if len > self.meta.limits.max_output_bytes {
            self.output_exceeded = true;
            return Err(format!(
                "value of {len} bytes exceeds the plugin's output limit"
            ));
        }
        Ok(())
    }
}

fn header_one(h: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    h.get(name).map(|v| v.as_bytes().to_vec())
}

fn header_all(h: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    h.get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn header_list(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// A header from a plugin. The value keeps the buffer it was lifted into
/// (no second copy).
pub(super) fn header_pair(name: &str, value: Vec<u8>) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name `{name}`"))?;
    let v = HeaderValue::from_maybe_shared(Bytes::from(value))
        .map_err(|_| format!("invalid value for header `{name}`"))?;
    Ok((n, v))
}

fn set_header(h: &mut HeaderMap, name: &str, value: Vec<u8>, append: bool) -> Result<(), String> {
    let (n, v) = header_pair(name, value)?;
    if append {
        h.append(n, v);
    } else {
        h.insert(n, v);
    }
    Ok(())
}

/// A plugin called a function of the `request` or `response` interface in a
/// phase without that head (a plugin bug): the call traps, of kind `phase`.
#[derive(Debug, thiserror::Error)]
#[error("`{interface}` functions can only be called during {phases}")]
pub struct OutsidePhase {
    interface: &'static str,
    phases: &'static str,
}

#[cold]
fn outside(interface: &'static str, phases: &'static str) -> wasmtime::Error {
    wasmtime::Error::new(OutsidePhase { interface, phases })
}

/// The header and context calls, once for both heads: `which` is the
/// interface called (`Lending::Request` or `Lending::Response`).
impl PluginState {
    fn head(&mut self, which: Lending) -> R<(&mut HeaderMap, &mut super::Context)> {
        if which == Lending::Request {
            let r = self.req()?;
            Ok((&mut r.headers, &mut r.context))
        } else {
            let r = self.resp()?;
            Ok((&mut r.headers, &mut r.context))
        }
    }
    fn get_one(&mut self, which: Lending, name: &str) -> R<Option<Vec<u8>>> {
        Ok(header_one(self.head(which)?.0, name))
    }
    fn get_all(&mut self, which: Lending, name: &str) -> R<Vec<Vec<u8>>> {
        Ok(header_all(self.head(which)?.0, name))
    }
    fn get_list(&mut self, which: Lending) -> R<Vec<(String, Vec<u8>)>> {
        Ok(header_list(self.head(which)?.0))
    }
    fn put(
        &mut self,
        which: Lending,
        name: &str,
        value: Vec<u8>,
        append: bool,
    ) -> R<Result<(), String>> {
        self.head(which)?;
        if let Err(e) = self.admit(value.len()) {
            return Ok(Err(e));
        }
        Ok(set_header(self.head(which)?.0, name, value, append))
    }
    fn remove(&mut self, which: Lending, name: &str) -> R<()> {
        self.head(which)?.0.remove(name);
        Ok(())
    }
    fn ctx_get(&mut self, which: Lending, key: &str) -> R<Option<String>> {
        Ok(self.head(which)?.1.get(key).cloned())
    }
    fn ctx_set(&mut self, which: Lending, key: String, value: String) -> R<()> {
        self.head(which)?;
        if self.admit(key.len() + value.len()).is_ok() {
            self.head(which)?.1.insert(key, value);
        }
        Ok(())
    }
}

impl types::Host for PluginState {}

impl types::HostReply for PluginState {
    fn new(
        &mut self,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    ) -> R<Resource<Reply>> {
        let size = body.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if self.admit(size).is_err() || self.live_replies >= MAX_LIVE_REPLIES {
            self.output_exceeded = true;
            return Err(wasmtime::format_err!(
                "reply refused: larger than the plugin's output limit, or too many held"
            ));
        }
        self.live_replies += 1;
        Ok(self.table.push(Reply {
            status,
            headers,
            body,
        })?)
    }
    fn drop(&mut self, r: Resource<Reply>) -> R<()> {
        self.take_reply(r)?;
        Ok(())
    }
}

impl PluginState {
    /// Takes a reply out of the table: returned by a phase, or dropped.
    pub(super) fn take_reply(&mut self, r: Resource<Reply>) -> R<Reply> {
        let reply = self.table.delete(r)?;
        self.live_replies -= 1;
        Ok(reply)
    }
}

impl request::Host for PluginState {
    fn method(&mut self) -> R<String> {
        Ok(self.req()?.method.to_string())
    }
    fn scheme(&mut self) -> R<String> {
        Ok(self.req()?.scheme.to_string())
    }
    fn authority(&mut self) -> R<String> {
        Ok(self.req()?.authority.clone())
    }
    fn path(&mut self) -> R<String> {
        let pq = &self.req()?.path_and_query;
        Ok(pq
            .split_once('?')
            .map_or(pq.as_str(), |(p, _)| p)
            .to_string())
    }
    fn query(&mut self) -> R<Option<String>> {
        Ok(self
            .req()?
            .path_and_query
            .split_once('?')
            .map(|(_, q)| q.to_string()))
    }
    fn client_addr(&mut self) -> R<String> {
        Ok(self.req()?.client.to_string())
    }
    fn route(&mut self) -> R<String> {
        Ok(self.req()?.route.to_string())
    }
    fn header(&mut self, name: String) -> R<Option<Vec<u8>>> {
        self.get_one(Lending::Request, &name)
    }
    fn header_all(&mut self, name: String) -> R<Vec<Vec<u8>>> {
        self.get_all(Lending::Request, &name)
    }
    fn headers(&mut self) -> R<Vec<(String, Vec<u8>)>> {
        self.get_list(Lending::Request)
    }
    fn set_header(&mut self, name: String, value: Vec<u8>) -> R<Result<(), String>> {
        self.put(Lending::Request, &name, value, false)
    }
    fn append_header(&mut self, name: String, value: Vec<u8>) -> R<Result<(), String>> {
        self.put(Lending::Request, &name, value, true)
    }
    fn remove_header(&mut self, name: String) -> R<()> {
        self.remove(Lending::Request, &name)
    }
    fn set_path(&mut self, pq: String) -> R<Result<(), String>> {
        let req = self.req()?;
        if !pq.starts_with('/') || pq.parse::<http::uri::PathAndQuery>().is_err() {
            return Ok(Err(format!("invalid path `{pq}`")));
        }
        req.path_and_query = pq;
        req.path_changed = true;
        Ok(Ok(()))
    }
    fn set_authority(&mut self, authority: String) -> R<Result<(), String>> {
        let req = self.req()?;
        if authority.parse::<http::uri::Authority>().is_err() {
            return Ok(Err(format!("invalid authority `{authority}`")));
        }
        req.authority_override = Some(authority);
        Ok(Ok(()))
    }
    fn set_upstream(&mut self, name: String) -> R<Result<(), String>> {
        self.req()?;
        if !self.outbound.has_upstream(&name) {
            return Ok(Err(format!(
                "no upstream named `{name}` in the gateway config"
            )));
        }
        self.req()?.upstream = Some(name);
        Ok(Ok(()))
    }
    fn context_get(&mut self, key: String) -> R<Option<String>> {
        self.ctx_get(Lending::Request, &key)
    }
    fn context_set(&mut self, key: String, value: String) -> R<()> {
        self.ctx_set(Lending::Request, key, value)
    }
}

impl response::Host for PluginState {
    fn status(&mut self) -> R<u16> {
        Ok(self.resp()?.status.as_u16())
    }
    fn set_status(&mut self, status: u16) -> R<Result<(), String>> {
        let resp = self.resp()?;
        match StatusCode::from_u16(status) {
            Ok(s) if s.as_u16() >= 200 => {
                resp.status = s;
                Ok(Ok(()))
            }
            _ => Ok(Err(format!("invalid status {status}"))),
        }
    }
    fn header(&mut self, name: String) -> R<Option<Vec<u8>>> {
        self.get_one(Lending::Response, &name)
    }
    fn header_all(&mut self, name: String) -> R<Vec<Vec<u8>>> {
        self.get_all(Lending::Response, &name)
    }
    fn headers(&mut self) -> R<Vec<(String, Vec<u8>)>> {
        self.get_list(Lending::Response)
    }
    fn set_header(&mut self, name: String, value: Vec<u8>) -> R<Result<(), String>> {
        self.put(Lending::Response, &name, value, false)
    }
    fn append_header(&mut self, name: String, value: Vec<u8>) -> R<Result<(), String>> {
        self.put(Lending::Response, &name, value, true)
    }
    fn remove_header(&mut self, name: String) -> R<()> {
        self.remove(Lending::Response, &name)
    }
    fn context_get(&mut self, key: String) -> R<Option<String>> {
        self.ctx_get(Lending::Response, &key)
    }
    fn context_set(&mut self, key: String, value: String) -> R<()> {
        self.ctx_set(Lending::Response, key, value)
    }
}

impl host::Host for PluginState {
    fn log(&mut self, level: host::LogLevel, message: String) -> R<()> {
        let message: String = message
            .chars()
            .take(self.meta.limits.max_output_bytes.min(8192))
            .collect();
        let (plugin, request_id) = (&*self.meta.name, &self.request_id);
        match level {
            host::LogLevel::Trace => {
                tracing::trace!(target: "wasmgate::plugin", plugin, request_id, "{message}")
            }
            host::LogLevel::Debug => {
                tracing::debug!(target: "wasmgate::plugin", plugin, request_id, "{message}")
            }
            host::LogLevel::Info => {
                tracing::info!(target: "wasmgate::plugin", plugin, request_id, "{message}")
            }
            host::LogLevel::Warn => {
                tracing::warn!(target: "wasmgate::plugin", plugin, request_id, "{message}")
            }
            host::LogLevel::Error => {
                tracing::error!(target: "wasmgate::plugin", plugin, request_id, "{message}")
            }
        }
        Ok(())
    }
    fn kv_get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        Ok(self.meta.kv.get(&key))
    }
    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> R<()> {
        if self.admit(key.len() + value.len()).is_ok() {
            self.meta
                .kv
                .set(&key, value, ttl_ms.map(Duration::from_millis));
        }
        Ok(())
    }
    fn kv_delete(&mut self, key: String) -> R<()> {
        self.meta.kv.delete(&key);
        Ok(())
    }
    fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> R<i64> {
        Ok(self
            .meta
            .kv
            .incr(&key, delta, ttl_ms.map(Duration::from_millis)))
    }
    fn counter_add(&mut self, name: String, value: u64) -> R<()> {
        self.meta
            .metrics
            .guest_counter(&self.meta.name, &name, value);
        Ok(())
    }
    fn histogram_observe(&mut self, name: String, value: f64) -> R<()> {
        self.meta
            .metrics
            .guest_histogram(&self.meta.name, &name, value);
        Ok(())
    }
    async fn http_call(
        &mut self,
        upstream: String,
        method: String,
        path: String,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> R<Result<host::HttpResponse, String>> {
        let timeout = Duration::from_millis(u64::from(timeout_ms.clamp(1, 60_000)));
        let waiting = Instant::now();
        let result = self
            .outbound
            .call(&upstream, &method, &path, headers, body, timeout)
            .await;
        self.waited += waiting.elapsed();
        Ok(result.map(|r| host::HttpResponse {
            status: r.0,
            headers: r.1,
            body: r.2,
        }))
    }
}
