//! The machine's cluster network while it is up (Linux): the TUN device, its routes
//! planned against the machine's and the resolver pointed at it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kubedev::cidr::Cidr;
use kubedev::control::{NetworkStatus, RangePart, RangeState, RangeStatus, ResolverStatus};
use tokio_util::sync::CancellationToken;

use super::{Daemon, KnownCluster, NetworkState};
use crate::daemon::machine_device::{DeviceRoutes, Resolver};
use crate::network::dns::DnsAnswerer;
use crate::network::machine_routes::MachineRoute;
use crate::network::pointing::ANOTHER_TUNNELD;
use crate::network::route_plan::{self, Exclusion, KUBEDEV_DEVICE, Wanted};
use crate::network::{DNS_IP, resolv_conf};

/// The cluster network while it is up.
#[derive(Debug)]
pub(in crate::daemon) struct UpNetwork {
    /// The cluster's ranges, as discovered or given.
    cluster: Vec<Cidr>,
    /// The API server's own addresses, never routed.
    api_server: Vec<Exclusion>,
    /// The TUN device's name.
    device: String,
    routes: DeviceRoutes,
    ranges: Vec<RangeStatus>,
    /// Restores the workstation's DNS settings when dropped.
    resolver: Resolver,
    /// The network helper that made the device, if one did.
    helper: Option<PathBuf>,
    /// Cancelled once that helper is gone: it undid the routes and the resolver.
    lost: Option<CancellationToken>,
    /// Whether another kubedev tunneld's device had routes into this cluster's ranges
    /// when this one last routed: this one reaches what they cover through that one.
    routed_by_another_tunneld: bool,
}

impl UpNetwork {
    /// Why it is no longer up, once its helper is gone.
    pub(super) fn lost(&self) -> Option<String> {
        let lost = self
            .lost
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled);
        let helper = self.helper.as_ref().filter(|_| lost)?;
        Some(format!(
            "the network helper at {} stopped, and undid the routes and the resolver; tunneld \
             asks it again as soon as it is back",
            helper.display()
        ))
    }

    /// Whether another kubedev tunneld held part of the machine's cluster network (routes
    /// or the resolver) when this one came up: this one then reaches the cluster through
    /// that one's, for as long as it lasts.
    fn behind_another_tunneld(&self) -> bool {
        let resolver = matches!(self.resolver.status(),
            ResolverStatus::Unchanged { reason, .. } if reason.contains(ANOTHER_TUNNELD));
        self.routed_by_another_tunneld || resolver
    }

    /// Whether that other tunneld has let go: no route of the machine's goes through a
    /// kubedev device but this one's, and the resolver file is no longer pointed at one.
    async fn another_tunneld_let_go(&self, resolv_conf: &Path) -> bool {
        let Ok(machine) = self.routes.machine_routes().await else {
            return false;
        };
        let routed = (machine.iter()).any(|route| another_tunneld_routes(&self.cluster, route));
        !routed && !resolv_conf::carries_marker(resolv_conf)
    }

    pub(super) fn status(&self) -> NetworkStatus {
        NetworkStatus::Up {
            routes: self.routes.added(),
            ranges: self.ranges.clone(),
            dns: DNS_IP.to_string(),
            resolver: self.resolver.status(),
            helper: self.helper.clone(),
        }
    }
}

impl Daemon {
    /// Brings the network up again whenever a network helper appears (a new socket) while
    /// it is down, once the first session has come: so a helper started, or started again,
    /// after tunneld needs no new session.
    pub(in crate::daemon) async fn keep_network_up(&self) {
        if self.settings.no_network {
            return std::future::pending().await;
        }
        if nix::unistd::geteuid().is_root() {
            return self.take_over_from_another_tunneld().await;
        }
        let mut tried = None;
        loop {
            tokio::time::sleep(HELPER_WATCH).await;
            let Some(cluster) = self.cluster.get() else {
                continue;
            };
            if !self.network.lock().await.down() {
                // Up: once down again, whatever socket is there is worth a try.
                tried = None;
                continue;
            }
            let socket = socket_identity(&self.settings.network_helper);
            if socket.is_none() || socket == tried {
                continue;
            }
            tried = socket;
            tracing::info!(
                "a network helper is at {}",
                self.settings.network_helper.display()
            );
            self.start_network(cluster, false).await;
        }
    }

