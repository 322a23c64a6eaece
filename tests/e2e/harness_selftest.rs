//! The harness's own upstreams and clients, talked to directly (no
//! gateway), so a failure elsewhere can be trusted to be the gateway's.

use anyhow::{ensure, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::raw::{self, Raw};
use wasmgate_e2e::{tls, upstream};

#[tokio::test]
async fn echo_describes_the_request_over_http1_and_h2c() -> Result<()> {
    let up = upstream::echo().await?;
    let resp = client::Http1::new()
        .fetch(
            Request::post(format!("http://{}/a/b?c=d", up.addr()))
                .header("x-one", "1")
                .header("x-one", "2")
                .body(client::full("hello"))?,
        )
        .await?;
    assert_eq!(resp.status, 200);
    let j = resp.json()?;
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/a/b?c=d");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["body_len"], 5);
    assert_eq!(j["headers"]["x-one"], serde_json::json!(["1", "2"]));
    assert_eq!(up.count(), 1);

    let h2 = client::h2c(up.addr()).await?;
    let resp = h2
        .fetch(Request::get(format!("http://{}/h2", up.addr())).body(client::empty())?)
        .await?;
    assert_eq!(resp.json()?["version"], "HTTP/2.0");
    assert_eq!(up.count(), 2);
    assert_eq!(up.last().map(|s| s.path), Some("/h2".to_string()));
    Ok(())
}

#[tokio::test]
async fn slow_headers_waits_before_answering() -> Result<()> {
    let up = upstream::slow_headers(Duration::from_millis(300)).await?;
    let start = Instant::now();
    let resp = Http1::new().get(&format!("http://{}/", up.addr())).await?;
    assert_eq!(resp.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn grpc_like_sends_trailers() -> Result<()> {
    let up = upstream::grpc_like().await?;
    let h2 = client::h2c(up.addr()).await?;
    let resp = h2
        .fetch(
            Request::post(format!("http://{}/pkg.Svc/Call", up.addr()))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(client::full(&b"\0\0\0\0\x03abc"[..]))?,
        )
        .await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert_eq!(&resp.body[..], b"\0\0\0\0\x03abc");
    assert_eq!(resp.trailer("grpc-status"), Some("0"));
    assert_eq!(resp.trailer("grpc-message"), Some("ok"));
    Ok(())
}

#[tokio::test]
async fn sink_counts_and_source_generates() -> Result<()> {
    let sink = upstream::sink().await?;
    let resp = Http1::new()
        .fetch(Request::post(format!("http://{}/", sink.addr())).body(client::generated(1 << 20))?)
        .await?;
    assert_eq!(resp.text(), "1048576");
    assert_eq!(sink.bytes(), 1 << 20);

    let source = upstream::source(3 << 20).await?;
    let resp = Http1::new()
        .send(Request::get(format!("http://{}/", source.addr())).body(client::empty())?)
        .await?;
    assert_eq!(resp.headers()["content-length"], "3145728");
    assert_eq!(client::drain(resp).await?, 3 << 20);
    Ok(())
}

#[tokio::test]
async fn raw_upstream_records_heads_and_keeps_alive() -> Result<()> {
    let up =
        upstream::raw(&b"HTTP/1.1 200 OK\r\nx-up: 1\r\ncontent-length: 2\r\n\r\nok"[..]).await?;
    let http = Http1::new();
    for _ in 0..2 {
        let resp = http.get(&format!("http://{}/p", up.addr())).await?;
        assert_eq!(resp.text(), "ok");
        assert_eq!(resp.header("x-up"), Some("1"));
    }
    assert_eq!(up.count(), 2);
    assert_eq!(up.connections(), 1);
    assert!(up.raw_heads()[0].starts_with("GET /p HTTP/1.1\r\n"));
    Ok(())
}

#[tokio::test]
async fn truncating_upstreams_break_the_body() -> Result<()> {
    for up in [
        upstream::reset_mid_body().await?,
        upstream::reset_mid_body_chunked().await?,
    ] {
        let resp = Http1::new()
            .send(Request::get(format!("http://{}/", up.addr())).body(client::empty())?)
            .await?;
        assert_eq!(resp.status(), 200);
        let body = client::read(resp).await;
        ensure!(body.is_err(), "expected a body error, got {body:?}");
    }
    let up = upstream::reset_mid_body_h2().await?;
    let h2 = client::h2c(up.addr()).await?;
    let resp = h2
        .send(Request::get(format!("http://{}/", up.addr())).body(client::empty())?)
        .await?;
    assert_eq!(resp.status(), 200);
    let body = client::read(resp).await;
    ensure!(body.is_err(), "expected an h2 stream error, got {body:?}");
    Ok(())
}

#[tokio::test]
async fn blackhole_refused_and_syn_blackhole() -> Result<()> {
    let bh = upstream::blackhole().await?;
    let mut c = Raw::connect(bh.addr()).await?;
    c.write("GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let (bytes, end) = c.read_to_end(Duration::from_millis(300)).await;
    assert_eq!((bytes.len(), end), (0, raw::End::TimedOut));
    assert_eq!(bh.connections(), 1);

    let refused = upstream::refused_addr()?;
    let err = tokio::net::TcpStream::connect(refused).await.err();
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );

    let syn = upstream::SynBlackhole::start().await?;
    let attempt = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(syn.addr()),
    )
    .await;
    ensure!(
        attempt.is_err(),
        "connect to a full accept queue did not hang: {attempt:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ws_echo_echoes() -> Result<()> {
    let up = upstream::ws_echo().await?;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", up.addr())).await?;
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await?;
    assert_eq!(ws.next().await.transpose()?, Some(Message::text("hello")));
    ws.send(Message::binary(Bytes::from_static(b"\x00\x01")))
        .await?;
    assert_eq!(
        ws.next().await.transpose()?,
        Some(Message::binary(Bytes::from_static(b"\x00\x01")))
    );
    assert_eq!(up.count(), 1);
    Ok(())
}

/// The upgrade server notices bytes sent before its 101, which is what the
/// gateway test relies on to prove the gateway holds them back.
#[tokio::test]
async fn upgrade_echo_detects_early_bytes() -> Result<()> {
    let up = upgrade_roundtrip_direct().await?;
    assert!(up.early_bytes());
    Ok(())
}

async fn upgrade_roundtrip_direct() -> Result<upstream::Upstream> {
    let up = upstream::upgrade_echo().await?;
    let mut c = Raw::connect(up.addr()).await?;
    let mut req = raw::websocket_upgrade("/ws", "x.test").into_bytes();
    req.extend_from_slice(b"early-frame");
    c.write(&req).await?;
    let resp = c.read_response(Duration::from_secs(2)).await?;
    assert_eq!(resp.status, 101);
    assert_eq!(
        c.read_exact(11, Duration::from_secs(2)).await?,
        b"early-frame"
    );
    c.write("later").await?;
    assert_eq!(c.read_exact(5, Duration::from_secs(2)).await?, b"later");
    Ok(up)
}

#[tokio::test]
async fn pki_issues_verifiable_certs_and_probe_reads_names() -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = tls::Pki::new()?;
    let leaf = pki.leaf("a", &["a.test", "*.wild.test"])?;
    let chain = CertificateDer::pem_file_iter(&leaf.cert)?.collect::<Result<Vec<_>, _>>()?;
    assert_eq!(chain.len(), 2);
    let key = PrivateKeyDer::from_pem_file(&leaf.key)?;
    let mut server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    use tokio::io::AsyncReadExt;
                    let mut b = [0u8; 1];
                    let _ = tls.read(&mut b).await;
                }
            });
        }
    });

    assert_eq!(
        tls::peer_names(addr, Some("x.wild.test")).await?,
        vec!["a.test", "*.wild.test"]
    );
    assert_eq!(
        tls::peer_names(addr, None).await?,
        vec!["a.test", "*.wild.test"]
    );
    let (_, alpn) =
        client::tls_connect(addr, "x.wild.test", pki.client_config(tls::ALPN_H2_H1)?).await?;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let wrong = client::tls_connect(addr, "b.test", pki.client_config(tls::ALPN_H2_H1)?).await;
    ensure!(wrong.is_err(), "certificate for a.test verified as b.test");
    task.abort();
    Ok(())
}
