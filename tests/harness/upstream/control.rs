//! A remote-controlled upstream for traffic-management tests: it answers
//! with its own name (body and `x-served-by`), and can be told at any time
//! to fail with a status, hang, reset the connection, answer slowly, go
//! away (connection refused) and come back on the same port. Optionally
//! over TLS (with or without client certificates), HTTP/1.1 and HTTP/2
//! (ALPN or h2c prior knowledge, detected per connection).

use super::http::record;
use super::{accept_loop, bind, Seen, State};
use crate::BoxError;
use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the upstream answers from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with its name.
    Ok,
    /// This status with its name.
    Status(u16),
    /// Never answers (the connection stays open).
    Hang,
    /// Closes the connection without answering.
    Reset,
    /// Waits, then answers 200.
    Slow(Duration),
}

struct Shared {
    name: String,
    mode: Mutex<Mode>,
    /// Mode of `GET /health` (health checks), separate from traffic.
    health: Mutex<Mode>,
    /// Waited before any traffic answer (combines with every mode).
    delay: Mutex<Duration>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Requests being answered right now, and the most at once.
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// A running controlled upstream; dropping it stops it.
pub struct Controlled {
    addr: SocketAddr,
    shared: Arc<Shared>,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Controlled {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain (HTTP/1.1 + h2c) controlled upstream named `name`.
pub async fn controlled(name: &str) -> Result<Controlled> {
    Controlled::start(name, None).await
}

/// A controlled upstream behind TLS with `config` (its ALPN and client
/// certificate policy decide what clients may do).
pub async fn controlled_tls(name: &str, config: Arc<rustls::ServerConfig>) -> Result<Controlled> {
    Controlled::start(name, Some(config)).await
}

impl Controlled {
    async fn start(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Controlled> {
        let (listener, addr) = bind().await?;
        let c = Controlled {
            addr,
            shared: Arc::new(Shared {
                name: name.to_string(),
                mode: Mutex::new(Mode::Ok),
                health: Mutex::new(Mode::Ok),
                delay: Mutex::new(Duration::ZERO),
                tls,
                active: AtomicUsize::new(0),
                max_active: AtomicUsize::new(0),
            }),
            state: Arc::new(State::default()),
            task: Mutex::new(None),
        };
        c.serve(listener);
        Ok(c)
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let task = accept_loop(listener, self.state.clone(), move |stream, state| {
            let shared = shared.clone();
            async move {
                let svc = {
                    let shared = shared.clone();
                    hyper::service::service_fn(move |req| {
                        handle(req, shared.clone(), state.clone())
                    })
                };
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match &shared.tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    }
                }
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How traffic (every path but `/health`) is answered from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// A delay before every traffic answer from now on.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Waits until at least `n` traffic requests have arrived.
    pub async fn wait_traffic(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.state.changed.subscribe();
        let wait = async move { rx.wait_for(|_| self.traffic() >= n).await.map(|_| ()) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(_) => Ok(()),
            Err(_) => anyhow::bail!(
                "{} saw {} requests, wanted {n} within {timeout:?}",
                self.shared.name,
                self.traffic()
            ),
        }
    }

    /// How `GET /health` is answered from now on.
    pub fn set_health(&self, mode: Mode) {
        *self.shared.health.lock().unwrap() = mode;
    }

    /// Closes the listener and every connection: new connections are refused.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Listens again on the same address after [`Controlled::stop`].
    pub async fn restart(&self) -> Result<()> {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            // The aborted accept task releases the port asynchronously.
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// Requests answered or started (traffic and health checks).
    pub fn count(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Traffic requests (not `/health`).
    pub fn traffic(&self) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path != "/health")
            .count()
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Most traffic requests in progress at once.
    pub fn max_active(&self) -> usize {
        self.shared.max_active.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

type RespBody = BoxBody<Bytes, BoxError>;

fn reply(status: u16, name: &str) -> Response<RespBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("x-served-by", name)
        .body(
            Full::new(Bytes::from(name.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

struct Active<'a>(&'a Shared);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    state: Arc<State>,
) -> Result<Response<RespBody>, BoxError> {
    let health = req.uri().path() == "/health";
    let seen = record(&req);
    state.seen.lock().unwrap().push(seen);
    state.request();
    let mode = if health {
        shared.health.lock().unwrap().clone()
    } else {
        let n = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_active.fetch_max(n, Ordering::SeqCst);
        shared.mode.lock().unwrap().clone()
    };
    let _active = (!health).then(|| Active(&shared));
    let delay = *shared.delay.lock().unwrap();
    if !health && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    // Read the request body so the connection stays usable.
    let _ = req.into_body().collect().await;
    match mode {
        Mode::Ok => Ok(reply(200, &shared.name)),
        Mode::Status(s) => Ok(reply(s, &shared.name)),
        Mode::Hang => {
            std::future::pending::<()>().await;
            Ok(reply(200, &shared.name))
        }
        Mode::Reset => Err("reset on purpose".into()),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            Ok(reply(200, &shared.name))
        }
    }
}
