//! `huge-output` (test plugin): pushes `bytes` bytes across the boundary in
//! the request phase, to test the host's cap on bytes copied out of a guest.
//!
//! Config: `{ "bytes": 67108864, "where": "body" | "header" | "request-header" | "replies" }`
//! (defaults: 64 MiB, `body`).
//! * `body`: answers 200 with a body of `bytes` bytes;
//! * `header`: answers 200 with a header `x-huge` of `bytes` bytes;
//! * `request-header`: sets request header `x-huge` to `bytes` bytes and
//!   continues;
//! * `replies`: makes `bytes` small replies (WIT `reply` resources) and
//!   holds them all, then continues.

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum Where {
    #[default]
    Body,
    Header,
    RequestHeader,
    Replies,
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
        let huge = || vec![b'x'; self.0.bytes];
        match self.0.place {
            Where::Body => Response::new(200).body(huge()).into(),
            Where::Header => Response::new(200).header("x-huge", huge()).into(),
            Where::RequestHeader => {
                req.set_header("x-huge", &huge()).log_err("x-huge");
                Action::Continue
            }
            Where::Replies => {
                // The raw bindings: the SDK makes a reply only for the one a
                // phase returns.
                use wasmgate_plugin::bindings::wasmgate::plugin::types::Reply;
                let held: Vec<Reply> = (0..self.0.bytes)
                    .map(|_| Reply::new(200, &[], b"ok"))
                    .collect();
                drop(held);
                Action::Continue
            }
        }
    }
}

export_plugin!(HugeOutput);
