//! The cluster network's life in the daemon: the cluster's ranges learned with the first
//! session, whatever else comes (the proxy needs them as much as the TUN device); the TUN
//! device brought up then too, with routes planned against the machine's and DNS, routed
//! again when the user's choices change, and undone when dropped ([`machine`], Linux;
//! elsewhere the machine's network is not available yet: `unavailable`).

use kubedev::cidr::Cidr;
use kubedev::control::NetworkStatus;

use super::Daemon;
use crate::cluster_ranges;
use crate::network::dns;
use crate::outbound::Routing;

#[cfg(target_os = "linux")]
mod machine;
#[cfg(not(target_os = "linux"))]
mod unavailable;

#[cfg(target_os = "linux")]
use machine::UpNetwork;
#[cfg(not(target_os = "linux"))]
use unavailable::UpNetwork;

/// What tunneld learns of the cluster with its first session.
#[derive(Debug)]
pub(super) struct KnownCluster {
    /// Its pod and service ranges, as discovered or given (`--route`).
    ranges: Vec<Cidr>,
    /// Where short names are looked for: the first session's namespace's search path.
    search: Vec<String>,
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
            Self::Up(up) if let Some(reason) = up.lost() => NetworkStatus::Unavailable { reason },
            Self::Up(up) => up.status(),
            Self::Unavailable(reason) => NetworkStatus::Unavailable {
                reason: reason.clone(),
            },
        }
    }

    /// Whether bringing it up again could help: it never came up, or its helper is gone.
    pub(super) fn down(&self) -> bool {
        match self {
            Self::Off => false,
            Self::Up(up) => up.lost().is_some(),
            Self::Unavailable(_) => true,
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

    /// Brings up the cluster network, for the cluster as the first session found it, where
    /// it is not up: first, and again where it was unavailable or its helper went away.
    /// Without it tunnels still work, and the reason is kept. Once it is up, routes again
    /// if the user's choices changed.
    pub(super) async fn start_network(&self, cluster: &KnownCluster, new_choices: bool) {
        let mut network = self.network.lock().await;
        if let NetworkState::Up(up) = &mut *network
            && up.lost().is_none()
        {
            if new_choices && let Err(err) = self.route(up).await {
                tracing::warn!("routing the cluster's ranges again: {err:#}");
            }
            return;
        }
        if self.settings.no_network {
            return;
        }
        // What is left of a network whose helper is gone goes first.
        *network = NetworkState::Off;
        *network = match self.bring_up_network(cluster).await {
            Ok(up) => up,
            Err(err) => {
                let reason = format!("{err:#}");
                tracing::warn!("no cluster network on this machine: {reason}");
                NetworkState::Unavailable(reason)
            }
        };
    }
}
