//! A WebSocket echo upstream (tokio-tungstenite).

use super::{accept_loop, bind, Seen, State, Upstream};
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};

/// WebSocket echo server (tokio-tungstenite): echoes text and binary
/// messages, answers close with close. `count()` is completed handshakes.
pub async fn ws_echo() -> Result<Upstream> {
    let (listener, addr) = bind().await?;
    let state = Arc::new(State::default());
    let task = accept_loop(listener, state.clone(), |stream, state| async move {
        let headers = Arc::new(Mutex::new(None));
        let h = headers.clone();
        // The callback's error type is tungstenite's (large) error response.
        #[allow(clippy::result_large_err)]
        let cb =
            move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                  resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                *h.lock().unwrap() = Some(Seen {
                    method: req.method().to_string(),
                    path: req.uri().to_string(),
                    version: format!("{:?}", req.version()),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body_len: 0,
                });
                Ok(resp)
            };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
            return;
        };
        if let Some(seen) = headers.lock().unwrap().take() {
            state.seen.lock().unwrap().push(seen);
        }
        state.request();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(Upstream { addr, state, task })
}
