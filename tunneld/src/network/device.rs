//! The TUN device (Linux): a userspace TCP/IP stack on it (smoltcp), and every flow it
//! accepts carried through an agent; DNS answered at [`DNS_IP`].

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{IntoRawFd as _, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use netstack_smoltcp::{StackBuilder, TcpStream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::udp::{Datagram, FlowKey};
use super::{DNS_IP, dns};
use crate::outbound::{Leaves, Outbound};
use kubedev_protocol::splice::copy;
use kubedev_protocol::udp_flows::UdpFlows;

/// The TUN device's name, as a template: the kernel puts the first free number for `%d`,
/// so every tunneld on the machine (one per user and kube context) gets a device of its
/// own. [`Network::name`] is the name it got.
pub(crate) const TUN_NAME: &str = "kubedev-tun%d";
/// The TUN device's own address.
const TUN_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const MTU: u16 = kubedev::control::TUN_MTU;
/// Each TCP connection's window in the userspace stack, each way. The TUN's round trip
/// is tiny, so this is plenty for full speed while keeping 1,000 flows affordable.
const TCP_WINDOW: u32 = 512 * 1024;
/// Packets queued between the device and the stack.
const PACKET_QUEUE: usize = 1024;
/// How long the workstation's socket may take to acknowledge the last data.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(60);
/// How often flows that went idle are forgotten.
const UDP_PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// The TUN device, ready to serve. The device and its routes ([`tun_routes::TunRoutes`])
/// vanish with the process, whatever way it exits.
pub(crate) struct Network {
    device: tun::AsyncDevice,
    name: String,
    routed: Routed,
}

/// What the device's routes send into it, which decides where its flows leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routed {
    /// Only the cluster's ranges (the machine's device): every flow is the cluster's, and
    /// one dialled from the workstation would only come back into the device.
    ClusterOnly,
    /// Everything (a command's own namespace, whose default route is the device): flows
    /// leave where [`Outbound::route`] says, the rest from the workstation.
    Everything,
}

impl Routed {
    fn leaves(self, outbound: &Outbound, target: std::net::IpAddr) -> Leaves {
        match self {
            Self::ClusterOnly => Leaves::Cluster,
            Self::Everything => outbound.route(target),
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

impl Network {
    /// Creates the device, with no route yet.
    pub(crate) fn create() -> anyhow::Result<Self> {
        let device = tun::create_as_async(&machine_device_config())
            .map_err(|err| anyhow::anyhow!(why_no_device(&err, nix::unistd::geteuid().as_raw())))?;
        use tun::AbstractDevice as _;
        let name = device.tun_name().context("the TUN device's name")?;
        if let Err(err) = confine(&name, Ipv6::Confined) {
            tracing::warn!("{name} heeds router advertisements and any source address: {err}");
        }
        Ok(Self {
            device,
            name,
            routed: Routed::ClusterOnly,
        })
    }

    /// The device's name, as the kernel gave it (empty for one in a command's namespace).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Serves a TUN device made elsewhere and configured by its maker (addresses, routes,
    /// MTU [`kubedev::control::TUN_MTU`]): the network helper's, on this machine, named
    /// `name`; or one in a command's own network namespace, whose name means nothing here.
    pub(crate) fn from_fd(tun: OwnedFd, name: String, routed: Routed) -> anyhow::Result<Self> {
        let mut tun_config = tun::Configuration::default();
        tun_config.raw_fd(tun.into_raw_fd()).close_fd_on_drop(true);
        let device = tun::create_as_async(&tun_config).context("serve a TUN device")?;
        Ok(Self {
            device,
            name,
            routed,
        })
    }

    /// Serves every flow that enters the device: DNS here, the rest through an agent or,
    /// for a device that takes everything, from the workstation where it is not the
    /// cluster's.
    pub(crate) async fn run(
        self,
        outbound: Arc<Outbound>,
        dns: Arc<dns::DnsAnswerer>,
    ) -> anyhow::Result<()> {
        let (stack, runner, udp, tcp) = StackBuilder::default()
            .enable_tcp(true)
            .enable_udp(true)
            .mtu(usize::from(MTU))
            .stack_buffer_size(PACKET_QUEUE)
            .tcp_buffer_size(PACKET_QUEUE)
            .udp_buffer_size(PACKET_QUEUE)
            .tcp_recv_buffer_size(TCP_WINDOW)
            .tcp_send_buffer_size(TCP_WINDOW)
            .build()
            .context("userspace network stack")?;
        let (Some(runner), Some(udp), Some(mut tcp)) = (runner, udp, tcp) else {
            anyhow::bail!("userspace network stack without TCP or UDP");
        };
        let device = Arc::new(self.device);
        let routed = self.routed;
        let (mut into_stack, mut out_of_stack) = stack.split();

        let from_device = {
            let device = device.clone();
            async move {
                let mut packet = vec![0u8; usize::from(MTU)];
                loop {
                    let len = device.recv(&mut packet).await?;
                    into_stack.send(packet[..len].to_vec()).await?;
                }
            }
        };
        let to_device = async move {
            while let Some(packet) = out_of_stack.next().await {
                device.send(&packet?).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let dns_address = SocketAddr::from((DNS_IP, 53));
        let accept_tcp = async {
            while let Some((stream, _, _)) = tcp.next().await {
                if *stream.remote_addr() == dns_address {
                    tokio::spawn(answer_dns_over_tcp(dns.clone(), stream));
                } else {
                    tokio::spawn(relay_tcp(outbound.clone(), routed, stream));
                }
            }
        };
        tokio::select! {
            done = runner => done.context("userspace TCP stack")?,
            done = from_device => {
                let done: std::io::Result<()> = done;
                done.context("reading the TUN device")?;
            }
            done = to_device => done.context("writing the TUN device")?,
            () = accept_tcp => {}
            () = serve_udp(outbound.clone(), routed, dns.clone(), udp) => {}
        }
        anyhow::bail!("the userspace network stack stopped")
    }
}

/// Why no TUN device could be made, in words for the user of tunneld running as `uid`.
fn why_no_device(err: &tun::Error, uid: u32) -> String {
    let errno = match err {
        tun::Error::Io(io) => io.raw_os_error(),
        _ => None,
    };
    match errno.map(nix::errno::Errno::from_raw) {
        Some(nix::errno::Errno::EPERM) => format!(
            "creating a TUN device needs root or CAP_NET_ADMIN, and tunneld runs as uid {uid} \
             without them"
        ),
        Some(nix::errno::Errno::EACCES) => format!(
            "/dev/net/tun may not be opened by uid {uid}, whom tunneld runs as (creating a TUN \
             device needs root or CAP_NET_ADMIN)"
        ),
        Some(nix::errno::Errno::EBUSY) => {
            "every TUN device name tunneld may take is in use (busy)".to_owned()
        }
        Some(nix::errno::Errno::ENOENT | nix::errno::Errno::ENODEV) => {
            "this machine has no /dev/net/tun (the tun kernel module is not loaded)".to_owned()
        }
        _ => format!("cannot create a TUN device: {err}"),
    }
}

/// The machine's TUN device: its own address, [`MTU`], up, named from [`TUN_NAME`].
fn machine_device_config() -> tun::Configuration {
    let mut config = tun::Configuration::default();
    config
        .tun_name(TUN_NAME)
        .address(TUN_ADDRESS)
        .netmask(Ipv4Addr::BROADCAST)
        .mtu(MTU)
        .up();
    config
}

/// Creates the machine's TUN device for another process to serve (the network helper's
/// work, as root): the device and the name the kernel gave it.
pub(crate) fn create_machine_device() -> anyhow::Result<(tun::Device, String)> {
    let device = tun::create(&machine_device_config())
        .map_err(|err| anyhow::anyhow!(why_no_device(&err, nix::unistd::geteuid().as_raw())))?;
    use tun::AbstractDevice as _;
    let name = device.tun_name().context("the TUN device's name")?;
    confine(&name, Ipv6::Off).with_context(|| format!("confine {name}"))?;
    Ok((device, name))
}

/// What a device takes of IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ipv6 {
    /// None at all: a device whose writer is not root (the network helper's, handed to a
    /// user's tunneld). Linux has no reverse-path check for IPv6, so its writer could
    /// otherwise put packets of any source into the machine: forwarded, or delivered to
    /// local sockets as if from a neighbour or from the machine itself.
    Off,
    /// The cluster's flows, and nothing that changes the machine: no router advertisement
    /// (one written into it would add routes, even a default one, and addresses), no
    /// redirect, no source route.
    Confined,
}

/// Has the kernel take from the device only what the cluster's network is: IPv4 whose
/// source is routed back into it (no spoofed source forwarded or delivered), and IPv6 as
/// `ipv6` says.
pub(crate) fn confine(device: &str, ipv6: Ipv6) -> std::io::Result<()> {
    let set = |path: String, value: &str| std::fs::write(path, value);
    let settings: &[(&str, &str)] = match ipv6 {
        Ipv6::Off => &[("disable_ipv6", "1")],
        Ipv6::Confined => &[
            ("accept_ra", "0"),
            ("autoconf", "0"),
            ("accept_redirects", "0"),
            ("accept_source_route", "0"),
        ],
    };
    for (setting, value) in settings {
        match set(format!("/proc/sys/net/ipv6/conf/{device}/{setting}"), value) {
            // A kernel without IPv6 has nothing to take.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    set(format!("/proc/sys/net/ipv4/conf/{device}/rp_filter"), "1")
}

/// Reads every datagram from the stack: DNS queries are answered here, the rest go to their
/// flow. Replies from all flows reach the stack through one writer.
async fn serve_udp(
    outbound: Arc<Outbound>,
    routed: Routed,
    dns: Arc<dns::DnsAnswerer>,
    socket: netstack_smoltcp::UdpSocket,
) {
    let (mut from_stack, mut to_stack) = socket.split();
    // Replies, from flows and the DNS answerer, on their way back to the workstation.
    let (replies_tx, mut replies_rx) = mpsc::channel::<Datagram>(PACKET_QUEUE);
    let write_replies = async move {
        while let Some(reply) = replies_rx.recv().await {
            if to_stack.send(reply).await.is_err() {
                return;
            }
        }
    };
    let dns_address = SocketAddr::from((DNS_IP, 53));
    let dispatch = async {
        let mut flows = UdpFlows::default();
        let mut prune = tokio::time::interval(UDP_PRUNE_INTERVAL);
        loop {
            let (payload, local, remote) = tokio::select! {
                datagram = from_stack.next() => match datagram {
                    Some(datagram) => datagram,
                    None => return,
                },
                _ = prune.tick() => {
                    flows.prune();
                    continue;
                }
            };
            if remote == dns_address {
                tokio::spawn(answer_dns(dns.clone(), payload, local, replies_tx.clone()));
                continue;
            }
            // The machine's own multicast and broadcast (mDNS, SSDP) are no flow to carry.
            if is_multicast_or_broadcast(remote.ip()) {
                continue;
            }
            let key = FlowKey { local, remote };
            if let Some(first) = flows.deliver(&key, payload)
                && let Some(datagrams_rx) = flows.start(key, first)
            {
                let leaves = routed.leaves(&outbound, remote.ip());
                tokio::spawn(super::udp::relay_flow(
                    outbound.clone(),
                    leaves,
                    key,
                    datagrams_rx,
                    replies_tx.clone(),
                ));
            }
        }
    };
    tokio::select! {
        () = write_replies => {}
        () = dispatch => {}
    }
}

fn is_multicast_or_broadcast(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
        std::net::IpAddr::V6(v6) => v6.is_multicast(),
    }
}

async fn answer_dns(
    dns: Arc<dns::DnsAnswerer>,
    query: Vec<u8>,
    asker: SocketAddr,
    replies_tx: mpsc::Sender<Datagram>,
) {
    let answer = dns.answer(&query).await;
    if !answer.is_empty() {
        let _ = replies_tx
            .send((answer, SocketAddr::from((DNS_IP, 53)), asker))
            .await;
    }
}

/// DNS over TCP, which resolvers fall back to for answers too large for a datagram: each
/// message is preceded by its length (RFC 1035, 4.2.2).
async fn answer_dns_over_tcp(dns: Arc<dns::DnsAnswerer>, stream: TcpStream) {
    let (mut queries, mut answers) = tokio::io::split(stream);
    let mut query = vec![0u8; usize::from(u16::MAX)];
    loop {
        let Ok(len) = queries.read_u16().await else {
            return;
        };
        let query = &mut query[..usize::from(len)];
        if queries.read_exact(query).await.is_err() {
            return;
        }
        let answer = dns.answer(query).await;
        let Ok(answer_len) = u16::try_from(answer.len()) else {
            return;
        };
        if answer_len == 0
            || answers.write_u16(answer_len).await.is_err()
            || answers.write_all(&answer).await.is_err()
        {
            return;
        }
    }
}

/// Carries one TCP connection from the TUN device to where `routed` says it leaves from.
/// Each direction is a [`copy`], not one [`kubedev_protocol::splice::splice`]: the
/// userspace stack's shutdown completes only once the workstation's side has closed too,
/// and that wait must be bounded here, or a socket that never closes would keep the relay
/// forever.
async fn relay_tcp(outbound: Arc<Outbound>, routed: Routed, local: TcpStream) {
    let target = *local.remote_addr();
    let source = *local.local_addr();
    let leaves = routed.leaves(&outbound, target.ip());
    tracing::debug!("tcp {source} -> {target}: accepted, leaves from the {leaves:?}");
    let remote = match outbound.tcp_from(leaves, target).await {
        Ok(remote) => remote,
        Err(err) if err.kind() == std::io::ErrorKind::NotConnected => {
            return tracing::warn!("tcp {source} -> {target}: {err}");
        }
        Err(err) => return tracing::debug!("tcp {source} -> {target}: {err}"),
    };
    tracing::debug!("tcp {source} -> {target}: open");
    let (mut remote_rx, mut remote_tx) = tokio::io::split(remote);
    let (mut local_rx, mut local_tx) = tokio::io::split(local);
    let to_cluster = async {
        let sent = copy(&mut local_rx, &mut remote_tx).await?;
        remote_tx.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    };
    let to_workstation = async {
        let received = copy(&mut remote_rx, &mut local_tx).await?;
        // Completes once the workstation's side has closed too.
        tokio::time::timeout(SHUTDOWN_LIMIT, local_tx.shutdown())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok::<_, std::io::Error>(received)
    };
    match tokio::try_join!(to_cluster, to_workstation) {
        Ok((sent, received)) => {
            tracing::debug!("tcp {source} -> {target}: done, {sent} bytes out, {received} in")
        }
        Err(err) => tracing::debug!("tcp {source} -> {target}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_and_broadcast_are_no_flow() {
        for ip in ["224.0.0.251", "255.255.255.255", "ff02::fb", "ff05::1:3"] {
            assert!(is_multicast_or_broadcast(ip.parse().expect(ip)), "{ip}");
        }
        for ip in ["10.96.0.10", "fd4b:6b64:96::1"] {
            assert!(!is_multicast_or_broadcast(ip.parse().expect(ip)), "{ip}");
        }
    }

    #[test]
    fn a_missing_device_is_explained_by_what_the_kernel_said() {
        let said = |errno: nix::errno::Errno| {
            why_no_device(&tun::Error::Io(std::io::Error::from(errno)), 1000)
        };
        assert!(said(nix::errno::Errno::EPERM).contains("needs root or CAP_NET_ADMIN"));
        assert!(said(nix::errno::Errno::EACCES).contains("/dev/net/tun may not be opened"));
        let busy = said(nix::errno::Errno::EBUSY);
        assert!(busy.contains("busy") && !busy.contains("root"), "{busy}");
        assert!(said(nix::errno::Errno::ENODEV).contains("no /dev/net/tun"));
        assert!(
            TUN_NAME.contains("%d"),
            "each tunneld gets a device of its own"
        );
    }
}
