//! The app's UDP ports the agent took over (replace): the datagrams from each peer form a
//! flow, carried on a stream of its own to the workstation that claimed the port, and its
//! replies go back to the peer from the same port. With no workstation to take them the
//! datagrams are dropped, as a port nobody listens on drops them. Every source port is a
//! flow, and a client that sends from thousands of them must not take every stream of the
//! link nor every flow of the port: the flows of one port are capped
//! ([`kubedev_protocol::udp_flows::MAX_FLOWS`]), and those of one client address count
//! toward its share of all the agent's ports ([`Sources`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::udp_flows::{Peers, UdpFlows, serve_peers};
use kubedev_protocol::{Listener, Transport};
use tokio::net::UdpSocket;

use super::sources::{Admitted, Sources, UDP_FLOWS_PER_SOURCE};
use super::to_first_workstation;
use crate::workstations::Workstations;

/// Reads `socket` until it fails, handing each peer's datagrams, a flow in `flows`, to
/// the first workstation that takes them; no more flows at once from one client address
/// than `sources` (all the agent's ports) and [`UDP_FLOWS_PER_SOURCE`] (this one) allow.
pub(super) async fn serve(
    socket: UdpSocket,
    listener: Listener,
    workstations: Arc<Workstations>,
    sources: Arc<Sources>,
    flows: UdpFlows<SocketAddr>,
    idle: Duration,
) -> std::io::Result<()> {
    let peers = ClientPeers {
        app_port: listener.app_port,
        workstations,
        sources,
        on_this_port: Arc::new(Sources::new(UDP_FLOWS_PER_SOURCE)),
    };
    serve_peers(Arc::new(socket), flows, idle, peers).await
}

/// The clients of one taken-over UDP port.
struct ClientPeers {
    app_port: u16,
    workstations: Arc<Workstations>,
    /// Their places on all the agent's ports.
    sources: Arc<Sources>,
    /// Their places on this port.
    on_this_port: Arc<Sources>,
}

impl Peers for ClientPeers {
    type Place = (Admitted, Admitted);
    type Stream = MuxStream;

    fn admit(&self, peer: SocketAddr) -> Option<(Admitted, Admitted)> {
        let client = super::any_address::client_address(peer).ip();
        let here = self.on_this_port.admit(client)?;
        Some((here, self.sources.admit(client)?))
    }

