//! The ports the agent took over from the app container: every connection goes to a
//! workstation that claimed the port (a stream the agent opens toward it), or, when none
//! takes it, to the app container on localhost (intercept) or nowhere (replace: the app is
//! gone). When a workstation claimed only some HTTP requests, [`http_route`] decides
//! request by request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubedev::protocol::codec::{read_message, write_message};
use kubedev::protocol::splice::splice;
use kubedev::protocol::{HANDSHAKE_TIMEOUT, Listener, OpenReply, OpenRequest, Transport};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::datagrams;
use crate::http_route;
use crate::serve::Sessions;

/// Listens on every port in `listeners` until the process ends.
pub(crate) async fn serve(
    listeners: Vec<Listener>,
    sessions: Arc<Sessions>,
    udp_idle: Duration,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let address = SocketAddr::from(([0, 0, 0, 0], listener.port));
        if listener.transport == Transport::Udp {
            let socket = UdpSocket::bind(address).await?;
            tracing::info!(
                "taking datagrams for the app's UDP port {}",
                listener.app_port
            );
            let sessions = sessions.clone();
            tasks.spawn(async move {
                if let Err(err) = datagrams::serve(socket, listener, sessions, udp_idle).await {
                    tracing::warn!("udp listener: {err}");
                }
            });
            continue;
        }
        let socket = TcpListener::bind(address).await?;
        tracing::info!(
            "taking connections for the app's port {} on port {}",
            listener.app_port,
            listener.port
        );
        let sessions = sessions.clone();
        tasks.spawn(async move {
            loop {
                match socket.accept().await {
                    Ok((connection, peer)) => {
                        tokio::spawn(deliver(
                            connection,
                            peer,
                            listener.clone(),
                            sessions.clone(),
                        ));
                    }
                    Err(err) => tracing::warn!("accepting on port {}: {err}", listener.port),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn deliver(
    mut connection: TcpStream,
    peer: SocketAddr,
    listener: Listener,
    sessions: Arc<Sessions>,
) {
    let _ = connection.set_nodelay(true);
    let mut claimants = sessions.claimants(listener.app_port);
    if claimants.iter().any(|c| c.filter.is_some()) {
        if !http_route::speaks_http2(&connection).await {
            return http_route::serve(connection, peer, listener, claimants).await;
        }
        // Requests are routed one by one over HTTP/1.1 only: an HTTP/2 connection goes
        // whole to whoever takes every request, else to the app.
        tracing::debug!("{peer}: HTTP/2 on a filtered port, not routed by request");
        claimants.retain(|c| c.filter.is_none());
    }
    for claimant in &claimants {
        match to_workstation(&claimant.handle, listener.app_port, Transport::Tcp).await {
            Ok(mut stream) => {
                tracing::debug!("{peer} -> port {}: to the workstation", listener.app_port);
                let _ = splice(&mut connection, &mut stream).await;
                return;
            }
            Err(reason) => tracing::debug!("{peer} -> port {}: {reason}", listener.app_port),
        }
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

/// Opens a stream to the workstation of `session` for a connection to the app's `app_port`
/// (or, for UDP, one peer's datagrams).
pub(crate) async fn to_workstation(
    session: &kubedev::protocol::mux::MuxHandle,
    app_port: u16,
    transport: Transport,
) -> Result<kubedev::protocol::mux::MuxStream, String> {
    let mut stream = session.open().await.map_err(|err| err.to_string())?;
    let request = OpenRequest::Inbound {
        port: app_port,
        transport,
    };
    write_message(&mut stream, &request)
        .await
        .map_err(|err| err.to_string())?;
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut stream))
        .await
        .map_err(|_| "the workstation did not answer".to_owned())?
        .map_err(|err| err.to_string())?;
    match reply {
        OpenReply::Connected => Ok(stream),
        OpenReply::Failed { reason } => Err(format!("the workstation refused: {reason}")),
        other => Err(format!("unexpected answer from the workstation: {other:?}")),
    }
}
