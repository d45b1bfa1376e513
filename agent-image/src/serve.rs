//! Accepting sessions: one per port-forward connection, handshaken, then multiplexed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubedev::protocol::handshake::welcome_client;
use kubedev::protocol::mux::{self, Mode, MuxHandle};
use tokio::net::{TcpListener, TcpStream};

use crate::flows;

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) token: String,
    pub(crate) udp_idle: Duration,
}

/// The live sessions, newest first: intercepted connections go to one of them.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next_id: AtomicU64,
    live: Mutex<Vec<(u64, MuxHandle)>>,
}

impl Sessions {
    fn add(&self, handle: MuxHandle) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(0, (id, handle));
        id
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(live, _)| *live != id);
    }

    pub(crate) fn live(&self) -> Vec<MuxHandle> {
        self.lock()
            .iter()
            .map(|(_, handle)| handle.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, MuxHandle)>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) const AGENT_NAME: &str = concat!("kubedev-agent ", env!("CARGO_PKG_VERSION"));

pub(crate) async fn run(
    listen: SocketAddr,
    settings: Settings,
    sessions: Arc<Sessions>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!("{AGENT_NAME} listening on {}", listener.local_addr()?);
    let settings = Arc::new(settings);
    loop {
        let (connection, peer) = listener.accept().await?;
        tokio::spawn(serve_session(
            connection,
            peer,
            settings.clone(),
            sessions.clone(),
        ));
    }
}

async fn serve_session(
    mut connection: TcpStream,
    peer: SocketAddr,
    settings: Arc<Settings>,
    sessions: Arc<Sessions>,
) {
    let _ = connection.set_nodelay(true);
    let hello = match welcome_client(&mut connection, &settings.token, AGENT_NAME).await {
        Ok(hello) => hello,
        Err(err) => {
            tracing::warn!("refused a session from {peer}: {err}");
            return;
        }
    };
    tracing::info!("session opened by {} ({peer})", hello.client);
    // The handle is how intercepted connections reach this session's workstation.
    let (session, mut inbound_rx) = mux::spawn(connection, Mode::Server);
    let id = sessions.add(session);
    while let Some(stream) = inbound_rx.recv().await {
        tokio::spawn(flows::serve_stream(stream, settings.clone()));
    }
    sessions.remove(id);
    tracing::info!("session of {} ({peer}) closed", hello.client);
}
