//! UDP on the TUN device: the userspace stack hands over every datagram with its addresses;
//! datagrams between the same two addresses form a flow ([`FlowKey`], in a
//! [`kubedev_protocol::udp_flows::UdpFlows`] table), and each flow gets its own stream
//! through an agent. A flow ends after [`IDLE_TIMEOUT`] without a datagram either way.

use std::net::SocketAddr;
use std::sync::Arc;

use kubedev_protocol::udp_flows::{IDLE_TIMEOUT, Queued};
use tokio::sync::mpsc;

use crate::outbound::{Leaves, Outbound};

/// A datagram on the TUN side: payload, source, destination.
pub(super) type Datagram = (Vec<u8>, SocketAddr, SocketAddr);

/// The workstation's address and the cluster address it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowKey {
    pub(super) local: SocketAddr,
    pub(super) remote: SocketAddr,
}

/// Carries one flow from where `leaves` says: `datagrams_rx` brings what the workstation
/// sends; `replies_tx` takes what comes back, addressed to the workstation.
pub(super) async fn relay_flow(
    outbound: Arc<Outbound>,
    leaves: Leaves,
    key: FlowKey,
    datagrams_rx: mpsc::Receiver<Queued>,
    replies_tx: mpsc::Sender<Datagram>,
) {
    let FlowKey { local, remote } = key;
    let flow = match outbound.udp_from(leaves, remote).await {
        Ok(flow) => flow,
        Err(err) if err.kind() == std::io::ErrorKind::NotConnected => {
            return tracing::warn!("udp {local} -> {remote}: {err}");
        }
        Err(err) => return tracing::debug!("udp {local} -> {remote}: {err}"),
    };
    tracing::debug!("udp {local} -> {remote}: open, from the {leaves:?}");
    let reply = |datagram: Vec<u8>| {
        let replies_tx = replies_tx.clone();
        async move {
            replies_tx
                .send((datagram, remote, local))
                .await
                .map_err(std::io::Error::other)
        }
    };
    match flow.relay(datagrams_rx, reply, IDLE_TIMEOUT).await {
        Ok(()) => tracing::debug!("udp {local} -> {remote}: ended"),
        Err(err) => tracing::debug!("udp {local} -> {remote}: {err}"),
    }
}
