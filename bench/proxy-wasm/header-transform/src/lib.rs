//! proxy-wasm twin of wasmgate's `header-transform` plugin: removes, then sets,
//! request headers before the upstream and response headers before the client.
//!
//! Plugin configuration (same JSON as wasmgate's plugin, every part optional):
//! `{ "request":  { "set": { "x-a": "1" }, "remove": ["x-b"] },
//!    "response": { "set": { "x-c": "2" }, "remove": ["server"] } }`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Rules {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Rules,
    #[serde(default)]
    response: Rules,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(HeaderTransformRoot { config: None })
    });
}}

struct HeaderTransformRoot {
    config: Option<Rc<Config>>,
}

impl Context for HeaderTransformRoot {}

impl RootContext for HeaderTransformRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                log::error!("header-transform: bad configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(HeaderTransform { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HeaderTransform {
    config: Rc<Config>,
}

impl Context for HeaderTransform {}

impl HttpContext for HeaderTransform {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let rules = &self.config.request;
        for name in &rules.remove {
            self.set_http_request_header(name, None);
        }
        for (name, value) in &rules.set {
            self.set_http_request_header(name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let rules = &self.config.response;
        for name in &rules.remove {
            self.set_http_response_header(name, None);
        }
        for (name, value) in &rules.set {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }
}
