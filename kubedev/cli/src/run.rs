//! A session on a workload: the plan the user asked for, the workload changed for it,
//! made usable here (tunneld, environment, volumes, env files), and the workload restored
//! when it ends (see `life` for the rest of its life).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::args::{ModeArgs, SessionArgs};
use super::config::{self, ImageSource};
use super::life::{
    Joining, Life, Live, Session, forget_in_tunneld, join_tunneld, live_through,
    release_after_the_end,
};
use super::notes;
use super::output::{progress_on, progress_spinner, report_started, spinner};
use super::pinning;
use super::reclaim::reclaim_expired;
use super::together::Member;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::{AgentOwner, PodPort, SessionKey};
use kubedev::env::{self, EnvSyntax};
use kubedev::mode::Mode;
use kubedev::mount::{self, Mount, MountChoice};
use kubedev::session::{self, Plan, Started};
use kubedev::tunneld::{self, Hold};
use kubedev::workload::{WorkloadName, WorkloadRef};
use kubedev_protocol::Transport;

pub(super) async fn run_session(
    mode: Mode,
    cluster: &ClusterArgs,
    workload: WorkloadName,
    args: SessionArgs,
    mode_args: ModeArgs,
    together: Option<Member<'_>>,
) -> anyhow::Result<ExitCode> {
    super::command::resolve_program(&args.life.command)?;
    let connection = cluster.connect().await?;
    let workload = workload
        .find(&connection.client, &connection.namespace)
        .await?;
    let context = connection.context.as_deref();
    let (agent_image, image_source) =
        config::agent_image(args.life.agent_image.as_deref(), context)?;
    let agent_image = pinning::image_to_run(agent_image, &image_source, context);
    let plan = plan_of(mode, workload, &args, mode_args, agent_image)?;
    check_local_ports(&args.to_pod)?;
    check_env_file_dirs(args.env_file.iter().chain(&args.env_json))?;
    if let Some(MountChoice::Dir { path, .. }) = &args.mount {
        mount::check_given_dir(path)?;
    }
    reclaim_expired(&connection, &plan.owner, plan.timeout).await;
    let life = Life {
        connection: &connection,
        cluster,
        mode,
        name: &plan.name,
        owner: &plan.owner,
        workload: Some(plan.workload.clone()),
        target: plan.workload.to_string(),
        args: &args.life,
        together,
    };
    let session = OnWorkload {
        connection: &connection,
        plan: &plan,
        image_source: &image_source,
        args: &args,
    };
    live_through(&life, &session).await
}

/// A session on a workload, as its life sees it.
struct OnWorkload<'a> {
    connection: &'a Connection,
    plan: &'a Plan,
    image_source: &'a ImageSource,
    args: &'a SessionArgs,
}

impl Session for OnWorkload<'_> {
    type Started = Started;

    async fn start(&self) -> anyhow::Result<Started> {
        let started = start(self.connection, self.plan, self.image_source).await?;
        let asked = (self.plan, self.image_source);
        pinning::pin_after_start(self.connection, asked, &started).await;
        Ok(started)
    }

    async fn go_live(&self, started: &Started) -> anyhow::Result<Live> {
        go_live(self.connection, self.plan, started, self.args).await
    }

    async fn end(&self, hold: Option<Hold>) -> anyhow::Result<()> {
        let plan = self.plan;
        end_session(
            self.connection,
            &plan.name,
            &plan.workload,
            plan.timeout,
            hold,
        )
        .await
    }

    fn pods(started: &Started) -> usize {
        usize::try_from(started.workload.replicas()).unwrap_or(1)
    }
}

