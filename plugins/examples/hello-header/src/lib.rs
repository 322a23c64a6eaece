//! `hello-header`: sets request header `x-hello: <greeting>` and context
//! `greeting=<greeting>`, and response header `x-hello-plugin: <greeting>`.
//!
//! Config: `{ "greeting": "hi" }`.

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    greeting: String,
}

struct HelloHeader {
    greeting: String,
}

impl Plugin for HelloHeader {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        header::check_value(config.greeting.as_bytes()).map_err(|e| format!("greeting: {e}"))?;
        Ok(HelloHeader {
            greeting: config.greeting,
        })
    }

    fn on_request(&mut self, req: &Request) -> Action {
        req.set_header_str("x-hello", &self.greeting)
            .log_err("x-hello");
        req.context_set("greeting", &self.greeting);
        Action::Continue
    }

    fn on_response(&mut self, resp: &ResponseHead) -> Action {
        resp.set_header_str("x-hello-plugin", &self.greeting)
            .log_err("x-hello-plugin");
        Action::Continue
    }
}

export_plugin!(HelloHeader);
