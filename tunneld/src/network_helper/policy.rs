//! What a user may have the network helper do to the machine: route into their device
//! only ranges an administrator allows, that no route of the machine's (nor another
//! user's device) already covers, and that hold none of the machine's nameservers; and have
//! the resolver send them only the cluster's own names.

use std::net::IpAddr;

use kubedev::cidr::{self, Cidr};

use crate::network::machine_routes::MachineRoute;

/// At most this many search domains reach the resolver (glibc reads six).
const MAX_SEARCH: usize = 6;
/// At most this many routes into one device.
pub(super) const MAX_ROUTES: usize = 64;

/// The ranges users may route unless the administrator says otherwise: the private
/// ranges clusters use (RFC 1918, carrier-grade NAT) and tunneld's own (198.18.0.0/15).
pub(super) const DEFAULT_ALLOWED: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
];

/// Ranges no one may route, whatever is allowed: this machine's own, the link-local ones,
/// multicast and above.
const NEVER_ROUTED: [&str; 4] = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];

/// Why no IPv6 range is routed: the helper's devices take no IPv6
/// (`crate::network::Ipv6::Off`).
pub(super) const NO_IPV6: &str = "the network helper routes IPv4 only: Linux has no \
    reverse-path check for IPv6, so a device's user could put packets of any source into \
    this machine (run tunneld as root for the cluster's IPv6)";

/// The administrator's limits.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    /// The ranges users may route (within).
    pub(super) allowed: Vec<Cidr>,
    /// The cluster DNS domains users may have names sent to them for.
    pub(super) domains: Vec<String>,
}

/// The machine as it is when a route is asked for.
#[derive(Debug)]
pub(super) struct Machine<'a> {
    /// Its routes, but for those into the asking user's own device.
    pub(super) routes: &'a [MachineRoute],
    /// The nameservers its resolver names.
    pub(super) nameservers: &'a [IpAddr],
}

impl Policy {
    /// Whether the resolver may send names under `domain` (and `search`) to a user: the
    /// cluster's domain, as allowed, and search domains under it; host names only, so
    /// nothing can start a new line or option in resolv.conf or an option of resolvectl.
    pub(super) fn check_domains(&self, domain: &str, search: &[String]) -> Result<(), String> {
        if search.len() > MAX_SEARCH {
            return Err(format!("at most {MAX_SEARCH} search domains"));
        }
        std::iter::once(domain)
            .chain(search.iter().map(String::as_str))
            .try_for_each(check_domain)?;
        if !self.domains.iter().any(|allowed| allowed == domain) {
            return Err(format!(
                "{domain:?} is not a cluster domain this helper serves ({}; see --cluster-domain)",
                self.domains.join(", ")
            ));
        }
        let under = format!(".{domain}");
        match search
            .iter()
            .find(|name| *name != domain && !name.ends_with(&under))
        {
            Some(outside) => Err(format!("search domain {outside:?} is not under {domain}")),
            None => Ok(()),
        }
    }

