//! The client side of a session: [`AgentLink`], one handshaken, multiplexed session with one
//! agent over any byte stream (a port-forward in production, a loopback TCP connection in
//! component tests), and [`open_flow`], which the agent uses for the flows it starts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecError, read_message, write_message};
use crate::handshake::{HandshakeError, greet_agent};
use crate::meter::{LinkMeter, Metered};
use crate::mux::{self, Mode, MuxError, MuxHandle, MuxStream};
use crate::stripe::Member;
use crate::{HttpFilter, OpenReply, OpenRequest, WiretapCounts};

/// Why a session or a flow with an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The session did not open.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The session ended.
    #[error("the session with the agent is closed")]
    Closed,
    /// This end has as many flows open on the session as it may; the session and its
    /// flows carry on.
    #[error("{0} flows are open on the session: no more until some end")]
    Full(usize),
    /// The other end refused the flow, and said why.
    #[error("from the pod: {0}")]
    Refused(String),
    /// The other end answered something that does not fit the request.
    #[error("unexpected answer from the agent: {0:?}")]
    Unexpected(OpenReply),
    /// The stream failed, or carried something unreadable.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A live session with one agent. Cloning shares the session.
#[derive(Debug, Clone)]
pub struct AgentLink {
    mux: MuxHandle,
    agent: String,
    meter: Arc<LinkMeter>,
    /// Cancelled when the link is to go: the striped flows on it leave it. A fresh one
    /// once it is wanted again.
    retiring: Arc<Mutex<CancellationToken>>,
}

impl AgentLink {
    /// Handshakes over `io` with the agent in pod `pod_uid` and starts the multiplexer. Streams the agent opens toward
    /// the workstation (intercepted connections) arrive on the returned receiver, which
    /// closes when the session ends.
    pub async fn connect<S>(
        mut io: S,
        token: &str,
        client: &str,
        pod_uid: &str,
    ) -> Result<(Self, mpsc::Receiver<MuxStream>), LinkError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let agent = greet_agent(&mut io, token, client, pod_uid).await?;
        let meter = Arc::new(LinkMeter::default());
        let (mux, inbound_rx) = mux::spawn(Metered::new(io, meter.clone()), Mode::Client);
        let retiring = Arc::default();
        let link = Self {
            mux,
            agent,
            meter,
            retiring,
        };
        Ok((link, inbound_rx))
    }

    /// The agent's name and version, as it announced itself.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// A TCP connection from the pod to `host:port`; the stream carries its bytes.
    pub async fn open_tcp(&self, host: &str, port: u16) -> Result<MuxStream, LinkError> {
        let request = OpenRequest::Tcp {
            host: host.to_owned(),
            port,
            stripe: None,
        };
        self.open_flow(&request).await
    }

    /// A TCP connection from the pod to `host:port` whose bytes go in chunks
    /// ([`crate::stripe`]) on the stream and on those that join `stripe` later.
    pub async fn open_striped_tcp(
        &self,
        host: &str,
        port: u16,
        stripe: &str,
    ) -> Result<MuxStream, LinkError> {
        let request = OpenRequest::Tcp {
            host: host.to_owned(),
            port,
            stripe: Some(stripe.to_owned()),
        };
        self.open_flow(&request).await
    }

    /// Another stream for the striped flow `stripe`, which another link to the same agent
    /// opened; it leaves the flow when this link retires.
    pub async fn join_stripe(&self, stripe: &str) -> Result<Member<MuxStream>, LinkError> {
        let request = OpenRequest::Join {
            stripe: stripe.to_owned(),
        };
        let stream = self.open_flow(&request).await?;
        let retiring = self.retiring().clone();
        Ok(Member::new(stream).leaving_on(retiring))
    }

    /// Asks every striped flow with a stream on this link to leave it, so that the link
    /// carries no flow once they have and can close without failing any.
    pub fn retire(&self) {
        self.retiring().cancel();
    }

    /// Takes a link that retired back into service (the streams told to leave it still do):
    /// flows may join it again.
    pub fn unretire(&self) {
        let mut retiring = self.retiring();
        if retiring.is_cancelled() {
            *retiring = CancellationToken::new();
        }
    }

    /// Whether the link is to go: no flow should join it.
    pub fn is_retiring(&self) -> bool {
        self.retiring().is_cancelled()
    }

    fn retiring(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        (self.retiring.lock()).unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A UDP flow from the pod to `host:port`; the stream carries framed datagrams
    /// ([`crate::codec::write_datagram`]).
    pub async fn open_udp(&self, host: &str, port: u16) -> Result<MuxStream, LinkError> {
        let request = OpenRequest::Udp {
            host: host.to_owned(),
            port,
        };
        self.open_flow(&request).await
    }

    /// Resolves `name` as a program in the pod would.
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, LinkError> {
        let request = OpenRequest::Resolve {
            name: name.to_owned(),
        };
        match self.request(&request).await?.1 {
            OpenReply::Resolved { addresses } => Ok(addresses),
            OpenReply::Failed { reason } => Err(LinkError::Refused(reason)),
            other => Err(LinkError::Unexpected(other)),
        }
    }

    /// Asks the agent to send this session the connections (or, with `filter`, the HTTP
    /// requests) for the app's `port`; with `wiretap` (the session's id), copies of them.
    pub async fn claim(
        &self,
        port: u16,
        filter: Option<HttpFilter>,
        wiretap: Option<String>,
    ) -> Result<(), LinkError> {
        self.open_flow(&OpenRequest::Claim {
            port,
            filter,
            wiretap,
        })
        .await
        .map(drop)
    }

    /// What became of wiretap `session`'s copies in this agent.
    pub async fn wiretap_counts(&self, session: &str) -> Result<WiretapCounts, LinkError> {
        let request = OpenRequest::WiretapCounts {
            session: session.to_owned(),
        };
        match self.request(&request).await?.1 {
            OpenReply::WiretapCounts(counts) => Ok(counts),
            OpenReply::Failed { reason } => Err(LinkError::Refused(reason)),
            other => Err(LinkError::Unexpected(other)),
        }
    }

    /// An SFTP session on the app container's volumes, in chunks ([`crate::stripe`]) on
    /// the stream and on those that join `stripe` later.
    pub async fn open_files(&self, stripe: &str) -> Result<MuxStream, LinkError> {
        let request = OpenRequest::Files {
            stripe: stripe.to_owned(),
        };
        self.open_flow(&request).await
    }

    /// The app container's environment, as the agent got it from the kubelet.
    pub async fn environment(&self) -> Result<BTreeMap<String, String>, LinkError> {
        match self.request(&OpenRequest::Environment).await?.1 {
            OpenReply::Environment { variables } => Ok(variables),
            OpenReply::Failed { reason } => Err(LinkError::Refused(reason)),
            other => Err(LinkError::Unexpected(other)),
        }
    }

    /// Checks that the agent answers through the session, within `limit`; the time it took
    /// goes to the link's [`LinkMeter`].
    pub async fn ping(&self, limit: std::time::Duration) -> Result<(), LinkError> {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(limit, self.request(&OpenRequest::Ping)).await {
            Ok(Ok((_, OpenReply::Pong))) => {
                self.meter.round_trip(started.elapsed());
                Ok(())
            }
            Ok(Ok((_, other))) => Err(LinkError::Unexpected(other)),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(LinkError::Closed),
        }
    }

    /// What the link has carried, and its fastest round trip.
    pub fn meter(&self) -> &LinkMeter {
        &self.meter
    }

    /// Streams this end opened for flows that are still open.
    pub fn flows_open(&self) -> usize {
        self.mux.flows_open()
    }

    /// Whether `other` is a clone of this link (the same session with the same agent).
    pub fn same_session(&self, other: &AgentLink) -> bool {
        self.mux.same_connection(&other.mux)
    }

    /// Ends the session and every stream in it.
    pub fn close(&self) {
        self.mux.close();
    }

    /// True once the session has ended, by either side or the connection.
    pub fn is_closed(&self) -> bool {
        self.mux.is_closed()
    }

    /// Completes when the session ends.
    pub async fn closed(&self) {
        self.mux.closed().await;
    }

    async fn open_flow(&self, request: &OpenRequest) -> Result<MuxStream, LinkError> {
        open_flow(&self.mux, request).await
    }

    async fn request(&self, request: &OpenRequest) -> Result<(MuxStream, OpenReply), LinkError> {
        self::request(&self.mux, request).await
    }
}

