//! Where this user's tunneld is (its runtime directory, socket and log), and starting it
//! when none answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::TunneldError;
use crate::cluster::{ClusterArgs, Connection, digest_name};
use crate::control::DaemonStatus;
use crate::private_files;
#[cfg(unix)]
use crate::run_as;

/// How long a plugin waits for a tunneld it started to open its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Where this user's tunnelds keep their sockets and state: `$KUBEDEV_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/kubedev`, else a directory in /tmp of this user's own; for root
/// through sudo (see [`run_as`]), /run/kubedev rather than the invoking user's.
#[cfg(unix)]
pub fn runtime_dir() -> PathBuf {
    choose_runtime_dir(
        |name| std::env::var_os(name),
        run_as::through_sudo(),
        nix::unistd::getuid().as_raw(),
    )
}

/// Where this user's tunnelds keep their endpoint files, state and logs:
/// `%KUBEDEV_RUNTIME_DIR%`, else `%LOCALAPPDATA%\kubedev`, which only this user (and the
/// system's administrators) may read.
#[cfg(windows)]
pub fn runtime_dir() -> PathBuf {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
    };
    absolute("KUBEDEV_RUNTIME_DIR")
        .or_else(|| absolute("LOCALAPPDATA").map(|dir| dir.join("kubedev")))
        .unwrap_or_else(|| std::env::temp_dir().join("kubedev"))
}

#[cfg(unix)]
fn choose_runtime_dir(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    through_sudo: bool,
    uid: u32,
) -> PathBuf {
    // An empty or relative setting is no setting (as the XDG base directory rules say):
    // a directory relative to wherever the plugin runs would give each its own tunneld.
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|dir| dir.is_absolute());
    if let Some(dir) = absolute("KUBEDEV_RUNTIME_DIR") {
        return dir;
    }
    if through_sudo {
        return PathBuf::from(run_as::ROOT_RUNTIME_DIR);
    }
    match absolute("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("kubedev"),
        None => std::env::temp_dir().join(format!("kubedev-{uid}")),
    }
}

/// The longest socket path every system takes (macOS: 104 bytes with the ending NUL).
const SOCKET_PATH_AT_MOST: usize = 103;

/// The socket of the tunneld for this user, kube context and identity
/// ([`Connection::identity`]): the context's name, readable, then `+` (which the context's
/// cleaned name never holds) and the identity. A path too long for a socket takes a digest
/// of both instead.
pub fn socket_path(runtime_dir: &Path, context: &str, identity: &str) -> PathBuf {
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
    let path = runtime_dir.join(format!("tunneld-{safe}+{identity}.sock"));
    if path.as_os_str().len() <= SOCKET_PATH_AT_MOST {
        return path;
    }
    let digest = digest_name(&[context, identity]);
    runtime_dir.join(format!("tunneld-{digest}.sock"))
}

/// The socket of the tunneld for `connection`'s kube context and identity, in
/// [`runtime_dir`]: made with mode 0700 if missing, and refused if it is anyone else's or
/// open to others (see [`private_files::private_dir`]).
pub fn socket_for(connection: &Connection) -> Result<PathBuf, TunneldError> {
    let dir = runtime_dir();
    private_files::private_dir(&dir).map_err(|why| TunneldError::RuntimeDir {
        dir: dir.clone(),
        why,
    })?;
    Ok(socket_in(&dir, connection))
}

/// The socket of the tunneld for `connection` in `runtime_dir`.
pub fn socket_in(runtime_dir: &Path, connection: &Connection) -> PathBuf {
    let context = connection.context.as_deref().unwrap_or("default");
    socket_path(runtime_dir, context, &connection.identity)
}

/// The log of the tunneld serving `socket`.
pub fn log_path(socket: &Path) -> PathBuf {
    socket.with_extension("log")
}

/// The command that starts a tunneld serving `socket` for `cluster`'s context, as the
/// user it impersonates.
pub fn start_command(socket: &Path, cluster: &ClusterArgs) -> Command {
    let mut command = Command::new(super::binary::tunneld_binary());
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
    if let Some(user) = &cluster.as_user {
        command.arg("--as").arg(user);
    }
    for group in &cluster.as_groups {
        command.arg("--as-group").arg(group);
    }
    command
}

