//! Connections the agents took over in the cluster, delivered to the workstation: each
//! arrives as a stream the agent opened, naming the app's port; it is connected to the
//! local address that port is forwarded to.

use std::sync::Arc;

use kubedev::control::Forward;
use kubedev::protocol::codec::{read_message, write_message};
use kubedev::protocol::mux::MuxStream;
use kubedev::protocol::{HANDSHAKE_TIMEOUT, OpenReply, OpenRequest};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const TCP_CHUNK: usize = 64 * 1024;

/// Serves every stream an agent opens, until its link ends.
pub(crate) async fn deliver_all(
    mut inbound_rx: mpsc::Receiver<MuxStream>,
    forwards: Arc<[Forward]>,
) {
    while let Some(stream) = inbound_rx.recv().await {
        tokio::spawn(deliver(stream, forwards.clone()));
    }
}

async fn deliver(mut stream: MuxStream, forwards: Arc<[Forward]>) {
    let port = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut stream)).await {
        Ok(Ok(OpenRequest::Inbound { port })) => port,
        Ok(Ok(other)) => return refuse(stream, format!("tunneld does not serve {other:?}")).await,
        Ok(Err(err)) => return tracing::debug!("inbound stream without a request: {err}"),
        Err(_) => return tracing::debug!("inbound stream without a request"),
    };
    let Some(forward) = forwards.iter().find(|f| f.app_port == port) else {
        return refuse(stream, format!("port {port} is not forwarded here")).await;
    };
    let target = (forward.local_host.as_str(), forward.local_port);
    let mut local = match TcpStream::connect(target).await {
        Ok(local) => local,
        Err(err) => {
            let reason = format!("connect to {}:{}: {err}", target.0, target.1);
            tracing::warn!("a connection for port {port} could not be delivered: {reason}");
            return refuse(stream, reason).await;
        }
    };
    let _ = local.set_nodelay(true);
    if write_message(&mut stream, &OpenReply::Connected)
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!("port {port} -> {}:{}", target.0, target.1);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut local, TCP_CHUNK, TCP_CHUNK)
        .await;
}

async fn refuse(mut stream: MuxStream, reason: String) {
    let _ = write_message(&mut stream, &OpenReply::Failed { reason }).await;
}
