//! Where a flow from the workstation leaves from, decided in one place for every way flows
//! come in (the TUN device, the proxy): to the cluster's ranges (and `--also-proxy`'s, but
//! never `--never-proxy`'s) through an agent, dialled from the pod's network; everywhere
//! else from the workstation itself. Names are found the same way: a cluster name, or a
//! short name found along the cluster's search path, by an agent with the pod's resolver;
//! every other name by the workstation's resolver. Nothing but cluster names is ever asked
//! of the cluster.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::future::join_all;
use kubedev::cidr::Cidr;
use kubedev::control::ProxyChoices;
use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::stripe::Striped;
use kubedev_protocol::udp_flows::{Queued, connected_socket, relay_channel};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::either::Either;

use crate::agents::AgentPool;
use crate::agents::striped::{self, Flow};
use crate::network::dns::DnsAnswerer;

/// How long a new flow waits for an agent link before it fails.
const LINK_WAIT: Duration = Duration::from_secs(10);

/// Where a flow leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaves {
    /// From a pod's network, through an agent.
    Cluster,
    /// From the workstation itself.
    Workstation,
}

/// What decides where flows leave from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Routing {
    /// The cluster's pod and service ranges.
    pub(crate) cluster: Vec<Cidr>,
    /// `--also-proxy` and `--never-proxy` (which wins), from tunneld's command line and
    /// every session so far.
    pub(crate) choices: ProxyChoices,
    /// Where a short name is looked for in the cluster, in order: the search path of the
    /// first session's namespace ([`crate::network::dns::search_path`]).
    pub(crate) search: Vec<String>,
}

impl Routing {
    /// Where a flow to `ip` leaves from.
    pub(crate) fn leaves(&self, ip: IpAddr) -> Leaves {
        self.leaves_answered(ip, Leaves::Workstation)
    }

    /// Where a flow to `ip` leaves from, `ip` being an answer of `resolver`: an address the
    /// cluster's DNS gave is the cluster's wherever it is (an ExternalName's, say), unless
    /// `--never-proxy` holds it.
    fn leaves_answered(&self, ip: IpAddr, resolver: Leaves) -> Leaves {
        // An IPv4 address written as IPv6 (`::ffff:10.96.0.10`) is the IPv4 address.
        let ip = ip.to_canonical();
        let within = |ranges: &[Cidr]| ranges.iter().any(|range| range.contains(&ip));
        if within(&self.choices.never_proxy) {
            Leaves::Workstation
        } else if resolver == Leaves::Cluster
            || within(&self.cluster)
            || within(&self.choices.also_proxy)
        {
            Leaves::Cluster
        } else {
            Leaves::Workstation
        }
    }
}

/// A destination's host as a client names it: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    Address(IpAddr),
    Name(String),
}

impl Host {
    /// `10.96.0.10`, `fd00::1` (bracketed or not) or a name.
    pub(crate) fn parse(text: &str) -> Self {
        let bare = text
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(text);
        bare.parse()
            .map_or_else(|_| Self::Name(text.to_owned()), Self::Address)
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Address(ip) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A name's addresses, and which resolver gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) addresses: Vec<IpAddr>,
    pub(crate) by: Leaves,
}

/// A TCP connection, through an agent (`Left`) or from the workstation (`Right`).
pub(crate) type OutboundTcp = Either<Striped<MuxStream>, TcpStream>;

/// Dials flows where [`Routing`] says they leave from.
#[derive(Debug)]
pub(crate) struct Outbound {
    pool: Arc<AgentPool>,
    /// Tells cluster names from others and resolves them with an agent.
    cluster_dns: DnsAnswerer,
    routing: RwLock<Routing>,
}

impl Outbound {
    /// Flows through `pool`'s agents, for a cluster whose domain is `cluster_domain`;
    /// until [`Outbound::set_routing`], every flow leaves from the workstation.
    pub(crate) fn new(pool: Arc<AgentPool>, cluster_domain: &str) -> Self {
        Self {
            cluster_dns: DnsAnswerer::new(pool.clone(), cluster_domain, None),
            pool,
            routing: RwLock::new(Routing::default()),
        }
    }

    /// Routes new flows by `routing` from now on.
    pub(crate) fn set_routing(&self, routing: Routing) {
        *self.routing.write().unwrap_or_else(PoisonError::into_inner) = routing;
    }

