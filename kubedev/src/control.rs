//! The control API of tunneld, over its control channel (one tunneld per user and kube
//! context; see [`crate::tunneld`]):
//! what the plugins may ask ([`ControlRequest`]) and what tunneld answers
//! ([`ControlReply`]). tunneld serves it; the plugins reach it through the `tunneld`
//! module.
//! Messages use the agent protocol's framing (length-prefixed JSON).

#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::workload::WorkloadRef;
use kubedev_protocol::Transport;

mod status;

pub use status::{
    DaemonStatus, NetworkStatus, PROXY_USER, ProxyStatus, RangePart, RangeState, RangeStatus,
    ResolverStatus, SessionStatus,
};

/// A request on tunneld's control socket, from a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Keep tunnels to the agent pods matching `agents` (a label selector) in `namespace`,
    /// and deliver the connections they take over to `forwards`.
    AddSession {
        /// The session's name, unique in this tunneld.
        name: String,
        /// Where its agent pods run.
        namespace: String,
        /// The label selector of its agent pods.
        agents: String,
        /// The secret the agents were started with.
        token: String,
        /// Where the connections the agents take over go on this machine.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        forwards: Vec<Forward>,
        /// The user's choices about which ranges to route; tunneld keeps them, from every
        /// session, until it exits.
        #[serde(default, skip_serializing_if = "ProxyChoices::is_empty")]
        proxy: ProxyChoices,
        /// Ports on this machine's localhost forwarded to the same port on a pod's own
        /// localhost (`--to-pod`), while the session lasts.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        to_pod: Vec<PodPort>,
        /// What controls the agent pods: tunneld links only to pods it controls, whatever
        /// else wears their labels (any pod, where none is given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<AgentOwner>,
    },
    /// Drop the tunnels of a session (its workload is the plugin's to restore).
    RemoveSession {
        /// The session.
        #[serde(flatten)]
        session: SessionKey,
        /// Only if its agent pods are these (a run ending its own session, never a
        /// namesake another run added); any, where none is given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<AgentOwner>,
        /// Asked by `leave`, not by the run that holds the session: that run, if one holds
        /// it here, is told that its session was ended.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        by_leave: bool,
    },
    /// What tunneld runs: its sessions and the cluster network, answered with `Status`.
    Status,
    /// Times round trips to an agent through one of tunneld's links (the API server's
    /// port-forward), answered with `RoundTrip`.
    TimeLink,
    /// The app container's environment, from one of the session's agents.
    Environment {
        /// The session whose agent answers.
        #[serde(flatten)]
        session: SessionKey,
    },
    /// After `Done`, this connection carries an SFTP session on the app container's
    /// volumes, with one of the session's agents.
    OpenFiles {
        /// The session whose agent serves the volumes.
        #[serde(flatten)]
        session: SessionKey,
    },
    /// Sent by a plugin before it changes anything for a session; it keeps this connection
    /// open until it has ended the session, or detached it, and sends `Release`. If the
    /// connection closes first (the plugin was killed), tunneld ends the session and
    /// restores the workload. Meanwhile tunneld renews the session's lease; if the lease is
    /// lost (another run restored the session after it ran out), tunneld ends the session
    /// here and says so with `Ended` on this connection.
    Hold(Held),
    /// Ends a `Hold`, on its connection: the plugin has ended the session.
    Release,
    /// Serve the network namespace session `name`'s command runs in (made by the plugin,
    /// unprivileged: see [`NamespaceFiles`]), whose files follow this message. tunneld
    /// answers `CommandNetwork`, then serves the namespace's TUN device (the cluster's
    /// ranges and names, everything else from this machine) and delivers the session's
    /// incoming connections inside it, until this connection closes or the session ends.
    ServeCommandNetwork {
        /// The session whose command runs in the namespace.
        #[serde(flatten)]
        session: SessionKey,
    },
}

/// A session as tunneld keeps it: names are unique within a namespace, so sessions of one
/// name in two namespaces are two sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionKey {
    /// The namespace of its workload (or of its own pod).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl SessionKey {
    /// Session `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The MTU of tunneld's TUN devices, its own and those of the commands' network namespaces:
/// large packets mean fewer trips through its userspace stack.
pub const TUN_MTU: u16 = 65_000;

/// The IPv6 address of every TUN device tunneld serves: the source of the workstation's
/// IPv6 flows to the cluster. A benchmarking address, which no real network uses
/// (RFC 5180), as 198.18.0.1 is for IPv4.
pub const TUN_IPV6_ADDRESS: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

/// The open files that make a command's network namespace reachable from outside: its TUN
/// device, its user namespace and its network namespace, passed in this order
/// ([`crate::fd_passing`]).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct NamespaceFiles {
    /// The TUN device all of the namespace's traffic is routed into.
    pub tun: OwnedFd,
    /// `/proc/PID/ns/user` of the namespace's maker: whoever joins the network namespace
    /// joins this one first.
    pub user: OwnedFd,
    /// `/proc/PID/ns/net`.
    pub network: OwnedFd,
}

