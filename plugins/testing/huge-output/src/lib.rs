//! `huge-output` (test plugin): pushes `bytes` bytes across the boundary in
//! the request phase, to test the host's cap on bytes copied out of a guest.
//!
//! Config: `{ "bytes": 67108864, "where": "body" | "header" | "request-header" }`
//! (defaults: 64 MiB, `body`).
//! * `body`: answers 200 with a body of `bytes` bytes;
//! * `header`: answers 200 with a header `x-huge` of `bytes` bytes;
//! * `request-header`: sets request header `x-huge` to `bytes` bytes and
//!   continues.

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Where {
    #[default]
    Body,
    Header,
    RequestHeader,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_bytes")]
    bytes: usize,
    #[serde(default, rename = "where")]
    place: Where,
}

fn default_bytes() -> usize {
    64 << 20
}

struct HugeOutput(Config);

impl Plugin for HugeOutput {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(HugeOutput(config))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let huge = vec![b'x'; self.0.bytes];
        match self.0.place {
            Where::Body => Response::new(200).body(huge).into(),
            Where::Header => Response::new(200).header("x-huge", huge).into(),
            Where::RequestHeader => {
                req.set_header("x-huge", &huge).log_err("x-huge");
                Action::Continue
            }
        }
    }
}

export_plugin!(HugeOutput);
