//! Retries, the retry budget, timeouts and circuit breaking.

use super::upstream_balance::{config, endpoints, list};
use anyhow::{ensure, Result};
use http::Request;
use std::time::{Duration, Instant};
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::upstream::Mode;
use wasmgate_e2e::Gateway;

#[tokio::test]
async fn retry_on_status_goes_to_another_endpoint() -> Result<()> {
    let eps = endpoints(2).await?;
    eps[0].set_mode(Mode::Status(503));
    let extra = r#"
[upstreams.retry]
on = ["503"]
[upstreams.outlier]
consecutive_5xx = 1000
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let client = Http1::new();
    for _ in 0..20 {
        let resp = client.get(&gw.url("main", "/")).await?;
        ensure!(
            resp.status == 200 && resp.text() == "e1",
            "{} {}",
            resp.status,
            resp.text()
        );
    }
    // Requests that went to e0 first were retried on e1, which saw the
    // attempt number.
    let first = eps[0].traffic();
    ensure!(first >= 10, "e0 saw {first}");
    let retried = eps[1]
        .seen()
        .iter()
        .filter(|s| s.header("x-wasmgate-attempts") == Some("2"))
        .count();
    ensure!(
        retried == first,
        "{retried} retried requests reached e1, e0 saw {first}"
    );
    let log = gw.stderr();
    ensure!(log.contains("attempts=2"), "access log lacks attempts=2");
    Ok(())
}

#[tokio::test]
async fn post_is_not_retried_by_default_but_get_is() -> Result<()> {
    let eps = endpoints(1).await?;
    eps[0].set_mode(Mode::Status(503));
    let extra = r#"
[upstreams.retry]
on = ["503"]
max_retries = 1
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let client = Http1::new();
    let resp = client
        .fetch(Request::post(gw.url("main", "/")).body(client::full("payload"))?)
        .await?;
    ensure!(resp.status == 503 && resp.text() == "e0");
    ensure!(
        eps[0].traffic() == 1,
        "POST was sent {} times",
        eps[0].traffic()
    );
    let resp = client.get(&gw.url("main", "/")).await?;
    ensure!(resp.status == 503, "the last upstream answer is returned");
    ensure!(
        eps[0].traffic() == 3,
        "GET was sent {} times",
        eps[0].traffic() - 1
    );
    Ok(())
}

#[tokio::test]
async fn route_may_allow_retrying_post_without_a_body() -> Result<()> {
    let eps = endpoints(1).await?;
    eps[0].set_mode(Mode::Status(503));
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "backend"
endpoints = ["{}"]
[[routes]]
name = "api"
upstream = "backend"
[routes.retry]
on = ["503"]
methods = ["POST"]
max_retries = 2
"#,
        eps[0].addr()
    ))
    .await?;
    let resp = Http1::new()
        .fetch(Request::post(gw.url("main", "/")).body(client::empty())?)
        .await?;
    ensure!(resp.status == 503);
    ensure!(eps[0].traffic() == 3, "sent {} times", eps[0].traffic());
    Ok(())
}

#[tokio::test]
async fn retry_budget_stops_a_retry_storm() -> Result<()> {
    let eps = endpoints(2).await?;
    for e in &eps {
        e.set_mode(Mode::Status(503));
        e.set_delay(Duration::from_millis(100));
    }
    let extra = r#"
[upstreams.retry]
on = ["503"]
max_retries = 3
budget_percent = 10
min_retry_concurrency = 1
[upstreams.outlier]
consecutive_5xx = 1000
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let n = 40;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = gw.url("main", "/");
        tasks.push(tokio::spawn(async move {
            Http1::unpooled().get(&url).await.map(|r| r.status)
        }));
    }
    for t in tasks {
        ensure!(t.await?? == 503);
    }
    let total = eps[0].traffic() + eps[1].traffic();
    // Without a budget: 4 attempts each, 160 in all.
    ensure!(
        total < n * 3 / 2,
        "{total} upstream requests for {n} client requests"
    );
    let metrics = gw.admin_get("/metrics").await?.text();
    ensure!(
        metrics.contains("wasmgate_upstream_retry_budget_exhausted_total{upstream=\"backend\"}"),
        "no budget metric"
    );
    Ok(())
}

