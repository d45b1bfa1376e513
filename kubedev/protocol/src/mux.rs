//! The stream multiplexer: yamux over one connection, driven by one task.
//!
//! yamux buffers each stream's data up to that stream's window, so a stream nobody reads
//! holds back only itself; the connection keeps carrying every other stream. yamux's
//! `Connection` is poll-based and must be polled continuously, so [`spawn`] moves it into a
//! task that also opens outbound streams on request.
//!
//! yamux ends the whole connection when its stream limit is passed, whichever end opened
//! the stream that passed it, and so every flow on it. Each end therefore caps, below that
//! limit, the streams it opens ([`OPENED_STREAMS_CAP`], with [`CONTROL_STREAMS`] more for
//! what keeps the session alive) and the streams it keeps of those the peer opened
//! ([`ACCEPTED_STREAMS_CAP`]): a stream beyond a cap is refused, alone, and the
//! connection carries on. Each [`MuxStream`] holds its place under its cap for its life.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::refusals::Refusals;

/// Which end of the connection this is (yamux numbers streams by it).
pub use yamux::Mode;

/// Streams yamux allows open at once on one connection, both ways together: one more and
/// it ends the connection (an outbound one fails it, an inbound one is answered with
/// GoAway). The caps below keep every end under it.
const MAX_STREAMS: usize = 4096;
/// Streams for flows one end may have open at once that it opened itself: the agent's
/// 1,000-flow target with room. yamux counts both ways under one limit, so both ways share
/// it: this end's and the peer's, with [`CONTROL_STREAMS`] and [`ACCEPTED_STREAMS_CAP`]'s
/// slack, stay 832 under `MAX_STREAMS`, room for streams already dropped that yamux
/// counts until their reset is sent.
pub const OPENED_STREAMS_CAP: usize = 1536;
/// Streams one end may open beyond [`OPENED_STREAMS_CAP`] for what keeps a session alive
/// (keepalive pings, claims; [`MuxHandle::open_control`]): a flood of flows must not fail
/// the keepalive, which would end the link and every flow on it. A few are ever open.
pub const CONTROL_STREAMS: usize = 64;
/// Streams the peer opened that one end keeps at once; more are reset as they arrive. What
/// a peer may open, flows and control, and as much again of control's for streams the
/// peer has let go of that this end's tasks have not yet.
pub const ACCEPTED_STREAMS_CAP: usize = OPENED_STREAMS_CAP + 2 * CONTROL_STREAMS;
// The room left is at least twice yamux's ACK backlog (256): the most streams a peer
// opens before this end has answered any of them, dropped ones included.
const _: () = assert!(
    OPENED_STREAMS_CAP + CONTROL_STREAMS + ACCEPTED_STREAMS_CAP + 512 < MAX_STREAMS,
    "the caps leave yamux's limit room for streams it still counts"
);
/// Streams the peer opened that may wait to be accepted before new ones are refused.
const INBOUND_BACKLOG: usize = 256;
/// What the connection may buffer beyond every stream's first 256 KiB: the room yamux's
/// auto-tuning grows busy streams' windows into (doubling a window that the sender used up
/// in under two round trips), so one stream can keep a bandwidth-delay product in flight
/// (200 MB/s at 80 ms is 16 MB). Without it the windows stay at 256 KiB: about 12 MB/s at
/// 20 ms, whatever the link. A stream so never buffers more than 256 KiB plus this.
const WINDOW_GROWTH: usize = 32 << 20;
/// Data frames up to this size: every frame costs a trip through the port-forward's relays
/// (API server, kubelet, container runtime), so fewer, larger frames carry more per second;
/// 64 KiB still interleaves streams finely.
const MAX_FRAME: usize = 64 * 1024;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The connection has ended.
    #[error("the multiplexed connection is closed")]
    Closed,
    /// This end has as many streams open as it may; the connection carries on.
    #[error("{0} streams are open on the connection: no more until some end")]
    Full(usize),
}

