//! Accepting sessions: one per port-forward connection, handshaken, then multiplexed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubedev::protocol::handshake::welcome_client;
use kubedev::protocol::mux::{self, Mode};
use tokio::net::{TcpListener, TcpStream};

use crate::flows;

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) token: String,
    pub(crate) udp_idle: Duration,
}

pub(crate) const AGENT_NAME: &str = concat!("kubedev-agent ", env!("CARGO_PKG_VERSION"));

pub(crate) async fn run(listen: SocketAddr, settings: Settings) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!("{AGENT_NAME} listening on {}", listener.local_addr()?);
    let settings = Arc::new(settings);
    loop {
        let (connection, peer) = listener.accept().await?;
        tokio::spawn(serve_session(connection, peer, settings.clone()));
    }
}

async fn serve_session(mut connection: TcpStream, peer: SocketAddr, settings: Arc<Settings>) {
    let _ = connection.set_nodelay(true);
    let hello = match welcome_client(&mut connection, &settings.token, AGENT_NAME).await {
        Ok(hello) => hello,
        Err(err) => {
            tracing::warn!("refused a session from {peer}: {err}");
            return;
        }
    };
    tracing::info!("session opened by {} ({peer})", hello.client);
    // The handle stays alive for the session: it is how the agent will open streams
    // toward the workstation.
    let (_session, mut inbound_rx) = mux::spawn(connection, Mode::Server);
    while let Some(stream) = inbound_rx.recv().await {
        tokio::spawn(flows::serve_stream(stream, settings.clone()));
    }
    tracing::info!("session of {} ({peer}) closed", hello.client);
}
