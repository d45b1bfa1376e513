//! `-- CMD`: the developer's command, run with the container's environment and the
//! cluster's network, however this machine has it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use kubedev::control::{DaemonStatus, NetworkStatus, ProxyStatus, ResolverStatus, SessionKey};

#[cfg(target_os = "linux")]
use super::netns::{self, Started};

/// How `-- CMD` reaches the cluster's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CommandNetwork {
    /// Through the machine's: tunneld's TUN device, routes and resolver (or none at all,
    /// where tunneld was told to bring up no network).
    Machine,
    /// Through the machine's, whose resolver was left as it is: the command sees this
    /// file as /etc/resolv.conf, in a mount namespace of its own (which needs root, as the
    /// machine's network does).
    ResolverView(PathBuf),
    /// In a network namespace of its own, which the tunneld at `socket` serves for session
    /// `session`: where tunneld could not bring the network to the machine (no root).
    /// Where no such namespace can be made, through tunneld's `proxy`, if it runs one.
    OwnNamespace {
        socket: PathBuf,
        session: SessionKey,
        proxy: Option<ProxyStatus>,
    },
}

impl CommandNetwork {
    /// How a command of session `session`, whose tunneld at `socket` runs as `status`
    /// says, reaches the cluster.
    pub(super) fn of(status: &DaemonStatus, socket: &Path, session: &SessionKey) -> Self {
        match &status.network {
            NetworkStatus::Up {
                resolver: ResolverStatus::Unchanged { for_commands, .. },
                ..
            } => Self::ResolverView(for_commands.clone()),
            NetworkStatus::Up { .. } => Self::Machine,
            NetworkStatus::Off | NetworkStatus::Unavailable { .. } => Self::OwnNamespace {
                socket: socket.to_owned(),
                session: session.clone(),
                proxy: status.proxy.clone(),
            },
        }
    }
}

/// `-- CMD`'s program as it will be run: a path as given, else found on PATH (on Windows
/// with PATHEXT's extensions too, as a shell finds `npm`, a `.cmd`). Checked before a
/// session changes anything, so that a misspelt command changes nothing in the cluster.
pub(super) fn resolve_program(command: &[String]) -> anyhow::Result<Option<PathBuf>> {
    command
        .first()
        .map(|program| find_program(program))
        .transpose()
}

/// Where `program` is: a path as given, else found on PATH (see [`resolve_program`]).
fn find_program(program: &str) -> anyhow::Result<PathBuf> {
    which::which(program).map_err(|err| {
        anyhow::anyhow!(
            "cannot run {program} ({err}): nothing was changed; give its path, or check PATH"
        )
    })
}

/// Runs `command` with the app's environment on top of ours, reaching the cluster as
/// `network` says, until it exits; once `stop` completes (a stop signal to the plugin,
/// the session ending without it) it gets SIGTERM. Its exit status becomes ours.
pub(super) async fn run_command(
    command: &[String],
    variables: &BTreeMap<String, String>,
    network: &CommandNetwork,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let (program, arguments) = command.split_first().context("empty command")?;
    let mut to_run = tokio::process::Command::new(find_program(program)?);
    to_run.args(arguments).envs(variables);
    // Kept open while the command runs: tunneld serves its namespace until it closes.
    let (spawned, served) = spawn_in(network, &mut to_run, program, arguments, variables).await?;
    let mut child = spawned.with_context(|| format!("cannot run {program}"))?;
    let status = tokio::select! {
        status = child.wait() => status?,
        () = stop => {
            terminate(&mut child);
            child.wait().await?
        }
    };
    drop(served);
    Ok(ExitCode::from(u8::try_from(exit_code(status)).unwrap_or(1)))
}

/// Starts `to_run` (`program` with `arguments` and `variables`) reaching the cluster as
/// `network` says; returns it with what keeps its own network namespace served, if it
/// has one.
#[cfg(target_os = "linux")]
async fn spawn_in(
    network: &CommandNetwork,
    to_run: &mut tokio::process::Command,
    program: &str,
    arguments: &[String],
    variables: &BTreeMap<String, String>,
) -> anyhow::Result<(
    std::io::Result<tokio::process::Child>,
    Option<kubedev::tunneld::ControlStream>,
)> {
    Ok(match network {
        CommandNetwork::Machine => (to_run.spawn(), None),
        CommandNetwork::ResolverView(resolver) => {
            let spawned = super::resolver_view::spawn(to_run, resolver).or_else(|err| {
                eprintln!(
                    "note: {program} runs without the cluster's names ({err}: giving it \
                     {} as /etc/resolv.conf needs root)",
                    resolver.display()
                );
                to_run.spawn()
            });
            (spawned, None)
        }
        CommandNetwork::OwnNamespace {
            socket,
            session,
            proxy,
        } => match netns::spawn(program, arguments, variables, socket, session).await? {
            Started::InNamespace { child, served } => (Ok(*child), Some(served)),
            Started::Unavailable(reason) => (
                spawn_without_namespace(to_run, program, &reason, proxy.as_ref()),
                None,
            ),
        },
    })
}

