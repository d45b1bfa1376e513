//! Wiretaps: copies of a port's traffic for workstations that watch without taking. The
//! real connection or request goes on as if no one watched: its bytes (or body frames)
//! are offered to each copy without waiting, and a copy that falls [`BACKLOG`] behind, or
//! whose workstation is gone or refuses, is given up and counted as dropped. What the
//! workstation answers is read and thrown away.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kubedev_protocol::Transport;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::splice::CHUNK;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{route, to_first_workstation};
use crate::workstations::Wiretapper;

/// How many chunks (of up to [`CHUNK`] bytes) or body frames a copy may be behind the
/// real traffic before it is given up.
const BACKLOG: usize = 64;

/// How long a connection's copy may take to accept a chunk, or to be answered once sent.
const STALL: Duration = Duration::from_secs(10);

/// How long a request's copy may take in all, answer included.
const COPY_LIMIT: Duration = Duration::from_secs(60);

/// A copy's state, shared by the feeding side and the delivering task.
#[derive(Debug, Default)]
struct CopyState(AtomicU8);

const FEEDING: u8 = 0;
const COMPLETE: u8 = 1;
const ABANDONED: u8 = 2;

impl CopyState {
    fn settle(&self, state: u8) {
        let _ = self
            .0
            .compare_exchange(FEEDING, state, Ordering::AcqRel, Ordering::Acquire);
    }

    fn is(&self, state: u8) -> bool {
        self.0.load(Ordering::Acquire) == state
    }
}

/// The feeding side of one copy: pieces offered here reach the copy's workstation, or
/// the copy is given up. Dropped without [`Feed::finish`], the copy is given up.
#[derive(Debug)]
struct Feed<T> {
    pieces_tx: Option<mpsc::Sender<T>>,
    state: Arc<CopyState>,
}

impl<T> Feed<T> {
    fn new() -> (Self, mpsc::Receiver<T>, Arc<CopyState>) {
        // pieces_tx: the real traffic -> the task delivering the copy.
        let (pieces_tx, pieces_rx) = mpsc::channel(BACKLOG);
        let state = Arc::new(CopyState::default());
        let feed = Self {
            pieces_tx: Some(pieces_tx),
            state: state.clone(),
        };
        (feed, pieces_rx, state)
    }

    /// Offers `piece` to the copy; never waits.
    fn offer(&mut self, piece: T) {
        let Some(pieces_tx) = &self.pieces_tx else {
            return;
        };
        if pieces_tx.try_send(piece).is_err() {
            self.state.settle(ABANDONED);
            self.pieces_tx = None;
        }
    }

    /// The real traffic is over: the copy is whole once its backlog is delivered.
    fn finish(mut self) {
        if let Some(pieces_tx) = self.pieces_tx.take() {
            // Settled before the channel closes, so the delivering side never sees the
            // end without knowing it is complete.
            self.state.settle(COMPLETE);
            drop(pieces_tx);
        }
    }
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        self.state.settle(ABANDONED);
    }
}

/// Copies of one connection's client bytes, one per wiretap.
#[derive(Debug, Default)]
pub(super) struct ByteCopies(Vec<Feed<Bytes>>);

