//! The wire protocol between tunneld (on the workstation) and the agent (in the pod).
//!
//! One port-forward connection carries one session:
//! 1. Each side proves to the other that it knows the session's secret without sending it
//!    ([`handshake`]): tunneld's [`Hello`] challenges the agent, whose
//!    [`HelloReply::Challenge`] answers and challenges back, and tunneld's [`Proof`] answers;
//!    the agent then welcomes it. A version mismatch or a wrong secret ends the connection
//!    with a reason the user can act on, and a pod that does not know the secret learns
//!    nothing of it.
//! 2. Both sides then run yamux over the connection ([`mux`]): many streams, each with its
//!    own flow control and half-close, so one slow flow never stalls the others.
//! 3. Every stream starts with an [`OpenRequest`] from the side that opened it, answered by
//!    an [`OpenReply`]; after that the stream carries the flow's bytes (TCP) or
//!    length-prefixed datagrams (UDP, see [`codec::write_datagram`]).

#![warn(missing_docs)]

pub mod codec;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod handshake;
pub mod link;
pub mod meter;
pub mod mux;
pub mod refusals;
pub mod splice;
pub mod stripe;
pub mod udp_flows;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bumped on any change that an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 8;

/// The longest id of a striped flow.
pub const MAX_STRIPE_ID: usize = 64;

/// A fresh random id (session tokens, plugin runs, striped flows): 128 random bits from
/// the system's generator (getrandom, or BCryptGenRandom on Windows), hex. `None` if the
/// system has no randomness to give.
pub fn random_id() -> Option<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The port the agent listens on, on 127.0.0.1 inside the pod only: it is reachable
/// solely through the Kubernetes API's port-forward.
pub const AGENT_PORT: u16 = 7329;

/// How long either side waits for the other's handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first message of a connection, from tunneld.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The [`PROTOCOL_VERSION`] tunneld speaks.
    pub protocol: u32,
    /// Who is connecting, for the agent's log (e.g. `tunneld 0.1.0`).
    pub client: String,
    /// tunneld's challenge: random, hex, fresh for each connection.
    pub nonce: String,
}

/// The agent's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HelloReply {
    /// The agent proves it knows the session's secret, and challenges tunneld in turn.
    Challenge {
        /// The [`PROTOCOL_VERSION`] the agent speaks.
        protocol: u32,
        /// The agent's version, e.g. `kubedev-agent 0.1.0`.
        agent: String,
        /// The agent's challenge: random, hex, fresh for each connection.
        nonce: String,
        /// The agent's answer to tunneld's challenge (see [`handshake`]).
        proof: String,
    },
    /// The session is open: yamux follows.
    Welcome,
    /// The session is refused, and the connection ends.
    Refused {
        /// Why, for the user.
        reason: String,
    },
}

/// tunneld's answer to the agent's challenge, once the agent has proved itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// tunneld's answer (see [`handshake`]).
    pub proof: String,
}

/// What a new stream is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpenRequest {
    /// Connect to `host:port` from the pod (a name is resolved with the pod's resolver).
    Tcp {
        /// A name or an address.
        host: String,
        /// The destination port.
        port: u16,
        /// Striped: the connection's bytes go in [`stripe`] chunks, on this stream and on
        /// the streams that [`OpenRequest::Join`] it on other links. The id is the
        /// workstation's, random, at most [`MAX_STRIPE_ID`] bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stripe: Option<String>,
    },
    /// Another stream for the striped flow `stripe` (a TCP connection either way, or
    /// files), opened by tunneld on another link to the same agent; answered `Connected`,
    /// then it carries the flow's chunks too.
    Join {
        /// The flow's id, as in its `Tcp`, `Incoming` or `Files` request.
        stripe: String,
    },
    /// Exchange datagrams with `host:port` from the pod.
    Udp {
        /// A name or an address.
        host: String,
        /// The destination port.
        port: u16,
    },
    /// Resolve a name as a program in the pod would (search path, /etc/hosts).
    Resolve {
        /// The name, as a program would give it (`web`, `web.shop.svc`).
        name: String,
    },
    /// Prove the session is alive end to end; answered with [`OpenReply::Pong`].
    Ping,
    /// The app container's environment, as the kubelet resolved it for the agent;
    /// answered with [`OpenReply::Environment`].
    Environment,
    /// From the agent: a connection arrived for the app container's `port`; the
    /// workstation answers `Connected` once its local server accepted it. A UDP one
    /// carries the datagrams of one peer, framed as [`codec::write_datagram`] does.
    /// (`inbound` on the wire, as protocol version 3 named it.)
    #[serde(rename = "inbound")]
    Incoming {
        /// The app container's port the connection was for.
        port: u16,
        /// TCP (a connection) or UDP (one peer's datagrams).
        #[serde(default, skip_serializing_if = "Transport::is_tcp")]
        transport: Transport,
        /// Striped (a TCP connection handed over whole): its bytes go in [`stripe`]
        /// chunks, on this stream and on the streams tunneld opens on its other links to
        /// [`OpenRequest::Join`] it. The id is the agent's, random, at most
        /// [`MAX_STRIPE_ID`] bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stripe: Option<String>,
    },
    /// An SFTP session on the app container's volumes (under [`VOLUMES_ROOT`]), read-only
    /// for ingest; answered with `Connected`, then SFTP packets follow in [`stripe`] chunks,
    /// on this stream and on those that [`OpenRequest::Join`] it.
    Files {
        /// The session's id, random, at most [`MAX_STRIPE_ID`] bytes.
        stripe: String,
    },
    /// This session takes connections (or, with a filter, HTTP requests) for the app
    /// container's `port` for as long as it lasts; answered with `Connected`.
    Claim {
        /// The app container's port.
        port: u16,
        /// Only the HTTP requests this matches; every request without it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<HttpFilter>,
        /// A wiretap: the session gets a copy of each connection (with a filter, of each
        /// matching HTTP request) and the app still answers. The id names the session the
        /// same way on each of its links, so each copy is sent once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wiretap: Option<String>,
    },
    /// How many copies the agent sent to wiretap `session`, and how many it dropped;
    /// answered with [`OpenReply::WiretapCounts`].
    WiretapCounts {
        /// The wiretap's id, as in its `Claim`.
        session: String,
    },
}

