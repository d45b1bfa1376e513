//! TCP connections for a port the agent took over.

use std::net::SocketAddr;
use std::sync::Arc;

use kubedev_protocol::splice::splice;
use kubedev_protocol::{Listener, Transport};
use tokio::net::TcpStream;

use super::{http, to_first_workstation};
use crate::workstations::Workstations;

/// Hands one connection to the first claimant that takes it, else to the app.
pub(super) async fn deliver(
    mut connection: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    workstations: Arc<Workstations>,
) {
    let _ = connection.set_nodelay(true);
    let mut claimants = workstations.claimants(listener.app_port);
    if claimants.iter().any(|c| c.filter.is_some()) {
        if !http::speaks_http2(&connection).await {
            return http::serve(connection, peer, listener, claimants).await;
        }
        // Requests are routed one by one over HTTP/1.1 only: an HTTP/2 connection goes
        // whole to whoever takes every request, else to the app.
        tracing::debug!("{peer}: HTTP/2 on a filtered port, not routed by request");
        claimants.retain(|c| c.filter.is_none());
    }
    if let Some(mut stream) =
        to_first_workstation(&claimants, listener.app_port, Transport::Tcp, &peer).await
    {
        tracing::debug!("{peer} -> port {}: to the workstation", listener.app_port);
        let _ = splice(&mut connection, &mut stream).await;
        return;
    }
    if !listener.app_running {
        return tracing::debug!(
            "{peer} -> port {}: no workstation, closed",
            listener.app_port
        );
    }
    match TcpStream::connect(("127.0.0.1", listener.app_port)).await {
        Ok(mut app) => {
            let _ = app.set_nodelay(true);
            let _ = splice(&mut connection, &mut app).await;
        }
        Err(err) => tracing::warn!("{peer} -> the app's port {}: {err}", listener.app_port),
    }
}
