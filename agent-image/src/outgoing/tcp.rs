//! TCP connections from the pod, for the workstation; a striped one's bytes come and go in
//! chunks over a stream on each link that joins it ([`crate::stripes`]).

use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::splice::splice;
use kubedev_protocol::stripe::Striped;
use kubedev_protocol::{HANDSHAKE_TIMEOUT, OpenReply};
use tokio::net::TcpStream;

use crate::reply::{answer, refuse};
use crate::stripes::{self, Stripes};

/// Connects to `host:port` from the pod and carries the connection's bytes: as they are,
/// or in chunks for the striped flow `stripe`.
pub(crate) async fn relay(
    mut stream: MuxStream,
    host: &str,
    port: u16,
    stripe: Option<(&str, &Stripes)>,
) -> std::io::Result<()> {
    let mut registered = None;
    if let Some((id, stripes)) = stripe {
        let Some(place) = stripes.register(id) else {
            return refuse(&mut stream, stripes::TAKEN.to_owned()).await;
        };
        registered = Some(place);
    }
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
    match registered {
        None => splice(&mut stream, &mut upstream).await?,
        Some((_registered, joined_rx)) => {
            splice(&mut Striped::new(stream, joined_rx), &mut upstream).await?
        }
    };
    Ok(())
}
