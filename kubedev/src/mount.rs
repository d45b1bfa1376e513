//! The app container's volumes on the workstation. `sshfs -o passive` speaks SFTP over its
//! stdin and stdout, which are a connection to tunneld's control socket that tunneld turned
//! into an SFTP session with an agent: no port is opened on this machine. A volume the app
//! mounts at /x/y appears at DIR/x/y.

//! macOS mounts with macFUSE's sshfs. On Windows, SSHFS-Win's file system driver cannot
//! run where kubedev is tested, so nothing mounts there yet (docs/platforms.md): a session
//! goes on without its volumes, and says so.

use std::path::PathBuf;

use crate::tunneld::TunneldError;

#[cfg(unix)]
mod given_dir;
#[cfg(unix)]
mod sshfs;
#[cfg(unix)]
mod table;
#[cfg(windows)]
mod unavailable;

#[cfg(unix)]
pub use given_dir::check_given_dir;
#[cfg(unix)]
pub use sshfs::{Mount, mount, unmount_session};
#[cfg(windows)]
pub use unavailable::{Mount, check_given_dir, mount, unmount_session};

/// Where the user wants the volumes (`--mount DIR[:ro]|true|false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountChoice {
    /// A new temporary directory (the default, or `--mount true`).
    Temporary,
    /// This directory, created if it is missing.
    Dir {
        /// Where.
        path: PathBuf,
        /// Mounted read-only (`DIR:ro`).
        read_only: bool,
    },
    /// No mount (`--mount false`).
    No,
}

impl std::str::FromStr for MountChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "false" | "no" => Ok(Self::No),
            "true" | "yes" => Ok(Self::Temporary),
            "" => {
                Err("expected DIR, DIR:ro, true or false (a directory named true: ./true)".into())
            }
            _ => Ok(match text.strip_suffix(":ro") {
                Some(path) => Self::Dir {
                    path: path.into(),
                    read_only: true,
                },
                None => Self::Dir {
                    path: text.into(),
                    read_only: false,
                },
            }),
        }
    }
}

/// Why the volumes could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be made.
    #[error("cannot create {}", dir.display())]
    CreateDir {
        /// The mount point.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The mount point given is not a directory of this user's own.
    #[error(
        "--mount {}: it belongs to uid {owner}, not to you (uid {you}): choose a directory \
         of your own",
        dir.display()
    )]
    NotOwn {
        /// The mount point.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user kubedev runs as.
        you: u32,
    },
    /// The mount point given is not a directory.
    #[error("--mount {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The mount point given is a symbolic link: what it points to could change.
    #[error("--mount {}: a symbolic link; give the directory itself", .0.display())]
    Link(PathBuf),
    /// The mount point given is in a directory others may change (swap it for a link).
    #[error(
        "--mount {}: {} can be changed by other users; choose a directory in one of your own",
        dir.display(),
        parent.display()
    )]
    SharedParent {
        /// The mount point.
        dir: PathBuf,
        /// Its parent.
        parent: PathBuf,
    },
    /// sshfs is not installed, or cannot run.
    #[error("cannot run sshfs, which mounts the volumes (install it, or pass --mount false)")]
    NoSshfs {
        /// Why it could not be run.
        source: std::io::Error,
    },
    /// sshfs exited before the volumes were mounted.
    #[error("sshfs could not mount the volumes ({status}){}", said_by_sshfs(said))]
    Failed {
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it printed on stderr (its first few KiB).
        said: String,
    },
    /// sshfs did not mount them in time.
    #[error("sshfs did not mount the volumes within {0:?}")]
    Timeout(std::time::Duration),
    /// This system cannot mount them.
    #[error(
        "mounting the volumes is not available on {0}: pass --mount false, and read them \
         in the cluster (`kubectl exec`, `kubectl cp`)"
    )]
    NotOnThisSystem(&'static str),
    /// tunneld could not open an SFTP session with an agent.
    #[error("cannot open the volumes through tunneld")]
    Files(#[from] TunneldError),
    /// The connection to tunneld could not be handed to sshfs.
    #[error("the volumes' connection to tunneld")]
    Connection(#[from] std::io::Error),
}

/// ": WHAT" sshfs printed, on one line, or nothing if it printed nothing.
fn said_by_sshfs(said: &str) -> String {
    let lines: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    match lines.is_empty() {
        true => String::new(),
        false => format!(": {}", lines.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_choices_read_as_kubectl_flags_do() {
        let parse = |text: &str| text.parse::<MountChoice>();
        assert_eq!(parse("false"), Ok(MountChoice::No));
        assert_eq!(parse("true"), Ok(MountChoice::Temporary));
        let dir = |path: &str, read_only| MountChoice::Dir {
            path: path.into(),
            read_only,
        };
        assert_eq!(parse("./true"), Ok(dir("./true", false)));
        assert_eq!(parse("/mnt/app:ro"), Ok(dir("/mnt/app", true)));
        assert!(parse("").is_err());
    }

    #[test]
    fn what_sshfs_said_is_one_line_after_the_status() {
        assert_eq!(said_by_sshfs(""), "");
        assert_eq!(said_by_sshfs("\n  \n"), "");
        assert_eq!(
            said_by_sshfs("fuse: device not found\nread: Connection reset by peer\n"),
            ": fuse: device not found; read: Connection reset by peer"
        );
    }
}
