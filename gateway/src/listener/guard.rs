//! An I/O wrapper for HTTP/1 client connections that follows the message
//! framing byte by byte (heads, Content-Length and chunked bodies) to do
//! what hyper does not:
//!
//! - flag a head that carries both `Content-Length` and `Transfer-Encoding`
//!   (hyper drops the `Content-Length` and goes on; a proxy must refuse);
//! - close a connection whose next request does not start in time (first
//!   byte after accept, or idle keep-alive) or whose head takes too long to
//!   arrive (slowloris), independently of hyper's own timers.
//!
//! It also replays bytes already read during protocol detection.

use crate::proxy::ConnShared;
use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Deadlines the guard enforces while waiting for a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadDeadlines {
    pub first_byte: Duration,
    pub idle: Duration,
    pub header: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the first request.
    First,
    /// Waiting for the first byte of a later request.
    Idle,
    /// Inside a head.
    Head,
    /// Nothing to enforce (body, tunnel, or scanning stopped).
    None,
}

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers {
        line_len: usize,
    },
    /// Scanning stopped: after an upgrade, or a head hyper will reject.
    Off,
}

/// Follows HTTP/1 request framing over the bytes as they are read.
#[derive(Debug)]
struct Scanner {
    state: State,
    buf: Vec<u8>,
    max_head: usize,
    heads: u64,
}

impl Scanner {
    fn feed(&mut self, mut data: &[u8], shared: &ConnShared) {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Head => {
                    let from = self.buf.len().saturating_sub(3);
                    self.buf.extend_from_slice(data);
                    let end = find_head_end(&self.buf, from);
                    match end {
                        Some(end) => {
                            let rest = self.buf.split_off(end);
                            self.heads += 1;
                            self.state = head_state(&self.buf, shared);
                            self.buf.clear();
                            // Bytes past the head belong to the body or the next request.
                            let rest_len = rest.len();
                            let consumed = data.len() - rest_len;
                            data = &data[consumed..];
                        }
                        None => {
                            if self.buf.len() > self.max_head {
                                self.state = State::Off;
                            }
                            return;
                        }
                    }
                }
                State::Body(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize => match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.buf.extend_from_slice(&data[..i]);
                        data = &data[i + 1..];
                        self.state = match chunk_size(&self.buf) {
                            Some(0) => State::Trailers { line_len: 0 },
                            Some(n) => State::ChunkData(n),
                            None => State::Off,
                        };
                        self.buf.clear();
                    }
                    None => {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > 4096 {
                            self.state = State::Off;
                        }
                        return;
                    }
                },
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.state = State::ChunkEnd;
                    }
                }
                State::ChunkEnd => match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        data = &data[i + 1..];
                        self.state = State::ChunkSize;
                    }
                    None => return,
                },
                State::Trailers { line_len } => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\n' {
                        if *line_len == 0 {
                            self.state = State::Head;
                        } else {
                            *line_len = 0;
                        }
                    } else if b != b'\r' {
                        *line_len += 1;
                    }
                }
            }
        }
    }
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Empty lines before a request line are allowed (RFC 9112 §2.2).
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let from = from.max(start);
    memchr::memchr_iter(b'\n', &buf[from..])
        .map(|i| from + i)
        .find_map(|i| match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex_end = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if hex_end == 0 || hex_end > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..hex_end]).ok()?, 16).ok()
}

/// What follows a complete head.
fn head_state(head: &[u8], shared: &ConnShared) -> State {
    // Uninitialised: zeroing 256 headers (8 KiB) cost more than the parse.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; 256];
    let mut req = httparse::Request::new(&mut []);
    if !matches!(
        req.parse_with_uninit_headers(head, &mut headers),
        Ok(httparse::Status::Complete(_))
    ) {
        return State::Off;
    }
    let mut content_length: Option<Option<u64>> = None;
    let mut chunked_last = None;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            content_length = match content_length {
                None => Some(v),
                Some(prev) if prev == v => Some(v),
                Some(_) => Some(None),
            };
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked_last = Some(
                std::str::from_utf8(last).is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked")),
            );
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if content_length.is_some() && chunked_last.is_some() {
        shared.smuggling.store(true, Ordering::Relaxed);
    }
    if upgrade || req.method == Some("CONNECT") {
        return State::Off;
    }
    match (chunked_last, content_length) {
        (Some(true), _) => State::ChunkSize,
        (Some(false), _) | (None, Some(None)) => State::Off,
        (None, Some(Some(0))) | (None, None) => State::Head,
        (None, Some(Some(n))) => State::Body(n),
    }
}

