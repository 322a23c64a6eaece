//! wasmgate: an API gateway that runs sandboxed WebAssembly plugins.
//!
//! The request flows listener → proxy → router → upstream; see
//! `docs/architecture.md` for the phase list and which module owns what.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod upstream;

/// Prints one line of the stdout status protocol (`listening …`, `ready`,
/// `reload ok …`, `draining`, `stopped`) that scripts and tests wait on.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
