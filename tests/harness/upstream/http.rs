//! hyper-based upstreams: HTTP/1.1 + h2c (auto-detected) or h2c only.

use super::{accept_loop, bind, Seen, State, Upstream};
use crate::BoxError;
use anyhow::Result;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(super) type RespBody = BoxBody<Bytes, BoxError>;
pub(super) type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
            Arc<State>,
        ) -> Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>
        + Send
        + Sync,
>;

#[derive(Clone, Copy)]
pub(super) enum Proto {
    /// HTTP/1.1 and h2c (prior knowledge), detected per connection.
    Auto,
    /// h2c only.
    H2,
}

pub(super) async fn serve_http(proto: Proto, handler: Handler) -> Result<Upstream> {
    let (listener, addr) = bind().await?;
    let state = Arc::new(State::default());
    let task = accept_loop(listener, state.clone(), move |stream, state| {
        let handler = handler.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let fut = handler(req, state.clone());
                async move { Ok::<_, std::convert::Infallible>(fut.await) }
            });
            let io = TokioIo::new(stream);
            match proto {
                Proto::Auto => {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(io, svc)
                        .await;
                }
                Proto::H2 => {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                }
            }
        }
    });
    Ok(Upstream { addr, state, task })
}

pub(super) fn body_of(data: impl Into<Bytes>) -> RespBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub(super) fn record(req: &Request<Incoming>) -> Seen {
    Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: 0,
    }
}

/// Reads a body frame by frame, counting bytes without keeping them.
async fn count_body(body: Incoming, state: &State) -> Result<u64, hyper::Error> {
    let mut body = body;
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
            state.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    }
    Ok(n)
}

/// Echo JSON for a request: method, path (with query), version, headers
/// (name → list of values), body length, and the URI authority if any.
fn echo_json(seen: &Seen, authority: Option<String>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (n, v) in &seen.headers {
        let entry = headers
            .entry(n.clone())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(a) = entry {
            a.push(serde_json::Value::String(v.clone()));
        }
    }
    serde_json::json!({
        "method": seen.method,
        "path": seen.path,
        "version": seen.version,
        "headers": headers,
        "body_len": seen.body_len,
        "authority": authority,
    })
}

fn echo_handler(delay: Duration) -> Handler {
    Arc::new(move |req: Request<Incoming>, state: Arc<State>| {
        Box::pin(async move {
            state.request();
            let mut seen = record(&req);
            let authority = req.uri().authority().map(|a| a.to_string());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match count_body(req.into_body(), &state).await {
                Ok(n) => seen.body_len = n,
                Err(e) => {
                    return Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(body_of(format!("body error: {e}")))
                        .unwrap()
                }
            }
            state.seen.lock().unwrap().push(seen.clone());
            Response::builder()
                .header("content-type", "application/json")
                .body(body_of(echo_json(&seen, authority).to_string()))
                .unwrap()
        })
    })
}

/// HTTP/1.1 + h2c server answering 200 with a JSON description of the
/// request: `{"method","path","version","headers":{name:[values]},"body_len","authority"}`.
pub async fn echo() -> Result<Upstream> {
    serve_http(Proto::Auto, echo_handler(Duration::ZERO)).await
}

/// [`echo`] that waits `delay` before answering (after counting the request).
pub async fn slow_headers(delay: Duration) -> Result<Upstream> {
    serve_http(Proto::Auto, echo_handler(delay)).await
}

/// HTTP/1.1 + h2c server that consumes the request body without keeping it
/// and answers 200 with the byte count as text.
pub async fn sink() -> Result<Upstream> {
    let handler: Handler = Arc::new(|req: Request<Incoming>, state: Arc<State>| {
        Box::pin(async move {
            state.request();
            let mut seen = record(&req);
            let n = count_body(req.into_body(), &state).await;
            seen.body_len = *n.as_ref().unwrap_or(&0);
            state.seen.lock().unwrap().push(seen);
            match n {
                Ok(n) => Response::new(body_of(n.to_string())),
                Err(e) => Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(body_of(format!("body error: {e}")))
                    .unwrap(),
            }
        })
    });
    serve_http(Proto::Auto, handler).await
}

/// HTTP/1.1 + h2c server that answers 200 with `n` bytes of `b'x'` generated
/// in 64 KiB chunks (with a content-length).
pub async fn source(n: u64) -> Result<Upstream> {
    let handler: Handler = Arc::new(move |req: Request<Incoming>, state: Arc<State>| {
        Box::pin(async move {
            state.request();
            state.seen.lock().unwrap().push(record(&req));
            static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
            let st = state.clone();
            let chunks = futures_util::stream::unfold(n, move |left| {
                let st = st.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let k = left.min(CHUNK.len() as u64);
                    st.bytes.fetch_add(k, Ordering::SeqCst);
                    let frame = Frame::data(Bytes::from_static(&CHUNK[..k as usize]));
                    Some((Ok::<_, BoxError>(frame), left - k))
                }
            });
            Response::builder()
                .header("content-length", n.to_string())
                .body(BodyExt::boxed(StreamBody::new(chunks)))
                .unwrap()
        })
    });
    serve_http(Proto::Auto, handler).await
}

/// h2c-only server shaped like a gRPC service: reads the whole request,
/// answers 200 `application/grpc`, echoes the body, then sends the trailers
/// `grpc-status: 0` and `grpc-message: ok`.
pub async fn grpc_like() -> Result<Upstream> {
    let handler: Handler = Arc::new(|req: Request<Incoming>, state: Arc<State>| {
        Box::pin(async move {
            state.request();
            let mut seen = record(&req);
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(body_of(format!("body error: {e}")))
                        .unwrap()
                }
            };
            seen.body_len = body.len() as u64;
            state.seen.lock().unwrap().push(seen);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("ok"));
            let frames = futures_util::stream::iter(vec![
                Ok::<_, BoxError>(Frame::data(body)),
                Ok(Frame::trailers(trailers)),
            ]);
            Response::builder()
                .header("content-type", "application/grpc")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap()
        })
    });
    serve_http(Proto::H2, handler).await
}

/// h2c-only server that sends response headers, 100 bytes of a declared
/// 1000, then resets the stream (RST_STREAM INTERNAL_ERROR).
pub async fn reset_mid_body_h2() -> Result<Upstream> {
    let handler: Handler = Arc::new(|req: Request<Incoming>, state: Arc<State>| {
        Box::pin(async move {
            state.request();
            state.seen.lock().unwrap().push(record(&req));
            let frames = futures_util::stream::iter(vec![
                Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'a'; 100]))),
                Err("upstream gives up mid-body".into()),
            ]);
            // Let the first frame reach the peer before the reset.
            let frames = frames.then(|f| async move {
                if f.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                f
            });
            Response::builder()
                .header("content-length", "1000")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap()
        })
    });
    serve_http(Proto::H2, handler).await
}
