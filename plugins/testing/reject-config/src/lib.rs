//! `reject-config` (test plugin): `configure` always fails with
//! `reject-config says no: <the config text>`.

use wasmgate_plugin::prelude::*;

struct RejectConfig;

impl Plugin for RejectConfig {
    type Config = NoConfig;

    fn new(_config: NoConfig) -> Result<Self, String> {
        Err("reject-config says no".into())
    }

    fn from_config_text(config: &str) -> Result<Self, String> {
        Err(format!("reject-config says no: {config}"))
    }
}

export_plugin!(RejectConfig);
