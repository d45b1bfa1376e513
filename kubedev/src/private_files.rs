//! Directories and files that only the user kubedev runs as can have made: tunneld's
//! runtime and state directories, its socket's directory, its log and the state it reads
//! back. Another local user who made one of them first (in /tmp, say) could read the
//! sessions' secrets, plant what tunneld writes back into /etc/resolv.conf, or make the
//! plugins write through a symbolic link; so a directory is made with mode 0700 by a mkdir
//! that never follows a symbolic link, a file is opened with `O_NOFOLLOW`, and either one
//! found already there is used only if it is a real directory (or regular file) of this
//! user's own.

//!
//! On Windows the same functions keep the directories and files under the user's own
//! profile (`%LOCALAPPDATA%`), whose access list admits only that user, the system and
//! administrators; they refuse symbolic links (reparse points) as on Unix.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use unix as platform;
#[cfg(unix)]
pub use unix::{append_own, check_private_dir, own_uid, private_dir};
#[cfg(windows)]
use windows as platform;
#[cfg(windows)]
pub use windows::{append_own, check_private_dir, private_dir};

/// Why a private directory or file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// It could not be made or opened.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done: `create`, `open`, `read`, `write`.
        action: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A symbolic link stands where a directory or file of kubedev's own belongs.
    #[error(
        "{} is a symbolic link, where kubedev keeps a {kind} of its own: remove it",
        path.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
        /// `directory` or `file`.
        kind: &'static str,
    },
    /// Something else than a directory (or regular file) is there.
    #[error("{} is not a {kind}: remove it", path.display())]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// `directory` or `file`.
        kind: &'static str,
    },
    /// Another user made it.
    #[error(
        "{} belongs to uid {owner}{}, not to uid {you} that kubedev runs as: remove it (its \
         owner or root can)",
        path.display(),
        if *owner == 0 { " (root: was kubedev run with sudo?)" } else { "" }
    )]
    NotOwn {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user kubedev runs as.
        you: u32,
    },
    /// A directory outside the user's profile (Windows), whose access list is not known
    /// to keep other users out.
    #[error(
        "{} is outside your profile ({}), whose access list keeps other users out: use a \
         directory in it, or unset KUBEDEV_RUNTIME_DIR",
        path.display(),
        profile.display()
    )]
    OutsideProfile {
        /// The directory.
        path: PathBuf,
        /// The user's profile.
        profile: PathBuf,
    },
    /// A directory that a link or junction along its path leads out of the user's profile
    /// (Windows).
    #[error(
        "{} leads to {}, outside your profile, whose access list keeps other users out: a \
         link or junction along it points elsewhere; use a directory in the profile, or \
         unset KUBEDEV_RUNTIME_DIR",
        path.display(),
        resolved.display()
    )]
    LeadsOutOfProfile {
        /// The directory, as given.
        path: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
    },
    /// A directory of this user's own that others may read or write.
    #[error(
        "{} is open to other users (mode {mode:o}): make it private with `chmod 700 {}`, \
         or remove it",
        path.display(),
        path.display()
    )]
    OpenToOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The content of `file`, if there is one, as long as it is a regular file of this user's
/// own (never through a symbolic link).
pub fn read_own(file: &Path) -> Result<Option<String>, PrivateFileError> {
    let mut opened = match platform::open_to_read(file) {
        Ok(opened) => opened,
        Err(PrivateFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let mut content = String::new();
    opened
        .read_to_string(&mut content)
        .map_err(|source| PrivateFileError::Io {
            action: "read",
            path: file.to_owned(),
            source,
        })?;
    Ok(Some(content))
}

/// Replaces the content of `file` (a regular file of this user's own, made private if
/// missing) with `content`.
pub fn write_own(file: &Path, content: &str) -> Result<(), PrivateFileError> {
    let mut opened = platform::open_to_write(file)?;
    opened
        .set_len(0)
        .and_then(|()| opened.write_all(content.as_bytes()))
        .map_err(|source| PrivateFileError::Io {
            action: "write",
            path: file.to_owned(),
            source,
        })
}

/// What is at `dir`, if it is a real directory: not a symbolic link to one.
fn real_dir(dir: &Path) -> Result<std::fs::Metadata, PrivateFileError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| PrivateFileError::Io {
        action: "open",
        path: dir.to_owned(),
        source,
    })?;
    let kind = "directory";
    if meta.file_type().is_symlink() {
        return Err(PrivateFileError::Symlink {
            path: dir.to_owned(),
            kind,
        });
    }
    if !meta.is_dir() {
        return Err(PrivateFileError::WrongKind {
            path: dir.to_owned(),
            kind,
        });
    }
    Ok(meta)
}

/// What `opened` (`file`, opened to `action`) is, if it is a regular file: not a link, a
/// directory, a pipe or a device.
fn regular_file(
    file: &Path,
    opened: &std::fs::File,
    action: &'static str,
) -> Result<std::fs::Metadata, PrivateFileError> {
    let meta = opened.metadata().map_err(|source| PrivateFileError::Io {
        action,
        path: file.to_owned(),
        source,
    })?;
    let kind = "file";
    if meta.file_type().is_symlink() {
        return Err(PrivateFileError::Symlink {
            path: file.to_owned(),
            kind,
        });
    }
    if !meta.is_file() {
        return Err(PrivateFileError::WrongKind {
            path: file.to_owned(),
            kind,
        });
    }
    Ok(meta)
}
