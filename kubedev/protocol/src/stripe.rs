//! One connection's bytes over several streams, one on each of a pod's links, so that a
//! single flow is not held to what one link carries: a link is one TCP connection to the
//! API server, which keeps only as much in flight as its send buffer allows (2 to 3 MiB:
//! 40 to 60 MiB/s at 50 ms).
//!
//! Each stream of a striped flow carries chunks: the offset of their first byte in the
//! connection (8 bytes), their length (4 bytes), then the bytes. A chunk of length 0 is the
//! end of the sender's side at that offset, and goes on every stream. A chunk goes on
//! whichever stream has taken the previous one in full, so a slow link takes fewer. The
//! receiver puts chunks back in order, holding at most [`MAX_EARLY`] bytes that came ahead
//! of the next; beyond that it reads only the stream that carries the next byte, and the
//! others' windows hold the sender back. Streams join the flow as it goes, and leave it
//! when their link is to go ([`Member`]).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker, ready};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use members::Leaving;
pub use members::Member;

const HEADER: usize = 12;
/// The most bytes of the connection in one chunk: a chunk fills one 64 KiB frame.
pub const MAX_CHUNK: usize = 64 * 1024 - HEADER;
/// Chunks up to this long are copied behind their header and written with it: copying
/// them costs less than a frame of their own, and a stream's queue that holds them stays
/// small while the flow is idle. Longer ones are written from the caller's buffer.
const JOINED_WRITE: usize = 4096;
/// The most bytes held that came ahead of the next one (besides one chunk being read on
/// each stream).
pub const MAX_EARLY: usize = 4 << 20;
/// The most streams one flow is spread over.
pub const MAX_STREAMS: usize = 8;

/// A connection carried in chunks over streams that may be added as it goes.
#[derive(Debug)]
pub struct Striped<S> {
    streams: Vec<Stream<S>>,
    joined_rx: Option<mpsc::Receiver<Member<S>>>,
    /// Told once the flow has moved [`Striped::bulk_after`] bytes either way.
    bulk_tx: Option<(u64, oneshot::Sender<()>)>,
    next_writer: usize,
    written: u64,
    ended_ours: bool,
    read_next: u64,
    /// The end of the furthest chunk announced so far: no end may come before it.
    announced_end: u64,
    early: BTreeMap<u64, Vec<u8>>,
    early_bytes: usize,
    read_end: Option<u64>,
    waiters: Arc<Waiters>,
    /// Wakes both [`Waiters`]: what the streams are polled with.
    either: Waker,
}

/// The tasks that wait on a flow. Its reader and its writer may be two tasks (a split
/// stream), and a stream keeps one waker for each direction, which a poll for the other
/// side would take over: so the streams are polled with a waker that wakes both.
#[derive(Debug, Default)]
struct Waiters {
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.reader.wake();
        self.writer.wake();
    }
}

#[derive(Debug)]
struct Stream<S> {
    io: S,
    out: Vec<u8>,
    out_sent: usize,
    shut: bool,
    incoming: Incoming,
    /// The peer's end marker came on it: its end is an end, not a loss.
    carried_end: bool,
    ended: bool,
    leaving: Leaving,
}

#[derive(Debug)]
enum Incoming {
    Header([u8; HEADER], usize),
    Body {
        offset: u64,
        len: usize,
        /// What was read of it when it was not the next in line: filled up to `filled`.
        held: Vec<u8>,
        filled: usize,
    },
}

impl<S: AsyncRead + AsyncWrite + Unpin> Striped<S> {
    /// A flow on `first`; streams sent on `joined_rx` join it as they come.
    pub fn new(first: S, joined_rx: mpsc::Receiver<Member<S>>) -> Self {
        let waiters = Arc::new(Waiters::default());
        Self {
            streams: vec![Stream::new(first)],
            joined_rx: Some(joined_rx),
            bulk_tx: None,
            next_writer: 0,
            written: 0,
            ended_ours: false,
            read_next: 0,
            announced_end: 0,
            early: BTreeMap::new(),
            early_bytes: 0,
            read_end: None,
            either: Waker::from(waiters.clone()),
            waiters,
        }
    }

    /// Notes that `cx`'s task waits to read, and gives the waker to poll the streams with.
    fn reader_waits(&self, cx: &Context<'_>) -> Waker {
        self.waiters.reader.register(cx.waker());
        self.either.clone()
    }

    /// Notes that `cx`'s task waits to write, and gives the waker to poll the streams with.
    fn writer_waits(&self, cx: &Context<'_>) -> Waker {
        self.waiters.writer.register(cx.waker());
        self.either.clone()
    }

