//! `trap` (test plugin): traps in one phase.
//!
//! Config: `{ "phase": "request" | "response" | "configure", "how": "panic" | "unreachable" | "sleep" | "other-head" }`
//! (defaults: `request`, `panic`). `panic` prints a message (and logs it
//! through the host) before aborting; `unreachable` executes the wasm
//! `unreachable` instruction directly; `sleep` sleeps 5 ms (which the host
//! refuses: plugins may not wait), then panics if it was let through;
//! `other-head` calls a function of the head this phase does not have (the
//! WIT `response` interface in the request phase, `request` otherwise),
//! which the host refuses, then panics if it was let through.

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

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum How {
    #[default]
    Panic,
    Unreachable,
    Sleep,
    #[serde(rename = "other-head")]
    OtherHead,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    how: How,
}

struct Trap(Config);

impl Trap {
    fn maybe_trap(&self, phase: Phase) {
        if self.0.phase == phase {
            trap(self.0.how, phase);
        }
    }
}

fn trap(how: How, phase: Phase) -> ! {
    match how {
        How::Panic => panic!("trap plugin: deliberate panic in the {} phase", name(phase)),
        How::Unreachable => unreachable_instruction(),
        How::Sleep => {
            std::thread::sleep(std::time::Duration::from_millis(5));
            panic!("trap plugin: the host let the plugin sleep")
        }
        How::OtherHead => {
            // The raw bindings: the SDK hands out no head outside its phase.
            use wasmgate_plugin::bindings::wasmgate::plugin::{request, response};
            let _ = match phase {
                Phase::Request => response::status().to_string(),
                _ => request::method(),
            };
            panic!("trap plugin: the host let the plugin use another phase's head")
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn unreachable_instruction() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn unreachable_instruction() -> ! {
    std::process::abort()
}

fn name(phase: Phase) -> &'static str {
    match phase {
        Phase::Configure => "configure",
        Phase::Request => "request",
        Phase::Response => "response",
    }
}

impl Plugin for Trap {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let plugin = Trap(config);
        plugin.maybe_trap(Phase::Configure);
        Ok(plugin)
    }

    fn on_request(&mut self, _req: &Request) -> Action {
        self.maybe_trap(Phase::Request);
        Action::Continue
    }

    fn on_response(&mut self, _resp: &ResponseHead) -> Action {
        self.maybe_trap(Phase::Response);
        Action::Continue
    }
}

export_plugin!(Trap);
