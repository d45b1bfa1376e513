//! The network interfaces of a command's own namespace: `lo` up, and a TUN device with an
//! address of its own and the default route, so every flow the command starts (to the
//! cluster and to anywhere else) reaches tunneld's userspace stack.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use tun::AbstractDevice as _;

use kubedev::control::{TUN_IPV6_ADDRESS, TUN_MTU};

/// The TUN device's name, inside the namespace.
const TUN_NAME: &str = "kubedev0";
/// Its address: a benchmarking address, which no real network uses (RFC 2544).
const TUN_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Brings the interfaces up (in the network namespace this thread is in, with
/// CAP_NET_ADMIN there); returns the TUN device.
pub(super) fn set_up() -> anyhow::Result<tun::Device> {
    let mut config = tun::Configuration::default();
    config
        .tun_name(TUN_NAME)
        .address(TUN_ADDRESS)
        .netmask(Ipv4Addr::BROADCAST)
        .mtu(TUN_MTU)
        .up();
    let device = tun::create(&config).context(
        "cannot make a TUN device (/dev/net/tun must be open to every user, mode 0666, as \
         distributions ship it)",
    )?;
    let index = u32::try_from(device.tun_index()?).context("the TUN device's index")?;
    // A runtime of this thread alone: the trampoline starts no thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(route_into(index))?;
    Ok(device)
}

/// Gives device `index` [`TUN_IPV6_ADDRESS`] and routes all IPv6 into it too. A kernel
/// without IPv6 leaves the command IPv4 only.
async fn add_ipv6(handle: &rtnetlink::Handle, index: u32) -> anyhow::Result<()> {
    let mut address = handle
        .address()
        .add(index, IpAddr::V6(TUN_IPV6_ADDRESS), 128);
    // Nothing else is on the device: the address needs no duplicate detection.
    address.message_mut().header.flags = AddressHeaderFlags::Nodad;
    if address.execute().await.is_err() {
        return Ok(());
    }
    let default = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(index);
    add_route(
        handle,
        default.build(),
        "route all IPv6 into the TUN device",
    )
    .await
}

async fn add_route(
    handle: &rtnetlink::Handle,
    route: rtnetlink::packet_route::route::RouteMessage,
    what: &'static str,
) -> anyhow::Result<()> {
    handle.route().add(route).execute().await.context(what)
}

/// Brings `lo` up and routes everything into device `index`.
async fn route_into(index: u32) -> anyhow::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
    let connection = tokio::spawn(connection);
    let up = async {
        handle
            .link()
            .set(LinkUnspec::new_with_name("lo").up().build())
            .execute()
            .await
            .context("bring lo up")?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(index);
        add_route(
            &handle,
            default.build(),
            "route everything into the TUN device",
        )
        .await?;
        add_ipv6(&handle, index).await
    };
    let result = up.await;
    connection.abort();
    result
}
