//! Reaching this user's tunneld from a plugin: where its socket is, starting it, and every
//! request on its control socket ([`crate::control`]): sessions added, held, asked about
//! and forgotten, their environment and volumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::UnixStream;

use crate::cluster::{ClusterArgs, Connection};
use crate::control::{ControlReply, ControlRequest, DaemonStatus, Held};
use kubedev_protocol::codec::{CodecError, read_message, write_message};

/// How long a plugin waits for a tunneld it started to open its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a request to tunneld failed.
#[derive(Debug, thiserror::Error)]
pub enum TunneldError {
    /// Nothing serves the socket at this path.
    #[error("tunneld is not running at {0}")]
    NotRunning(PathBuf),
    /// tunneld was started but never answered; its log is at this path.
    #[error("tunneld did not start within {START_TIMEOUT:?}; see its log at {0}")]
    DidNotStart(PathBuf),
    /// tunneld could not be started.
    #[error("cannot start tunneld: {0}")]
    Spawn(std::io::Error),
    /// The directory for tunneld's socket, state and log could not be made.
    #[error("cannot create {}: {source}", dir.display())]
    RuntimeDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection to tunneld failed, or carried something unreadable.
    #[error("talking to tunneld: {0}")]
    Codec(#[from] CodecError),
    /// tunneld refused the request, and said why.
    #[error("tunneld: {0}")]
    Failed(String),
    /// tunneld took the request but did not answer in time (stopped, or stuck).
    #[error("tunneld at {socket} did not answer within {waited:?} (stopped or stuck?)")]
    NoAnswer {
        /// Its socket.
        socket: PathBuf,
        /// How long it was given.
        waited: Duration,
    },
}

/// Where this user's tunnelds keep their sockets and state: `$KUBEDEV_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/kubedev`, else a directory in /tmp of this user's own.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEDEV_RUNTIME_DIR") {
        return dir.into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("kubedev"),
        None => std::env::temp_dir().join(format!("kubedev-{}", nix::unistd::getuid())),
    }
}

/// The socket of the tunneld for this user and kube context.
pub fn socket_path(runtime_dir: &Path, context: &str) -> PathBuf {
    let safe: String = context
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    runtime_dir.join(format!("tunneld-{safe}.sock"))
}

/// The socket of the tunneld for `connection`'s kube context, in [`runtime_dir`] (made if
/// missing).
pub fn socket_for(connection: &Connection) -> Result<PathBuf, TunneldError> {
    let dir = runtime_dir();
    std::fs::create_dir_all(&dir).map_err(|source| TunneldError::RuntimeDir {
        dir: dir.clone(),
        source,
    })?;
    let context = connection.context.as_deref().unwrap_or("default");
    Ok(socket_path(&dir, context))
}

/// The log of the tunneld serving `socket`.
pub fn log_path(socket: &Path) -> PathBuf {
    socket.with_extension("log")
}

/// The command that starts a tunneld serving `socket` for `cluster`'s context:
/// `$KUBEDEV_TUNNELD`, else the tunneld beside this plugin, else PATH's.
pub fn start_command(socket: &Path, cluster: &ClusterArgs) -> Command {
    let binary = std::env::var_os("KUBEDEV_TUNNELD")
        .map(PathBuf::from)
        .or_else(|| {
            let beside = std::env::current_exe().ok()?.with_file_name("tunneld");
            beside.exists().then_some(beside)
        })
        .unwrap_or_else(|| PathBuf::from("tunneld"));
    let mut command = Command::new(binary);
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
    command
}

/// Sends one request and returns tunneld's reply.
pub async fn request(
    socket: &Path,
    request: &ControlRequest,
) -> Result<ControlReply, TunneldError> {
    match exchange(socket, request).await?.1 {
        ControlReply::Failed { reason } => Err(TunneldError::Failed(reason)),
        reply => Ok(reply),
    }
}

