//! What tunneld says it runs ([`super::ControlReply::Status`]): its sessions, the cluster
//! network on this machine and its proxy. Keys are camelCase, as Kubernetes prints them
//! (`status -o json`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use kubedev_protocol::WiretapCounts;

/// What a tunneld runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatus {
    /// Its process id.
    pub pid: u32,
    /// Its version (none from a tunneld that predates saying it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The cluster's network on this machine.
    pub network: NetworkStatus,
    /// Its proxy, for every tool and platform (none from a tunneld without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
    /// Its sessions, by name.
    pub sessions: Vec<SessionStatus>,
}

impl DaemonStatus {
    /// Whether this tunneld keeps session `name` of `namespace`.
    pub fn keeps(&self, namespace: &str, name: &str) -> bool {
        (self.sessions.iter()).any(|kept| kept.name == name && kept.namespace == namespace)
    }

    /// What to know when this tunneld is not of `plugin`'s version: a plugin that was
    /// upgraded while its tunneld ran uses the old one until that one exits.
    pub fn skew(&self, plugin: &str) -> Option<String> {
        let running = match self.version.as_deref() {
            Some(version) => version.to_owned(),
            None => "of an older release".to_owned(),
        };
        (running != plugin).then(|| {
            format!(
                "tunneld {running} (pid {}) serves this kube context, not this plugin's \
                 version {plugin}: it exits once it has no session left, and the next \
                 command then starts tunneld {plugin}",
                self.pid
            )
        })
    }
}

/// The user name tunneld's proxy takes; the password is each tunneld's own secret.
pub const PROXY_USER: &str = "kubedev";

/// tunneld's proxy: SOCKS5 and HTTP on one loopback port, into the cluster's network (and
/// everywhere else from this machine), for tools and platforms without the machine-wide
/// network. It takes only its own credentials, which these URLs carry: only the user sees
/// them (tunneld's control socket is theirs alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// Where it listens (`127.0.0.1:PORT`).
    pub address: SocketAddr,
    /// SOCKS5 with names resolved by the proxy: `socks5h://kubedev:SECRET@127.0.0.1:PORT`.
    pub socks_url: String,
    /// An HTTP proxy (CONNECT, and plain HTTP requests): `http://kubedev:SECRET@127.0.0.1:PORT`.
    pub http_url: String,
}

impl ProxyStatus {
    /// The same proxy with its password blanked out, for what leaves the machine (an
    /// archive for a bug report).
    pub fn redacted(&self) -> Self {
        Self::new(self.address, "REDACTED")
    }

    /// The proxy on `address` whose password is `secret` (made of URL-safe characters).
    pub fn new(address: SocketAddr, secret: &str) -> Self {
        let credentials = format!("{PROXY_USER}:{secret}@{address}");
        Self {
            address,
            socks_url: format!("socks5h://{credentials}"),
            http_url: format!("http://{credentials}"),
        }
    }
}

/// Whether the cluster's network is available on this machine, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum NetworkStatus {
    /// Not started: no session yet, or started with --no-network.
    Off,
    /// Up: the ranges are routed as `ranges` says, and names resolve through tunneld.
    Up {
        /// The routes tunneld added into its TUN device.
        routes: Vec<Cidr>,
        /// What became of each of the cluster's ranges (and `--also-proxy`'s).
        ranges: Vec<RangeStatus>,
        /// tunneld's DNS address.
        dns: String,
        /// How the system resolver was pointed at it, or why it was left as it is.
        resolver: ResolverStatus,
        /// The network helper (its socket) that made the device, routes and resolver
        /// settings for a tunneld without root; none where tunneld made them itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        helper: Option<PathBuf>,
    },
    /// It could not be brought up (no permission for a TUN device, say).
    Unavailable {
        /// Why, in words for the user.
        reason: String,
    },
}

/// How the machine's resolver reaches tunneld's DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "via",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ResolverStatus {
    /// Cluster names go to tunneld through systemd-resolved, on this link.
    SystemdResolved {
        /// The link (network interface) systemd-resolved sends cluster names to.
        link: String,
    },
    /// This file names tunneld as the nameserver until tunneld exits.
    ResolvConf {
        /// The resolver file changed.
        path: PathBuf,
    },
    /// The machine's resolver is left as it is, for `reason`. `for_commands` is a
    /// resolver file that points at tunneld, for a program given a view of its own of
    /// /etc/resolv.conf (`-- CMD`).
    Unchanged {
        /// Why the resolver is left alone.
        reason: String,
        /// The resolver file for `-- CMD`.
        for_commands: PathBuf,
    },
}

impl std::fmt::Display for ResolverStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SystemdResolved { link } => write!(f, "systemd-resolved, link {link}"),
            Self::ResolvConf { path } => write!(f, "{}", path.display()),
            Self::Unchanged { reason, .. } => write!(f, "none: {reason}"),
        }
    }
}

/// What tunneld did with one address range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeStatus {
    /// The range.
    pub range: Cidr,
    /// Whether it is routed into the cluster.
    pub state: RangeState,
    /// Why, in words.
    pub reason: String,
    /// The machine's own route that reaches the range, as `ip route` shows it (state
    /// `machine`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Parts of a routed range that are not routed into the cluster, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<RangePart>,
}

/// Whether a range is routed into the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeState {
    /// Routed into the cluster through tunneld (but for the parts in `except`).
    Routed,
    /// Left to the route this machine already has for it (a node's bridge, a VPN).
    Machine,
    /// Not routed: `--never-proxy`, or it holds the API server's address.
    Excluded,
}

/// A part of a range that tunneld does not route, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangePart {
    /// The part.
    pub range: Cidr,
    /// Why it is not routed, in words.
    pub reason: String,
}

/// One session of a tunneld.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// The session's name.
    pub name: String,
    /// Where its agents run.
    pub namespace: String,
    /// Agent pods with a live tunnel.
    pub linked_pods: Vec<String>,
    /// A wiretap's copies, over its linked pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiretap: Option<WiretapCounts>,
}

impl SessionStatus {
    /// Which session this is.
    pub fn key(&self) -> super::SessionKey {
        super::SessionKey::new(&self.namespace, &self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(version: Option<&str>) -> DaemonStatus {
        DaemonStatus {
            pid: 42,
            version: version.map(str::to_owned),
            network: NetworkStatus::Off,
            proxy: None,
            sessions: Vec::new(),
        }
    }

    #[test]
    fn a_tunneld_of_another_version_is_named_with_what_happens_next() {
        assert_eq!(status(Some("0.2.0")).skew("0.2.0"), None);
        let older = status(Some("0.1.0")).skew("0.2.0").expect("skew");
        assert!(
            older.starts_with(
                "tunneld 0.1.0 (pid 42) serves this kube context, not this \
                 plugin's version 0.2.0"
            ),
            "{older}"
        );
        let silent = status(None).skew("0.2.0").expect("skew");
        assert!(
            silent.starts_with("tunneld of an older release (pid 42)"),
            "{silent}"
        );
    }

    #[test]
    fn a_status_without_a_version_still_reads() {
        let mut json = serde_json::to_value(status(Some("0.1.0"))).expect("json");
        assert_eq!(json["version"], "0.1.0");
        json.as_object_mut().expect("object").remove("version");
        let read: DaemonStatus = serde_json::from_value(json).expect("older status");
        assert_eq!(read.version, None);
    }
}
