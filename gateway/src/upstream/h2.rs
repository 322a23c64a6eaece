//! HTTP/2 to upstreams (h2c with prior knowledge, or TLS with ALPN `h2`):
//! one multiplexed connection per endpoint, re-dialled when it closes. Kept
//! apart from the HTTP/1 pool because here the request's `:authority` (the
//! client's host) and the address dialled (the endpoint) differ, which the
//! generic pooled client cannot express.

use super::connect::{ConnectError, Connector};
use super::{Body, SendError};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub struct H2Pool {
    connector: Connector,
    conns: Mutex<HashMap<String, SendRequest<Body>>>,
    /// Held while dialling, so concurrent first requests share one
    /// connection instead of racing to open one each.
    dialling: tokio::sync::Mutex<()>,
}

impl H2Pool {
    pub fn new(connector: Connector) -> H2Pool {
        H2Pool {
            connector,
            conns: Mutex::new(HashMap::new()),
            dialling: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, endpoint: &str) -> Option<SendRequest<Body>> {
        let conns = self.conns.lock().ok()?;
        conns.get(endpoint).filter(|s| !s.is_closed()).cloned()
    }

    async fn dial(&self, endpoint: &str) -> Result<SendRequest<Body>, SendError> {
        let _dialling = self.dialling.lock().await;
        if let Some(s) = self.cached(endpoint) {
            return Ok(s);
        }
        let conn = self
            .connector
            .dial(endpoint, true)
            .await
            .map_err(SendError::from_connect)?;
        if self.connector.is_tls() && !conn.h2 {
            return Err(SendError::from_connect(ConnectError::NoH2));
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(conn)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let endpoint_name = endpoint.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %endpoint_name, error = %e, "h2 upstream connection closed");
            }
        });
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(endpoint.to_string(), sender.clone());
        }
        Ok(sender)
    }

    pub async fn send(
        &self,
        endpoint: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.cached(endpoint) {
            Some(s) => s,
            None => self.dial(endpoint).await?,
        };
        if sender.ready().await.is_err() {
            if let Ok(mut conns) = self.conns.lock() {
                conns.remove(endpoint);
            }
            sender = self.dial(endpoint).await?;
        }
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Exchange(e.into()))
    }

    /// Forgets connections to endpoints no longer in the set.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.retain(|k, _| keep(k));
        }
    }
}
