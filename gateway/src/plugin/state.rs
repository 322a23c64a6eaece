//! What a plugin instance's store holds, and the host side of every WIT
//! import: the request/response resources, logging, KV, metrics and
//! outbound HTTP.

use super::bindings::wasmgate::plugin::{host, types};
use super::{Outbound, PluginMeta, PluginRequest, PluginResponse};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The request head while a plugin looks at it. Boxed, as the gateway
/// holds it, so that lending it to a call swaps two pointers.
pub struct RequestRes(pub Box<PluginRequest>);
/// The response head while a plugin looks at it.
pub struct ResponseRes(pub PluginResponse);

pub struct PluginState {
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
    fn req(&mut self, r: &Resource<RequestRes>) -> R<&mut PluginRequest> {
        Ok(&mut *self.table.get_mut(r)?.0)
    }

    fn resp(&mut self, r: &Resource<ResponseRes>) -> R<&mut PluginResponse> {
        Ok(&mut self.table.get_mut(r)?.0)
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

/// What the request and response resources share: headers and the context.
trait Head: Sized + Send + 'static {
    fn parts(&mut self) -> (&mut HeaderMap, &mut super::Context);
}

impl Head for RequestRes {
    fn parts(&mut self) -> (&mut HeaderMap, &mut super::Context) {
        (&mut self.0.headers, &mut self.0.context)
    }
}

impl Head for ResponseRes {
    fn parts(&mut self) -> (&mut HeaderMap, &mut super::Context) {
        (&mut self.0.headers, &mut self.0.context)
    }
}

/// The header and context calls, once for both resources.
impl PluginState {
    fn head<T: Head>(&mut self, r: &Resource<T>) -> R<(&mut HeaderMap, &mut super::Context)> {
        Ok(self.table.get_mut(r)?.parts())
    }
    fn get_one<T: Head>(&mut self, r: &Resource<T>, name: &str) -> R<Option<Vec<u8>>> {
        Ok(header_one(self.head(r)?.0, name))
    }
    fn get_all<T: Head>(&mut self, r: &Resource<T>, name: &str) -> R<Vec<Vec<u8>>> {
        Ok(header_all(self.head(r)?.0, name))
    }
    fn get_list<T: Head>(&mut self, r: &Resource<T>) -> R<Vec<(String, Vec<u8>)>> {
        Ok(header_list(self.head(r)?.0))
    }
    fn put<T: Head>(
        &mut self,
        r: &Resource<T>,
        name: &str,
        value: Vec<u8>,
        append: bool,
    ) -> R<Result<(), String>> {
        if let Err(e) = self.admit(value.len()) {
            return Ok(Err(e));
        }
        Ok(set_header(self.head(r)?.0, name, value, append))
    }
    fn remove<T: Head>(&mut self, r: &Resource<T>, name: &str) -> R<()> {
        self.head(r)?.0.remove(name);
        Ok(())
    }
    fn ctx_get<T: Head>(&mut self, r: &Resource<T>, key: &str) -> R<Option<String>> {
        Ok(self.head(r)?.1.get(key).cloned())
    }
    fn ctx_set<T: Head>(&mut self, r: &Resource<T>, key: String, value: String) -> R<()> {
        if self.admit(key.len() + value.len()).is_ok() {
            self.head(r)?.1.insert(key, value);
        }
        Ok(())
    }
}

impl types::Host for PluginState {}

impl types::HostRequest for PluginState {
    fn method(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.req(&r)?.method.to_string())
    }
    fn scheme(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.req(&r)?.scheme.to_string())
    }
    fn authority(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.req(&r)?.authority.clone())
    }
    fn path(&mut self, r: Resource<RequestRes>) -> R<String> {
        let pq = &self.req(&r)?.path_and_query;
        Ok(pq
            .split_once('?')
            .map_or(pq.as_str(), |(p, _)| p)
            .to_string())
    }
    fn query(&mut self, r: Resource<RequestRes>) -> R<Option<String>> {
        Ok(self
            .req(&r)?
            .path_and_query
            .split_once('?')
            .map(|(_, q)| q.to_string()))
    }
    fn client_addr(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.req(&r)?.client.to_string())
    }
    fn route(&mut self, r: Resource<RequestRes>) -> R<String> {
        Ok(self.req(&r)?.route.to_string())
    }
    fn header(&mut self, r: Resource<RequestRes>, name: String) -> R<Option<Vec<u8>>> {
        self.get_one(&r, &name)
    }
    fn header_all(&mut self, r: Resource<RequestRes>, name: String) -> R<Vec<Vec<u8>>> {
        self.get_all(&r, &name)
    }
    fn headers(&mut self, r: Resource<RequestRes>) -> R<Vec<(String, Vec<u8>)>> {
        self.get_list(&r)
    }
    fn set_header(
        &mut self,
        r: Resource<RequestRes>,
        name: String,
        value: Vec<u8>,
    ) -> R<Result<(), String>> {
        self.put(&r, &name, value, false)
    }
    fn append_header(
        &mut self,
        r: Resource<RequestRes>,
        name: String,
        value: Vec<u8>,
    ) -> R<Result<(), String>> {
        self.put(&r, &name, value, true)
    }
    fn remove_header(&mut self, r: Resource<RequestRes>, name: String) -> R<()> {
        self.remove(&r, &name)
    }
    fn set_path(&mut self, r: Resource<RequestRes>, pq: String) -> R<Result<(), String>> {
        if !pq.starts_with('/') || pq.parse::<http::uri::PathAndQuery>().is_err() {
            return Ok(Err(format!("invalid path `{pq}`")));
        }
        let req = self.req(&r)?;
        req.path_and_query = pq;
        req.path_changed = true;
        Ok(Ok(()))
    }
    fn set_authority(
        &mut self,
        r: Resource<RequestRes>,
        authority: String,
    ) -> R<Result<(), String>> {
        if authority.parse::<http::uri::Authority>().is_err() {
            return Ok(Err(format!("invalid authority `{authority}`")));
        }
        self.req(&r)?.authority_override = Some(authority);
        Ok(Ok(()))
    }
    fn set_upstream(&mut self, r: Resource<RequestRes>, name: String) -> R<Result<(), String>> {
        if !self.outbound.has_upstream(&name) {
            return Ok(Err(format!(
                "no upstream named `{name}` in the gateway config"
            )));
        }
        self.req(&r)?.upstream = Some(name);
        Ok(Ok(()))
    }
    fn context_get(&mut self, r: Resource<RequestRes>, key: String) -> R<Option<String>> {
        self.ctx_get(&r, &key)
    }
    fn context_set(&mut self, r: Resource<RequestRes>, key: String, value: String) -> R<()> {
        self.ctx_set(&r, key, value)
    }
    fn drop(&mut self, r: Resource<RequestRes>) -> R<()> {
        // The host owns the request; the guest only ever borrows it.
        let _ = r;
        Ok(())
    }
}