impl ByteCopies {
    /// Starts a copy of the connection from `peer` to the app's `app_port` for each of
    /// `wiretappers`.
    pub(super) fn start(wiretappers: Vec<Wiretapper>, app_port: u16, peer: SocketAddr) -> Self {
        let feeds = wiretappers
            .into_iter()
            .map(|wiretapper| {
                let (feed, chunks_rx, state) = Feed::new();
                tokio::spawn(async move {
                    let delivered = deliver_bytes(&wiretapper, app_port, peer, chunks_rx, &state);
                    wiretapper.tally.count(delivered.await.is_ok());
                });
                feed
            })
            .collect();
        Self(feeds)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn offer(&mut self, chunk: &Bytes) {
        for feed in &mut self.0 {
            feed.offer(chunk.clone());
        }
    }

    fn finish(self) {
        self.0.into_iter().for_each(Feed::finish);
    }
}

/// Relays `connection` to `upstream` and back as [`kubedev_protocol::splice::splice`]
/// does, offering every byte the client sends to `copies` on the way.
pub(super) async fn splice_copying<U>(connection: TcpStream, upstream: U, mut copies: ByteCopies)
where
    U: AsyncRead + AsyncWrite + Send,
{
    let (mut from_client, mut to_client) = connection.into_split();
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    let outward = async {
        let mut buffer = BytesMut::with_capacity(CHUNK);
        loop {
            buffer.reserve(CHUNK);
            if from_client.read_buf(&mut buffer).await? == 0 {
                break;
            }
            let chunk = buffer.split().freeze();
            copies.offer(&chunk);
            to_upstream.write_all(&chunk).await?;
        }
        std::mem::take(&mut copies).finish();
        to_upstream.shutdown().await
    };
    let inward = async {
        tokio::io::copy(&mut from_upstream, &mut to_client).await?;
        to_client.shutdown().await
    };
    if let Err(err) = tokio::try_join!(outward, inward) {
        tracing::debug!("wiretapped connection: {err}");
    }
}

/// Sends one connection's copy to `wiretapper`'s workstation; fails if it was given up.
async fn deliver_bytes(
    wiretapper: &Wiretapper,
    app_port: u16,
    peer: SocketAddr,
    mut chunks_rx: mpsc::Receiver<Bytes>,
    state: &CopyState,
) -> Result<(), ()> {
    let stream = open(wiretapper, app_port, &peer).await?;
    let (mut answers, mut to_workstation) = tokio::io::split(stream);
    let discarding = tokio::spawn(async move {
        let _ = tokio::time::timeout(STALL, tokio::io::copy(&mut answers, &mut tokio::io::sink()))
            .await;
    });
    let sent = async {
        while let Some(chunk) = chunks_rx.recv().await {
            if state.is(ABANDONED) {
                return Err(());
            }
            match tokio::time::timeout(STALL, to_workstation.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                _ => return Err(()),
            }
        }
        if !state.is(COMPLETE) {
            return Err(());
        }
        let _ = to_workstation.shutdown().await;
        Ok(())
    };
    let result = sent.await;
    if result.is_err() {
        discarding.abort();
    }
    result
}

async fn open(
    wiretapper: &Wiretapper,
    app_port: u16,
    what: &(dyn std::fmt::Display + Sync),
) -> Result<MuxStream, ()> {
    to_first_workstation(&wiretapper.links, app_port, Transport::Tcp, what)
        .await
        .ok_or(())
}

/// A request's body on its way to its real destination, offering each frame to the
/// request's copies.
#[derive(Debug)]
pub(super) struct TeeBody {
    inner: Incoming,
    copies: Vec<Feed<Frame<Bytes>>>,
}

impl TeeBody {
    /// Starts a copy of `request` for each of `wiretappers` whose filter it matches; the
    /// request to send on carries the body that feeds them.
    pub(super) fn copy_request(
        request: Request<Incoming>,
        wiretappers: &[Wiretapper],
        app_port: u16,
    ) -> Request<TeeBody> {
        let watching: Vec<&Wiretapper> = wiretappers
            .iter()
            .filter(|w| {
                w.filter
                    .as_ref()
                    .is_none_or(|f| route::matches(f, &request))
            })
            .collect();
        let (head, inner) = request.into_parts();
        let copies = watching
            .into_iter()
            .map(|wiretapper| {
                let (feed, frames_rx, state) = Feed::new();
                let copy = copied_request(&head, CopiedBody { frames_rx, state });
                let wiretapper = wiretapper.clone();
                tokio::spawn(async move {
                    let delivered = deliver_request(&wiretapper, app_port, copy);
                    let delivered = tokio::time::timeout(COPY_LIMIT, delivered).await;
                    wiretapper.tally.count(matches!(delivered, Ok(Ok(()))));
                });
                feed
            })
            .collect();
        let mut body = TeeBody { inner, copies };
        body.finish_if_ended();
        Request::from_parts(head, body)
    }

