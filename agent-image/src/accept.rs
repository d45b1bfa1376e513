//! Accepting workstations: one port-forward connection each, handshaken, then
//! multiplexed; every stream a workstation opens is served by what it asks for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubedev_protocol::codec::read_message;
use kubedev_protocol::handshake::welcome_client;
use kubedev_protocol::mux::{self, Mode, MuxStream};
use kubedev_protocol::{HANDSHAKE_TIMEOUT, OpenReply, OpenRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::outgoing;
use crate::reply::{answer, refuse};
use crate::workstations::{WorkstationId, Workstations};
use crate::{env, files};

/// What every workstation's connection shares.
#[derive(Debug)]
pub struct Settings {
    /// The session token a workstation must prove it knows.
    pub token: String,
    /// This pod's uid, which the handshake's proofs name.
    pub pod_uid: String,
    /// How long a UDP flow may stay idle before it is closed.
    pub udp_idle: Duration,
    /// Where the app container's volumes are ([`kubedev_protocol::VOLUMES_ROOT`] in the
    /// pods).
    pub volumes_root: std::path::PathBuf,
    /// Ingest: the volumes are served read-only.
    pub read_only_volumes: bool,
    /// Where the certificate and key of an app that terminates TLS itself are
    /// ([`kubedev_protocol::TLS_DIR`] in the pods).
    pub tls_dir: std::path::PathBuf,
}

/// How the agent names itself to workstations and in its log.
const AGENT_NAME: &str = concat!("kubedev-agent ", env!("CARGO_PKG_VERSION"));

/// Accepts workstations on `listen` until the process ends.
pub(crate) async fn run(
    listen: SocketAddr,
    settings: Settings,
    workstations: Arc<Workstations>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!("{AGENT_NAME} listening on {}", listener.local_addr()?);
    let settings = Arc::new(settings);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
    loop {
        let (connection, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, say: the sessions go on, and so does accepting
                // once files are free.
                tracing::warn!("could not accept a workstation: {err}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // A connection that has proved nothing waits for a turn, and holds it at most the
        // handshake's timeout: anyone who may port-forward cannot make the agent hold more.
        let Ok(turn) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!("refused {peer}: {HANDSHAKES_AT_ONCE} handshakes under way");
            continue;
        };
        tokio::spawn(serve_workstation(
            connection,
            peer,
            (settings.clone(), turn),
            workstations.clone(),
        ));
    }
}

/// How long accepting waits after a failure.
pub(crate) const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// The most connections in their handshake at once.
const HANDSHAKES_AT_ONCE: usize = 32;

async fn serve_workstation(
    mut connection: TcpStream,
    peer: SocketAddr,
    (settings, turn): (Arc<Settings>, OwnedSemaphorePermit),
    workstations: Arc<Workstations>,
) {
    let _ = connection.set_nodelay(true);
    let hello = match welcome_client(
        &mut connection,
        &settings.token,
        AGENT_NAME,
        &settings.pod_uid,
    )
    .await
    {
        Ok(hello) => hello,
        Err(err) => {
            tracing::warn!("refused a session from {peer}: {err}");
            return;
        }
    };
    drop(turn);
    tracing::info!("session opened by {} ({peer})", hello.client.escape_debug());
    // The handle is how intercepted connections reach this workstation.
    let (handle, mut streams_rx) = mux::spawn(connection, Mode::Server);
    let id = workstations.add(handle);
    while let Some(stream) = streams_rx.recv().await {
        let requester = Requester {
            workstations: workstations.clone(),
            id,
        };
        tokio::spawn(serve_stream(stream, settings.clone(), requester));
    }
    workstations.remove(id);
    tracing::info!("session of {} ({peer}) closed", hello.client);
}

/// The workstation a stream came from, for the ports it claims.
#[derive(Debug)]
struct Requester {
    workstations: Arc<Workstations>,
    id: WorkstationId,
}

async fn serve_stream(mut stream: MuxStream, settings: Arc<Settings>, requester: Requester) {
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => return tracing::debug!("stream without a request: {err}"),
        Err(_) => return tracing::debug!("stream without a request in {HANDSHAKE_TIMEOUT:?}"),
    };
    let result = match request {
        OpenRequest::Tcp { host, port, stripe } => {
            let stripes = requester.workstations.stripes();
            let stripe = stripe.as_deref().map(|id| (id, stripes));
            outgoing::tcp::relay(stream, &host, port, stripe).await
        }
        OpenRequest::Join { stripe } => {
            let stripes = requester.workstations.stripes();
            stripes.join(stream, &stripe).await
        }
        OpenRequest::Udp { host, port } => {
            outgoing::udp::relay(stream, &host, port, settings.udp_idle).await
        }
        OpenRequest::Resolve { name } => outgoing::dns::answer_lookup(stream, &name).await,
        OpenRequest::Ping => answer(&mut stream, &OpenReply::Pong).await,
        OpenRequest::Environment => {
            let variables = env::app_environment(std::env::vars());
            answer(&mut stream, &OpenReply::Environment { variables }).await
        }
        OpenRequest::Incoming { .. } => {
            refuse(&mut stream, "the agent takes no incoming streams".into()).await
        }
        OpenRequest::Files { stripe } => {
            let place = requester.workstations.stripes().register(&stripe);
            let (root, read_only) = (&settings.volumes_root, settings.read_only_volumes);
            files::serve(stream, place, root, read_only).await
        }
        OpenRequest::Claim {
            port,
            filter,
            wiretap,
        } => {
            tracing::info!(
                "a workstation {} port {port}{}",
                if wiretap.is_some() {
                    "wiretaps"
                } else {
                    "takes"
                },
                if filter.is_some() {
                    " (matching HTTP requests)"
                } else {
                    ""
                }
            );
            requester
                .workstations
                .claim(requester.id, port, filter, wiretap);
            answer(&mut stream, &OpenReply::Connected).await
        }
        OpenRequest::WiretapCounts { session } => {
            let counts = requester.workstations.counts(&session);
            answer(&mut stream, &OpenReply::WiretapCounts(counts)).await
        }
    };
    if let Err(err) = result {
        tracing::debug!("flow ended: {err}");
    }
}
