//! `memory-bomb` (test plugin): in the request phase, allocates 1 MiB chunks,
//! touches every page and keeps them all alive, until the host's memory
//! limit stops it (a trap).
//!
//! Config: `{ "mib": 8 }` (optional): allocate only that many MiB per request,
//! kept alive across requests, then continue; without it, allocate forever.

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

const CHUNK: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mib: Option<u64>,
}

struct MemoryBomb {
    mib: Option<u64>,
    hoard: Vec<Vec<u8>>,
}

impl MemoryBomb {
    fn grab_one(&mut self) {
        let mut chunk = vec![0u8; CHUNK];
        for i in (0..CHUNK).step_by(4096) {
            chunk[i] = 1;
        }
        self.hoard.push(std::hint::black_box(chunk));
    }
}

impl Plugin for MemoryBomb {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(MemoryBomb {
            mib: config.mib,
            hoard: Vec::new(),
        })
    }

    fn on_request(&mut self, _req: &Request) -> Action {
        match self.mib {
            Some(n) => (0..n).for_each(|_| self.grab_one()),
            None => loop {
                self.grab_one();
            },
        }
        Action::Continue
    }
}

export_plugin!(MemoryBomb);