/// Starts `to_run` reaching the cluster as `network` says: macOS and Windows have no
/// network namespaces, so a command gets tunneld's proxy where the machine has no cluster
/// network.
#[cfg(not(target_os = "linux"))]
async fn spawn_in(
    network: &CommandNetwork,
    to_run: &mut tokio::process::Command,
    program: &str,
    _arguments: &[String],
    _variables: &BTreeMap<String, String>,
) -> anyhow::Result<(
    std::io::Result<tokio::process::Child>,
    Option<kubedev::tunneld::ControlStream>,
)> {
    Ok(match network {
        CommandNetwork::Machine | CommandNetwork::ResolverView(_) => (to_run.spawn(), None),
        CommandNetwork::OwnNamespace { proxy, .. } => (
            spawn_without_namespace(
                to_run,
                program,
                "this system has no network namespaces",
                proxy.as_ref(),
            ),
            None,
        ),
    })
}

/// Asks the command to stop: SIGTERM.
#[cfg(unix)]
fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Stops the command: Windows has no signal to ask it with.
#[cfg(windows)]
fn terminate(child: &mut tokio::process::Child) {
    let _ = child.start_kill();
}

/// The exit code a shell gives for `status`: 128 plus the signal that ended it, on Unix.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    let signal = {
        use std::os::unix::process::ExitStatusExt as _;
        status.signal().map(|signal| 128 + signal)
    };
    #[cfg(windows)]
    let signal = None;
    status.code().or(signal).unwrap_or(1)
}

/// Starts the command where no network namespace of its own can be made for it (for
/// `reason`): on this machine's network, with the variables that send its connections
/// through tunneld's `proxy`, if it runs one; says so in one line.
fn spawn_without_namespace(
    command: &mut tokio::process::Command,
    program: &str,
    reason: &str,
    proxy: Option<&ProxyStatus>,
) -> std::io::Result<tokio::process::Child> {
    match proxy {
        Some(proxy) => {
            eprintln!(
                "note: {program} reaches the cluster through tunneld's proxy at {} (no network \
                 namespace of its own here: {reason}; ALL_PROXY, HTTP_PROXY and HTTPS_PROXY are \
                 set for it; tools that ignore them reach only this machine's network)",
                proxy.address
            );
            command.envs(kubedev::proxy_env::for_command(proxy));
        }
        None => eprintln!(
            "note: {program} runs without the cluster's network (no network namespace of its \
             own here: {reason})"
        ),
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_is_not_there_is_refused_before_anything_changes() {
        let missing = ["kubedev-no-such-program".to_owned()];
        let refused = resolve_program(&missing).expect_err("not there");
        assert!(
            refused.to_string().contains("nothing was changed"),
            "{refused}"
        );
        assert_eq!(resolve_program(&[]).expect("no command"), None);
        let found = resolve_program(&["cargo".to_owned()]).expect("cargo is on PATH");
        assert!(found.is_some_and(|path| path.is_absolute()));
    }

    fn status(network: NetworkStatus, proxy: Option<ProxyStatus>) -> DaemonStatus {
        DaemonStatus {
            pid: 1,
            version: None,
            network,
            proxy,
            sessions: Vec::new(),
        }
    }

    #[test]
    fn a_namespace_of_its_own_only_where_the_machine_has_no_cluster_network() {
        let socket = Path::new("/run/user/1000/kubedev/tunneld-dev.sock");
        let proxy = ProxyStatus::new("127.0.0.1:41234".parse().expect("address"), "secret");
        let unavailable = NetworkStatus::Unavailable {
            reason: "needs root".into(),
        };
        assert_eq!(
            CommandNetwork::of(
                &status(unavailable, Some(proxy.clone())),
                socket,
                &SessionKey::new("shop", "web")
            ),
            CommandNetwork::OwnNamespace {
                socket: socket.to_owned(),
                session: SessionKey::new("shop", "web"),
                proxy: Some(proxy.clone()),
            }
        );
        let up = |resolver| NetworkStatus::Up {
            routes: Vec::new(),
            ranges: Vec::new(),
            dns: "198.18.0.53".into(),
            resolver,
            helper: None,
        };
        let machine = up(ResolverStatus::ResolvConf {
            path: "/etc/resolv.conf".into(),
        });
        assert_eq!(
            CommandNetwork::of(
                &status(machine, Some(proxy)),
                socket,
                &SessionKey::new("shop", "web")
            ),
            CommandNetwork::Machine
        );
        let node = up(ResolverStatus::Unchanged {
            reason: "a kubelet hands it to its pods".into(),
            for_commands: "/run/kubedev/resolv.conf.for-commands".into(),
        });
        assert_eq!(
            CommandNetwork::of(&status(node, None), socket, &SessionKey::new("shop", "web")),
            CommandNetwork::ResolverView("/run/kubedev/resolv.conf.for-commands".into())
        );
    }
}
