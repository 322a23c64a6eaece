//! HTTP clients in front of the gateway: HTTP/1.1 (pooled), h2c with prior
//! knowledge, and HTTP/1.1 or HTTP/2 over TLS chosen by ALPN.
//!
//! Requests use absolute URIs (`http://127.0.0.1:port/path`); a `Host`
//! header set on the request wins over the URI's authority for HTTP/1.1. For
//! HTTP/2 put the wanted `:authority` in the URI and connect with
//! [`h2c`]/[`h2_tls`], which dial a fixed address whatever the URI says.

use crate::BoxError;
use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The request body type of every client here.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A body streamed from `chunks` (never collected in memory).
pub fn stream<S>(chunks: S) -> Body
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + Sync + 'static,
{
    use futures_util::TryStreamExt;
    BodyExt::boxed(StreamBody::new(chunks.map_ok(Frame::data)))
}

/// `total` bytes of `b'x'`, produced lazily in 64 KiB chunks.
pub fn generated(total: u64) -> Body {
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    let s = futures_util::stream::unfold(total, |left| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK.len() as u64);
        Some((
            Ok::<_, BoxError>(Bytes::from_static(&CHUNK[..n as usize])),
            left - n,
        ))
    });
    stream(s)
}

/// A fully read response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// The header's value as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{} response body is not JSON: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Checks that this is a gateway-generated error with `status`: a JSON
    /// body `{"error":…,"status":…,"request_id":…}` whose id matches the
    /// `x-request-id` header.
    pub fn expect_gateway_error(&self, status: u16) -> Result<()> {
        check_gateway_error(
            self.status.as_u16(),
            self.header("x-request-id"),
            &self.body,
            status,
        )
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
    }
}

/// See [`Resp::expect_gateway_error`].
pub fn check_gateway_error(
    got: u16,
    request_id: Option<&str>,
    body: &[u8],
    want: u16,
) -> Result<()> {
    let text = String::from_utf8_lossy(body);
    anyhow::ensure!(got == want, "status {got}, wanted {want}; body: {text}");
    let j: serde_json::Value = serde_json::from_slice(body)
        .with_context(|| format!("{got} error body is not JSON: {text:?}"))?;
    anyhow::ensure!(
        j["status"] == want,
        "error body status is not {want}: {text}"
    );
    anyhow::ensure!(
        j["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error body has no error text: {text}"
    );
    let id = request_id.context("gateway error without x-request-id")?;
    anyhow::ensure!(!id.is_empty(), "empty x-request-id");
    anyhow::ensure!(
        j["request_id"] == id,
        "error body request_id {} is not the x-request-id header {id}",
        j["request_id"]
    );
    Ok(())
}

/// Reads a whole response, body and trailers.
pub async fn read(resp: Response<Incoming>) -> Result<Resp> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.context("reading response body")?;
    let trailers = collected.trailers().cloned();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Reads a response body frame by frame, counting bytes without keeping them.
pub async fn drain(resp: Response<Incoming>) -> Result<u64> {
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

/// A pooled HTTP/1.1 client (hyper-util's legacy client).
#[derive(Clone)]
pub struct Http1 {
    client: Client<HttpConnector, Body>,
}

impl Default for Http1 {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1 {
    pub fn new() -> Http1 {
        Http1 {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client that opens a new connection for every request.
    pub fn unpooled() -> Http1 {
        Http1 {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>> {
        let uri = req.uri().clone();
        self.client
            .request(req)
            .await
            .with_context(|| format!("HTTP/1.1 request to {uri}"))
    }

    /// `GET url`, fully read.
    pub async fn get(&self, url: &str) -> Result<Resp> {
        read(self.send(Request::get(url).body(empty())?).await?).await
    }

    /// Sends and fully reads.
    pub async fn fetch(&self, req: Request<Body>) -> Result<Resp> {
        read(self.send(req).await?).await
    }
}

/// One HTTP/2 connection (h2c or TLS).
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Body>,
    conn: JoinHandle<()>,
}

impl Drop for H2 {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl H2 {
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>> {
        let mut sender = self.sender.clone();
        sender.ready().await.context("h2 connection not ready")?;
        Ok(sender.send_request(req).await?)
    }

    pub async fn fetch(&self, req: Request<Body>) -> Result<Resp> {
        read(self.send(req).await?).await
    }
}

async fn h2_over<S>(io: S) -> Result<H2>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .context("h2 handshake")?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(H2 { sender, conn })
}

/// HTTP/2 with prior knowledge over plain TCP to `addr`.
pub async fn h2c(addr: SocketAddr) -> Result<H2> {
    let tcp = TcpStream::connect(addr).await?;
    h2_over(tcp).await
}

/// A TLS connection to `addr` with the given SNI; returns the stream and the
/// ALPN protocol the server picked.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr} as {sni}"))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((tls, alpn))
}

/// HTTP/2 over TLS; fails unless the server picks `h2` by ALPN.
pub async fn h2_tls(addr: SocketAddr, sni: &str, config: Arc<rustls::ClientConfig>) -> Result<H2> {
    let (tls, alpn) = tls_connect(addr, sni, config).await?;
    anyhow::ensure!(
        alpn.as_deref() == Some(b"h2"),
        "server did not negotiate h2 by ALPN (got {:?})",
        alpn.map(|a| String::from_utf8_lossy(&a).into_owned())
    );
    h2_over(tls).await
}

/// One HTTP/1.1 connection over TLS.
pub struct H1Tls {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    conn: JoinHandle<()>,
    pub alpn: Option<Vec<u8>>,
}

impl Drop for H1Tls {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl H1Tls {
    pub async fn fetch(&mut self, req: Request<Body>) -> Result<Resp> {
        self.sender.ready().await?;
        read(self.sender.send_request(req).await?).await
    }
}

/// HTTP/1.1 over TLS (whatever ALPN says; the result records it).
pub async fn h1_tls(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<H1Tls> {
    let (tls, alpn) = tls_connect(addr, sni, config).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(H1Tls { sender, conn, alpn })
}
