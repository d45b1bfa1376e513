//! Connections for the app container's ports the agent took over: each goes to a
//! workstation that claimed the port (on a stream the agent opens toward it) or, when none
//! takes it, to the app container on localhost (intercept) or nowhere (replace: the app is
//! gone). TCP connections in [`tcp`], request by request where a workstation claimed only
//! some HTTP requests ([`route`] decides, [`http1`] and [`http2`] serve the client's HTTP
//! version; in TLS where the app terminates TLS itself, [`tls`]); UDP peers in [`udp`]. Wiretaps get copies of connections or requests
//! ([`wiretap`]). No client address may hold more than its share of connections and flows
//! ([`sources`]).

mod any_address;
pub(crate) mod http1;
mod http2;
pub(crate) mod route;
mod sources;
mod tcp;
mod tls;
mod udp;
mod wiretap;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kubedev_protocol::link::{LinkError, open_flow};
use kubedev_protocol::mux::{MuxHandle, MuxStream};
use kubedev_protocol::stripe::Striped;
use kubedev_protocol::udp_flows::UdpFlows;
use kubedev_protocol::{Listener, OpenRequest, Transport};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::stripes::{Registered, Stripes};
use crate::workstations::{Claimant, Workstations};
use sources::{CONNECTIONS_PER_SOURCE, Sources};
use tls::Tls;

