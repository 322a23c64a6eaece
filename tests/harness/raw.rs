//! Byte-level TCP clients: malformed requests that no HTTP library would
//! send, slow peers, and a minimal HTTP/1 response parser to read answers.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a read that waits for the peer to close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Orderly close (FIN).
    Closed,
    /// Connection reset (RST) or another read error.
    Reset,
    /// Still open when the timeout ran out.
    TimedOut,
}

/// A parsed HTTP/1 response head plus its body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// See [`crate::client::Resp::expect_gateway_error`].
    pub fn expect_gateway_error(&self, status: u16) -> Result<()> {
        crate::client::check_gateway_error(
            self.status,
            self.header("x-request-id"),
            &self.body,
            status,
        )
    }

    /// A request refused with `status` either by the gateway (JSON error
    /// body with the request id) or, for heads that cannot be parsed at
    /// all, by the HTTP/1 parser itself: then there is no request yet, so
    /// no id and no body, and the connection is marked for closing.
    pub fn expect_rejection(&self, status: u16) -> Result<()> {
        if self.header("x-request-id").is_some() {
            return self.expect_gateway_error(status);
        }
        anyhow::ensure!(
            self.status == status,
            "status {}, wanted {status}",
            self.status
        );
        anyhow::ensure!(
            self.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close")),
            "parser rejection without `connection: close`: {}",
            self.head
        );
        Ok(())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain TCP connection with a read buffer.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Result<Raw> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Raw {
            stream,
            buf: Vec::new(),
        })
    }

    pub async fn write(&mut self, bytes: impl AsRef<[u8]>) -> Result<()> {
        self.stream.write_all(bytes.as_ref()).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self, deadline: Instant) -> Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!(
                "timed out reading; got so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads one HTTP/1 response (head and a content-length, chunked or
    /// read-to-close body).
    pub async fn read_response(&mut self, timeout: Duration) -> Result<RawResponse> {
        let deadline = Instant::now() + timeout;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill(deadline).await? == 0 {
                bail!(
                    "connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body =
            if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
                Vec::new()
            } else if let Some(len) = get("content-length") {
                let len: usize = len.parse().context("bad content-length")?;
                while self.buf.len() < len {
                    if self.fill(deadline).await? == 0 {
                        bail!("closed after {} of {len} body bytes", self.buf.len());
                    }
                }
                self.buf.drain(..len).collect()
            } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                self.read_chunked(deadline).await?
            } else {
                while self.fill(deadline).await? > 0 {}
                std::mem::take(&mut self.buf)
            };
        Ok(RawResponse {
            status,
            head,
            headers,
            body,
        })
    }

    async fn read_chunked(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                if self.fill(deadline).await? == 0 {
                    bail!("closed inside a chunk header");
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        let empty = i == 0;
                        self.buf.drain(..i + 2);
                        if empty {
                            return Ok(body);
                        }
                    } else if self.fill(deadline).await? == 0 {
                        bail!("closed inside the trailers");
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if self.fill(deadline).await? == 0 {
                    bail!("closed inside a chunk");
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Reads until the peer closes or `timeout` passes; returns what was
    /// read (including anything buffered) and how it ended.
    pub async fn read_to_end(&mut self, timeout: Duration) -> (Vec<u8>, End) {
        let deadline = Instant::now() + timeout;
        let end = loop {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => break End::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(_)) => break End::Reset,
                Err(_) => break End::TimedOut,
            }
        };
        (std::mem::take(&mut self.buf), end)
    }

    /// Reads exactly `n` bytes (taking buffered bytes first).
    pub async fn read_exact(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        while self.buf.len() < n {
            if self.fill(deadline).await? == 0 {
                bail!("closed after {} of {n} bytes", self.buf.len());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Bytes read but not consumed by a response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

/// Connects, writes `request`, and reads one response.
pub async fn exchange(
    addr: SocketAddr,
    request: impl AsRef<[u8]>,
    timeout: Duration,
) -> Result<RawResponse> {
    let mut c = Raw::connect(addr).await?;
    c.write(request).await?;
    c.read_response(timeout).await
}

/// A WebSocket upgrade request head for `path` on `host`.
pub fn websocket_upgrade(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code at the start of an HTTP/1 response, if any.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]);
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}
