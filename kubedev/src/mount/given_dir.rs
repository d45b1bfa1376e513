//! A directory the user names for the volumes (`--mount DIR`): it must be the user's own,
//! not a symbolic link, and in a directory no one else can change, or whoever can could
//! swap it, between the check and the mount, for a link to somewhere the volumes (which
//! the cluster writes) must not land.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::MountError;

/// Refuses a directory the user gave for the volumes that exists and is not a directory
/// of this user's own: checked before the session changes anything.
pub fn check_given_dir(path: &Path) -> Result<(), MountError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            own_dir(path, &meta)?;
            safe_parent(path)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MountError::CreateDir {
            dir: path.to_owned(),
            source,
        }),
    }
}

/// The directory the user gave for the volumes: made if missing, and refused if it is
/// anyone else's, a link, or in a directory others may change.
pub(super) fn user_dir(path: &Path) -> Result<PathBuf, MountError> {
    let create_error = |source| MountError::CreateDir {
        dir: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(create_error)?;
    let meta = std::fs::symlink_metadata(path).map_err(create_error)?;
    own_dir(path, &meta)?;
    safe_parent(path)?;
    path.canonicalize().map_err(create_error)
}

/// Refuses what is not a directory of this user's own.
fn own_dir(path: &Path, meta: &std::fs::Metadata) -> Result<(), MountError> {
    if meta.file_type().is_symlink() {
        return Err(MountError::Link(path.to_owned()));
    }
    if !meta.is_dir() {
        return Err(MountError::NotADirectory(path.to_owned()));
    }
    let you = crate::private_files::own_uid();
    if meta.uid() != you {
        return Err(MountError::NotOwn {
            dir: path.to_owned(),
            owner: meta.uid(),
            you,
        });
    }
    Ok(())
}

/// Refuses a parent that is neither this user's nor root's, or that others may write to
/// without the sticky bit (which keeps them from renaming what is not theirs).
fn safe_parent(path: &Path) -> Result<(), MountError> {
    let absolute = std::path::absolute(path).map_err(|source| MountError::CreateDir {
        dir: path.to_owned(),
        source,
    })?;
    let Some(parent) = absolute.parent() else {
        return Ok(());
    };
    let meta = std::fs::metadata(parent).map_err(|source| MountError::CreateDir {
        dir: path.to_owned(),
        source,
    })?;
    let owner_trusted = meta.uid() == crate::private_files::own_uid() || meta.uid() == 0;
    let others_may_swap = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
    if owner_trusted && !others_may_swap {
        return Ok(());
    }
    Err(MountError::SharedParent {
        dir: path.to_owned(),
        parent: parent.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_mount_dir_given_must_be_a_directory_of_ones_own() {
        let dir = std::env::temp_dir().join(format!("kubedev-given-{}", std::process::id()));
        let made = user_dir(&dir.join("volumes")).expect("made");
        assert!(made.is_dir());
        let file = dir.join("file");
        std::fs::write(&file, "").expect("file");
        assert!(matches!(
            user_dir(&file),
            Err(MountError::CreateDir { .. } | MountError::NotADirectory(_))
        ));
        // Someone else's directory (root's, or whoever else's this user is not).
        let theirs = if crate::private_files::own_uid() == 0 {
            let theirs = dir.join("theirs");
            std::fs::create_dir_all(&theirs).expect("dir");
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
            theirs
        } else {
            PathBuf::from("/")
        };
        let err = user_dir(&theirs).expect_err("not own");
        assert!(matches!(err, MountError::NotOwn { .. }), "{err}");
        assert!(matches!(
            check_given_dir(&theirs),
            Err(MountError::NotOwn { .. })
        ));
        assert!(check_given_dir(&dir.join("not yet")).is_ok());
        assert!(
            err.to_string().contains("choose a directory of your own"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_link_or_a_directory_others_may_swap_is_refused() {
        let dir = std::env::temp_dir().join(format!("kubedev-swap-{}", std::process::id()));
        let own = dir.join("own");
        std::fs::create_dir_all(&own).expect("dir");
        // A link planted to one of the user's own directories.
        let planted = dir.join("planted");
        std::os::unix::fs::symlink(&own, &planted).expect("link");
        assert!(matches!(user_dir(&planted), Err(MountError::Link(_))));
        assert!(matches!(
            check_given_dir(&planted),
            Err(MountError::Link(_))
        ));
        // A directory anyone may write to, without the sticky bit.
        let shared = dir.join("shared");
        std::fs::create_dir_all(shared.join("volumes")).expect("dirs");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = user_dir(&shared.join("volumes")).expect_err("refused");
        assert!(matches!(err, MountError::SharedParent { .. }), "{err}");
        // With the sticky bit (as /tmp has it), no one else can swap it.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(user_dir(&shared.join("volumes")).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
