//! `recurse` (test plugin): unbounded, non-tail recursion in the request
//! phase, which the optimiser cannot turn into a loop. Two kinds:
//!
//! * `native` (default): the frames live on the wasm call stack only, so the
//!   host's `max_wasm_stack` stops it ("call stack exhausted");
//! * `shadow`: each frame also holds a 256-byte array kept alive with
//!   `black_box`, which lives on Rust's shadow stack in linear memory (1 MiB,
//!   placed first), so it ends with an out-of-bounds access trap when that
//!   stack runs out, or call-stack exhaustion if the host's limit is lower.
//!
//! Config: `{ "stack": "native" | "shadow" }`.

use serde::Deserialize;
use std::hint::black_box;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Stack {
    #[default]
    Native,
    Shadow,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    stack: Stack,
}

struct Recurse(Stack);

/// `stop` is never reached (the caller hides its value with `black_box`);
/// it only keeps the "cannot return without recursing" lint quiet.
#[inline(never)]
fn native(depth: u64, stop: u64) -> u64 {
    if depth == stop {
        return 0;
    }
    let below = native(depth + 1, stop);
    // Not an accumulator pattern LLVM could turn into a loop.
    below ^ (below >> 3) ^ depth
}

#[inline(never)]
fn shadow(depth: u64, stop: u64) -> u64 {
    let mut frame = [0u8; 256];
    frame[(depth % 256) as usize] = depth as u8;
    black_box(&mut frame);
    if depth == stop {
        return 0;
    }
    let below = shadow(depth + 1, stop);
    // Use the frame after the call, so the recursion is not a tail call.
    below.wrapping_add(u64::from(frame[(below % 256) as usize]))
}

impl Plugin for Recurse {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Recurse(config.stack))
    }

    fn on_request(&mut self, _req: &Request) -> Action {
        let stop = black_box(u64::MAX);
        let n = match self.0 {
            Stack::Native => native(0, stop),
            Stack::Shadow => shadow(0, stop),
        };
        log::info!("recursion ended: {n}");
        Action::Continue
    }
}

export_plugin!(Recurse);
