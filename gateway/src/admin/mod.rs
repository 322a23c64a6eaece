//! The admin listener: health, readiness, metrics, the active config,
//! upstream state and reload. Bound to loopback by default; it has no authentication, so never
//! expose it publicly.

use crate::metrics;
use crate::runtime::Runtime;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub async fn serve(listener: TcpListener, runtime: Arc<Runtime>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let runtime = runtime.clone();
                async move { Ok::<_, Infallible>(route(req, &runtime).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn route(req: Request<Incoming>, runtime: &Runtime) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n"),
        (&Method::GET, "/readyz") if runtime.is_draining() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n")
        }
        (&Method::GET, "/readyz") => reply(StatusCode::OK, TEXT, "ready\n"),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::global().encode(),
        ),
        (&Method::GET, "/config") => {
            let snap = runtime.current();
            let body =
                serde_json::json!({ "generation": snap.generation, "config": &*snap.config });
            reply(
                StatusCode::OK,
                JSON,
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        (&Method::GET, "/upstreams") => {
            let snap = runtime.current();
            let upstreams: Vec<serde_json::Value> =
                snap.upstreams.iter().map(|u| u.status()).collect();
            let body = serde_json::json!({ "generation": snap.generation, "upstreams": upstreams });
            reply(
                StatusCode::OK,
                JSON,
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        (&Method::POST, "/reload") => match runtime.reload("admin").await {
            Ok(generation) => reply(
                StatusCode::OK,
                JSON,
                serde_json::json!({ "status": "ok", "generation": generation }).to_string(),
            ),
            Err(errors) => {
                let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                reply(
                    StatusCode::BAD_REQUEST,
                    JSON,
                    serde_json::json!({ "status": "error", "errors": list }).to_string(),
                )
            }
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/upstreams" | "/reload") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /healthz /readyz /metrics /config /upstreams, POST /reload\n",
        ),
    }
}
