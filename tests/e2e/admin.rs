//! The admin listener (`/healthz`, `/readyz`, `/metrics`, `/config`) and the
//! access log on stderr.

use anyhow::{ensure, Result};
use http::Request;
use std::time::Duration;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::tls::Pki;
use wasmgate_e2e::{conf, upstream, Gateway};

const T: Duration = Duration::from_secs(5);

/// The sum of every sample of `name` whose labels include all of `labels`
/// in Prometheus/OpenMetrics text; `None` if there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            label_text
                .split(',')
                .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
        };
        if labels.iter().all(|(k, v)| has(k, v)) {
            if let Ok(v) = value.trim().parse::<f64>() {
                *total.get_or_insert(0.0) += v;
            }
        }
    }
    total
}

#[tokio::test]
async fn healthz_and_readyz_answer_while_serving() -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let resp = gw.admin_get("/healthz").await?;
    assert_eq!((resp.status.as_u16(), resp.text().trim()), (200, "ok"));
    assert_eq!(gw.admin_get("/readyz").await?.status, 200);
    assert_eq!(gw.admin_get("/no-such-endpoint").await?.status, 404);
    Ok(())
}

/// Polls `/metrics` until `check` accepts it (metrics are recorded when a
/// response completes, a moment after the client has read it).
pub async fn metrics_until(gw: &Gateway, check: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = gw.admin_get("/metrics").await?.text();
        if check(&text) {
            return Ok(text);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "metrics never matched:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() -> Result<()> {
    let echo = upstream::echo().await?;
    let dead = upstream::refused_addr()?;
    let config = format!(
        r#"
[admin]
address = "127.0.0.1:0"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "backend"
endpoints = ["{}"]
[[upstreams]]
name = "dead"
endpoints = ["{dead}"]
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "backend"
[[routes]]
name = "broken"
path_prefix = "/broken"
upstream = "dead"
"#,
        echo.addr()
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    for _ in 0..3 {
        assert_eq!(http.get(&gw.url("main", "/api/x")).await?.status, 200);
    }
    assert_eq!(http.get(&gw.url("main", "/broken")).await?.status, 502);

    let text = metrics_until(&gw, |t| {
        metric(
            t,
            "wasmgate_requests_total",
            &[("route", "api"), ("status", "200")],
        ) == Some(3.0)
    })
    .await?;
    let broken = metric(
        &text,
        "wasmgate_requests_total",
        &[("route", "broken"), ("status", "502")],
    );
    assert_eq!(broken, Some(1.0), "{text}");
    let errors = metric(
        &text,
        "wasmgate_upstream_errors_total",
        &[("upstream", "dead")],
    );
    ensure!(
        errors >= Some(1.0),
        "no upstream error counted for `dead`:\n{text}"
    );
    let durations = metric(&text, "wasmgate_request_duration_seconds_count", &[]);
    ensure!(
        durations >= Some(4.0),
        "request duration histogram count {durations:?}:\n{text}"
    );
    ensure!(
        text.contains("wasmgate_request_duration_seconds_bucket"),
        "no duration buckets:\n{text}"
    );
    ensure!(
        metric(
            &text,
            "wasmgate_active_connections",
            &[("listener", "main")]
        )
        .is_some(),
        "no active connection gauge for listener main:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn config_endpoint_shows_the_active_config_with_keys_redacted() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("api", &["api.test"])?;
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&crate::tls::tls_config(
        echo.addr(),
        &crate::tls::cert_entry(&leaf, true),
    ))
    .await?;
    let resp = gw.admin_get("/config").await?;
    assert_eq!(resp.status, 200);
    let text = resp.text();
    let j = resp.json()?;
    ensure!(j.is_object(), "/config is not a JSON object: {text}");
    let key_path = leaf.key.display().to_string();
    ensure!(
        !text.contains(&key_path),
        "/config shows the key path:\n{text}"
    );
    ensure!(!text.contains("PRIVATE KEY"), "/config shows key material");
    ensure!(
        text.contains("<redacted>"),
        "/config has no <redacted> key:\n{text}"
    );
    ensure!(
        text.contains("api.test"),
        "/config lacks the certificate's names:\n{text}"
    );
    ensure!(
        text.contains(&echo.addr().to_string()),
        "/config lacks the upstream:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn access_log_pretty_has_request_id_route_and_status() -> Result<()> {
    let echo = upstream::echo().await?;
    let mut gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let resp = Http1::new()
        .fetch(
            Request::get(gw.url("main", "/logged"))
                .header("x-request-id", "pretty-log-1")
                .body(client::empty())?,
        )
        .await?;
    assert_eq!(resp.status, 200);
    let line = gw.wait_stderr(&["request_id=", "pretty-log-1"], T).await?;
    ensure!(
        line.contains("route=") && line.contains("api"),
        "no route in {line:?}"
    );
    ensure!(line.contains("status=200"), "no status=200 in {line:?}");
    Ok(())
}

/// Finds `key` anywhere in a JSON object tree (tracing nests event fields).
fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|c| find_key(c, key))),
        _ => None,
    }
}

#[tokio::test]
async fn access_log_json_is_one_object_per_line() -> Result<()> {
    let echo = upstream::echo().await?;
    let config = format!("[log]\nformat = \"json\"\n{}", conf::simple(echo.addr()));
    let mut gw = Gateway::start(&config).await?;
    let resp = Http1::new()
        .fetch(
            Request::get(gw.url("main", "/logged"))
                .header("x-request-id", "json-log-1")
                .body(client::empty())?,
        )
        .await?;
    assert_eq!(resp.status, 200);
    let line = gw.wait_stderr(&["json-log-1"], T).await?;
    let j: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("access log line is not JSON ({e}): {line}"))?;
    assert_eq!(
        find_key(&j, "request_id").and_then(|v| v.as_str()),
        Some("json-log-1")
    );
    assert_eq!(find_key(&j, "route").and_then(|v| v.as_str()), Some("api"));
    let status = find_key(&j, "status").map(|v| v.to_string().trim_matches('"').to_string());
    assert_eq!(status.as_deref(), Some("200"), "{line}");
    // Every stderr line is JSON in this format.
    for l in gw.stderr().lines().filter(|l| !l.trim().is_empty()) {
        ensure!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "non-JSON log line: {l}"
        );
    }
    Ok(())
}
