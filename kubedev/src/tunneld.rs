//! Reaching this user's tunneld from a plugin: where its socket is and starting it
//! ([`socket_for`], [`ensure_running`]), connecting to it and to nothing else (its socket
//! and the process behind it must be this user's: see [`TunneldError::Impostor`]), and
//! every request on its control socket ([`crate::control`]): sessions added, held, asked
//! about and forgotten, their environment and volumes, and their commands' own networks.

pub(crate) mod binary;
mod connect;
mod start;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[cfg(target_os = "linux")]
use crate::control::NamespaceFiles;
use crate::control::{AgentOwner, ControlReply, ControlRequest, DaemonStatus, Held, SessionKey};
#[cfg(target_os = "linux")]
use crate::fd_passing;
use crate::private_files::PrivateFileError;
pub use binary::tunneld_binary;
#[cfg(windows)]
pub use connect::windows::ControlListener;
pub use connect::{ControlStream, ControlWriter};
use kubedev_protocol::codec::{CodecError, read_message, write_message};
pub use start::{
    START_TIMEOUT, ensure_running, log_path, runtime_dir, socket_for, socket_in, socket_path,
    start_command,
};

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
    #[error("cannot start tunneld ({program})")]
    Spawn {
        /// The program run.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The directory for tunneld's socket, state and log cannot be used.
    #[error(
        "cannot keep tunneld's socket and log in {}: {why}; or set KUBEDEV_RUNTIME_DIR to a \
         directory of your own",
        dir.display()
    )]
    RuntimeDir {
        /// The directory.
        dir: PathBuf,
        /// Why, in words that say what to do.
        why: PrivateFileError,
    },
    /// tunneld's log cannot be opened (another user's, a symbolic link).
    #[error("cannot open tunneld's log: {0}")]
    Log(PrivateFileError),
    /// The socket file is another user's.
    #[error(
        "the socket at {} belongs to uid {owner}{}, not to you: remove it or stop that \
         tunneld as that user",
        socket.display(),
        if *owner == 0 { " (started with sudo?)" } else { "" }
    )]
    ForeignSocket {
        /// The socket.
        socket: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// Something else than a socket is where tunneld's socket belongs.
    #[error("{} is not a socket (a symbolic link, or a file): remove it", .0.display())]
    NotASocket(PathBuf),
    /// The process at the other end of the socket runs as another user: nothing was sent.
    #[error(
        "the process serving {} is not your tunneld: it runs as uid {uid} (pid {pid}); \
         nothing was sent to it. Remove the socket and find out who runs that process",
        socket.display()
    )]
    Impostor {
        /// The socket.
        socket: PathBuf,
        /// The peer's user.
        uid: u32,
        /// The peer's process, as the kernel reports it.
        pid: String,
    },
    /// What answered at the address in the endpoint file did not know its keys (Windows):
    /// it got the client key, which no tunneld takes once the one that wrote it is gone,
    /// and no request. A plugin that needs a tunneld starts one, which replaces the file.
    #[error(
        "what answers at {address}, which {} names, is not your tunneld (a tunneld that \
         ended left the file): it was sent no request. Starting a session starts a new \
         tunneld, which replaces the file",
        socket.display()
    )]
    Unproven {
        /// The endpoint file.
        socket: PathBuf,
        /// The address it names.
        address: String,
    },
    /// The connection failed for another reason than the above.
    #[error("cannot connect to tunneld at {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
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

impl TunneldError {
    /// Whether this refuses what is at the socket or in the runtime directory: starting
    /// a tunneld would not help, the user has to act.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::RuntimeDir { .. }
                | Self::Log(_)
                | Self::ForeignSocket { .. }
                | Self::NotASocket(_)
                | Self::Impostor { .. }
        )
    }
}

/// Sends one request and returns tunneld's reply.
pub async fn request(
    socket: &Path,
    request: &ControlRequest,
) -> Result<ControlReply, TunneldError> {
    match exchange(socket, request, NO_FILES).await?.1 {
        ControlReply::Failed { reason } => Err(TunneldError::Failed(reason)),
        reply => Ok(reply),
    }
}