/// The HTTP requests a workstation takes: every header given has the given value (names
/// are case-insensitive) and the path starts with the prefix. Other requests on the same
/// connection go on to the app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFilter {
    /// (name, value): each must be present with that value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The request path must start with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
}

/// The answer to an [`OpenRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpenReply {
    /// The flow is open; its data follows on the stream.
    Connected,
    /// The addresses a [`OpenRequest::Resolve`] found; the stream ends here.
    Resolved {
        /// Every address the name has, without repeats.
        addresses: Vec<IpAddr>,
    },
    /// Nothing was opened, and why (connection refused, no such host, ...).
    Failed {
        /// Why, in words for the user.
        reason: String,
    },
    /// The answer to [`OpenRequest::Ping`].
    Pong,
    /// The answer to [`OpenRequest::Environment`].
    Environment {
        /// The variables, by name.
        variables: BTreeMap<String, String>,
    },
    /// The answer to [`OpenRequest::WiretapCounts`].
    WiretapCounts(WiretapCounts),
}

/// What became of a wiretap's copies in one agent. A copy is one connection's client bytes
/// or one HTTP request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WiretapCounts {
    /// Copies delivered whole to the workstation.
    pub copied: u64,
    /// Copies given up: the workstation was gone, refused, or fell behind the real
    /// traffic (a copy never slows the request it copies).
    pub dropped: u64,
}

impl std::ops::AddAssign for WiretapCounts {
    fn add_assign(&mut self, other: Self) {
        self.copied += other.copied;
        self.dropped += other.dropped;
    }
}

/// The agent's environment variable holding its [`AgentConfig`] (JSON).
pub const AGENT_CONFIG_ENV: &str = "KUBEDEV_AGENT_CONFIG";
/// The agent's environment variable holding the session token.
pub const AGENT_TOKEN_ENV: &str = "KUBEDEV_AGENT_TOKEN";
/// The agent's environment variable holding its pod's uid (from the downward API), which
/// its handshake proofs name.
pub const AGENT_POD_UID_ENV: &str = "KUBEDEV_AGENT_POD_UID";
/// The app container's variables appear in the agent's environment under this prefix, so
/// they never collide with the agent's own.
pub const APP_ENV_PREFIX: &str = "KUBEDEV_APP_";

/// Where the agent sees the app container's volumes: a volume the app mounts at /x/y is
/// at `VOLUMES_ROOT`/x/y.
pub const VOLUMES_ROOT: &str = "/kubedev/volumes";

/// The SFTP extension (advertised in the agent's `VERSION`) that lists a directory in one
/// round trip: an `SSH_FXP_EXTENDED` request whose data is the directory's path (an SFTP
/// string) is answered with an `SSH_FXP_EXTENDED_REPLY` whose data is a handle (an SFTP
/// string, empty when the listing is whole and the agent holds nothing open) followed by
/// the listing's `SSH_FXP_NAME` packets as a `READDIR` would bring them (length-prefixed,
/// id 0). A non-empty handle is an open directory whose further entries `READDIR` brings;
/// it is closed as any handle is. A failure is a `STATUS`, as `OPENDIR`'s would be.
pub const LISTING_EXTENSION: &str = "listing@kubedev.io";

/// Appends `text` to `buffer` as an SFTP string: its length (big-endian), then UTF-8.
pub fn put_sftp_string(buffer: &mut Vec<u8>, text: &str) {
    buffer.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    buffer.extend_from_slice(text.as_bytes());
}

