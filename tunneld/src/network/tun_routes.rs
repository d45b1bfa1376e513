//! tunneld's own routes, into its TUN device, added over rtnetlink. They are only ever
//! added as new routes (never replacing one) and removed by their device, so no route of
//! anyone else's is touched; the kernel removes them with the device, however tunneld
//! exits.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use kubedev::cidr::Cidr;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::route::{RouteProtocol, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::machine_routes::{self, MachineRoute};

/// The table of a machine's own addresses, and of multicast routes.
const LOCAL_TABLE: u32 = 255;
/// The metric of the multicast route the kernel gives a device that takes IPv6.
const KERNEL_MULTICAST_METRIC: u32 = 256;

/// The routes through the TUN device.
#[derive(Debug)]
pub(crate) struct TunRoutes {
    handle: Handle,
    device: u32,
    added: BTreeSet<Cidr>,
}

impl TunRoutes {
    pub(crate) async fn new(device_name: &str) -> anyhow::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
        tokio::spawn(connection);
        let device = handle
            .link()
            .get()
            .match_name(device_name.to_owned())
            .execute()
            .try_next()
            .await
            .with_context(|| format!("find device {device_name}"))?
            .with_context(|| format!("no device {device_name}"))?
            .header
            .index;
        Ok(Self {
            handle,
            device,
            added: BTreeSet::new(),
        })
    }

    /// Gives the device [`kubedev::control::TUN_IPV6_ADDRESS`], usable at once (no
    /// duplicate address detection on a device nothing else is on), so the workstation
    /// has an IPv6 source for the cluster's IPv6 addresses even without IPv6 of its own;
    /// and takes away the multicast route the kernel gave it, which would otherwise catch
    /// the machine's own multicast (mDNS, SSDP) whenever its other devices' routes go.
    pub(crate) async fn add_ipv6_address(&self) -> anyhow::Result<()> {
        let address = IpAddr::V6(kubedev::control::TUN_IPV6_ADDRESS);
        let mut request = self.handle.address().add(self.device, address, 128);
        let message = request.message_mut();
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        request
            .execute()
            .await
            .with_context(|| format!("give the TUN device the address {address}"))?;
        // After the address, whose addition makes the route again; as the kernel made it:
        // an IPv6 route is deleted only where every field given matches.
        let multicast = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8)
            .table_id(LOCAL_TABLE)
            .kind(RouteType::Multicast)
            .protocol(RouteProtocol::Kernel)
            .priority(KERNEL_MULTICAST_METRIC)
            .output_interface(self.device)
            .build();
        if let Err(err) = self.handle.route().del(multicast).execute().await {
            tracing::warn!("the TUN device keeps its multicast route: {err}");
        }
        Ok(())
    }

    /// The device's index.
    pub(crate) fn device_index(&self) -> u32 {
        self.device
    }

    /// The machine's own routes, without these.
    pub(crate) async fn machine_routes(&self) -> anyhow::Result<Vec<MachineRoute>> {
        machine_routes::read(&self.handle, self.device).await
    }

    /// Makes the device's routes exactly `wanted`. A route that cannot be added (the
    /// machine got one of its own for that range meanwhile) is left out and returned with
    /// the kernel's answer; one that cannot be removed is logged.
    pub(crate) async fn set(&mut self, wanted: &[Cidr]) -> Vec<(Cidr, String)> {
        let wanted: BTreeSet<Cidr> = wanted.iter().copied().collect();
        for gone in self.added.difference(&wanted).copied().collect::<Vec<_>>() {
            match self.handle.route().del(self.message(gone)).execute().await {
                Ok(()) => {
                    self.added.remove(&gone);
                }
                Err(err) => tracing::warn!("remove route {gone}: {err}"),
            }
        }
        let mut refused = Vec::new();
        for new in wanted.difference(&self.added).copied().collect::<Vec<_>>() {
            match self.handle.route().add(self.message(new)).execute().await {
                Ok(()) => {
                    self.added.insert(new);
                }
                Err(err) => refused.push((new, err.to_string())),
            }
        }
        refused
    }

    /// Deletes the device, and its routes with it: even one made persistent, which would
    /// outlive its last open file. One already gone is no error.
    pub(crate) async fn delete_device(self) {
        if let Err(err) = self.handle.link().del(self.device).execute().await {
            tracing::debug!("delete device {}: {err}", self.device);
        }
    }

    /// The routes in the device now.
    pub(crate) fn added(&self) -> Vec<Cidr> {
        self.added.iter().copied().collect()
    }

    fn message(&self, cidr: Cidr) -> rtnetlink::packet_route::route::RouteMessage {
        match cidr {
            Cidr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4.network(), v4.prefix_len())
                .output_interface(self.device)
                .build(),
            Cidr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6.network(), v6.prefix_len())
                .output_interface(self.device)
                .build(),
        }
    }
}
