//! The app container's volumes, served over SFTP on a stream from the workstation, which
//! mounts them with `sshfs -o passive` ([`volumes`] has the operations).
//!
//! sshfs keeps many requests in flight, and counts on them being served as if one at a
//! time (it sends a file's `open` and its `lstat` together). So requests are served in
//! order, except reads: they change nothing, so the reads that come one after another
//! (read-ahead of a large file, several files read at once) are served concurrently, and
//! the next other request waits for them. Replies are matched to requests by id.

mod volumes;

use std::sync::Arc;

use bytes::Bytes;
use kubedev_protocol::OpenReply;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::stripe::Striped;
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::reply::{answer, refuse};
use crate::stripes::{self, Joined, Registered};
use volumes::Volumes;

/// Reads served at once; further requests wait in the stream, which slows the client down.
/// With reads of at most 256 KiB this bounds a session's read buffers to 16 MiB.
const MAX_IN_FLIGHT: usize = 64;
/// The largest request taken: a write of 256 KiB and its header.
const MAX_REQUEST: u32 = 256 * 1024 + 1024;

/// Serves the volumes under `root` over SFTP until the workstation ends the session, in
/// chunks on `stream` and on the streams that join it: `place` is its registration, none
/// if its id was taken.
pub(crate) async fn serve(
    mut stream: MuxStream,
    place: Option<(Registered<'_>, Joined)>,
    root: &std::path::Path,
    read_only: bool,
) -> std::io::Result<()> {
    let Some((_registered, joined_rx)) = place else {
        return refuse(&mut stream, stripes::TAKEN.to_owned()).await;
    };
    answer(&mut stream, &OpenReply::Connected).await?;
    serve_dir(Striped::new(stream, joined_rx), root, read_only).await
}

/// Serves the files under `root` over SFTP on `stream`, as if they were the volumes.
pub(crate) async fn serve_dir<S>(
    stream: S,
    root: &std::path::Path,
    read_only: bool,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    serve_sftp(stream, Arc::new(Volumes::new(root, read_only))).await
}

/// What answers the requests of a session: the volumes (and in tests, what stands in for
/// them to hold a request up).
trait Respond: Send + Sync + 'static {
    /// The reply to `request`.
    fn respond(&self, request: Packet) -> impl Future<Output = Packet> + Send;
}

impl Respond for Volumes {
    fn respond(&self, request: Packet) -> impl Future<Output = Packet> + Send {
        self.answer(request)
    }
}

async fn serve_sftp<S, R>(stream: S, responder: Arc<R>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    R: Respond,
{
    let (mut requests, mut replies) = tokio::io::split(stream);
    // reply_tx: the request loop and the reads it started -> the writer, as answered.
    let (reply_tx, mut reply_rx) = mpsc::channel::<Packet>(MAX_IN_FLIGHT);
    let writing = tokio::spawn(async move {
        while let Some(reply) = reply_rx.recv().await {
            let bytes = Bytes::try_from(reply).map_err(std::io::Error::other)?;
            replies.write_all(&bytes).await?;
            // A striped stream holds what a link did not take yet until flushed.
            if reply_rx.is_empty() {
                replies.flush().await?;
            }
        }
        replies.shutdown().await
    });

    // The reads started since the last other request and not yet answered.
    let mut reads = JoinSet::new();
    let ended = loop {
        let request = match read_request(&mut requests).await {
            Ok(request) => request,
            Err(err) => break err,
        };
        if matches!(request, Packet::Read(_)) {
            while reads.try_join_next().is_some() {}
            if reads.len() >= MAX_IN_FLIGHT {
                reads.join_next().await;
            }
            let (responder, reply_tx) = (responder.clone(), reply_tx.clone());
            reads.spawn(async move {
                let _ = reply_tx.send(responder.respond(request).await).await;
            });
            continue;
        }
        while reads.join_next().await.is_some() {}
        if reply_tx
            .send(responder.respond(request).await)
            .await
            .is_err()
        {
            break std::io::ErrorKind::BrokenPipe.into();
        }
    };
    while reads.join_next().await.is_some() {}
    drop(reply_tx);
    let written = writing.await.map_err(std::io::Error::other)?;
    if ended.kind() == std::io::ErrorKind::UnexpectedEof {
        written
    } else {
        Err(ended)
    }
}

/// The next request: a length, then the packet; one that cannot be decoded is answered
/// with an error status in its place.
async fn read_request<R: AsyncRead + Unpin>(requests: &mut R) -> std::io::Result<Packet> {
    let length = requests.read_u32().await?;
    if length > MAX_REQUEST {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an SFTP request of {length} bytes, more than {MAX_REQUEST}"),
        ));
    }
    let mut body = vec![0u8; length as usize];
    requests.read_exact(&mut body).await?;
    // Answered under the request's own id, so the client's wait for it ends.
    let id = (body.get(1..5))
        .and_then(|field| <[u8; 4]>::try_from(field).ok())
        .map_or(0, u32::from_be_bytes);
    Ok(Packet::try_from(&mut Bytes::from(body))
        .unwrap_or_else(|_| Packet::error(id, StatusCode::BadMessage)))
}

#[cfg(test)]
mod tests;
