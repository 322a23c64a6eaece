//! `rate-limit`: fixed-window rate limiting in the host's KV store, shared by
//! all instances. Requests are grouped by the request-context entry `key`
//! (e.g. `consumer`, set by `key-auth`), or by client IP when the entry is
//! missing or `key` is not given. Each group gets `limit` requests per
//! `window_ms`; the next ones are answered 429 with `retry-after`. Allowed
//! responses get `x-ratelimit-remaining`.
//!
//! Config: `{ "limit": 10, "window_ms": 60000, "key": "consumer" }`.

use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmgate_plugin::prelude::*;

/// Carries the remaining count from the request phase to the response phase.
const REMAINING: &str = "ratelimit.remaining";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    limit: u64,
    window_ms: u64,
    #[serde(default)]
    key: Option<String>,
}

struct RateLimit(Config);

impl Plugin for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.window_ms == 0 {
            return Err("window_ms must be at least 1".into());
        }
        Ok(RateLimit(config))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let Config {
            limit,
            window_ms,
            ref key,
        } = self.0;
        let group = key
            .as_deref()
            .and_then(|k| req.context_get(k))
            .unwrap_or_else(|| req.client_ip());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let window = now / window_ms;
        let ttl = Some(Duration::from_millis(window_ms));
        let count = kv::incr(&format!("rl:{group}:{window}"), 1, ttl).max(0) as u64;
        if count > limit {
            let retry_after = ((window + 1) * window_ms - now).div_ceil(1000).max(1);
            metrics::counter_inc("limited");
            return Response::new(429)
                .header("retry-after", retry_after.to_string())
                .header("x-ratelimit-remaining", "0")
                .text("rate limit exceeded")
                .into();
        }
        req.context_set(REMAINING, &(limit - count).to_string());
        Action::Continue
    }

    fn on_response(&mut self, resp: &ResponseHead) -> Action {
        if let Some(remaining) = resp.context_get(REMAINING) {
            resp.set_header_str("x-ratelimit-remaining", &remaining)
                .log_err("x-ratelimit-remaining");
        }
        Action::Continue
    }
}

export_plugin!(RateLimit);
