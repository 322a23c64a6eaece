//! Header hygiene (RFC 9110 §7.6.1) and the forwarding headers a proxy adds.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use std::net::{IpAddr, SocketAddr};

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether the request asks for a protocol upgrade (`Connection: upgrade`
/// plus an `Upgrade` header).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers and every header named in `Connection`.
/// With `keep_upgrade`, `Upgrade` survives and `Connection: upgrade` is set
/// again, as a tunnelled upgrade needs them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    for name in [
        &header::CONNECTION,
        &PROXY_CONNECTION,
        &KEEP_ALIVE,
        &header::TE,
        &header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    // `TE: trailers` is how gRPC says it understands trailers; keep it.
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// What the gateway knows about the client side of a request.
pub struct ClientSide<'a> {
    pub addr: SocketAddr,
    pub tls: bool,
    pub host: &'a str,
    /// Whether `X-Forwarded-*`/`Forwarded` from the client are kept and
    /// appended to (trusted hop in front) or replaced.
    pub trust_forwarded: bool,
    pub version: Version,
}

/// Sets `X-Forwarded-For/-Proto/-Host`, `Forwarded` and `Via`.
pub fn add_forwarding(headers: &mut HeaderMap, c: &ClientSide<'_>) {
    let ip = c.addr.ip();
    let proto = if c.tls { "https" } else { "http" };
    let xff = match (
        c.trust_forwarded,
        headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
    ) {
        (true, Some(prev)) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    set(headers, &X_FORWARDED_FOR, &xff);
    if !(c.trust_forwarded && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(c.trust_forwarded && headers.contains_key(&X_FORWARDED_HOST)) {
        set(headers, &X_FORWARDED_HOST, c.host);
    }
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let element = format!("for={node};proto={proto};host=\"{}\"", c.host);
    let forwarded = match (
        c.trust_forwarded,
        headers.get(&FORWARDED).and_then(|v| v.to_str().ok()),
    ) {
        (true, Some(prev)) if !prev.is_empty() => format!("{prev}, {element}"),
        _ => element,
    };
    set(headers, &FORWARDED, &forwarded);
    append_via(headers, c.version);
}

/// Appends this hop to `Via`, naming the protocol version it was received with.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let v = match version {
        Version::HTTP_10 => "1.0 wasmgate",
        Version::HTTP_2 => "2 wasmgate",
        Version::HTTP_3 => "3 wasmgate",
        _ => "1.1 wasmgate",
    };
    headers.append(header::VIA, HeaderValue::from_static(v));
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The request id to use: a sane incoming one is kept, otherwise a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4();
            let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
            HeaderValue::from_str(id.simple().encode_lower(&mut buf))
                .unwrap_or(HeaderValue::from_static("-"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_tunnelling() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(
            h.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn forwarding_headers_replace_or_append() {
        let addr: SocketAddr = "10.0.0.9:5555".parse().unwrap_or_else(|e| panic!("{e}"));
        let c = |trust| ClientSide {
            addr,
            tls: true,
            host: "a.test",
            trust_forwarded: trust,
            version: Version::HTTP_11,
        };
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        add_forwarding(&mut h, &c(false));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["forwarded"], "for=10.0.0.9;proto=https;host=\"a.test\"");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["via"], "1.1 wasmgate");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        add_forwarding(&mut h, &c(true));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
    }
}
