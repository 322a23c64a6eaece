//! Header hygiene (RFC 9110 §7.6.1) and the forwarding headers a proxy adds.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use std::net::IpAddr;

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

/// The hop-by-hop headers every proxy removes, whatever `Connection` says.
static HOP_BY_HOP: [&HeaderName; 6] = [
    &header::CONNECTION,
    &PROXY_CONNECTION,
    &KEEP_ALIVE,
    &header::TE,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Removes hop-by-hop headers and every header named in `Connection`.
/// With `keep_upgrade`, `Upgrade` survives and `Connection: upgrade` is set
/// again, as a tunnelled upgrade needs them.
///
/// One pass over the names finds which are present, so a head without any
/// (most requests, many responses) costs no lookups.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present[i] = true;
        }
    }
    let [connection, proxy_connection, keep_alive, te, transfer_encoding, upgrade] = present;
    if connection {
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
        headers.remove(header::CONNECTION);
    }
    if te {
        // `TE: trailers` is how gRPC says it understands trailers; keep it.
        let te_trailers = headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    for (name, here) in [
        (&PROXY_CONNECTION, proxy_connection),
        (&KEEP_ALIVE, keep_alive),
        (&header::TRANSFER_ENCODING, transfer_encoding),
    ] {
        if here {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The client's IP address as header text, formatted once per connection
/// (formatting an address costs more than everything else
/// `add_forwarding` does).
pub struct ClientIp {
    text: HeaderValue,
    v6: bool,
}

impl ClientIp {
    pub fn new(ip: IpAddr) -> ClientIp {
        let text = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ClientIp {
            text,
            v6: ip.is_ipv6(),
        }
    }
}

/// What the gateway knows about the client side of a request.
pub struct ClientSide<'a> {
    pub ip: &'a ClientIp,
    pub tls: bool,
    pub host: &'a str,
    /// Whether `X-Forwarded-*`/`Forwarded` from the client are kept and
    /// appended to (trusted hop in front) or replaced.
    pub trust_forwarded: bool,
    pub version: Version,
}

/// Sets `X-Forwarded-For/-Proto/-Host`, `Forwarded` and `Via`.
pub fn add_forwarding(headers: &mut HeaderMap, c: &ClientSide<'_>) {
    let ip = c.ip.text.as_bytes();
    let proto = if c.tls { "https" } else { "http" };
    let xff = match previous(headers, &X_FORWARDED_FOR, c.trust_forwarded) {
        Some(prev) => joined(&[prev, b", ", ip]),
        None => Some(c.ip.text.clone()),
    };
    if let Some(xff) = xff {
        headers.insert(&X_FORWARDED_FOR, xff);
    }
    if !(c.trust_forwarded && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(c.trust_forwarded && headers.contains_key(&X_FORWARDED_HOST)) {
        set(headers, &X_FORWARDED_HOST, c.host);
    }
    let (open, close): (&[u8], &[u8]) = if c.ip.v6 {
        (b"\"[", b"]\"")
    } else {
        (b"", b"")
    };
    let element: [&[u8]; 9] = [
        b"for=",
        open,
        ip,
        close,
        b";proto=",
        proto.as_bytes(),
        b";host=\"",
        c.host.as_bytes(),
        b"\"",
    ];
    let forwarded = match previous(headers, &FORWARDED, c.trust_forwarded) {
        Some(prev) => joined(&[&[prev, b", "], &element[..]].concat()),
        None => joined(&element),
    };
    if let Some(forwarded) = forwarded {
        headers.insert(&FORWARDED, forwarded);
    }
    append_via(headers, c.version);
}

/// The value of `name` the client sent, when it is trusted and not empty.
fn previous<'h>(headers: &'h HeaderMap, name: &HeaderName, trust: bool) -> Option<&'h [u8]> {
    if !trust {
        return None;
    }
    headers
        .get(name)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty())
}

/// A header value from pieces; `None` if they make an invalid one.
fn joined(parts: &[&[u8]]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(&parts.concat()).ok()
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
        let mut plain = map(&[("host", "a"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
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
        let ip = ClientIp::new("10.0.0.9".parse().unwrap_or_else(|e| panic!("{e}")));
        let c = |trust| ClientSide {
            ip: &ip,
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
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        add_forwarding(&mut h, &c(true));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(
            h["forwarded"],
            "for=1.2.3.4, for=10.0.0.9;proto=https;host=\"a.test\""
        );
        let v6 = ClientIp::new("2001:db8::1".parse().unwrap_or_else(|e| panic!("{e}")));
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &ClientSide {
                ip: &v6,
                tls: false,
                host: "a.test",
                trust_forwarded: false,
                version: Version::HTTP_2,
            },
        );
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";proto=http;host=\"a.test\""
        );
        assert_eq!(h["via"], "2 wasmgate");
    }
}
