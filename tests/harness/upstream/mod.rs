//! Upstream servers for the gateway to talk to, each on `127.0.0.1:0`.
//!
//! Every server returns an [`Upstream`] handle with its address and what it
//! saw (requests, connections, bytes); dropping the handle stops the accept
//! loop and every connection task.
//!
//! - [`http`](self::http): well-behaved hyper servers (echo, sink, source,
//!   gRPC-like) and an h2 server that resets mid-body.
//! - [`raw`](self::raw): byte-level servers that misbehave on purpose (fixed
//!   responses, truncated bodies, blackholes, a hand-rolled upgrade).
//! - [`ws`](self::ws): a WebSocket echo server.
//! - [`body`](self::body): servers for body handling (a mirror, a response
//!   held back until released).
//! - [`control`](self::control): servers that answer with their name and can
//!   be told to fail, hang, reset, slow down, go away and come back.

mod body;
mod control;
mod http;
mod raw;
mod ws;

pub use self::body::{gated, mirror, Gate};
pub use self::control::{controlled, controlled_tls, Controlled, Mode};
pub use self::http::{echo, grpc_like, reset_mid_body_h2, sink, slow_headers, source};
pub use self::raw::{
    blackhole, raw, reset_mid_body, reset_mid_body_chunked, upgrade_echo, SynBlackhole,
};
pub use self::ws::ws_echo;

use anyhow::Result;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub version: String,
    /// Header names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What an upstream has seen so far.
#[derive(Default)]
pub struct State {
    requests: AtomicUsize,
    connections: AtomicUsize,
    pub(crate) bytes: AtomicU64,
    pub(crate) early_bytes: AtomicBool,
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) raw_heads: Mutex<Vec<String>>,
    /// Bumped on every request and connection.
    changed: watch::Sender<()>,
}

impl State {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.changed.send_replace(());
    }

    pub(crate) fn connection(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        self.changed.send_replace(());
    }
}

/// A running upstream server. Dropping it stops the server.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests seen (HTTP servers: requests; raw servers: request heads).
    pub fn count(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Request body bytes consumed (sink) or response bytes sent (source).
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(Ordering::SeqCst)
    }

    /// Every request seen by a hyper-based server, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The last request seen by a hyper-based server.
    pub fn last(&self) -> Option<Seen> {
        self.state.seen.lock().unwrap().last().cloned()
    }

    /// Request heads (up to the blank line) seen by a raw server.
    pub fn raw_heads(&self) -> Vec<String> {
        self.state.raw_heads.lock().unwrap().clone()
    }

    /// [`upgrade_echo`]: whether bytes after the upgrade request arrived
    /// before the server answered 101.
    pub fn early_bytes(&self) -> bool {
        self.state.early_bytes.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_count(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.state.changed.subscribe();
        let wait = async move { rx.wait_for(|_| self.count() >= n).await.map(|_| ()) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(_) => Ok(()),
            Err(_) => anyhow::bail!(
                "upstream saw {} requests, wanted {n} within {timeout:?}",
                self.count()
            ),
        }
    }

    /// Waits until at least `n` connections have been accepted.
    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.state.changed.subscribe();
        let wait = async move { rx.wait_for(|_| self.connections() >= n).await.map(|_| ()) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(_) => Ok(()),
            Err(_) => anyhow::bail!(
                "upstream accepted {} connections, wanted {n} within {timeout:?}",
                self.connections()
            ),
        }
    }
}

pub(crate) async fn bind() -> Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Runs an accept loop; each connection is handled by `on_conn` in a task
/// owned by the loop, so aborting the loop aborts every connection.
pub(crate) fn accept_loop<F, Fut>(
    listener: TcpListener,
    state: Arc<State>,
    on_conn: F,
) -> JoinHandle<()>
where
    F: Fn(TcpStream, Arc<State>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    state.connection();
                    conns.spawn(on_conn(stream, state.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

/// An address where nothing listens (bound, then released): connection refused.
pub fn refused_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