    fn open(&self, peer: SocketAddr) -> impl Future<Output = Option<MuxStream>> + Send + 'static {
        let (app_port, workstations) = (self.app_port, self.workstations.clone());
        async move {
            let claimants = workstations.claimants(app_port);
            let what = format!("udp {peer}");
            let stream = to_first_workstation(&claimants, app_port, Transport::Udp, &what).await;
            match &stream {
                Some(_) => tracing::debug!("udp {peer} -> port {app_port}: to the workstation"),
                None => tracing::debug!("udp {peer} -> port {app_port}: no workstation, dropped"),
            }
            stream
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kubedev_protocol::codec::{read_datagram, read_message, write_datagram, write_message};
    use kubedev_protocol::mux::{self, Mode, MuxHandle};
    use kubedev_protocol::udp_flows::{FlowCounts, MAX_FLOWS};
    use kubedev_protocol::{OpenReply, OpenRequest};
    use tokio::sync::mpsc;

    use super::super::sources::CONNECTIONS_PER_SOURCE;
    use super::*;

    /// A workstation (its end of the link, `handle`) that takes every flow and echoes its
    /// datagrams; counts the flows.
    fn echoing_workstation(
        mut streams_rx: mpsc::Receiver<MuxStream>,
        handle: MuxHandle,
    ) -> Arc<AtomicUsize> {
        let taken = Arc::new(AtomicUsize::new(0));
        let counted = taken.clone();
        tokio::spawn(async move {
            let _link = handle;
            while let Some(mut stream) = streams_rx.recv().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(OpenRequest::Incoming { .. }) = read_message(&mut stream).await else {
                        return;
                    };
                    if write_message(&mut stream, &OpenReply::Connected)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut buf = Box::new([0u8; 65535]);
                    while let Ok(Some(len)) = read_datagram(&mut stream, &mut buf).await {
                        if write_datagram(&mut stream, &buf[..len]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        taken
    }

    /// Whether `text` sent from `source` to `to` comes back.
    async fn echoed(source: &UdpSocket, to: SocketAddr, text: &[u8]) -> bool {
        source.send_to(text, to).await.expect("send");
        let mut buf = [0u8; 64];
        let answer = tokio::time::timeout(Duration::from_secs(5), source.recv_from(&mut buf));
        matches!(answer.await, Ok(Ok((len, _))) if &buf[..len] == text)
    }

    /// A taken-over UDP port on loopback whose flows an echoing workstation takes, with
    /// the table's counts and the number of streams the workstation was offered.
    async fn echoed_port(sources: Arc<Sources>) -> (SocketAddr, FlowCounts, Arc<AtomicUsize>) {
        let (agent_end, workstation_end) = tokio::io::duplex(1 << 20);
        let (handle, _agent_streams_rx) = mux::spawn(agent_end, Mode::Server);
        let (workstation, streams_rx) = mux::spawn(workstation_end, Mode::Client);
        let taken = echoing_workstation(streams_rx, workstation);
        let workstations = Arc::new(Workstations::default());
        let id = workstations.add(handle);
        workstations.claim(id, 53, None, None);
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = socket.local_addr().expect("address");
        let listener = Listener {
            port: port.port(),
            app_port: 53,
            app_running: false,
            transport: Transport::Udp,
            tls: false,
        };
        let flows = UdpFlows::default();
        let counts = flows.counts();
        let idle = Duration::from_secs(60);
        tokio::spawn(serve(socket, listener, workstations, sources, flows, idle));
        (port, counts, taken)
    }

    /// One datagram to `port` from each of `count` source ports of `ip`.
    async fn flood(ip: [u8; 4], port: SocketAddr, count: usize) {
        for sent in 0..count {
            // One source port each, closed at once: as many sources, few files.
            let source = UdpSocket::bind(SocketAddr::from((ip, 0)))
                .await
                .expect("bind");
            source.send_to(b"flood", port).await.expect("send");
            if sent % 64 == 0 {
                // Room for the agent to read, so that the flood is not lost in a socket
                // buffer instead of at the cap.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    #[tokio::test]
    async fn thousands_of_sources_take_no_more_flows_than_the_cap_and_earlier_ones_go_on() {
        let sources = Arc::new(Sources::new(CONNECTIONS_PER_SOURCE));
        let (port, counts, taken) = echoed_port(sources).await;
        let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert!(echoed(&first, port, b"first").await);
        // More addresses than the table has room for at their share on this port.
        for last_byte in 2..22 {
            flood([127, 0, 0, last_byte], port, 100).await;
            assert!(counts.flows() <= MAX_FLOWS);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while counts.dropped() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the cap never hit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        assert_eq!(counts.flows(), MAX_FLOWS, "the table is full, no more");
        assert!(echoed(&first, port, b"still here").await, "an earlier flow");
        assert!(
            taken.load(Ordering::SeqCst) <= MAX_FLOWS,
            "one stream a flow"
        );
    }

    #[tokio::test]
    async fn one_address_sending_from_thousands_of_ports_leaves_room_for_others() {
        let sources = Arc::new(Sources::new(CONNECTIONS_PER_SOURCE));
        let (port, counts, _taken) = echoed_port(sources.clone()).await;
        let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert!(echoed(&first, port, b"first").await);
        let flooder: IpAddr = [127, 0, 0, 2].into();
        flood([127, 0, 0, 2], port, 2000).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sources.open_from(flooder) < UDP_FLOWS_PER_SOURCE {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the share never filled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        flood([127, 0, 0, 2], port, 500).await;

        assert_eq!(sources.open_from(flooder), UDP_FLOWS_PER_SOURCE);
        assert_eq!(counts.flows(), 1 + UDP_FLOWS_PER_SOURCE, "no more kept");
        assert_eq!(counts.dropped(), 0, "the table never filled");
        let other = UdpSocket::bind("127.0.0.3:0").await.expect("bind");
        assert!(echoed(&other, port, b"another").await, "another address");
        assert!(echoed(&first, port, b"still here").await, "an earlier flow");
    }
}
