//! Listener limits: size limits (413, 414, 431), body stalls (408),
//! connection deadlines (slowloris, silent connections, idle keep-alive,
//! stalled TLS handshakes) and the per-IP connection cap.
//!
//! Deadlines are set to 1 s and asserted to fire between 0.8 s and 2.5 s.

use anyhow::{bail, ensure, Result};
use std::time::{Duration, Instant};
use wasmgate_e2e::raw::{self, End, Raw};
use wasmgate_e2e::{conf, upstream, Gateway};

const T: Duration = Duration::from_secs(5);
const EARLIEST: Duration = Duration::from_millis(800);
const LATEST: Duration = Duration::from_millis(2500);

fn within_deadline(took: Duration, what: &str) -> Result<()> {
    ensure!(
        (EARLIEST..LATEST).contains(&took),
        "{what} after {took:?}; the limit is 1s"
    );
    Ok(())
}

/// A request that passes every limit, to prove the route works and to
/// count what reached the upstream.
async fn control(gw: &Gateway) -> Result<()> {
    let resp = raw::exchange(
        gw.addr("main"),
        "POST /control HTTP/1.1\r\nhost: api.test\r\ncontent-length: 5\r\n\r\nhello",
        T,
    )
    .await?;
    ensure!(
        resp.status == 200,
        "control request: {} {}",
        resp.status,
        resp.body_text()
    );
    Ok(())
}

#[tokio::test]
async fn body_over_limit_by_content_length_is_413_at_once() -> Result<()> {
    let sink = upstream::sink().await?;
    let gw = Gateway::start(&conf::proxy(sink.addr(), "max_body_bytes = 1024", "")).await?;
    // Only the head: the gateway must answer without waiting for the body.
    let resp = raw::exchange(
        gw.addr("main"),
        "POST /up HTTP/1.1\r\nhost: api.test\r\ncontent-length: 2048\r\n\r\n",
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(resp.status, 413, "{}", resp.head);
    assert_eq!(sink.count(), 0, "an oversized request was forwarded");
    control(&gw).await?;
    assert_eq!(sink.count(), 1);
    resp.expect_gateway_error(413)
}

#[tokio::test]
async fn chunked_body_over_limit_is_413_while_streaming() -> Result<()> {
    let sink = upstream::sink().await?;
    let gw = Gateway::start(&conf::proxy(sink.addr(), "max_body_bytes = 1024", "")).await?;
    let mut c = Raw::connect(gw.addr("main")).await?;
    c.write("POST /up HTTP/1.1\r\nhost: api.test\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    let chunk = format!("200\r\n{}\r\n", "x".repeat(0x200));
    for _ in 0..8 {
        // The gateway may stop reading (or close) once over the limit.
        if c.write(&chunk).await.is_err() {
            break;
        }
    }
    let _ = c.write("0\r\n\r\n").await;
    let resp = c.read_response(T).await?;
    resp.expect_gateway_error(413)?;
    ensure!(
        sink.bytes() <= 1024,
        "upstream received {} body bytes, more than max_body_bytes",
        sink.bytes()
    );
    Ok(())
}

#[tokio::test]
async fn long_request_line_is_414() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let path = format!("/{}", "a".repeat(9000));
    let resp = raw::exchange(
        gw.addr("main"),
        format!("GET {path} HTTP/1.1\r\nhost: api.test\r\n\r\n"),
        T,
    )
    .await?;
    assert_eq!(resp.status, 414, "{}", resp.head);
    assert_eq!(echo.count(), 0);
    control(&gw).await?;
    assert_eq!(echo.count(), 1);
    resp.expect_gateway_error(414)
}

#[tokio::test]
async fn too_many_header_bytes_is_431() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(echo.addr(), "max_header_bytes = 8192", "")).await?;
    let resp = raw::exchange(
        gw.addr("main"),
        format!(
            "GET / HTTP/1.1\r\nhost: api.test\r\nx-big: {}\r\n\r\n",
            "b".repeat(10_000)
        ),
        T,
    )
    .await?;
    assert_eq!(resp.status, 431, "{}", resp.head);
    assert_eq!(echo.count(), 0);
    control(&gw).await?;
    assert_eq!(echo.count(), 1);
    resp.expect_rejection(431)
}

