//! Config snippets for the common case: one plain listener `main`, an admin
//! listener and one upstream `backend` behind one route `api`.
//!
//! Tests that exercise a particular setting write their whole TOML inline so
//! that a reader sees the config next to the assertions.

use std::net::SocketAddr;

/// Admin on a random port, one plain listener `main` with the given extra
/// lines in its `[listeners.limits]` table, one upstream `backend` and a
/// catch-all route `api` with `route_extra` appended to the route table.
pub fn proxy(upstream: SocketAddr, limits: &str, route_extra: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"

[[listeners]]
name = "main"
address = "127.0.0.1:0"
[listeners.limits]
{limits}

[[upstreams]]
name = "backend"
endpoints = ["{upstream}"]

[[routes]]
name = "api"
upstream = "backend"
{route_extra}
"#
    )
}

/// [`proxy`] with no extra limits and no route options.
pub fn simple(upstream: SocketAddr) -> String {
    proxy(upstream, "", "")
}
