//! The byte stream of one client connection, as hyper sees it.
//!
//! hyper answers a request it cannot parse (bad syntax 400, head too large
//! 431, URI too long 414) by itself, with an empty body: outside the router,
//! so outside the contract's JSON error shape. `ConnIo` recognises such a
//! response as hyper writes it and sends the same status with the JSON body
//! instead. Everything else passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::StatusCode;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::error;

pub(crate) struct ConnIo<T> {
    inner: T,
    /// The JSON response being written in place of hyper's.
    replacing: Option<Replacing>,
    /// A response was replaced: hyper writes nothing after it.
    replaced: bool,
}

struct Replacing {
    bytes: Bytes,
    written: usize,
    /// Length of hyper's response, reported written once ours is.
    claimed: usize,
}

impl<T> ConnIo<T> {
    pub(crate) fn new(inner: T) -> ConnIo<T> {
        ConnIo {
            inner,
            replacing: None,
            replaced: false,
        }
    }
}

/// If `buf` is a whole response head that hyper wrote by itself for a
/// request it could not parse — 4xx, `connection: close`, `content-length:
/// 0`, no content type — the same response with the JSON error body.
/// Responses from the router never match: their errors carry a JSON body.
fn replacement(buf: &[u8]) -> Option<Bytes> {
    if !buf.starts_with(b"HTTP/1.") || !buf.ends_with(b"\r\n\r\n") || buf.len() > 1024 {
        return None;
    }
    let head = std::str::from_utf8(&buf[..buf.len() - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = StatusCode::from_bytes(status_line.get(9..12)?.as_bytes()).ok()?;
    if !status.is_client_error() {
        return None;
    }
    let (mut closes, mut empty) = (false, false);
    let mut kept = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => return None,
            "content-length" => empty = value == "0",
            "connection" => closes = value.eq_ignore_ascii_case("close"),
            _ => kept.push(line),
        }
    }
    if !(closes && empty) {
        return None;
    }
    let (code, message) = error::for_status(status);
    Some(Bytes::from(error::raw_response(
        status_line,
        code,
        message,
        kept,
    )))
}

impl<T: AsyncWrite + Unpin> ConnIo<T> {
    /// Starts replacing if `first` (hyper's next bytes) is one of its own
    /// error responses.
    fn inspect(&mut self, first: &[u8]) {
        if self.replacing.is_some() || self.replaced {
            return;
        }
        if let Some(bytes) = replacement(first) {
            self.replacing = Some(Replacing {
                bytes,
                written: 0,
                claimed: first.len(),
            });
            self.replaced = true;
        }
    }

    /// Writes the rest of the replacement; then reports hyper's bytes as
    /// written (at most `offered`).
    fn poll_replace(&mut self, cx: &mut Context<'_>, offered: usize) -> Poll<io::Result<usize>> {
        let Some(r) = self.replacing.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while r.written < r.bytes.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        let claimed = r.claimed.min(offered);
        self.replacing = None;
        Poll::Ready(Ok(claimed))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.inspect(buf);
        if this.replacing.is_some() {
            return this.poll_replace(cx, buf.len());
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        this.inspect(first);
        if this.replacing.is_some() {
            return this.poll_replace(cx, first.len());
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_hypers_own_error_responses() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 04:24:19 GMT\r\n\r\n";
        let out = replacement(hyper).expect("replaced");
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains("date: Mon, 23 Nov 2026"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
    }

    #[test]
    fn leaves_every_other_write_alone() {
        for buf in [
            &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n{}",
            b"event: patch\ndata: []\n\n",
            b"",
        ] {
            assert!(replacement(buf).is_none(), "{:?}", String::from_utf8_lossy(buf));
        }
    }
}
