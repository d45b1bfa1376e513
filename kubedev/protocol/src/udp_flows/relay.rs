//! Carrying flows: [`relay_channel`] over a stream, from a table's queue; [`relay_socket`]
//! between a stream and a connected socket; [`serve_peers`], a socket whose peers each
//! get a flow.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::{Queued, UdpFlows};
use crate::codec::{read_datagram, write_datagram};

/// Carries one flow over `stream`: what `datagrams_rx` brings is sent, and every datagram
/// that comes back is handed to `reply`. Ends when either side ends, `reply` fails, or no
/// datagram went either way for `idle`.
pub async fn relay_channel<S, F, Fut>(
    stream: S,
    mut datagrams_rx: mpsc::Receiver<Queued>,
    mut reply: F,
    idle: Duration,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    let (mut from_stream, mut to_stream) = tokio::io::split(stream);
    // activity_tx: either direction, on every datagram -> the idle watchdog.
    let (activity_tx, activity_rx) = watch::channel(());
    // Each direction is one long-lived future: a datagram half-read is never cancelled.
    let outgoing = async {
        while let Some(datagram) = datagrams_rx.recv().await {
            write_datagram(&mut to_stream, &datagram).await?;
            activity_tx.send_replace(());
        }
        Ok(())
    };
    let incoming = async {
        let mut buf = Box::new([0u8; 65535]);
        while let Some(len) = read_datagram(&mut from_stream, &mut buf).await? {
            reply(buf[..len].to_vec()).await?;
            activity_tx.send_replace(());
        }
        Ok(())
    };
    tokio::select! {
        ended = outgoing => ended,
        ended = incoming => ended,
        () = idle_for(idle, activity_rx) => Ok(()),
    }
}

/// How often a [`serve_peers`] socket forgets flows that ended.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// What a [`serve_peers`] socket does with a peer that starts a flow.
pub trait Peers {
    /// What a flow holds for as long as it lasts (a place under a cap, say).
    type Place: Send + 'static;
    /// The stream a flow is carried on.
    type Stream: AsyncRead + AsyncWrite + Send + 'static;

    /// Whether `peer` may start a flow now: None drops its datagram before the flow is
    /// kept, so that refused peers never take room in the table.
    fn admit(&self, peer: SocketAddr) -> Option<Self::Place>;

    /// Opens the stream for `peer`'s flow; none, and its datagrams are dropped, as a port
    /// nobody listens on drops them.
    fn open(&self, peer: SocketAddr)
    -> impl Future<Output = Option<Self::Stream>> + Send + 'static;
}

/// Reads `socket` until it fails. Each peer's datagrams form a flow in `flows`, carried on
/// the stream `peers` opens for it; what comes back on the stream goes to the peer from
/// `socket`.
pub async fn serve_peers<P: Peers>(
    socket: Arc<UdpSocket>,
    mut flows: UdpFlows<SocketAddr>,
    idle: Duration,
    peers: P,
) -> std::io::Result<()> {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = tokio::select! {
            received = socket.recv_from(&mut buf) => received?,
            _ = prune.tick() => {
                flows.prune();
                continue;
            }
        };
        let Some(first) = flows.deliver(&peer, buf[..len].to_vec()) else {
            continue;
        };
        let Some(place) = peers.admit(peer) else {
            continue;
        };
        let Some(datagrams_rx) = flows.start(peer, first) else {
            continue;
        };
        let opening = peers.open(peer);
        let socket = socket.clone();
        tokio::spawn(async move {
            let _place = place;
            let Some(stream) = opening.await else {
                return;
            };
            let reply = |datagram: Vec<u8>| {
                let socket = socket.clone();
                async move { socket.send_to(&datagram, peer).await.map(drop) }
            };
            if let Err(err) = relay_channel(stream, datagrams_rx, reply, idle).await {
                tracing::debug!("udp {peer}: {err}");
            }
        });
    }
}

/// Carries one flow between `stream` and `socket` (connected to the other end), until
/// either side ends or no datagram went either way for `idle`.
pub async fn relay_socket<S>(stream: S, socket: &UdpSocket, idle: Duration) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut from_stream, mut to_stream) = tokio::io::split(stream);
    let (activity_tx, activity_rx) = watch::channel(());
    let outgoing = async {
        let mut buf = Box::new([0u8; 65535]);
        while let Some(len) = read_datagram(&mut from_stream, &mut buf).await? {
            socket.send(&buf[..len]).await?;
            activity_tx.send_replace(());
        }
        Ok(())
    };
    let incoming = async {
        let mut buf = vec![0u8; 65535];
        loop {
            let len = socket.recv(&mut buf).await?;
            write_datagram(&mut to_stream, &buf[..len]).await?;
            activity_tx.send_replace(());
        }
    };
    tokio::select! {
        ended = outgoing => ended,
        failed = incoming => failed,
        () = idle_for(idle, activity_rx) => Ok(()),
    }
}

/// A UDP socket on an unspecified address of `target`'s family, connected to `target`.
pub async fn connected_socket(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let unspecified: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(unspecified).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Completes once `activity_rx` has been quiet for `idle`.
async fn idle_for(idle: Duration, mut activity_rx: watch::Receiver<()>) {
    while tokio::time::timeout(idle, activity_rx.changed())
        .await
        .is_ok_and(|changed| changed.is_ok())
    {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flow_is_relayed_both_ways_and_ends_when_idle() {
        let (near, far) = tokio::io::duplex(1 << 17);
        // A datagram of the largest size, first of its flow.
        let big = vec![7u8; 65507];
        let mut flows = UdpFlows::default();
        let datagrams_rx = flows.start(1, big.clone()).expect("room");
        let (replies_tx, mut replies_rx) = mpsc::channel(4);
        let relay = tokio::spawn(relay_channel(
            near,
            datagrams_rx,
            move |reply| {
                let replies_tx = replies_tx.clone();
                async move { replies_tx.send(reply).await.map_err(std::io::Error::other) }
            },
            Duration::from_millis(300),
        ));
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        socket
            .connect(peer.local_addr().expect("addr"))
            .await
            .expect("connect");
        let far_end =
            tokio::spawn(async move { relay_socket(far, &socket, Duration::from_secs(5)).await });

        // It crosses whole.
        let mut buf = vec![0u8; 65535];
        let (len, from) = peer.recv_from(&mut buf).await.expect("recv");
        assert_eq!(&buf[..len], &big[..]);
        peer.send_to(b"pong", from).await.expect("reply");
        assert_eq!(replies_rx.recv().await.as_deref(), Some(&b"pong"[..]));

        assert_eq!(flows.queued_bytes(), 0, "sent, no longer queued");

        // Quiet for longer than the idle time: the relay ends, and with it the far end.
        relay.await.expect("joined").expect("relayed");
        far_end
            .await
            .expect("joined")
            .expect("far end ends with the stream");
    }
}
