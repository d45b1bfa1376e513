//! The machine's own routes of both families, read from the kernel before tunneld routes
//! anything: every table a routing rule looks up (not only `main`), without tunneld's own
//! routes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use kubedev::cidr::Cidr;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// The table the kernel keeps local and broadcast addresses in: it says what this
/// machine is, not where it sends traffic.
const LOCAL_TABLE: u32 = 255;
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// One of the machine's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MachineRoute {
    pub(crate) destination: Cidr,
    pub(crate) kind: MachineRouteKind,
    /// Whether a rule looks its table up before `main`, where tunneld's routes are: then
    /// no route of tunneld's can take its traffic.
    pub(crate) before_main: bool,
    /// As `ip route` shows it.
    pub(crate) description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MachineRouteKind {
    /// Traffic leaves through an interface (a bridge, a VPN, the LAN).
    Path,
    /// Traffic is refused: unreachable, blackhole or prohibit.
    Reject,
}

/// Reads the machine's routes, leaving out those through `own_device` (tunneld's).
pub(crate) async fn read(handle: &Handle, own_device: u32) -> anyhow::Result<Vec<MachineRoute>> {
    let devices = device_names(handle).await?;
    let mut routes = Vec::new();
    for family in [IpVersion::V4, IpVersion::V6] {
        read_family(handle, family, own_device, &devices, &mut routes).await?;
    }
    Ok(routes)
}

/// Adds the machine's routes of one family to `routes`.
async fn read_family(
    handle: &Handle,
    family: IpVersion,
    own_device: u32,
    devices: &HashMap<u32, String>,
    routes: &mut Vec<MachineRoute>,
) -> anyhow::Result<()> {
    // Without policy routing in the kernel there are no rules, only `main`.
    let table_order = rule_order(handle, family.clone())
        .await
        .unwrap_or_else(|err| {
            tracing::warn!("{err:#}: reading the main table only");
            HashMap::from([(MAIN_TABLE, 0)])
        });
    let main_priority = table_order.get(&MAIN_TABLE).copied().unwrap_or(u32::MAX);
    // A dump without a table names every table.
    let mut all = match family {
        IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
    };
    all.header.table = RouteHeader::RT_TABLE_UNSPEC;
    let mut dump = handle.route().get(all).execute();
    while let Some(message) = dump.try_next().await.context("read the routing tables")? {
        let Some(found) = describe(&message, devices) else {
            continue;
        };
        if found.table == LOCAL_TABLE || found.device == Some(own_device) {
            continue;
        }
        let Some(priority) = table_order.get(&found.table) else {
            continue; // no rule looks this table up
        };
        routes.push(MachineRoute {
            destination: found.destination,
            kind: found.kind,
            before_main: *priority < main_priority,
            description: found.description,
        });
    }
    Ok(())
}

/// For each table a rule looks up, the priority of the first rule that looks it up for
/// ordinary traffic. Rules only for marked packets, one user, one source or one interface
/// (a VPN client's own packets, say) place a table later than that.
async fn rule_order(handle: &Handle, family: IpVersion) -> anyhow::Result<HashMap<u32, u32>> {
    let mut order = HashMap::new();
    let mut rules = handle.rule().get(family).execute();
    while let Some(rule) = rules.try_next().await.context("read the routing rules")? {
        if rule.header.action != RuleAction::ToTable {
            continue;
        }
        let mut table = u32::from(rule.header.table);
        let mut priority = 0;
        let inverted = rule.header.flags.contains(RuleFlags::Invert);
        let mut narrow = rule.header.src_len > 0;
        for attribute in &rule.attributes {
            match attribute {
                RuleAttribute::Table(id) => table = *id,
                RuleAttribute::Priority(value) => priority = *value,
                RuleAttribute::FwMark(_) if !inverted => narrow = true,
                RuleAttribute::Iifname(_) | RuleAttribute::UidRange(_) => narrow = true,
                _ => {}
            }
        }
        let ordinary = if narrow { u32::MAX } else { priority };
        let first = order.entry(table).or_insert(ordinary);
        *first = (*first).min(ordinary);
    }
    Ok(order)
}

async fn device_names(handle: &Handle) -> anyhow::Result<HashMap<u32, String>> {
    let mut names = HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.context("read the network devices")? {
        for attribute in link.attributes {
            if let rtnetlink::packet_route::link::LinkAttribute::IfName(name) = attribute {
                names.insert(link.header.index, name);
            }
        }
    }
    Ok(names)
}

struct Described {
    destination: Cidr,
    kind: MachineRouteKind,
    table: u32,
    device: Option<u32>,
    description: String,
}

/// The route in `message`, if it is one that sends or refuses traffic.
fn describe(message: &RouteMessage, devices: &HashMap<u32, String>) -> Option<Described> {
    let (kind, verb) = match message.header.kind {
        RouteType::Unicast => (MachineRouteKind::Path, None),
        RouteType::Unreachable => (MachineRouteKind::Reject, Some("unreachable")),
        RouteType::BlackHole => (MachineRouteKind::Reject, Some("blackhole")),
        RouteType::Prohibit => (MachineRouteKind::Reject, Some("prohibit")),
        _ => return None,
    };
    let mut destination = match message.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut table = u32::from(message.header.table);
    let mut device = None;
    let mut gateway = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => {
                destination = IpAddr::V4(*address);
            }
            RouteAttribute::Destination(RouteAddress::Inet6(address)) => {
                destination = IpAddr::V6(*address);
            }
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Oif(index) => device = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(address)) => {
                gateway = Some(IpAddr::V4(*address));
            }
            RouteAttribute::Gateway(RouteAddress::Inet6(address)) => {
                gateway = Some(IpAddr::V6(*address));
            }
            _ => {}
        }
    }
    let destination = Cidr::new(destination, message.header.destination_prefix_length).ok()?;
    let mut description = match verb {
        Some(verb) => format!("{verb} {destination}"),
        None => destination.to_string(),
    };
    if let Some(gateway) = gateway {
        description += &format!(" via {gateway}");
    }
    if let Some(index) = device {
        let name = devices
            .get(&index)
            .cloned()
            .unwrap_or_else(|| index.to_string());
        description += &format!(" dev {name}");
    }
    if table != MAIN_TABLE {
        description += &format!(" table {table}");
    }
    Some(Described {
        destination,
        kind,
        table,
        device,
        description,
    })
}
