//! `-- CMD` with the cluster's network and no root: where tunneld has no TUN device on the
//! machine, the command runs in a user and network namespace of its own, made unprivileged
//! by a trampoline (`trampoline`: this plugin, started again), whose TUN device (with
//! `interfaces`) tunneld serves: the cluster's ranges and names reach the cluster,
//! everything else leaves from this machine, and the session's incoming connections reach
//! the command's own localhost. Where this machine allows no such namespace, the command
//! runs as it is, and the plugin says why.

mod interfaces;
mod trampoline;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;
use kubedev::control::{NamespaceFiles, SessionKey};
use kubedev::{fd_passing, tunneld};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

pub use trampoline::trampoline_if_asked;

/// The largest message between the plugin and the trampoline (the resolver file).
const MAX_MESSAGE: usize = 64 * 1024;

/// What the trampoline tells the plugin.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Report {
    /// The namespace is made; its TUN device and namespaces come with this message.
    Prepared,
    /// No namespace can be made here, for this reason; nothing was changed.
    Unavailable {
        /// Why, in words for the user.
        reason: String,
    },
    /// The command could not be started.
    NotStarted {
        /// Why, in words for the user.
        reason: String,
    },
}

/// How a command was started.
#[derive(Debug)]
pub(super) enum Started {
    /// In a network namespace of its own, which tunneld serves as long as `served` is open.
    InNamespace {
        child: Box<Child>,
        served: UnixStream,
    },
    /// Not started: no namespace can be made here, for this reason.
    Unavailable(String),
}

/// Starts `program` with `arguments` and `variables` in a network namespace of its own,
/// which the tunneld at `socket` serves for session `session`.
pub(super) async fn spawn(
    program: &str,
    arguments: &[String],
    variables: &BTreeMap<String, String>,
    socket: &Path,
    session: &SessionKey,
) -> anyhow::Result<Started> {
    let (plugin, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut trampoline = Command::new("/proc/self/exe")
        .args(trampoline::arguments(program, arguments))
        .envs(variables)
        .stdin(Stdio::from(theirs))
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    let (report, files, plugin) = hear(plugin).await?;
    let files = match report {
        Some(Report::Prepared) => {
            NamespaceFiles::from_received(files).context("the trampoline sent too few files")?
        }
        Some(Report::Unavailable { reason }) => {
            trampoline.wait().await?;
            return Ok(Started::Unavailable(reason));
        }
        other => anyhow::bail!("cannot run {program}: the trampoline said {other:?}"),
    };
    let (served, resolv_conf) = match tunneld::serve_command_network(socket, session, &files).await
    {
        Ok(served) => served,
        Err(err) => {
            // Closing the connection ends the trampoline.
            drop(plugin);
            trampoline.wait().await?;
            return Ok(Started::Unavailable(err.to_string()));
        }
    };
    drop(files);
    // The command's standard input is this plugin's, as it would be without a namespace.
    let stdin = nix::unistd::dup(std::io::stdin()).ok();
    let stdin: Vec<_> = stdin.iter().map(|stdin| stdin.as_raw_fd()).collect();
    fd_passing::send(&plugin, resolv_conf.as_bytes(), &stdin)?;
    match hear(plugin).await?.0 {
        // Its end closed as it exec'd the command.
        None => Ok(Started::InNamespace {
            child: Box::new(trampoline),
            served,
        }),
        Some(report) => {
            trampoline.wait().await?;
            match report {
                Report::NotStarted { reason } => anyhow::bail!("cannot run {program}: {reason}"),
                other => anyhow::bail!("cannot run {program}: the trampoline said {other:?}"),
            }
        }
    }
}

/// The trampoline's next report (none: it closed its end), with the files it sent.
async fn hear(plugin: OwnedFd) -> anyhow::Result<(Option<Report>, Vec<OwnedFd>, OwnedFd)> {
    tokio::task::spawn_blocking(move || {
        let mut message = vec![0u8; MAX_MESSAGE];
        let (len, files) = fd_passing::receive(&plugin, &mut message)?;
        let report = match len {
            0 => None,
            len => Some(serde_json::from_slice(&message[..len])?),
        };
        Ok((report, files, plugin))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_have_a_stable_json_form() {
        let unavailable = Report::Unavailable {
            reason: "no user namespaces".into(),
        };
        let json = serde_json::to_string(&unavailable).expect("json");
        assert_eq!(
            json,
            r#"{"state":"unavailable","reason":"no user namespaces"}"#
        );
        assert_eq!(
            serde_json::from_str::<Report>(&json).expect("read back"),
            unavailable
        );
    }
}
