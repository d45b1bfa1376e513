//! The app's UDP ports the agent took over (replace): the datagrams from each peer form a
//! flow, carried on a stream of its own to the workstation that claimed the port, and its
//! replies go back to the peer from the same port. With no workstation to take them the
//! datagrams are dropped, as a port nobody listens on drops them.

use std::sync::Arc;
use std::time::Duration;

use kubedev_protocol::udp_flows::serve_peers;
use kubedev_protocol::{Listener, Transport};
use tokio::net::UdpSocket;

use super::to_first_workstation;
use crate::workstations::Workstations;

/// Reads `socket` until it fails, handing each peer's datagrams to the first workstation
/// that takes them.
pub(super) async fn serve(
    socket: UdpSocket,
    listener: Listener,
    workstations: Arc<Workstations>,
    idle: Duration,
) -> std::io::Result<()> {
    let app_port = listener.app_port;
    serve_peers(Arc::new(socket), idle, move |peer| {
        let workstations = workstations.clone();
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
    })
    .await
}