/// Fails, before anything changes, where a `--to-pod` port is taken on this machine.
fn check_local_ports(ports: &[PodPort]) -> anyhow::Result<()> {
    for port in ports {
        for loopback in PodPort::LOCAL_ADDRESSES {
            let address = std::net::SocketAddr::from((loopback, port.port));
            let free = match port.transport {
                Transport::Tcp => std::net::TcpListener::bind(address).map(drop),
                Transport::Udp => std::net::UdpSocket::bind(address).map(drop),
            };
            match free {
                Err(err) if !PodPort::no_such_address(loopback, &err) => anyhow::bail!(
                    "--to-pod {port}: {address} is taken on this machine ({err}); stop what \
                     listens there or forward another port"
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Fails, before anything changes, where an env file's directory does not exist (the file
/// is written only once the session is live, after the workload changed).
fn check_env_file_dirs<'a>(files: impl Iterator<Item = &'a PathBuf>) -> anyhow::Result<()> {
    for file in files {
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        anyhow::ensure!(
            dir.is_dir(),
            "cannot write {}: there is no directory {}",
            file.display(),
            dir.display()
        );
        anyhow::ensure!(
            !file.is_dir(),
            "cannot write {}: it is a directory",
            file.display()
        );
    }
    Ok(())
}

/// What the user asked for, as a session's plan.
fn plan_of(
    mode: Mode,
    workload: WorkloadRef,
    args: &SessionArgs,
    mode_args: ModeArgs,
    agent_image: String,
) -> anyhow::Result<Plan> {
    let agent_resources =
        kubedev::inject::agent_resources(&args.life.agent_requests, &args.life.agent_limits);
    kubedev::inject::check_agent_resources(&agent_resources).map_err(anyhow::Error::msg)?;
    if mode_args.tls_secret.is_some() {
        check_tls_choice(&mode_args)?;
    }
    Ok(Plan {
        mode,
        name: args
            .life
            .name
            .clone()
            .unwrap_or_else(|| session::naming::default_name(&workload.name)),
        workload,
        container: args.container.clone(),
        agent_image,
        ports: mode_args.ports,
        service: mode_args.service,
        address: mode_args.address.unwrap_or_else(|| "127.0.0.1".into()),
        filter: mode_args.filter,
        wiretap: mode_args.wiretap,
        tls_secret: mode_args.tls_secret,
        timeout: args.life.timeout,
        owner: session::random_id()?,
        agent_resources,
        pause_flux: args.life.pause_flux,
    })
}

/// Refuses `--tls-secret` where it cannot work as asked.
fn check_tls_choice(mode_args: &ModeArgs) -> anyhow::Result<()> {
    if mode_args.filter.is_none() || mode_args.wiretap {
        anyhow::bail!(
            "--tls-secret is for intercepts with --http-header or --http-path-prefix, without \
             --wiretap: unfiltered, each connection comes here whole, TLS and all, for the \
             local server to terminate"
        );
    }
    if mode_args.ports.len() > 1 {
        anyhow::bail!(
            "--tls-secret terminates TLS on the one port the intercept takes: give one --port"
        );
    }
    let address = mode_args.address.as_deref().unwrap_or("127.0.0.1");
    if !is_loopback(address) {
        anyhow::bail!(
            "--tls-secret sends the requests on to this machine's loopback only, where the \
             agent need not check the certificate of your server (--address {address})"
        );
    }
    Ok(())
}

/// Whether `address` is this machine's loopback (`localhost`, 127.0.0.0/8, ::1).
pub(super) fn is_loopback(address: &str) -> bool {
    address == "localhost"
        || address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Changes the workload for `plan` and waits for its pods, showing how far it got.
async fn start(
    connection: &Connection,
    plan: &Plan,
    image_source: &ImageSource,
) -> anyhow::Result<Started> {
    notes::before_start(connection, plan).await;
    let bar = progress_spinner(format!(
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
    started.map_err(|err| {
        let hint = if err.cannot_pull_agent() {
            config::publish_hint(plan.mode, &plan.agent_image, image_source)
        } else if err.quota_refused_resources() {
            quota_hint(&plan.agent_resources, &connection.namespace)
        } else {
            return err.into();
        };
        anyhow::anyhow!("{:#}\n{hint}", anyhow::Error::from(err))
    })
}

/// What to do when a ResourceQuota refuses the agent's pods: what the agent asks for now,
/// and the flags that change it.
fn quota_hint(resources: &ResourceRequirements, namespace: &str) -> String {
    let listed = |list: &Option<BTreeMap<String, Quantity>>| match list {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|(name, value)| format!("{name}={}", value.0))
            .collect::<Vec<_>>()
            .join(","),
        _ => "nothing".to_owned(),
    };
    format!(
        "The agent container requests {} and is limited to {} in each pod. Give it what \
         the namespace's quota leaves room for, or the limits it requires, with \
         --agent-requests and --agent-limits (e.g. --agent-limits cpu=100m,memory=128Mi); \
         `kubectl describe resourcequota -n {namespace}` shows the quota.",
        listed(&resources.requests),
        listed(&resources.limits)
    )
}

/// Connects tunneld to the agents, fetches the environment, mounts the volumes and writes
/// the env files: what makes a started session usable here.
async fn go_live(
    connection: &Connection,
    plan: &Plan,
    started: &Started,
    args: &SessionArgs,
) -> anyhow::Result<Live> {
    let proxy = args.life.proxy_choices();
    let joining = Joining {
        mode: plan.mode,
        name: &plan.name,
        agents: &started.agents,
        token: &started.token,
        forwards: &started.forwards,
        owner: AgentOwner::Workload {
            workload: plan.workload.clone(),
        },
        pods: usize::try_from(started.workload.replicas()).unwrap_or(1),
        timeout: plan.timeout,
    };
    let (mut variables, command_network) =
        join_tunneld(connection, &joining, proxy, &args.to_pod).await?;
    report_started(plan, started, &args.to_pod);
    if args.life.command.is_empty() {
        notes::note_idle_local_ports(plan.mode, &started.forwards).await;
    }
    let mounted = mount_volumes(connection, plan, started, args).await?;
    // Only kubedev says where the volumes are: never a value of the container's own.
    variables.remove(ROOT_ENV);
    if let Some(mounted) = &mounted {
        eprintln!("volumes mounted at {}", mounted.dir().display());
        variables.insert(ROOT_ENV.into(), mounted.dir().display().to_string());
    }
    // An error drops `mounted`, which unmounts.
    write_env_files(args, &variables)?;
    Ok(Live {
        variables,
        mounted,
        command_network,
    })
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
    let socket = tunneld::socket_for(connection)?;
    let read_only = plan.mode == Mode::Ingest;
    match mount::mount(
        &socket,
        &SessionKey::new(&connection.namespace, &plan.name),
        &choice,
        read_only,
    )
    .await
    {
        Ok(Some(mounted)) => {
            // Best effort: without root the kernel keeps its 128 KiB, and tunneld's relay
            // reads ahead in its place, so sequential reads keep their speed either way.
            #[cfg(target_os = "linux")]
            let _ = mounted.raise_readahead();
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

fn write_env_files(args: &SessionArgs, variables: &BTreeMap<String, String>) -> anyhow::Result<()> {
    if let Some(path) = &args.env_file {
        env::write_private(path, &env::format(variables, args.env_syntax)?)?;
        eprintln!("environment written to {}", path.display());
    }
    if let Some(path) = &args.env_json {
        env::write_private(path, &env::format(variables, EnvSyntax::Json)?)?;
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
    let owner = AgentOwner::Workload {
        workload: workload.clone(),
    };
    // Without the hold, this is `leave`: the run holding the session, if any, is told.
    forget_in_tunneld(connection, name, Some(&owner), hold.is_none()).await;
    mount::unmount_session(&SessionKey::new(&connection.namespace, name));
    let bar = spinner(format!("ending session {name} on {workload}"));
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
    release_after_the_end(hold).await;
    eprintln!("{}", left.describe(name, workload));
    Ok(())
}