    /// The request's body is all read (or has nothing to read): the copies are whole.
    fn finish_if_ended(&mut self) {
        if self.inner.is_end_stream() {
            self.copies.drain(..).for_each(Feed::finish);
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                for copy in &mut self.copies {
                    if let Some(data) = frame.data_ref() {
                        copy.offer(Frame::data(data.clone()));
                    } else if let Some(trailers) = frame.trailers_ref() {
                        copy.offer(Frame::trailers(trailers.clone()));
                    }
                }
                self.finish_if_ended();
            }
            Poll::Ready(None) => self.copies.drain(..).for_each(Feed::finish),
            // A failed body gives its copies up (dropping them).
            Poll::Ready(Some(Err(_))) => self.copies.clear(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body of a request's copy: the frames the real request offered, then its end, or
/// an error where the copy was given up.
#[derive(Debug)]
struct CopiedBody {
    frames_rx: mpsc::Receiver<Frame<Bytes>>,
    state: Arc<CopyState>,
}

/// The copy of a request was given up.
#[derive(Debug, thiserror::Error)]
#[error("the copy fell behind the real request and was dropped")]
struct Abandoned;

impl Body for CopiedBody {
    type Data = Bytes;
    type Error = Abandoned;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Abandoned>>> {
        match self.frames_rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) if !self.state.is(ABANDONED) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) if self.state.is(COMPLETE) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(Err(Abandoned))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A request like `head` (method, target, version, headers) with `body`.
fn copied_request(head: &hyper::http::request::Parts, body: CopiedBody) -> Request<CopiedBody> {
    let mut copy = Request::new(body);
    *copy.method_mut() = head.method.clone();
    *copy.uri_mut() = head.uri.clone();
    *copy.version_mut() = head.version;
    *copy.headers_mut() = head.headers.clone();
    copy
}

/// Sends `copy` to `wiretapper`'s workstation over a connection of its own, in the
/// request's HTTP version, and throws the answer away.
async fn deliver_request(
    wiretapper: &Wiretapper,
    app_port: u16,
    copy: Request<CopiedBody>,
) -> Result<(), ()> {
    let stream = open(wiretapper, app_port, copy.uri()).await?;
    let io = TokioIo::new(stream);
    let response = if copy.version() == Version::HTTP_2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(drop)?;
        tokio::spawn(connection);
        sender.send_request(copy).await.map_err(drop)?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(drop)?;
        tokio::spawn(connection);
        sender.send_request(copy).await.map_err(drop)?
    };
    response.into_body().collect().await.map_err(drop)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(text.as_bytes()))
    }

    #[tokio::test]
    async fn a_finished_copy_is_whole() {
        let (mut feed, frames_rx, state) = Feed::new();
        feed.offer(frame("GET "));
        feed.offer(frame("body"));
        feed.finish();
        let copied = CopiedBody { frames_rx, state }.collect().await;
        assert_eq!(copied.expect("whole").to_bytes(), "GET body");
    }

    #[tokio::test]
    async fn a_copy_that_falls_behind_or_is_cut_short_fails_rather_than_ending_early() {
        let (mut feed, frames_rx, state) = Feed::new();
        for _ in 0..=BACKLOG {
            feed.offer(frame("x"));
        }
        // The real traffic goes on; the copy no longer takes anything.
        feed.finish();
        assert!(state.is(ABANDONED));
        assert!(CopiedBody { frames_rx, state }.collect().await.is_err());

        let (mut feed, frames_rx, state) = Feed::new();
        feed.offer(frame("x"));
        drop(feed);
        assert!(CopiedBody { frames_rx, state }.collect().await.is_err());
    }
}
