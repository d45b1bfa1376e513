//! Sessions from a file (`-f kubedev.yaml`), run together ([`Together`]) and left together
//! (`leave -f`). Detached, they are all left live, or, when one fails to start, none is.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::args::{ModeArgs, SessionArgs};
use super::leave::{Ending, NoSuchSession, leave};
use super::reclaim::reclaim_expired;
use super::run::run_session;
use super::sessions_file::{self, FileSession};
use super::together::{Member, Together};
use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::mode::Mode;
use kubedev::tunneld;

/// `-f FILE`: runs the file's sessions together, with the command line's other flags for
/// each.
pub(super) async fn run_file(
    mode: Mode,
    path: &Path,
    cluster: &ClusterArgs,
    args: &SessionArgs,
    mode_args: &ModeArgs,
) -> anyhow::Result<ExitCode> {
    refuse_flags_of_one_session(args, mode_args)?;
    let sessions = sessions_file::read(path, mode, cluster, &args.life)?;
    let detach = args.life.detach;
    let together = Together::new(sessions.len(), detach);
    let members = &together;
    let runs = sessions
        .iter()
        .enumerate()
        .map(|(index, session)| async move {
            let ran = run_session(
                session.mode,
                &session.cluster,
                session.workload.clone(),
                session.args.clone(),
                session.mode_args.clone(),
                Some(Member {
                    together: members,
                    index,
                }),
            )
            .await;
            // A detached session that went live stays; anything else ends them all.
            if !detach || ran.is_err() {
                members.ending.cancel();
            }
            ran
        });
    let ran = futures::future::join_all(runs).await;
    if detach && together.ending.is_cancelled() {
        end_detached(&sessions, &together.live()).await;
    } else if detach {
        eprintln!(
            "the file's sessions are live; end them with `{} leave -f {}{}`",
            super::command_of(mode),
            path.display(),
            cluster
                .namespace
                .as_ref()
                .map(|ns| format!(" -n {ns}"))
                .unwrap_or_default()
        );
    }
    outcome(&sessions, ran)
}

/// Ends the sessions that went live detached (by this run: `live`), once another could
/// not start.
async fn end_detached(sessions: &[FileSession], live: &[String]) {
    let mut connections = Connections::default();
    for session in sessions
        .iter()
        .filter(|session| live.contains(&session.name))
    {
        let timeout = session.args.life.timeout;
        let ended = async {
            let connection = connections.to(&session.cluster, None).await?;
            end_one(session.mode, &session.name, connection, false, timeout).await
        };
        if let Err(err) = ended.await {
            eprintln!("error: ending session {}: {err:#}", session.name);
        }
    }
}

/// `leave -f FILE`: ends each session of the file, as `leave NAME` does.
pub(super) async fn leave_file(
    mode: Mode,
    path: &Path,
    cluster: &ClusterArgs,
    force: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let sessions = sessions_file::names(path, cluster)?;
    let mut connections = Connections::default();
    let (mut failed, mut not_running) = (Vec::new(), Vec::new());
    for (name, cluster) in &sessions {
        let ended = async {
            // As `leave` does: the sessions whose lease ran out are restored first.
            let connection = connections.to(cluster, Some(timeout)).await?;
            end_one(mode, name, connection, force, timeout).await
        };
        match ended.await {
            Ok(()) => {}
            // Already ended, or never started: nothing of it is left to end.
            Err(err) if err.downcast_ref::<NoSuchSession>().is_some() => {
                eprintln!("session {name}: not running");
                not_running.push(name.as_str());
            }
            Err(err) => {
                eprintln!("error: session {name}: {err:#}");
                failed.push(name.as_str());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "sessions of {} not ended: {}",
            path.display(),
            failed.join(", ")
        );
    }
    if not_running.len() == sessions.len() {
        anyhow::bail!(
            "none of the sessions of {} runs here (were they started with another -n or \
             --context?)",
            path.display()
        );
    }
    Ok(())
}

/// The connections a file's sessions use, one per namespace they name.
#[derive(Default)]
struct Connections(Vec<(Option<String>, Connection)>);

impl Connections {
    /// The connection for `cluster`, made the first time its namespace comes; then, with
    /// `reclaim`, the namespace's sessions whose lease ran out are restored, once.
    async fn to(
        &mut self,
        cluster: &ClusterArgs,
        reclaim: Option<Duration>,
    ) -> anyhow::Result<&Connection> {
        let index = match (self.0.iter()).position(|(namespace, _)| *namespace == cluster.namespace)
        {
            Some(index) => index,
            None => {
                let connection = cluster.connect().await?;
                if let Some(timeout) = reclaim {
                    let owner = kubedev::session::random_id()?;
                    reclaim_expired(&connection, &owner, timeout).await;
                }
                self.0.push((cluster.namespace.clone(), connection));
                self.0.len() - 1
            }
        };
        Ok(&self.0[index].1)
    }
}

/// Ends session `name`, as `leave NAME` does.
async fn end_one(
    mode: Mode,
    name: &str,
    connection: &Connection,
    force: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let socket = tunneld::socket_for(connection)?;
    let ending = Ending {
        name: Some(name),
        force,
        timeout,
    };
    leave(connection, &socket, mode, ending).await
}

/// The exit status of sessions run together: the first error, the others said first;
/// else the first status that is not success (a command's), else success.
fn outcome(
    sessions: &[FileSession],
    ran: Vec<anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let mut first_error = None;
    let mut code = ExitCode::SUCCESS;
    for (session, ran) in sessions.iter().zip(ran) {
        match ran {
            Err(err) if first_error.is_none() => {
                first_error = Some(err.context(format!("session {}", session.name)));
            }
            Err(err) => eprintln!("error: session {}: {err:#}", session.name),
            Ok(status) if code == ExitCode::SUCCESS => code = status,
            Ok(_) => {}
        }
    }
    first_error.map_or(Ok(code), Err)
}

/// With `-f`, what a single session's flags would say is the file's to say.
fn refuse_flags_of_one_session(args: &SessionArgs, mode_args: &ModeArgs) -> anyhow::Result<()> {
    let given = [
        ("--port", !mode_args.ports.is_empty()),
        ("--service", mode_args.service.is_some()),
        (
            "--http-header or --http-path-prefix",
            mode_args.filter.is_some(),
        ),
        ("--wiretap", mode_args.wiretap),
        ("--tls-secret", mode_args.tls_secret.is_some()),
        ("--container", args.container.is_some()),
        ("--env-file", args.env_file.is_some()),
        ("--env-json", args.env_json.is_some()),
        ("--mount", args.mount.is_some()),
        ("--to-pod", !args.to_pod.is_empty()),
        ("--name", args.life.name.is_some()),
        ("-- CMD", !args.life.command.is_empty()),
    ];
    match given.iter().find(|(_, given)| *given) {
        Some((flag, _)) => anyhow::bail!(
            "{flag} goes in the sessions file with -f, for each session (README: \"Sessions as \
             a file\")"
        ),
        None => Ok(()),
    }
}
