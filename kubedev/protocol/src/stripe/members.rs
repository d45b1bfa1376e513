//! The streams of a striped flow: those that join it as it goes, and those that leave it.
//!
//! A stream leaves when its link is to go (a pod's traffic no longer needs it). The end
//! that is told to leave stops writing on it, sends the leave marker (a chunk of length 0
//! at offset `u64::MAX`) after what it had queued there, and shuts its side; the peer, on
//! reading the marker, does the same. Chunks already under way on it are still read: each
//! carries its own offset. The stream is let go once both sides have left it, so its link
//! carries no flow and can close, and the flow keeps its other streams.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{MAX_STREAMS, Stream, Striped, header};

/// The offset of the leave marker: no byte of a flow is ever there.
pub(super) const LEAVE_AT: u64 = u64::MAX;

/// A stream that joins a striped flow, with what tells it to leave and what it holds while
/// it is a member.
#[derive(Debug)]
pub struct Member<S> {
    io: Box<S>,
    leave: Option<CancellationToken>,
    place: Option<OwnedSemaphorePermit>,
}

impl<S> Member<S> {
    /// `io`, to carry chunks of the flow it joins until the flow ends or its peer leaves it.
    /// Boxed: a channel makes room for its messages when it is made, and a flow that never
    /// carries bulk should not pay for [`MAX_STREAMS`] streams.
    pub fn new(io: S) -> Self {
        Self {
            io: Box::new(io),
            leave: None,
            place: None,
        }
    }

    /// Leaves the flow once `leave` is cancelled (its link is to go).
    #[must_use]
    pub fn leaving_on(mut self, leave: CancellationToken) -> Self {
        self.leave = Some(leave);
        self
    }

    /// Holds `place` (among a bounded number of members) until it has left the flow.
    #[must_use]
    pub fn holding(mut self, place: OwnedSemaphorePermit) -> Self {
        self.place = Some(place);
        self
    }
}

/// Where a stream is in leaving its flow.
#[derive(Debug, Default)]
pub(super) struct Leaving {
    /// Fires when this end is to leave the stream.
    signal: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// This end writes no more chunks on it: it leaves, or the peer left.
    pub(super) writes_done: bool,
    /// This end's leave marker is queued on it.
    marked: bool,
    /// The peer's leave marker came: no chunk comes after it, and its end is no loss.
    pub(super) peer_left: bool,
    /// It joined the flow, which can go on without it: it stays open when this end's side
    /// ends, so that it can still leave (the flow's first stream is shut then).
    pub(super) joined: bool,
    /// Held until the stream has left the flow.
    place: Option<OwnedSemaphorePermit>,
}

impl<S> Stream<S> {
    pub(super) fn joining(member: Member<S>) -> Self {
        let mut stream = Stream::new(*member.io);
        stream.leaving.signal = member.leave.map(|leave| Box::pin(leave.cancelled_owned()));
        stream.leaving.place = member.place;
        stream.leaving.joined = true;
        stream
    }

    /// Whether both sides are done with it, the peer having left it, and it can go.
    fn gone(&self) -> bool {
        self.leaving.peer_left && self.shut && self.ended
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Striped<S> {
    /// Takes the streams that joined, starts leaving those told to, moves leaving streams
    /// on (their marker sent, their side shut), and lets go of those both sides have left.
    pub(super) fn tend_members(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.take_joined(cx);
        for at in 0..self.streams.len() {
            let stream = &mut self.streams[at];
            let told = (stream.leaving.signal.as_mut())
                .is_some_and(|signal| signal.poll_unpin(cx).is_ready());
            if told {
                stream.leaving.signal = None;
                stream.leaving.writes_done = true;
            }
            // Behind what was queued there: the peer reads every chunk sent on it. The
            // flow's first stream, shut when this end's side ended, cannot carry the marker
            // and stays until the flow ends (joined ones stay open for it).
            if stream.leaving.writes_done && !stream.leaving.marked && !stream.shut {
                stream.out.extend_from_slice(&header(LEAVE_AT, 0));
                stream.leaving.marked = true;
            }
            if stream.leaving.marked && !stream.shut && self.send_queued(at, cx)?.is_ready() {
                let stream = &mut self.streams[at];
                if Pin::new(&mut stream.io).poll_shutdown(cx)?.is_ready() {
                    stream.shut = true;
                }
            }
        }
        self.read_after_the_end(cx)?;
        self.streams.retain(|stream| !stream.gone());
        Ok(())
    }

    fn take_joined(&mut self, cx: &mut Context<'_>) {
        let Some(joined_rx) = self.joined_rx.as_mut() else {
            return;
        };
        loop {
            match joined_rx.poll_recv(cx) {
                Poll::Ready(Some(member)) if self.streams.len() < MAX_STREAMS => {
                    let mut stream = Stream::joining(member);
                    if self.ended_ours {
                        stream.out = header(self.written, 0).to_vec();
                    }
                    self.streams.push(stream);
                }
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) => {
                    self.joined_rx = None;
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// Notes the peer's leave marker on stream `at`: this end leaves it too.
    pub(super) fn peer_left(&mut self, at: usize) {
        let leaving = &mut self.streams[at].leaving;
        leaving.peer_left = true;
        leaving.writes_done = true;
    }
}

/// Whether a chunk header is the leave marker.
pub(super) fn is_leave(offset: u64, len: usize) -> bool {
    offset == LEAVE_AT && len == 0
}
