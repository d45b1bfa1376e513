//! The stream multiplexer: yamux over one connection, driven by one task.
//!
//! yamux buffers each stream's data up to that stream's window, so a stream nobody reads
//! holds back only itself; the connection keeps carrying every other stream. yamux's
//! `Connection` is poll-based and must be polled continuously, so [`spawn`] moves it into a
//! task that also opens outbound streams on request.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// One multiplexed stream, with tokio's I/O traits; `shutdown` half-closes it.
pub type MuxStream = Compat<yamux::Stream>;

/// Which end of the connection this is (yamux numbers streams by it).
pub use yamux::Mode;

/// Streams allowed open at once on one connection (the agent's 1,000-flow target, with room).
const MAX_STREAMS: usize = 4096;
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

/// The connection a stream was asked of has ended.
#[derive(Debug, thiserror::Error)]
#[error("the multiplexed connection is closed")]
pub struct MuxClosed;

enum Command {
    Open(oneshot::Sender<Result<MuxStream, MuxClosed>>),
    Close,
}

/// Opens streams on, and closes, a connection driven by [`spawn`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    // command_tx: handles -> the connection's driver task.
    command_tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Open(_) => "Open",
            Command::Close => "Close",
        })
    }
}

impl MuxHandle {
    /// Opens a stream to the peer.
    pub async fn open(&self) -> Result<MuxStream, MuxClosed> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.command_tx
            .send(Command::Open(reply_tx))
            .map_err(|_| MuxClosed)?;
        reply_rx.await.map_err(|_| MuxClosed)?
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
    let mut config = yamux::Config::default();
    config.set_max_num_streams(MAX_STREAMS);
    config.set_max_connection_receive_window(Some(
        MAX_STREAMS * yamux::DEFAULT_CREDIT as usize + WINDOW_GROWTH,
    ));
    config.set_split_send_size(MAX_FRAME);
    let mut connection = yamux::Connection::new(io.compat(), config, mode);
    let (command_tx, mut command_rx) = mpsc::unbounded_channel();
    // inbound_tx: the driver -> whoever serves streams the peer opens.
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_BACKLOG);

    tokio::spawn(async move {
        let mut waiting_opens: VecDeque<oneshot::Sender<Result<MuxStream, MuxClosed>>> =
            VecDeque::new();
        let mut closing = false;
        let ended = poll_fn(|cx| {
            while let Poll::Ready(Some(command)) = command_rx.poll_recv(cx) {
                match command {
                    Command::Open(reply) => waiting_opens.push_back(reply),
                    Command::Close => closing = true,
                }
            }
            if closing {
                return connection.poll_close(cx).map(|_| ());
            }
            while !waiting_opens.is_empty() {
                match connection.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        if let Some(reply) = waiting_opens.pop_front() {
                            let _ = reply.send(Ok(stream.compat()));
                        }
                    }
                    Poll::Ready(Err(err)) => {
                        tracing::debug!("multiplexer: cannot open a stream: {err}");
                        return Poll::Ready(());
                    }
                    Poll::Pending => break,
                }
            }
            // Polling for inbound streams is also what moves every stream's bytes.
            loop {
                match connection.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        if inbound_tx.try_send(stream.compat()).is_err() {
                            tracing::warn!(
                                "multiplexer: refusing a stream, {INBOUND_BACKLOG} already wait"
                            );
                        }
                    }
                    Poll::Ready(Some(Err(err))) => {
                        tracing::debug!("multiplexer: connection failed: {err}");
                        return Poll::Ready(());
                    }
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        ended.await;
        for reply in waiting_opens {
            let _ = reply.send(Err(MuxClosed));
        }
    });
    (MuxHandle { command_tx }, inbound_rx)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes `chunk` to `stream`, which `written` bytes went to already, until a write
    /// makes no progress for half a second or `limit` bytes are written, checking after
    /// each write that no more than `bound` bytes are on their way (written, not yet
    /// `read`); returns the bytes written.
    async fn write_within_bound(
        stream: &mut MuxStream,
        chunk: &[u8],
        mut written: usize,
        limit: usize,
        read: &AtomicUsize,
        bound: usize,
    ) -> usize {
        while written < limit {
            let write = stream.write_all(chunk);
            match tokio::time::timeout(Duration::from_millis(500), write).await {
                Ok(Ok(())) => written += chunk.len(),
                _ => break,
            }
            let unread = written - read.load(Ordering::SeqCst);
            assert!(
                unread <= bound,
                "{unread} bytes on their way, bound {bound}"
            );
        }
        written
    }

    #[tokio::test]
    async fn a_stream_never_has_more_than_its_window_bound_on_its_way() {
        // What the receiver may buffer, plus one write the sender may have in yamux's hands.
        let chunk = vec![7u8; 64 * 1024];
        let bound = yamux::DEFAULT_CREDIT as usize + WINDOW_GROWTH + chunk.len();
        let (a, b) = tokio::io::duplex(256 * 1024);
        let (client, _client_inbound) = spawn(a, Mode::Client);
        let (_server, mut server_inbound) = spawn(b, Mode::Server);
        let mut sending = client.open().await.expect("open");
        let read = Arc::new(AtomicUsize::new(0));
        sending.write_all(&chunk).await.expect("first write");
        let mut receiving = server_inbound.recv().await.expect("inbound");

        // A busy stream, whose window grows, then a reader that stops.
        let read_all = 64 << 20;
        let reader = tokio::spawn({
            let read = read.clone();
            async move {
                let mut buf = vec![0u8; 1 << 20];
                while read.load(Ordering::SeqCst) < read_all {
                    let got = receiving.read(&mut buf).await.expect("read");
                    read.fetch_add(got, Ordering::SeqCst);
                }
                receiving
            }
        });
        let limit = read_all + 4 * bound;
        let written =
            write_within_bound(&mut sending, &chunk, chunk.len(), limit, &read, bound).await;
        let _stalled = reader.await.expect("reader");
        assert!(
            written < limit,
            "the writer was held back once the reader stopped"
        );

        // The connection still carries a new stream.
        let mut other = client.open().await.expect("open another");
        other.write_all(b"still moving").await.expect("write");
        other.shutdown().await.expect("close");
        let mut accepted = server_inbound.recv().await.expect("the other stream");
        let mut got = String::new();
        accepted.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "still moving");
    }

    #[tokio::test]
    async fn both_ends_open_streams_and_half_close() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (client, mut client_inbound) = spawn(a, Mode::Client);
        let (server, mut server_inbound) = spawn(b, Mode::Server);

        let mut outbound = client.open().await.expect("open");
        outbound.write_all(b"to server").await.expect("write");
        outbound.shutdown().await.expect("half-close");
        let mut accepted = server_inbound.recv().await.expect("inbound");
        let mut got = String::new();
        accepted
            .read_to_string(&mut got)
            .await
            .expect("read to FIN");
        assert_eq!(got, "to server");
        // The other direction is still open after the client's half-close.
        accepted.write_all(b"reply").await.expect("write back");
        accepted.shutdown().await.expect("close");
        let mut reply = String::new();
        outbound
            .read_to_string(&mut reply)
            .await
            .expect("read reply");
        assert_eq!(reply, "reply");

        let mut from_server = server.open().await.expect("server opens too");
        from_server.write_all(b"x").await.expect("write");
        from_server.shutdown().await.expect("close");
        let mut seen = client_inbound.recv().await.expect("inbound on client");
        let mut byte = String::new();
        seen.read_to_string(&mut byte).await.expect("read");
        assert_eq!(byte, "x");
    }

    #[tokio::test]
    async fn closing_ends_the_connection_for_both_ends() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (client, _client_inbound) = spawn(a, Mode::Client);
        let (server, mut server_inbound) = spawn(b, Mode::Server);
        client.close();
        assert!(server_inbound.recv().await.is_none(), "peer sees the end");
        assert!(client.open().await.is_err());
        assert!(server.open().await.is_err());
    }
}
