//! Incoming connections, from the cluster to the workstation: those the agents took over,
//! delivered to local ports. Each arrives as a stream the agent opened, naming the app's
//! port; it is connected to the local address that port is forwarded to, on the
//! session's [`LocalNetwork`] (a command's own network namespace, say). A UDP port's
//! stream carries one peer's datagrams, sent from a socket of its own so that replies find
//! their way back.

use std::net::SocketAddr;
use std::sync::Arc;

use kubedev::control::Forward;
use kubedev_protocol::codec::{read_message, write_message};
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::splice::splice;
use kubedev_protocol::udp_flows::{IDLE_TIMEOUT, relay_socket};
use kubedev_protocol::{HANDSHAKE_TIMEOUT, OpenReply, OpenRequest, Transport};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::local_network::LocalNetwork;

/// Serves every stream an agent opens, until its link ends, delivering on `local`.
pub(crate) async fn deliver_all(
    mut incoming_rx: mpsc::Receiver<MuxStream>,
    forwards: Arc<[Forward]>,
    local: Arc<LocalNetwork>,
) {
    while let Some(stream) = incoming_rx.recv().await {
        tokio::spawn(deliver(stream, forwards.clone(), local.clone()));
    }
}

async fn deliver(mut stream: MuxStream, forwards: Arc<[Forward]>, local: Arc<LocalNetwork>) {
    let (port, transport) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut stream))
        .await
    {
        Ok(Ok(OpenRequest::Incoming { port, transport })) => (port, transport),
        Ok(Ok(other)) => return refuse(stream, format!("tunneld does not serve {other:?}")).await,
        Ok(Err(err)) => return tracing::debug!("incoming stream without a request: {err}"),
        Err(_) => return tracing::debug!("incoming stream without a request"),
    };
    let Some(forward) = forwards
        .iter()
        .find(|f| f.app_port == port && f.transport == transport)
    else {
        return refuse(
            stream,
            format!("{transport} port {port} is not forwarded here"),
        )
        .await;
    };
    if transport == Transport::Udp {
        let target = (forward.local_host.as_str(), forward.local_port);
        return deliver_datagrams(stream, &local, target, port).await;
    }
    let mut local = match connect_local(&local, forward).await {
        Ok(local) => local,
        Err(reason) => {
            tracing::warn!("a connection for port {port} could not be delivered: {reason}");
            return refuse(stream, reason).await;
        }
    };
    let _ = local.set_nodelay(true);
    if write_message(&mut stream, &OpenReply::Connected)
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!("port {port} -> {}", forward.local_address());
    let _ = splice(&mut stream, &mut local).await;
}

/// Connects to where `forward` delivers, and there only: a server another local user
/// started on another address (`::1` next to `127.0.0.1`) never gets the connection.
async fn connect_local(local: &LocalNetwork, forward: &Forward) -> Result<TcpStream, String> {
    let target = (forward.local_host.as_str(), forward.local_port);
    let connected = match address_of(target).await {
        Ok(address) => local.connect_tcp(address).await,
        Err(err) => Err(err),
    };
    connected.map_err(|err| format!("connect to {}: {err}", forward.local_address()))
}

/// Relays one peer's datagrams for the app's UDP `port` to `target` and back.
async fn deliver_datagrams(
    mut stream: MuxStream,
    local: &LocalNetwork,
    target: (&str, u16),
    port: u16,
) {
    let connected = match address_of(target).await {
        Ok(address) => local.connect_udp(address).await,
        Err(err) => Err(err),
    };
    let socket = match connected {
        Ok(socket) => socket,
        Err(err) => {
            let reason = format!("udp to {}:{}: {err}", target.0, target.1);
            tracing::warn!("datagrams for port {port} could not be delivered: {reason}");
            return refuse(stream, reason).await;
        }
    };
    if write_message(&mut stream, &OpenReply::Connected)
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!("udp port {port} -> {}:{}", target.0, target.1);
    if let Err(err) = relay_socket(stream, &socket, IDLE_TIMEOUT).await {
        tracing::debug!("udp port {port}: {err}");
    }
}

/// The address of a local host and port (an address already, but for `localhost`).
async fn address_of(target: (&str, u16)) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))
}

async fn refuse(mut stream: MuxStream, reason: String) {
    let _ = write_message(&mut stream, &OpenReply::Failed { reason }).await;
}
