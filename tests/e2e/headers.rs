//! Header handling: route header operations, hop-by-hop hygiene in both
//! directions, forwarding headers, Via and request ids.

use anyhow::Result;
use http::Request;
use serde_json::{json, Value};
use std::time::Duration;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::raw::{self, Raw};
use wasmgate_e2e::{conf, upstream, Gateway};

const T: Duration = Duration::from_secs(5);

/// The values the echo upstream reports for a header (empty if absent).
fn values(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// All values of a header joined as one comma-separated list of trimmed items.
fn list(echo: &Value, name: &str) -> Vec<String> {
    values(echo, name)
        .iter()
        .flat_map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::test]
async fn route_request_and_response_header_operations() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(
        echo.addr(),
        "",
        r#"
[routes.request_headers]
set = { "x-a" = "1" }
add = { "x-b" = "2" }
remove = ["x-c"]
[routes.response_headers]
set = { "x-served-by" = "wasmgate" }
add = { "x-extra" = "e" }
"#,
    ))
    .await?;
    let resp = Http1::new()
        .fetch(
            Request::get(gw.url("main", "/ops"))
                .header("x-a", "0")
                .header("x-b", "1")
                .header("x-c", "gone")
                .body(client::empty())?,
        )
        .await?;
    assert_eq!(resp.status, 200);
    let j = resp.json()?;
    assert_eq!(values(&j, "x-a"), ["1"], "set replaces");
    assert_eq!(values(&j, "x-b"), ["1", "2"], "add appends");
    assert_eq!(values(&j, "x-c"), Vec::<String>::new(), "remove removes");
    assert_eq!(resp.header("x-served-by"), Some("wasmgate"));
    assert_eq!(resp.header("x-extra"), Some("e"));
    Ok(())
}

#[tokio::test]
async fn response_header_operations_override_the_upstream() -> Result<()> {
    let up = upstream::raw(
        &b"HTTP/1.1 200 OK\r\nserver: upstream/1.0\r\nx-served-by: upstream\r\ncontent-length: 2\r\n\r\nok"[..],
    )
    .await?;
    let gw = Gateway::start(&conf::proxy(
        up.addr(),
        "",
        r#"
[routes.response_headers]
set = { "x-served-by" = "wasmgate" }
remove = ["server"]
"#,
    ))
    .await?;
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    assert_eq!(resp.text(), "ok");
    assert_eq!(resp.header_all("x-served-by"), ["wasmgate"]);
    assert_eq!(resp.header("server"), None);
    Ok(())
}

#[tokio::test]
async fn an_http10_upstream_answer_reaches_an_http11_client_as_http11() -> Result<()> {
    let up = upstream::raw(&b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]).await?;
    let gw = Gateway::start(&conf::simple(up.addr())).await?;
    let resp = raw::exchange(
        gw.addr("main"),
        "GET / HTTP/1.1\r\nhost: api.test\r\n\r\n",
        T,
    )
    .await?;
    assert!(resp.head.starts_with("HTTP/1.1 200"), "{}", resp.head);
    // Via names the protocol the gateway received the response with.
    assert_eq!(resp.header("via"), Some("1.0 wasmgate"));
    Ok(())
}

#[tokio::test]
async fn hop_by_hop_request_headers_do_not_reach_the_upstream() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let resp = raw::exchange(
        gw.addr("main"),
        "GET /hop HTTP/1.1\r\n\
         host: api.test\r\n\
         connection: keep-alive, x-secret\r\n\
         x-secret: 1\r\n\
         keep-alive: timeout=5\r\n\
         proxy-connection: keep-alive\r\n\
         te: gzip\r\n\
         x-kept: yes\r\n\r\n",
        T,
    )
    .await?;
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let j: Value = serde_json::from_slice(&resp.body)?;
    for h in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert_eq!(
            values(&j, h),
            Vec::<String>::new(),
            "{h} reached the upstream"
        );
    }
    let conn = list(&j, "connection");
    assert!(
        !conn.iter().any(|t| t.eq_ignore_ascii_case("x-secret")),
        "client's Connection tokens reached the upstream: {conn:?}"
    );
    assert_eq!(values(&j, "x-kept"), ["yes"]);
    Ok(())
}

#[tokio::test]
async fn hop_by_hop_response_headers_do_not_reach_the_client() -> Result<()> {
    let up = upstream::raw(
        &b"HTTP/1.1 200 OK\r\n\
           connection: x-up-secret\r\n\
           x-up-secret: 1\r\n\
           keep-alive: timeout=5, max=100\r\n\
           proxy-connection: keep-alive\r\n\
           upgrade: foo/1\r\n\
           x-up-kept: yes\r\n\
           content-length: 2\r\n\r\nok"[..],
    )
    .await?;
    let gw = Gateway::start(&conf::simple(up.addr())).await?;
    let mut c = Raw::connect(gw.addr("main")).await?;
    c.write("GET / HTTP/1.1\r\nhost: api.test\r\n\r\n").await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_text(), "ok");
    for h in ["x-up-secret", "keep-alive", "proxy-connection", "upgrade"] {
        assert_eq!(
            resp.header(h),
            None,
            "{h} reached the client:\n{}",
            resp.head
        );
    }
    if let Some(conn) = resp.header("connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("x-up-secret"),
            "upstream's Connection tokens reached the client:\n{}",
            resp.head
        );
    }
    assert_eq!(resp.header("x-up-kept"), Some("yes"));
    Ok(())
}

