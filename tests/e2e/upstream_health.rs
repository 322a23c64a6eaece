//! Health: passive (outlier ejection of an endpoint that fails, with
//! retries hiding the failures from clients) and active (HTTP and TCP
//! checks taking an endpoint out and putting it back), shown on the admin
//! listener's `/upstreams` and in metrics.

use super::upstream_balance::{config, endpoints, list};
use anyhow::{bail, ensure, Result};
use std::time::{Duration, Instant};
use wasmgate_e2e::client::Http1;
use wasmgate_e2e::upstream::Mode;
use wasmgate_e2e::Gateway;

/// The `/upstreams` entry of endpoint `addr` of upstream `backend`.
async fn endpoint_state(gw: &Gateway, addr: &str) -> Result<serde_json::Value> {
    let resp = gw.admin_get("/upstreams").await?;
    ensure!(resp.status == 200, "/upstreams: {}", resp.status);
    let json = resp.json()?;
    let eps = json["upstreams"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match eps.into_iter().find(|e| e["address"] == addr) {
        Some(e) => Ok(e),
        None => bail!("no endpoint {addr} in {json}"),
    }
}

/// Polls `/upstreams` until endpoint `addr`'s `key` equals `want`.
async fn wait_state(gw: &Gateway, addr: &str, key: &str, want: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The endpoint may not be there yet (DNS).
        let e = endpoint_state(gw, addr)
            .await
            .unwrap_or_else(|e| serde_json::json!({ "missing": e.to_string() }));
        if e[key] == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{addr} never got {key}={want}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn killed_endpoint_is_ejected_without_client_visible_errors() -> Result<()> {
    let eps = endpoints(3).await?;
    let extra = r#"
[upstreams.outlier]
consecutive_connect_failures = 2
base_ejection_time = "30s"
max_ejection_percent = 50
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let client = Http1::new();
    let url = gw.url("main", "/");
    for i in 0..150 {
        if i == 30 {
            eps[1].stop();
        }
        let resp = client.get(&url).await?;
        ensure!(
            resp.status == 200,
            "request {i}: {} {}",
            resp.status,
            resp.text()
        );
    }
    let e1 = endpoint_state(&gw, &eps[1].addr().to_string()).await?;
    ensure!(e1["ejected"] == true, "{e1}");
    ensure!(e1["ejections"] == 1, "{e1}");
    let metrics = gw.admin_get("/metrics").await?.text();
    ensure!(
        metrics.contains("wasmgate_upstream_ejections_total{upstream=\"backend\""),
        "no ejection metric"
    );
    ensure!(
        metrics.contains(
            "wasmgate_upstream_retries_total{upstream=\"backend\",reason=\"connect_failure\"}"
        ),
        "no retry metric"
    );
    Ok(())
}

#[tokio::test]
async fn endpoint_failing_http_health_checks_is_taken_out_and_readmitted() -> Result<()> {
    let eps = endpoints(2).await?;
    let extra = r#"
[upstreams.health_check]
path = "/health"
interval = "50ms"
timeout = "40ms"
jitter = "10ms"
unhealthy_threshold = 2
healthy_threshold = 2
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let sick = eps[0].addr().to_string();
    let client = Http1::new();
    let url = gw.url("main", "/");

    eps[0].set_health(Mode::Status(503));
    wait_state(&gw, &sick, "healthy", false).await?;
    let before = eps[0].traffic();
    for _ in 0..40 {
        let resp = client.get(&url).await?;
        ensure!(resp.status == 200 && resp.text() == "e1", "{}", resp.text());
    }
    ensure!(
        eps[0].traffic() == before,
        "an unhealthy endpoint got traffic"
    );
    let metrics = gw.admin_get("/metrics").await?.text();
    ensure!(
        metrics.contains(&format!(
            "wasmgate_upstream_endpoint_healthy{{upstream=\"backend\",endpoint=\"{sick}\"}} 0"
        )),
        "health gauge not 0:\n{metrics}"
    );

    eps[0].set_health(Mode::Ok);
    wait_state(&gw, &sick, "healthy", true).await?;
    let mut back = 0;
    for _ in 0..10 {
        if client.get(&url).await?.text() == "e0" {
            back += 1;
        }
    }
    ensure!(back == 5, "readmitted endpoint got {back} of 10");
    Ok(())
}

#[tokio::test]
async fn tcp_health_check_follows_an_endpoint_that_goes_away_and_comes_back() -> Result<()> {
    let eps = endpoints(2).await?;
    let extra = r#"
[upstreams.health_check]
type = "tcp"
interval = "50ms"
timeout = "40ms"
unhealthy_threshold = 1
healthy_threshold = 1
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let addr = eps[1].addr().to_string();
    eps[1].stop();
    wait_state(&gw, &addr, "healthy", false).await?;
    let client = Http1::new();
    for _ in 0..10 {
        let resp = client.get(&gw.url("main", "/")).await?;
        ensure!(resp.status == 200 && resp.text() == "e0");
    }
    eps[1].restart().await?;
    wait_state(&gw, &addr, "healthy", true).await?;
    let before = eps[1].traffic();
    for _ in 0..10 {
        ensure!(client.get(&gw.url("main", "/")).await?.status == 200);
    }
    ensure!(
        eps[1].traffic() == before + 5,
        "came back but got no traffic"
    );
    Ok(())
}

#[tokio::test]
async fn panic_threshold_balances_over_all_when_too_few_are_healthy() -> Result<()> {
    let eps = endpoints(2).await?;
    let extra = r#"
panic_threshold = 50
[upstreams.health_check]
path = "/health"
interval = "50ms"
timeout = "40ms"
unhealthy_threshold = 1
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    // Both fail their checks: 0% healthy is below 50%, so both still serve.
    eps[0].set_health(Mode::Status(500));
    eps[1].set_health(Mode::Status(500));
    wait_state(&gw, &eps[0].addr().to_string(), "healthy", false).await?;
    wait_state(&gw, &eps[1].addr().to_string(), "healthy", false).await?;
    let client = Http1::new();
    for _ in 0..10 {
        ensure!(client.get(&gw.url("main", "/")).await?.status == 200);
    }
    ensure!(eps[0].traffic() == 5 && eps[1].traffic() == 5);
    Ok(())
}

#[tokio::test]
async fn health_checks_stop_when_the_upstream_is_reloaded_away() -> Result<()> {
    let eps = endpoints(1).await?;
    let extra = r#"
[upstreams.health_check]
path = "/health"
interval = "50ms"
timeout = "40ms"
"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let checks = |e: &wasmgate_e2e::upstream::Controlled| {
        e.seen().iter().filter(|s| s.path == "/health").count()
    };
    // Wait for a few checks.
    let deadline = Instant::now() + Duration::from_secs(5);
    while checks(&eps[0]) < 3 {
        ensure!(Instant::now() < deadline, "no health checks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.write_config(&config(&list(&eps), ""))?;
    let (status, body) = gw.reload_admin().await?;
    ensure!(status == 200, "reload: {body}");
    // Let a request finish on the new snapshot so nothing holds the old one.
    ensure!(Http1::new().get(&gw.url("main", "/")).await?.status == 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = checks(&eps[0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        checks(&eps[0]) == after,
        "health checks went on after the reload"
    );
    Ok(())
}

#[tokio::test]
async fn host_names_are_resolved_into_endpoints() -> Result<()> {
    let eps = endpoints(1).await?;
    let port = eps[0].addr().port();
    let extra = r#"dns_refresh = "100ms""#;
    let gw = Gateway::start(&config(&format!("\"localhost:{port}\""), extra)).await?;
    // After the first lookup the endpoint is the address, still named localhost.
    let addr = format!("127.0.0.1:{port}");
    wait_state(&gw, &addr, "healthy", true).await?;
    let e = endpoint_state(&gw, &addr).await?;
    ensure!(e["host"] == "localhost", "{e}");
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    ensure!(resp.status == 200 && resp.text() == "e0");
    Ok(())
}
