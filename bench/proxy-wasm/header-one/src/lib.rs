//! proxy-wasm twin of wasmgate's `header-one` test plugin (the `-1p` peers):
//! in the request phase reads one request header and sets another to its
//! value (or `none`); a typical small filter's boundary cost.
//!
//! Plugin configuration (same JSON as wasmgate's plugin; these are the
//! defaults): `{ "read": "x-bench-in", "write": "x-bench-out" }`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::rc::Rc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_read")]
    read: String,
    #[serde(default = "default_write")]
    write: String,
}

fn default_read() -> String {
    "x-bench-in".into()
}

fn default_write() -> String {
    "x-bench-out".into()
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(HeaderOneRoot { config: None })
    });
}}

struct HeaderOneRoot {
    config: Option<Rc<Config>>,
}

impl Context for HeaderOneRoot {}

impl RootContext for HeaderOneRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        // An empty configuration means all defaults.
        let raw = self
            .get_plugin_configuration()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| b"{}".to_vec());
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log::error!("header-one: bad configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(HeaderOne { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HeaderOne {
    config: Rc<Config>,
}

impl Context for HeaderOne {}

impl HttpContext for HeaderOne {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let value = self.get_http_request_header_bytes(&self.config.read);
        self.set_http_request_header_bytes(
            &self.config.write,
            Some(value.as_deref().unwrap_or(b"none")),
        );
        Action::Continue
    }
}
