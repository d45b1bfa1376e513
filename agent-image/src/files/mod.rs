//! The app container's volumes, served over SFTP on a stream from the workstation, which
//! mounts them with `sshfs -o passive` ([`volumes`] has the operations).
//!
//! sshfs keeps many requests in flight (read-ahead, several files, metadata), so requests
//! are served concurrently: those on one open file or directory in the order they came, as
//! SFTP requires, those on paths each at once; replies go back as they are ready, matched
//! to requests by id.

mod volumes;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::{OpenReply, VOLUMES_ROOT};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::outgoing::answer;
use volumes::Volumes;

/// Requests served at once; further ones wait in the stream, which slows the client down.
/// With reads of at most 256 KiB this bounds a session's read buffers to 16 MiB.
const MAX_IN_FLIGHT: usize = 64;
/// The largest request taken: a write of 256 KiB and its header.
const MAX_REQUEST: u32 = 256 * 1024 + 1024;

/// Serves the volumes over SFTP on `stream` until the workstation ends the session.
pub(crate) async fn serve(mut stream: MuxStream, read_only: bool) -> std::io::Result<()> {
    answer(&mut stream, &OpenReply::Connected).await?;
    let volumes = Volumes::new(std::path::Path::new(VOLUMES_ROOT), read_only);
    serve_sftp(stream, volumes).await
}

/// A request and the slot it holds among [`MAX_IN_FLIGHT`] until it is answered.
type Queued = (Packet, OwnedSemaphorePermit);

async fn serve_sftp<S>(stream: S, volumes: Volumes) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let volumes = Arc::new(volumes);
    let (mut requests, mut replies) = tokio::io::split(stream);
    // reply_tx: every request's task -> the writer, in the order they are answered.
    let (reply_tx, mut reply_rx) = mpsc::channel::<Packet>(MAX_IN_FLIGHT);
    let writing = tokio::spawn(async move {
        while let Some(reply) = reply_rx.recv().await {
            let bytes = Bytes::try_from(reply).map_err(std::io::Error::other)?;
            replies.write_all(&bytes).await?;
        }
        replies.shutdown().await
    });

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // One queue per open handle, served in order by a task of its own.
    let mut lanes: HashMap<String, mpsc::UnboundedSender<Queued>> = HashMap::new();
    let ended = loop {
        let request = match read_request(&mut requests).await {
            Ok(request) => request,
            Err(err) => break err,
        };
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            break std::io::ErrorKind::BrokenPipe.into();
        };
        let Some(handle) = handle_of(&request).map(str::to_owned) else {
            let (volumes, reply_tx) = (volumes.clone(), reply_tx.clone());
            tokio::spawn(async move {
                let _ = reply_tx.send(volumes.respond(request).await).await;
                drop(slot);
            });
            continue;
        };
        let closing = matches!(request, Packet::Close(_));
        let lane = lanes
            .entry(handle.clone())
            .or_insert_with(|| spawn_lane(volumes.clone(), reply_tx.clone()));
        let _ = lane.send((request, slot));
        if closing {
            // The lane answers what it holds, the close last, then ends.
            lanes.remove(&handle);
        }
    };
    drop((lanes, reply_tx));
    let written = writing.await.map_err(std::io::Error::other)?;
    if ended.kind() == std::io::ErrorKind::UnexpectedEof {
        written
    } else {
        Err(ended)
    }
}

/// Serves one handle's requests in order.
fn spawn_lane(
    volumes: Arc<Volumes>,
    reply_tx: mpsc::Sender<Packet>,
) -> mpsc::UnboundedSender<Queued> {
    // lane_tx: the request reader -> this handle's task.
    let (lane_tx, mut lane_rx) = mpsc::unbounded_channel::<Queued>();
    tokio::spawn(async move {
        while let Some((request, slot)) = lane_rx.recv().await {
            if reply_tx.send(volumes.respond(request).await).await.is_err() {
                return;
            }
            drop(slot);
        }
    });
    lane_tx
}

/// The handle a request works on, if it works on one.
fn handle_of(request: &Packet) -> Option<&str> {
    match request {
        Packet::Close(r) => Some(&r.handle),
        Packet::Read(r) => Some(&r.handle),
        Packet::Write(r) => Some(&r.handle),
        Packet::Fstat(r) => Some(&r.handle),
        Packet::FSetStat(r) => Some(&r.handle),
        Packet::ReadDir(r) => Some(&r.handle),
        _ => None,
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
    Ok(Packet::try_from(&mut Bytes::from(body))
        .unwrap_or_else(|_| Packet::error(0, StatusCode::BadMessage)))
}

#[cfg(test)]
mod tests;
