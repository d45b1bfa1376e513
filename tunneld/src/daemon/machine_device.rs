//! The machine's TUN device for the cluster network, and the resolver pointed at it: made
//! by tunneld itself where it runs as root, by the network helper where one serves this
//! user ([`crate::network_helper`]), and otherwise unavailable, with what would make it so.

use std::net::SocketAddr;
use std::path::PathBuf;

use kubedev::cidr::Cidr;
use kubedev::control::ResolverStatus;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::network::machine_routes::MachineRoute;
use crate::network::pointing::{self, Pointed, PointedResolver, ResolverChoice};
use crate::network::resolv_conf::CommandResolvConf;
use crate::network::tun_routes::TunRoutes;
use crate::network::{DNS_IP, Network};
use crate::network_helper::client::{self, HelperDevice, HelperRoutes};

/// The device, ready to route into and serve.
#[derive(Debug)]
pub(super) struct MachineDevice {
    pub(super) network: Network,
    pub(super) routes: DeviceRoutes,
    pub(super) resolver: Resolver,
    /// Where names that are not the cluster's are forwarded.
    pub(super) upstream: Option<SocketAddr>,
    /// The network helper that made it, if one did.
    pub(super) helper: Option<PathBuf>,
    /// Cancelled once the helper that made it is gone, and the device with it.
    pub(super) lost: Option<CancellationToken>,
}

/// The device's routes, set by tunneld or by the helper.
#[derive(Debug)]
pub(super) enum DeviceRoutes {
    Own(TunRoutes),
    Helper(HelperRoutes),
}

impl DeviceRoutes {
    /// The machine's own routes, without the device's.
    pub(super) async fn machine_routes(&self) -> anyhow::Result<Vec<MachineRoute>> {
        match self {
            Self::Own(routes) => routes.machine_routes().await,
            Self::Helper(routes) => routes.machine_routes().await,
        }
    }

    /// Makes the device's routes exactly `wanted`; returns those refused, with why.
    pub(super) async fn set(&mut self, wanted: &[Cidr]) -> Vec<(Cidr, String)> {
        match self {
            Self::Own(routes) => routes.set(wanted).await,
            Self::Helper(routes) => routes.set(wanted).await,
        }
    }

    pub(super) fn added(&self) -> Vec<Cidr> {
        match self {
            Self::Own(routes) => routes.added(),
            Self::Helper(routes) => routes.added(),
        }
    }
}

/// How the machine's resolver reaches tunneld's DNS; dropping it undoes what tunneld did
/// (the helper undoes its own when the connection closes).
#[derive(Debug)]
pub(super) struct Resolver {
    status: ResolverStatus,
    _pointed: Option<PointedResolver>,
    _for_commands: Option<CommandResolvConf>,
}

impl Resolver {
    pub(super) fn status(&self) -> ResolverStatus {
        self.status.clone()
    }
}

impl Daemon {
    /// The machine's device and resolver for the cluster's `domain` and `search`.
    pub(super) async fn machine_device(
        &self,
        domain: &str,
        search: &[String],
    ) -> anyhow::Result<MachineDevice> {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            let helper = &self.settings.network_helper;
            if let Some(device) = client::open(helper, domain, search).await? {
                return self.through_helper(device, search);
            }
        }
        let network = Network::create().map_err(|err| match root {
            true => err,
            false => anyhow::anyhow!("{err:#}; {}", helper_hint()),
        })?;
        let routes = TunRoutes::new(network.name()).await?;
        if let Err(err) = routes.add_ipv6_address().await {
            tracing::warn!("{err:#}: the cluster's IPv6 addresses are out of reach");
        }
        let (pointed, upstream) = pointing::point(ResolverChoice {
            resolv_conf: &self.settings.resolv_conf,
            state_dir: &self.settings.state_dir,
            device: network.name(),
            device_index: routes.device_index(),
            domain,
            search,
        })?;
        let described = pointed.described();
        let (resolver, upstream) = self.resolver(described, Some(pointed), upstream, search)?;
        Ok(MachineDevice {
            network,
            routes: DeviceRoutes::Own(routes),
            resolver,
            upstream,
            helper: None,
            lost: None,
        })
    }

    fn through_helper(
        &self,
        device: HelperDevice,
        search: &[String],
    ) -> anyhow::Result<MachineDevice> {
        let (resolver, upstream) = self.resolver(device.resolver, None, device.upstream, search)?;
        Ok(MachineDevice {
            network: device.network,
            routes: DeviceRoutes::Helper(device.routes),
            resolver,
            upstream,
            helper: Some(self.settings.network_helper.clone()),
            lost: Some(device.gone),
        })
    }

    /// The resolver as `described`, undone with `pointed` where tunneld pointed it.
    fn resolver(
        &self,
        described: Pointed,
        pointed: Option<PointedResolver>,
        upstream: Option<SocketAddr>,
        search: &[String],
    ) -> anyhow::Result<(Resolver, Option<SocketAddr>)> {
        let status = match described {
            Pointed::SystemdResolved { link } => ResolverStatus::SystemdResolved { link },
            Pointed::ResolvConf { path } => ResolverStatus::ResolvConf { path },
            Pointed::Unchanged { reason } => return self.unchanged(reason, search),
        };
        let resolver = Resolver {
            status,
            _pointed: pointed,
            _for_commands: None,
        };
        Ok((resolver, upstream))
    }

    /// The machine's resolver stays as it is, for `reason`: commands can be given a file
    /// of tunneld's own instead.
    fn unchanged(
        &self,
        reason: String,
        search: &[String],
    ) -> anyhow::Result<(Resolver, Option<SocketAddr>)> {
        let (for_commands, upstream) = CommandResolvConf::write(
            &self.settings.resolv_conf,
            &self.settings.state_dir,
            DNS_IP,
            search,
        )?;
        let status = ResolverStatus::Unchanged {
            reason,
            for_commands: for_commands.path().to_owned(),
        };
        let resolver = Resolver {
            status,
            _pointed: None,
            _for_commands: Some(for_commands),
        };
        Ok((resolver, upstream))
    }
}

/// What brings the network to this machine without running tunneld as root.
fn helper_hint() -> String {
    format!(
        "the network helper brings it to this machine for your sessions, started once as root: \
         `{}`",
        client::start_command()
    )
}
