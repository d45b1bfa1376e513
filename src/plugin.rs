//! What the three plugins share: the session flags, the `list`, `leave` and `status`
//! subcommands, and running a session in the foreground (until Ctrl-C or until `-- CMD`
//! exits) or detached (until `leave`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::cidr::{self, Cidr};
use crate::cluster::{ClusterArgs, Connection};
use crate::control::{
    self, ControlError, ControlReply, ControlRequest, DaemonStatus, Hold, NetworkStatus,
    ProxyChoices, RangeState, RangeStatus, ResolverStatus,
};
use crate::env::{self, EnvSyntax};
use crate::inject::Mode;
use crate::mount::{self, Mount, MountChoice};
use crate::session::{self, Plan, PortMapping, Record, Started};
use crate::workload::{Progress, Workload, WorkloadKind, WorkloadRef, check_agents};

/// The agent image of this release.
pub const DEFAULT_AGENT_IMAGE: &str =
    concat!("ghcr.io/kubedev/kubedev-agent:", env!("CARGO_PKG_VERSION"));

/// Flags every mode takes.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// The app container (needed when the pods have several).
    #[arg(short = 'c', long)]
    pub container: Option<String>,

    /// Name of the session (default: the workload's name).
    #[arg(long)]
    pub name: Option<String>,

    /// Write the container's environment to this file (mode 0600), in --env-syntax.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,

    /// Write the container's environment to this file (mode 0600) as a JSON object.
    #[arg(long, value_name = "FILE")]
    pub env_json: Option<PathBuf>,

    /// The syntax of --env-file.
    #[arg(long, value_enum, default_value_t = EnvSyntax::Docker)]
    pub env_syntax: EnvSyntax,

    /// Where to mount the container's volumes: DIR (DIR:ro for read-only), or false
    /// (default: a new temporary directory, printed). Needs sshfs.
    #[arg(long, value_name = "DIR|false")]
    pub mount: Option<MountChoice>,

    /// The agent image.
    #[arg(long, env = "KUBEDEV_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,

    /// Return once the session is live; it lasts until `leave`.
    #[arg(long, conflicts_with = "command")]
    pub detach: bool,

    /// How long to wait for the pods to be ready, e.g. 90s or 5m.
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Route these ranges to the cluster even where this machine has a route of its own
    /// for them (a VPN's, a bridge's). Comma-separated or repeated; kept by tunneld for
    /// the kube context until it exits.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = cidr::parse)]
    pub also_proxy: Vec<Cidr>,

    /// Never route these ranges to the cluster; wins over --also-proxy. Comma-separated or
    /// repeated; kept by tunneld for the kube context until it exits.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = cidr::parse)]
    pub never_proxy: Vec<Cidr>,

    /// Run this command with the container's environment; the session ends when it exits,
    /// with its exit status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `list`, `leave` and `status`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Manage {
    /// List the kubedev sessions in the namespace.
    List {
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
    /// End a session (or all of them in the namespace) and restore its workload.
    Leave {
        /// The session's name, as `list` shows it.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        all: bool,
        #[arg(long, default_value = "3m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Show tunneld's state: the cluster network on this machine and the linked agents.
    Status {
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: use e.g. 90s or 5m"))?;
    match unit {
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("invalid duration {text:?}: use e.g. 90s or 5m")),
    }
}

/// A mode's own part of a session request.
#[derive(Debug, Clone, Default)]
pub struct ModeArgs {
    pub ports: Vec<PortMapping>,
    pub service: Option<String>,
    pub address: Option<String>,
    pub filter: Option<crate::protocol::HttpFilter>,
}

/// Runs a plugin: a subcommand, or a session on `workload`.
pub fn main(
    mode: Mode,
    cluster: ClusterArgs,
    manage: Option<Manage>,
    workload: Option<WorkloadRef>,
    args: SessionArgs,
    mode_args: ModeArgs,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return crate::cli::exit_status(Err(err.into())),
    };
    runtime.block_on(async move {
        let result = match (manage, workload) {
            (Some(manage), _) => run_manage(mode, &cluster, manage)
                .await
                .map(|()| ExitCode::SUCCESS),
            (None, Some(workload)) => run_session(mode, &cluster, workload, args, mode_args).await,
            (None, None) => Err(anyhow::anyhow!("say which workload (see --help)")),
        };
        result.unwrap_or_else(|err| {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        })
    })
}