/// Opens a stream on `mux` for `request`: the stream, once the other end answered
/// `Connected`. Both ends start their flows this way (the agent its inbound ones).
pub async fn open_flow(mux: &MuxHandle, request: &OpenRequest) -> Result<MuxStream, LinkError> {
    match self::request(mux, request).await? {
        (stream, OpenReply::Connected) => Ok(stream),
        (_, OpenReply::Failed { reason }) => Err(LinkError::Refused(reason)),
        (_, other) => Err(LinkError::Unexpected(other)),
    }
}

/// Opens a stream on `mux`, sends `request` and reads the answer.
async fn request(
    mux: &MuxHandle,
    request: &OpenRequest,
) -> Result<(MuxStream, OpenReply), LinkError> {
    // A flood of flows must not keep out what keeps the session alive.
    let opened = match request {
        OpenRequest::Ping
        | OpenRequest::Claim { .. }
        | OpenRequest::Environment
        | OpenRequest::WiretapCounts { .. } => mux.open_control().await,
        OpenRequest::Tcp { .. }
        | OpenRequest::Join { .. }
        | OpenRequest::Udp { .. }
        | OpenRequest::Resolve { .. }
        | OpenRequest::Incoming { .. }
        | OpenRequest::Files { .. } => mux.open().await,
    };
    let mut stream = opened.map_err(|err| match err {
        MuxError::Closed => LinkError::Closed,
        MuxError::Full(cap) => LinkError::Full(cap),
    })?;
    write_message(&mut stream, request).await?;
    let reply = read_message(&mut stream).await?;
    Ok((stream, reply))
}
