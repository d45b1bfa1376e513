//! The reading side of a striped flow: chunks from every stream, put back in order.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{HEADER, Incoming, MAX_CHUNK, MAX_EARLY, Striped, invalid, members};

/// What one read on a stream did.
enum Step {
    /// Bytes went to the caller.
    Delivered,
    /// A header or body bytes came in.
    Progress,
    /// Nothing to do now (waiting, ended, or held back while others catch up).
    Idle,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Striped<S> {
    /// One step of reading on stream `at`.
    fn read_step(
        &mut self,
        at: usize,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> io::Result<Step> {
        let stream = &self.streams[at];
        if stream.ended {
            return Ok(Step::Idle);
        }
        match stream.incoming {
            Incoming::Header(..) => self.header_step(at, cx),
            Incoming::Body { .. } => self.body_step(at, cx, buf),
        }
    }

    /// Once the flow's last byte was read, its reader polls no stream again: a stream that
    /// joined is read on here (while the flow is written) for the peer's markers and end, so
    /// that it can leave and go.
    pub(super) fn read_after_the_end(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.read_end != Some(self.read_next) {
            return Ok(());
        }
        for at in 0..self.streams.len() {
            while self.streams[at].leaving.joined
                && !self.streams[at].ended
                && matches!(self.streams[at].incoming, Incoming::Header(..))
                && matches!(self.header_step(at, cx)?, Step::Progress)
            {}
        }
        Ok(())
    }

    /// Reads on in a chunk's header, and starts the chunk once it is whole.
    fn header_step(&mut self, at: usize, cx: &mut Context<'_>) -> io::Result<Step> {
        let stream = &mut self.streams[at];
        let Incoming::Header(bytes, have) = &mut stream.incoming else {
            return Ok(Step::Idle);
        };
        let Some(got) = read_some(&mut stream.io, cx, &mut bytes[*have..])? else {
            return Ok(Step::Idle);
        };
        if got == 0 {
            // yamux ends a stream whose link died as if it were closed: only the end or
            // leave marker tells a finished stream from one that lost chunks.
            if !stream.carried_end && !stream.leaving.peer_left {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "striped flow: a link of the flow was lost",
                ));
            }
            stream.ended = true;
            return Ok(Step::Progress);
        }
        *have += got;
        if *have < HEADER {
            return Ok(Step::Progress);
        }
        if stream.leaving.peer_left {
            return Err(invalid("a chunk after its stream left"));
        }
        let offset = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(bytes[8..].try_into().unwrap_or_default()) as usize;
        stream.incoming = Incoming::Header([0; HEADER], 0);
        if members::is_leave(offset, len) {
            self.peer_left(at);
        } else if len == 0 {
            stream.carried_end = true;
            self.end_at(offset)?;
        } else {
            self.announce(offset, len)?;
            self.streams[at].incoming = Incoming::Body {
                offset,
                len,
                held: Vec::new(),
                filled: 0,
            };
        }
        Ok(Step::Progress)
    }

    /// Checks a chunk fits what came and what is to come, and notes where it ends.
    fn announce(&mut self, offset: u64, len: usize) -> io::Result<()> {
        let end = offset.checked_add(len as u64);
        if len > MAX_CHUNK
            || offset < self.read_next
            || end.is_none_or(|end| self.read_end.is_some_and(|last| end > last))
            || overlaps(&self.early, offset, len)
        {
            return Err(invalid("a chunk out of place"));
        }
        self.announced_end = self.announced_end.max(end.unwrap_or(u64::MAX));
        Ok(())
    }

