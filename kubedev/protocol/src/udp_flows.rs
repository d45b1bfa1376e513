//! UDP has no connections: datagrams between the same two addresses form a flow, and each
//! flow gets its own stream (through an agent, or to the workstation), with the datagrams
//! framed by [`write_datagram`]. [`UdpFlows`] is the table the one task that reads a socket
//! (or the TUN device) uses to hand every datagram to its flow's task; [`relay_channel`]
//! and [`relay_socket`] carry a flow over its stream.
//!
//! Every source is a new flow, and a source costs a sender nothing (one datagram from each
//! of thousands of ports), so a table keeps at most [`MAX_FLOWS`]: datagrams from new
//! sources beyond it are dropped, as a full socket buffer would drop them, while the flows
//! already there go on; flows end after [`IDLE_TIMEOUT`] of silence and make room.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::codec::{read_datagram, write_datagram};
use super::mux::OPENED_STREAMS_CAP;
use super::refusals::Refusals;

/// How long a flow may stay silent, either way, before its stream is closed (each end
/// closes after the same time).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Datagrams waiting for one flow's stream; beyond that they are dropped, as a full
/// socket buffer would.
pub const FLOW_BACKLOG: usize = 256;

/// Flows one table (one UDP port taken over, one `--to-pod` port, the TUN device) keeps
/// at once. Each is a stream on a link and a task: this stays under a link's cap on the
/// streams it opens ([`OPENED_STREAMS_CAP`]) with room for TCP, and is far more peers than
/// a dev session's UDP service (DNS, metrics, a game's players) hears from in a minute.
pub const MAX_FLOWS: usize = 1024;
const _: () = assert!(MAX_FLOWS < OPENED_STREAMS_CAP);

/// The least time between two prunes a full table makes on its own: a flood of new
/// sources at a full table then costs one sweep a second, not one a datagram.
const PRUNE_WHEN_FULL: Duration = Duration::from_secs(1);

/// The live flows by `K` (what tells flows apart: an address pair, or a peer's address).
#[derive(Debug)]
pub struct UdpFlows<K> {
    flows: HashMap<K, mpsc::Sender<Vec<u8>>>,
    cap: usize,
    counts: FlowCounts,
    refused: Refusals,
    last_pruned: Option<Instant>,
}

/// How many flows a [`UdpFlows`] keeps, and the datagrams it dropped for want of room;
/// shared, for whoever watches the table from outside.
#[derive(Debug, Clone, Default)]
pub struct FlowCounts(Arc<Counted>);

#[derive(Debug, Default)]
struct Counted {
    flows: AtomicUsize,
    dropped: AtomicUsize,
}

impl FlowCounts {
    /// The flows kept now.
    pub fn flows(&self) -> usize {
        self.0.flows.load(Ordering::Relaxed)
    }

    /// The datagrams from new sources dropped because the table was full.
    pub fn dropped(&self) -> usize {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl<K> Default for UdpFlows<K> {
    fn default() -> Self {
        Self::with_cap(MAX_FLOWS)
    }
}

impl<K> UdpFlows<K> {
    /// A table that keeps at most `cap` flows.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            flows: HashMap::new(),
            cap,
            counts: FlowCounts::default(),
            refused: Refusals::new("a UDP flow"),
            last_pruned: None,
        }
    }

    /// The table's counts, kept up to date as it changes.
    pub fn counts(&self) -> FlowCounts {
        self.counts.clone()
    }

    /// Forgets flows whose task has ended.
    pub fn prune(&mut self) {
        self.flows.retain(|_, flow| !flow.is_closed());
        self.last_pruned = Some(Instant::now());
        self.counted();
    }

    /// How many flows are kept.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is kept.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn counted(&self) {
        self.counts
            .0
            .flows
            .store(self.flows.len(), Ordering::Relaxed);
    }
}

impl<K: Hash + Eq + Debug> UdpFlows<K> {
    /// Hands `payload` to its flow. Gives it back when the flow has to be started first
    /// (none yet, or the last one ended); drops it when the flow is too far behind.
    pub fn deliver(&mut self, key: &K, payload: Vec<u8>) -> Option<Vec<u8>> {
        let Some(flow) = self.flows.get(key) else {
            return Some(payload);
        };
        match flow.try_send(payload) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => {
                tracing::debug!("udp flow {key:?}: backlog full, datagram dropped");
                None
            }
            Err(TrySendError::Closed(payload)) => {
                self.flows.remove(key);
                self.counted();
                Some(payload)
            }
        }
    }

    /// Starts a flow for `key` with `first` as its first datagram; returns what the flow's
    /// task reads. None, and `first` is dropped, when the table is full.
    pub fn start(&mut self, key: K, first: Vec<u8>) -> Option<mpsc::Receiver<Vec<u8>>> {
        if self.flows.len() >= self.cap && !self.flows.contains_key(&key) {
            let pruned_lately = self
                .last_pruned
                .is_some_and(|at| at.elapsed() < PRUNE_WHEN_FULL);
            if !pruned_lately {
                self.prune();
            }
            if self.flows.len() >= self.cap {
                self.counts.0.dropped.fetch_add(1, Ordering::Relaxed);
                let cap = self.cap;
                self.refused.refuse(&format_args!(
                    "{cap} flows are open, a datagram from {key:?} is dropped"
                ));
                return None;
            }
        }
        let (datagrams_tx, datagrams_rx) = mpsc::channel(FLOW_BACKLOG);
        // A fresh channel has room for one.
        let _ = datagrams_tx.try_send(first);
        self.flows.insert(key, datagrams_tx);
        self.counted();
        Some(datagrams_rx)
    }
}

