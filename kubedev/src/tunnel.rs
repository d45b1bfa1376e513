//! Reaching an agent the only way it can be reached: the Kubernetes API's port-forward to
//! its loopback port, which needs nothing but `pods/portforward` in the pod's namespace.
//!
//! The websocket offers two protocols, and the API server picks: SPDY/3.1 tunnelled inside
//! the websocket (`SPDY/3.1+portforward.k8s.io`, as kubectl speaks it since 1.31), which
//! the API server unwraps and the container runtime reads as SPDY; and
//! `v4.channel.k8s.io`, which the API server passes on to the runtime's websocket reader
//! (slower toward the pod) where it does not tunnel SPDY. kube's own `Portforwarder`
//! moves 4 KiB at a time through a one-slot channel and speaks only the latter, so the
//! upgrade and the framing are done here, with large messages.

mod channels;
mod spdy;
mod spdy_bridge;
mod upgrade;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

use kubedev_protocol::AGENT_PORT;
use kubedev_protocol::handshake::HandshakeError;
use kubedev_protocol::link::{AgentLink, LinkError};
use kubedev_protocol::mux::MuxStream;

/// The largest websocket message sent: big enough to keep per-message costs low, small
/// enough not to hold back the other direction.
const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes buffered between the websocket and the multiplexer, each way.
const BRIDGE_BUFFER: usize = 512 * 1024;

/// Why no session with an agent came up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The pod could not be looked up.
    #[error("look up pod {pod}")]
    Pod {
        /// `NAMESPACE/POD`.
        pod: String,
        /// Why.
        source: kube::Error,
    },
    /// The API server did not open the port-forward.
    #[error("port-forward to pod {pod}")]
    PortForward {
        /// `NAMESPACE/POD`.
        pod: String,
        /// Why.
        source: kube::Error,
    },
    /// The agent did not open a session.
    #[error("session with the agent in pod {pod}")]
    Session {
        /// `NAMESPACE/POD`.
        pod: String,
        /// Why.
        source: LinkError,
    },
}

impl TunnelError {
    /// Whether what answered in the pod failed to prove it knows the session's secret: a
    /// pod wearing the session's labels that is not its agent.
    pub fn not_the_agent(&self) -> bool {
        matches!(
            self,
            Self::Session {
                source: LinkError::Handshake(HandshakeError::NotTheAgent),
                ..
            }
        )
    }
}

/// Opens a port-forward to the agent in `pod` and starts a session over it.
pub async fn link_through_port_forward(
    client: kube::Client,
    namespace: &str,
    pod: &str,
    token: &str,
) -> Result<(AgentLink, mpsc::Receiver<MuxStream>), TunnelError> {
    let described = format!("{namespace}/{pod}");
    // The handshake proves the agent is this pod's (a uid is never reused), which only
    // the pod's own agent can.
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod_uid = match pods.get(pod).await {
        Ok(found) => found.metadata.uid.unwrap_or_default(),
        Err(source) => {
            return Err(TunnelError::Pod {
                pod: described,
                source,
            });
        }
    };
    let stream = match open_port_forward(&client, namespace, pod, AGENT_PORT, &OFFERED).await {
        Ok(forward) => {
            tracing::debug!(
                "port-forward to {described}: {}",
                forward.protocol.subprotocol()
            );
            forward.stream
        }
        Err(source) => {
            return Err(TunnelError::PortForward {
                pod: described,
                source,
            });
        }
    };
    let client_name = concat!("kubedev ", env!("CARGO_PKG_VERSION"));
    AgentLink::connect(stream, token, client_name, &pod_uid)
        .await
        .map_err(|source| TunnelError::Session {
            pod: described,
            source,
        })
}

/// How a port-forward's bytes are framed in its websocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortForwardProtocol {
    /// `SPDY/3.1+portforward.k8s.io`: SPDY inside the websocket, unwrapped by the API
    /// server (Kubernetes 1.30 and later, with the `PortForwardWebsockets` gate, on by
    /// default from 1.31).
    SpdyInWebsocket,
    /// `v4.channel.k8s.io`: a channel byte on every message, passed to the runtime as is.
    Channels,
}

