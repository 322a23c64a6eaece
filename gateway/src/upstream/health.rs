//! Active health checks: one task per upstream that has `[upstreams.health_check]`,
//! checking every endpoint each interval (plus jitter) with an HTTP GET or a
//! TCP connect. An endpoint turns unhealthy after `unhealthy_threshold`
//! failures in a row and healthy again after `healthy_threshold` passes.
//! The task holds only a weak reference: it ends when its upstream is
//! dropped, i.e. when a reload replaced it and the last request on the old
//! snapshot finished.

use super::connect::Conn;
use super::endpoints::Endpoint;
use super::Upstream;
use crate::config::{HealthCheck, HealthCheckKind, UpstreamProtocol};
use crate::metrics;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub(super) fn spawn(up: &Arc<Upstream>) {
    let Some(hc) = up.cfg.health_check.clone() else {
        return;
    };
    let weak = Arc::downgrade(up);
    super::spawn_task(run(weak, hc));
}

async fn run(weak: Weak<Upstream>, hc: HealthCheck) {
    loop {
        {
            let Some(up) = weak.upgrade() else { return };
            let set = up.set.load_full();
            let checks = set.endpoints.iter().map(|e| check_and_record(&up, e, &hc));
            futures_util::future::join_all(checks).await;
        }
        let jitter = if hc.jitter.is_zero() {
            Duration::ZERO
        } else {
            hc.jitter.mul_f64(fastrand::f64())
        };
        tokio::time::sleep(hc.interval + jitter).await;
    }
}

async fn check_and_record(up: &Upstream, e: &Arc<Endpoint>, hc: &HealthCheck) {
    let result = tokio::time::timeout(hc.timeout, check(up, e, hc)).await;
    let ok = match result {
        Ok(Ok(())) => true,
        Ok(Err(reason)) => {
            tracing::debug!(upstream = %up.name, endpoint = %e.address, %reason, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(upstream = %up.name, endpoint = %e.address, "health check timed out");
            false
        }
    };
    let m = metrics::global();
    m.upstream_health_check(&up.name, &e.address, ok);
    if let Some(healthy) = e.record_check(ok, hc.healthy_threshold, hc.unhealthy_threshold) {
        if healthy {
            tracing::info!(upstream = %up.name, endpoint = %e.address, "endpoint healthy again");
        } else {
            tracing::warn!(upstream = %up.name, endpoint = %e.address, "endpoint unhealthy");
        }
    }
    m.upstream_endpoint_healthy(&up.name, &e.address, e.is_healthy());
}

async fn check(up: &Upstream, e: &Endpoint, hc: &HealthCheck) -> Result<(), String> {
    let conn = up
        .connector
        .dial(&e.address, false)
        .await
        .map_err(|err| err.to_string())?;
    if hc.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let host = hc.host.as_deref().unwrap_or(&e.host);
    let status = match up.cfg.protocol {
        UpstreamProtocol::Http1 => http1_get(conn, host, &hc.path).await?,
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
            let scheme = if up.connector.is_tls() {
                "https"
            } else {
                "http"
            };
            h2_get(conn, scheme, host, &hc.path).await?
        }
    };
    let ok = if hc.expected_statuses.is_empty() {
        (200..300).contains(&status)
    } else {
        hc.expected_statuses.contains(&status)
    };
    if ok {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

fn request(uri: &str, host: Option<&str>) -> Result<Request<Empty<Bytes>>, String> {
    let mut b = Request::get(uri).header(header::USER_AGENT, "wasmgate-health-check");
    if let Some(h) = host {
        b = b.header(header::HOST, h);
    }
    b.body(Empty::new()).map_err(|e| e.to_string())
}

async fn http1_get(conn: Conn, host: &str, path: &str) -> Result<u16, String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(conn)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let resp = sender.send_request(request(path, Some(host))?).await;
    driver.abort();
    resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

async fn h2_get(conn: Conn, scheme: &str, host: &str, path: &str) -> Result<u16, String> {
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(conn)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let resp = sender
        .send_request(request(&format!("{scheme}://{host}{path}"), None)?)
        .await;
    driver.abort();
    resp.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}
