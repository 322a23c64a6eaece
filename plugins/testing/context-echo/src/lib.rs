//! `context-echo` (test plugin): in the request phase sets the context
//! entries of `set`; in the response phase copies the context entries named
//! in `echo` (those that exist) into response headers `x-ctx-<key>`.
//!
//! Config: `{ "set": { "k": "v" }, "echo": ["consumer", "k"] }` (both
//! optional).

use serde::Deserialize;
use std::collections::BTreeMap;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    echo: Vec<String>,
}

struct ContextEcho {
    set: BTreeMap<String, String>,
    /// (context key, header name)
    echo: Vec<(String, String)>,
}

impl Plugin for ContextEcho {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut echo = Vec::new();
        for key in config.echo {
            let name = format!("x-ctx-{}", key.to_ascii_lowercase());
            header::check_name(&name)?;
            echo.push((key, name));
        }
        Ok(ContextEcho {
            set: config.set,
            echo,
        })
    }

    fn on_request(&mut self, req: &Request) -> Action {
        for (key, value) in &self.set {
            req.context_set(key, value);
        }
        Action::Continue
    }

    fn on_response(&mut self, resp: &ResponseHead) -> Action {
        for (key, name) in &self.echo {
            if let Some(value) = resp.context_get(key) {
                resp.set_header_str(name, &value).log_err(name);
            }
        }
        Action::Continue
    }
}

export_plugin!(ContextEcho);
