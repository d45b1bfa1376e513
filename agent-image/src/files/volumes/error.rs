//! Why a request on the volumes failed: the SFTP status the client acts on, and a message
//! for whoever reads it (sshfs shows it with `-o sshfs_debug`).

use std::io::ErrorKind;
use std::path::PathBuf;

use russh_sftp::protocol::{Status, StatusCode};

use super::MAX_HANDLES;

/// One request's failure.
#[derive(Debug, thiserror::Error)]
pub(super) enum VolumeError {
    #[error(
        "the volumes are read-only in an ingest session: change them with replace or intercept"
    )]
    ReadOnly,
    #[error("{path} leads out of the volumes through a symlink: only files under them are served")]
    Outside { path: String },
    #[error("{path} is a {kind}, not a regular file: only regular files are opened")]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "the pod's kernel has no openat2 (Linux 5.6 or later is needed): the volumes are served \
         only where the kernel can keep every path inside them"
    )]
    NoOpenat2,
    #[error("{MAX_HANDLES} files and directories are open in this session: close some first")]
    TooManyOpen,
    #[error("no file or directory is open as handle {handle:?}")]
    NoHandle { handle: String },
    #[error("the volumes root {} cannot be opened: {kind}", root.display())]
    Root { root: PathBuf, kind: ErrorKind },
    #[error("modes cannot be changed: /proc is not mounted in the agent's container")]
    NoProc,
    #[error("end of file")]
    Eof,
    #[error("symlinks cannot be made, and no extension is served")]
    Unsupported,
    #[error("not a request an SFTP server takes")]
    BadMessage,
    #[error("the agent's worker for this request stopped: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<rustix::io::Errno> for VolumeError {
    fn from(errno: rustix::io::Errno) -> Self {
        Self::Io(errno.into())
    }
}

impl VolumeError {
    fn code(&self) -> StatusCode {
        match self {
            Self::ReadOnly | Self::Outside { .. } | Self::NotRegular { .. } => {
                StatusCode::PermissionDenied
            }
            Self::NoOpenat2 | Self::Unsupported => StatusCode::OpUnsupported,
            Self::Eof => StatusCode::Eof,
            Self::BadMessage => StatusCode::BadMessage,
            Self::Io(err) => match err.kind() {
                ErrorKind::NotFound => StatusCode::NoSuchFile,
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                    StatusCode::PermissionDenied
                }
                _ => StatusCode::Failure,
            },
            Self::TooManyOpen
            | Self::NoHandle { .. }
            | Self::Root { .. }
            | Self::NoProc
            | Self::Worker(_) => StatusCode::Failure,
        }
    }

    /// The status that answers request `id`.
    pub(super) fn status(&self, id: u32) -> Status {
        Status {
            id,
            status_code: self.code(),
            error_message: self.to_string(),
            language_tag: "en-US".into(),
        }
    }
}