/// Carries one flow over `stream`: what `datagrams_rx` brings is sent, and every datagram
/// that comes back is handed to `reply`. Ends when either side ends, `reply` fails, or no
/// datagram went either way for `idle`.
pub async fn relay_channel<S, F, Fut>(
    stream: S,
    mut datagrams_rx: mpsc::Receiver<Vec<u8>>,
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

    #[test]
    fn first_datagram_asks_for_a_flow_then_later_ones_follow_it() {
        let mut flows = UdpFlows::default();
        let returned = flows.deliver(&1, b"one".to_vec());
        assert_eq!(returned.as_deref(), Some(&b"one"[..]));

        let mut datagrams_rx = flows.start(1, b"one".to_vec()).expect("room");
        assert_eq!(flows.deliver(&1, b"two".to_vec()), None);
        assert_eq!(datagrams_rx.try_recv().ok().as_deref(), Some(&b"one"[..]));
        assert_eq!(datagrams_rx.try_recv().ok().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn flows_are_told_apart_by_their_key() {
        let mut flows = UdpFlows::default();
        let _first_rx = flows.start(1, Vec::new()).expect("room");
        assert!(flows.deliver(&2, b"x".to_vec()).is_some());
    }

    #[test]
    fn an_ended_flow_is_replaced_and_pruned() {
        let mut flows = UdpFlows::default();
        let ended_rx = flows.start(1, Vec::new()).expect("room");
        let _live_rx = flows.start(2, Vec::new()).expect("room");
        drop(ended_rx);
        flows.prune();
        assert_eq!(flows.len(), 1);

        let ended_rx = flows.start(1, Vec::new()).expect("room");
        drop(ended_rx);
        assert_eq!(
            flows.deliver(&1, b"again".to_vec()).as_deref(),
            Some(&b"again"[..])
        );
    }

    #[tokio::test]
    async fn a_flow_is_relayed_both_ways_and_ends_when_idle() {
        let (near, far) = tokio::io::duplex(1 << 17);
        let (datagrams_tx, datagrams_rx) = mpsc::channel(4);
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

        // A datagram of the largest size crosses whole.
        let big = vec![7u8; 65507];
        datagrams_tx.send(big.clone()).await.expect("send");
        let mut buf = vec![0u8; 65535];
        let (len, from) = peer.recv_from(&mut buf).await.expect("recv");
        assert_eq!(&buf[..len], &big[..]);
        peer.send_to(b"pong", from).await.expect("reply");
        assert_eq!(replies_rx.recv().await.as_deref(), Some(&b"pong"[..]));

        // Quiet for longer than the idle time: the relay ends, and with it the far end.
        relay.await.expect("joined").expect("relayed");
        far_end
            .await
            .expect("joined")
            .expect("far end ends with the stream");
    }

    #[test]
    fn a_flow_that_falls_behind_loses_datagrams_not_others() {
        let mut flows = UdpFlows::default();
        let mut slow_rx = flows.start(1, Vec::new()).expect("room");
        let _other_rx = flows.start(2, Vec::new()).expect("room");
        for _ in 0..FLOW_BACKLOG * 2 {
            assert_eq!(flows.deliver(&1, vec![0]), None);
        }
        assert_eq!(flows.deliver(&2, vec![1]), None);
        let mut received = 0;
        while slow_rx.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, FLOW_BACKLOG);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_drops_new_sources_and_keeps_its_flows() {
        let mut flows = UdpFlows::with_cap(4);
        let counts = flows.counts();
        let mut kept: Vec<_> = (0..4)
            .map(|key| flows.start(key, Vec::new()).expect("room"))
            .collect();
        assert!(flows.start(4, b"new".to_vec()).is_none());
        assert_eq!((counts.flows(), counts.dropped()), (4, 1));
        assert_eq!(flows.deliver(&0, b"old".to_vec()), None);
        assert_eq!(kept[0].try_recv().ok(), Some(Vec::new()));
        assert_eq!(kept[0].try_recv().ok().as_deref(), Some(&b"old"[..]));

        // A flow that ended makes room, once the table is swept.
        drop(kept.remove(3));
        assert!(flows.start(5, Vec::new()).is_none(), "swept a moment ago");
        tokio::time::advance(PRUNE_WHEN_FULL).await;
        assert!(flows.start(5, Vec::new()).is_some());
        assert_eq!((counts.flows(), counts.dropped()), (4, 2));
    }
}
