//! The daemon: serves the control socket ([`requests`]) and the proxy ([`crate::proxy`]),
//! keeps the sessions' tunnels, learns the cluster's ranges and brings up the cluster
//! network with the first session ([`cluster_network`]) or serves the network namespaces of
//! the sessions' commands without it ([`command_network`]), keeps a session
//! while its plugin holds it ([`holds`], renewing its lease in [`leases`]), and exits once
//! no session is left. Only its own user's connections are served ([`peers`]).

mod cluster_network;
#[cfg(target_os = "linux")]
mod command_network;
mod control_listener;
mod holds;
mod leases;
#[cfg(target_os = "linux")]
mod machine_device;
#[cfg(unix)]
mod peers;
mod requests;
mod routing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use kubedev::cidr::Cidr;
use kubedev::control::{AgentOwner, ProxyChoices, ProxyStatus, SessionKey};
use kubedev_process::signals::StopSignals;
use tokio::sync::{Mutex, Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use crate::agents::AgentPool;
use crate::local_network::LocalNetwork;
use crate::outbound::Outbound;
use crate::proxy::Proxy;
use cluster_network::{KnownCluster, NetworkState};
use control_listener::ControlListener;
use leases::LeaseKeeping;

/// How the daemon was started.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) cluster_domain: String,
    /// Ranges to route; discovered from the cluster when empty.
    pub(crate) routes: Vec<Cidr>,
    /// `--also-proxy` and `--never-proxy` from tunneld's command line.
    pub(crate) proxy: ProxyChoices,
    pub(crate) no_network: bool,
    /// The proxy's port on 127.0.0.1; 0 for one the kernel picks.
    pub(crate) proxy_port: u16,
    pub(crate) resolv_conf: PathBuf,
    /// The network helper's socket, used when tunneld runs without root.
    #[cfg(target_os = "linux")]
    #[cfg(target_os = "linux")]
    pub(crate) network_helper: PathBuf,
    pub(crate) state_dir: PathBuf,
    /// How long tunneld stays up with no session (after the last one, or after start).
    pub(crate) idle_exit: Duration,
}

/// A session tunneld keeps links to.
#[derive(Debug)]
struct Tunneled {
    /// A wiretap's id in its claims.
    wiretap: Option<String>,
    /// Where its incoming connections are delivered.
    local: Arc<LocalNetwork>,
    /// Cancelled when the session is removed: its links end.
    stop: CancellationToken,
    /// What controls its agent pods.
    owner: Option<AgentOwner>,
}

pub(crate) struct Daemon {
    client: kube::Client,
    api_server: String,
    settings: Settings,
    pool: Arc<AgentPool>,
    /// Where every flow leaves from, and dialling it.
    outbound: Arc<Outbound>,
    /// The cluster's ranges, learned with the first session.
    cluster: OnceCell<KnownCluster>,
    /// Where the proxy listens, and its URLs, once it does.
    proxy_status: OnceLock<ProxyStatus>,
    /// The sessions tunneld links to.
    sessions: Mutex<HashMap<SessionKey, Tunneled>>,
    network: Mutex<NetworkState>,
    /// The user's routing choices, from the command line and every session so far.
    proxy: Mutex<ProxyChoices>,
    /// Plugins holding a session (see [`kubedev::control::ControlRequest::Hold`]) and
    /// restores under way: tunneld stays up while there are any.
    holds: AtomicUsize,
    /// Woken when `sessions` or `holds` change.
    sessions_changed: Notify,
    /// The sessions whose leases tunneld renews, by the run that holds them.
    leases: Mutex<HashMap<String, Arc<LeaseKeeping>>>,
    /// The sessions a plugin holds now: one run at a time may hold a session.
    held: std::sync::Mutex<std::collections::HashSet<SessionKey>>,
}

/// Counts one hold in [`Daemon::holds`] while it lives.
pub(super) struct HoldCount<'a>(&'a Daemon);

