//! Plugin body phases: request and response bodies buffered for the plugins
//! that ask for them (and only for those), rewritten or refused, within
//! their `max_body_bytes`; header-only chains keep streaming.

use crate::plugins::{config, get, T};
use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::{plugins, upstream, BoxError, Gateway};

/// A route `api` on `backend` running `body-rewrite` with `rewrite_config`
/// (a TOML inline table), declared with the `extra` plugin lines.
fn rewrite_route(extra: &str, rewrite_config: &str) -> String {
    let wasm = plugins::decl("rewrite", "body_rewrite", extra);
    format!(
        r#"{wasm}
[[routes]]
name = "api"
upstream = "backend"
plugins = [ {{ plugin = "rewrite", config = {rewrite_config} }} ]
"#
    )
}

fn post(url: &str, body: client::Body) -> Result<Request<client::Body>> {
    Ok(Request::post(url)
        .header("content-type", "text/plain")
        .body(body)?)
}

#[tokio::test]
async fn bodies_are_rewritten_both_ways_and_reframed_by_length() -> Result<()> {
    let mirror = upstream::mirror().await?;
    let rules = r#"{ request = [{ from = "colour", to = "color" }], response = [{ from = "color", to = "COLOR" }] }"#;
    let gw = Gateway::start(&config(mirror.addr(), &rewrite_route("", rules))).await?;
    let http = Http1::new();
    let url = gw.url("main", "/x");

    // With a content-length.
    let resp = http
        .fetch(post(&url, client::full("the colour of colours"))?)
        .await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let upstream_saw = mirror.last().context("no request upstream")?;
    assert_eq!(upstream_saw.body_len, "the color of colors".len() as u64);
    assert_eq!(resp.header("x-seen-content-length"), Some("19"));
    assert_eq!(resp.text(), "the COLOR of COLORs");
    assert_eq!(resp.header("content-length"), Some("19"));
    assert_eq!(resp.header("x-body-rewrites"), Some("2"));

    // Chunked from the client: the upstream gets the rewritten body framed
    // by length, not chunks.
    let chunks = futures_util::stream::iter(
        ["col", "our ", "wheel"].map(|c| Ok::<_, BoxError>(Bytes::from_static(c.as_bytes()))),
    );
    let resp = http.fetch(post(&url, client::stream(chunks))?).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-seen-content-length"), Some("11"));
    assert_eq!(resp.header("x-seen-transfer-encoding"), Some("-"));
    assert_eq!(resp.text(), "COLOR wheel");

    // A body without a match passes unchanged; a GET stays bodiless.
    let resp = http.fetch(post(&url, client::full("grey"))?).await?;
    assert_eq!(resp.text(), "grey");
    assert_eq!(resp.header("x-body-rewrites"), Some("0"));
    let resp = get(&http, &url, "bodies-get", &[]).await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-seen-content-length"), Some("-"));
    Ok(())
}

#[tokio::test]
async fn a_request_body_over_the_plugin_limit_is_413_and_never_forwarded() -> Result<()> {
    let mirror = upstream::mirror().await?;
    let rules = r#"{ request = [{ from = "a", to = "b" }] }"#;
    let gw = Gateway::start(&config(
        mirror.addr(),
        &rewrite_route("max_body_bytes = 64", rules),
    ))
    .await?;
    let url = gw.url("main", "/x");
    // Announced by content-length, then streamed without one.
    let resp = Http1::unpooled()
        .fetch(post(&url, client::full(vec![b'a'; 65]))?)
        .await?;
    resp.expect_gateway_error(413)?;
    let resp = Http1::unpooled()
        .fetch(post(&url, client::generated(100_000))?)
        .await?;
    resp.expect_gateway_error(413)?;
    ensure!(
        mirror.count() == 0,
        "an oversized body reached the upstream"
    );
    // At the limit it goes through.
    let resp = Http1::new()
        .fetch(post(&url, client::full(vec![b'a'; 64]))?)
        .await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "b".repeat(64));
    Ok(())
}

#[tokio::test]
async fn a_response_body_over_the_plugin_limit_is_502() -> Result<()> {
    let source = upstream::source(200_000).await?;
    let rules = r#"{ response = [{ from = "y", to = "z" }] }"#;
    let gw = Gateway::start(&config(
        source.addr(),
        &rewrite_route("max_body_bytes = 100000", rules),
    ))
    .await?;
    let resp = Http1::new().get(&gw.url("main", "/big")).await?;
    resp.expect_gateway_error(502)?;
    Ok(())
}

