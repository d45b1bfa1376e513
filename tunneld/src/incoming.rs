//! Incoming connections, from the cluster to the workstation: those the agents took over,
//! delivered to local ports. Each arrives as a stream the agent opened, naming the app's
//! port; it is connected to the local address that port is forwarded to, on the
//! session's [`LocalNetwork`] (a command's own network namespace, say). A TCP
//! connection the agent striped is joined from the other links to its pod once it carries
//! bulk ([`striped`]). A UDP port's stream carries one peer's datagrams, sent from a socket
//! of its own so that replies find their way back.

use std::net::SocketAddr;
use std::sync::Arc;

use kubedev::control::Forward;
use kubedev_protocol::codec::{read_message, write_message};
use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::splice::splice;
use kubedev_protocol::stripe::Striped;
use kubedev_protocol::udp_flows::{IDLE_TIMEOUT, relay_socket};
use kubedev_protocol::{HANDSHAKE_TIMEOUT, MAX_STRIPE_ID, OpenReply, OpenRequest, Transport};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use crate::agents::{AgentPool, striped};
use crate::local_network::LocalNetwork;

/// The most connections handed over on one link that are spread over the pod's other links
/// at once. Each takes a stream on every other link, and a link carries only so many
/// streams: clients in the cluster that hold many connections open must not take them from
/// the workstation's own flows. Beyond it, a connection keeps to the link it came on.
const MOST_SPREAD: usize = 64;

/// Where a link's incoming connections go: the session's forwards, on its local network;
/// and the link they came on, with the pool of its pod's other links to stripe them over.
#[derive(Debug)]
pub(crate) struct Delivery {
    forwards: Arc<[Forward]>,
    local: Arc<LocalNetwork>,
    pool: Arc<AgentPool>,
    link: AgentLink,
    /// A turn to be spread, for at most [`MOST_SPREAD`] connections at once.
    spread: Semaphore,
}

impl Delivery {
    /// Delivers as `forwards` say on `local` what the agent hands over on `link`, one of
    /// `pool`'s.
    pub(crate) fn new(
        forwards: Arc<[Forward]>,
        local: Arc<LocalNetwork>,
        pool: Arc<AgentPool>,
        link: AgentLink,
    ) -> Self {
        let spread = Semaphore::new(MOST_SPREAD);
        Self {
            forwards,
            local,
            pool,
            link,
            spread,
        }
    }
}

/// Serves every stream an agent opens, until its link ends, as `delivery` says.
pub(crate) async fn deliver_all(mut incoming_rx: mpsc::Receiver<MuxStream>, delivery: Delivery) {
    let delivery = Arc::new(delivery);
    while let Some(stream) = incoming_rx.recv().await {
        tokio::spawn(deliver(stream, delivery.clone()));
    }
}

async fn deliver(mut stream: MuxStream, delivery: Arc<Delivery>) {
    let (forwards, local) = (&delivery.forwards, &*delivery.local);
    let request = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut stream)).await;
    let (port, transport, stripe) = match request {
        Ok(Ok(OpenRequest::Incoming {
            port,
            transport,
            stripe,
        })) if stripe.as_ref().is_none_or(|id| id.len() <= MAX_STRIPE_ID) => {
            (port, transport, stripe)
        }
        Ok(Ok(_)) => {
            let reason = format!(
                "tunneld takes only inbound streams, with a stripe id of at most \
                 {MAX_STRIPE_ID} bytes"
            );
            return refuse(stream, reason).await;
        }
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
        return deliver_datagrams(stream, local, target, port).await;
    }
    let mut local = match connect_local(local, forward).await {
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
    let _ = match stripe {
        Some(stripe) => {
            let spreading = delivery.spread.try_acquire().ok();
            let mut flow = match spreading {
                Some(_) => striped::incoming(&delivery.pool, &delivery.link, stream, stripe),
                None => Striped::new(stream, mpsc::channel(1).1),
            };
            let spliced = splice(&mut flow, &mut local).await;
            drop(spreading);
            spliced
        }
        None => splice(&mut stream, &mut local).await,
    };
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

#[cfg(test)]
mod tests;