impl<'a> HoldCount<'a> {
    pub(super) fn new(daemon: &'a Daemon) -> Self {
        daemon.holds.fetch_add(1, Ordering::SeqCst);
        daemon.sessions_changed.notify_waiters();
        Self(daemon)
    }
}

impl Drop for HoldCount<'_> {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::SeqCst);
        self.0.sessions_changed.notify_waiters();
    }
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("api_server", &self.api_server)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    pub(crate) fn new(client: kube::Client, api_server: String, settings: Settings) -> Arc<Self> {
        let pool = Arc::new(AgentPool::default());
        Arc::new(Self {
            client,
            api_server,
            proxy: Mutex::new(settings.proxy.clone()),
            outbound: Arc::new(Outbound::new(pool.clone(), &settings.cluster_domain)),
            cluster: OnceCell::new(),
            proxy_status: OnceLock::new(),
            settings,
            pool,
            sessions: Mutex::new(HashMap::new()),
            network: Mutex::new(NetworkState::Off),
            holds: AtomicUsize::new(0),
            sessions_changed: Notify::new(),
            leases: Mutex::new(HashMap::new()),
            held: std::sync::Mutex::default(),
        })
    }

    /// Serves `socket` and the proxy until no session is left for the idle time, or a
    /// stop signal.
    pub(crate) async fn run(self: &Arc<Self>, socket: &Path) -> anyhow::Result<()> {
        kubedev_process::limits::raise_open_files_limit();
        let listener = Arc::new(ControlListener::bind(socket).await?);
        let proxy = match Proxy::bind(self.settings.proxy_port, self.outbound.clone()).await {
            Ok(proxy) => proxy,
            Err(err) => {
                listener.remove(socket);
                return Err(err);
            }
        };
        let _ = self.proxy_status.set(proxy.status().clone());
        tracing::info!(
            "tunneld {} serving {}",
            env!("CARGO_PKG_VERSION"),
            socket.display()
        );
        let result = tokio::select! {
            result = self.accept_loop(&listener) => result,
            () = proxy.serve() => Ok(()),
            () = self.keep_network_up() => Ok(()),
            () = self.idle() => {
                tracing::info!("no session left: exiting");
                Ok(())
            }
            result = stop_signal() => result,
        };
        listener.remove(socket);
        for (name, tunneled) in self.sessions.lock().await.drain() {
            tunneled.stop.cancel();
            self.pool.forget(&name).await;
        }
        // Restores the resolver configuration; the TUN device goes with the process.
        *self.network.lock().await = NetworkState::Off;
        result
    }

    async fn accept_loop(self: &Arc<Self>, listener: &Arc<ControlListener>) -> anyhow::Result<()> {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(err) => {
                    // Out of file descriptors, say (the proxy's port is open to every local
                    // user): the sessions go on, and so does the socket once files are free.
                    tracing::warn!("the control socket could not accept a client: {err}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let daemon = self.clone();
            let listener = listener.clone();
            tokio::spawn(async move {
                let Some(stream) = listener.admit(stream).await else {
                    return;
                };
                if let Err(err) = daemon.serve_client(stream).await {
                    tracing::debug!("control client: {err:#}");
                }
            });
        }
    }

    /// Completes once no session (or hold) has existed for the idle time.
    async fn idle(&self) {
        loop {
            let changed = self.sessions_changed.notified();
            if self.sessions.lock().await.is_empty() && self.holds.load(Ordering::SeqCst) == 0 {
                if tokio::time::timeout(self.settings.idle_exit, changed)
                    .await
                    .is_err()
                {
                    return;
                }
            } else {
                changed.await;
            }
        }
    }
}

/// How long the control socket waits after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

async fn stop_signal() -> anyhow::Result<()> {
    let mut signals = StopSignals::listen().context("signal handlers")?;
    signals.recv().await;
    tracing::info!("stopping on signal");
    Ok(())
}
