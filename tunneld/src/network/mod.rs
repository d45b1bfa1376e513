//! The cluster's network on the workstation: a TUN device with routes for the cluster's
//! pod and service ranges, a userspace TCP/UDP stack on it (ipstack), and every flow it
//! accepts carried through an agent; DNS for the cluster's names answered at [`DNS_IP`].

pub(crate) mod dns;
pub(crate) mod resolv;
mod rewake;
mod routes;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ipstack::{IpStackStream, IpStackTcpStream, IpStackUdpStream};
use kubedev::protocol::codec::{read_datagram, write_datagram};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use crate::agents::AgentPool;
pub(crate) use routes::Cidr;

/// The TUN device's name.
pub(crate) const TUN_NAME: &str = "kubedev-tun";
/// The TUN device's own address.
const TUN_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Where the workstation's resolver sends queries (routed into the TUN, answered by tunneld).
pub(crate) const DNS_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);
/// Large packets mean fewer trips through the userspace stack.
const MTU: u16 = 65_000;
/// How long a new flow waits for an agent link before it is refused.
const LINK_WAIT: Duration = Duration::from_secs(10);
/// Bytes moved per read between the stack and a stream.
const CHUNK: usize = 64 * 1024;
/// How long the workstation's socket may take to acknowledge the last data.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);

/// The TUN device with its routes, ready to serve. The device and its routes vanish with
/// the process, whatever way it exits.
pub(crate) struct Network {
    stack: ipstack::IpStack,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

impl Network {
    /// Creates the device and routes `cidrs` (and the DNS address) into it.
    pub(crate) async fn create(cidrs: &[Cidr]) -> anyhow::Result<Self> {
        let mut tun_config = tun::Configuration::default();
        tun_config
            .tun_name(TUN_NAME)
            .address(TUN_ADDRESS)
            .netmask(Ipv4Addr::BROADCAST)
            .mtu(MTU)
            .up();
        let device = tun::create_as_async(&tun_config).with_context(|| {
            format!("cannot create the TUN device {TUN_NAME} (it needs root or CAP_NET_ADMIN)")
        })?;
        let mut routed = cidrs.to_vec();
        routed.push(Cidr::host(DNS_IP));
        routes::add(TUN_NAME, &routed).await?;
        let listed: Vec<String> = routed.iter().map(ToString::to_string).collect();
        tracing::info!("cluster network on {TUN_NAME}: {}", listed.join(", "));

        let mut stack_config = ipstack::IpStackConfig::default();
        stack_config.mtu(MTU).context("MTU")?;
        stack_config.udp_timeout(Duration::from_secs(60));
        Ok(Self {
            stack: ipstack::IpStack::new(stack_config, device),
        })
    }

    /// Serves every flow that enters the device: DNS here, the rest through an agent.
    pub(crate) async fn run(
        mut self,
        pool: Arc<AgentPool>,
        dns: Arc<dns::DnsAnswerer>,
    ) -> anyhow::Result<()> {
        loop {
            match self
                .stack
                .accept()
                .await
                .context("userspace network stack")?
            {
                IpStackStream::Tcp(tcp) => {
                    tokio::spawn(relay_tcp(pool.clone(), tcp));
                }
                IpStackStream::Udp(udp) if udp.peer_addr() == SocketAddr::from((DNS_IP, 53)) => {
                    tokio::spawn(answer_dns(dns.clone(), udp));
                }
                IpStackStream::Udp(udp) => {
                    tokio::spawn(relay_udp(pool.clone(), udp));
                }
                IpStackStream::UnknownTransport(_) | IpStackStream::UnknownNetwork(_) => {}
            }
        }
    }
}

async fn relay_tcp(pool: Arc<AgentPool>, local: IpStackTcpStream) {
    let target = local.peer_addr();
    let source = local.local_addr();
    tracing::debug!("tcp {source} -> {target}: accepted");
    let Some(link) = pool.pick(LINK_WAIT).await else {
        return tracing::warn!("no agent to carry a connection to {target}");
    };
    let remote = match link.open_tcp(&target.ip().to_string(), target.port()).await {
        Ok(remote) => remote,
        Err(err) => return tracing::debug!("tcp {source} -> {target}: {err}"),
    };
    tracing::debug!("tcp {source} -> {target}: open in the pod");
    let (mut remote_rx, mut remote_tx) = tokio::io::split(remote);
    let (local_rx, mut local_tx) = tokio::io::split(rewake::Rewake::new(local));
    let outbound = async {
        let sent = tokio::io::copy_buf(
            &mut BufReader::with_capacity(CHUNK, local_rx),
            &mut remote_tx,
        )
        .await?;
        remote_tx.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    };
    let inbound = async {
        let received = tokio::io::copy_buf(
            &mut BufReader::with_capacity(CHUNK, &mut remote_rx),
            &mut local_tx,
        )
        .await?;
        // The FIN goes out once everything written is acknowledged.
        tokio::time::timeout(SHUTDOWN_LIMIT, local_tx.shutdown())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok::<_, std::io::Error>(received)
    };
    match tokio::try_join!(outbound, inbound) {
        Ok((sent, received)) => {
            tracing::debug!("tcp {source} -> {target}: done, {sent} bytes out, {received} in")
        }
        Err(err) => tracing::debug!("tcp {source} -> {target}: {err}"),
    }
}

async fn relay_udp(pool: Arc<AgentPool>, local: IpStackUdpStream) {
    let target = local.peer_addr();
    let Some(link) = pool.pick(LINK_WAIT).await else {
        return tracing::warn!("no agent to carry datagrams to {target}");
    };
    let remote = match link.open_udp(&target.ip().to_string(), target.port()).await {
        Ok(remote) => remote,
        Err(err) => return tracing::debug!("udp to {target}: {err}"),
    };
    let (mut local_rx, mut local_tx) = tokio::io::split(local);
    let (mut remote_rx, mut remote_tx) = tokio::io::split(remote);
    // Each read of the stack's UDP stream is one datagram; the tunnel frames them.
    let outbound = async {
        let mut buf = vec![0u8; 65535];
        loop {
            let len = local_rx.read(&mut buf).await?;
            if len == 0 {
                return Ok::<_, std::io::Error>(());
            }
            write_datagram(&mut remote_tx, &buf[..len]).await?;
        }
    };
    let inbound = async {
        let mut buf = Box::new([0u8; 65535]);
        while let Some(len) = read_datagram(&mut remote_rx, &mut buf).await? {
            local_tx.write_all(&buf[..len]).await?;
        }
        Ok(())
    };
    // The stack ends an idle flow (udp_timeout); the agent ends its side likewise.
    if let Err(err) = tokio::select! { done = outbound => done, done = inbound => done } {
        tracing::debug!("udp to {target}: {err}");
    }
}

async fn answer_dns(dns: Arc<dns::DnsAnswerer>, mut local: IpStackUdpStream) {
    let mut query = vec![0u8; 65535];
    while let Ok(len) = local.read(&mut query).await {
        if len == 0 {
            return;
        }
        let answer = dns.answer(&query[..len]).await;
        if local.write_all(&answer).await.is_err() {
            return;
        }
    }
}
