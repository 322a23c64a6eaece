//! `deny-header`: answers a request that carries `header` with `status` and
//! a text body `message` (the upstream is not called); other requests pass.
//!
//! Config: `{ "header": "x-block", "status": 403, "message": "blocked" }`
//! (`status` defaults to 403, `message` to "blocked").

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    header: String,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default = "default_message")]
    message: String,
}

fn default_status() -> u16 {
    403
}

fn default_message() -> String {
    "blocked".into()
}

struct DenyHeader(Config);

impl Plugin for DenyHeader {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        header::check_name(&config.header)?;
        if !(200..=599).contains(&config.status) {
            return Err(format!("status {} is not in 200..=599", config.status));
        }
        Ok(DenyHeader(config))
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&mut self, req: &Request) -> Action {
        if req.has_header(&self.0.header) {
            Response::new(self.0.status).text(&*self.0.message).into()
        } else {
            Action::Continue
        }
    }
}

export_plugin!(DenyHeader);
