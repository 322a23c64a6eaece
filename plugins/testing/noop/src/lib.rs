//! `noop` (test plugin): does nothing in either phase; measures the cost of
//! a plugin call. Accepts any config.

use wasmgate_plugin::prelude::*;

struct Noop;

impl Plugin for Noop {
    type Config = NoConfig;

    fn new(_config: NoConfig) -> Result<Self, String> {
        Ok(Noop)
    }
}

export_plugin!(Noop);