    fn read_routing<T>(&self, read: impl FnOnce(&Routing) -> T) -> T {
        read(&self.routing.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Where a flow to `ip` leaves from.
    pub(crate) fn route(&self, ip: IpAddr) -> Leaves {
        self.read_routing(|routing| routing.leaves(ip))
    }

    /// The addresses of `name`: from the cluster's DNS for a cluster name, or a short
    /// name found along the search path; else from the workstation's resolver.
    pub(crate) async fn resolve(&self, name: &str) -> io::Result<Resolved> {
        let candidates = self
            .read_routing(|routing| cluster_candidates(&self.cluster_dns, name, &routing.search));
        let asked = candidates
            .iter()
            .map(|candidate| self.cluster_dns.resolve_in_cluster(candidate));
        let found = join_all(asked)
            .await
            .into_iter()
            .flatten()
            .find(|addresses| !addresses.is_empty());
        if let Some(addresses) = found {
            return Ok(Resolved {
                addresses,
                by: Leaves::Cluster,
            });
        }
        if self.cluster_dns.is_cluster_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name}: no such name in the cluster"),
            ));
        }
        let mut addresses: Vec<IpAddr> = Vec::new();
        for address in tokio::net::lookup_host((name, 0)).await? {
            if !addresses.contains(&address.ip()) {
                addresses.push(address.ip());
            }
        }
        Ok(Resolved {
            addresses,
            by: Leaves::Workstation,
        })
    }

    /// A TCP connection to `target`, from where it leaves.
    pub(crate) async fn tcp(&self, target: SocketAddr) -> io::Result<OutboundTcp> {
        self.tcp_from(self.route(target.ip()), target).await
    }

    /// A TCP connection to `host:port`, trying its addresses in turn.
    pub(crate) async fn tcp_to(&self, host: &Host, port: u16) -> io::Result<OutboundTcp> {
        let name = match host {
            Host::Address(ip) => return self.tcp(SocketAddr::new(*ip, port)).await,
            Host::Name(name) => name,
        };
        let resolved = self.resolve(name).await?;
        let mut failed =
            io::Error::new(io::ErrorKind::NotFound, format!("{name}: no address found"));
        for ip in resolved.addresses {
            let leaves = self.read_routing(|routing| routing.leaves_answered(ip, resolved.by));
            match self.tcp_from(leaves, SocketAddr::new(ip, port)).await {
                Ok(connected) => return Ok(connected),
                Err(err) => failed = err,
            }
        }
        Err(failed)
    }

    /// A TCP connection to `target`, leaving from `leaves` whatever the routing says.
    pub(crate) async fn tcp_from(
        &self,
        leaves: Leaves,
        target: SocketAddr,
    ) -> io::Result<OutboundTcp> {
        match leaves {
            Leaves::Cluster => {
                let link = self.link_for(target).await?;
                let host = target.ip().to_string();
                let flow = Flow::Tcp {
                    host: &host,
                    port: target.port(),
                };
                striped::open(&self.pool, &link, flow)
                    .await
                    .map(Either::Left)
            }
            Leaves::Workstation => TcpStream::connect(target).await.map(Either::Right),
        }
    }

    /// A UDP flow to `target`, leaving from `leaves` whatever the routing says.
    pub(crate) async fn udp_from(
        &self,
        leaves: Leaves,
        target: SocketAddr,
    ) -> io::Result<OutboundUdp> {
        match leaves {
            Leaves::Cluster => {
                let link = self.link_for(target).await?;
                let host = target.ip().to_string();
                let opened = link.open_udp(&host, target.port()).await;
                opened.map(OutboundUdp::Cluster).map_err(io::Error::other)
            }
            Leaves::Workstation => connected_socket(target).await.map(OutboundUdp::Workstation),
        }
    }

    /// The link a flow to `target` goes through: the next in turn.
    async fn link_for(&self, target: SocketAddr) -> io::Result<AgentLink> {
        self.pool.pick(None, LINK_WAIT).await.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                format!("no agent is linked to carry a flow to {target}"),
            )
        })
    }
}

/// The absolute names to ask the cluster for `name`, in order: itself when it is in the
/// cluster's domain; when it is not absolute (`web`, `web.shop`), the name along the
/// search path; none for another absolute name, or localhost.
fn cluster_candidates(cluster_dns: &DnsAnswerer, name: &str, search: &[String]) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let relative = lower.trim_end_matches('.');
    if relative.is_empty() || relative == "localhost" || relative.ends_with(".localhost") {
        return Vec::new();
    }
    if cluster_dns.is_cluster_name(relative) {
        return vec![format!("{relative}.")];
    }
    if lower.ends_with('.') {
        return Vec::new();
    }
    search
        .iter()
        .map(|domain| format!("{relative}.{domain}."))
        .collect()
}

/// A UDP flow, through an agent or from the workstation.
#[derive(Debug)]
pub(crate) enum OutboundUdp {
    /// Datagrams framed on a stream through an agent.
    Cluster(MuxStream),
    /// A socket of the workstation's, connected to the destination.
    Workstation(UdpSocket),
}

impl OutboundUdp {
    /// Carries the flow: what `datagrams_rx` brings goes to the destination, and every
    /// datagram that comes back is handed to `reply`. Ends when either side ends, `reply`
    /// fails, or no datagram went either way for `idle`.
    pub(crate) async fn relay<F, Fut>(
        self,
        datagrams_rx: mpsc::Receiver<Queued>,
        reply: F,
        idle: Duration,
    ) -> io::Result<()>
    where
        F: FnMut(Vec<u8>) -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        match self {
            Self::Cluster(stream) => relay_channel(stream, datagrams_rx, reply, idle).await,
            Self::Workstation(socket) => relay_socket(&socket, datagrams_rx, reply, idle).await,
        }
    }
}

/// [`OutboundUdp::relay`] on a connected socket of the workstation's.
async fn relay_socket<F, Fut>(
    socket: &UdpSocket,
    mut datagrams_rx: mpsc::Receiver<Queued>,
    mut reply: F,
    idle: Duration,
) -> io::Result<()>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let mut buf = vec![0u8; 65535];
    loop {
        // Both are cancel-safe: a datagram is either taken whole or left.
        tokio::select! {
            datagram = datagrams_rx.recv() => match datagram {
                Some(datagram) => {
                    socket.send(&datagram).await?;
                }
                None => return Ok(()),
            },
            received = socket.recv(&mut buf) => reply(buf[..received?].to_vec()).await?,
            () = tokio::time::sleep(idle) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
