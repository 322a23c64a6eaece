//! `spin` (test plugin): loops forever, without calling the host, in one
//! phase; only the host's epoch deadline can stop it.
//!
//! Config: `{ "phase": "request" | "response" | "configure" }` (default
//! `request`).

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Configure,
    #[default]
    Request,
    Response,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    phase: Phase,
}

struct Spin(Phase);

impl Spin {
    fn maybe_spin(&self, phase: Phase) {
        if self.0 == phase {
            spin();
        }
    }
}

#[inline(never)]
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        // black_box keeps the loop (and the counter) from being optimised away.
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Plugin for Spin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let plugin = Spin(config.phase);
        plugin.maybe_spin(Phase::Configure);
        Ok(plugin)
    }

    fn on_request(&mut self, _req: &Request) -> Action {
        self.maybe_spin(Phase::Request);
        Action::Continue
    }

    fn on_response(&mut self, _resp: &ResponseHead) -> Action {
        self.maybe_spin(Phase::Response);
        Action::Continue
    }
}

export_plugin!(Spin);