impl types::HostResponseHead for PluginState {
    fn status(&mut self, r: Resource<ResponseRes>) -> R<u16> {
        Ok(self.resp(&r)?.status.as_u16())
    }
    fn set_status(&mut self, r: Resource<ResponseRes>, status: u16) -> R<Result<(), String>> {
        match StatusCode::from_u16(status) {
            Ok(s) if s.as_u16() >= 200 => {
                self.resp(&r)?.status = s;
                Ok(Ok(()))
            }
            _ => Ok(Err(format!("invalid status {status}"))),
        }
    }
    fn header(&mut self, r: Resource<ResponseRes>, name: String) -> R<Option<Vec<u8>>> {
        self.get_one(&r, &name)
    }
    fn header_all(&mut self, r: Resource<ResponseRes>, name: String) -> R<Vec<Vec<u8>>> {
        self.get_all(&r, &name)
    }
    fn headers(&mut self, r: Resource<ResponseRes>) -> R<Vec<(String, Vec<u8>)>> {
        self.get_list(&r)
    }
    fn set_header(
        &mut self,
        r: Resource<ResponseRes>,
        name: String,
        value: Vec<u8>,
    ) -> R<Result<(), String>> {
        self.put(&r, &name, value, false)
    }
    fn append_header(
        &mut self,
        r: Resource<ResponseRes>,
        name: String,
        value: Vec<u8>,
    ) -> R<Result<(), String>> {
        self.put(&r, &name, value, true)
    }
    fn remove_header(&mut self, r: Resource<ResponseRes>, name: String) -> R<()> {
        self.remove(&r, &name)
    }
    fn context_get(&mut self, r: Resource<ResponseRes>, key: String) -> R<Option<String>> {
        self.ctx_get(&r, &key)
    }
    fn context_set(&mut self, r: Resource<ResponseRes>, key: String, value: String) -> R<()> {
        self.ctx_set(&r, key, value)
    }
    fn drop(&mut self, r: Resource<ResponseRes>) -> R<()> {
        let _ = r;
        Ok(())
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
