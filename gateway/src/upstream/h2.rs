//! HTTP/2 (prior knowledge) to upstreams: one multiplexed connection per
//! endpoint, re-dialled when it closes. Kept apart from the HTTP/1 pool
//! because here the request's `:authority` (the client's host) and the
//! address dialled (the endpoint) differ, which the generic pooled client
//! cannot express.

use super::{Body, SendError};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpStream;

pub struct H2Pool {
    connect_timeout: Duration,
    conns: Mutex<HashMap<String, SendRequest<Body>>>,
}

impl H2Pool {
    pub fn new(connect_timeout: Duration) -> H2Pool {
        H2Pool {
            connect_timeout,
            conns: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, endpoint: &str) -> Option<SendRequest<Body>> {
        let conns = self.conns.lock().ok()?;
        conns.get(endpoint).filter(|s| !s.is_closed()).cloned()
    }

    async fn dial(&self, endpoint: &str) -> Result<SendRequest<Body>, SendError> {
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint)).await {
                Err(_) => return Err(SendError::ConnectTimeout),
                Ok(Err(e)) => return Err(SendError::Connect(e.into())),
                Ok(Ok(tcp)) => tcp,
            };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(tcp))
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
            sender = self.dial(endpoint).await?;
        }
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Exchange(e.into()))
    }
}