#[cfg(target_os = "linux")]
impl NamespaceFiles {
    /// The files in the order they are passed.
    pub fn as_sent(&self) -> [RawFd; 3] {
        [
            self.tun.as_raw_fd(),
            self.user.as_raw_fd(),
            self.network.as_raw_fd(),
        ]
    }

    /// The files as received: exactly three, in the order [`Self::as_sent`] gives.
    pub fn from_received(files: Vec<OwnedFd>) -> Option<Self> {
        let [tun, user, network] = <[OwnedFd; 3]>::try_from(files).ok()?;
        Some(Self { tun, user, network })
    }
}

/// What tunneld restores if the plugin holding it dies: session `name` of run `owner` on
/// `workload`, waiting at most `timeout` for its pods, or a connect session's pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The session's name.
    pub name: String,
    /// The plugin run that started it (see `Record::owner`).
    pub owner: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload to restore; none for a connect session, whose pod is deleted instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// How long to wait for the restored pods.
    pub timeout: Duration,
    /// The lifetime of the session's lease, which tunneld renews; none where the user's
    /// role has no leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Duration>,
}

impl Held {
    /// The session held.
    pub fn session(&self) -> SessionKey {
        SessionKey::new(&self.namespace, &self.name)
    }
}

/// Ranges the user wants routed to the cluster whatever this machine's routes say
/// (`--also-proxy`), and ranges never to route there (`--never-proxy`, which wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyChoices {
    /// Routed to the cluster even where this machine has a route (`--also-proxy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_proxy: Vec<Cidr>,
    /// Never routed to the cluster (`--never-proxy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never_proxy: Vec<Cidr>,
}

impl ProxyChoices {
    /// Whether the user chose nothing.
    pub fn is_empty(&self) -> bool {
        self.also_proxy.is_empty() && self.never_proxy.is_empty()
    }

    /// Adds `other`'s ranges to these; returns whether anything was new.
    pub fn merge(&mut self, other: &Self) -> bool {
        let mut changed = false;
        for (mine, theirs) in [
            (&mut self.also_proxy, &other.also_proxy),
            (&mut self.never_proxy, &other.never_proxy),
        ] {
            for range in theirs {
                if !mine.contains(range) {
                    mine.push(*range);
                    changed = true;
                }
            }
        }
        changed
    }
}

/// What controls a session's agent pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentOwner {
    /// The workload's own pods: those it controls (a StatefulSet, a ReplicaSet), or that
    /// a ReplicaSet it controls does, with that ReplicaSet's pod template (a Deployment).
    Workload {
        /// The workload.
        workload: WorkloadRef,
    },
    /// One pod, by name: a connect session's own.
    Pod {
        /// The pod's name.
        name: String,
    },
}

/// Where connections for one of the app's ports go on the workstation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The app container's port the agent took over.
    pub app_port: u16,
    /// The address on this machine that receives them.
    pub local_host: String,
    /// The port on this machine that receives them.
    pub local_port: u16,
    /// Only HTTP requests that match go to this machine; the rest stay with the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<kubedev_protocol::HttpFilter>,
    /// TCP connections or UDP datagrams.
    #[serde(default, skip_serializing_if = "Transport::is_tcp")]
    pub transport: Transport,
    /// A wiretap: this machine gets copies, and the app still answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wiretap: bool,
}

impl Forward {
    /// Where connections go, as `HOST:PORT` (`[::1]:3000`).
    pub fn local_address(&self) -> String {
        match self.local_host.contains(':') {
            true => format!("[{}]:{}", self.local_host, self.local_port),
            false => format!("{}:{}", self.local_host, self.local_port),
        }
    }
}

/// A port forwarded from this machine's localhost to a pod's own (`--to-pod PORT[/udp]`):
/// a sidecar's admin port, a debug endpoint that listens on localhost only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPort {
    /// The port, the same on both ends.
    pub port: u16,
    /// TCP or UDP.
    #[serde(default, skip_serializing_if = "Transport::is_tcp")]
    pub transport: Transport,
}

impl std::str::FromStr for PodPort {
    type Err = String;

    /// `PORT`, `PORT/tcp` or `PORT/udp`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (number, transport) = match text.split_once('/') {
            None => (text, Transport::Tcp),
            Some((number, "tcp" | "TCP")) => (number, Transport::Tcp),
            Some((number, "udp" | "UDP")) => (number, Transport::Udp),
            Some(_) => return Err(format!("expected PORT or PORT/udp, got {text:?}")),
        };
        match number.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Self { port, transport }),
            _ => Err(format!("expected PORT or PORT/udp (1-65535), got {text:?}")),
        }
    }
}