/// Listens on every port in `listeners` until the process ends, taking no more connections
/// and flows at once from one client address, over all of them, than
/// [`CONNECTIONS_PER_SOURCE`]; TLS with the certificate and key in `tls_dir` where a
/// listener says so.
pub(crate) async fn serve(
    listeners: Vec<Listener>,
    workstations: Arc<Workstations>,
    udp_idle: Duration,
    tls_dir: &Path,
) -> anyhow::Result<()> {
    let sources = Arc::new(Sources::new(CONNECTIONS_PER_SOURCE));
    let tls = match listeners.iter().any(|listener| listener.tls) {
        true => Some(Arc::new(Tls::load(tls_dir).map_err(|err| {
            anyhow::anyhow!(
                "--tls-secret: the app's certificate and key, from the Secret mounted at \
                 {}: {err} (is the Secret in the pod's namespace, of type kubernetes.io/tls, \
                 with tls.crt and tls.key?)",
                tls_dir.display()
            )
        })?)),
        false => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        if listener.transport == Transport::Udp {
            let socket = any_address::udp_socket(listener.port)?;
            tracing::info!(
                "taking datagrams for the app's UDP port {}",
                listener.app_port
            );
            let (workstations, sources) = (workstations.clone(), sources.clone());
            let flows = UdpFlows::default();
            tasks.spawn(async move {
                let served = udp::serve(socket, listener, workstations, sources, flows, udp_idle);
                if let Err(err) = served.await {
                    tracing::warn!("udp listener: {err}");
                }
            });
            continue;
        }
        let socket = any_address::tcp_listener(listener.port)?;
        tracing::info!(
            "taking connections for the app's port {} on port {}",
            listener.app_port,
            listener.port
        );
        let tls = tls.clone().filter(|_| listener.tls);
        let taking = take_connections(socket, listener, tls, workstations.clone(), sources.clone());
        tasks.spawn(taking);
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Accepts connections on `socket` until the process ends, each delivered by
/// [`tcp::deliver`], but only those `sources` admits: more are closed as they come.
async fn take_connections(
    socket: TcpListener,
    listener: Listener,
    tls: Option<Arc<Tls>>,
    workstations: Arc<Workstations>,
    sources: Arc<Sources>,
) {
    loop {
        match socket.accept().await {
            Ok((connection, peer)) => {
                let peer = any_address::client_address(peer);
                let Some(admitted) = sources.admit(peer.ip()) else {
                    continue;
                };
                let (listener, workstations) = (listener.clone(), workstations.clone());
                let delivering =
                    tcp::deliver(connection, peer, listener, tls.clone(), workstations);
                tokio::spawn(async move {
                    delivering.await;
                    drop(admitted);
                });
            }
            Err(err) => {
                tracing::warn!("accepting on port {}: {err}", listener.port);
                tokio::time::sleep(crate::accept::ACCEPT_RETRY).await;
            }
        }
    }
}

/// How long the workstations have to accept a connection, in all, before it goes to the
/// app (or, with no app, is refused). Nothing of it has been relayed by then; a link that
/// died unnoticed (a laptop gone from the network, found dead only by the next keepalive)
/// must not hold requests until their clients give up, however many links claimed the
/// port. An accept takes one round trip to the workstation.
const WORKSTATION_ACCEPT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Opens a stream for a connection to the app's `app_port` (or, for UDP, one peer's
/// datagrams) with the first of `claimants` that accepts it in time; `what` names the
/// connection in the log.
pub(crate) async fn to_first_workstation(
    claimants: &[Claimant],
    app_port: u16,
    transport: Transport,
    what: &(dyn std::fmt::Display + Sync),
) -> Option<MuxStream> {
    let request = || {
        let stripe = None;
        Some((
            OpenRequest::Incoming {
                port: app_port,
                transport,
                stripe,
            },
            (),
        ))
    };
    let (stream, ()) = first_to_accept(claimants, app_port, what, request).await?;
    Some(stream)
}

/// As [`to_first_workstation`], for a TCP connection handed over whole: striped, so that
/// the links of the workstation that takes it may join it. Its place among `stripes` is
/// held while it lasts.
pub(crate) async fn to_first_workstation_striped<'a>(
    claimants: &[Claimant],
    app_port: u16,
    stripes: &'a Stripes,
    what: &(dyn std::fmt::Display + Sync),
) -> Option<(Striped<MuxStream>, Registered<'a>)> {
    // Each workstation asked is given an id of its own: one that refuses the connection
    // cannot join the flow another took.
    let request = || {
        let id = kubedev_protocol::random_id()?;
        let place = stripes.register(&id)?;
        let (port, transport, stripe) = (app_port, Transport::Tcp, Some(id));
        Some((
            OpenRequest::Incoming {
                port,
                transport,
                stripe,
            },
            place,
        ))
    };
    let (stream, (registered, joined_rx)) =
        first_to_accept(claimants, app_port, what, request).await?;
    Some((Striped::new(stream, joined_rx), registered))
}

/// Asks `claimants` in turn, each with a `request` of its own and what goes with it, until
/// one accepts within [`WORKSTATION_ACCEPT_TIMEOUT`] of the first ask.
async fn first_to_accept<T>(
    claimants: &[Claimant],
    app_port: u16,
    what: &(dyn std::fmt::Display + Sync),
    mut request: impl FnMut() -> Option<(OpenRequest, T)>,
) -> Option<(MuxStream, T)> {
    let deadline = Instant::now() + WORKSTATION_ACCEPT_TIMEOUT;
    for claimant in claimants {
        if Instant::now() >= deadline {
            tracing::debug!("{what} -> port {app_port}: no workstation accepted in time");
            break;
        }
        let Some((request, held)) = request() else {
            tracing::warn!("{what} -> port {app_port}: no id for a striped flow");
            break;
        };
        match to_workstation(&claimant.handle, &request, deadline).await {
            Ok(stream) => return Some((stream, held)),
            Err(reason) => tracing::debug!("{what} -> port {app_port}: {reason}"),
        }
    }
    None
}

/// Opens a stream toward the workstation on `handle` with `request`, if it accepts before
/// `deadline`.
async fn to_workstation(
    handle: &MuxHandle,
    request: &OpenRequest,
    deadline: Instant,
) -> Result<MuxStream, String> {
    match tokio::time::timeout_at(deadline, open_flow(handle, request)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(LinkError::Refused(reason))) => Err(format!("the workstation refused: {reason}")),
        Ok(Err(LinkError::Unexpected(reply))) => {
            Err(format!("unexpected answer from the workstation: {reply:?}"))
        }
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the workstation did not answer in time".to_owned()),
    }
}
