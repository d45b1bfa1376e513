//! TCP connections for a port the agent took over.

use std::net::SocketAddr;
use std::sync::Arc;

use kubedev_protocol::splice::splice;
use kubedev_protocol::{Listener, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::route::Route;
use super::wiretap::{ByteCopies, splice_copying};
use super::{http1, http2, to_first_workstation};
use crate::workstations::Workstations;

/// Hands one connection to the first claimant that takes it, else to the app; wiretaps
/// get copies of it (of its HTTP requests, where any claim has a filter).
pub(super) async fn deliver(
    connection: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    workstations: Arc<Workstations>,
) {
    let _ = connection.set_nodelay(true);
    let (claimants, wiretappers) = workstations.claims(listener.app_port);
    let filtered = claimants.iter().any(|c| c.filter.is_some())
        || wiretappers.iter().any(|w| w.filter.is_some());
    if filtered {
        let route = Route {
            listener,
            claimants,
            wiretappers,
        };
        return if http2::speaks_http2(&connection).await {
            http2::serve(connection, peer, route).await
        } else {
            http1::serve(connection, peer, route).await
        };
    }
    let copies = ByteCopies::start(wiretappers, listener.app_port, peer);
    if let Some(stream) =
        to_first_workstation(&claimants, listener.app_port, Transport::Tcp, &peer).await
    {
        tracing::debug!("{peer} -> port {}: to the workstation", listener.app_port);
        return relay(connection, stream, copies).await;
    }
    if !listener.app_running {
        return tracing::debug!(
            "{peer} -> port {}: no workstation, closed",
            listener.app_port
        );
    }
    match TcpStream::connect(("127.0.0.1", listener.app_port)).await {
        Ok(app) => {
            let _ = app.set_nodelay(true);
            relay(connection, app, copies).await;
        }
        Err(err) => tracing::warn!("{peer} -> the app's port {}: {err}", listener.app_port),
    }
}

/// Relays `connection` to `upstream`, through the copying relay only where someone
/// wiretaps.
async fn relay<U>(mut connection: TcpStream, mut upstream: U, copies: ByteCopies)
where
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    if copies.is_empty() {
        let _ = splice(&mut connection, &mut upstream).await;
    } else {
        splice_copying(connection, upstream, copies).await;
    }
}
