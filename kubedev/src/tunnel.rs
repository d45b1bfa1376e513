//! Reaching an agent the only way it can be reached: the Kubernetes API's port-forward to
//! its loopback port, which needs nothing but `pods/portforward` in the pod's namespace.
//!
//! The websocket speaks `v4.channel.k8s.io`: every binary message starts with a channel
//! byte (0 carries the port's data, 1 its errors) and the first message on each channel
//! is the port number. kube's own `Portforwarder` moves 4 KiB at a time through a one-slot
//! channel, which caps a tunnel at a fraction of what the API server can carry, so the
//! framing is done here with large messages.

use futures::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::core::Request;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};

use kubedev_protocol::AGENT_PORT;
use kubedev_protocol::handshake::HandshakeError;
use kubedev_protocol::link::{AgentLink, LinkError};
use kubedev_protocol::mux::MuxStream;

/// The largest websocket message sent: big enough to keep per-message costs low, small
/// enough not to hold back the other direction.
const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes buffered between the websocket and the multiplexer, each way.
const BRIDGE_BUFFER: usize = 512 * 1024;

const DATA_CHANNEL: u8 = 0;
const ERROR_CHANNEL: u8 = 1;

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
    let stream = match open_port_forward(&client, namespace, pod, AGENT_PORT).await {
        Ok(stream) => stream,
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

/// Connects to `port` on the pod's loopback; the returned stream carries its bytes. A task
/// moves them to and from the websocket until either side ends.
async fn open_port_forward(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
) -> Result<DuplexStream, kube::Error> {
    let request = Request::new(format!("/api/v1/namespaces/{namespace}/pods"))
        .portforward(pod, &[port])
        .map_err(kube::Error::BuildRequest)?;
    let websocket = client.connect(request).await?.into_stream();
    let (ours, bridged) = tokio::io::duplex(BRIDGE_BUFFER);
    tokio::spawn(async move {
        if let Err(err) = bridge(websocket, bridged, port).await {
            tracing::debug!("port-forward to {port}: {err}");
        }
    });
    Ok(ours)
}

/// Moves bytes between `io` and the websocket until either side ends.
async fn bridge<W>(websocket: W, io: DuplexStream, port: u16) -> Result<(), BridgeError>
where
    W: futures::Stream<Item = Result<Message, tungstenite::Error>>
        + futures::Sink<Message, Error = tungstenite::Error>
        + Unpin,
{
    let (mut ws_tx, mut ws_rx) = websocket.split();
    let (mut io_rx, mut io_tx) = tokio::io::split(io);
    let upstream = async {
        let mut message = vec![0u8; MAX_MESSAGE + 1];
        loop {
            message[0] = DATA_CHANNEL;
            let len = io_rx.read(&mut message[1..]).await?;
            if len == 0 {
                ws_tx.close().await?;
                return Ok::<_, BridgeError>(());
            }
            ws_tx
                .send(Message::binary(message[..=len].to_vec()))
                .await?;
        }
    };
    let downstream = async {
        let mut decoder = FrameDecoder::new(port);
        while let Some(message) = ws_rx.next().await {
            let data = match message? {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let bytes = decoder.decode(&data)?;
            if !bytes.is_empty() {
                io_tx.write_all(bytes).await?;
            }
        }
        io_tx.shutdown().await?;
        Ok::<_, BridgeError>(())
    };
    tokio::select! {
        done = upstream => done,
        done = downstream => done,
    }
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
    #[error("the API server reported: {0}")]
    Remote(String),
    #[error("port-forward message on unexpected channel {0}")]
    UnknownChannel(u8),
    #[error("port-forward answered for port {got}, not {expected}")]
    WrongPort { expected: u16, got: u16 },
    #[error("port-forward message too short")]
    Truncated,
}

/// Turns the websocket's messages for one port into its bytes.
#[derive(Debug)]
struct FrameDecoder {
    port: u16,
    data_started: bool,
    error_started: bool,
}

impl FrameDecoder {
    fn new(port: u16) -> Self {
        Self {
            port,
            data_started: false,
            error_started: false,
        }
    }

    /// The data bytes in `message` (empty for control messages), or what went wrong.
    fn decode<'m>(&mut self, message: &'m [u8]) -> Result<&'m [u8], PortForwardError> {
        let (&channel, body) = message.split_first().ok_or(PortForwardError::Truncated)?;
        let started = match channel {
            DATA_CHANNEL => &mut self.data_started,
            ERROR_CHANNEL => &mut self.error_started,
            other => return Err(PortForwardError::UnknownChannel(other)),
        };
        let body = if *started {
            body
        } else {
            // Each channel opens with the port number, little-endian.
            let (port, rest) = body
                .split_first_chunk::<2>()
                .ok_or(PortForwardError::Truncated)?;
            let got = u16::from_le_bytes(*port);
            if got != self.port {
                return Err(PortForwardError::WrongPort {
                    expected: self.port,
                    got,
                });
            }
            *started = true;
            rest
        };
        match channel {
            ERROR_CHANNEL if !body.is_empty() => Err(PortForwardError::Remote(
                String::from_utf8_lossy(body).trim().to_owned(),
            )),
            ERROR_CHANNEL => Ok(&[]),
            _ => Ok(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 7329;

    fn opening(channel: u8) -> Vec<u8> {
        let mut message = vec![channel];
        message.extend_from_slice(&PORT.to_le_bytes());
        message
    }

    #[test]
    fn data_follows_the_port_announcement() {
        let mut decoder = FrameDecoder::new(PORT);
        assert_eq!(decoder.decode(&opening(DATA_CHANNEL)), Ok(&b""[..]));
        assert_eq!(decoder.decode(&opening(ERROR_CHANNEL)), Ok(&b""[..]));
        assert_eq!(decoder.decode(b"\x00hello"), Ok(&b"hello"[..]));
        // Later messages carry only data, even when they start like a port number.
        assert_eq!(decoder.decode(b"\x00\xa1\x1cx"), Ok(&b"\xa1\x1cx"[..]));
    }

    #[test]
    fn data_may_come_in_the_opening_message() {
        let mut decoder = FrameDecoder::new(PORT);
        let mut message = opening(DATA_CHANNEL);
        message.extend_from_slice(b"early");
        assert_eq!(decoder.decode(&message), Ok(&b"early"[..]));
    }

    #[test]
    fn errors_from_the_api_server_are_reported() {
        let mut decoder = FrameDecoder::new(PORT);
        decoder.decode(&opening(ERROR_CHANNEL)).ok();
        let reported = decoder.decode(b"\x01error forwarding port 7329: connection refused\n");
        assert_eq!(
            reported,
            Err(PortForwardError::Remote(
                "error forwarding port 7329: connection refused".into()
            ))
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut decoder = FrameDecoder::new(PORT);
        assert_eq!(decoder.decode(b""), Err(PortForwardError::Truncated));
        assert_eq!(
            decoder.decode(b"\x00\x01"),
            Err(PortForwardError::Truncated)
        );
        assert_eq!(
            decoder.decode(b"\x00\x50\x00"),
            Err(PortForwardError::WrongPort {
                expected: PORT,
                got: 80
            })
        );
        assert_eq!(
            decoder.decode(b"\x04\x00"),
            Err(PortForwardError::UnknownChannel(4))
        );
    }
}