impl PortForwardProtocol {
    /// The websocket subprotocol that names it.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Self::SpdyInWebsocket => "SPDY/3.1+portforward.k8s.io",
            Self::Channels => "v4.channel.k8s.io",
        }
    }

    fn from_subprotocol(name: &str) -> Option<Self> {
        [Self::SpdyInWebsocket, Self::Channels]
            .into_iter()
            .find(|protocol| protocol.subprotocol() == name)
    }
}

/// What a link offers, best first: one upgrade either way, whichever the API server speaks.
pub const OFFERED: [PortForwardProtocol; 2] = [
    PortForwardProtocol::SpdyInWebsocket,
    PortForwardProtocol::Channels,
];

/// An open port-forward to one port of a pod.
#[derive(Debug)]
pub struct PortForward {
    /// The port's bytes.
    pub stream: DuplexStream,
    /// What the API server chose of the protocols offered.
    pub protocol: PortForwardProtocol,
}

/// Connects to `port` on the pod's loopback with one of the `offered` protocols; the
/// returned stream carries its bytes. A task moves them to and from the websocket until
/// either side ends.
pub async fn open_port_forward(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    offered: &[PortForwardProtocol],
) -> Result<PortForward, kube::Error> {
    let (websocket, protocol) =
        upgrade::port_forward(client, namespace, pod, port, offered).await?;
    let (ours, bridged) = tokio::io::duplex(BRIDGE_BUFFER);
    tokio::spawn(async move {
        let bridged = match protocol {
            PortForwardProtocol::SpdyInWebsocket => {
                spdy_bridge::bridge(websocket, bridged, port).await
            }
            PortForwardProtocol::Channels => channels::bridge(websocket, bridged, port).await,
        };
        if let Err(err) = bridged {
            tracing::debug!("port-forward to {port}: {err}");
        }
    });
    Ok(PortForward {
        stream: ours,
        protocol,
    })
}

/// The longest error report kept of what the runtime sends.
const MAX_ERROR_REPORT: usize = 4096;

/// The runtime's error report in `bytes` (its first [`MAX_ERROR_REPORT`] bytes), if it says
/// anything.
fn error_report(bytes: &[u8]) -> Option<PortForwardError> {
    let kept = &bytes[..bytes.len().min(MAX_ERROR_REPORT)];
    let text = printable(String::from_utf8_lossy(kept).trim(), MAX_ERROR_REPORT);
    (!text.is_empty()).then_some(PortForwardError::Remote(text))
}

/// `text` cut to `max` characters, control characters blanked: what a peer sent, fit for
/// a log line.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A port-forward's websocket, as the bridges move its messages.
trait Websocket:
    futures::Stream<Item = Result<tungstenite::Message, tungstenite::Error>>
    + futures::Sink<tungstenite::Message, Error = tungstenite::Error>
    + Unpin
{
}

impl<W> Websocket for W where
    W: futures::Stream<Item = Result<tungstenite::Message, tungstenite::Error>>
        + futures::Sink<tungstenite::Message, Error = tungstenite::Error>
        + Unpin
{
}

/// Why a port-forward's bytes stopped moving.
#[derive(Debug, thiserror::Error)]
enum BridgeError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Websocket(#[from] tungstenite::Error),
    #[error(transparent)]
    PortForward(#[from] PortForwardError),
}

/// What the API server sent that was not data.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum PortForwardError {
    #[error("the container runtime reported: {0}")]
    Remote(String),
    #[error("port-forward message on unexpected channel {0}")]
    UnknownChannel(u8),
    #[error("port-forward answered for port {got}, not {expected}")]
    WrongPort { expected: u16, got: u16 },
    #[error("port-forward message too short")]
    Truncated,
    #[error("port-forward stream {stream} reset (SPDY status {status})")]
    Reset { stream: u32, status: u32 },
    #[error("port-forward spoke SPDY version {0}, not 3")]
    SpdyVersion(u16),
}
