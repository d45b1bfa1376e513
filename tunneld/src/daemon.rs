//! The daemon: serves the control socket, keeps the sessions' tunnels, brings up the
//! cluster network with the first session ([`cluster_network`]), and exits once no session
//! is left.

mod cluster_network;
mod leases;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kubedev::cidr::Cidr;
use kubedev::control::{
    ControlReply, ControlRequest, DaemonStatus, Held, PodPort, ProxyChoices, SessionStatus,
};
use kubedev::session::connect::{self, end_connect};
use kubedev::session::lease::DEFAULT_LEASE;
use kubedev::session::{self, SessionError};
use kubedev_process::signals::StopSignals;
use kubedev_protocol::WiretapCounts;
use kubedev_protocol::codec::{read_message, write_message};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentPool, AgentSelector};
use crate::to_pod;
use cluster_network::NetworkState;
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
    pub(crate) resolv_conf: PathBuf,
    pub(crate) state_dir: PathBuf,
    /// How long tunneld stays up with no session (after the last one, or after start).
    pub(crate) idle_exit: Duration,
}

/// How long a status request waits for an agent's wiretap counts.
const COUNTS_WAIT: Duration = Duration::from_secs(2);

/// How long an environment request waits for a session's agent to be linked.
const ENVIRONMENT_WAIT: Duration = Duration::from_secs(30);

/// The longest pause between two attempts to restore a workload.
const RESTORE_RETRY_PAUSE: Duration = Duration::from_secs(15);

/// Counts one hold in [`Daemon::holds`] while it lives.
struct HoldCount<'a>(&'a Daemon);

