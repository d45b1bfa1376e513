//! The network helper: the one part of kubedev that runs as root, so that no plugin and no
//! tunneld has to. An administrator starts it once for the users it serves; each of their
//! tunnelds then asks it for the machine's cluster network: it creates a TUN device, hands
//! the device to that tunneld (`SCM_RIGHTS`), routes into it the ranges the tunneld asks
//! for and points the machine's resolver at it, and undoes the routes and the resolver when
//! that tunneld's connection closes, however it ends. It never talks to the cluster, never
//! reads a kubeconfig and runs nothing of a user's: all a user can make it do is checked in
//! [`wire`].

pub(crate) mod client;
mod connection;
mod policy;
mod source_check;
mod wire;

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use kubedev_process::signals::StopSignals;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::network::resolv_conf;
use connection::Shared;
use kubedev::cidr::{self, Cidr};
use policy::Policy;
pub(crate) use wire::DEFAULT_SOCKET;

/// The examples under `--help`, with this tunneld's own path in them.
fn examples() -> String {
    let start = client::start_command();
    format!(
        "Examples:
  # The cluster's network on this whole machine for your sessions, until Ctrl-C
  {start}

  # For two users; it stops on Ctrl-C or SIGTERM and undoes what it changed
  {start} --user bob

As a system service, run a copy of tunneld that only root may change: see kubedev's
docs/network-helper.md."
    )
}

/// Brings the cluster's network (routes into a TUN device, DNS for the cluster's names) to
/// this whole machine for the sessions of the users it serves, whose plugins and tunneld
/// run as themselves. Runs as root; talks to no cluster.
#[derive(Debug, Parser)]
#[command(
    name = "tunneld network-helper",
    bin_name = "tunneld network-helper",
    version
)]
struct HelperCli {
    /// A user whose tunneld it serves (repeat for more).
    #[arg(long = "user", value_name = "NAME", required = true)]
    users: Vec<String>,

    /// The socket to listen on: in a directory only root may change.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,

    /// A range users may route into their device (repeat for more; default: 10.0.0.0/8,
    /// 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 and 198.18.0.0/15; IPv4 only). Never one of this
    /// machine's own routes, nor one holding its nameservers.
    #[arg(long = "allow-range", value_name = "CIDR", value_parser = cidr::parse)]
    allowed: Vec<Cidr>,

    /// The cluster DNS domain names may be sent to users' tunnelds for (repeat for more).
    #[arg(
        long = "cluster-domain",
        value_name = "DOMAIN",
        default_value = "cluster.local"
    )]
    domains: Vec<String>,

    /// The resolver configuration to point at tunneld's DNS.
    #[arg(long, default_value = "/etc/resolv.conf", value_name = "FILE")]
    resolv_conf: PathBuf,

    /// Where it keeps what it must restore after a crash, even across a reboot (made 0700,
    /// root's own).
    #[arg(
        long,
        default_value = "/var/lib/kubedev/network-helper",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
}

/// Whether tunneld was started as the network helper (`tunneld network-helper ...`).
pub(crate) fn asked() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "network-helper")
}

/// Runs the helper until a stop signal.
pub(crate) fn main() -> std::process::ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let matches = HelperCli::command()
        .after_help(examples())
        .get_matches_from(args);
    let cli = match HelperCli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return kubedev_process::exit_status(Err(err.into())),
    };
    kubedev_process::exit_status(runtime.block_on(serve(cli)))
}

