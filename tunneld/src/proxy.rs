//! tunneld's proxy: one port on 127.0.0.1 that speaks SOCKS5 ([`socks`]) and HTTP
//! ([`http`]), told apart by the first byte a client sends, into the cluster's network
//! with its names, without root, for every tool and platform. Where each flow leaves
//! from is [`Outbound`]'s to decide, as for the TUN device.
//!
//! A loopback port is open to every user of the machine, and the proxy carries this
//! user's access to the cluster: it takes only the user name `kubedev` with a secret of
//! this tunneld's own, which only the user learns (from `status`, on tunneld's control
//! socket, and in `-- CMD`'s environment).

mod http;
mod socks;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kubedev::control::{PROXY_USER, ProxyStatus};
use kubedev_protocol::splice::splice;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::outbound::{Host, Outbound, OutboundTcp};

/// How long a client may take to say where it goes.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

/// The proxy, listening.
#[derive(Debug)]
pub(crate) struct Proxy {
    listener: TcpListener,
    credentials: Credentials,
    outbound: Arc<Outbound>,
    status: ProxyStatus,
}

impl Proxy {
    /// Listens on 127.0.0.1:`port` (0: a port the kernel picks), with a new secret.
    pub(crate) async fn bind(port: u16, outbound: Arc<Outbound>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .with_context(|| format!("the proxy cannot listen on 127.0.0.1:{port}"))?;
        let address = listener.local_addr()?;
        let secret = kubedev::session::random_id()?;
        Ok(Self {
            listener,
            status: ProxyStatus::new(address, &secret),
            credentials: Credentials {
                secret: secret.into(),
            },
            outbound,
        })
    }

    /// Where it listens and how to use it.
    pub(crate) fn status(&self) -> &ProxyStatus {
        &self.status
    }

    /// Serves every client until the process ends.
    pub(crate) async fn serve(self) {
        tracing::info!("proxy (SOCKS5 and HTTP) on {}", self.status.address);
        loop {
            match self.listener.accept().await {
                Ok((client, _)) => {
                    let credentials = self.credentials.clone();
                    tokio::spawn(serve_client(client, credentials, self.outbound.clone()));
                }
                Err(err) => {
                    // Out of file descriptors, say: the clients already served go on.
                    tracing::warn!("the proxy could not accept a client: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The one user name and password the proxy takes.
#[derive(Clone)]
struct Credentials {
    secret: Arc<str>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    /// Whether `username` and `password` are the proxy's, compared in a time that does not
    /// tell how much of a guess was right.
    fn accept(&self, username: &[u8], password: &[u8]) -> bool {
        same_bytes(username, PROXY_USER.as_bytes()) & same_bytes(password, self.secret.as_bytes())
    }
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |differ, (x, y)| differ | (x ^ y)) == 0
}

async fn serve_client(client: TcpStream, credentials: Credentials, outbound: Arc<Outbound>) {
    let _ = client.set_nodelay(true);
    let mut first = [0u8; 1];
    // Bounded: any local user can connect, and a client that says nothing holds a file.
    let peeked = tokio::time::timeout(HANDSHAKE_LIMIT, client.peek(&mut first)).await;
    match peeked.unwrap_or(Ok(0)) {
        Ok(1) if first[0] == socks::VERSION => socks::serve(client, &credentials, &outbound).await,
        Ok(1) => http::serve(client, credentials, outbound).await,
        _ => {}
    }
}

/// Carries a client's connection to `target` both ways until both sides are done.
async fn relay<C>(client: &mut C, mut remote: OutboundTcp, target: &Target)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match splice(client, &mut remote).await {
        Ok((sent, received)) => {
            tracing::debug!("proxy to {target}: done, {sent} bytes out, {received} in");
        }
        Err(err) => tracing::debug!("proxy to {target}: {err}"),
    }
}

/// Where a client asked to go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: Host,
    port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Address(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests;
