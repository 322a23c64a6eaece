//! proxy-wasm twin of wasmgate's `key-auth` plugin: a request whose `header`
//! holds one of the configured keys gets the filter-state property
//! `consumer=<name>` (Envoy stores it as `wasm.consumer`; the next filters read
//! it with `get_property(["consumer"])`) and goes on without the key header;
//! any other request is answered 401 with `{"error":"unauthorized"}`.
//!
//! Plugin configuration (same JSON as wasmgate's plugin):
//! `{ "header": "x-api-key", "keys": { "secret1": "alice" } }`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: BTreeMap<String, String>,
}

fn default_header() -> String {
    "x-api-key".into()
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(KeyAuthRoot { config: None, unauthorized: 0 })
    });
}}

struct KeyAuthRoot {
    config: Option<Rc<Config>>,
    unauthorized: u32,
}

impl Context for KeyAuthRoot {}

impl RootContext for KeyAuthRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&raw) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                self.unauthorized = proxy_wasm::hostcalls::define_metric(
                    MetricType::Counter,
                    "key_auth.unauthorized",
                )
                .unwrap_or(0);
                true
            }
            Err(e) => {
                log::error!("key-auth: bad configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(KeyAuth {
            config,
            unauthorized: self.unauthorized,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct KeyAuth {
    config: Rc<Config>,
    unauthorized: u32,
}

impl Context for KeyAuth {}

impl HttpContext for KeyAuth {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let header = &self.config.header;
        let consumer = self
            .get_http_request_header(header)
            .and_then(|key| self.config.keys.get(&key));
        match consumer {
            Some(name) => {
                self.set_property(vec!["consumer"], Some(name.as_bytes()));
                self.set_http_request_header(header, None);
                Action::Continue
            }
            None => {
                if self.unauthorized != 0 {
                    let _ = proxy_wasm::hostcalls::increment_metric(self.unauthorized, 1);
                }
                self.send_http_response(
                    401,
                    vec![("content-type", "application/json")],
                    Some(br#"{"error":"unauthorized"}"#),
                );
                Action::Pause
            }
        }
    }
}
