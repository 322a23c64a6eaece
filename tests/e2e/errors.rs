//! How failures become responses: no route, upstream without endpoints,
//! upstream refused, upstream too slow to connect or to answer, and
//! upstreams dying mid-body.

use anyhow::{ensure, Result};
use http::Request;
use std::time::{Duration, Instant};
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::{conf, upstream, Gateway};

fn with_upstream(endpoint: std::net::SocketAddr, upstream_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "backend"
endpoints = ["{endpoint}"]
{upstream_extra}
[[routes]]
name = "api"
upstream = "backend"
"#
    )
}

#[tokio::test]
async fn no_route_is_404_with_a_json_error() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(echo.addr(), "", r#"hosts = ["api.test"]"#)).await?;
    let resp = Http1::new()
        .fetch(
            Request::get(gw.url("main", "/nothing/here"))
                .header("host", "other.test")
                .body(client::empty())?,
        )
        .await?;
    resp.expect_gateway_error(404)?;
    // A client-chosen request id is used in the error body too.
    let resp = Http1::new()
        .fetch(
            Request::get(gw.url("main", "/"))
                .header("host", "other.test")
                .header("x-request-id", "lost-1")
                .body(client::empty())?,
        )
        .await?;
    resp.expect_gateway_error(404)?;
    assert_eq!(resp.header("x-request-id"), Some("lost-1"));
    assert_eq!(echo.count(), 0);
    Ok(())
}

#[tokio::test]
async fn upstream_without_endpoints_is_503() -> Result<()> {
    let gw = Gateway::start(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "retired"
endpoints = []
[[routes]]
name = "api"
upstream = "retired"
"#,
    )
    .await?;
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    resp.expect_gateway_error(503)?;
    Ok(())
}

#[tokio::test]
async fn refused_upstream_is_502() -> Result<()> {
    let gw = Gateway::start(&with_upstream(upstream::refused_addr()?, "")).await?;
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    resp.expect_gateway_error(502)?;
    Ok(())
}

#[tokio::test]
async fn upstream_connect_timeout_is_504() -> Result<()> {
    let hole = upstream::SynBlackhole::start().await?;
    let gw = Gateway::start(&with_upstream(hole.addr(), r#"connect_timeout = "500ms""#)).await?;
    let start = Instant::now();
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    let took = start.elapsed();
    resp.expect_gateway_error(504)?;
    ensure!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "504 after {took:?}, connect_timeout is 500ms"
    );
    Ok(())
}

#[tokio::test]
async fn upstream_response_timeout_is_504() -> Result<()> {
    let hole = upstream::blackhole().await?;
    let gw = Gateway::start(&with_upstream(hole.addr(), r#"response_timeout = "1s""#)).await?;
    let start = Instant::now();
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    let took = start.elapsed();
    resp.expect_gateway_error(504)?;
    ensure!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "504 after {took:?}, response_timeout is 1s"
    );
    assert_eq!(
        hole.connections(),
        1,
        "the gateway never reached the upstream"
    );
    Ok(())
}

#[tokio::test]
async fn slow_upstream_within_response_timeout_is_fine() -> Result<()> {
    let slow = upstream::slow_headers(Duration::from_millis(500)).await?;
    let gw = Gateway::start(&with_upstream(slow.addr(), r#"response_timeout = "3s""#)).await?;
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    assert_eq!(resp.status, 200);
    Ok(())
}

/// The client sees the response start, then the body fail: never a clean,
/// shorter body.
async fn assert_h1_body_aborted(gw: &Gateway) -> Result<()> {
    let resp = Http1::unpooled()
        .send(Request::get(gw.url("main", "/")).body(client::empty())?)
        .await?;
    assert_eq!(resp.status(), 200);
    let body = client::read(resp).await;
    ensure!(
        body.is_err(),
        "upstream died mid-body but the client got a complete body: {:?}",
        body.map(|b| (b.headers, b.body.len()))
    );
    Ok(())
}

#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_h1_client_content_length() -> Result<()> {
    let up = upstream::reset_mid_body().await?;
    let gw = Gateway::start(&with_upstream(up.addr(), "")).await?;
    assert_h1_body_aborted(&gw).await
}

#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_h1_client_chunked() -> Result<()> {
    let up = upstream::reset_mid_body_chunked().await?;
    let gw = Gateway::start(&with_upstream(up.addr(), "")).await?;
    assert_h1_body_aborted(&gw).await
}

#[tokio::test]
async fn upstream_h2_reset_mid_body_aborts_the_h1_client() -> Result<()> {
    let up = upstream::reset_mid_body_h2().await?;
    let gw = Gateway::start(&with_upstream(up.addr(), r#"protocol = "h2c""#)).await?;
    assert_h1_body_aborted(&gw).await
}

#[tokio::test]
async fn upstream_dying_mid_body_resets_the_h2_stream() -> Result<()> {
    let up = upstream::reset_mid_body().await?;
    let config = format!(
        r#"{}
[[routes]]
name = "ok"
path = "/ok"
[routes.direct_response]
status = 200
body = "ok"
"#,
        with_upstream(up.addr(), "")
    );
    let gw = Gateway::start(&config).await?;
    let h2 = client::h2c(gw.addr("main")).await?;
    // The reset may overtake the response head (h2 drops a reset stream's
    // queued frames), so the stream fails either before or after the head;
    // what must not happen is a clean end of stream.
    match h2
        .send(Request::get("http://api.test/").body(client::empty())?)
        .await
    {
        Ok(resp) => {
            assert_eq!(resp.status(), 200);
            let body = client::read(resp).await;
            ensure!(
                body.is_err(),
                "upstream died mid-body but the h2 stream ended cleanly: {:?}",
                body.map(|b| b.body.len())
            );
        }
        Err(e) => ensure!(
            format!("{e:#}").contains("stream error"),
            "expected a stream reset, got {e:#}"
        ),
    }
    // Only the stream is reset: the connection still works.
    let resp = h2
        .fetch(Request::get("http://api.test/ok").body(client::empty())?)
        .await?;
    assert_eq!(resp.text(), "ok");
    Ok(())
}
