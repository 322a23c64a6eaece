//! Upstreams for body handling: one that sends the request body back, one
//! whose response body waits for the test's go-ahead half-way.

use super::http::{body_of, record, serve_http, Handler, Proto, RespBody};
use super::{State, Upstream};
use crate::BoxError;
use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;
use tokio::sync::Notify;

/// HTTP/1.1 + h2c server answering 200 with the request body as its body,
/// the request's `content-type`, and what framed the request body in
/// `x-seen-content-length` / `x-seen-transfer-encoding` (`-` if absent).
pub async fn mirror() -> Result<Upstream> {
    let handler: Handler = Arc::new(|req: Request<Incoming>, state: Arc<State>| {
        Box::pin(async move {
            state.request();
            let mut seen = record(&req);
            let seen_header = |name: &str| seen.header(name).unwrap_or("-").to_string();
            let (length, chunked) = (
                seen_header("content-length"),
                seen_header("transfer-encoding"),
            );
            let content_type = seen_header("content-type");
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
            Response::builder()
                .header("content-type", content_type)
                .header("x-seen-content-length", length)
                .header("x-seen-transfer-encoding", chunked)
                .body(body_of(body))
                .unwrap()
        })
    });
    serve_http(Proto::Auto, handler).await
}

/// Releases the held-back half of a [`gated`] upstream's response.
#[derive(Clone, Default)]
pub struct Gate(Arc<Notify>);

impl Gate {
    /// Lets one response finish (or the next one, if none is waiting).
    pub fn open(&self) {
        self.0.notify_one();
    }
}

/// HTTP/1.1 + h2c server answering 200 with a chunked body: `first` at
/// once, then `second` only after [`Gate::open`].
pub async fn gated(first: &'static str, second: &'static str) -> Result<(Upstream, Gate)> {
    let gate = Gate::default();
    let held = gate.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>, state: Arc<State>| {
        let held = held.clone();
        Box::pin(async move {
            state.request();
            state.seen.lock().unwrap().push(record(&req));
            let frames = futures_util::stream::unfold(0, move |step| {
                let held = held.clone();
                async move {
                    let data = match step {
                        0 => first,
                        1 => {
                            held.0.notified().await;
                            second
                        }
                        _ => return None,
                    };
                    let frame = Frame::data(Bytes::from_static(data.as_bytes()));
                    Some((Ok::<_, BoxError>(frame), step + 1))
                }
            });
            let body: RespBody = BodyExt::boxed(StreamBody::new(frames));
            Response::new(body)
        })
    });
    Ok((serve_http(Proto::Auto, handler).await?, gate))
}
