//! Accepting sessions: one per port-forward connection, handshaken, then multiplexed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubedev::protocol::HttpFilter;
use kubedev::protocol::handshake::welcome_client;
use kubedev::protocol::mux::{self, Mode, MuxHandle};
use tokio::net::{TcpListener, TcpStream};

use crate::flows;

/// What every session shares.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) token: String,
    pub(crate) udp_idle: Duration,
    /// Ingest: the volumes are served read-only.
    pub(crate) read_only_volumes: bool,
}

/// The live sessions, newest first, with the ports each one claimed: intercepted
/// connections go to the sessions that claimed their port.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    next_id: AtomicU64,
    live: Mutex<Vec<Session>>,
}

#[derive(Debug, Clone)]
struct Session {
    id: u64,
    handle: MuxHandle,
    claims: Vec<(u16, Option<HttpFilter>)>,
}

/// A session that claimed a port, and which of its HTTP requests it takes.
#[derive(Debug, Clone)]
pub(crate) struct Claimant {
    pub(crate) handle: MuxHandle,
    pub(crate) filter: Option<HttpFilter>,
}

impl Sessions {
    fn add(&self, handle: MuxHandle) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Session {
            id,
            handle,
            claims: Vec::new(),
        };
        self.lock().insert(0, session);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|session| session.id != id);
    }

    /// Session `id` takes `port` (only the HTTP requests `filter` matches, if given).
    pub(crate) fn claim(&self, id: u64, port: u16, filter: Option<HttpFilter>) {
        if let Some(session) = self.lock().iter_mut().find(|s| s.id == id) {
            session.claims.retain(|(claimed, _)| *claimed != port);
            session.claims.push((port, filter));
        }
    }

    /// The sessions that claimed `port`, newest first.
    pub(crate) fn claimants(&self, port: u16) -> Vec<Claimant> {
        self.lock()
            .iter()
            .flat_map(|session| {
                session
                    .claims
                    .iter()
                    .filter(|(claimed, _)| *claimed == port)
                    .map(|(_, filter)| Claimant {
                        handle: session.handle.clone(),
                        filter: filter.clone(),
                    })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
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
        let claims = flows::ClaimsOf {
            sessions: sessions.clone(),
            id,
        };
        tokio::spawn(flows::serve_stream(stream, settings.clone(), claims));
    }
    sessions.remove(id);
    tracing::info!("session of {} ({peer}) closed", hello.client);
}
