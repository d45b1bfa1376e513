//! The app's UDP ports the agent took over (replace): the datagrams from each peer form a
//! flow, carried on a stream of its own to the workstation that claimed the port, and its
//! replies go back to the peer from the same port. With no workstation to take them the
//! datagrams are dropped, as a port nobody listens on drops them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubedev_protocol::udp_flows::{UdpFlows, relay_channel};
use kubedev_protocol::{Listener, Transport};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::to_first_workstation;
use crate::workstations::Workstations;

/// How often flows that ended are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// Reads `socket` until it fails, handing each datagram to its peer's flow.
pub(super) async fn serve(
    socket: UdpSocket,
    listener: Listener,
    workstations: Arc<Workstations>,
    idle: Duration,
) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let mut flows = UdpFlows::default();
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
        if let Some(first) = flows.deliver(&peer, buf[..len].to_vec()) {
            let datagrams_rx = flows.start(peer, first);
            let flow = Flow {
                socket: socket.clone(),
                peer,
                app_port: listener.app_port,
                idle,
            };
            tokio::spawn(flow.relay(datagrams_rx, workstations.clone()));
        }
    }
}

/// One peer's datagrams to one of the app's UDP ports.
struct Flow {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    app_port: u16,
    idle: Duration,
}

impl Flow {
    /// Carries what `datagrams_rx` brings from the peer to the first workstation that
    /// takes it, and its replies back, until the flow is idle.
    async fn relay(self, datagrams_rx: mpsc::Receiver<Vec<u8>>, workstations: Arc<Workstations>) {
        let Self {
            socket,
            peer,
            app_port,
            idle,
        } = self;
        let claimants = workstations.claimants(app_port);
        let what = format!("udp {peer}");
        let Some(stream) = to_first_workstation(&claimants, app_port, Transport::Udp, &what).await
        else {
            return tracing::debug!("udp {peer} -> port {app_port}: no workstation, dropped");
        };
        tracing::debug!("udp {peer} -> port {app_port}: to the workstation");
        let reply = |datagram: Vec<u8>| {
            let socket = socket.clone();
            async move { socket.send_to(&datagram, peer).await.map(|_| ()) }
        };
        if let Err(err) = relay_channel(stream, datagrams_rx, reply, idle).await {
            tracing::debug!("udp {peer} -> port {app_port}: {err}");
        }
    }
}