/// Connects, sends `request` and reads tunneld's first reply, within the request's
/// [`answer_deadline`]; returns the connection with it.
async fn exchange(
    socket: &Path,
    request: &ControlRequest,
) -> Result<(UnixStream, ControlReply), TunneldError> {
    let waited = answer_deadline(request);
    let exchanged = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|_| TunneldError::NotRunning(socket.to_owned()))?;
        write_message(&mut stream, request).await?;
        let reply = read_message(&mut stream).await?;
        Ok((stream, reply))
    };
    tokio::time::timeout(waited, exchanged)
        .await
        .map_err(|_| TunneldError::NoAnswer {
            socket: socket.to_owned(),
            waited,
        })?
}

/// How long tunneld may take to answer `request`: a stopped tunneld (SIGSTOP, a machine
/// frozen mid-session) still accepts connections, and must not hang the plugins.
fn answer_deadline(request: &ControlRequest) -> Duration {
    match request {
        ControlRequest::Status | ControlRequest::RemoveSession { .. } => STATUS_DEADLINE,
        // Waits for a link to an agent, or brings up the network.
        _ => Duration::from_secs(60),
    }
}

/// How long tunneld may take to say what it runs.
pub const STATUS_DEADLINE: Duration = Duration::from_secs(5);

/// What the tunneld at `socket` runs.
pub async fn status(socket: &Path) -> Result<DaemonStatus, TunneldError> {
    match request(socket, &ControlRequest::Status).await? {
        ControlReply::Status(status) => Ok(*status),
        other => Err(unexpected(&other)),
    }
}

/// The app container's environment, from one of session `name`'s agents.
pub async fn environment(
    socket: &Path,
    name: &str,
) -> Result<BTreeMap<String, String>, TunneldError> {
    let asked = ControlRequest::Environment { name: name.into() };
    match request(socket, &asked).await? {
        ControlReply::Environment { variables } => Ok(variables),
        other => Err(unexpected(&other)),
    }
}