    /// While another kubedev tunneld (another kube context or identity on this machine)
    /// holds the cluster's routes or the resolver, this one reaches the cluster through
    /// them; once that one has let go, this one brings its network up again, taking both.
    async fn take_over_from_another_tunneld(&self) {
        loop {
            tokio::time::sleep(HELPER_WATCH).await;
            let Some(cluster) = self.cluster.get() else {
                continue;
            };
            let mut network = self.network.lock().await;
            let NetworkState::Up(up) = &*network else {
                continue;
            };
            if !up.behind_another_tunneld()
                || !up.another_tunneld_let_go(&self.settings.resolv_conf).await
            {
                continue;
            }
            tracing::info!("the other kubedev tunneld let the cluster network go: taking it");
            // Dropped first: this one's device, routes and resolver view go.
            *network = NetworkState::Off;
            drop(network);
            self.start_network(cluster, false).await;
        }
    }

    pub(super) async fn bring_up_network(
        &self,
        cluster: &KnownCluster,
    ) -> anyhow::Result<NetworkState> {
        let domain = self.settings.cluster_domain.trim_end_matches('.');
        let machine = self.machine_device(domain, &cluster.search).await?;
        let mut up = UpNetwork {
            cluster: cluster.ranges.clone(),
            api_server: api_server_exclusions(&self.api_server).await,
            device: machine.network.name().to_owned(),
            routes: machine.routes,
            ranges: Vec::new(),
            resolver: machine.resolver,
            helper: machine.helper,
            lost: machine.lost.clone(),
            routed_by_another_tunneld: false,
        };
        self.route(&mut up).await?;
        let dns = DnsAnswerer::new(self.pool.clone(), domain, machine.upstream);
        let dns = Arc::new(match reaches_ipv6(&up) {
            true => dns,
            false => dns.ipv4_only(),
        });
        let serving = machine.network.run(self.outbound.clone(), dns);
        // A helper's device is let go with the helper, which removed its routes.
        let lost = machine.lost.unwrap_or_default();
        tokio::spawn(async move {
            tokio::select! {
                served = serving => if let Err(err) = served {
                    tracing::error!("cluster network stopped: {err:#}");
                },
                () = lost.cancelled() => {}
            }
        });
        Ok(NetworkState::Up(Box::new(up)))
    }

    /// Routes what the plan says, from the machine's routes as they are now.
    pub(super) async fn route(&self, up: &mut UpNetwork) -> anyhow::Result<()> {
        let proxy = self.proxy.lock().await.clone();
        let mut never = up.api_server.clone();
        never.extend(proxy.never_proxy.iter().map(|range| Exclusion {
            range: *range,
            reason: "--never-proxy".into(),
        }));
        let wanted = Wanted {
            cluster: up.cluster.clone(),
            also: proxy.also_proxy,
            never,
        };
        let machine = up.routes.machine_routes().await?;
        up.routed_by_another_tunneld =
            (machine.iter()).any(|route| another_tunneld_routes(&up.cluster, route));
        let mut plan = route_plan::plan(&wanted, &machine);
        let mut routes = plan.routes.clone();
        routes.push(kubedev::cidr::single(DNS_IP.into()));
        for (route, err) in up.routes.set(&routes).await {
            tracing::warn!("could not add route {route} dev {}: {err}", up.device);
            let holder = plan
                .ranges
                .iter_mut()
                .find(|range| kubedev::cidr::holds(&range.range, &route));
            if let Some(range) = holder {
                range.except.push(RangePart {
                    range: route,
                    reason: format!("the route could not be added: {err}"),
                });
            }
        }
        let listed: Vec<String> = up.routes.added().iter().map(ToString::to_string).collect();
        tracing::info!("cluster network on {}: {}", up.device, listed.join(", "));
        for range in &plan.ranges {
            match range.state {
                RangeState::Routed if range.except.is_empty() => {}
                RangeState::Routed => {
                    let parts: Vec<String> = range
                        .except
                        .iter()
                        .map(|part| format!("{} ({})", part.range, part.reason))
                        .collect();
                    tracing::info!("{} routed but for {}", range.range, parts.join(", "));
                }
                RangeState::Machine => tracing::info!(
                    "{} not routed: {} ({})",
                    range.range,
                    range.reason,
                    range.via.as_deref().unwrap_or_default()
                ),
                RangeState::Excluded => {
                    tracing::info!("{} not routed: {}", range.range, range.reason);
                }
            }
        }
        up.ranges = plan.ranges;
        Ok(())
    }
}

