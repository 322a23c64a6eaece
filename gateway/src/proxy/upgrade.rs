//! Tunnels for upgraded connections (WebSocket and other `Upgrade`s).
//!
//! The upstream request is sent without a body and the client's bytes stay
//! in hyper's buffer until both sides have switched protocols, so nothing the
//! client sends reaches the upstream before the upstream's `101`.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

pub fn tunnel(client: OnUpgrade, upstream: OnUpgrade, request_id: http::HeaderValue) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(request_id = ?request_id, error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(request_id = ?request_id, up, down, "tunnel closed"),
            Err(e) => {
                tracing::debug!(request_id = ?request_id, error = %e, "tunnel ended with error")
            }
        }
    });
}