    /// Whether a user may route `route` into their device on `machine` as it is.
    pub(super) fn check_route(&self, route: &Cidr, machine: &Machine<'_>) -> Result<(), String> {
        if route.network().is_ipv6() {
            return Err(NO_IPV6.to_owned());
        }
        if let Some(never) = NEVER_ROUTED
            .iter()
            .filter_map(|text| cidr::parse(text).ok())
            .find(|never| cidr::overlap(never, route))
        {
            return Err(format!("{route} overlaps {never}, which is never routed"));
        }
        if !self
            .allowed
            .iter()
            .any(|allowed| cidr::holds(allowed, route))
        {
            return Err(format!(
                "{route} is outside the ranges this helper routes (see --allow-range)"
            ));
        }
        // The default route covers everything: all else the machine routes is its own.
        let taken = machine.routes.iter().find(|existing| {
            existing.destination.prefix_len() > 0 && cidr::overlap(&existing.destination, route)
        });
        if let Some(existing) = taken {
            return Err(format!(
                "{route} overlaps this machine's route {}",
                existing.description
            ));
        }
        match machine.nameservers.iter().find(|ip| route.contains(*ip)) {
            Some(nameserver) => Err(format!(
                "{route} holds this machine's nameserver {nameserver}"
            )),
            None => Ok(()),
        }
    }
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

/// The nameservers a resolver file names.
pub(super) fn nameservers(conf: &str) -> Vec<IpAddr> {
    conf.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        // As glibc reads it: the first word, whatever comment follows.
        .filter_map(|rest| rest.split(['#', ';']).next()?.split_whitespace().next())
        .filter_map(|address| address.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::machine_routes::MachineRouteKind;

    fn range(text: &str) -> Cidr {
        cidr::parse(text).expect(text)
    }

    fn policy() -> Policy {
        Policy {
            allowed: DEFAULT_ALLOWED.iter().map(|text| range(text)).collect(),
            domains: vec!["cluster.local".into()],
        }
    }

    fn route(destination: &str, description: &str) -> MachineRoute {
        MachineRoute {
            destination: range(destination),
            kind: MachineRouteKind::Path,
            before_main: false,
            description: description.into(),
        }
    }

    #[test]
    fn the_clusters_names_pass_and_any_other_or_anything_that_could_inject_does_not() {
        let search = vec![
            "shop.svc.cluster.local".to_owned(),
            "svc.cluster.local".into(),
        ];
        assert_eq!(policy().check_domains("cluster.local", &search), Ok(()));
        for bad in [
            "cluster.local\nnameserver 203.0.113.9",
            "-q.local",
            "a b",
            "",
            "x..local",
            "com",
            "github.com",
        ] {
            assert!(policy().check_domains(bad, &[]).is_err(), "{bad:?}");
            let search = vec![bad.to_owned()];
            assert!(
                policy().check_domains("cluster.local", &search).is_err(),
                "{bad:?}"
            );
        }
        let many = vec!["a.cluster.local".to_owned(); MAX_SEARCH + 1];
        assert!(policy().check_domains("cluster.local", &many).is_err());
    }

    #[test]
    fn only_allowed_ranges_no_route_of_the_machines_covers_and_no_nameserver_pass() {
        let routes = [
            route("0.0.0.0/0", "default via 192.168.50.254 dev eth0"),
            route("192.168.50.0/24", "192.168.50.0/24 dev eth0"),
            route("10.244.0.0/24", "10.244.0.0/24 dev cni0"),
            route("::/0", "default via fd00::1 dev eth0"),
            route("fd00::/64", "fd00::/64 dev eth0"),
        ];
        let nameservers = [
            "10.1.0.2".parse().expect("ip"),
            "fd53::1".parse().expect("ip"),
        ];
        let machine = Machine {
            routes: &routes,
            nameservers: &nameservers,
        };
        for good in [
            "10.96.0.0/16",
            "10.43.0.0/16",
            "198.18.0.53/32",
            "172.20.0.0/16",
        ] {
            assert_eq!(
                policy().check_route(&range(good), &machine),
                Ok(()),
                "{good}"
            );
        }
        for (bad, why) in [
            ("0.0.0.0/0", "never routed"),
            ("8.8.8.8/32", "outside the ranges"),
            ("93.0.0.0/8", "outside the ranges"),
            ("127.0.0.1/32", "never routed"),
            ("169.254.169.254/32", "never routed"),
            ("224.0.0.0/4", "never routed"),
            (
                "192.168.50.0/25",
                "overlaps this machine's route 192.168.50.0/24 dev eth0",
            ),
            ("192.168.50.254/32", "overlaps this machine's route"),
            ("10.0.0.0/8", "overlaps this machine's route 10.244.0.0/24"),
            ("10.1.0.0/16", "holds this machine's nameserver 10.1.0.2"),
            ("fd4b:96::/112", "routes IPv4 only"),
            ("::ffff:10.96.0.0/112", "routes IPv4 only"),
        ] {
            let refused = policy().check_route(&range(bad), &machine).expect_err(bad);
            assert!(refused.contains(why), "{bad}: {refused}");
        }
    }

    #[test]
    fn nameservers_are_read_from_the_resolver_file() {
        let conf =
            "# x\nnameserver 10.1.0.2\nnameserver fd00::1\nsearch corp\nnameserver 192.0.2.53\n";
        assert_eq!(
            nameservers(conf),
            ["10.1.0.2", "fd00::1", "192.0.2.53"].map(|ip| ip.parse::<IpAddr>().expect("ip"))
        );
    }
}
