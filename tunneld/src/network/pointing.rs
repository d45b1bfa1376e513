//! Pointing the machine's resolver at tunneld's DNS, the way this machine allows: through
//! systemd-resolved on the TUN device's link, or in /etc/resolv.conf; or not at all where
//! a kubelet on this machine hands that file to its pods. Shared by tunneld run as root and
//! the network helper, which does it for a user's tunneld.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DNS_IP;
use super::kubelet;
use super::resolv_conf::{self, ResolvConf};
use super::systemd_resolved::{self, ResolvedLink};

/// Whom a resolver file already pointed at another tunneld is left to, in the reason
/// (which a tunneld that finds it watches for).
pub(crate) const ANOTHER_TUNNELD: &str = "another kubedev tunneld";

/// How the resolver was pointed; dropping it undoes that.
#[derive(Debug)]
pub(crate) enum PointedResolver {
    SystemdResolved(ResolvedLink),
    ResolvConf(ResolvConf),
    /// Left as it is, for this reason.
    Unchanged(String),
}

/// How the resolver was pointed, in words and paths (what the network helper tells a
/// tunneld).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub(crate) enum Pointed {
    SystemdResolved { link: String },
    ResolvConf { path: PathBuf },
    Unchanged { reason: String },
}

impl std::fmt::Display for Pointed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SystemdResolved { link } => write!(f, "systemd-resolved, link {link}"),
            Self::ResolvConf { path } => write!(f, "{}", path.display()),
            Self::Unchanged { reason } => write!(f, "left as it is: {reason}"),
        }
    }
}

impl PointedResolver {
    pub(crate) fn described(&self) -> Pointed {
        match self {
            Self::SystemdResolved(link) => Pointed::SystemdResolved {
                link: link.link().to_owned(),
            },
            Self::ResolvConf(conf) => Pointed::ResolvConf {
                path: conf.path().to_owned(),
            },
            Self::Unchanged(reason) => Pointed::Unchanged {
                reason: reason.clone(),
            },
        }
    }
}

/// Where the resolver is and what names go to tunneld.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResolverChoice<'a> {
    /// The machine's resolver file.
    pub(crate) resolv_conf: &'a Path,
    /// Where the original of a changed `resolv_conf` is kept until it is restored.
    pub(crate) state_dir: &'a Path,
    /// The TUN device's link, and its index.
    pub(crate) device: &'a str,
    pub(crate) device_index: u32,
    /// The cluster's DNS domain.
    pub(crate) domain: &'a str,
    /// The search path.
    pub(crate) search: &'a [String],
}

/// Points the resolver at [`DNS_IP`] unless a kubelet on this machine hands what would
/// change to its pods. Returns how, and the nameserver to forward other names to.
pub(crate) fn point(
    choice: ResolverChoice<'_>,
) -> anyhow::Result<(PointedResolver, Option<SocketAddr>)> {
    let through_resolved = systemd_resolved::manages(choice.resolv_conf);
    // resolved lists every link's servers in its own file, tunneld's among them.
    let changed_file = if through_resolved {
        Path::new(systemd_resolved::UPLINK_RESOLV_CONF)
    } else {
        choice.resolv_conf
    };
    let handed_out = kubelet::find().iter().find_map(|kubelet| {
        let theirs = kubelet.hands_out(changed_file)?;
        Some(format!(
            "the kubelet on this machine (pid {}) hands {} to its pods",
            kubelet.pid,
            theirs.display()
        ))
    });
    if let Some(reason) = handed_out {
        tracing::warn!("DNS left as it is: {reason}");
        return Ok((PointedResolver::Unchanged(reason), None));
    }
    if through_resolved {
        let link = ResolvedLink::configure(
            choice.device,
            choice.device_index,
            DNS_IP,
            choice.domain,
            choice.search,
        )?;
        // resolved sends only cluster names here: there is nothing to forward.
        return Ok((PointedResolver::SystemdResolved(link), None));
    }
    // What a run that crashed left is put back first; another tunneld's stays.
    resolv_conf::restore_left_behind(choice.resolv_conf, choice.state_dir)?;
    if resolv_conf::carries_marker(choice.resolv_conf) {
        let reason = format!(
            "{} already sends names to {ANOTHER_TUNNELD}",
            choice.resolv_conf.display()
        );
        return Ok((PointedResolver::Unchanged(reason), None));
    }
    let (conf, upstream) =
        ResolvConf::install(choice.resolv_conf, choice.state_dir, DNS_IP, choice.search)?;
    Ok((PointedResolver::ResolvConf(conf), upstream))
}