/// Has the tunneld at `socket`, if one runs, drop session `name`'s tunnels.
pub async fn forget(socket: &Path, name: &str) -> Result<(), TunneldError> {
    let removal = ControlRequest::RemoveSession { name: name.into() };
    match request(socket, &removal).await {
        Ok(_) | Err(TunneldError::NotRunning(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Opens an SFTP session on the volumes of session `name`: the returned connection carries
/// it (tunneld relays it to an agent).
pub async fn open_files(socket: &Path, name: &str) -> Result<UnixStream, TunneldError> {
    open_stream(socket, &ControlRequest::OpenFiles { name: name.into() }).await
}

/// tunneld's promise to end a session if its plugin dies: see [`ControlRequest::Hold`].
/// Dropping it without [`Hold::release`] calls that in.
#[derive(Debug)]
pub struct Hold {
    writer: tokio::net::unix::OwnedWriteHalf,
    /// tunneld's one message on the connection: `Done` after `Release`, or `Ended`; a
    /// reader task owns the read half, so waiting for it can be cancelled at any time.
    reply_rx: tokio::sync::watch::Receiver<Option<HoldNews>>,
}

/// What tunneld says on a [`Hold`]'s connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldNews {
    /// It took the release.
    Released,
    /// The session is over without this plugin (see [`ControlReply::Ended`]).
    Ended(String),
    /// tunneld is gone: its tunnels, and the renewals of the session's lease, with it.
    DaemonGone,
}

impl Hold {
    /// Tells tunneld that the session was ended properly, or detached (its tunnels stay in
    /// tunneld).
    pub async fn release(mut self) -> Result<(), TunneldError> {
        write_message(&mut self.writer, &ControlRequest::Release).await?;
        match self.news().await {
            // Over already: nothing was left for tunneld to do.
            HoldNews::Released | HoldNews::Ended(_) => Ok(()),
            HoldNews::DaemonGone => Err(TunneldError::Failed(
                "tunneld closed the session's connection".into(),
            )),
        }
    }

    /// Waits until tunneld says something on the connection (see [`HoldNews`]).
    pub async fn news(&mut self) -> HoldNews {
        match self.reply_rx.wait_for(Option::is_some).await {
            Ok(news) => news.clone().unwrap_or(HoldNews::DaemonGone),
            Err(_) => HoldNews::DaemonGone,
        }
    }
}

/// Asks tunneld to end the session and restore its workload, as `held` says, if this
/// process dies before it releases the returned [`Hold`], and to renew its lease meanwhile.
pub async fn hold(socket: &Path, held: Held) -> Result<Hold, TunneldError> {
    let stream = open_stream(socket, &ControlRequest::Hold(held)).await?;
    let (mut reader, writer) = stream.into_split();
    let (reply_tx, reply_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let news = match read_message(&mut reader).await {
            Ok(ControlReply::Done) => HoldNews::Released,
            Ok(ControlReply::Ended { reason }) => HoldNews::Ended(reason),
            _ => HoldNews::DaemonGone,
        };
        let _ = reply_tx.send(Some(news));
    });
    Ok(Hold { writer, reply_rx })
}

/// Sends `request`, whose `Done` turns the connection into something longer-lived.
async fn open_stream(socket: &Path, request: &ControlRequest) -> Result<UnixStream, TunneldError> {
    match exchange(socket, request).await? {
        (stream, ControlReply::Done) => Ok(stream),
        (_, ControlReply::Failed { reason }) => Err(TunneldError::Failed(reason)),
        (_, other) => Err(unexpected(&other)),
    }
}

fn unexpected(reply: &ControlReply) -> TunneldError {
    TunneldError::Failed(format!("unexpected answer: {reply:?}"))
}

/// Makes sure a tunneld answers at `socket`, starting `start` (which must serve that
/// socket) if none does. The new tunneld is detached from the caller's terminal and
/// process group, so it outlives the plugin and Ctrl-C in the plugin's terminal.
pub async fn ensure_running(
    socket: &Path,
    mut start: Command,
    log: &Path,
) -> Result<(), TunneldError> {
    if request(socket, &ControlRequest::Status).await.is_ok() {
        return Ok(());
    }
    let log_file = std::fs::File::create(log).map_err(TunneldError::Spawn)?;
    use std::os::unix::process::CommandExt as _;
    start
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .map_err(TunneldError::Spawn)?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if request(socket, &ControlRequest::Status).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(TunneldError::DidNotStart(log.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tunneld_that_takes_the_request_and_never_answers_is_given_up_on() {
        let dir = std::env::temp_dir().join(format!("kubedev-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("stopped.sock");
        let _ = std::fs::remove_file(&socket);
        // Bound and listening, as a stopped tunneld's socket is: connections are queued
        // by the kernel and never answered.
        let _listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let answer = request(&socket, &ControlRequest::Status).await;
        assert!(
            matches!(&answer, Err(TunneldError::NoAnswer { waited, .. }) if *waited == STATUS_DEADLINE),
            "{answer:?}"
        );
        let held = Held {
            name: "web".into(),
            owner: "run".into(),
            namespace: "shop".into(),
            workload: Some("web".parse().expect("workload")),
            timeout: Duration::from_secs(5),
            lease: None,
        };
        assert!(matches!(
            hold(&socket, held).await,
            Err(TunneldError::NoAnswer { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn one_socket_per_context_with_a_safe_name() {
        let dir = Path::new("/run/user/1000/kubedev");
        assert_eq!(
            socket_path(dir, "arn:aws:eks:eu-west-1:1234:cluster/dev"),
            dir.join("tunneld-arn_aws_eks_eu-west-1_1234_cluster_dev.sock")
        );
        assert_ne!(socket_path(dir, "a"), socket_path(dir, "b"));
    }

    #[tokio::test]
    async fn a_missing_daemon_is_reported_as_not_running() {
        let socket = std::env::temp_dir().join(format!("kubedev-none-{}.sock", std::process::id()));
        let err = request(&socket, &ControlRequest::Status)
            .await
            .expect_err("nothing there");
        assert!(matches!(err, TunneldError::NotRunning(_)), "{err}");
    }

    #[tokio::test]
    async fn forgetting_a_session_where_no_tunneld_runs_is_no_error() {
        let socket = std::env::temp_dir().join(format!("kubedev-gone-{}.sock", std::process::id()));
        assert!(forget(&socket, "web").await.is_ok());
        assert!(matches!(
            status(&socket).await,
            Err(TunneldError::NotRunning(_))
        ));
    }
}