pin_project! {
    /// The client connection as hyper's HTTP/1 server sees it.
    pub struct GuardedIo<T> {
        #[pin]
        inner: T,
        prefix: Bytes,
        scanner: Scanner,
        shared: Arc<ConnShared>,
        deadlines: HeadDeadlines,
        phase: Phase,
        timer: Pin<Box<Sleep>>,
    }
}

impl<T> GuardedIo<T> {
    pub fn new(
        inner: T,
        prefix: Bytes,
        shared: Arc<ConnShared>,
        deadlines: HeadDeadlines,
        max_head: usize,
    ) -> Self {
        GuardedIo {
            inner,
            prefix,
            scanner: Scanner {
                state: State::Head,
                buf: Vec::new(),
                max_head,
                heads: 0,
            },
            shared,
            deadlines,
            phase: Phase::None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl<T: AsyncRead> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.scanner.feed(&this.prefix[..n], this.shared);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let phase = match this.scanner.state {
            State::Head if this.scanner.buf.is_empty() && this.scanner.heads == 0 => Phase::First,
            State::Head if this.scanner.buf.is_empty() => Phase::Idle,
            State::Head => Phase::Head,
            _ => Phase::None,
        };
        if phase != *this.phase {
            *this.phase = phase;
            let d = *this.deadlines;
            let after = match phase {
                Phase::First => d.first_byte,
                Phase::Idle => d.idle,
                Phase::Head => d.header,
                Phase::None => Duration::ZERO,
            };
            this.timer.as_mut().reset(Instant::now() + after);
        }
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.scanner.feed(&buf.filled()[before..], this.shared);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if *this.phase == Phase::None {
                    return Poll::Pending;
                }
                loop {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The deadline passed; is the connection really idle?
                    let next = if this.shared.busy() {
                        // A response is still being produced: look again later.
                        Some(Instant::now() + this.deadlines.idle)
                    } else if *this.phase == Phase::Idle {
                        // Idle counts from the end of the last response.
                        let done = this.shared.last_done().map(Instant::from_std);
                        done.map(|d| d + this.deadlines.idle)
                            .filter(|&t| t > Instant::now())
                    } else {
                        None
                    };
                    match next {
                        Some(t) => this.timer.as_mut().reset(t),
                        None => {
                            let what = match *this.phase {
                                Phase::First => "no request received",
                                Phase::Idle => "idle keep-alive connection",
                                _ => "request head not received in time",
                            };
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                        }
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Scanner, bool) {
        let shared = ConnShared::default();
        let mut s = Scanner {
            state: State::Head,
            buf: Vec::new(),
            max_head: 65536,
            heads: 0,
        };
        for c in chunks {
            s.feed(c, &shared);
        }
        let flagged = shared.smuggling.load(Ordering::Relaxed);
        (s, flagged)
    }

    #[test]
    fn follows_content_length_and_chunked_framing() {
        let (s, flagged) = scan(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
            b"loGET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        ]);
        assert_eq!(s.heads, 3);
        assert!(matches!(s.state, State::Head));
        assert!(!flagged);
    }

    #[test]
    fn flags_content_length_with_transfer_encoding_even_when_pipelined() {
        let (_, flagged) = scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]);
        assert!(flagged);
    }

    #[test]
    fn body_bytes_that_look_like_headers_are_not_scanned() {
        let body = b"Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n";
        let head = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (s, flagged) = scan(&[head.as_bytes(), body]);
        assert!(!flagged);
        assert_eq!(s.heads, 1);
    }

    #[test]
    fn finds_head_ends_split_across_reads_and_bare_lf_heads() {
        let stream: &[u8] = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\nHost: a\n\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let (s, flagged) = scan(&bytes);
        assert_eq!(s.heads, 3);
        assert!(flagged);
    }
}