/// One multiplexed stream, with tokio's I/O traits; `shutdown` half-closes it. It holds
/// its place under its end's cap until dropped.
#[derive(Debug)]
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    _place: OwnedSemaphorePermit,
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A stream asked of the driver, with the place it will hold.
type Opening = (
    OwnedSemaphorePermit,
    oneshot::Sender<Result<MuxStream, MuxError>>,
);

enum Command {
    Open(Opening),
    Close,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Open(_) => "Open",
            Command::Close => "Close",
        })
    }
}

/// How many streams one end opens and keeps; [`Caps::DEFAULT`] but in tests.
#[derive(Debug, Clone, Copy)]
struct Caps {
    opened: usize,
    control: usize,
    accepted: usize,
}

impl Caps {
    const DEFAULT: Self = Self {
        opened: OPENED_STREAMS_CAP,
        control: CONTROL_STREAMS,
        accepted: ACCEPTED_STREAMS_CAP,
    };
}

/// Opens streams on, and closes, a connection driven by [`spawn`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    // command_tx: handles -> the connection's driver task.
    command_tx: mpsc::UnboundedSender<Command>,
    /// Places for the streams this end opens for flows, and for control beyond them.
    opened: Arc<Semaphore>,
    control: Arc<Semaphore>,
    opened_cap: usize,
    refused: Arc<Refusals>,
}

impl MuxHandle {
    /// Opens a stream to the peer for a flow; refused while [`OPENED_STREAMS_CAP`] are
    /// open.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let place = self.place(false)?;
        self.open_in(place).await
    }

    /// Opens a stream for what keeps the session alive, which a flood of flows must not
    /// keep out: it may take one of [`CONTROL_STREAMS`] places beyond the flows' cap.
    pub async fn open_control(&self) -> Result<MuxStream, MuxError> {
        let place = self.place(true)?;
        self.open_in(place).await
    }

    fn place(&self, control: bool) -> Result<OwnedSemaphorePermit, MuxError> {
        let reserve = control.then_some(&self.control);
        let place = std::iter::once(&self.opened)
            .chain(reserve)
            .find_map(|places| places.clone().try_acquire_owned().ok());
        if let Some(place) = place {
            return Ok(place);
        }
        if self.is_closed() {
            return Err(MuxError::Closed);
        }
        let cap = self.opened_cap;
        self.refused
            .refuse(&format_args!("{cap} streams opened from this end are open"));
        Err(MuxError::Full(cap))
    }

    async fn open_in(&self, place: OwnedSemaphorePermit) -> Result<MuxStream, MuxError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.command_tx
            .send(Command::Open((place, reply_tx)))
            .map_err(|_| MuxError::Closed)?;
        reply_rx.await.map_err(|_| MuxError::Closed)?
    }

    /// Streams this end opened for flows that are open (control streams aside).
    pub fn flows_open(&self) -> usize {
        self.opened_cap - self.opened.available_permits()
    }

    /// Closes the connection; every stream on it ends.
    pub fn close(&self) {
        let _ = self.command_tx.send(Command::Close);
    }

    /// True once the driver has stopped (the connection ended or was closed).
    pub fn is_closed(&self) -> bool {
        self.command_tx.is_closed()
    }

    /// Completes when the driver has stopped.
    pub async fn closed(&self) {
        self.command_tx.closed().await;
    }

    /// Whether `other` is a handle of the same connection.
    pub fn same_connection(&self, other: &MuxHandle) -> bool {
        self.command_tx.same_channel(&other.command_tx)
    }
}

/// Starts multiplexing over `io`. Streams the peer opens arrive on the returned receiver;
/// it closes when the connection ends.
pub fn spawn<S>(io: S, mode: Mode) -> (MuxHandle, mpsc::Receiver<MuxStream>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    spawn_with(io, mode, Caps::DEFAULT)
}