    /// Reads on in a chunk's bytes: straight to the caller if they are the next, else into
    /// the chunk, kept with those that came early once whole.
    fn body_step(
        &mut self,
        at: usize,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> io::Result<Step> {
        let next = self.read_next;
        let crowded = self.early_bytes >= MAX_EARLY;
        let stream = &mut self.streams[at];
        let Incoming::Body {
            offset,
            len,
            held,
            filled,
        } = &mut stream.incoming
        else {
            return Ok(Step::Idle);
        };
        if *offset == next && held.is_empty() {
            let want = (*len).min(buf.remaining());
            let Some(got) = read_some(&mut stream.io, cx, buf.initialize_unfilled_to(want))? else {
                return Ok(Step::Idle);
            };
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.advance(got);
            *offset += got as u64;
            *len -= got;
            if *len == 0 {
                stream.incoming = Incoming::Header([0; HEADER], 0);
            }
            self.read_next += got as u64;
            return Ok(Step::Delivered);
        }
        if crowded && *offset != next {
            return Ok(Step::Idle);
        }
        if held.is_empty() {
            held.resize(*len, 0);
        }
        let Some(got) = read_some(&mut stream.io, cx, &mut held[*filled..])? else {
            return Ok(Step::Idle);
        };
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        *filled += got;
        if *filled == *len {
            let chunk = std::mem::take(held);
            let at_offset = *offset;
            stream.incoming = Incoming::Header([0; HEADER], 0);
            if at_offset < self.read_next || overlaps(&self.early, at_offset, chunk.len()) {
                return Err(invalid("chunks that overlap"));
            }
            self.early_bytes += chunk.len();
            self.early.insert(at_offset, chunk);
        }
        Ok(Step::Progress)
    }

    fn end_at(&mut self, offset: u64) -> io::Result<()> {
        match self.read_end {
            Some(end) if end != offset => Err(invalid("two ends")),
            _ if offset < self.read_next.max(self.announced_end) => {
                Err(invalid("an end before what came"))
            }
            _ => {
                self.read_end = Some(offset);
                Ok(())
            }
        }
    }

    /// Gives the caller the next bytes if they came early.
    fn deliver_early(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some(mut chunk) = self.early.remove(&self.read_next) else {
            return false;
        };
        let given = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..given]);
        self.early_bytes -= given;
        self.read_next += given as u64;
        if given < chunk.len() {
            chunk.drain(..given);
            self.early.insert(self.read_next, chunk);
        }
        true
    }
}

/// Reads from `io` into `into`: how many bytes came, or `None` while none are there.
fn read_some<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    into: &mut [u8],
) -> io::Result<Option<usize>> {
    let mut read = ReadBuf::new(into);
    match Pin::new(io).poll_read(cx, &mut read)? {
        Poll::Ready(()) => Ok(Some(read.filled().len())),
        Poll::Pending => Ok(None),
    }
}

/// Whether bytes `offset..offset + len` overlap a chunk that came `early`.
fn overlaps(early: &BTreeMap<u64, Vec<u8>>, offset: u64, len: usize) -> bool {
    let end = offset.saturating_add(len as u64);
    let before = early.range(..end).next_back();
    before.is_some_and(|(&at, chunk)| at.saturating_add(chunk.len() as u64) > offset)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Striped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let waker = this.reader_waits(cx);
        let cx = &mut Context::from_waker(&waker);
        this.tend_members(cx)?;
        // What a write left queued goes on here too: a copy loop does not come back to
        // write while its reader waits (a request's end would wait for the answer).
        let _ = this.send_all_queued(cx)?;
        loop {
            if this.deliver_early(buf) {
                this.note_moved();
                return Poll::Ready(Ok(()));
            }
            if this.read_end == Some(this.read_next) {
                return Poll::Ready(Ok(()));
            }
            let mut progressed = false;
            for at in 0..this.streams.len() {
                match this.read_step(at, cx, buf)? {
                    Step::Delivered => {
                        this.note_moved();
                        return Poll::Ready(Ok(()));
                    }
                    Step::Progress => progressed = true,
                    Step::Idle => {}
                }
            }
            if progressed {
                continue;
            }
            // Every stream carried its end, and bytes before it never came.
            if this.streams.iter().all(|stream| stream.ended) {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // A stream the peer left is left here too, and let go once both have.
            this.tend_members(cx)?;
            return Poll::Pending;
        }
    }
}
