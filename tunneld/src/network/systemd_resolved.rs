//! Pointing the workstation's resolver at tunneld where systemd-resolved runs: the TUN link
//! gets tunneld's DNS address, a routing domain for the cluster (only cluster names are sent
//! to tunneld; everything else keeps going where it went before) and the cluster's search
//! domains. Nothing on disk changes, and resolved forgets the settings by itself when the
//! link disappears, so even a crashed tunneld leaves nothing behind.

use std::net::Ipv4Addr;
use std::path::Path;

/// The file resolved writes with every DNS server it knows, each link's included: what a
/// kubelet on a machine that runs resolved hands to pods.
pub(crate) const UPLINK_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The addresses of resolved's stub listeners.
const STUB_LISTENERS: [&str; 2] = ["127.0.0.53", "127.0.0.54"];

/// Whether the system resolver goes through systemd-resolved: every nameserver in
/// `resolv_conf` is one of its stub listeners.
pub(crate) fn manages(resolv_conf: &Path) -> bool {
    std::fs::read_to_string(resolv_conf).is_ok_and(|conf| uses_stub(&conf))
}

fn uses_stub(conf: &str) -> bool {
    let mut nameservers = conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .peekable();
    nameservers.peek().is_some() && nameservers.all(|ip| STUB_LISTENERS.contains(&ip))
}

/// The TUN link's DNS settings in resolved; dropping it reverts them.
#[derive(Debug)]
pub(crate) struct ResolvedLink {
    link: String,
    /// The link's index, which resolvectl is given: a name may be another device's by the
    /// time the settings are reverted, an index is never reused so soon.
    index: String,
}

impl ResolvedLink {
    /// Sends names under `cluster_domain` to `dns` through `link`, and adds `search` (in
    /// that order) to the system's search domains.
    pub(crate) fn configure(
        link: &str,
        index: u32,
        dns: Ipv4Addr,
        cluster_domain: &str,
        search: &[String],
    ) -> anyhow::Result<Self> {
        let index = index.to_string();
        for args in settings(&index, dns, cluster_domain, search) {
            resolvectl(&args)?;
        }
        tracing::info!("DNS for {cluster_domain} through systemd-resolved on {link}");
        Ok(Self {
            link: link.to_owned(),
            index,
        })
    }

    pub(crate) fn link(&self) -> &str {
        &self.link
    }
}

impl Drop for ResolvedLink {
    fn drop(&mut self) {
        if let Err(err) = resolvectl(&["revert".to_owned(), self.index.clone()]) {
            tracing::warn!("{err:#}");
        }
    }
}

/// The `resolvectl` commands that set the link up.
fn settings(
    link: &str,
    dns: Ipv4Addr,
    cluster_domain: &str,
    search: &[String],
) -> Vec<Vec<String>> {
    let command = |verb: &str, values: Vec<String>| {
        let mut args = vec![verb.to_owned(), link.to_owned()];
        args.extend(values);
        args
    };
    // A search domain also routes its names to the link; the cluster domain must route
    // even where it is not searched.
    let mut domains = search.to_vec();
    if !search.iter().any(|domain| domain == cluster_domain) {
        domains.push(format!("~{cluster_domain}"));
    }
    vec![
        command("dns", vec![dns.to_string()]),
        command("domain", domains),
        // Only cluster names go to this link, never the rest of the workstation's queries.
        command("default-route", vec!["false".into()]),
        command("llmnr", vec!["false".into()]),
        command("mdns", vec!["false".into()]),
    ]
}

fn resolvectl(args: &[String]) -> anyhow::Result<()> {
    // The bus address, like PATH, is root's own where this runs as root.
    let what = "resolvectl (systemd-resolved's command line tool)";
    super::run_tool("resolvectl", what, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_resolver_means_resolved() {
        assert!(uses_stub(
            "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
        ));
        assert!(uses_stub("# generated\nnameserver 127.0.0.54\n"));
        assert!(!uses_stub("nameserver 127.0.0.53\nnameserver 10.0.0.2\n"));
        assert!(!uses_stub("nameserver 192.168.1.1\n"));
        assert!(!uses_stub("search example.com\n"));
    }

    #[test]
    fn link_gets_a_routing_domain_search_domains_and_no_default_route() {
        let search = [
            "dev.svc.cluster.local".to_owned(),
            "svc.cluster.local".to_owned(),
        ];
        let commands = settings(
            "kubedev-tun",
            Ipv4Addr::new(198, 18, 0, 53),
            "cluster.local",
            &search,
        );
        let lines: Vec<String> = commands.iter().map(|args| args.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "dns kubedev-tun 198.18.0.53",
                "domain kubedev-tun dev.svc.cluster.local svc.cluster.local ~cluster.local",
                "default-route kubedev-tun false",
                "llmnr kubedev-tun false",
                "mdns kubedev-tun false",
            ]
        );
    }
}
