//! End-to-end tests: the real `wasmgate` binary between real clients and
//! real upstreams, all on loopback ports chosen by the kernel.
//!
//! One module per area; the harness (gateway process, upstreams, clients,
//! TLS) lives in the `wasmgate_e2e` library next to this crate.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod config_golden;
mod errors;
mod harness_selftest;
mod headers;
mod limits;
mod malformed;
mod plugin_bodies;
mod plugin_config;
mod plugin_failures;
mod plugin_harness;
mod plugin_reload;
mod plugins;
mod protocols;
mod reload;
mod routing;
mod shutdown;
mod startup;
mod streaming;
mod tls;
mod upstream_balance;
mod upstream_health;
mod upstream_retry;
mod upstream_tls;
