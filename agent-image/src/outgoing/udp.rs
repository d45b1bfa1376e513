//! UDP flows from the pod, for the workstation.

use std::time::Duration;

use kubedev_protocol::OpenReply;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::udp_flows::{connected_socket, relay_socket};

use super::dns;
use crate::reply::{answer, refuse};

/// Exchanges datagrams with `host:port` from the pod until the flow is idle for `idle`.
pub(crate) async fn relay(
    mut stream: MuxStream,
    host: &str,
    port: u16,
    idle: Duration,
) -> std::io::Result<()> {
    let target = match dns::first_address(host, port).await {
        Ok(target) => target,
        Err(reason) => return refuse(&mut stream, reason).await,
    };
    let socket = connected_socket(target).await?;
    answer(&mut stream, &OpenReply::Connected).await?;

    let relayed = relay_socket(stream, &socket, idle).await;
    tracing::debug!("udp flow to {target} ended");
    relayed
}
