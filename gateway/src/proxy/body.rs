//! Body plumbing: request bodies checked for size and progress while they
//! stream; response bodies observed for the access log and metrics.

use crate::upstream::{BodyError, BoxError};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

pin_project! {
    /// A request body that fails once it passes `limit` bytes or makes no
    /// progress for `stall` while the reader waits for it.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        limit: u64,
        seen: Arc<AtomicU64>,
        stall: Duration,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, stall: Duration, seen: Arc<AtomicU64>) -> Self {
        LimitedBody {
            inner,
            limit,
            seen,
            stall,
            timer: None,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                let stall = *this.stall;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Stalled.into())))
            }
            Poll::Ready(frame) => {
                *this.timer = None;
                match frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let total = this.seen.fetch_add(data.len() as u64, Ordering::Relaxed)
                                + data.len() as u64;
                            if total > *this.limit {
                                return Poll::Ready(Some(Err(
                                    BodyError::TooLarge(*this.limit).into()
                                )));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A response body that counts the bytes sent and runs `on_done` once,
    /// when the body ends or is dropped (client gone, stream reset).
    pub struct ObservedBody<B, F: FnOnce(u64, bool)> {
        #[pin]
        inner: B,
        sent: u64,
        complete: bool,
        on_done: Option<F>,
    }

    impl<B, F: FnOnce(u64, bool)> PinnedDrop for ObservedBody<B, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(f) = this.on_done.take() {
                f(*this.sent, *this.complete);
            }
        }
    }
}

impl<B, F: FnOnce(u64, bool)> ObservedBody<B, F> {
    pub fn new(inner: B, on_done: F) -> Self {
        ObservedBody {
            inner,
            sent: 0,
            complete: false,
            on_done: Some(on_done),
        }
    }
}

impl<B, F> Body for ObservedBody<B, F>
where
    B: Body<Data = Bytes>,
    F: FnOnce(u64, bool),
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if this.inner.is_end_stream() {
            *this.complete = true;
        }
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    *this.sent += d.len() as u64;
                }
            }
            None => *this.complete = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
