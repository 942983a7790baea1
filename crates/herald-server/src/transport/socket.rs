//! A client's TCP socket shared by its connection task and the hub's direct writes.
//!
//! The hub writes a delivery straight to a connection's socket when nothing is queued for it
//! and its writer holds no batch ([`crate::hub::Wire`]): tokio's `try_write` takes `&self`, so
//! the socket lives in an `Arc` that the outbox, the writer and the reader share, instead of
//! tokio's owned halves (which keep their `Arc` private). The halves here implement
//! `AsyncRead`/`AsyncWrite` with readiness polling plus non-blocking calls, which is all the
//! owned halves do; who may write when is decided by the outbox (one writer at a time, whole
//! frames), not by the socket.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Something that owns a connection's `TcpStream`.
pub trait AsTcp: Send + Sync + 'static {
    fn tcp(&self) -> &TcpStream;
}

impl AsTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// The read side of a shared socket.
pub struct ReadHalf<T>(pub Arc<T>);

/// The write side of a shared socket.
pub struct WriteHalf<T>(pub Arc<T>);

impl<T: AsTcp> AsyncRead for ReadHalf<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = self.0.tcp();
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // SAFETY-free: `try_read` writes into initialised memory only.
            let unfilled = buf.initialize_unfilled();
            match tcp.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; `try_read` cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: AsTcp> AsyncWrite for WriteHalf<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tcp = self.0.tcp();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = self.0.tcp();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the write direction down (a FIN after what was written), like tokio's owned half.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(self.0.tcp()))
    }
}

/// Half-closes `tcp` for writing.
pub fn shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    match rustix::net::shutdown(tcp, rustix::net::Shutdown::Write) {
        Ok(()) => Ok(()),
        // Already gone: nothing left to shut down.
        Err(rustix::io::Errno::NOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes `bytes` without blocking: how many the kernel took (0 when its buffer is full or the
/// socket failed: the writer task then finds the error itself).
pub fn try_write(tcp: &TcpStream, bytes: &[u8]) -> usize {
    tcp.try_write(bytes).unwrap_or(0)
}