impl PodPort {
    /// The addresses of this machine a port listens on: both loopbacks.
    pub const LOCAL_ADDRESSES: [std::net::IpAddr; 2] = [
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    ];

    /// Whether `err`, binding `address` (one of [`Self::LOCAL_ADDRESSES`]), says the
    /// machine has no such address (IPv6's loopback where there is no IPv6), rather than
    /// that the port is taken or forbidden, as it would be on IPv4.
    pub fn no_such_address(address: std::net::IpAddr, err: &std::io::Error) -> bool {
        use std::io::ErrorKind;
        address.is_ipv6()
            && !matches!(
                err.kind(),
                ErrorKind::AddrInUse | ErrorKind::PermissionDenied
            )
    }
}

impl std::fmt::Display for PodPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.transport {
            Transport::Tcp => write!(f, "{}", self.port),
            Transport::Udp => write!(f, "{}/udp", self.port),
        }
    }
}

/// tunneld's answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlReply {
    /// The request was carried out.
    Done,
    /// The answer to `Status`.
    Status(Box<DaemonStatus>),
    /// The answer to `Environment`.
    Environment {
        /// The app container's variables, by name.
        variables: std::collections::BTreeMap<String, String>,
    },
    /// The request could not be carried out.
    Failed {
        /// Why, in words for the user.
        reason: String,
    },
    /// The answer to `ServeCommandNetwork`: the namespace is served; the command's
    /// /etc/resolv.conf is to read `resolv_conf` (tunneld's DNS, the session namespace's
    /// search path).
    CommandNetwork {
        /// The resolver file's content.
        resolv_conf: String,
    },
    /// On a `Hold`'s connection: the session is over without its plugin (its lease was
    /// lost); there is nothing left to restore.
    Ended {
        /// Why, in words for the user.
        reason: String,
    },
    /// The answer to `TimeLink`.
    RoundTrip {
        /// The agent pod that answered.
        pod: String,
        /// The median of the round trips timed.
        median: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ports_read_as_port_and_transport() {
        let port = |text: &str| text.parse::<PodPort>();
        assert_eq!(
            port("9901"),
            Ok(PodPort {
                port: 9901,
                transport: Transport::Tcp
            })
        );
        assert_eq!(port("53/udp").map(|p| p.transport), Ok(Transport::Udp));
        assert_eq!(port("53/tcp").map(|p| p.to_string()).as_deref(), Ok("53"));
        assert_eq!(
            port("53/udp").map(|p| p.to_string()).as_deref(),
            Ok("53/udp")
        );
        for bad in ["", "0", "70000", "53/sctp", "x/udp"] {
            assert!(port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_have_a_stable_json_form() {
        let add = ControlRequest::AddSession {
            name: "web".into(),
            namespace: "shop".into(),
            agents: "app=web".into(),
            token: "t".into(),
            forwards: Vec::new(),
            proxy: ProxyChoices::default(),
            to_pod: Vec::new(),
            owner: None,
        };
        assert_eq!(
            serde_json::to_string(&add).expect("json"),
            r#"{"op":"add_session","name":"web","namespace":"shop","agents":"app=web","token":"t"}"#
        );
        let asked = ControlRequest::Environment {
            session: SessionKey::new("shop", "web"),
        };
        let json = serde_json::to_string(&asked).expect("json");
        assert_eq!(
            json,
            r#"{"op":"environment","namespace":"shop","name":"web"}"#
        );
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&json).expect("read back"),
            asked
        );
        let unavailable = NetworkStatus::Unavailable {
            reason: "needs root".into(),
        };
        assert_eq!(
            serde_json::to_string(&unavailable).expect("json"),
            r#"{"state":"unavailable","reason":"needs root"}"#
        );
    }

    #[test]
    fn the_proxys_urls_carry_its_credentials() {
        let proxy = ProxyStatus::new("127.0.0.1:41234".parse().expect("address"), "0123abcd");
        assert_eq!(
            proxy.socks_url,
            "socks5h://kubedev:0123abcd@127.0.0.1:41234"
        );
        assert_eq!(proxy.http_url, "http://kubedev:0123abcd@127.0.0.1:41234");
    }

    #[test]
    fn proxy_choices_merge_and_say_when_something_is_new() {
        let range = |text| crate::cidr::parse(text).expect("range");
        let mut held = ProxyChoices {
            also_proxy: vec![range("10.96.0.0/16")],
            never_proxy: Vec::new(),
        };
        let again = held.clone();
        assert!(!held.merge(&again));
        let more = ProxyChoices {
            also_proxy: vec![range("10.96.0.0/16")],
            never_proxy: vec![range("10.244.0.0/16")],
        };
        assert!(held.merge(&more));
        assert_eq!(held, more);
        assert_eq!(
            serde_json::to_string(&held).expect("json"),
            r#"{"also_proxy":["10.96.0.0/16"],"never_proxy":["10.244.0.0/16"]}"#
        );
    }
}