#[tokio::test]
async fn per_try_timeout_is_504_or_retried_elsewhere() -> Result<()> {
    let eps = endpoints(2).await?;
    eps[0].set_mode(Mode::Hang);
    let extra = r#"
per_try_timeout = "200ms"
[upstreams.retry]
on = ["timeout"]
[upstreams.outlier]
consecutive_5xx = 1000
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let client = Http1::new();
    for _ in 0..4 {
        let resp = client.get(&gw.url("main", "/")).await?;
        ensure!(resp.status == 200 && resp.text() == "e1");
    }
    // Without retries: 504 after the per-try timeout.
    eps[1].set_mode(Mode::Hang);
    let start = Instant::now();
    let resp = client.get(&gw.url("main", "/")).await?;
    resp.expect_gateway_error(504)?;
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_millis(380) && took < Duration::from_secs(2),
        "504 after {took:?}: two tries of 200ms"
    );
    Ok(())
}

#[tokio::test]
async fn request_timeout_bounds_all_attempts() -> Result<()> {
    let eps = endpoints(2).await?;
    for e in &eps {
        e.set_mode(Mode::Hang);
    }
    let extra = r#"
per_try_timeout = "300ms"
request_timeout = "500ms"
[upstreams.retry]
on = ["timeout"]
max_retries = 5
[upstreams.outlier]
consecutive_5xx = 1000
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let start = Instant::now();
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    resp.expect_gateway_error(504)?;
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "504 after {took:?}; request_timeout is 500ms"
    );
    ensure!(resp.text().contains("request timeout"), "{}", resp.text());
    Ok(())
}

#[tokio::test]
async fn route_overrides_the_per_try_timeout() -> Result<()> {
    let eps = endpoints(1).await?;
    eps[0].set_mode(Mode::Hang);
    let gw = Gateway::start(&format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "backend"
endpoints = ["{}"]
per_try_timeout = "30s"
[[routes]]
name = "api"
upstream = "backend"
per_try_timeout = "150ms"
"#,
        eps[0].addr()
    ))
    .await?;
    let start = Instant::now();
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    resp.expect_gateway_error(504)?;
    ensure!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn circuit_breaker_overflow_is_503_at_once() -> Result<()> {
    let eps = endpoints(1).await?;
    eps[0].set_mode(Mode::Hang);
    let extra = r#"
[upstreams.circuit_breaker]
max_requests = 2
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let url = gw.url("main", "/");
    let mut hung = Vec::new();
    for _ in 0..2 {
        let url = url.clone();
        hung.push(tokio::spawn(
            async move { Http1::unpooled().get(&url).await },
        ));
    }
    eps[0].wait_traffic(2, Duration::from_secs(5)).await?;
    let start = Instant::now();
    let resp = Http1::unpooled().get(&url).await?;
    let took = start.elapsed();
    resp.expect_gateway_error(503)?;
    ensure!(resp.text().contains("upstream overflow"), "{}", resp.text());
    ensure!(took < Duration::from_millis(500), "overflow took {took:?}");
    ensure!(
        eps[0].traffic() == 2,
        "the overflowing request reached the upstream"
    );
    let metrics = gw.admin_get("/metrics").await?.text();
    ensure!(
        metrics.contains(
            "wasmgate_upstream_overflow_total{upstream=\"backend\",reason=\"requests\"} 1"
        ),
        "no overflow metric"
    );
    for h in hung {
        h.abort();
    }
    Ok(())
}

#[tokio::test]
async fn connection_limit_overflow_is_503() -> Result<()> {
    let eps = endpoints(1).await?;
    eps[0].set_mode(Mode::Hang);
    let extra = r#"
[upstreams.circuit_breaker]
max_connections = 1
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let url = gw.url("main", "/");
    let first = {
        let url = url.clone();
        tokio::spawn(async move { Http1::unpooled().get(&url).await })
    };
    eps[0].wait_traffic(1, Duration::from_secs(5)).await?;
    let resp = Http1::unpooled().get(&url).await?;
    resp.expect_gateway_error(503)?;
    ensure!(resp.text().contains("connections"), "{}", resp.text());
    first.abort();
    Ok(())
}