/// The command of a mode, for messages (`kubectl intercept`).
fn command_of(mode: Mode) -> &'static str {
    match mode {
        Mode::Intercept => "kubectl intercept",
        Mode::Replace => "kubectl replace-container",
        Mode::Ingest => "kubectl ingest",
    }
}

async fn run_session(
    mode: Mode,
    cluster: &ClusterArgs,
    workload: WorkloadRef,
    args: SessionArgs,
    mode_args: ModeArgs,
) -> anyhow::Result<ExitCode> {
    let connection = cluster.connect().await?;
    let plan = Plan {
        mode,
        name: args.name.clone().unwrap_or_else(|| workload.name.clone()),
        workload,
        container: args.container.clone(),
        agent_image: args.agent_image.clone(),
        ports: mode_args.ports,
        service: mode_args.service,
        address: mode_args.address.unwrap_or_else(|| "127.0.0.1".into()),
        filter: mode_args.filter,
        timeout: args.timeout,
        owner: session::random_id()?,
    };
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
    // From before the first change until the session ends, tunneld restores the workload
    // if this process dies (and only this run's session: see `Plan::owner`).
    let hold = hold_tunneld(&connection, &plan, cluster).await?;
    let bar = spinner(format!(
        "adding the kubedev agent to {} in namespace {}",
        plan.workload, connection.namespace
    ));
    let starting = session::start(
        &connection.client,
        &connection.namespace,
        &plan,
        progress_on(&bar),
    );
    let started = tokio::select! {
        started = starting => match started {
            Ok(started) => started,
            Err(err) => {
                // Nothing is left to restore: `start` rolls back what it changed.
                hold.release().await?;
                return Err(err);
            }
        },
        () = signals.recv() => {
            bar.finish_and_clear();
            eprintln!("stopped while starting");
            end(hold).await?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    bar.finish_and_clear();

    let live = tokio::select! {
        live = go_live(&connection, &plan, &started, &args) => live.map(Some),
        () = signals.recv() => Ok(None),
    };
    let Live {
        variables,
        mounted,
        command_resolver,
    } = match live {
        Ok(Some(live)) => live,
        stopped_or_failed => {
            end(hold).await?;
            return stopped_or_failed.map(|_| ExitCode::SUCCESS);
        }
    };
    if args.detach {
        // The session lives in tunneld until `leave`, and the mount with sshfs.
        hold.release().await?;
        std::mem::forget(mounted);
        eprintln!(
            "session {:?} is live; end it with `{} leave {}`",
            plan.name,
            command_of(mode),
            plan.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let code = if args.command.is_empty() {
        eprintln!("press Ctrl-C to end the session");
        signals.recv().await;
        ExitCode::SUCCESS
    } else {
        run_command(
            &args.command,
            &variables,
            command_resolver.as_deref(),
            &mut signals,
        )
        .await?
    };
    drop(mounted);
    end(hold).await?;
    Ok(code)
}

/// A session usable here.
struct Live {
    variables: BTreeMap<String, String>,
    mounted: Option<Mount>,
    /// tunneld's resolver file for `-- CMD`, where the machine's was left as it is.
    command_resolver: Option<PathBuf>,
}

/// Connects tunneld to the agents, fetches the environment, mounts the volumes and writes
/// the env files: what makes a started session usable here.
async fn go_live(
    connection: &Connection,
    plan: &Plan,
    started: &Started,
    args: &SessionArgs,
) -> anyhow::Result<Live> {
    let proxy = ProxyChoices {
        also_proxy: args.also_proxy.clone(),
        never_proxy: args.never_proxy.clone(),
    };
    let (mut variables, network) = join_tunneld(connection, plan, started, proxy).await?;
    report(plan, started);
    let mounted = mount_volumes(connection, plan, started, args).await?;
    if let Some(mounted) = &mounted {
        eprintln!("volumes mounted at {}", mounted.dir().display());
        variables.insert(ROOT_ENV.into(), mounted.dir().display().to_string());
    }
    // An error drops `mounted`, which unmounts.
    write_env_files(args, &variables)?;
    let command_resolver = match network {
        NetworkStatus::Up {
            resolver: ResolverStatus::Unchanged { for_commands, .. },
            ..
        } => Some(for_commands),
        _ => None,
    };
    Ok(Live {
        variables,
        mounted,
        command_resolver,
    })
}

/// Starts tunneld if needed and has it hold the session: see [`control::hold`].
async fn hold_tunneld(
    connection: &Connection,
    plan: &Plan,
    cluster: &ClusterArgs,
) -> anyhow::Result<Hold> {
    let socket = tunneld_socket(connection)?;
    control::ensure_running(
        &socket,
        tunneld_command(&socket, cluster)?,
        &socket.with_extension("log"),
    )
    .await?;
    let held = control::Held {
        name: plan.name.clone(),
        owner: plan.owner.clone(),
        namespace: connection.namespace.clone(),
        workload: plan.workload.to_string(),
        timeout_secs: plan.timeout.as_secs(),
    };
    Ok(control::hold(&socket, held).await?)
}

/// How often the pods are checked for a failing agent while tunneld links to them.
const AGENT_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Hands the session to tunneld, waits for a link to every pod and fetches the app's
/// environment; returns it and the state of the cluster network.
async fn join_tunneld(
    connection: &Connection,
    plan: &Plan,
    started: &Started,
    proxy: ProxyChoices,
) -> anyhow::Result<(BTreeMap<String, String>, NetworkStatus)> {
    let socket = tunneld_socket(connection)?;
    let bar = spinner("connecting to the agents".into());
    control::request(
        &socket,
        &ControlRequest::AddSession {
            name: plan.name.clone(),
            namespace: connection.namespace.clone(),
            agents: started.agents.clone(),
            token: started.token.clone(),
            forwards: started.forwards.clone(),
            proxy,
        },
    )
    .await?;
    let wanted = usize::try_from(started.workload.replicas()).unwrap_or(1);
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let mut agents_checked = tokio::time::Instant::now();
    let status = loop {
        if agents_checked.elapsed() >= AGENT_CHECK_PERIOD {
            check_agents(&connection.client, &connection.namespace, &started.agents).await?;
            agents_checked = tokio::time::Instant::now();
        }
        let status = tunneld_status(&socket).await?;
        let linked = status
            .sessions
            .iter()
            .find(|s| s.name == plan.name)
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
            plan.timeout,
            socket.with_extension("log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    for note in network_notes(&status.network, command_of(plan.mode)) {
        eprintln!("note: {note}");
    }
    match control::request(
        &socket,
        &ControlRequest::Environment {
            name: plan.name.clone(),
        },
    )
    .await?
    {
        ControlReply::Environment { variables } => Ok((variables, status.network)),
        other => anyhow::bail!("unexpected answer from tunneld: {other:?}"),
    }
}

/// The variable that names where the volumes are mounted, for `-- CMD` and env files.
const ROOT_ENV: &str = "KUBEDEV_ROOT";

/// Mounts the volumes as `--mount` says. Without the flag a failure is only reported: the
/// session is useful without them.
async fn mount_volumes(
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
        Ok(mounted) => Ok(mounted),
        Err(err) if args.mount.is_none() => {
            eprintln!("note: the volumes are not mounted: {err:#}");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

fn report(plan: &Plan, started: &Started) {
    let what = match plan.mode {
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
        eprintln!(
            "  port {} -> {}:{}{only}",
            forward.app_port, forward.local_host, forward.local_port
        );
    }
}

fn describe_filter(filter: &crate::protocol::HttpFilter) -> String {
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

fn write_env_files(args: &SessionArgs, variables: &BTreeMap<String, String>) -> anyhow::Result<()> {
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

/// Runs `command` with the app's environment on top of ours; its exit status becomes ours.
/// A stop signal to the plugin is passed on to it.
/// Runs the command with the environment, seeing `resolver` (if given) as its
/// /etc/resolv.conf, until it exits or a stop signal comes.
async fn run_command(
    command: &[String],
    variables: &BTreeMap<String, String>,
    resolver: Option<&std::path::Path>,
    signals: &mut StopSignals,
) -> anyhow::Result<ExitCode> {
    let (program, arguments) = command.split_first().context("empty command")?;
    let mut to_run = tokio::process::Command::new(program);
    to_run.args(arguments).envs(variables);
    let spawned = match resolver {
        Some(resolver) => crate::resolver_view::spawn(&mut to_run, resolver).or_else(|err| {
            eprintln!(
                "note: {program} runs without the cluster's names ({err}: giving it \
                 {} as /etc/resolv.conf needs root)",
                resolver.display()
            );
            to_run.spawn()
        }),
        None => to_run.spawn(),
    };
    let mut child = spawned.with_context(|| format!("cannot run {program}"))?;
    let status = tokio::select! {
        status = child.wait() => status?,
        () = signals.recv() => {
            if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            child.wait().await?
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The signals that end a foreground session: Ctrl-C, SIGTERM, and SIGHUP (its terminal
/// closed). Once listened for they no longer kill the process, and one that arrives before
/// [`StopSignals::recv`] is asked is kept for it.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
        }
    }
}

/// Ends a session: tunneld forgets it, and the workload gets its original back.
async fn end_session(
    connection: &Connection,
    name: &str,
    workload: &WorkloadRef,
    timeout: Duration,
    hold: Option<Hold>,
) -> anyhow::Result<()> {
    if let Ok(socket) = tunneld_socket(connection) {
        match control::request(
            &socket,
            &ControlRequest::RemoveSession { name: name.into() },
        )
        .await
        {
            Ok(_) | Err(ControlError::NotRunning(_)) => {}
            Err(err) => eprintln!("warning: {err}"),
        }
    }
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
    match left {
        session::Left::Restored => eprintln!("{workload} restored"),
        session::Left::NotOwned => eprintln!("session {name:?} is not this run's: left as it is"),
        session::Left::OthersRemain(count) => eprintln!(
            "session {name:?} ended; {count} other intercept{} of {workload} remain{}",
            if count == 1 { "" } else { "s" },
            if count == 1 { "s" } else { "" }
        ),
    }
    Ok(())
}

/// One row of `list`.
#[derive(Debug, Serialize)]
struct Listed {
    name: String,
    mode: Mode,
    workload: String,
    container: String,
    namespace: String,
    linked_pods: Vec<String>,
}

async fn sessions_in(connection: &Connection) -> anyhow::Result<Vec<(Workload, Record)>> {
    let mut found = Vec::new();
    for kind in [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::ReplicaSet,
    ] {
        for workload in Workload::list(&connection.client, &connection.namespace, kind).await? {
            if workload.is_controlled() {
                continue;
            }
            if let Some(record) = session::record_of(&workload)? {
                found.push((workload, record));
            }
        }
    }
    Ok(found)
}

async fn run_manage(mode: Mode, cluster: &ClusterArgs, manage: Manage) -> anyhow::Result<()> {
    let connection = cluster.connect().await?;
    let socket = tunneld_socket(&connection)?;
    match manage {
        Manage::List { output } => {
            let daemon = tunneld_status(&socket).await.ok();
            let sessions = sessions_in(&connection).await?;
            let rows: Vec<Listed> = sessions
                .iter()
                .flat_map(|(workload, record)| {
                    record
                        .sessions()
                        .map(move |(name, _)| (workload, record, name))
                })
                .map(|(workload, record, name)| Listed {
                    linked_pods: daemon
                        .iter()
                        .flat_map(|d| d.sessions.iter())
                        .find(|s| s.name == name && s.namespace == connection.namespace)
                        .map(|s| s.linked_pods.clone())
                        .unwrap_or_default(),
                    name: name.to_owned(),
                    mode: record.mode,
                    workload: workload.reference.to_string(),
                    container: record.container.clone(),
                    namespace: connection.namespace.clone(),
                })
                .collect();
            match output {
                Some(output) => print!("{}", render(&rows, output)?),
                None if rows.is_empty() => {
                    eprintln!("no kubedev sessions in namespace {}", connection.namespace);
                }
                None => print!("{}", table(&rows)),
            }
        }
        Manage::Leave { name, all, timeout } => {
            let sessions = sessions_in(&connection).await?;
            let chosen: Vec<(&Workload, String)> = sessions
                .iter()
                .flat_map(|(workload, record)| {
                    record
                        .sessions()
                        .map(move |(session, _)| (workload, session.to_owned()))
                })
                .filter(|(_, session)| all || Some(session) == name.as_ref())
                .collect();
            if chosen.is_empty() {
                if all {
                    eprintln!("no kubedev sessions in namespace {}", connection.namespace);
                    return Ok(());
                }
                anyhow::bail!(
                    "no session {:?} in namespace {} (see `{} list`)",
                    name.unwrap_or_default(),
                    connection.namespace,
                    command_of(mode)
                );
            }
            for (workload, session) in chosen {
                end_session(&connection, &session, &workload.reference, timeout, None).await?;
            }
        }
        Manage::Status { output } => {
            let status = match tunneld_status(&socket).await {
                Ok(status) => Some(status),
                Err(ControlError::NotRunning(_)) => None,
                Err(err) => return Err(err.into()),
            };
            match output {
                Some(output) => print!("{}", render(&status, output)?),
                None => print!("{}", describe_status(status.as_ref())),
            }
        }
    }
    Ok(())
}

fn render<T: Serialize>(value: &T, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_saphyr::to_string(value)?,
    })
}

fn table(rows: &[Listed]) -> String {
    let mut lines = vec![[
        "NAME".to_owned(),
        "MODE".to_owned(),
        "WORKLOAD".to_owned(),
        "CONTAINER".to_owned(),
        "LINKED PODS".to_owned(),
    ]];
    for row in rows {
        lines.push([
            row.name.clone(),
            row.mode.to_string(),
            row.workload.clone(),
            row.container.clone(),
            row.linked_pods.len().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    lines
        .iter()
        .map(|line| {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("   ").trim_end().to_owned() + "\n"
        })
        .collect()
}

/// What the user should know about the cluster network once a session is live: that it
/// is missing, or that part of it was left to this machine or excluded (one line).
fn network_notes(network: &NetworkStatus, command: &str) -> Vec<String> {
    match network {
        NetworkStatus::Off => Vec::new(),
        NetworkStatus::Unavailable { reason } => vec![format!(
            "the cluster's network (service names, pod and service IPs) is not available on \
             this machine: {reason}. Intercepted traffic and the environment work without it."
        )],
        NetworkStatus::Up {
            ranges,
            resolver,
            dns,
            ..
        } => {
            let mut notes = Vec::new();
            let skipped: Vec<String> = ranges
                .iter()
                .flat_map(|range| match range.state {
                    RangeState::Routed => range
                        .except
                        .iter()
                        .map(|part| format!("{} ({})", part.range, part.reason))
                        .collect(),
                    RangeState::Machine => vec![format!(
                        "{} (this machine's route {})",
                        range.range,
                        range.via.as_deref().unwrap_or_default()
                    )],
                    RangeState::Excluded => vec![format!("{} ({})", range.range, range.reason)],
                })
                .collect();
            if !skipped.is_empty() {
                notes.push(format!(
                    "not routed to the cluster: {}; see `{command} status`, --also-proxy and \
                     --never-proxy",
                    skipped.join(", ")
                ));
            }
            if let ResolverStatus::Unchanged { reason, .. } = resolver {
                notes.push(format!(
                    "this machine's DNS settings are left as they are ({reason}); \
                     cluster names are answered at {dns}, and `-- CMD` gets them"
                ));
            }
            notes
        }
    }
}

fn describe_range(range: &RangeStatus) -> String {
    let cidr = range.range.to_string();
    let mut line = match range.state {
        RangeState::Routed => format!("  {cidr:<18} routed: {}\n", range.reason),
        RangeState::Machine => format!(
            "  {cidr:<18} left to this machine's route {}\n",
            range.via.as_deref().unwrap_or_default()
        ),
        RangeState::Excluded => format!("  {cidr:<18} not routed: {}\n", range.reason),
    };
    for part in &range.except {
        line += &format!("    except {}: {}\n", part.range, part.reason);
    }
    line
}

fn describe_status(status: Option<&DaemonStatus>) -> String {
    let Some(status) = status else {
        return "tunneld is not running (no session on this machine for this context)\n".into();
    };
    let mut out = format!("tunneld: running (pid {})\n", status.pid);
    out += &match &status.network {
        NetworkStatus::Off => "cluster network: off\n".to_owned(),
        NetworkStatus::Up {
            routes,
            ranges,
            dns,
            resolver,
        } => {
            let mut text = format!("cluster network: up, DNS {dns} (through {resolver})\n");
            text.extend(ranges.iter().map(describe_range));
            let routes: Vec<String> = routes.iter().map(ToString::to_string).collect();
            text + &format!("  routes into the tunnel: {}\n", routes.join(" "))
        }
        NetworkStatus::Unavailable { reason } => {
            format!("cluster network: unavailable: {reason}\n")
        }
    };
    for session in &status.sessions {
        out += &format!(
            "session {} (namespace {}): {} linked pod{}\n",
            session.name,
            session.namespace,
            session.linked_pods.len(),
            if session.linked_pods.len() == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    out
}

async fn tunneld_status(socket: &std::path::Path) -> Result<DaemonStatus, ControlError> {
    match control::request(socket, &ControlRequest::Status).await? {
        ControlReply::Status(status) => Ok(status),
        other => Err(ControlError::Failed(format!(
            "unexpected answer: {other:?}"
        ))),
    }
}

/// Where this user's tunnelds keep their sockets and state: `$KUBEDEV_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/kubedev`, else a directory in /tmp of this user's own.
fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEDEV_RUNTIME_DIR") {
        return dir.into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("kubedev"),
        None => std::env::temp_dir().join(format!("kubedev-{}", nix::unistd::getuid())),
    }
}

fn tunneld_socket(connection: &Connection) -> anyhow::Result<PathBuf> {
    let dir = runtime_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let context = connection.context.as_deref().unwrap_or("default");
    Ok(control::socket_path(&dir, context))
}

/// The tunneld to start: `$KUBEDEV_TUNNELD`, else the one beside this plugin, else PATH's.
fn tunneld_command(
    socket: &std::path::Path,
    cluster: &ClusterArgs,
) -> anyhow::Result<std::process::Command> {
    let binary = std::env::var_os("KUBEDEV_TUNNELD")
        .map(PathBuf::from)
        .or_else(|| {
            let beside = std::env::current_exe().ok()?.with_file_name("tunneld");
            beside.exists().then_some(beside)
        })
        .unwrap_or_else(|| PathBuf::from("tunneld"));
    let mut command = std::process::Command::new(binary);
    command
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(socket.with_extension("state"));
    if let Some(kubeconfig) = &cluster.kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    if let Some(context) = &cluster.context {
        command.arg("--context").arg(context);
    }
    Ok(command)
}

fn spinner(message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(message);
    bar
}

fn progress_on(bar: &indicatif::ProgressBar) -> impl FnMut(&Progress) + use<> {
    let bar = bar.clone();
    let base = bar.message();
    move |progress| bar.set_message(format!("{base}: {progress}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_timeouts() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn list_is_a_table_with_aligned_columns() {
        let rows = [Listed {
            name: "web".into(),
            mode: Mode::Intercept,
            workload: "deployment/web".into(),
            container: "app".into(),
            namespace: "shop".into(),
            linked_pods: vec!["web-1".into()],
        }];
        assert_eq!(
            table(&rows),
            "NAME   MODE        WORKLOAD         CONTAINER   LINKED PODS\n\
             web    intercept   deployment/web   app         1\n"
        );
        let json = render(&rows, Output::Json).expect("json");
        assert!(json.contains("\"mode\": \"intercept\""), "{json}");
        let yaml = render(&rows, Output::Yaml).expect("yaml");
        assert!(yaml.contains("mode: intercept"), "{yaml}");
    }

    #[test]
    fn the_network_is_described_range_by_range_and_skips_are_noted() {
        let range = |text| cidr::parse(text).expect("range");
        let network = NetworkStatus::Up {
            routes: vec![range("10.96.0.0/17"), range("10.96.128.0/17")],
            ranges: vec![
                RangeStatus {
                    range: range("10.96.0.0/16"),
                    state: RangeState::Routed,
                    reason: "--also-proxy".into(),
                    via: None,
                    except: vec![control::RangePart {
                        range: range("10.96.0.1/32"),
                        reason: "the API server's address".into(),
                    }],
                },
                RangeStatus {
                    range: range("10.244.0.0/24"),
                    state: RangeState::Machine,
                    reason: "this machine already reaches it through a route of its own".into(),
                    via: Some("10.244.0.0/24 dev cni0".into()),
                    except: Vec::new(),
                },
            ],
            dns: "198.18.0.53".into(),
            resolver: ResolverStatus::Unchanged {
                reason: "the kubelet on this machine (pid 7) hands /etc/resolv.conf to its pods"
                    .into(),
                for_commands: "/run/kubedev/resolv.conf.for-commands".into(),
            },
        };
        let status = DaemonStatus {
            pid: 42,
            network: network.clone(),
            sessions: Vec::new(),
        };
        assert_eq!(
            describe_status(Some(&status)),
            "tunneld: running (pid 42)\n\
             cluster network: up, DNS 198.18.0.53 (through none: the kubelet on this machine \
             (pid 7) hands /etc/resolv.conf to its pods)\n  \
             10.96.0.0/16       routed: --also-proxy\n    \
             except 10.96.0.1/32: the API server's address\n  \
             10.244.0.0/24      left to this machine's route 10.244.0.0/24 dev cni0\n  \
             routes into the tunnel: 10.96.0.0/17 10.96.128.0/17\n"
        );
        let notes = network_notes(&network, "kubectl intercept");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "not routed to the cluster: 10.96.0.1/32 (the API server's address), \
                 10.244.0.0/24 (this machine's route 10.244.0.0/24 dev cni0)"
            ),
            "{}",
            notes[0]
        );
        assert!(notes[1].contains("cluster names are answered at 198.18.0.53"));
        let json = render(&status, Output::Json).expect("json");
        assert!(json.contains("\"state\": \"machine\""), "{json}");
        assert!(
            json.contains("\"via\": \"10.244.0.0/24 dev cni0\""),
            "{json}"
        );
    }
}
