//! Graceful shutdown: SIGTERM/SIGINT stop accepting, let in-flight
//! requests finish within `shutdown_grace`, print `stopped` and exit 0.

use anyhow::{ensure, Result};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wasmgate_e2e::client::Http1;
use wasmgate_e2e::raw::{self, End, Raw};
use wasmgate_e2e::{upstream, Gateway};

const T: Duration = Duration::from_secs(5);

fn config(upstream: SocketAddr, grace: &str) -> String {
    format!(
        r#"
shutdown_grace = "{grace}"
[admin]
address = "127.0.0.1:0"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "backend"
endpoints = ["{upstream}"]
[[routes]]
name = "api"
upstream = "backend"
"#
    )
}

/// A new connection after `draining` is refused, or closed unanswered.
async fn assert_not_served(addr: SocketAddr) -> Result<()> {
    let Ok(mut c) = Raw::connect(addr).await else {
        return Ok(()); // refused
    };
    let _ = c.write("GET / HTTP/1.1\r\nhost: api.test\r\n\r\n").await;
    let (bytes, end) = c.read_to_end(Duration::from_secs(1)).await;
    ensure!(
        end != End::TimedOut,
        "a new connection during drain was neither refused nor closed"
    );
    ensure!(
        raw::status_of(&bytes) != Some(200),
        "a new connection during drain was served"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() -> Result<()> {
    let slow = upstream::slow_headers(Duration::from_secs(1)).await?;
    let mut gw = Gateway::start(&config(slow.addr(), "10s")).await?;
    let url = gw.url("main", "/slow");
    let in_flight = tokio::spawn(async move { Http1::new().get(&url).await });
    slow.wait_count(1, T).await?;

    gw.sigterm()?;
    gw.wait_line("draining", T).await?;
    assert_eq!(
        gw.admin_get("/readyz").await?.status,
        503,
        "readyz while draining"
    );
    assert_not_served(gw.addr("main")).await?;

    let resp = in_flight.await??;
    assert_eq!(
        resp.status,
        200,
        "in-flight request during drain: {}",
        resp.text()
    );
    gw.wait_line("stopped", T).await?;
    let status = gw.wait_exit(T).await?;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert_eq!(slow.count(), 1);
    Ok(())
}

#[tokio::test]
async fn sigint_also_drains_and_exits_0() -> Result<()> {
    let echo = upstream::echo().await?;
    let mut gw = Gateway::start(&config(echo.addr(), "10s")).await?;
    assert_eq!(Http1::new().get(&gw.url("main", "/")).await?.status, 200);
    gw.sigint()?;
    gw.wait_line("draining", T).await?;
    gw.wait_line("stopped", T).await?;
    assert_eq!(gw.wait_exit(T).await?.code(), Some(0));
    Ok(())
}

#[tokio::test]
async fn idle_keepalive_connections_do_not_delay_exit() -> Result<()> {
    let echo = upstream::echo().await?;
    let mut gw = Gateway::start(&config(echo.addr(), "10s")).await?;
    // An idle keep-alive connection (default idle_timeout is 60 s).
    let mut idle = Raw::connect(gw.addr("main")).await?;
    idle.write("GET / HTTP/1.1\r\nhost: api.test\r\n\r\n")
        .await?;
    assert_eq!(idle.read_response(T).await?.status, 200);

    let start = Instant::now();
    gw.sigterm()?;
    gw.wait_line("stopped", T).await?;
    assert_eq!(gw.wait_exit(T).await?.code(), Some(0));
    ensure!(
        start.elapsed() < Duration::from_secs(2),
        "exit took {:?} with only an idle connection open",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn grace_period_bounds_the_drain() -> Result<()> {
    let hole = upstream::blackhole().await?;
    let mut gw = Gateway::start(&config(hole.addr(), "1s")).await?;
    let url = gw.url("main", "/never");
    let in_flight = tokio::spawn(async move { Http1::new().get(&url).await });
    hole.wait_connections(1, T).await?;

    let start = Instant::now();
    gw.sigterm()?;
    gw.wait_line("draining", T).await?;
    let status = gw.wait_exit(T).await?;
    let took = start.elapsed();
    ensure!(
        (Duration::from_millis(800)..Duration::from_millis(3000)).contains(&took),
        "exit {took:?} after SIGTERM with shutdown_grace = 1s"
    );
    assert_eq!(status.code(), Some(0));
    gw.wait_line("stopped", T).await?;
    // The abandoned request ends (with an error or an error status), it does not hang.
    let outcome = tokio::time::timeout(T, in_flight).await?;
    if let Ok(Ok(resp)) = outcome {
        ensure!(resp.status != 200, "a request to a blackhole succeeded");
    }
    Ok(())
}