/// How often tunneld looks for a network helper while the network is down, or (as root)
/// whether another tunneld has let the machine's cluster network go.
const HELPER_WATCH: Duration = Duration::from_secs(2);

/// Which socket is at `path`, if any: a helper started again makes a new one, which may
/// reuse the old one's inode but not its change time.
fn socket_identity(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt as _;
    let found = std::fs::symlink_metadata(path).ok()?;
    Some((found.dev(), found.ino(), found.ctime(), found.ctime_nsec()))
}

/// Whether the cluster's IPv6 addresses are reachable from this machine: tunneld routes
/// some into its device, or the machine reaches an IPv6 range of the cluster itself (a
/// node's bridge). Not through the network helper, whose devices take no IPv6.
fn reaches_ipv6(up: &UpNetwork) -> bool {
    let routed = up
        .routes
        .added()
        .iter()
        .any(|route| route.network().is_ipv6());
    routed
        || up.ranges.iter().any(|range| {
            range.state == kubedev::control::RangeState::Machine && range.range.network().is_ipv6()
        })
}

/// Whether `route` goes through another kubedev tunneld's device into `cluster`'s ranges
/// (a tunneld of another cluster is no concern of this one's).
fn another_tunneld_routes(cluster: &[Cidr], route: &MachineRoute) -> bool {
    let overlaps = |range: &Cidr| {
        kubedev::cidr::holds(range, &route.destination)
            || kubedev::cidr::holds(&route.destination, range)
    };
    route.description.contains(KUBEDEV_DEVICE) && cluster.iter().any(overlaps)
}

/// The API server's own addresses: routing them into the tunnel would cut the tunnel's
/// own connection.
async fn api_server_exclusions(server: &str) -> Vec<Exclusion> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Some(host) = server_host(server) {
        if let Ok(ip) = host.parse() {
            addresses.push(ip);
        } else if let Ok(found) = tokio::net::lookup_host((host.as_str(), 443)).await {
            addresses.extend(found.map(|a| a.ip()));
        }
    }
    addresses
        .into_iter()
        .map(|ip| Exclusion {
            range: kubedev::cidr::single(ip),
            reason: "the API server's address".into(),
        })
        .collect()
}

fn server_host(server: &str) -> Option<String> {
    let after_scheme = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = after_scheme.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    Some(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_api_server_host() {
        assert_eq!(
            server_host("https://10.201.0.1:6443/").as_deref(),
            Some("10.201.0.1")
        );
        assert_eq!(
            server_host("https://api.example.com").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            server_host("https://[fd00::1]:6443").as_deref(),
            Some("fd00::1")
        );
    }

    #[test]
    fn only_another_tunneld_s_routes_into_this_cluster_count() {
        use crate::network::machine_routes::MachineRouteKind;
        let range = |text: &str| kubedev::cidr::parse(text).expect("range");
        let route = |destination: &str, device: &str| MachineRoute {
            destination: range(destination),
            kind: MachineRouteKind::Path,
            before_main: false,
            description: format!("{destination} dev {device}"),
        };
        let cluster = [range("10.96.0.0/16"), range("10.244.0.0/16")];
        assert!(another_tunneld_routes(
            &cluster,
            &route("10.96.0.0/17", "kubedev-tun0")
        ));
        assert!(another_tunneld_routes(
            &cluster,
            &route("10.0.0.0/8", "kubedev-tun1")
        ));
        assert!(!another_tunneld_routes(
            &cluster,
            &route("10.97.0.0/16", "kubedev-tun0")
        ));
        assert!(!another_tunneld_routes(
            &cluster,
            &route("10.96.0.0/17", "wg0")
        ));
    }

    #[tokio::test]
    async fn the_api_servers_address_is_excluded() {
        let excluded = api_server_exclusions("https://10.201.0.1:6443").await;
        assert_eq!(excluded.len(), 1);
        assert_eq!(excluded[0].range.to_string(), "10.201.0.1/32");
    }
}
