//! proxy-wasm twin of wasmgate's `rate-limit` plugin: fixed-window counting in
//! the proxy's shared data (one counter per group and window, updated with
//! compare-and-swap, shared by every worker's VM). Requests are grouped by the
//! property `key` (e.g. `consumer`, set by `key-auth`), or by client IP when it
//! is missing or `key` is not given. Each group gets `limit` requests per
//! `window_ms`; the next ones are answered 429 with `retry-after`. Allowed
//! responses get `x-ratelimit-remaining`.
//!
//! Plugin configuration (same JSON as wasmgate's plugin):
//! `{ "limit": 10, "window_ms": 60000, "key": "consumer" }`.
//!
//! Unlike wasmgate's KV store, proxy-wasm shared data has no TTL: a counter of
//! a past window stays (a few bytes per group and window).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use serde::Deserialize;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    limit: u64,
    window_ms: u64,
    #[serde(default)]
    key: Option<String>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(RateLimitRoot { config: None, limited: 0 })
    });
}}

struct RateLimitRoot {
    config: Option<Rc<Config>>,
    limited: u32,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) if config.window_ms == 0 => {
                log::error!("rate-limit: window_ms must be at least 1");
                false
            }
            Ok(config) => {
                self.config = Some(Rc::new(config));
                self.limited =
                    proxy_wasm::hostcalls::define_metric(MetricType::Counter, "rate_limit.limited")
                        .unwrap_or(0);
                true
            }
            Err(e) => {
                log::error!("rate-limit: bad configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(RateLimit {
            config,
            limited: self.limited,
            remaining: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimit {
    config: Rc<Config>,
    limited: u32,
    /// Carried from the request phase to the response phase.
    remaining: Option<u64>,
}

impl RateLimit {
    fn group(&self) -> String {
        if let Some(v) = self
            .config
            .key
            .as_deref()
            .and_then(|k| self.get_property(vec![k]))
        {
            return String::from_utf8_lossy(&v).into_owned();
        }
        // "ip:port" (or "[v6]:port"): keep the IP, like wasmgate's client_ip().
        let addr = self
            .get_property(vec!["source", "address"])
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        match addr.rsplit_once(':') {
            Some((ip, _port)) => ip.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => addr,
        }
    }

    /// Adds `delta` to the counter under `key`; returns the new value.
    fn incr(&self, key: &str, delta: u64) -> u64 {
        loop {
            let (value, cas) = self.get_shared_data(key);
            let current = value
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_le_bytes);
            let next = current.saturating_add(delta);
            match self.set_shared_data(key, Some(&next.to_le_bytes()), cas) {
                Ok(()) => return next,
                Err(Status::CasMismatch) => continue,
                Err(_) => return next,
            }
        }
    }
}

impl Context for RateLimit {}

impl HttpContext for RateLimit {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let Config {
            limit, window_ms, ..
        } = *self.config;
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let window = now / window_ms;
        let group = self.group();
        let count = self.incr(&format!("rl:{group}:{window}"), 1);
        if count > limit {
            let retry_after = ((window + 1) * window_ms - now).div_ceil(1000).max(1);
            if self.limited != 0 {
                let _ = proxy_wasm::hostcalls::increment_metric(self.limited, 1);
            }
            self.send_http_response(
                429,
                vec![
                    ("retry-after", &retry_after.to_string()),
                    ("x-ratelimit-remaining", "0"),
                    ("content-type", "text/plain; charset=utf-8"),
                ],
                Some(b"rate limit exceeded"),
            );
            return Action::Pause;
        }
        self.remaining = Some(limit - count);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        if let Some(remaining) = self.remaining {
            self.set_http_response_header("x-ratelimit-remaining", Some(&remaining.to_string()));
        }
        Action::Continue
    }
}
