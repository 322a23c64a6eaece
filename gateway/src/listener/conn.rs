//! One client connection: TLS handshake or protocol detection, then hyper's
//! HTTP/1 or HTTP/2 server with the gateway's deadlines around it.

use super::guard::{GuardedIo, HeadDeadlines};
use crate::proxy::{self, ConnCtx};
use crate::runtime::Runtime;
use bytes::{Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves a connection until it closes, times out, or the gateway drains.
pub async fn serve(
    mut stream: TcpStream,
    ctx: Arc<ConnCtx>,
    tls: Option<Arc<rustls::ServerConfig>>,
    rt: Arc<Runtime>,
    drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limits = ctx.limits.clone();
    if let Some(tls) = tls {
        let accept = TlsAcceptor::from(tls).accept(stream);
        let Ok(Ok(tls_stream)) = tokio::time::timeout(limits.tls_handshake_timeout, accept).await
        else {
            return;
        };
        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            serve_h2(tls_stream, ctx, rt, drain).await;
        } else {
            serve_h1(tls_stream, Bytes::new(), ctx, rt, drain).await;
        }
        return;
    }
    // Plain TCP: HTTP/2 with prior knowledge starts with the preface.
    let mut buf = BytesMut::with_capacity(4096);
    let detect = async {
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] || buf.len() >= H2_PREFACE.len() {
                return Ok(true);
            }
        }
    };
    match tokio::time::timeout(limits.first_byte_timeout, detect).await {
        Ok(Ok(true)) => {}
        _ => return,
    }
    let prefix = buf.freeze();
    if prefix.starts_with(H2_PREFACE) {
        serve_h2(Rewind::new(stream, prefix), ctx, rt, drain).await;
    } else {
        serve_h1(stream, prefix, ctx, rt, drain).await;
    }
}

fn service(
    ctx: Arc<ConnCtx>,
    rt: Arc<Runtime>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::upstream::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<crate::upstream::Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        let ctx = ctx.clone();
        let snap = rt.current();
        async move { Ok::<_, Infallible>(proxy::handle(req, ctx, snap).await) }
    })
}

async fn serve_h1<T>(
    io: T,
    prefix: Bytes,
    ctx: Arc<ConnCtx>,
    rt: Arc<Runtime>,
    drain: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let l = &ctx.limits;
    let deadlines = HeadDeadlines {
        first_byte: l.first_byte_timeout,
        idle: l.idle_timeout,
        header: l.header_read_timeout,
    };
    let io = GuardedIo::new(
        io,
        prefix,
        ctx.shared.clone(),
        deadlines,
        l.max_header_bytes + l.max_request_line_bytes,
    );
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_headers(l.max_headers)
        .max_header_size(l.max_header_bytes);
    let conn = builder
        .serve_connection(TokioIo::new(io), service(ctx.clone(), rt))
        .with_upgrades();
    drive(conn, drain, None).await;
}

async fn serve_h2<T>(io: T, ctx: Arc<ConnCtx>, rt: Arc<Runtime>, drain: watch::Receiver<bool>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let l = &ctx.limits;
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(l.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let idle = Some((ctx.clone(), l.idle_timeout));
    let conn = builder.serve_connection(TokioIo::new(io), service(ctx.clone(), rt));
    drive(conn, drain, idle).await;
}

/// A hyper connection that can be asked to finish its in-flight requests
/// and close.
trait Drainable: Future {
    fn drain(self: Pin<&mut Self>);
}

impl<I, S> Drainable for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E, B> Drainable for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn drain(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection; on drain (or, for HTTP/2, after `idle` with no request)
/// asks it to finish gracefully.
async fn drive<C: Drainable>(
    conn: C,
    mut drain: watch::Receiver<bool>,
    idle: Option<(Arc<ConnCtx>, Duration)>,
) {
    let mut conn = std::pin::pin!(conn);
    let mut draining = *drain.borrow();
    if draining {
        conn.as_mut().drain();
    }
    let tick = idle
        .as_ref()
        .map_or(Duration::from_secs(3600), |(_, d)| *d / 2);
    let mut quiet_ticks = 0;
    let mut last_started = 0;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    conn.as_mut().drain();
                }
            }
            _ = tokio::time::sleep(tick), if idle.is_some() && !draining => {
                if let Some((ctx, _)) = &idle {
                    let started = ctx.shared.started.load(Ordering::Relaxed);
                    let busy = ctx.shared.in_flight.load(Ordering::Relaxed) > 0 || started != last_started;
                    last_started = started;
                    quiet_ticks = if busy { 0 } else { quiet_ticks + 1 };
                    if quiet_ticks >= 2 {
                        draining = true;
                        conn.as_mut().drain();
                    }
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Replays bytes read during protocol detection before the socket's own.
    struct Rewind<T> {
        prefix: Bytes,
        #[pin]
        inner: T,
    }
}

impl<T> Rewind<T> {
    fn new(inner: T, prefix: Bytes) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
