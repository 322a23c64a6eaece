//! Malformed HTTP/1 requests (the request-smuggling family) are answered
//! 400 and never forwarded; the connection is not reused after them.
//!
//! Each test ends with a well-formed request so that "the upstream saw
//! nothing" is checked against an upstream that demonstrably works.

use anyhow::{ensure, Result};
use std::time::Duration;
use wasmgate_e2e::raw::{self, End, Raw};
use wasmgate_e2e::{conf, upstream, Gateway};

const T: Duration = Duration::from_secs(5);

async fn assert_rejected(request: &str) -> Result<()> {
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&conf::simple(echo.addr())).await?;
    let mut c = Raw::connect(gw.addr("main")).await?;
    c.write(request).await?;
    let resp = c.read_response(T).await?;
    assert_eq!(resp.status, 400, "{}", resp.head);
    // Whatever followed the bad head must not be read as another request.
    let (rest, end) = c.read_to_end(Duration::from_secs(2)).await;
    ensure!(
        end != End::TimedOut,
        "connection kept open after a malformed request"
    );
    ensure!(
        rest.is_empty(),
        "a second response followed the 400: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(echo.count(), 0, "malformed request reached the upstream");

    let ok = raw::exchange(
        gw.addr("main"),
        "GET /ok HTTP/1.1\r\nhost: api.test\r\n\r\n",
        T,
    )
    .await?;
    assert_eq!(ok.status, 200);
    assert_eq!(echo.count(), 1);
    // Checked last: the security properties above matter more.
    resp.expect_rejection(400)
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() -> Result<()> {
    // The classic CL.TE smuggling shape: a second request hidden in the body.
    assert_rejected(
        "POST / HTTP/1.1\r\nhost: api.test\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: api.test\r\n\r\n",
    )
    .await
}

#[tokio::test]
async fn conflicting_content_lengths_are_400() -> Result<()> {
    assert_rejected(
        "POST / HTTP/1.1\r\nhost: api.test\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
    )
    .await
}

#[tokio::test]
async fn conflicting_content_length_list_is_400() -> Result<()> {
    assert_rejected("POST / HTTP/1.1\r\nhost: api.test\r\ncontent-length: 5, 6\r\n\r\nhello!").await
}

#[tokio::test]
async fn obs_fold_is_400() -> Result<()> {
    assert_rejected("GET / HTTP/1.1\r\nhost: api.test\r\nx-folded: a\r\n b\r\n\r\n").await
}

#[tokio::test]
async fn transfer_encoding_on_http10_is_400() -> Result<()> {
    assert_rejected(
        "POST / HTTP/1.0\r\nhost: api.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await
}
