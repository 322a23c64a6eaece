//! Dialling endpoints: TCP under `connect_timeout`, then TLS when the
//! upstream has `[upstreams.tls]`, counted against the circuit breaker's
//! `max_connections`. One connector serves an upstream's HTTP/1 pool, its
//! HTTP/2 connections and its health checks.

use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    #[error("upstream did not agree to HTTP/2 (ALPN h2)")]
    NoH2,
    #[error("connection limit of {0} reached (circuit breaker max_connections)")]
    Overflow(usize),
    #[error("invalid endpoint address `{0}`")]
    Address(String),
}

struct TlsSettings {
    connector: TlsConnector,
    /// `sni` from the config; else the endpoint's host name.
    sni: Option<String>,
}

struct Inner {
    connect_timeout: Duration,
    tls: Option<TlsSettings>,
    /// Dial address → host name, for endpoints whose host name was
    /// resolved to addresses (SNI must still be the name).
    names: ArcSwap<HashMap<String, String>>,
    open: AtomicUsize,
    max_connections: usize,
}

/// Cheap to clone; all clones share the connection count.
#[derive(Clone)]
pub struct Connector(Arc<Inner>);

impl Connector {
    pub fn new(
        connect_timeout: Duration,
        tls: Option<(Arc<rustls::ClientConfig>, Option<String>)>,
        max_connections: usize,
    ) -> Connector {
        Connector(Arc::new(Inner {
            connect_timeout,
            tls: tls.map(|(config, sni)| TlsSettings {
                connector: TlsConnector::from(config),
                sni,
            }),
            names: ArcSwap::from_pointee(HashMap::new()),
            open: AtomicUsize::new(0),
            max_connections,
        }))
    }

    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// Connections open now (health-check connections not included).
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// Replaces the address → host name map used for SNI.
    pub fn set_names(&self, names: HashMap<String, String>) {
        self.0.names.store(Arc::new(names));
    }

    /// Opens a connection to `addr` (`host:port`). `counted`: whether it
    /// counts against `max_connections` (health checks do not).
    pub async fn dial(&self, addr: &str, counted: bool) -> Result<Conn, ConnectError> {
        let slot = if counted {
            let n = self.0.open.fetch_add(1, Ordering::AcqRel);
            let slot = Slot(Some(self.0.clone()));
            if n >= self.0.max_connections {
                return Err(ConnectError::Overflow(self.0.max_connections));
            }
            slot
        } else {
            Slot(None)
        };
        let inner = &self.0;
        let connect = async {
            let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Io)?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &inner.tls else {
                return Ok((Stream::Plain(tcp), false));
            };
            let name = match &tls.sni {
                Some(n) => n.clone(),
                None => match inner.names.load().get(addr) {
                    Some(n) => n.clone(),
                    None => host_of(addr).to_string(),
                },
            };
            let name =
                ServerName::try_from(name).map_err(|_| ConnectError::Address(addr.to_string()))?;
            let stream = tls
                .connector
                .connect(name, tcp)
                .await
                .map_err(ConnectError::Tls)?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok((Stream::Tls(Box::new(stream)), h2))
        };
        let (stream, h2) = match tokio::time::timeout(inner.connect_timeout, connect).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(r) => r?,
        };
        Ok(Conn {
            io: TokioIo::new(stream),
            h2,
            _slot: slot,
        })
    }
}

/// `host` of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Gives back a connection's place in the count when the connection closes.
struct Slot(Option<Arc<Inner>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(inner) = &self.0 {
            inner.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connection to an endpoint, usable by hyper.
pub struct Conn {
    io: TokioIo<Stream>,
    /// ALPN chose `h2`.
    pub h2: bool,
    _slot: Slot,
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Conn, ConnectError>> + Send>>;

/// The HTTP/1 pool dials through this: the URI's authority is the address.
impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| ConnectError::Address(uri.to_string()))?;
            this.dial(&addr, true).await
        })
    }
}
