//! `http-caller` (test plugin): in the request phase calls `upstream` through
//! the host's `http-call`, sets request header `x-call-status` to the status
//! (or `error:<message>`), and continues.
//!
//! Config: `{ "upstream": "side", "path": "/ping", "method": "GET", "timeout_ms": 1000 }`
//! (`path` defaults to `/`, `method` to `GET`, `timeout_ms` to 1000).

use serde::Deserialize;
use std::time::Duration;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    upstream: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_path() -> String {
    "/".into()
}

fn default_method() -> String {
    "GET".into()
}

fn default_timeout_ms() -> u64 {
    1000
}

struct HttpCaller(Config);

impl Plugin for HttpCaller {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(HttpCaller(config))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let c = &self.0;
        let timeout = Duration::from_millis(c.timeout_ms);
        let status = match http::call(&c.upstream, &c.method, &c.path, &[], &[], timeout) {
            Ok(resp) => resp.status.to_string(),
            // Keep the header value valid whatever the message holds.
            Err(e) => format!("error:{}", e.replace(|c: char| c.is_control(), " ")),
        };
        req.set_header_str("x-call-status", &status)
            .log_err("x-call-status");
        Action::Continue
    }
}

export_plugin!(HttpCaller);
