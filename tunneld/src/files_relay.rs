//! The SFTP session between a mount (sshfs) and an agent, relayed so that round trips to
//! the pod are not spent where the answer can be known sooner: a file read from start to
//! end is read ahead ([`read_ahead`]), and a directory is listed in one round trip where
//! the agent offers it ([`listings`]). Everything else passes as it came, in order.
//!
//! A task reads each side; a writer task per side sends what they decide. Packets toward
//! the agent are the client's requests and reads ahead (bounded by
//! [`read_ahead::MOUNT_WINDOW`]); packets toward the client answer its requests. The
//! reader of the agent's side never waits on the agent's writer, so a slow client slows
//! only itself.

mod listings;
mod packet;
mod read_ahead;
mod relay_session;

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use relay_session::{Out, RelaySession};

/// The largest packet a client sends: a write of 256 KiB and its header (sshfs writes
/// 64 KiB).
const MAX_CLIENT_PACKET: usize = 256 * 1024 + 1024;
/// The largest packet an agent sends: a whole listing (1 MiB) and one more batch.
const MAX_AGENT_PACKET: usize = 2 << 20;
/// Packets queued toward each side before its reader waits.
const QUEUED: usize = 64;

/// Relays SFTP between `client` and `agent` until either ends.
pub(crate) async fn relay<C, A>(client: C, agent: A) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    A: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut client_rx, client_tx) = tokio::io::split(client);
    let (mut agent_rx, agent_tx) = tokio::io::split(agent);
    let session = Arc::new(Mutex::new(RelaySession::default()));
    // to_agent_tx: the client's reader -> the agent's writer (requests, reads ahead).
    let (to_agent_tx, to_agent_rx) = mpsc::channel::<Bytes>(QUEUED);
    // to_client_tx: both readers -> the client's writer (replies).
    let (to_client_tx, to_client_rx) = mpsc::channel::<Bytes>(QUEUED);

    let from_client = {
        let (session, to_client_tx) = (session.clone(), to_client_tx.clone());
        async move {
            loop {
                let Some(body) = packet::next_body(&mut client_rx, MAX_CLIENT_PACKET).await? else {
                    return Ok(());
                };
                let sent = lock(&session)
                    .client_sent(&body)
                    .map_err(std::io::Error::other)?;
                for out in sent {
                    let queued = match out {
                        Out::ToAgent(packet) => to_agent_tx.send(packet).await.is_ok(),
                        Out::ToClient(packet) => to_client_tx.send(packet).await.is_ok(),
                    };
                    if !queued {
                        return Ok(());
                    }
                }
            }
        }
    };
    let from_agent = async move {
        loop {
            let Some(body) = packet::next_body(&mut agent_rx, MAX_AGENT_PACKET).await? else {
                return Ok(());
            };
            let reply = lock(&session)
                .agent_sent(body)
                .map_err(std::io::Error::other)?;
            if let Some(reply) = reply
                && to_client_tx.send(reply).await.is_err()
            {
                return Ok(());
            }
        }
    };
    let agent_writing = tokio::spawn(write_all(agent_tx, to_agent_rx));
    let client_writing = tokio::spawn(write_all(client_tx, to_client_rx));
    let client_reading = tokio::spawn(from_client);
    let from_agent = from_agent.await;
    // The agent's side has ended: nothing the client asks can be answered any more, and
    // the client learns so when its side is closed, once what it was sent is written.
    client_reading.abort();
    let from_client = client_reading.await.unwrap_or(Ok(()));
    let to_agent = agent_writing.await.map_err(std::io::Error::other)?;
    let to_client = client_writing.await.map_err(std::io::Error::other)?;
    from_agent.and(from_client).and(to_agent).and(to_client)
}

fn lock(session: &Mutex<RelaySession>) -> std::sync::MutexGuard<'_, RelaySession> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes what comes on `packets_rx` to `writer`, and ends it when they end.
async fn write_all<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut packets_rx: mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    while let Some(packet) = packets_rx.recv().await {
        writer.write_all(&packet).await?;
        // A striped stream holds what a link did not take yet until flushed.
        if packets_rx.is_empty() {
            writer.flush().await?;
        }
    }
    writer.shutdown().await
}

#[cfg(test)]
mod tests;
