//! Relaying a TCP connection over a stream (or to another connection) and back: the copy
//! loop kubedev's relays share (the agent's flows and takeovers, tunneld's delivery to local
//! ports, its `--to-pod` ports and its cluster network). The agent's wiretapped
//! connections copy on their own: their bytes also go to the wiretaps.
//!
//! A relay holds many connections that are mostly idle (a pool of database connections, a
//! long poll), so each direction's buffer starts at [`FIRST_CHUNK`] and doubles, up to
//! [`CHUNK`], each time a read fills it: an idle connection costs a few KiB, a transfer
//! moves a whole frame per read.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes moved per read and write, each way: what a striped flow's chunk
/// carries, so that whether the flow is striped or not, a full read leaves in one 64 KiB
/// frame (a 64 KiB read would leave as a full chunk and a 12-byte one).
pub const CHUNK: usize = crate::stripe::MAX_CHUNK;
/// What each direction's buffer starts at.
pub const FIRST_CHUNK: usize = 4 * 1024;

/// Copies both ways until both are done; each direction ends on its own (half-close), as
/// the endpoints' own FINs do. Returns the bytes moved from `a` to `b` and back.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_to_b, mut b_to_a) = (Direction::default(), Direction::default());
    poll_fn(|cx| {
        let a_to_b = a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let b_to_a = b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        Poll::Ready(Ok((ready!(a_to_b), ready!(b_to_a))))
    })
    .await
}

/// Copies from `reader` to `writer` until `reader` ends, and flushes `writer`; shutting
/// `writer` down is left to the caller. Returns the bytes moved.
pub async fn copy<R, W>(reader: &mut R, writer: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut copying = Copying::default();
    poll_fn(|cx| copying.poll(cx, Pin::new(&mut *reader), Pin::new(&mut *writer))).await
}

/// One direction of [`splice`]: copying, then shutting the writer down.
#[derive(Debug, Default)]
struct Direction {
    copying: Copying,
    done: Option<u64>,
}

impl Direction {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if let Some(moved) = self.done {
            return Poll::Ready(Ok(moved));
        }
        let moved = ready!(self.copying.poll(cx, reader, writer.as_mut()))?;
        ready!(writer.poll_shutdown(cx))?;
        self.done = Some(moved);
        Poll::Ready(Ok(moved))
    }
}

/// A copy under way: the bytes read and not yet written are `buffer[written..filled]`.
#[derive(Debug, Default)]
struct Copying {
    buffer: Vec<u8>,
    written: usize,
    filled: usize,
    read_all: bool,
    unflushed: bool,
    moved: u64,
}

impl Copying {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.written < self.filled {
                let buffered = &self.buffer[self.written..self.filled];
                let sent = ready!(writer.as_mut().poll_write(cx, buffered))?;
                if sent == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += sent;
                self.moved += sent as u64;
                self.unflushed = true;
            }
            if self.read_all {
                ready!(writer.as_mut().poll_flush(cx))?;
                return Poll::Ready(Ok(self.moved));
            }
            self.grow();
            // A unit of the task's budget per read: a relay whose ends never make it wait
            // (neither is a tokio socket: tunneld's userspace stack, a yamux stream) still
            // yields to the runtime's other tasks, such as the link's keepalive.
            let budget = ready!(tokio::task::coop::poll_proceed(cx));
            let mut read = ReadBuf::new(&mut self.buffer);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Ready(result) => {
                    budget.made_progress();
                    result?;
                    (self.written, self.filled) = (0, read.filled().len());
                    self.read_all = self.filled == 0;
                }
                // Nothing more to send for now: what was written leaves.
                Poll::Pending if self.unflushed => {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.unflushed = false;
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Makes the buffer ready for the next read: [`FIRST_CHUNK`] at first, twice as large
    /// once the last read filled it, up to [`CHUNK`].
    fn grow(&mut self) {
        let size = match self.buffer.len() {
            0 => FIRST_CHUNK,
            len if self.filled == len => (len * 2).min(CHUNK),
            len => len,
        };
        self.buffer.resize(size, 0);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn each_direction_ends_on_its_own() {
        let (mut client, mut client_end) = tokio::io::duplex(1024);
        let (mut server_end, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { splice(&mut client_end, &mut server_end).await });
        client.write_all(b"request").await.expect("send");
        client.shutdown().await.expect("half-close");
        let mut request = Vec::new();
        server.read_to_end(&mut request).await.expect("request");
        assert_eq!(request, b"request");
        // The other direction still flows after the first ended.
        server.write_all(b"answer").await.expect("answer");
        server.shutdown().await.expect("close");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("answer");
        assert_eq!(answer, b"answer");
        assert_eq!(relay.await.expect("relay").expect("spliced"), (7, 6));
    }

    #[tokio::test]
    async fn a_transfer_arrives_whole_and_grows_the_buffer_to_a_chunk() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let (mut reader, mut writer) = (&data[..], Vec::new());
        let mut copying = Copying::default();
        let moved = poll_fn(|cx| copying.poll(cx, Pin::new(&mut reader), Pin::new(&mut writer)))
            .await
            .expect("copied");
        assert_eq!(moved, data.len() as u64);
        assert_eq!(writer, data);
        assert_eq!(copying.buffer.len(), CHUNK);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_relay_whose_ends_never_wait_lets_other_tasks_run() {
        let data = vec![7u8; 16 << 20];
        let other = tokio::spawn(async {});
        let (mut reader, mut writer) = (&data[..], Vec::new());
        copy(&mut reader, &mut writer).await.expect("copied");
        assert_eq!(writer.len(), data.len());
        assert!(other.is_finished(), "the copy yielded while it ran");
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_the_first_buffer() {
        let (mut client, mut client_end) = tokio::io::duplex(CHUNK);
        let (mut reader, mut writer) = (&mut client_end, Vec::new());
        let mut copying = Copying::default();
        client.write_all(b"one short message").await.expect("send");
        let polled = copying.poll(
            &mut Context::from_waker(std::task::Waker::noop()),
            Pin::new(&mut reader),
            Pin::new(&mut writer),
        );
        assert!(polled.is_pending(), "the client has not closed");
        assert_eq!(writer, b"one short message");
        assert_eq!(copying.buffer.len(), FIRST_CHUNK);
    }
}
