//! `key-auth`: API-key authentication. A request whose `header` holds one of
//! the configured keys gets context `consumer=<name>` and goes on without the
//! key header; any other request is answered 401 with
//! `{"error":"unauthorized"}`.
//!
//! Config: `{ "header": "x-api-key", "keys": { "secret1": "alice" } }`
//! (`header` defaults to `x-api-key`).

use serde::Deserialize;
use std::collections::BTreeMap;
use wasmgate_plugin::prelude::*;

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

struct KeyAuth(Config);

impl Plugin for KeyAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        header::check_name(&config.header)?;
        Ok(KeyAuth(config))
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let consumer = req
            .header_str(&self.0.header)
            .and_then(|key| self.0.keys.get(&key));
        match consumer {
            Some(name) => {
                req.context_set("consumer", name);
                req.remove_header(&self.0.header);
                Action::Continue
            }
            None => {
                metrics::counter_inc("unauthorized");
                Response::new(401)
                    .content_type("application/json")
                    .body(r#"{"error":"unauthorized"}"#)
                    .into()
            }
        }
    }
}

export_plugin!(KeyAuth);
