//! What a user's tunneld and the network helper say to each other on the helper's socket:
//! length-prefixed JSON messages ([`kubedev_protocol::codec`]), one request and one reply
//! at a time; an opened device's descriptor follows its reply, attached to one byte. Every
//! value a user sends is checked here before it reaches the machine's routes or resolver.

use std::net::{Ipv4Addr, SocketAddr};

use kubedev::cidr::{self, Cidr};
use serde::{Deserialize, Serialize};

use crate::network::pointing::Pointed;

/// Where the network helper listens unless told otherwise: in /run, where only root may
/// create a file, and outside any 0700 directory, which no user could reach.
pub(crate) const DEFAULT_SOCKET: &str = "/run/kubedev-network.sock";

/// At most this many search domains reach the resolver (glibc reads six).
const MAX_SEARCH: usize = 6;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub(crate) enum HelperRequest {
    /// A TUN device for the cluster's network, with the machine's resolver sending names
    /// under `domain` (and `search`) to tunneld's DNS through it.
    Open { domain: String, search: Vec<String> },
    /// Makes the device's routes exactly `routes`.
    Route { routes: Vec<Cidr> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum HelperReply {
    /// The device is open; its descriptor follows. `upstream` is the nameserver the
    /// resolver named before (where tunneld forwards other names).
    Opened {
        device: String,
        resolver: Pointed,
        upstream: Option<SocketAddr>,
    },
    /// The routes in the device now, and those the kernel or the helper refused, with why.
    Routed {
        added: Vec<Cidr>,
        refused: Vec<(Cidr, String)>,
    },
    Refused {
        reason: String,
    },
}

/// The domains a user may have the resolver send to tunneld: host names, nothing that
/// could start a new line or option in resolv.conf or an option of resolvectl.
pub(crate) fn check_domains(domain: &str, search: &[String]) -> Result<(), String> {
    if search.len() > MAX_SEARCH {
        return Err(format!("at most {MAX_SEARCH} search domains"));
    }
    std::iter::once(domain)
        .chain(search.iter().map(String::as_str))
        .try_for_each(check_domain)
}

fn check_domain(name: &str) -> Result<(), String> {
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() <= 253 && name.split('.').all(valid_label) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a domain name"))
    }
}

/// Ranges no one may route into a device: this machine's own, the link-local ones,
/// multicast and above, and anything wider than a /8 (the default route among them).
const NEVER_ROUTED: [(Ipv4Addr, u8); 4] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(224, 0, 0, 0), 3),
];

/// A range a user may route into their device.
pub(crate) fn check_route(route: &Cidr) -> Result<(), String> {
    if route.prefix_len() < 8 {
        return Err(format!("{route} is wider than a /8"));
    }
    let never = NEVER_ROUTED.iter().find_map(|(ip, len)| {
        let range = Cidr::new(*ip, *len).ok()?;
        cidr::overlap(&range, route).then_some(range)
    });
    match never {
        Some(range) => Err(format!("{route} overlaps {range}, which is never routed")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_domains_pass_and_anything_that_could_inject_does_not() {
        let search = vec![
            "shop.svc.cluster.local".to_owned(),
            "svc.cluster.local".into(),
        ];
        assert_eq!(check_domains("cluster.local", &search), Ok(()));
        for bad in [
            "cluster.local\nnameserver 203.0.113.9",
            "-q.local",
            "a b",
            "",
            "x..local",
            "options:ndots",
        ] {
            assert!(check_domains(bad, &[]).is_err(), "{bad:?}");
            assert!(
                check_domains("cluster.local", &[bad.into()]).is_err(),
                "{bad:?}"
            );
        }
        let many = vec!["a.local".to_owned(); MAX_SEARCH + 1];
        assert!(check_domains("cluster.local", &many).is_err());
    }

    #[test]
    fn cluster_ranges_pass_and_the_machines_own_do_not() {
        let route = |text: &str| cidr::parse(text).expect(text);
        for good in [
            "10.0.0.0/8",
            "10.43.0.0/16",
            "192.168.7.0/24",
            "198.18.0.53/32",
        ] {
            assert_eq!(check_route(&route(good)), Ok(()), "{good}");
        }
        for bad in [
            "0.0.0.0/0",
            "0.0.0.0/1",
            "128.0.0.0/1",
            "8.0.0.0/7",
            "127.0.0.1/32",
            "169.254.169.254/32",
            "224.0.0.0/4",
            "255.255.255.255/32",
            "0.0.0.0/8",
        ] {
            assert!(check_route(&route(bad)).is_err(), "{bad}");
        }
    }
}