#[tokio::test]
async fn a_body_phase_can_refuse_the_request() -> Result<()> {
    let mirror = upstream::mirror().await?;
    let rules = r#"{ deny_request_containing = "DROP TABLE", deny_status = 422 }"#;
    let gw = Gateway::start(&config(mirror.addr(), &rewrite_route("", rules))).await?;
    let url = gw.url("main", "/x");
    let http = Http1::new();
    let resp = http
        .fetch(post(&url, client::full("name'); DROP TABLE users; --"))?)
        .await?;
    assert_eq!(resp.status, 422);
    assert_eq!(resp.text(), "request body refused");
    ensure!(mirror.count() == 0, "a refused body reached the upstream");
    let resp = http.fetch(post(&url, client::full("name=bobby"))?).await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "name=bobby");
    Ok(())
}

#[tokio::test]
async fn a_replacement_over_max_body_bytes_fails_the_plugin() -> Result<()> {
    let mirror = upstream::mirror().await?;
    let rules = r#"{ request = [{ from = "a", to = "aaaaaaaaaa" }] }"#;
    let extra = "max_body_bytes = 100\nfailure_status = 503";
    let gw = Gateway::start(&config(mirror.addr(), &rewrite_route(extra, rules))).await?;
    let resp = Http1::new()
        .fetch(post(&gw.url("main", "/x"), client::full("a".repeat(20)))?)
        .await?;
    resp.expect_gateway_error(503)?;
    ensure!(mirror.count() == 0);
    crate::admin::metrics_until(&gw, |m| {
        crate::admin::metric(
            m,
            "wasmgate_plugin_errors_total",
            &[("plugin", "rewrite"), ("kind", "output")],
        ) == Some(1.0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_response_body_phase_keeps_grpc_trailers() -> Result<()> {
    let grpc = upstream::grpc_like().await?;
    let rules = r#"{ response = [{ from = "ping", to = "pong" }] }"#;
    let conf = config(grpc.addr(), &rewrite_route("", rules))
        .replace("endpoints = [", "protocol = \"h2c\"\nendpoints = [");
    let gw = Gateway::start(&conf).await?;
    let h2 = client::h2c(gw.addr("main")).await?;
    let resp = h2
        .fetch(post(&gw.url("main", "/svc/Ping"), client::full("ping"))?)
        .await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text(), "pong");
    assert_eq!(resp.trailer("grpc-status"), Some("0"));
    assert_eq!(resp.trailer("grpc-message"), Some("ok"));
    Ok(())
}

/// A chain of header-only plugins never buffers: the upstream receives the
/// first part of a request body while the client still holds the rest back,
/// and the client receives the first part of a response while the upstream
/// still holds the rest back.
#[tokio::test]
async fn header_only_chains_stream_bodies_both_ways() -> Result<()> {
    let sink = upstream::sink().await?;
    let (gated, gate) = upstream::gated("first part;", "second part").await?;
    let wasm = plugins::decl("hello", "hello_header", "");
    let rest = format!(
        r#"{wasm}
[[upstreams]]
name = "gated"
endpoints = ["{gated}"]

[[routes]]
name = "up"
path_prefix = "/up"
upstream = "backend"
plugins = [ {{ plugin = "hello", config = {{ greeting = "hi" }} }} ]

[[routes]]
name = "down"
path_prefix = "/down"
upstream = "gated"
plugins = [ {{ plugin = "hello", config = {{ greeting = "hi" }} }} ]
"#,
        gated = gated.addr()
    );
    let gw = Gateway::start(&config(sink.addr(), &rest)).await?;

    // Upload: the second chunk is only sent once the first arrived upstream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(1);
    let chunks =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let http = Http1::new();
    let upload = {
        let http = http.clone();
        let req = post(&gw.url("main", "/up"), client::stream(chunks))?;
        tokio::spawn(async move { http.fetch(req).await })
    };
    tx.send(Ok(Bytes::from(vec![b'1'; 1000]))).await?;
    wait_until(T, || sink.bytes() >= 1000)
        .await
        .context("the first request chunk did not reach the upstream on its own")?;
    tx.send(Ok(Bytes::from(vec![b'2'; 500]))).await?;
    drop(tx);
    let resp = upload.await??;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "1500");

    // Download: the first part arrives while the upstream holds the rest.
    let resp = tokio::time::timeout(
        T,
        http.send(Request::get(gw.url("main", "/down")).body(client::empty())?),
    )
    .await
    .context("no response head while the upstream holds its body back")??;
    assert_eq!(resp.headers()["x-hello-plugin"], "hi");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(T, body.frame())
        .await
        .context("no body bytes while the upstream holds the rest back")?
        .context("body ended")??;
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"first part;"[..]));
    gate.open();
    let rest = body.collect().await?.to_bytes();
    assert_eq!(&rest[..], b"second part");
    Ok(())
}

/// Polls `cond` (a counter, with no change signal of its own) until it
/// holds or `timeout` passes.
async fn wait_until(timeout: std::time::Duration, cond: impl Fn() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        ensure!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Ok(())
}