/// `key=value` pairs of one `Forwarded` element, quotes removed.
fn forwarded_element(elem: &str) -> Vec<(String, String)> {
    elem.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn forwarding_headers_replace_or_append_by_trust() -> Result<()> {
    let echo = upstream::echo().await?;
    let config = format!(
        r#"
[[listeners]]
name = "untrusted"
address = "127.0.0.1:0"
[[listeners]]
name = "trusted"
address = "127.0.0.1:0"
trust_forwarded = true
[[upstreams]]
name = "echo"
endpoints = ["{}"]
[[routes]]
name = "all"
upstream = "echo"
"#,
        echo.addr()
    );
    let gw = Gateway::start(&config).await?;
    let send = |listener: &str| {
        let req = Request::get(gw.url(listener, "/fwd"))
            .header("host", "api.test")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "original.test")
            .header("forwarded", "for=6.6.6.6;proto=https")
            .body(client::empty());
        async move { Http1::new().fetch(req?).await?.json() }
    };

    let j = send("untrusted").await?;
    assert_eq!(list(&j, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&j, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&j, "x-forwarded-host"), ["api.test"]);
    let fwd = list(&j, "forwarded");
    assert_eq!(fwd.len(), 1, "untrusted Forwarded kept: {fwd:?}");
    let elem = forwarded_element(&fwd[0]);
    for (k, v) in [
        ("for", "127.0.0.1"),
        ("proto", "http"),
        ("host", "api.test"),
    ] {
        assert!(
            elem.contains(&(k.to_string(), v.to_string())),
            "Forwarded {:?} lacks {k}={v}",
            fwd[0]
        );
    }

    // Behind a trusted proxy its view is kept: the client IP is appended,
    // and the proxy's X-Forwarded-Proto/-Host (what the user connected
    // with) are believed rather than replaced by the hop from the proxy.
    let j = send("trusted").await?;
    assert_eq!(list(&j, "x-forwarded-for"), ["1.2.3.4", "127.0.0.1"]);
    assert_eq!(values(&j, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&j, "x-forwarded-host"), ["original.test"]);
    let fwd = list(&j, "forwarded");
    assert_eq!(fwd.len(), 2, "trusted Forwarded not appended to: {fwd:?}");
    assert!(forwarded_element(&fwd[0]).contains(&("for".into(), "6.6.6.6".into())));
    assert!(forwarded_element(&fwd[1]).contains(&("for".into(), "127.0.0.1".into())));
    Ok(())
}

#[tokio::test]
async fn via_is_appended_with_the_client_protocol_version() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let j = Http1::new()
        .fetch(
            Request::get(gw.url("main", "/via"))
                .header("via", "1.0 fred")
                .body(client::empty())?,
        )
        .await?
        .json()?;
    assert_eq!(list(&j, "via"), ["1.0 fred", "1.1 wasmgate"]);

    let h2 = client::h2c(gw.addr("main")).await?;
    let j = h2
        .fetch(Request::get("http://api.test/via").body(client::empty())?)
        .await?
        .json()?;
    assert_eq!(list(&j, "via"), ["2 wasmgate"]);
    Ok(())
}

#[tokio::test]
async fn request_id_is_generated_or_propagated() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let http = Http1::new();

    let mut ids = Vec::new();
    for _ in 0..2 {
        let resp = http.get(&gw.url("main", "/id")).await?;
        let id = resp
            .header("x-request-id")
            .filter(|v| !v.is_empty())
            .map(String::from)
            .ok_or_else(|| anyhow::anyhow!("no x-request-id on the response"))?;
        assert_eq!(
            values(&resp.json()?, "x-request-id"),
            std::slice::from_ref(&id),
            "upstream saw another id"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "generated request ids repeat");

    let resp = http
        .fetch(
            Request::get(gw.url("main", "/id"))
                .header("x-request-id", "client-chosen-123")
                .body(client::empty())?,
        )
        .await?;
    assert_eq!(resp.header("x-request-id"), Some("client-chosen-123"));
    assert_eq!(values(&resp.json()?, "x-request-id"), ["client-chosen-123"]);
    Ok(())
}

#[tokio::test]
async fn upstream_sees_original_host_and_method_and_body() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let j = Http1::new()
        .fetch(
            Request::put(gw.url("main", "/things/1?x=y"))
                .header("host", "shop.test")
                .body(client::full("0123456789"))?,
        )
        .await?
        .json()?;
    assert_eq!(j["method"], "PUT");
    assert_eq!(j["path"], "/things/1?x=y");
    assert_eq!(j["body_len"], 10);
    assert_eq!(j["headers"]["host"], json!(["shop.test"]));
    Ok(())
}
