//! `header-one` (test plugin): in the request phase reads one request header
//! and sets another to its value (or `none`); measures a typical small
//! filter's boundary cost.
//!
//! Config: `{ "read": "x-bench-in", "write": "x-bench-out" }` (these are the
//! defaults).

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

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

struct HeaderOne(Config);

impl Plugin for HeaderOne {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        header::check_name(&config.read)?;
        header::check_name(&config.write)?;
        Ok(HeaderOne(config))
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let value = req.header(&self.0.read);
        req.set_header(&self.0.write, value.as_deref().unwrap_or(b"none"))
            .log_err(&self.0.write);
        Action::Continue
    }
}

export_plugin!(HeaderOne);
