//! `header-transform`: removes, then sets, request headers before the
//! upstream and response headers before the client.
//!
//! Config (every part optional):
//! `{ "request":  { "set": { "x-a": "1" }, "remove": ["x-b"] },
//!    "response": { "set": { "x-c": "2" }, "remove": ["server"] } }`.

use serde::Deserialize;
use std::collections::BTreeMap;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Rules {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
}

impl Rules {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    fn check(&self, part: &str) -> Result<(), String> {
        let names = self.set.keys().chain(&self.remove);
        for name in names {
            header::check_name(name).map_err(|e| format!("{part}: {e}"))?;
        }
        for value in self.set.values() {
            header::check_value(value.as_bytes()).map_err(|e| format!("{part}: {e}"))?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Rules,
    #[serde(default)]
    response: Rules,
}

struct HeaderTransform(Config);

impl Plugin for HeaderTransform {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        config.request.check("request")?;
        config.response.check("response")?;
        Ok(HeaderTransform(config))
    }

    fn phases(&self) -> Phases {
        let mut phases = Phases::empty();
        if !self.0.request.is_empty() {
            phases |= Phases::REQUEST_HEADERS;
        }
        if !self.0.response.is_empty() {
            phases |= Phases::RESPONSE_HEADERS;
        }
        phases
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let rules = &self.0.request;
        rules.remove.iter().for_each(|name| req.remove_header(name));
        for (name, value) in &rules.set {
            req.set_header_str(name, value).log_err(name);
        }
        Action::Continue
    }

    fn on_response(&mut self, resp: &ResponseHead) -> Action {
        let rules = &self.0.response;
        rules
            .remove
            .iter()
            .for_each(|name| resp.remove_header(name));
        for (name, value) in &rules.set {
            resp.set_header_str(name, value).log_err(name);
        }
        Action::Continue
    }
}

export_plugin!(HeaderTransform);
