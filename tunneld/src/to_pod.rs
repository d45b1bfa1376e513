//! `--to-pod PORT[/udp]`: a port of this machine's localhost (127.0.0.1, and ::1 where the
//! machine has IPv6) forwarded, for as long as its session lasts, to the same port of a
//! pod's own localhost, where only containers of the pod can reach it (a sidecar's admin
//! port, a debug endpoint). Each connection (or UDP peer) goes through one of the
//! session's agents, which shares the pod's network.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubedev::control::{PodPort, SessionKey};
use kubedev_protocol::Transport;
use kubedev_protocol::mux::MuxStream;
use kubedev_protocol::splice::splice;
use kubedev_protocol::udp_flows::{IDLE_TIMEOUT, Peers, UdpFlows, serve_peers};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::agents::AgentPool;

/// Where the agent connects, in the pod's network namespace: the loopback addresses, in
/// turn for a connection (a server listening on IPv4 or on IPv6 alone takes it); IPv4's
/// for datagrams, which no refusal comes back for.
const LOOPBACKS: [&str; 2] = ["127.0.0.1", "::1"];

/// How long a connection waits for a link to one of the session's pods.
const LINK_WAIT: Duration = Duration::from_secs(10);

/// How long accepting waits after a failure (as the proxy does).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A `--to-pod` port, bound on localhost.
#[derive(Debug)]
pub(crate) enum Bound {
    Tcp(PodPort, TcpListener),
    Udp(PodPort, UdpSocket),
}

/// Binds every port on localhost, or fails naming the one that is taken.
pub(crate) async fn bind(ports: &[PodPort]) -> Result<Vec<Bound>, String> {
    let mut bound = Vec::new();
    for port in ports {
        for loopback in PodPort::LOCAL_ADDRESSES {
            let address = (loopback, port.port);
            let result = match port.transport {
                Transport::Tcp => TcpListener::bind(address)
                    .await
                    .map(|l| Bound::Tcp(*port, l)),
                Transport::Udp => UdpSocket::bind(address).await.map(|s| Bound::Udp(*port, s)),
            };
            match result {
                Ok(listening) => bound.push(listening),
                Err(err) if PodPort::no_such_address(loopback, &err) => {}
                Err(err) => {
                    return Err(format!(
                        "--to-pod {port}: cannot listen on {}: {err}",
                        SocketAddr::from(address)
                    ));
                }
            }
        }
    }
    Ok(bound)
}

/// Forwards every bound port to the pods of `session` until `stop` is cancelled.
pub(crate) fn serve(
    bound: Vec<Bound>,
    session: SessionKey,
    pool: Arc<AgentPool>,
    stop: &CancellationToken,
) {
    for bound in bound {
        let forwarding = forward(bound, session.clone(), pool.clone());
        tokio::spawn(stop.clone().run_until_cancelled_owned(forwarding));
    }
}

async fn forward(bound: Bound, session: SessionKey, pool: Arc<AgentPool>) {
    match bound {
        Bound::Tcp(port, listener) => loop {
            match listener.accept().await {
                Ok((connection, _)) => {
                    tokio::spawn(relay(connection, port.port, session.clone(), pool.clone()));
                }
                Err(err) => {
                    // Out of file descriptors, say: wait for some to close, not spin.
                    tracing::warn!("--to-pod {port}: accepting: {err}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        },
        Bound::Udp(port, socket) => {
            let flows = UdpFlows::default();
            let peers = PodPeers {
                port,
                session,
                pool,
            };
            let served = serve_peers(Arc::new(socket), flows, IDLE_TIMEOUT, peers);
            if let Err(err) = served.await {
                tracing::warn!("--to-pod {port}: {err}");
            }
        }
    }
}

/// The local peers of a `--to-pod` UDP port: every one is let in (they are this machine's
/// own programs, and the flows table caps them all), each flow carried by one of the
/// session's agents.
struct PodPeers {
    port: PodPort,
    session: SessionKey,
    pool: Arc<AgentPool>,
}

impl Peers for PodPeers {
    type Place = ();
    type Stream = MuxStream;

    fn admit(&self, _peer: SocketAddr) -> Option<()> {
        Some(())
    }

    fn open(&self, peer: SocketAddr) -> impl Future<Output = Option<MuxStream>> + Send + 'static {
        let (port, session, pool) = (self.port, self.session.clone(), self.pool.clone());
        async move {
            let link = pool.pick(Some(&session), LINK_WAIT).await?;
            link.open_udp(LOOPBACKS[0], port.port)
                .await
                .inspect_err(|err| tracing::warn!("--to-pod {port} for {peer}: {err}"))
                .ok()
        }
    }
}

/// Relays one local connection to `port` on the localhost of one of `session`'s pods.
async fn relay(mut connection: TcpStream, port: u16, session: SessionKey, pool: Arc<AgentPool>) {
    let _ = connection.set_nodelay(true);
    let Some(link) = pool.pick(Some(&session), LINK_WAIT).await else {
        return tracing::warn!("--to-pod {port}: no pod of session {session} is linked");
    };
    let mut refused = Vec::new();
    for loopback in LOOPBACKS {
        match link.open_tcp(loopback, port).await {
            Ok(mut stream) => {
                let _ = splice(&mut connection, &mut stream).await;
                return;
            }
            Err(err) => refused.push(err.to_string()),
        }
    }
    tracing::warn!("--to-pod {port}: {}", refused.join("; "));
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[tokio::test]
    async fn a_port_taken_here_is_named_and_the_other_transport_is_another_port() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = taken.local_addr().expect("address").port();
        let tcp = PodPort {
            port,
            transport: Transport::Tcp,
        };
        let err = bind(&[tcp]).await.expect_err("taken");
        assert!(err.starts_with(&format!(
            "--to-pod {port}: cannot listen on 127.0.0.1:{port}"
        )));
        let udp = PodPort {
            port,
            transport: Transport::Udp,
        };
        assert!(
            matches!(
                bind(&[udp]).await.as_deref(),
                Ok([Bound::Udp(..), Bound::Udp(..)])
            ),
            "on both loopbacks"
        );
    }
}