/// Connects, sends `request` (and `files` after it, if any) and reads tunneld's first
/// reply, within the request's [`answer_deadline`]; returns the connection with it.
async fn exchange(
    socket: &Path,
    request: &ControlRequest,
    files: &SentFiles,
) -> Result<(ControlStream, ControlReply), TunneldError> {
    let waited = answer_deadline(request);
    let exchanged = async {
        let mut stream = connect::connect(socket).await?;
        write_message(&mut stream, request).await?;
        #[cfg(target_os = "linux")]
        if !files.is_empty() {
            fd_passing::send_on(&stream, FILES_MESSAGE, files)
                .await
                .map_err(CodecError::Io)?;
        }
        #[cfg(not(target_os = "linux"))]
        let _: &[()] = files;
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

/// The open files a request carries: only Linux passes any.
#[cfg(target_os = "linux")]
type SentFiles = [std::os::fd::RawFd];
#[cfg(not(target_os = "linux"))]
type SentFiles = [()];

/// No files, for the requests that carry none.
const NO_FILES: &SentFiles = &[];

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

/// The pod of one of the agents the tunneld at `socket` is linked to, and the median round
/// trip to it through the link.
pub async fn time_link(socket: &Path) -> Result<(String, Duration), TunneldError> {
    match request(socket, &ControlRequest::TimeLink).await? {
        ControlReply::RoundTrip { pod, median } => Ok((pod, median)),
        other => Err(unexpected(&other)),
    }
}

/// The app container's environment, from one of `session`'s agents.
pub async fn environment(
    socket: &Path,
    session: &SessionKey,
) -> Result<BTreeMap<String, String>, TunneldError> {
    let asked = ControlRequest::Environment {
        session: session.clone(),
    };
    match request(socket, &asked).await? {
        ControlReply::Environment { variables } => Ok(variables),
        other => Err(unexpected(&other)),
    }
}

/// Has the tunneld at `socket`, if one runs, drop `session`'s tunnels, if its agent
/// pods are `owner`'s (whoever's, for none); `by_leave` where the run that holds the
/// session is not the one asking (see [`ControlRequest::RemoveSession`]).
pub async fn forget(
    socket: &Path,
    session: &SessionKey,
    owner: Option<&AgentOwner>,
    by_leave: bool,
) -> Result<(), TunneldError> {
    let removal = ControlRequest::RemoveSession {
        session: session.clone(),
        owner: owner.cloned(),
        by_leave,
    };
    match request(socket, &removal).await {
        Ok(_) | Err(TunneldError::NotRunning(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Opens an SFTP session on the volumes of `session`: the returned connection carries
/// it (tunneld relays it to an agent).
pub async fn open_files(
    socket: &Path,
    session: &SessionKey,
) -> Result<ControlStream, TunneldError> {
    let request = ControlRequest::OpenFiles {
        session: session.clone(),
    };
    open_stream(socket, &request).await
}

/// tunneld's promise to end a session if its plugin dies: see [`ControlRequest::Hold`].
/// Dropping it without [`Hold::release`] calls that in.
#[derive(Debug)]
pub struct Hold {
    writer: ControlWriter,
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

/// What carries the files after a request that has some.
#[cfg(target_os = "linux")]
pub const FILES_MESSAGE: &[u8] = b"files";

/// Has tunneld serve the network namespace that `session`'s command runs in (see
/// [`ControlRequest::ServeCommandNetwork`]); returns the connection, which keeps it served
/// until it closes, and the resolver file for the command.
#[cfg(target_os = "linux")]
pub async fn serve_command_network(
    socket: &Path,
    session: &SessionKey,
    files: &NamespaceFiles,
) -> Result<(ControlStream, String), TunneldError> {
    let request = ControlRequest::ServeCommandNetwork {
        session: session.clone(),
    };
    match exchange(socket, &request, &files.as_sent()).await? {
        (stream, ControlReply::CommandNetwork { resolv_conf }) => Ok((stream, resolv_conf)),
        (_, ControlReply::Failed { reason }) => Err(TunneldError::Failed(reason)),
        (_, other) => Err(unexpected(&other)),
    }
}

/// Sends `request`, whose `Done` turns the connection into something longer-lived.
async fn open_stream(
    socket: &Path,
    request: &ControlRequest,
) -> Result<ControlStream, TunneldError> {
    match exchange(socket, request, NO_FILES).await? {
        (stream, ControlReply::Done) => Ok(stream),
        (_, ControlReply::Failed { reason }) => Err(TunneldError::Failed(reason)),
        (_, other) => Err(unexpected(&other)),
    }
}

fn unexpected(reply: &ControlReply) -> TunneldError {
    TunneldError::Failed(format!("unexpected answer: {reply:?}"))
}

#[cfg(all(test, unix))]
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
        assert!(
            forget(&socket, &SessionKey::new("shop", "web"), None, false)
                .await
                .is_ok()
        );
        assert!(matches!(
            status(&socket).await,
            Err(TunneldError::NotRunning(_))
        ));
    }
}
