//! The cluster network's life in the daemon: the cluster's ranges learned with the first
//! session, whatever else comes (the proxy needs them as much as the TUN device); the TUN
//! device brought up then too, with routes planned against the machine's and DNS, routed
//! again when the user's choices change, and undone when dropped.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kubedev::cidr::Cidr;
use kubedev::control::{NetworkStatus, RangePart, RangeState, RangeStatus};

use super::Daemon;
use super::machine_device::{DeviceRoutes, Resolver};
use crate::cluster_ranges;
use crate::network::DNS_IP;
use crate::network::dns::{self, DnsAnswerer};
use crate::network::route_plan::{self, Exclusion, Wanted};
use crate::outbound::Routing;

/// What tunneld learns of the cluster with its first session.
#[derive(Debug)]
pub(super) struct KnownCluster {
    /// Its pod and service ranges, as discovered or given (`--route`).
    ranges: Vec<Cidr>,
    /// Where short names are looked for: the first session's namespace's search path.
    search: Vec<String>,
}

/// The cluster network while it is up.
#[derive(Debug)]
pub(super) struct UpNetwork {
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
}

#[derive(Debug)]
pub(super) enum NetworkState {
    Off,
    Up(Box<UpNetwork>),
    Unavailable(String),
}

impl NetworkState {
    pub(super) fn status(&self) -> NetworkStatus {
        match self {
            Self::Off => NetworkStatus::Off,
            Self::Up(up) => NetworkStatus::Up {
                routes: up.routes.added(),
                ranges: up.ranges.clone(),
                dns: DNS_IP.to_string(),
                resolver: up.resolver.status(),
                helper: up.helper.clone(),
            },
            Self::Unavailable(reason) => NetworkStatus::Unavailable {
                reason: reason.clone(),
            },
        }
    }
}

impl Daemon {
    /// Learns the cluster's ranges once, with the first session (`namespace`'s), and has
    /// every new flow routed by them and the user's choices as they are now.
    pub(super) async fn learn_cluster(&self, namespace: &str) -> &KnownCluster {
        let known = self
            .cluster
            .get_or_init(|| async {
                let ranges = if self.settings.routes.is_empty() {
                    cluster_ranges::discover(&self.client, namespace).await
                } else {
                    self.settings.routes.clone()
                };
                let search = dns::search_path(&self.settings.cluster_domain, namespace);
                KnownCluster { ranges, search }
            })
            .await;
        self.outbound.set_routing(Routing {
            cluster: known.ranges.clone(),
            choices: self.proxy.lock().await.clone(),
            search: known.search.clone(),
        });
        known
    }

    /// Brings up the cluster network once, for the cluster as the first session found it;
    /// without root it records why there is none, and tunnels still work. Once it is up,
    /// routes again if the user's choices changed.
    pub(super) async fn start_network(&self, cluster: &KnownCluster, new_choices: bool) {
        let mut network = self.network.lock().await;
        if let NetworkState::Up(up) = &mut *network {
            if new_choices && let Err(err) = self.route(up).await {
                tracing::warn!("routing the cluster's ranges again: {err:#}");
            }
            return;
        }
        if !matches!(*network, NetworkState::Off) || self.settings.no_network {
            return;
        }
        *network = match self.bring_up_network(cluster).await {
            Ok(up) => up,
            Err(err) => {
                let reason = format!("{err:#}");
                tracing::warn!("no cluster network on this machine: {reason}");
                NetworkState::Unavailable(reason)
            }
        };
    }

    async fn bring_up_network(&self, cluster: &KnownCluster) -> anyhow::Result<NetworkState> {
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
        };
        self.route(&mut up).await?;
        let dns = Arc::new(DnsAnswerer::new(
            self.pool.clone(),
            domain,
            machine.upstream,
        ));
        let serving = machine.network.run(self.outbound.clone(), dns);
        tokio::spawn(async move {
            if let Err(err) = serving.await {
                tracing::error!("cluster network stopped: {err:#}");
            }
        });
        Ok(NetworkState::Up(Box::new(up)))
    }

    /// Routes what the plan says, from the machine's routes as they are now.
    async fn route(&self, up: &mut UpNetwork) -> anyhow::Result<()> {
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
        let mut plan = route_plan::plan(&wanted, &machine);
        let mut routes = plan.routes.clone();
        routes.push(Cidr::from(DNS_IP));
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
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(Exclusion {
                range: Cidr::from(v4),
                reason: "the API server's address".into(),
            }),
            IpAddr::V6(_) => None,
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

    #[tokio::test]
    async fn the_api_servers_address_is_excluded() {
        let excluded = api_server_exclusions("https://10.201.0.1:6443").await;
        assert_eq!(excluded.len(), 1);
        assert_eq!(excluded[0].range.to_string(), "10.201.0.1/32");
    }
}