fn spawn_with<S>(io: S, mode: Mode, caps: Caps) -> (MuxHandle, mpsc::Receiver<MuxStream>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS);
    config.set_max_connection_receive_window(Some(
        MAX_STREAMS * yamux::DEFAULT_CREDIT as usize + WINDOW_GROWTH,
    ));
    config.set_split_send_size(MAX_FRAME);
    let (command_tx, commands_rx) = mpsc::unbounded_channel();
    // inbound_tx: the driver -> whoever serves streams the peer opens.
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_BACKLOG);
    let mut driver = Driver {
        // yamux writes a frame's 12-byte header and its body apart, and flushes before it
        // takes the next frame: buffered, each frame leaves in one write, one TCP segment
        // and one port-forward message, not two.
        connection: yamux::Connection::new(
            tokio::io::BufWriter::with_capacity(2 * MAX_FRAME, io).compat(),
            config,
            mode,
        ),
        commands_rx,
        waiting_opens: VecDeque::new(),
        closing: false,
        inbound_tx,
        accepted: Arc::new(Semaphore::new(caps.accepted)),
        accepted_cap: caps.accepted,
        over_cap: Refusals::new("a stream the peer opened"),
        backlog_full: Refusals::new("a stream the peer opened"),
    };
    tokio::spawn(async move {
        poll_fn(|cx| driver.poll(cx)).await;
        for (_, reply) in driver.waiting_opens.drain(..) {
            let _ = reply.send(Err(MuxError::Closed));
        }
    });
    let handle = MuxHandle {
        command_tx,
        opened: Arc::new(Semaphore::new(caps.opened)),
        control: Arc::new(Semaphore::new(caps.control)),
        opened_cap: caps.opened,
        refused: Arc::new(Refusals::new("to open a stream")),
    };
    (handle, inbound_rx)
}

/// The task that polls one connection.
struct Driver<S> {
    connection: yamux::Connection<Compat<S>>,
    commands_rx: mpsc::UnboundedReceiver<Command>,
    waiting_opens: VecDeque<Opening>,
    closing: bool,
    inbound_tx: mpsc::Sender<MuxStream>,
    /// Places for the streams the peer opens.
    accepted: Arc<Semaphore>,
    accepted_cap: usize,
    over_cap: Refusals,
    backlog_full: Refusals,
}

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Ready once the connection has ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Poll::Ready(Some(command)) = self.commands_rx.poll_recv(cx) {
            match command {
                Command::Open(opening) => self.waiting_opens.push_back(opening),
                Command::Close => self.closing = true,
            }
        }
        if self.closing {
            return self.connection.poll_close(cx).map(|_| ());
        }
        if self.open_waiting(cx).is_ready() {
            return Poll::Ready(());
        }
        // Polling for inbound streams is also what moves every stream's bytes.
        loop {
            match self.connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => self.take_inbound(stream),
                Poll::Ready(Some(Err(err))) => {
                    tracing::debug!("multiplexer: connection failed: {err}");
                    return Poll::Ready(());
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Opens the streams asked for; ready if the connection failed.
    fn open_waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.waiting_opens.is_empty() {
            // Any failure here is the connection's: yamux ends it on every one, its stream
            // limit included, which the caps keep it from.
            let stream = match self.connection.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => stream,
                Poll::Ready(Err(err)) => {
                    tracing::debug!("multiplexer: cannot open a stream: {err}");
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            };
            if let Some((place, reply)) = self.waiting_opens.pop_front() {
                let _ = reply.send(Ok(MuxStream {
                    inner: stream.compat(),
                    _place: place,
                }));
            }
        }
        Poll::Pending
    }

    /// Hands a stream the peer opened on, or resets it (by dropping it) beyond the cap or
    /// the backlog.
    fn take_inbound(&mut self, stream: yamux::Stream) {
        let Ok(place) = self.accepted.clone().try_acquire_owned() else {
            let cap = self.accepted_cap;
            return self
                .over_cap
                .refuse(&format_args!("{cap} streams the peer opened are open"));
        };
        let stream = MuxStream {
            inner: stream.compat(),
            _place: place,
        };
        match self.inbound_tx.try_send(stream) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self
                .backlog_full
                .refuse(&format_args!("{INBOUND_BACKLOG} wait to be served")),
            Err(TrySendError::Closed(_)) => {
                tracing::debug!("multiplexer: a stream the peer opened, and no one to serve it");
            }
        }
    }
}

#[cfg(test)]
mod tests;
