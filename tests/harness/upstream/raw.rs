//! Byte-level upstreams that misbehave on purpose.

use super::{accept_loop, bind, State, Upstream};
use anyhow::Result;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one request head (up to and including the blank line) and then
/// its content-length or chunked body. `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(i) = crate::raw::find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let lower = head.to_ascii_lowercase();
    let content_length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(len) = content_length {
        while buf.len() < len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = crate::raw::find(buf, b"0\r\n\r\n") {
                buf.drain(..i + 5);
                break;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    Some(head)
}

/// Raw HTTP/1.1 server that records each request head and answers every
/// request on a connection with exactly `response` (which must frame its
/// own body, e.g. with content-length).
pub async fn raw(response: impl Into<Bytes>) -> Result<Upstream> {
    let response: Bytes = response.into();
    let (listener, addr) = bind().await?;
    let state = Arc::new(State::default());
    let task = accept_loop(listener, state.clone(), move |mut stream, state| {
        let response = response.clone();
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_request(&mut stream, &mut buf).await {
                state.raw_heads.lock().unwrap().push(head);
                state.request();
                if stream.write_all(&response).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(Upstream { addr, state, task })
}

/// Raw server that answers `HTTP/1.1 200` with `content-length: 1000`,
/// sends 100 bytes, then closes the connection.
pub async fn reset_mid_body() -> Result<Upstream> {
    let mut resp =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n".to_vec();
    resp.extend_from_slice(&[b'a'; 100]);
    truncating(resp).await
}

/// Raw server that answers `HTTP/1.1 200` chunked, sends one 100-byte chunk,
/// then closes the connection without the terminating chunk.
pub async fn reset_mid_body_chunked() -> Result<Upstream> {
    let mut resp =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n64\r\n"
            .to_vec();
    resp.extend_from_slice(&[b'a'; 100]);
    resp.extend_from_slice(b"\r\n");
    truncating(resp).await
}

async fn truncating(resp: Vec<u8>) -> Result<Upstream> {
    let resp = Bytes::from(resp);
    let (listener, addr) = bind().await?;
    let state = Arc::new(State::default());
    let task = accept_loop(listener, state.clone(), move |mut stream, state| {
        let resp = resp.clone();
        async move {
            let mut buf = Vec::new();
            if let Some(head) = read_request(&mut stream, &mut buf).await {
                state.raw_heads.lock().unwrap().push(head);
                state.request();
                // The FIN follows the partial body in order: the gateway
                // reads the head and 100 bytes, then a premature EOF.
                let _ = stream.write_all(&resp).await;
                let _ = stream.shutdown().await;
            }
        }
    });
    Ok(Upstream { addr, state, task })
}

/// Accepts connections and never answers (they stay open until the handle
/// drops): a response-timeout target.
pub async fn blackhole() -> Result<Upstream> {
    let (listener, addr) = bind().await?;
    let state = Arc::new(State::default());
    let task = accept_loop(listener, state.clone(), |mut stream, _state| async move {
        // Read and discard, so the peer's writes never block; never answer.
        let mut chunk = [0u8; 8192];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                // Peer closed its side; keep ours open anyway.
                std::future::pending::<()>().await;
            }
        }
    });
    Ok(Upstream { addr, state, task })
}

/// A listener whose accept queue is full (backlog 0, one connection parked
/// in it, never accepted): the kernel drops further SYNs, so connecting
/// hangs until the connector's own timeout.
pub struct SynBlackhole {
    addr: SocketAddr,
    _listener: TcpListener,
    _parked: Vec<TcpStream>,
}

impl SynBlackhole {
    pub async fn start() -> Result<SynBlackhole> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind("127.0.0.1:0".parse()?)?;
        let listener = sock.listen(0)?;
        let addr = listener.local_addr()?;
        let mut parked = Vec::new();
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => parked.push(s),
                Ok(Err(e)) => return Err(e.into()),
                // A connect that hangs: the queue is full.
                Err(_) => {
                    return Ok(SynBlackhole {
                        addr,
                        _listener: listener,
                        _parked: parked,
                    })
                }
            }
        }
        anyhow::bail!("could not fill the accept queue of {addr}")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Raw upgrade server: reads the upgrade request head, waits 300 ms to see
/// whether any further client bytes arrive before it answers (recorded as
/// [`Upstream::early_bytes`]), answers `101 Switching Protocols` with a
/// valid `Sec-WebSocket-Accept`, then echoes bytes verbatim.
pub async fn upgrade_echo() -> Result<Upstream> {
    let (listener, addr) = bind().await?;
    let state = Arc::new(State::default());
    let task = accept_loop(listener, state.clone(), |mut stream, state| async move {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = crate::raw::find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut early = buf.len() > head_end;
        let mut pending = buf[head_end..].to_vec();
        let mut chunk = [0u8; 8192];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await
        {
            if n > 0 {
                early = true;
                pending.extend_from_slice(&chunk[..n]);
            }
        }
        if early {
            state.early_bytes.store(true, Ordering::SeqCst);
        }
        let key = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        state.raw_heads.lock().unwrap().push(head);
        state.request();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if !pending.is_empty() && stream.write_all(&pending).await.is_err() {
            return;
        }
        let (mut r, mut w) = stream.into_split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    Ok(Upstream { addr, state, task })
}
