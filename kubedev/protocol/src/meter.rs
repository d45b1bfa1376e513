//! What a link carries and how far away its agent is, for deciding how many links a pod
//! needs: the bytes that crossed its connection either way ([`Metered`]) and the shortest
//! round trip seen ([`LinkMeter::fastest_round_trip`]), which is the path's delay without
//! the queues that traffic builds.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counters shared by a link's connection and whoever watches the link.
#[derive(Debug)]
pub struct LinkMeter {
    moved: AtomicU64,
    fastest_micros: AtomicU64,
}

impl Default for LinkMeter {
    fn default() -> Self {
        Self {
            moved: AtomicU64::new(0),
            fastest_micros: AtomicU64::new(u64::MAX),
        }
    }
}

impl LinkMeter {
    /// Bytes read and written on the connection so far, framing included.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// The shortest round trip timed on the link, if one was.
    pub fn fastest_round_trip(&self) -> Option<Duration> {
        match self.fastest_micros.load(Ordering::Relaxed) {
            u64::MAX => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Notes a round trip that took `took`.
    pub fn round_trip(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.fastest_micros.fetch_min(micros, Ordering::Relaxed);
    }

    fn add(&self, bytes: usize) {
        self.moved.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// A connection whose bytes are counted in a [`LinkMeter`].
#[derive(Debug)]
pub struct Metered<S> {
    io: S,
    meter: Arc<LinkMeter>,
}

impl<S> Metered<S> {
    /// Counts what crosses `io` in `meter`.
    pub fn new(io: S, meter: Arc<LinkMeter>) -> Self {
        Self { io, meter }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.meter.add(buf.filled().len() - before);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            this.meter.add(written);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn counts_both_ways() {
        let meter = Arc::new(LinkMeter::default());
        let (near, mut far) = tokio::io::duplex(64);
        let mut metered = Metered::new(near, meter.clone());
        metered.write_all(b"hello").await.expect("written");
        far.write_all(b"hi").await.expect("written back");
        let mut two = [0; 2];
        metered.read_exact(&mut two).await.expect("read");
        assert_eq!(meter.moved(), 7);
    }

    #[test]
    fn keeps_the_fastest_round_trip() {
        let meter = LinkMeter::default();
        assert_eq!(meter.fastest_round_trip(), None);
        meter.round_trip(Duration::from_millis(52));
        meter.round_trip(Duration::from_millis(50));
        meter.round_trip(Duration::from_millis(80));
        assert_eq!(meter.fastest_round_trip(), Some(Duration::from_millis(50)));
    }
}