#[tokio::test]
async fn too_many_headers_is_431() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(echo.addr(), "max_headers = 10", "")).await?;
    let headers: String = (0..20).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let resp = raw::exchange(
        gw.addr("main"),
        format!("GET / HTTP/1.1\r\nhost: api.test\r\n{headers}\r\n"),
        T,
    )
    .await?;
    assert_eq!(resp.status, 431, "{}", resp.head);
    assert_eq!(echo.count(), 0);
    control(&gw).await?;
    assert_eq!(echo.count(), 1);
    resp.expect_rejection(431)
}

#[tokio::test]
async fn stalled_body_is_408() -> Result<()> {
    let sink = upstream::sink().await?;
    let gw = Gateway::start(&conf::proxy(sink.addr(), r#"body_read_timeout = "1s""#, "")).await?;
    let mut c = Raw::connect(gw.addr("main")).await?;
    c.write("POST /up HTTP/1.1\r\nhost: api.test\r\ncontent-length: 100\r\n\r\n0123456789")
        .await?;
    let start = Instant::now();
    let resp = c.read_response(T).await?;
    within_deadline(start.elapsed(), "408")?;
    resp.expect_gateway_error(408)?;
    Ok(())
}

/// Writes `bytes` one per 200 ms until the peer closes; returns when.
async fn trickle_until_closed(c: &mut Raw, bytes: &[u8]) -> Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut sink = [0u8; 1024];
    loop {
        tokio::select! {
            r = c.stream.read(&mut sink) => match r {
                Ok(0) | Err(_) => return Ok(start.elapsed()),
                Ok(_) => {} // e.g. a 408 before the close
            },
            _ = tick.tick() => {
                if next < bytes.len() {
                    if c.stream.write_all(&bytes[next..next + 1]).await.is_err() {
                        return Ok(start.elapsed());
                    }
                    next += 1;
                }
                if start.elapsed() > T {
                    bail!("connection still open after {:?} of trickling", start.elapsed());
                }
            }
        }
    }
}

#[tokio::test]
async fn slowloris_headers_are_cut_off() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(
        echo.addr(),
        r#"header_read_timeout = "1s""#,
        "",
    ))
    .await?;
    let mut c = Raw::connect(gw.addr("main")).await?;
    let head = format!(
        "GET / HTTP/1.1\r\nhost: api.test\r\nx-pad: {}\r\n\r\n",
        "a".repeat(200)
    );
    let took = trickle_until_closed(&mut c, head.as_bytes()).await?;
    within_deadline(took, "slowloris connection closed")?;
    assert_eq!(echo.count(), 0);
    Ok(())
}

#[tokio::test]
async fn silent_connection_is_closed() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(
        echo.addr(),
        r#"first_byte_timeout = "1s""#,
        "",
    ))
    .await?;
    let mut c = Raw::connect(gw.addr("main")).await?;
    let start = Instant::now();
    let (_, end) = c.read_to_end(T).await;
    ensure!(
        end != End::TimedOut,
        "a connection that sent nothing stayed open"
    );
    within_deadline(start.elapsed(), "silent connection closed")?;
    Ok(())
}

/// Sends one request on a fresh connection, reads the answer, then
/// measures how long the idle keep-alive connection stays open.
async fn idle_after_one_request(gw: &Gateway) -> Result<()> {
    let mut c = Raw::connect(gw.addr("main")).await?;
    c.write("GET /idle HTTP/1.1\r\nhost: api.test\r\n\r\n")
        .await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 200);
    let start = Instant::now();
    let (rest, end) = c.read_to_end(T).await;
    ensure!(
        end != End::TimedOut,
        "idle keep-alive connection stayed open"
    );
    within_deadline(start.elapsed(), "idle connection closed")?;
    ensure!(
        raw::status_of(&rest).is_none_or(|s| s == 408),
        "unexpected bytes on idle close: {:?}",
        String::from_utf8_lossy(&rest)
    );
    Ok(())
}

#[tokio::test]
async fn idle_keepalive_is_closed() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(echo.addr(), r#"idle_timeout = "1s""#, "")).await?;
    idle_after_one_request(&gw).await
}

