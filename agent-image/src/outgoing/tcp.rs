//! TCP connections from the pod, for the workstation.

use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::splice::splice;
use kubedev_protocol::{HANDSHAKE_TIMEOUT, OpenReply};
use tokio::net::TcpStream;

use crate::reply::{answer, refuse};

/// Connects to `host:port` from the pod and carries the connection's bytes.
pub(crate) async fn relay(mut stream: MuxStream, host: &str, port: u16) -> std::io::Result<()> {
    let connect = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect((host, port)));
    let mut upstream = match connect.await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(err)) => {
            return refuse(&mut stream, format!("connect to {host}:{port}: {err}")).await;
        }
        Err(_) => {
            let reason = format!("connect to {host}:{port}: no answer in {HANDSHAKE_TIMEOUT:?}");
            return refuse(&mut stream, reason).await;
        }
    };
    upstream.set_nodelay(true)?;
    answer(&mut stream, &OpenReply::Connected).await?;
    splice(&mut stream, &mut upstream).await?;
    Ok(())
}
