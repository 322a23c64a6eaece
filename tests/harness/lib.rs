//! Test harness for wasmgate's end-to-end tests: the real `wasmgate` binary
//! started on loopback ports, real upstream servers behind it and real
//! clients in front of it.
//!
//! Everything binds `127.0.0.1:0` and learns its port from the readiness
//! protocol or the bound socket; everything shuts down when its handle drops.
//!
//! - [`gateway`]: build and run the binary, read its stdout protocol, signals.
//! - [`upstream`]: upstream servers (echo, WebSocket, gRPC-like, misbehaving).
//! - [`tls`]: a throw-away CA, leaf certificates, client configs, SNI probing.
//! - [`client`]: HTTP/1.1, h2c and HTTP/2-over-TLS clients.
//! - [`raw`]: byte-level TCP clients for malformed requests and slow peers.
//! - [`conf`]: small config snippets shared by many tests.
//! - [`plugins`]: the WebAssembly plugins, built once per test process.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod client;
pub mod conf;
pub mod gateway;
pub mod plugins;
pub mod raw;
pub mod tls;
pub mod upstream;

pub use gateway::Gateway;

/// The error type every boxed body in this crate uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Removes ANSI colour sequences (`ESC [ … letter`) so log lines can be
/// matched as plain text whatever the subscriber's colour setting.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