/// The SFTP string at the front of `data`, which is moved past it; none if `data` does not
/// start with a whole one in UTF-8.
pub fn take_sftp_string(data: &mut &[u8]) -> Option<String> {
    let (length, rest) = data.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    let text = String::from_utf8(rest.get(..length)?.to_vec()).ok()?;
    *data = &rest[length..];
    Some(text)
}

/// Where the agent finds the certificate (`tls.crt`) and key (`tls.key`) of an app that
/// terminates TLS itself: the Secret `--tls-secret` names, mounted.
pub const TLS_DIR: &str = "/kubedev/tls";

/// What the plugins tell an agent about its job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Ports the agent listens on in the pod, for connections bound for the workstation.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// The volumes are served read-only (ingest), whatever the client asks.
    #[serde(default)]
    pub read_only_volumes: bool,
}

/// The transport of a port the agent takes over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A TCP port: connections.
    #[default]
    Tcp,
    /// A UDP port: datagrams, one flow per peer.
    Udp,
}

impl Transport {
    /// Whether this is TCP (the default, left out of the JSON form).
    pub fn is_tcp(&self) -> bool {
        *self == Self::Tcp
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// One port the agent took over from the app container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// Where the agent listens, on every address of the pod.
    pub port: u16,
    /// The app container's port this stands for: the workstation is told this one.
    pub app_port: u16,
    /// Whether the app container still runs (intercept): connections no workstation takes
    /// go to it, on localhost. Otherwise (replace) they are refused.
    pub app_running: bool,
    /// TCP or UDP.
    #[serde(default, skip_serializing_if = "Transport::is_tcp")]
    pub transport: Transport,
    /// The app terminates TLS on this port itself: on a filtered port the agent does too,
    /// with the app's certificate and key from [`TLS_DIR`], to read the requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// How often tunneld checks that a session is alive; port-forwards through proxies and
/// load balancers are cut when idle, and a dead peer is found within one interval.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sftp_strings_are_taken_whole_or_not_at_all() {
        let mut buffer = Vec::new();
        put_sftp_string(&mut buffer, "ab");
        buffer.push(b'c');
        let mut data = buffer.as_slice();
        assert_eq!(take_sftp_string(&mut data).as_deref(), Some("ab"));
        assert_eq!(data, b"c");
        assert_eq!(take_sftp_string(&mut &b"\0\0\0\x05ab"[..]), None);
        assert_eq!(take_sftp_string(&mut &b"\0\0"[..]), None);
        assert_eq!(take_sftp_string(&mut &b"\0\0\0\x02\xff\xfe"[..]), None);
    }

    #[test]
    fn messages_have_a_stable_json_form() {
        let open = OpenRequest::Tcp {
            host: "echo.shop".into(),
            port: 80,
            stripe: None,
        };
        assert_eq!(
            serde_json::to_string(&open).expect("json"),
            r#"{"kind":"tcp","host":"echo.shop","port":80}"#
        );
        let join = OpenRequest::Join {
            stripe: "5f3a".into(),
        };
        assert_eq!(
            serde_json::to_string(&join).expect("json"),
            r#"{"kind":"join","stripe":"5f3a"}"#
        );
        let reply = OpenReply::Resolved {
            addresses: vec!["10.96.0.10".parse().expect("ip")],
        };
        assert_eq!(
            serde_json::to_string(&reply).expect("json"),
            r#"{"result":"resolved","addresses":["10.96.0.10"]}"#
        );
        let inbound = OpenRequest::Incoming {
            port: 8080,
            transport: Transport::Tcp,
            stripe: Some("f00d".into()),
        };
        assert_eq!(
            serde_json::to_string(&inbound).expect("json"),
            r#"{"kind":"inbound","port":8080,"stripe":"f00d"}"#
        );
        let datagrams = OpenRequest::Incoming {
            port: 53,
            transport: Transport::Udp,
            stripe: None,
        };
        assert_eq!(
            serde_json::to_string(&datagrams).expect("json"),
            r#"{"kind":"inbound","port":53,"transport":"udp"}"#
        );
        let refused: HelloReply =
            serde_json::from_str(r#"{"result":"refused","reason":"bad token"}"#).expect("json");
        assert_eq!(
            refused,
            HelloReply::Refused {
                reason: "bad token".into()
            }
        );
    }

    #[test]
    fn random_ids_are_fresh_and_fit_a_stripe_id() {
        let (one, other) = (random_id().expect("an id"), random_id().expect("another"));
        assert_ne!(one, other);
        assert_eq!(one.len(), 32);
        assert!(one.len() <= MAX_STRIPE_ID);
        assert!(one.bytes().all(|byte| byte.is_ascii_hexdigit()));
    }
}
