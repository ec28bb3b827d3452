//! Gives hyper's own "431 Request Header Fields Too Large" the contract's
//! JSON error shape.
//!
//! hyper answers an oversized request head itself, with an empty body,
//! before any service sees the request. This wrapper watches what hyper
//! writes: a write that starts a 431 response is replaced by the JSON one.
//! hyper closes the connection right after it, so whatever it writes next
//! (nothing, in practice) is dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HYPER_431: &[u8] = b"HTTP/1.1 431 ";

pub(crate) struct HeadGuard<S> {
    inner: S,
    /// The JSON replacement, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<S> HeadGuard<S> {
    pub(crate) fn new(inner: S) -> Self {
        HeadGuard {
            inner,
            replacement: None,
        }
    }
}

fn json_431() -> Vec<u8> {
    let body = crate::api::error::body(
        "headers_too_large",
        "the request line and headers are too large",
    );
    format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() && buf.starts_with(HYPER_431) {
            this.replacement = Some((json_431(), 0));
        }
        let Some((out, written)) = &mut this.replacement else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while *written < out.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &out[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // hyper's bytes count as written: the JSON response stands for them.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