/// Makes sure this user's tunneld answers at `socket`, starting `start` (which must serve
/// that socket) if none does, with its log appended to `log`; returns its status. The new tunneld is detached
/// from the caller's terminal and process group, so it outlives the plugin and Ctrl-C in
/// the plugin's terminal. A socket or log that is not this user's is refused, never
/// replaced.
pub async fn ensure_running(
    socket: &Path,
    mut start: Command,
    log: &Path,
) -> Result<DaemonStatus, TunneldError> {
    match super::status(socket).await {
        Ok(status) => return Ok(status),
        Err(err) if err.is_refusal() => return Err(err),
        Err(_) => {}
    }
    let log_file = private_files::append_own(log).map_err(TunneldError::Log)?;
    detach(&mut start);
    start
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|source| TunneldError::Spawn {
            program: start.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match super::status(socket).await {
            Ok(status) => return Ok(status),
            Err(err) if err.is_refusal() => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Err(TunneldError::DidNotStart(log.to_owned()))
}

/// Starts `command` in a process group of its own, out of reach of the terminal's Ctrl-C.
#[cfg(unix)]
fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    command.process_group(0);
}

/// Starts `command` without a console, in a process group of its own: it outlives the
/// plugin's console window and its Ctrl-C.
#[cfg(windows)]
fn detach(command: &mut Command) {
    use std::os::windows::process::CommandExt as _;
    const DETACHED_PROCESS: u32 = 0x0000_0008;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    command.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn one_socket_per_context_and_identity_with_a_safe_name() {
        let dir = Path::new("/run/user/1000/kubedev");
        let id = "0123456789abcdef";
        assert_eq!(
            socket_path(dir, "arn:aws:eks:eu-west-1:1234:cluster/dev", id),
            dir.join("tunneld-arn_aws_eks_eu-west-1_1234_cluster_dev+0123456789abcdef.sock")
        );
        assert_ne!(socket_path(dir, "a", id), socket_path(dir, "b", id));
        assert_ne!(
            socket_path(dir, "prod", id),
            socket_path(dir, "prod", "fedcba9876543210")
        );
        assert_ne!(
            socket_path(dir, "prod+0123456789abcdef", "fedcba9876543210"),
            socket_path(dir, "prod", id),
            "a context cannot be named like another's identity"
        );
    }

    #[test]
    fn a_name_too_long_for_a_socket_becomes_a_digest() {
        let dir = Path::new("/run/user/1000/kubedev");
        let eks = "arn:aws:eks:us-west-2:123456789012:cluster/payments-prod";
        let id = "0123456789abcdef";
        let long = socket_path(dir, eks, id);
        assert!(long.as_os_str().len() <= SOCKET_PATH_AT_MOST, "{long:?}");
        assert_eq!(long.parent(), Some(dir));
        assert_ne!(long, socket_path(dir, eks, "fedcba9876543210"));
        assert_eq!(long, socket_path(dir, eks, id), "the same each time");
    }

    #[test]
    fn root_through_sudo_keeps_out_of_the_invoking_users_runtime_dir() {
        let xdg =
            |name: &str| (name == "XDG_RUNTIME_DIR").then(|| OsString::from("/run/user/1000"));
        assert_eq!(
            choose_runtime_dir(xdg, false, 1000),
            Path::new("/run/user/1000/kubedev")
        );
        assert_eq!(choose_runtime_dir(xdg, true, 0), Path::new("/run/kubedev"));
        assert_eq!(
            choose_runtime_dir(|_| None, false, 1000),
            std::env::temp_dir().join("kubedev-1000")
        );
        let given = |name: &str| (name == "KUBEDEV_RUNTIME_DIR").then(|| OsString::from("/srv/kd"));
        assert_eq!(choose_runtime_dir(given, true, 0), Path::new("/srv/kd"));
        for unusable in ["", "run/user/1000"] {
            let set = |name: &str| (name == "XDG_RUNTIME_DIR").then(|| OsString::from(unusable));
            assert_eq!(
                choose_runtime_dir(set, false, 1000),
                std::env::temp_dir().join("kubedev-1000"),
                "{unusable:?} is no setting"
            );
        }
    }

    #[tokio::test]
    async fn a_symlinked_log_is_refused_and_its_target_left_alone() {
        let dir = std::env::temp_dir().join(format!("kubedev-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        private_files::private_dir(&dir).expect("dir");
        let target = dir.join("precious");
        std::fs::write(&target, "precious\n").expect("write");
        let log = dir.join("tunneld.log");
        std::os::unix::fs::symlink(&target, &log).expect("symlink");
        let socket = dir.join("tunneld.sock");
        let err = ensure_running(&socket, Command::new("true"), &log)
            .await
            .expect_err("refused");
        assert!(matches!(err, TunneldError::Log(_)), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "precious\n"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
