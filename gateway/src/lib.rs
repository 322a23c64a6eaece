//! wasmgate: an API gateway that runs sandboxed WebAssembly plugins.
//!
//! The request flows listener → proxy → router → upstream; see
//! `docs/architecture.md` for the phase list and which module owns what.
#![forbid(unsafe_code)]

pub mod config;
pub mod router;
