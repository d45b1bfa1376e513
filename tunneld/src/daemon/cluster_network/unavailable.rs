//! macOS and Windows: the machine's cluster network (a TUN device, routes, the resolver)
//! is not available yet (docs/platforms.md says how it will be made). Sessions, tunnels
//! and the proxy work without it, and the status says so.

use kubedev::control::NetworkStatus;

use super::{Daemon, KnownCluster, NetworkState};

/// What the status says instead of the machine's network.
pub(super) const NOT_HERE: &str = "the cluster's network for the whole machine (a TUN device, \
     routes and DNS) is not available on this system yet: programs reach the cluster \
     through tunneld's proxy";

/// Never made here.
#[derive(Debug)]
pub(in crate::daemon) enum UpNetwork {}

impl UpNetwork {
    pub(super) fn lost(&self) -> Option<String> {
        match *self {}
    }

    pub(super) fn status(&self) -> NetworkStatus {
        match *self {}
    }
}

impl Daemon {
    /// Nothing to watch for: no network helper serves this system.
    pub(in crate::daemon) async fn keep_network_up(&self) {
        std::future::pending().await
    }

    pub(super) async fn route(&self, up: &mut UpNetwork) -> anyhow::Result<()> {
        match *up {}
    }

    pub(super) async fn bring_up_network(
        &self,
        _cluster: &KnownCluster,
    ) -> anyhow::Result<NetworkState> {
        Ok(NetworkState::Unavailable(NOT_HERE.to_owned()))
    }
}
