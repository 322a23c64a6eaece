//! Protocols through the gateway: h2c with prior knowledge, h2c upstreams,
//! gRPC-style trailers, WebSocket tunnelling.

use anyhow::Result;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::raw::{self, Raw};
use wasmgate_e2e::{conf, upstream, Gateway};

const T: Duration = Duration::from_secs(5);

/// Gateway with one plain listener and one upstream of the given protocol.
fn config(upstream: std::net::SocketAddr, protocol: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "backend"
endpoints = ["{upstream}"]
protocol = "{protocol}"
[[routes]]
name = "api"
upstream = "backend"
"#
    )
}

#[tokio::test]
async fn h2c_prior_knowledge_on_a_plain_listener() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&config(echo.addr(), "http1")).await?;
    let h2 = client::h2c(gw.addr("main")).await?;
    let resp = h2
        .fetch(Request::get("http://api.test/h2c?x=1").body(client::empty())?)
        .await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, Version::HTTP_2);
    let j = resp.json()?;
    assert_eq!(
        j["version"], "HTTP/1.1",
        "http1 upstream spoke {}",
        j["version"]
    );
    assert_eq!(j["path"], "/h2c?x=1");
    // The :authority becomes the upstream Host.
    assert_eq!(j["headers"]["host"], serde_json::json!(["api.test"]));

    // The same port still speaks HTTP/1.1.
    let resp = Http1::new().get(&gw.url("main", "/h1")).await?;
    assert_eq!(resp.version, Version::HTTP_11);
    assert_eq!(resp.json()?["path"], "/h1");
    Ok(())
}

#[tokio::test]
async fn h2c_multiplexes_many_streams_on_one_connection() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&config(echo.addr(), "http1")).await?;
    let h2 = std::sync::Arc::new(client::h2c(gw.addr("main")).await?);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let h2 = h2.clone();
        tasks.spawn(async move {
            let resp = h2
                .fetch(Request::get(format!("http://api.test/s/{i}")).body(client::empty())?)
                .await?;
            anyhow::ensure!(resp.status == 200, "stream {i}: {}", resp.status);
            let path = resp.json()?["path"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            anyhow::ensure!(
                path == format!("/s/{i}"),
                "stream {i} got the answer for {path}"
            );
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    assert_eq!(echo.count(), 32);
    Ok(())
}

#[tokio::test]
async fn http1_client_to_h2c_upstream() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&config(echo.addr(), "h2c")).await?;
    let resp = Http1::new()
        .fetch(
            Request::post(gw.url("main", "/up/h2?q=2"))
                .header("host", "api.test")
                .body(client::full("abc"))?,
        )
        .await?;
    assert_eq!(resp.status, 200);
    let j = resp.json()?;
    assert_eq!(j["version"], "HTTP/2.0");
    assert_eq!(j["path"], "/up/h2?q=2");
    assert_eq!(j["body_len"], 3);
    let host = j["authority"]
        .as_str()
        .map(String::from)
        .or_else(|| j["headers"]["host"][0].as_str().map(String::from));
    assert_eq!(
        host.as_deref(),
        Some("api.test"),
        "the h2 upstream did not get the client's host as :authority; it saw {j}"
    );
    Ok(())
}

#[tokio::test]
async fn grpc_style_trailers_pass_through_h2c() -> Result<()> {
    let grpc = upstream::grpc_like().await?;
    let gw = Gateway::start(&config(grpc.addr(), "h2c")).await?;
    let h2 = client::h2c(gw.addr("main")).await?;
    // One gRPC message: uncompressed flag, 4-byte length, payload.
    let msg = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let resp = h2
        .fetch(
            Request::post("http://grpc.test/echo.Echo/Say")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(client::full(msg.clone()))?,
        )
        .await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(resp.body, msg);
    assert_eq!(
        resp.trailer("grpc-status"),
        Some("0"),
        "trailers: {:?}",
        resp.trailers
    );
    assert_eq!(resp.trailer("grpc-message"), Some("ok"));
    let seen = grpc
        .last()
        .ok_or_else(|| anyhow::anyhow!("upstream saw nothing"))?;
    assert_eq!(seen.path, "/echo.Echo/Say");
    assert_eq!(
        seen.header("te"),
        Some("trailers"),
        "te: trailers must pass on h2"
    );
    Ok(())
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() -> Result<()> {
    let ws_up = upstream::ws_echo().await?;
    let gw = Gateway::start(&conf::simple(ws_up.addr())).await?;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.addr("main"))).await?;
    assert_eq!(resp.status(), 101);
    assert!(
        resp.headers().contains_key("x-request-id"),
        "101 without x-request-id"
    );
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await?;
        assert_eq!(ws.next().await.transpose()?, Some(Message::text(text)));
    }
    let blob = Bytes::from(vec![7u8; 100_000]);
    ws.send(Message::binary(blob.clone())).await?;
    assert_eq!(ws.next().await.transpose()?, Some(Message::binary(blob)));
    ws.close(None).await?;
    assert_eq!(ws_up.count(), 1);
    assert_eq!(ws_up.seen()[0].path, "/chat");
    Ok(())
}

#[tokio::test]
async fn upgrade_holds_client_bytes_until_the_upstream_switches() -> Result<()> {
    let up = upstream::upgrade_echo().await?;
    let gw = Gateway::start(&conf::simple(up.addr())).await?;
    let mut c = Raw::connect(gw.addr("main")).await?;
    // The request head and the first frame's bytes in one write.
    let mut bytes = raw::websocket_upgrade("/ws", "api.test").into_bytes();
    bytes.extend_from_slice(b"early-frame");
    c.write(&bytes).await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert_eq!(c.read_exact(11, T).await?, b"early-frame");
    assert!(
        !up.early_bytes(),
        "the gateway sent client bytes to the upstream before its 101"
    );
    c.write("after").await?;
    assert_eq!(c.read_exact(5, T).await?, b"after");
    Ok(())
}
