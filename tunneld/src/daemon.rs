//! The daemon: serves the control socket, keeps the sessions' tunnels, brings up the
//! cluster network with the first session, and exits once no session is left.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kubedev::cidr::Cidr;
use kubedev::control::{
    ControlReply, ControlRequest, DaemonStatus, Held, NetworkStatus, ProxyChoices, RangePart,
    RangeState, RangeStatus, ResolverStatus, SessionStatus,
};
use kubedev::protocol::codec::{read_message, write_message};
use kubedev::session;
use kubedev::signals::StopSignals;
use kubedev::workload::WorkloadRef;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentPool, AgentSelector};
use crate::cidrs;
use crate::network::resolv::{CommandResolvConf, ResolvConf};
use crate::network::resolved::{self, ResolvedLink};
use crate::network::route_plan::{self, Exclusion, Wanted};
use crate::network::routes::TunRoutes;
use crate::network::{DNS_IP, Network, TUN_NAME, dns::DnsAnswerer, kubelet};

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

/// How long an environment request waits for a session's agent to be linked.
const ENVIRONMENT_WAIT: Duration = Duration::from_secs(30);

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

/// How the workstation's resolver was pointed at tunneld; dropping it undoes that.
#[derive(Debug)]
enum Resolver {
    SystemdResolved(ResolvedLink),
    ResolvConf(ResolvConf),
    /// Left as it is, for `reason`; commands can be given `for_commands` instead.
    Unchanged {
        reason: String,
        for_commands: CommandResolvConf,
    },
}

impl Resolver {
    fn status(&self) -> ResolverStatus {
        match self {
            Self::SystemdResolved(link) => ResolverStatus::SystemdResolved {
                link: link.link().to_owned(),
            },
            Self::ResolvConf(conf) => ResolverStatus::ResolvConf {
                path: conf.path().to_owned(),
            },
            Self::Unchanged {
                reason,
                for_commands,
            } => ResolverStatus::Unchanged {
                reason: reason.clone(),
                for_commands: for_commands.path().to_owned(),
            },
        }
    }
}

/// The cluster network while it is up.
#[derive(Debug)]
struct UpNetwork {
    /// The cluster's ranges, as discovered or given.
    cluster: Vec<Cidr>,
    /// The API server's own addresses, never routed.
    api_server: Vec<Exclusion>,
    routes: TunRoutes,
    ranges: Vec<RangeStatus>,
    /// Restores the workstation's DNS settings when dropped.
    resolver: Resolver,
}

#[derive(Debug)]
enum NetworkState {
    Off,
    Up(Box<UpNetwork>),
    Unavailable(String),
}

