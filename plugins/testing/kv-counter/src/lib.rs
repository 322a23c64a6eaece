//! `kv-counter` (test plugin): the request phase adds 1 to the KV counter
//! `key` (no TTL) and puts the new value into context `hits`; the response
//! phase sets response header `x-hits: <n>` from it.
//!
//! Config: `{ "key": "hits" }` (default `hits`).

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_key")]
    key: String,
}

fn default_key() -> String {
    "hits".into()
}

struct KvCounter(Config);

impl Plugin for KvCounter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(KvCounter(config))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let hits = kv::incr(&self.0.key, 1, None);
        req.context_set("hits", &hits.to_string());
        Action::Continue
    }

    fn on_response(&mut self, resp: &ResponseHead) -> Action {
        if let Some(hits) = resp.context_get("hits") {
            resp.set_header_str("x-hits", &hits).log_err("x-hits");
        }
        Action::Continue
    }
}

export_plugin!(KvCounter);
