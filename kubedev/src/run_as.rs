//! Who the plugins run as: the developer, never root through sudo. A plugin run with sudo
//! would leave root's sockets, logs and state where the developer works, which the
//! developer's next run can neither use nor remove. Without root, `-- CMD` gets the
//! cluster's network in a namespace of its own and other programs get tunneld's proxy.

use std::ffi::OsString;
use std::path::PathBuf;

/// Set to `1` to run a plugin as root through sudo anyway.
pub const ALLOW_ROOT_ENV: &str = "KUBEDEV_ALLOW_ROOT";

/// Where a plugin run as root through sudo keeps tunneld's sockets, state and logs.
pub const ROOT_RUNTIME_DIR: &str = "/run/kubedev";

/// How a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// As the user who started it, in that user's own places (root logged in as root too).
    Itself,
    /// As root through sudo, with `KUBEDEV_ALLOW_ROOT=1`: nothing goes to the places of
    /// the user who ran sudo (their runtime directory, their home); root's own are used.
    RootThroughSudo,
}

/// A plugin run as root through sudo without `KUBEDEV_ALLOW_ROOT=1`.
#[derive(Debug, thiserror::Error)]
#[error(
    "kubedev runs as the developer and needs no root: run it without sudo (as uid \
     {sudo_uid}, who ran sudo): `-- CMD` gets the cluster's network in a namespace of its \
     own, and other programs through tunneld's proxy (`status` shows it); the network helper, \
     started once as root, brings it to the whole machine: `{helper}`. To run kubedev as root \
     anyway, set {ALLOW_ROOT_ENV}=1"
)]
pub struct UnderSudo {
    sudo_uid: String,
    /// The command that starts the network helper for the user who ran sudo.
    helper: String,
}

/// How this process runs, from its effective user and sudo's `SUDO_UID`; refused when it
/// is root through sudo and `KUBEDEV_ALLOW_ROOT` is not `1`.
pub fn run_as() -> Result<RunAs, UnderSudo> {
    #[cfg(unix)]
    let root = nix::unistd::geteuid().is_root();
    // Windows has no sudo: an elevated prompt runs as the same user.
    #[cfg(windows)]
    let root = false;
    decide(
        root,
        std::env::var_os("SUDO_UID"),
        std::env::var_os(ALLOW_ROOT_ENV),
    )
}

/// `sudo TUNNELD network-helper --user NAME`, for the user who ran sudo.
fn helper_command(sudo_uid: &str) -> String {
    let user = std::env::var("SUDO_USER").unwrap_or_else(|_| sudo_uid.to_owned());
    let tunneld = crate::tunneld::binary::tunneld_binary();
    format!("sudo {} network-helper --user {user}", tunneld.display())
}

fn decide(
    root: bool,
    sudo_uid: Option<OsString>,
    allow_root: Option<OsString>,
) -> Result<RunAs, UnderSudo> {
    match sudo_uid {
        Some(sudo_uid) if root => {
            if allow_root.is_some_and(|allowed| allowed == "1") {
                Ok(RunAs::RootThroughSudo)
            } else {
                let sudo_uid = sudo_uid.to_string_lossy().into_owned();
                Err(UnderSudo {
                    helper: helper_command(&sudo_uid),
                    sudo_uid,
                })
            }
        }
        _ => Ok(RunAs::Itself),
    }
}

/// Whether this process is root through sudo (allowed or not): it must then keep out of
/// the invoking user's places.
pub fn through_sudo() -> bool {
    !matches!(run_as(), Ok(RunAs::Itself))
}

/// Where temporary directories go: the system's temporary directory, or /tmp for root
/// through sudo (whose `TMPDIR` may be the invoking user's).
pub fn temp_dir() -> PathBuf {
    if through_sudo() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// Root's home directory, for root through sudo (whose `HOME` may be the invoking user's).
#[cfg(unix)]
pub fn root_home() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0))
        .ok()
        .flatten()
        .map_or_else(|| PathBuf::from("/root"), |root| root.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_through_sudo_is_refused_unless_allowed() {
        let sudo = || Some(OsString::from("1000"));
        let err = decide(true, sudo(), None).expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("without sudo"), "{message}");
        assert!(message.contains("namespace of its own"), "{message}");
        assert!(message.contains("KUBEDEV_ALLOW_ROOT=1"), "{message}");
        assert!(
            message.contains("tunneld network-helper --user "),
            "{message}"
        );
        assert!(decide(true, sudo(), Some("0".into())).is_err());
        assert_eq!(
            decide(true, sudo(), Some("1".into())).expect("allowed"),
            RunAs::RootThroughSudo
        );
        // Root logged in as root, and a user whose environment says SUDO_UID.
        assert_eq!(decide(true, None, None).expect("root"), RunAs::Itself);
        assert_eq!(decide(false, sudo(), None).expect("user"), RunAs::Itself);
    }
}