async fn serve(cli: HelperCli) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "the network helper creates TUN devices, routes and resolver settings, which needs \
             root: run it with sudo"
        );
    }
    let uids = cli
        .users
        .iter()
        .map(|name| uid_of(name))
        .collect::<anyhow::Result<Vec<u32>>>()?;
    warn_if_replaceable();
    kubedev_process::limits::raise_open_files_limit();
    // A crash may have left the machine's resolver pointed at a tunneld that is gone.
    resolv_conf::restore_left_behind(&cli.resolv_conf, &cli.state_dir)?;
    let listener = bind(&cli.socket).await?;
    tracing::info!(
        "network helper {} serving {} for {}",
        env!("CARGO_PKG_VERSION"),
        cli.socket.display(),
        cli.users.join(", ")
    );
    let served = uids.into_iter().zip(cli.users.iter().cloned()).collect();
    let allowed = match cli.allowed.is_empty() {
        true => policy::DEFAULT_ALLOWED
            .iter()
            .filter_map(|range| cidr::parse(range).ok())
            .collect(),
        false => cli.allowed,
    };
    let policy = Policy {
        allowed,
        domains: cli
            .domains
            .iter()
            .map(|domain| domain.trim_end_matches('.').to_owned())
            .collect(),
    };
    let shared = Arc::new(Shared::new(served, policy, cli.resolv_conf, cli.state_dir));
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut signals = StopSignals::listen().context("signal handlers")?;
    tokio::select! {
        () = accept_loop(&listener, &shared, &stop, &connections) => {}
        () = signals.recv() => tracing::info!("stopping on signal"),
    }
    let _ = std::fs::remove_file(&cli.socket);
    // Every connection undoes its routes and resolver before the helper exits.
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn accept_loop(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    connections: &TaskTracker,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("could not accept a client: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.spawn(connection::serve(stream, shared.clone(), stop.clone()));
    }
}

/// Says so where someone other than root may replace the helper's own program: whoever
/// can runs as root the next time it starts (a service should run a root-owned copy).
fn warn_if_replaceable() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // Started with sudo by the user who may change it: they are root already.
    let sudo_uid: Option<u32> = std::env::var("SUDO_UID")
        .ok()
        .and_then(|uid| uid.parse().ok());
    let writable = [Some(exe.as_path()), exe.parent()]
        .into_iter()
        .flatten()
        .filter_map(|path| Some((path, std::fs::metadata(path).ok()?)))
        .find(|(_, found)| {
            let others_write = found.mode() & 0o022 != 0;
            others_write || (found.uid() != 0 && Some(found.uid()) != sudo_uid)
        });
    if let Some((path, found)) = writable {
        tracing::warn!(
            "{} may be changed by uid {} (or others), who would run as root at the helper's \
             next start: as a service, run a copy only root may change (docs/network-helper.md)",
            path.display(),
            found.uid()
        );
    }
}

fn uid_of(name: &str) -> anyhow::Result<u32> {
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("look up user {name:?}"))?
        .with_context(|| format!("there is no user {name:?} on this machine"))?;
    Ok(user.uid.as_raw())
}

/// Listens on `socket`, which every user may connect to (the helper checks each one's uid
/// itself), in a directory only root may change; refuses if another helper answers there,
/// and replaces a socket file a dead one left behind.
async fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    let dir = socket
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .context("the socket's path names no directory")?;
    only_root_may_change(dir)?;
    match std::fs::symlink_metadata(socket) {
        Ok(_) if UnixStream::connect(socket).await.is_ok() => {
            anyhow::bail!("another network helper is serving {}", socket.display())
        }
        Ok(found) if found.file_type().is_socket() => std::fs::remove_file(socket)
            .with_context(|| format!("remove the stale {}", socket.display()))?,
        Ok(_) => anyhow::bail!("{} exists and is not a socket", socket.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("look at {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Refuses a directory that someone other than root owns or may write to: they could swap
/// the socket for one of their own.
pub(crate) fn only_root_may_change(dir: &Path) -> anyhow::Result<()> {
    let found = std::fs::metadata(dir).with_context(|| format!("look at {}", dir.display()))?;
    if found.uid() != 0 || found.mode() & 0o022 != 0 {
        anyhow::bail!(
            "{} may be changed by someone other than root (owner uid {}, mode {:o})",
            dir.display(),
            found.uid(),
            found.mode() & 0o7777
        );
    }
    Ok(())
}
