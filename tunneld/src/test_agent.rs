//! A real agent (`agent-image`) in the test process, on loopback: the "pod's network" it
//! dials from is this machine's, so flows through it can be checked end to end.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kubedev_protocol::Listener;
use kubedev_protocol::link::AgentLink;
use kubedev_protocol::mux::MuxStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::agents::AgentPool;
use kubedev::control::SessionKey;

const TOKEN: &str = "test-agent-token";

/// A pool with one link to an agent started for the caller.
pub(crate) async fn linked_pool() -> Arc<AgentPool> {
    linked_pool_serving(Path::new(kubedev_protocol::VOLUMES_ROOT), true).await
}

/// A pool with three links (two base ones and one more) to an agent started for the
/// caller, serving the files under `volumes` as the app's volumes (read-only if
/// `read_only`).
pub(crate) async fn linked_pool_serving(volumes: &Path, read_only: bool) -> Arc<AgentPool> {
    linked_pool_of(3, volumes, read_only).await.0
}

/// A pool with `links` links to one agent started for the caller, as tunneld keeps to a pod.
pub(crate) async fn linked_pool_with_links(links: usize) -> Arc<AgentPool> {
    linked_pool_of(links, Path::new(kubedev_protocol::VOLUMES_ROOT), true)
        .await
        .0
}

/// A pool with `links` links to one agent started for the caller, and the agent's address
/// for [`add_link_to`].
pub(crate) async fn linked_pool_at(links: usize) -> (Arc<AgentPool>, SocketAddr) {
    linked_pool_of(links, Path::new(kubedev_protocol::VOLUMES_ROOT), true).await
}

/// Adds link `index` to the test agent at `agent`, as if it had come up: the link, and
/// where the streams the agent opens on it arrive.
pub(crate) async fn add_link_to(
    pool: &AgentPool,
    agent: SocketAddr,
    index: usize,
) -> (AgentLink, mpsc::Receiver<MuxStream>) {
    let stream = loop {
        match TcpStream::connect(agent).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let (link, incoming_rx) = AgentLink::connect(stream, TOKEN, "tunneld-test", "test-pod")
        .await
        .expect("the agent answers");
    let session = SessionKey::new("test", "test");
    pool.add_link((&session, "agent-0", index), link.clone())
        .await;
    (link, incoming_rx)
}

/// An agent started for the caller that takes over the ports `listeners` say (the app
/// gone, as replace leaves it): its address for [`add_link_to`].
pub(crate) async fn agent_taking_over(listeners: Vec<Listener>) -> SocketAddr {
    start_agent(Path::new(kubedev_protocol::VOLUMES_ROOT), true, listeners).await
}

async fn linked_pool_of(
    links: usize,
    volumes: &Path,
    read_only: bool,
) -> (Arc<AgentPool>, SocketAddr) {
    let listen = start_agent(volumes, read_only, Vec::new()).await;
    let pool = Arc::new(AgentPool::default());
    for index in 0..links {
        add_link_to(&pool, listen, index).await;
    }
    (pool, listen)
}

async fn start_agent(volumes: &Path, read_only: bool, listeners: Vec<Listener>) -> SocketAddr {
    let listen = free_port().await;
    let settings = agent_image::Settings {
        token: TOKEN.into(),
        pod_uid: "test-pod".into(),
        udp_idle: Duration::from_secs(60),
        volumes_root: volumes.to_owned(),
        read_only_volumes: read_only,
        tls_dir: kubedev_protocol::TLS_DIR.into(),
    };
    tokio::spawn(agent_image::run(listen, settings, listeners));
    listen
}

/// A loopback address nothing listens on now.
pub(crate) async fn free_port() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    probe.local_addr().expect("address")
}

/// A TCP server on `address` that sends back what it reads, connection by connection.
pub(crate) async fn echo_server(address: &str) -> SocketAddr {
    let listener = TcpListener::bind(address)
        .await
        .expect("bind the echo server");
    let local = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut from, mut to) = connection.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    local
}