    /// Tells `bulk_tx` once the flow has moved `bytes` either way: when more streams pay.
    pub fn bulk_after(mut self, bytes: u64, bulk_tx: oneshot::Sender<()>) -> Self {
        self.bulk_tx = Some((bytes, bulk_tx));
        self
    }

    /// How many streams carry the flow.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    fn note_moved(&mut self) {
        let moved = self.written + self.read_next;
        if self
            .bulk_tx
            .as_ref()
            .is_some_and(|(after, _)| moved >= *after)
            && let Some((_, bulk_tx)) = self.bulk_tx.take()
        {
            let _ = bulk_tx.send(());
        }
    }

    /// Sends what stream `at` has queued; ready once it has taken all of it.
    fn send_queued(&mut self, at: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = &mut self.streams[at];
        while stream.out_sent < stream.out.len() {
            let sent =
                ready!(Pin::new(&mut stream.io).poll_write(cx, &stream.out[stream.out_sent..]))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            stream.out_sent += sent;
        }
        stream.out.clear();
        stream.out_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends what every stream has queued; ready once all have taken it.
    fn send_all_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut all = true;
        for at in 0..self.streams.len() {
            all &= self.send_queued(at, cx)?.is_ready();
        }
        if all {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl<S> Stream<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            out: Vec::new(),
            out_sent: 0,
            shut: false,
            incoming: Incoming::Header([0; HEADER], 0),
            carried_end: false,
            ended: false,
            leaving: Leaving::default(),
        }
    }
}

fn header(offset: u64, len: usize) -> [u8; HEADER] {
    let mut header = [0; HEADER];
    header[..8].copy_from_slice(&offset.to_be_bytes());
    header[8..].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    header
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("striped flow: {what}"))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Striped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let waker = this.writer_waits(cx);
        let cx = &mut Context::from_waker(&waker);
        if this.ended_ours {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.tend_members(cx)?;
        let count = this.streams.len();
        let mut free = None;
        for turn in 0..count {
            let at = (this.next_writer + turn) % count;
            let open = !this.streams[at].leaving.writes_done;
            if this.send_queued(at, cx)?.is_ready() && open && free.is_none() {
                free = Some(at);
            }
        }
        if this.streams.iter().all(|stream| stream.leaving.writes_done) {
            return Poll::Ready(Err(invalid("every stream left")));
        }
        let Some(at) = free else {
            return Poll::Pending;
        };
        let len = buf.len().min(MAX_CHUNK);
        this.streams[at]
            .out
            .extend_from_slice(&header(this.written, len));
        this.written += len as u64;
        this.next_writer = at + 1;
        this.note_moved();
        if len <= JOINED_WRITE {
            // A short chunk leaves in one write with its header: one frame on the link
            // and one port-forward message, not two, for each message of an exchange.
            this.streams[at].out.extend_from_slice(&buf[..len]);
            let _ = this.send_queued(at, cx)?;
            return Poll::Ready(Ok(len));
        }
        // The bytes go straight from `buf` where the stream takes them; what it does not
        // take yet is queued, and goes with the next call on this flow.
        let mut taken = 0;
        if this.send_queued(at, cx)?.is_ready() {
            let stream = &mut this.streams[at];
            while taken < len {
                match Pin::new(&mut stream.io).poll_write(cx, &buf[taken..len])? {
                    Poll::Ready(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(sent) => taken += sent,
                    Poll::Pending => break,
                }
            }
        }
        this.streams[at].out.extend_from_slice(&buf[taken..len]);
        Poll::Ready(Ok(len))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waker = this.writer_waits(cx);
        let cx = &mut Context::from_waker(&waker);
        this.tend_members(cx)?;
        ready!(this.send_all_queued(cx))?;
        for stream in &mut this.streams {
            ready!(Pin::new(&mut stream.io).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waker = this.writer_waits(cx);
        let cx = &mut Context::from_waker(&waker);
        this.tend_members(cx)?;
        if !this.ended_ours {
            ready!(this.send_all_queued(cx))?;
            // A stream this end left carries nothing after its leave marker.
            for stream in this.streams.iter_mut().filter(|s| !s.leaving.writes_done) {
                stream.out.extend_from_slice(&header(this.written, 0));
            }
            this.ended_ours = true;
        }
        ready!(this.send_all_queued(cx))?;
        let mut all = true;
        let open = |stream: &&mut Stream<S>| !stream.shut && !stream.leaving.joined;
        for stream in this.streams.iter_mut().filter(open) {
            match Pin::new(&mut stream.io).poll_shutdown(cx)? {
                Poll::Ready(()) => stream.shut = true,
                Poll::Pending => all = false,
            }
        }
        if all {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

mod members;
mod reading;
#[cfg(test)]
mod tests;
