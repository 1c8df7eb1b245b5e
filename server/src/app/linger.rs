//! A lingering close: a connection the server closes first keeps reading, and
//! dropping, what the client still sends, for a bounded time, before the
//! socket closes.
//!
//! Why: the server answers some requests before it has read their body (413
//! for a declared length over the limit, 431, 411) and then closes the
//! connection, since the unread body makes it unusable. A socket closed with
//! unread data in its receive buffer, or that receives more after it closed,
//! answers with a TCP reset; a client still writing its body then gets a
//! broken pipe or a reset instead of the answer waiting in its buffer (seen
//! with a client writing 16 MiB before reading). So, as nginx's lingering
//! close does, the write side is shut first (the answer and a FIN go out),
//! then incoming bytes are read and dropped until the client closes its side,
//! an error, or [`LINGER`] has passed. hyper shuts a connection down through
//! [`AsyncWrite::poll_shutdown`], which is where this happens; a connection
//! the client closes first reads its end of stream at once and costs nothing
//! more.
//!
//! Only HTTP/1 connections linger: an HTTP/2 connection ends with a GOAWAY
//! frame that tells the client what was processed, and one the server ends
//! for a protocol abuse (a CONTINUATION flood) must stop being read at once.
//! The stream tells the two apart by the first bytes the client sent (HTTP/2's
//! preface starts with `PRI `, no HTTP/1 method does).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The longest a closing connection reads and drops what its client still
/// sends.
pub const LINGER: Duration = Duration::from_secs(2);

/// Reads per poll while lingering, before yielding to other tasks.
const READS_PER_POLL: usize = 16;

pin_project! {
    /// An I/O stream whose shutdown lingers; see the [module docs](self).
    #[derive(Debug)]
    pub struct Lingering<T> {
        #[pin]
        inner: T,
        // Set once the write side is shut.
        shut: bool,
        // Started when the client turns out to be still sending (or silent).
        deadline: Option<Pin<Box<Sleep>>>,
        // The first bytes the client sent, up to four, to tell HTTP/1 from
        // HTTP/2's preface.
        first: [u8; 4],
        first_len: usize,
    }
}

/// How HTTP/2's connection preface starts.
const H2_PREFACE_START: &[u8; 4] = b"PRI ";

impl<T> Lingering<T> {
    /// `inner`, lingering when shut down.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            shut: false,
            deadline: None,
            first: [0; 4],
            first_len: 0,
        }
    }
}

/// Whether a connection whose client's first bytes are `first` lingers: HTTP/1
/// does, HTTP/2 and a client that sent nothing do not.
fn lingers(first: &[u8]) -> bool {
    !first.is_empty() && !H2_PREFACE_START.starts_with(first)
}

impl<T: AsyncRead> AsyncRead for Lingering<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if *this.first_len < this.first.len() {
            let new = &buf.filled()[before..];
            let take = new.len().min(this.first.len() - *this.first_len);
            this.first[*this.first_len..*this.first_len + take].copy_from_slice(&new[..take]);
            *this.first_len += take;
        }
        read
    }
}

impl<T: AsyncRead + AsyncWrite> AsyncWrite for Lingering<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if !*this.shut {
            std::task::ready!(this.inner.as_mut().poll_shutdown(cx))?;
            *this.shut = true;
        }
        if !lingers(&this.first[..*this.first_len]) {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 8 * 1024];
        let mut waiting = false;
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::new(&mut scratch);
            match this.inner.as_mut().poll_read(cx, &mut buf) {
                // End of stream: the client closed its side too.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                // Dropped; read on, within the deadline.
                Poll::Ready(Ok(())) => {}
                // A reset or another error: nothing left to protect.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    waiting = true;
                    break;
                }
            }
        }
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if !waiting {
            // The budget ran out with data still coming: poll again after
            // other tasks (a pending read registered the waker itself).
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server stream that has read the start of an HTTP/1 request.
    async fn after_http1_request(
        server: tokio::io::DuplexStream,
        client: &mut tokio::io::DuplexStream,
    ) -> Lingering<tokio::io::DuplexStream> {
        let mut server = Lingering::new(server);
        client
            .write_all(b"PATCH / HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 18];
        server.read_exact(&mut head).await.expect("read");
        server
    }

    #[test]
    fn http1_lingers_and_http2_or_silence_does_not() {
        for first in [&b"GET "[..], b"PATCH", b"P", b"POST", b"PU"] {
            let expected = first != b"P";
            assert_eq!(lingers(first), expected, "{first:?}");
        }
        for first in [&b""[..], b"PRI ", b"PR", b"PRI"] {
            assert!(!lingers(first), "{first:?}");
        }
    }

    #[tokio::test]
    async fn an_http2_connection_shuts_down_at_once() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Lingering::new(server);
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let mut preface = [0u8; 24];
        server.read_exact(&mut preface).await.expect("read");
        // The client goes on sending and never closes: no linger all the same.
        client.write_all(&[0u8; 512]).await.expect("write");
        tokio::time::timeout(Duration::from_millis(100), server.shutdown())
            .await
            .expect("no linger")
            .expect("shutdown");
    }

    #[tokio::test]
    async fn shutdown_drains_until_the_peer_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = after_http1_request(server, &mut client).await;
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            // More than the pipe holds: only a draining server lets this finish.
            client_write
                .write_all(&[7u8; 64 * 1024])
                .await
                .expect("drained");
            client_write.shutdown().await.expect("closed");
        });
        server.write_all(b"answer").await.expect("write");
        server.shutdown().await.expect("shutdown");
        writer.await.expect("the client's write completed");
        let mut answer = Vec::new();
        client_read.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"answer");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_gives_up_after_the_linger_time() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = after_http1_request(server, &mut client).await;
        // The client neither sends nor closes: the shutdown ends at LINGER.
        let started = tokio::time::Instant::now();
        server.shutdown().await.expect("shutdown");
        assert_eq!(started.elapsed(), LINGER);
        drop(client);
    }
}