impl<'a> HoldCount<'a> {
    fn new(daemon: &'a Daemon) -> Self {
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

/// A session tunneld keeps links to.
#[derive(Debug)]
struct Tunneled {
    namespace: String,
    /// A wiretap's id in its claims.
    wiretap: Option<String>,
    /// Cancelled when the session is removed: its links end.
    stop: CancellationToken,
}

pub(crate) struct Daemon {
    client: kube::Client,
    api_server: String,
    settings: Settings,
    pool: Arc<AgentPool>,
    /// The sessions tunneld links to, by name.
    sessions: Mutex<HashMap<String, Tunneled>>,
    network: Mutex<NetworkState>,
    /// The user's routing choices, from the command line and every session so far.
    proxy: Mutex<ProxyChoices>,
    /// Plugins holding a session (see [`ControlRequest::Hold`]) and restores under way:
    /// tunneld stays up while there are any.
    holds: AtomicUsize,
    /// Woken when `sessions` or `holds` change.
    sessions_changed: Notify,
    /// The sessions whose leases tunneld renews, by the run that holds them.
    leases: Mutex<HashMap<String, Arc<LeaseKeeping>>>,
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
        Arc::new(Self {
            client,
            api_server,
            proxy: Mutex::new(settings.proxy.clone()),
            settings,
            pool: Arc::new(AgentPool::default()),
            sessions: Mutex::new(HashMap::new()),
            network: Mutex::new(NetworkState::Off),
            holds: AtomicUsize::new(0),
            sessions_changed: Notify::new(),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// Serves `socket` until no session is left for the idle time, or a stop signal.
    pub(crate) async fn run(self: &Arc<Self>, socket: &Path) -> anyhow::Result<()> {
        let listener = bind(socket).await?;
        tracing::info!(
            "tunneld {} serving {}",
            env!("CARGO_PKG_VERSION"),
            socket.display()
        );
        let result = tokio::select! {
            result = self.accept_loop(&listener) => result,
            () = self.idle() => {
                tracing::info!("no session left: exiting");
                Ok(())
            }
            result = stop_signal() => result,
        };
        let _ = std::fs::remove_file(socket);
        for (name, tunneled) in self.sessions.lock().await.drain() {
            tunneled.stop.cancel();
            self.pool.forget(&name).await;
        }
        // Restores the resolver configuration; the TUN device goes with the process.
        *self.network.lock().await = NetworkState::Off;
        result
    }

    async fn accept_loop(self: &Arc<Self>, listener: &UnixListener) -> anyhow::Result<()> {
        loop {
            let (stream, _) = listener.accept().await.context("control socket")?;
            let daemon = self.clone();
            tokio::spawn(async move {
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

    async fn serve_client(self: &Arc<Self>, mut stream: UnixStream) -> anyhow::Result<()> {
        let request: ControlRequest = read_message(&mut stream).await?;
        let reply = match request {
            ControlRequest::AddSession {
                name,
                namespace,
                agents,
                token,
                forwards,
                proxy,
                to_pod,
            } => {
                let selector = AgentSelector {
                    wiretap: format!("{name}/{}", std::process::id()),
                    namespace,
                    labels: agents,
                    token,
                    forwards: forwards.into(),
                };
                self.add_session(name, selector, &proxy, &to_pod).await
            }
            ControlRequest::RemoveSession { name } => self.remove_session(&name).await,
            ControlRequest::Status => ControlReply::Status(self.status().await),
            ControlRequest::Environment { name } => self.environment(&name).await,
            ControlRequest::OpenFiles { name } => return self.serve_files(&name, stream).await,
            ControlRequest::Hold(held) => return self.hold(held, stream).await,
            ControlRequest::Release => ControlReply::Failed {
                reason: "release without a hold".into(),
            },
        };
        write_message(&mut stream, &reply).await?;
        Ok(())
    }

    async fn add_session(
        &self,
        name: String,
        selector: AgentSelector,
        proxy: &ProxyChoices,
        to_pod: &[PodPort],
    ) -> ControlReply {
        let mut sessions = self.sessions.lock().await;
        if sessions.contains_key(&name) {
            return ControlReply::Failed {
                reason: format!("a session named {name:?} already exists"),
            };
        }
        let to_pod = match to_pod::bind(to_pod).await {
            Ok(bound) => bound,
            Err(reason) => return ControlReply::Failed { reason },
        };
        let stop = CancellationToken::new();
        let namespace = selector.namespace.clone();
        let wiretap = selector
            .forwards
            .iter()
            .any(|forward| forward.wiretap)
            .then(|| selector.wiretap.clone());
        self.pool
            .follow(self.client.clone(), name.clone(), selector, stop.clone());
        to_pod::serve(to_pod, name.clone(), self.pool.clone(), &stop);
        tracing::info!("session {name} added (namespace {namespace})");
        let tunneled = Tunneled {
            namespace: namespace.clone(),
            wiretap,
            stop,
        };
        sessions.insert(name, tunneled);
        drop(sessions);
        self.sessions_changed.notify_waiters();
        let new_choices = self.proxy.lock().await.merge(proxy);
        self.start_network(&namespace, new_choices).await;
        ControlReply::Done
    }

    /// Keeps `holder`'s connection, renewing the session's lease, until the plugin releases
    /// the session. If the connection closes first, its plugin died with the session live:
    /// end it, and restore the workload as `leave` does. If the lease is lost, end the
    /// session here and tell the plugin.
    async fn hold(self: &Arc<Self>, held: Held, mut holder: UnixStream) -> anyhow::Result<()> {
        let _counted = HoldCount::new(self);
        let keeping = Arc::new(LeaseKeeping::new(
            held.name.clone(),
            held.owner.clone(),
            held.namespace.clone(),
            held.lease,
        ));
        if held.lease.is_some() {
            self.leases
                .lock()
                .await
                .insert(held.owner.clone(), keeping.clone());
            tokio::spawn(leases::keep_lease(self.clone(), Arc::downgrade(&keeping)));
        }
        write_message(&mut holder, &ControlReply::Done).await?;
        let mut lost_rx = keeping.lost_tx.subscribe();
        let lost = tokio::select! {
            request = read_message::<_, ControlRequest>(&mut holder) => match request {
                Ok(ControlRequest::Release) => None,
                _ => Some(None),
            },
            reason = lost_rx.wait_for(Option::is_some) => {
                Some(Some(reason.map(|r| r.clone().unwrap_or_default()).unwrap_or_default()))
            }
        };
        match lost {
            None => {
                if self.sessions.lock().await.contains_key(&held.name) {
                    // Detached: the lease lives as long as the session does here.
                    keeping.mark_detached();
                } else {
                    keeping.mark_ending();
                    self.forget_lease(&held.owner).await;
                }
                return Ok(write_message(&mut holder, &ControlReply::Done).await?);
            }
            Some(Some(reason)) => {
                return Ok(write_message(&mut holder, &ControlReply::Ended { reason }).await?);
            }
            Some(None) => {}
        }
        keeping.mark_ending();
        tracing::warn!(
            "the plugin running session {} is gone: ending it and restoring {}",
            held.name,
            restored(&held)
        );
        self.remove_session(&held.name).await;
        self.restore(&held).await;
        self.forget_lease(&held.owner).await;
        Ok(())
    }

    /// Restores `held`'s workload as `leave` does (or deletes a connect session's pod),
    /// retrying while the cluster fails for as long as the session's lease lasts: a
    /// cluster out of reach for that long cannot renew it either, and the session is left
    /// to the next run in the namespace to reclaim.
    async fn restore(&self, held: &Held) {
        let Held {
            name,
            owner,
            namespace,
            workload,
            timeout,
            lease,
        } = held;
        let what = restored(held);
        let deadline = tokio::time::Instant::now() + lease.unwrap_or(DEFAULT_LEASE);
        let mut pause = Duration::from_secs(1);
        loop {
            let attempt = match workload {
                Some(workload) => {
                    let left = session::leave(
                        &self.client,
                        namespace,
                        workload,
                        name,
                        Some(owner),
                        *timeout,
                        |_| {},
                    );
                    left.await.map(|left| left.describe(name, workload))
                }
                None => end_connect(&self.client, namespace, name, Some(owner))
                    .await
                    .map(|_| format!("connect session {name} ended")),
            };
            let err = match attempt {
                Ok(done) => return tracing::info!("{done}"),
                // The original is back; only its pods are late.
                Err(err @ SessionError::Rollout(_)) => {
                    return tracing::warn!("{what} restored; {:#}", anyhow::Error::from(err));
                }
                Err(err) => anyhow::Error::from(err),
            };
            if tokio::time::Instant::now() + pause > deadline {
                return match lease {
                    Some(lease) => tracing::error!(
                        "could not restore {what}: {err:#}; its lease runs out {lease:?} \
                         after the last renewal, and then the next kubedev command in \
                         namespace {namespace} restores it (or run `leave {name}` with the \
                         plugin)"
                    ),
                    None => tracing::error!(
                        "could not restore {what}: {err:#}; run `leave {name}` with the \
                         plugin"
                    ),
                };
            }
            tracing::warn!("restoring {what}: {err:#}; trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RESTORE_RETRY_PAUSE);
        }
    }

    /// Stops renewing the lease of run `owner`'s session.
    async fn forget_lease(&self, owner: &str) {
        self.leases.lock().await.remove(owner);
    }

    /// Turns the client's connection into an SFTP session on the app's volumes, with one of
    /// the session's agents, until either side closes.
    async fn serve_files(&self, name: &str, mut client: UnixStream) -> anyhow::Result<()> {
        let Some(link) = self.pool.pick(Some(name), ENVIRONMENT_WAIT).await else {
            let reason = format!("no agent of session {name:?} is linked");
            return Ok(write_message(&mut client, &ControlReply::Failed { reason }).await?);
        };
        let mut files = match link.open_files().await {
            Ok(files) => files,
            Err(err) => {
                let reason = format!("volumes of session {name:?}: {err}");
                return Ok(write_message(&mut client, &ControlReply::Failed { reason }).await?);
            }
        };
        write_message(&mut client, &ControlReply::Done).await?;
        tokio::io::copy_bidirectional(&mut client, &mut files).await?;
        Ok(())
    }

    async fn environment(&self, name: &str) -> ControlReply {
        let Some(link) = self.pool.pick(Some(name), ENVIRONMENT_WAIT).await else {
            return ControlReply::Failed {
                reason: format!("no agent of session {name:?} is linked"),
            };
        };
        match link.environment().await {
            Ok(variables) => ControlReply::Environment { variables },
            Err(err) => ControlReply::Failed {
                reason: format!("environment of session {name:?}: {err}"),
            },
        }
    }

    async fn remove_session(&self, name: &str) -> ControlReply {
        let Some(tunneled) = self.sessions.lock().await.remove(name) else {
            return ControlReply::Failed {
                reason: format!("no session named {name:?}"),
            };
        };
        tunneled.stop.cancel();
        self.pool.forget(name).await;
        // Ended on purpose: its lease goes with it (a detached session's renewals end here).
        self.leases.lock().await.retain(|_, keeping| {
            if keeping.session != name {
                return true;
            }
            keeping.mark_ending();
            !keeping.is_detached()
        });
        tracing::info!("session {name} removed");
        self.sessions_changed.notify_waiters();
        ControlReply::Done
    }

    /// A wiretap's counts over every pod it is linked to; a pod that does not answer in
    /// time is left out.
    async fn wiretap_counts(&self, name: &str, id: &str) -> WiretapCounts {
        let asked =
            self.pool
                .link_per_pod(name)
                .await
                .into_iter()
                .map(|link| async move {
                    tokio::time::timeout(COUNTS_WAIT, link.wiretap_counts(id)).await
                });
        let mut total = WiretapCounts::default();
        for counts in futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .flatten()
        {
            total += counts;
        }
        total
    }

    async fn status(&self) -> DaemonStatus {
        let sessions = self.sessions.lock().await;
        let mut listed = Vec::new();
        for (name, tunneled) in sessions.iter() {
            let wiretap = match &tunneled.wiretap {
                Some(id) => Some(self.wiretap_counts(name, id).await),
                None => None,
            };
            listed.push(SessionStatus {
                name: name.clone(),
                namespace: tunneled.namespace.clone(),
                linked_pods: self.pool.linked_pods(name).await,
                wiretap,
            });
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let network = self.network.lock().await.status();
        DaemonStatus {
            pid: std::process::id(),
            network,
            sessions: listed,
        }
    }
}

/// What restoring `held` puts back, in words: its workload, or a connect session's pod.
fn restored(held: &Held) -> String {
    match &held.workload {
        Some(workload) => workload.to_string(),
        None => format!("pod/{}", connect::pod_name(&held.name)),
    }
}

/// Binds the control socket, refusing if another tunneld answers there and replacing a
/// socket file a dead one left behind. Only this user may connect.
async fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if UnixStream::connect(socket).await.is_ok() {
        anyhow::bail!("another tunneld is already serving {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listen on {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn stop_signal() -> anyhow::Result<()> {
    let mut signals = StopSignals::listen().context("signal handlers")?;
    signals.recv().await;
    tracing::info!("stopping on signal");
    Ok(())
}