/// Waiting 1.5 s for the upstream is not idleness, and the idle period
/// starts when the response has been sent, not when the request arrived.
#[tokio::test]
async fn slow_exchange_is_not_idle_and_idle_counts_from_the_response() -> Result<()> {
    let slow = upstream::slow_headers(Duration::from_millis(1500)).await?;
    let gw = Gateway::start(&conf::proxy(slow.addr(), r#"idle_timeout = "1s""#, "")).await?;
    idle_after_one_request(&gw).await
}

#[tokio::test]
async fn stalled_tls_handshake_is_closed() -> Result<()> {
    let pki = wasmgate_e2e::tls::Pki::new()?;
    let leaf = pki.leaf("api", &["api.test"])?;
    let echo = upstream::echo().await?;
    let config = crate::tls::tls_config(echo.addr(), &crate::tls::cert_entry(&leaf, true))
        .replace(
            "name = \"tls\"\naddress = \"127.0.0.1:0\"\n",
            "name = \"tls\"\naddress = \"127.0.0.1:0\"\n[listeners.limits]\ntls_handshake_timeout = \"1s\"\n",
        );
    let gw = Gateway::start(&config).await?;
    let mut c = Raw::connect(gw.addr("tls")).await?;
    // A TLS record header announcing a 512-byte ClientHello, and a few bytes of it.
    c.write([
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await?;
    let start = Instant::now();
    let (_, end) = c.read_to_end(T).await;
    ensure!(end != End::TimedOut, "stalled TLS handshake stayed open");
    within_deadline(start.elapsed(), "stalled handshake closed")?;
    Ok(())
}

/// A request on a fresh connection: `Some(status)` if answered, `None` if
/// the connection was refused, closed or reset without an answer.
async fn try_request(addr: std::net::SocketAddr) -> Option<(Raw, u16)> {
    let mut c = Raw::connect(addr).await.ok()?;
    c.write("GET / HTTP/1.1\r\nhost: api.test\r\n\r\n")
        .await
        .ok()?;
    let resp = c.read_response(Duration::from_secs(2)).await.ok()?;
    Some((c, resp.status))
}

/// With `limit` (a `[listeners.limits]` line allowing two connections),
/// two keep-alive connections are served, a third is refused or closed,
/// and closing one frees a slot.
async fn assert_two_connections_max(limit: &str) -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::proxy(echo.addr(), limit, "")).await?;
    let addr = gw.addr("main");
    let (first, s1) = try_request(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("first connection failed"))?;
    let (_second, s2) = try_request(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("second connection failed"))?;
    assert_eq!((s1, s2), (200, 200));

    if let Ok(mut third) = Raw::connect(addr).await {
        let _ = third
            .write("GET / HTTP/1.1\r\nhost: api.test\r\n\r\n")
            .await;
        let (bytes, end) = third.read_to_end(Duration::from_secs(2)).await;
        ensure!(
            raw::status_of(&bytes) != Some(200),
            "a third connection was served ({limit})"
        );
        ensure!(
            end != End::TimedOut,
            "a third connection was neither refused nor closed ({limit})"
        );
    }
    assert_eq!(echo.count(), 2);

    // Closing one frees a slot; the gateway notices the close
    // asynchronously and nothing signals it, so retry for a while.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some((_, 200)) = try_request(addr).await {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no slot freed after closing a connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn connections_per_ip_are_capped() -> Result<()> {
    assert_two_connections_max("max_connections_per_ip = 2").await
}

#[tokio::test]
async fn connections_per_listener_are_capped() -> Result<()> {
    assert_two_connections_max("max_connections = 2").await
}

#[tokio::test]
async fn h2_max_concurrent_streams_is_enforced() -> Result<()> {
    let slow = upstream::slow_headers(Duration::from_millis(400)).await?;
    let gw = Gateway::start(&conf::proxy(
        slow.addr(),
        "h2_max_concurrent_streams = 1",
        "",
    ))
    .await?;
    let h2 = std::sync::Arc::new(wasmgate_e2e::client::h2c(gw.addr("main")).await?);
    // One exchange first, so the client has the server's SETTINGS before
    // it opens streams concurrently.
    let req = http::Request::get("http://api.test/first").body(wasmgate_e2e::client::empty())?;
    assert_eq!(h2.fetch(req).await?.status, 200);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3 {
        let h2 = h2.clone();
        tasks.spawn(async move {
            let req = http::Request::get(format!("http://api.test/{i}"))
                .body(wasmgate_e2e::client::empty())?;
            anyhow::Ok(h2.fetch(req).await?.status)
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r??, 200);
    }
    // One stream at a time: three 400 ms exchanges take at least 1.2 s.
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_millis(1150),
        "3 streams finished in {took:?}: more than one ran at once"
    );
    Ok(())
}
