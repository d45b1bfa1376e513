//! Routes for the cluster's ranges into the TUN device, added over rtnetlink. They belong
//! to the device, so the kernel removes them when the device goes away.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use anyhow::Context as _;
use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;

/// An IPv4 range such as `10.96.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Cidr {
    pub(crate) network: Ipv4Addr,
    pub(crate) prefix: u8,
}

impl Cidr {
    pub(crate) fn new(address: Ipv4Addr, prefix: u8) -> Self {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        Self {
            network: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        }
    }

    pub(crate) fn host(address: Ipv4Addr) -> Self {
        Self::new(address, 32)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => Self::new(v4, self.prefix).network == self.network,
            IpAddr::V6(_) => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 range (like 10.96.0.0/16)"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to 32"))?;
        Ok(Self::new(address, prefix))
    }
}

pub(super) async fn add(device: &str, cidrs: &[Cidr]) -> anyhow::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection().context("netlink")?;
    tokio::spawn(connection);
    let link = handle
        .link()
        .get()
        .match_name(device.to_owned())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("find device {device}"))?
        .with_context(|| format!("no device {device}"))?;
    for cidr in cidrs {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network, cidr.prefix)
            .output_interface(link.header.index)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("add route {cidr} dev {device}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes_ranges() {
        let cidr: Cidr = "10.96.7.1/16".parse().expect("valid");
        assert_eq!(cidr.to_string(), "10.96.0.0/16");
        assert!(cidr.contains("10.96.255.1".parse().expect("ip")));
        assert!(!cidr.contains("10.97.0.1".parse().expect("ip")));
        assert_eq!(
            "10.0.0.1".parse::<Cidr>().expect("host").to_string(),
            "10.0.0.1/32"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("cluster".parse::<Cidr>().is_err());
    }
}
