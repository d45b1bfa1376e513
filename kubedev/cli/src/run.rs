//! A session run by a plugin: started, made usable here (tunneld, environment, volumes,
//! env files), then kept in the foreground (until Ctrl-C or until `-- CMD` exits) or
//! detached (until `leave`), and ended.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::args::{ModeArgs, SessionArgs};
use super::command::run_command;
use super::command_of;
use super::config::{self, ImageSource};
use super::connect::forget_in_tunneld;
use super::links::{Watched, report_links};
use super::output::{network_notes, progress_on, spinner};
use super::reclaim::reclaim_expired;
use super::tunneld::{tunneld_command, tunneld_socket, tunneld_status};
use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::{
    self, ControlReply, ControlRequest, Forward, Hold, HoldNews, NetworkStatus, PodPort,
    ProxyChoices, ResolverStatus,
};
use kubedev::env::{self, EnvSyntax};
use kubedev::inject::Mode;
use kubedev::mount::{self, Mount, MountChoice};
use kubedev::session::lease::Holder;
use kubedev::session::{self, Plan, Started};
use kubedev::workload::{WorkloadRef, check_agents};
use kubedev_process::signals::StopSignals;
use kubedev_protocol::Transport;

pub(super) async fn run_session(
    mode: Mode,
    cluster: &ClusterArgs,
    workload: WorkloadRef,
    args: SessionArgs,
    mode_args: ModeArgs,
) -> anyhow::Result<ExitCode> {
    let connection = cluster.connect().await?;
    let (agent_image, image_source) = config::agent_image(
        args.life.agent_image.as_deref(),
        connection.context.as_deref(),
    )?;
    let plan = plan_of(mode, workload, &args, mode_args, agent_image)?;
    check_local_ports(&args.to_pod)?;
    reclaim_expired(&connection, &plan.owner, plan.timeout).await;
    let end = |hold| {
        end_session(
            &connection,
            &plan.name,
            &plan.workload,
            plan.timeout,
            Some(hold),
        )
    };
    // Listening from the start: a stop signal during set-up must not kill the process with
    // the workload half changed; set-up stops and the workload is restored.
    let mut signals = StopSignals::listen()?;
    // From before the first change until the session ends, the session has a lease, and
    // tunneld renews it and restores the workload if this process dies (and only this
    // run's session: see `Plan::owner`).
    let identity = Identity {
        mode,
        name: &plan.name,
        owner: &plan.owner,
        target: &plan.workload.to_string(),
    };
    let lease = take_lease(&connection, &identity, args.life.lease).await?;
    let held = control::Held {
        name: plan.name.clone(),
        owner: plan.owner.clone(),
        namespace: connection.namespace.clone(),
        workload: Some(plan.workload.clone()),
        timeout: plan.timeout,
        lease,
    };
    let hold = match hold_tunneld(&connection, cluster, held).await {
        Ok(hold) => hold,
        Err(err) => {
            end_lease(&connection, &plan.owner).await;
            return Err(err);
        }
    };
    let started = tokio::select! {
        started = start(&connection, &plan, &image_source) => match started {
            Ok(started) => started,
            Err(err) => {
                // Nothing is left to restore: `start` rolls back what it changed.
                hold.release().await?;
                end_lease(&connection, &plan.owner).await;
                return Err(err);
            }
        },
        () = signals.recv() => {
            eprintln!("stopped while starting");
            end(hold).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let live = tokio::select! {
        live = go_live(&connection, &plan, &started, &args) => live.map(Some),
        () = signals.recv() => Ok(None),
    };
    let live = match live {
        Ok(Some(live)) => live,
        stopped_or_failed => {
            end(hold).await?;
            return stopped_or_failed.map(|_| ExitCode::SUCCESS);
        }
    };
    if args.life.detach {
        // The session lives in tunneld until `leave`, and the mount with sshfs.
        hold.release().await?;
        std::mem::forget(live.mounted);
        eprintln!(
            "session {:?} is live; end it with `{} leave {}`",
            plan.name,
            command_of(mode),
            plan.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut hold = hold;
    let links = Watched {
        socket: tunneld_socket(&connection)?,
        session: plan.name.clone(),
        mode,
        wanted: usize::try_from(started.workload.replicas()).unwrap_or(1),
    };
    let stayed = stay(&args.life.command, &live, &mut signals, &mut hold, links).await?;
    drop(live);
    match stayed {
        Stayed::Done(code) => {
            end(hold).await?;
            Ok(code)
        }
        Stayed::Lost(reason) => {
            let _ = hold.release().await;
            anyhow::bail!("{reason}: the session is over")
        }
        Stayed::TunneldGone => {
            end(hold).await?;
            anyhow::bail!(
                "tunneld exited during the session (see {}): the session was ended",
                tunneld_socket(&connection)?.with_extension("log").display()
            )
        }
    }
}

/// Who a session is, for its lease: its plugin, name, run and what it changes.
pub(super) struct Identity<'a> {
    pub(super) mode: Mode,
    pub(super) name: &'a str,
    pub(super) owner: &'a str,
    /// Its workload (`deployment/web`), or a connect session's pod.
    pub(super) target: &'a str,
}

/// Takes the session's lease; returns its lifetime, or none where the user's role has no
/// leases (the session then works, but only `leave` can end it if this machine dies).
pub(super) async fn take_lease(
    connection: &Connection,
    session: &Identity<'_>,
    lifetime: Duration,
) -> anyhow::Result<Option<Duration>> {
    let taken = session::lease::take_lease(
        &connection.client,
        &connection.namespace,
        &Holder::here(session.owner),
        session.name,
        session.target,
        lifetime,
    )
    .await;
    match taken {
        Ok(()) => Ok(Some(lifetime)),
        Err(err) if err.is_forbidden() => {
            let command = command_of(session.mode);
            eprintln!(
                "warning: {err}; without a lease, a session whose machine dies stays in the \
                 cluster until someone runs `{command} leave {}` (`{command} role` prints the \
                 Role kubedev needs)",
                session.name
            );
            Ok(None)
        }
        Err(err) => Err(anyhow::Error::from(err).context("taking the session's lease")),
    }
}

/// Fails, before anything changes, where a `--to-pod` port is taken on this machine.
fn check_local_ports(ports: &[PodPort]) -> anyhow::Result<()> {
    for port in ports {
        let address = (std::net::Ipv4Addr::LOCALHOST, port.port);
        let free = match port.transport {
            Transport::Tcp => std::net::TcpListener::bind(address).map(drop),
            Transport::Udp => std::net::UdpSocket::bind(address).map(drop),
        };
        free.map_err(|err| {
            anyhow::anyhow!(
                "--to-pod {port}: localhost:{} is taken on this machine ({err}); stop what \
                 listens there or forward another port",
                port.port
            )
        })?;
    }
    Ok(())
}

/// Ends run `owner`'s lease where its session never reached the cluster.
pub(super) async fn end_lease(connection: &Connection, owner: &str) {
    if let Err(err) =
        session::lease::end_lease(&connection.client, &connection.namespace, owner).await
    {
        eprintln!("warning: {err} (the next kubedev command in the namespace deletes it)");
    }
}

/// What the user asked for, as a session's plan.
fn plan_of(
    mode: Mode,
    workload: WorkloadRef,
    args: &SessionArgs,
    mode_args: ModeArgs,
    agent_image: String,
) -> anyhow::Result<Plan> {
    Ok(Plan {
        mode,
        name: args
            .life
            .name
            .clone()
            .unwrap_or_else(|| workload.name.clone()),
        workload,
        container: args.container.clone(),
        agent_image,
        ports: mode_args.ports,
        service: mode_args.service,
        address: mode_args.address.unwrap_or_else(|| "127.0.0.1".into()),
        filter: mode_args.filter,
        wiretap: mode_args.wiretap,
        timeout: args.life.timeout,
        owner: session::random_id()?,
    })
}

/// Changes the workload for `plan` and waits for its pods, showing how far it got.
async fn start(
    connection: &Connection,
    plan: &Plan,
    image_source: &ImageSource,
) -> anyhow::Result<Started> {
    let bar = spinner(format!(
        "adding the kubedev agent to {} in namespace {}",
        plan.workload, connection.namespace
    ));
    let started = session::start(
        &connection.client,
        &connection.namespace,
        plan,
        progress_on(&bar),
    )
    .await;
    started.map_err(|err| match err.cannot_pull_agent() {
        true => {
            let err = anyhow::Error::from(err);
            let hint = publish_hint(plan.mode, &plan.agent_image, image_source);
            anyhow::anyhow!("{err:#}\n{hint}")
        }
        false => err.into(),
    })
}

/// What to do when the nodes cannot pull the agent image.
pub(super) fn publish_hint(mode: Mode, image: &str, image_source: &ImageSource) -> String {
    let command = command_of(mode);
    let version = env!("CARGO_PKG_VERSION");
    format!(
        "The cluster's nodes cannot pull the agent image {image} ({image_source}). Publish it \
         to a registry they pull from and point kubedev at it:\n  \
         make push-agent REGISTRY=registry.example.com/team   # in kubedev's source tree; no Docker needed\n  \
         {command} config set-agent-image registry.example.com/team/kubedev-agent:{version}\n\
         or give --agent-image IMAGE (KUBEDEV_AGENT_IMAGE) for one run. A private registry also \
         needs an imagePullSecret on the pods' service account."
    )
}

/// How a foreground session's stay ended.
pub(super) enum Stayed {
    /// Ctrl-C, or `-- CMD` exited with this status: the session is to be ended.
    Done(ExitCode),
    /// The session is over without this run: tunneld says why.
    Lost(String),
    /// tunneld exited: the session's tunnels are gone.
    TunneldGone,
}

/// Keeps a foreground session until Ctrl-C, or runs `-- CMD` with its environment until
/// it exits, unless tunneld ends the session first.
/// Meanwhile, says when the links to the agents go and come back.
pub(super) async fn stay(
    command: &[String],
    live: &Live,
    signals: &mut StopSignals,
    hold: &mut Hold,
    links: Watched,
) -> anyhow::Result<Stayed> {
    let mut news = None;
    let stop = async {
        tokio::select! {
            () = signals.recv() => {}
            told = hold.news() => news = Some(told),
            () = report_links(links) => {}
        }
    };
    let code = if command.is_empty() {
        eprintln!("press Ctrl-C to end the session");
        stop.await;
        ExitCode::SUCCESS
    } else {
        run_command(
            command,
            &live.variables,
            live.command_resolver.as_deref(),
            stop,
        )
        .await?
    };
    Ok(match news {
        None | Some(HoldNews::Released) => Stayed::Done(code),
        Some(HoldNews::Ended(reason)) => Stayed::Lost(reason),
        Some(HoldNews::DaemonGone) => Stayed::TunneldGone,
    })
}

/// A session usable here.
pub(super) struct Live {
    pub(super) variables: BTreeMap<String, String>,
    pub(super) mounted: Option<Mount>,
    /// tunneld's resolver file for `-- CMD`, where the machine's was left as it is.
    pub(super) command_resolver: Option<PathBuf>,
}

/// Connects tunneld to the agents, fetches the environment, mounts the volumes and writes
/// the env files: what makes a started session usable here.
pub(super) async fn go_live(
    connection: &Connection,
    plan: &Plan,
    started: &Started,
    args: &SessionArgs,
) -> anyhow::Result<Live> {
    let proxy = ProxyChoices {
        also_proxy: args.life.also_proxy.clone(),
        never_proxy: args.life.never_proxy.clone(),
    };
    let joining = Joining {
        mode: plan.mode,
        name: &plan.name,
        agents: &started.agents,
        token: &started.token,
        forwards: &started.forwards,
        pods: usize::try_from(started.workload.replicas()).unwrap_or(1),
        timeout: plan.timeout,
    };
    let (mut variables, network) = join_tunneld(connection, &joining, proxy, &args.to_pod).await?;
    report(plan, started, &args.to_pod);
    let mounted = mount_volumes(connection, plan, started, args).await?;
    if let Some(mounted) = &mounted {
        eprintln!("volumes mounted at {}", mounted.dir().display());
        variables.insert(ROOT_ENV.into(), mounted.dir().display().to_string());
    }
    // An error drops `mounted`, which unmounts.
    write_env_files(args, &variables)?;
    let command_resolver = command_resolver(network);
    Ok(Live {
        variables,
        mounted,
        command_resolver,
    })
}

/// tunneld's resolver file for `-- CMD`, where the machine's resolver was left as it is.
pub(super) fn command_resolver(network: NetworkStatus) -> Option<PathBuf> {
    match network {
        NetworkStatus::Up {
            resolver: ResolverStatus::Unchanged { for_commands, .. },
            ..
        } => Some(for_commands),
        _ => None,
    }
}

/// Starts tunneld if needed and has it hold the session: see [`control::hold`].
pub(super) async fn hold_tunneld(
    connection: &Connection,
    cluster: &ClusterArgs,
    held: control::Held,
) -> anyhow::Result<Hold> {
    let socket = tunneld_socket(connection)?;
    control::ensure_running(
        &socket,
        tunneld_command(&socket, cluster)?,
        &socket.with_extension("log"),
    )
    .await?;
    Ok(control::hold(&socket, held).await?)
}

/// How often the pods are checked for a failing agent while tunneld links to them.
pub(super) const AGENT_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// A live session in the cluster, as tunneld is handed it.
pub(super) struct Joining<'a> {
    pub(super) mode: Mode,
    pub(super) name: &'a str,
    /// The label selector of its agent pods.
    pub(super) agents: &'a str,
    pub(super) token: &'a str,
    pub(super) forwards: &'a [Forward],
    /// How many agent pods to link to.
    pub(super) pods: usize,
    pub(super) timeout: Duration,
}

/// Hands the session to tunneld, waits for a link to every pod and fetches the app's
/// environment; returns it and the state of the cluster network.
pub(super) async fn join_tunneld(
    connection: &Connection,
    session: &Joining<'_>,
    proxy: ProxyChoices,
    to_pod: &[PodPort],
) -> anyhow::Result<(BTreeMap<String, String>, NetworkStatus)> {
    let socket = tunneld_socket(connection)?;
    let bar = spinner("connecting to the agents".into());
    control::request(
        &socket,
        &ControlRequest::AddSession {
            name: session.name.to_owned(),
            namespace: connection.namespace.clone(),
            agents: session.agents.to_owned(),
            token: session.token.to_owned(),
            forwards: session.forwards.to_vec(),
            proxy,
            to_pod: to_pod.to_vec(),
        },
    )
    .await?;
    let wanted = session.pods;
    let deadline = tokio::time::Instant::now() + session.timeout;
    let mut agents_checked = tokio::time::Instant::now();
    let status = loop {
        if agents_checked.elapsed() >= AGENT_CHECK_PERIOD {
            check_agents(&connection.client, &connection.namespace, session.agents).await?;
            agents_checked = tokio::time::Instant::now();
        }
        let status = tunneld_status(&socket).await?;
        let linked = status
            .sessions
            .iter()
            .find(|s| s.name == session.name)
            .map_or(0, |s| s.linked_pods.len());
        bar.set_message(format!(
            "connecting to the agents: {linked}/{wanted} linked"
        ));
        if linked >= wanted {
            break status;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "tunneld could not reach the agents within {:?}; see {}",
            session.timeout,
            socket.with_extension("log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    for note in network_notes(&status.network, command_of(session.mode)) {
        eprintln!("note: {note}");
    }
    match control::request(
        &socket,
        &ControlRequest::Environment {
            name: session.name.to_owned(),
        },
    )
    .await?
    {
        ControlReply::Environment { variables } => Ok((variables, status.network)),
        other => anyhow::bail!("unexpected answer from tunneld: {other:?}"),
    }
}

/// The variable that names where the volumes are mounted, for `-- CMD` and env files.
pub(super) const ROOT_ENV: &str = "KUBEDEV_ROOT";

/// Mounts the volumes as `--mount` says. Without the flag a failure is only reported: the
/// session is useful without them.
pub(super) async fn mount_volumes(
    connection: &Connection,
    plan: &Plan,
    started: &Started,
    args: &SessionArgs,
) -> anyhow::Result<Option<Mount>> {
    let choice = args.mount.clone().unwrap_or(MountChoice::Temporary);
    if choice == MountChoice::No {
        return Ok(None);
    }
    if !started.record.container_has_volumes() {
        if args.mount.is_some() {
            eprintln!(
                "note: container {} mounts no volume: nothing to mount",
                started.record.container
            );
        }
        return Ok(None);
    }
    let socket = tunneld_socket(connection)?;
    let read_only = plan.mode == Mode::Ingest;
    match mount::mount(&socket, &plan.name, &choice, read_only).await {
        Ok(Some(mounted)) => {
            if let Err(err) = mounted.raise_readahead() {
                eprintln!(
                    "note: reading the volumes sequentially is slower over distance: raising \
                     the mount's readahead needs root ({err})"
                );
            }
            Ok(Some(mounted))
        }
        Ok(None) => Ok(None),
        Err(err) if args.mount.is_none() => {
            let err = anyhow::Error::from(err);
            eprintln!("note: the volumes are not mounted: {err:#}");
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

pub(super) fn report(plan: &Plan, started: &Started, to_pod: &[PodPort]) {
    let what = match plan.mode {
        Mode::Intercept if plan.wiretap => "wiretapping",
        Mode::Intercept => "intercepting",
        Mode::Replace => "replacing",
        Mode::Ingest => "ingesting",
    };
    eprintln!(
        "{what} container {} of {} ({} pod{})",
        started.record.container,
        plan.workload,
        started.workload.replicas(),
        if started.workload.replicas() == 1 {
            ""
        } else {
            "s"
        }
    );
    for forward in &started.forwards {
        let only = forward
            .filter
            .as_ref()
            .map(describe_filter)
            .unwrap_or_default();
        let copies = if forward.wiretap {
            " (copies; the app answers every request)"
        } else {
            ""
        };
        eprintln!(
            "  port {} -> {}:{}{only}{copies}",
            forward.app_port, forward.local_host, forward.local_port
        );
    }
    for port in to_pod {
        eprintln!("  localhost:{port} -> the pod's localhost:{port}");
    }
}

pub(super) fn describe_filter(filter: &kubedev_protocol::HttpFilter) -> String {
    let mut parts: Vec<String> = filter
        .headers
        .iter()
        .map(|(name, value)| format!("header {name}: {value}"))
        .collect();
    if let Some(prefix) = &filter.path_prefix {
        parts.push(format!("path {prefix}*"));
    }
    format!(
        " (only HTTP requests with {}; the rest go to the app)",
        parts.join(", ")
    )
}

pub(super) fn write_env_files(
    args: &SessionArgs,
    variables: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if let Some(path) = &args.env_file {
        env::write_private(path, &env::format(variables, args.env_syntax))?;
        eprintln!("environment written to {}", path.display());
    }
    if let Some(path) = &args.env_json {
        env::write_private(path, &env::format(variables, EnvSyntax::Json))?;
        eprintln!("environment written to {}", path.display());
    }
    Ok(())
}

/// Ends a session: tunneld forgets it, and the workload gets its original back.
pub(super) async fn end_session(
    connection: &Connection,
    name: &str,
    workload: &WorkloadRef,
    timeout: Duration,
    hold: Option<Hold>,
) -> anyhow::Result<()> {
    forget_in_tunneld(connection, name).await;
    mount::unmount_session(name);
    let bar = spinner(format!("restoring {workload}"));
    let left = session::leave(
        &connection.client,
        &connection.namespace,
        workload,
        name,
        None,
        timeout,
        progress_on(&bar),
    )
    .await?;
    bar.finish_and_clear();
    // Only now: had this process died before, tunneld would have restored the workload.
    if let Some(hold) = hold
        && let Err(err) = hold.release().await
    {
        eprintln!("warning: tunneld: {err}");
    }
    eprintln!("{}", left.describe(name, workload));
    Ok(())
}