pub(crate) struct Daemon {
    client: kube::Client,
    api_server: String,
    settings: Settings,
    pool: Arc<AgentPool>,
    /// Session name -> (namespace, what stops its tunnels).
    sessions: Mutex<HashMap<String, (String, CancellationToken)>>,
    network: Mutex<NetworkState>,
    /// The user's routing choices, from the command line and every session so far.
    proxy: Mutex<ProxyChoices>,
    /// Plugins holding a session (see [`ControlRequest::Hold`]) and restores under way:
    /// tunneld stays up while there are any.
    holds: AtomicUsize,
    /// Woken when `sessions` or `holds` change.
    sessions_changed: Notify,
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
        for (name, (_, stop)) in self.sessions.lock().await.drain() {
            stop.cancel();
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

    async fn serve_client(&self, mut stream: UnixStream) -> anyhow::Result<()> {
        let request: ControlRequest = read_message(&mut stream).await?;
        let reply = match request {
            ControlRequest::AddSession {
                name,
                namespace,
                agents,
                token,
                forwards,
                proxy,
            } => {
                let selector = AgentSelector {
                    namespace,
                    labels: agents,
                    token,
                    forwards: forwards.into(),
                };
                self.add_session(name, selector, &proxy).await
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
    ) -> ControlReply {
        let mut sessions = self.sessions.lock().await;
        if sessions.contains_key(&name) {
            return ControlReply::Failed {
                reason: format!("a session named {name:?} already exists"),
            };
        }
        let stop = CancellationToken::new();
        let namespace = selector.namespace.clone();
        self.pool
            .follow(self.client.clone(), name.clone(), selector, stop.clone());
        tracing::info!("session {name} added (namespace {namespace})");
        sessions.insert(name, (namespace.clone(), stop));
        drop(sessions);
        self.sessions_changed.notify_waiters();
        let new_choices = self.proxy.lock().await.merge(proxy);
        self.start_network(&namespace, new_choices).await;
        ControlReply::Done
    }

    /// Keeps `holder`'s connection until it releases the session; if the connection closes
    /// first, its plugin died with the session live: end it, and restore the workload as
    /// `leave` does.
    async fn hold(&self, held: Held, mut holder: UnixStream) -> anyhow::Result<()> {
        let _counted = HoldCount::new(self);
        let workload: WorkloadRef = held.workload.parse().map_err(anyhow::Error::msg)?;
        write_message(&mut holder, &ControlReply::Done).await?;
        if let Ok(ControlRequest::Release) = read_message(&mut holder).await {
            return Ok(write_message(&mut holder, &ControlReply::Done).await?);
        }
        let Held {
            name,
            owner,
            namespace,
            timeout,
            ..
        } = held;
        tracing::warn!(
            "the plugin running session {name} is gone: ending it and restoring {workload}"
        );
        self.remove_session(&name).await;
        let left = session::leave(
            &self.client,
            &namespace,
            &workload,
            &name,
            Some(&owner),
            timeout,
            |_| {},
        );
        match left.await {
            Ok(left) => tracing::info!("{}", left.describe(&name, &workload)),
            Err(err) => tracing::error!(
                "could not restore {workload}: {err:#}; run `leave {name}` with the plugin"
            ),
        }
        Ok(())
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
        let Some((_, stop)) = self.sessions.lock().await.remove(name) else {
            return ControlReply::Failed {
                reason: format!("no session named {name:?}"),
            };
        };
        stop.cancel();
        self.pool.forget(name).await;
        tracing::info!("session {name} removed");
        self.sessions_changed.notify_waiters();
        ControlReply::Done
    }

    async fn status(&self) -> DaemonStatus {
        let sessions = self.sessions.lock().await;
        let mut listed = Vec::new();
        for (name, (namespace, _)) in sessions.iter() {
            listed.push(SessionStatus {
                name: name.clone(),
                namespace: namespace.clone(),
                linked_pods: self.pool.linked_pods(name).await,
            });
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let network = match &*self.network.lock().await {
            NetworkState::Off => NetworkStatus::Off,
            NetworkState::Up(up) => NetworkStatus::Up {
                routes: up.routes.added(),
                ranges: up.ranges.clone(),
                dns: DNS_IP.to_string(),
                resolver: up.resolver.status(),
            },
            NetworkState::Unavailable(reason) => NetworkStatus::Unavailable {
                reason: reason.clone(),
            },
        };
        DaemonStatus {
            pid: std::process::id(),
            network,
            sessions: listed,
        }
    }

    /// Brings up the cluster network once, for the first session's namespace (its DNS
    /// search path); without root it records why there is none, and tunnels still work.
    /// Once it is up, routes again if the user's choices changed.
    async fn start_network(&self, namespace: &str, new_choices: bool) {
        let mut network = self.network.lock().await;
        if let NetworkState::Up(up) = &mut *network {
            if new_choices && let Err(err) = self.route(up).await {
                tracing::warn!("routing the cluster's ranges again: {err:#}");
            }
            return;
        }
        if !matches!(*network, NetworkState::Off) || self.settings.no_network {
            return;
        }
        *network = match self.bring_up_network(namespace).await {
            Ok(up) => up,
            Err(err) => {
                let reason = format!("{err:#}");
                tracing::warn!("no cluster network on this machine: {reason}");
                NetworkState::Unavailable(reason)
            }
        };
    }

    async fn bring_up_network(&self, namespace: &str) -> anyhow::Result<NetworkState> {
        let cluster = if self.settings.routes.is_empty() {
            cidrs::discover(&self.client, namespace).await
        } else {
            self.settings.routes.clone()
        };
        let network = Network::create()?;
        let routes = TunRoutes::new(TUN_NAME).await?;
        let domain = self.settings.cluster_domain.trim_end_matches('.');
        let search = vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.to_owned(),
        ];
        let api_server = api_server_exclusions(&self.api_server).await;
        let (resolver, upstream) = self.point_resolver(domain, &search)?;
        let mut up = UpNetwork {
            cluster,
            api_server,
            routes,
            ranges: Vec::new(),
            resolver,
        };
        self.route(&mut up).await?;
        let dns = Arc::new(DnsAnswerer::new(self.pool.clone(), domain, upstream));
        let serving = network.run(self.pool.clone(), dns);
        tokio::spawn(async move {
            if let Err(err) = serving.await {
                tracing::error!("cluster network stopped: {err:#}");
            }
        });
        Ok(NetworkState::Up(Box::new(up)))
    }

    /// Routes what the plan says, from the machine's routes as they are now.
    async fn route(&self, up: &mut UpNetwork) -> anyhow::Result<()> {
        let proxy = self.proxy.lock().await.clone();
        let mut never = up.api_server.clone();
        never.extend(proxy.never_proxy.iter().map(|range| Exclusion {
            range: *range,
            reason: "--never-proxy".into(),
        }));
        let wanted = Wanted {
            cluster: up.cluster.clone(),
            also: proxy.also_proxy,
            never,
        };
        let machine = up.routes.machine_routes().await?;
        let mut plan = route_plan::plan(&wanted, &machine);
        let mut routes = plan.routes.clone();
        routes.push(Cidr::from(DNS_IP));
        for (route, err) in up.routes.set(&routes).await {
            tracing::warn!("could not add route {route} dev {TUN_NAME}: {err}");
            let holder = plan
                .ranges
                .iter_mut()
                .find(|range| kubedev::cidr::holds(&range.range, &route));
            if let Some(range) = holder {
                range.except.push(RangePart {
                    range: route,
                    reason: format!("the route could not be added: {err}"),
                });
            }
        }
        let listed: Vec<String> = up.routes.added().iter().map(ToString::to_string).collect();
        tracing::info!("cluster network on {TUN_NAME}: {}", listed.join(", "));
        for range in &plan.ranges {
            match range.state {
                RangeState::Routed if range.except.is_empty() => {}
                RangeState::Routed => {
                    let parts: Vec<String> = range
                        .except
                        .iter()
                        .map(|part| format!("{} ({})", part.range, part.reason))
                        .collect();
                    tracing::info!("{} routed but for {}", range.range, parts.join(", "));
                }
                RangeState::Machine => tracing::info!(
                    "{} not routed: {} ({})",
                    range.range,
                    range.reason,
                    range.via.as_deref().unwrap_or_default()
                ),
                RangeState::Excluded => {
                    tracing::info!("{} not routed: {}", range.range, range.reason);
                }
            }
        }
        up.ranges = plan.ranges;
        Ok(())
    }

    /// Points the system resolver at tunneld's DNS, unless a kubelet on this machine hands
    /// what would change to its pods. Returns how, and the nameserver to forward other
    /// names to.
    fn point_resolver(
        &self,
        domain: &str,
        search: &[String],
    ) -> anyhow::Result<(Resolver, Option<std::net::SocketAddr>)> {
        let kubelets = kubelet::find();
        let handed_out = |file: &Path| {
            kubelets.iter().find_map(|kubelet| {
                let theirs = kubelet.hands_out(file)?;
                Some(format!(
                    "the kubelet on this machine (pid {}) hands {} to its pods",
                    kubelet.pid,
                    theirs.display()
                ))
            })
        };
        let unchanged = |reason: String| {
            tracing::warn!("DNS left as it is: {reason}");
            let (for_commands, upstream) = CommandResolvConf::write(
                &self.settings.resolv_conf,
                &self.settings.state_dir,
                DNS_IP,
                search,
            )?;
            let resolver = Resolver::Unchanged {
                reason,
                for_commands,
            };
            Ok((resolver, upstream))
        };
        let systemd_resolved = resolved::manages(&self.settings.resolv_conf);
        // resolved lists every link's servers in its own file, tunneld's among them.
        let changed_file = if systemd_resolved {
            Path::new(resolved::UPLINK_RESOLV_CONF)
        } else {
            &self.settings.resolv_conf
        };
        if let Some(reason) = handed_out(changed_file) {
            return unchanged(reason);
        }
        if systemd_resolved {
            let link = ResolvedLink::configure(TUN_NAME, DNS_IP, domain, search)?;
            // resolved sends only cluster names here: there is nothing to forward.
            return Ok((Resolver::SystemdResolved(link), None));
        }
        let (conf, upstream) = ResolvConf::install(
            &self.settings.resolv_conf,
            &self.settings.state_dir,
            DNS_IP,
            search,
        )?;
        Ok((Resolver::ResolvConf(conf), upstream))
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

/// The API server's own addresses: routing them into the tunnel would cut the tunnel's
/// own connection.
async fn api_server_exclusions(server: &str) -> Vec<Exclusion> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Some(host) = server_host(server) {
        if let Ok(ip) = host.parse() {
            addresses.push(ip);
        } else if let Ok(found) = tokio::net::lookup_host((host.as_str(), 443)).await {
            addresses.extend(found.map(|a| a.ip()));
        }
    }
    addresses
        .into_iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(Exclusion {
                range: Cidr::from(v4),
                reason: "the API server's address".into(),
            }),
            IpAddr::V6(_) => None,
        })
        .collect()
}

fn server_host(server: &str) -> Option<String> {
    let after_scheme = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = after_scheme.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    Some(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_api_server_host() {
        assert_eq!(
            server_host("https://10.201.0.1:6443/").as_deref(),
            Some("10.201.0.1")
        );
        assert_eq!(
            server_host("https://api.example.com").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            server_host("https://[fd00::1]:6443").as_deref(),
            Some("fd00::1")
        );
    }

    #[tokio::test]
    async fn the_api_servers_address_is_excluded() {
        let excluded = api_server_exclusions("https://10.201.0.1:6443").await;
        assert_eq!(excluded.len(), 1);
        assert_eq!(excluded[0].range.to_string(), "10.201.0.1/32");
    }
}
