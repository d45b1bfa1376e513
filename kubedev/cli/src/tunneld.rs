//! Reaching this user's tunneld for the kube context, and starting it.

use std::path::PathBuf;

use anyhow::Context as _;

use kubedev::cluster::{ClusterArgs, Connection};
use kubedev::control::{self, ControlError, ControlReply, ControlRequest, DaemonStatus};

pub(super) async fn tunneld_status(socket: &std::path::Path) -> Result<DaemonStatus, ControlError> {
    match control::request(socket, &ControlRequest::Status).await? {
        ControlReply::Status(status) => Ok(status),
        other => Err(ControlError::Failed(format!(
            "unexpected answer: {other:?}"
        ))),
    }
}

/// Where this user's tunnelds keep their sockets and state: `$KUBEDEV_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR/kubedev`, else a directory in /tmp of this user's own.
pub(super) fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEDEV_RUNTIME_DIR") {
        return dir.into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("kubedev"),
        None => std::env::temp_dir().join(format!("kubedev-{}", nix::unistd::getuid())),
    }
}

pub(super) fn tunneld_socket(connection: &Connection) -> anyhow::Result<PathBuf> {
    let dir = runtime_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let context = connection.context.as_deref().unwrap_or("default");
    Ok(control::socket_path(&dir, context))
}

/// The tunneld to start: `$KUBEDEV_TUNNELD`, else the one beside this plugin, else PATH's.
pub(super) fn tunneld_command(
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
