//! tidegate patch: byte counting at the TCP stream of every broker connection, so a client
//! can report what it actually puts on the wire (requests after compression, Kafka framing
//! and, under TLS, TLS records included). See vendor/rskafka/TIDEGATE-PATCH.md.

use std::fmt::Debug;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Told the size of every successful write to and read from a broker's TCP stream.
///
/// Called on the I/O path of every connection the client opens (bootstrap, metadata,
/// controller, partition leaders), possibly from several tasks at once: keep it to an
/// atomic add.
pub trait TransportMeter: Send + Sync + Debug {
    /// `bytes` were written to a broker's socket.
    fn sent(&self, bytes: usize);
    /// `bytes` were read from a broker's socket.
    fn received(&self, bytes: usize);
}

/// A TCP stream that reports what passes through it to an optional [`TransportMeter`].
/// Without a meter it costs one `Option` test per I/O call.
#[derive(Debug)]
pub struct MeteredTcp {
    inner: TcpStream,
    meter: Option<Arc<dyn TransportMeter>>,
}

impl MeteredTcp {
    pub fn new(inner: TcpStream, meter: Option<Arc<dyn TransportMeter>>) -> Self {
        Self { inner, meter }
    }

    fn count_sent(&self, poll: &Poll<std::io::Result<usize>>) {
        if let (Some(meter), Poll::Ready(Ok(n))) = (&self.meter, poll) {
            meter.sent(*n);
        }
    }
}

impl AsyncRead for MeteredTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Some(meter), Poll::Ready(Ok(()))) = (&self.meter, &poll) {
            meter.received(buf.filled().len() - before);
        }
        poll
    }
}

impl AsyncWrite for MeteredTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_sent(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_sent(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
