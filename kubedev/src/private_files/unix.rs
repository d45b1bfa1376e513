//! The Unix implementation: modes, owners and `O_NOFOLLOW`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use nix::fcntl::OFlag;

use super::PrivateFileError;

/// The user kubedev runs as, whose directories and files it trusts.
pub fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Makes `dir` with mode 0700 (its missing parents too), or accepts it as it is if it is a
/// real directory of this user's own that no one else may read or write.
pub fn private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    let io = |source| PrivateFileError::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o700);
    // mkdir(2) never follows a symbolic link in the last component: one there is EEXIST.
    match builder.create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                builder.recursive(true).create(parent).map_err(io)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(io(err));
                }
                _ => {}
            }
        }
        Err(err) => return Err(io(err)),
    }
    check_private_dir(dir)
}

/// Whether `dir` is a real directory of this user's own that no one else may read or write.
pub fn check_private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    check_dir_of(dir, own_uid())
}

/// Whether `dir` is a real directory of user `you` that no one else may read or write.
fn check_dir_of(dir: &Path, you: u32) -> Result<(), PrivateFileError> {
    let meta = super::real_dir(dir)?;
    owned(dir, &meta, you)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::OpenToOthers {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Refuses what another user than `you` owns.
fn owned(path: &Path, meta: &std::fs::Metadata, you: u32) -> Result<(), PrivateFileError> {
    if meta.uid() == you {
        Ok(())
    } else {
        Err(PrivateFileError::NotOwn {
            path: path.to_owned(),
            owner: meta.uid(),
            you,
        })
    }
}

/// Opens `file` for appending, creating it with mode 0600: a crash's log survives the next
/// start.
pub fn append_own(file: &Path) -> Result<File, PrivateFileError> {
    let mut options = OpenOptions::new();
    options.append(true).create(true).mode(0o600);
    open_own(file, options, OFlag::empty(), "open")
}

/// `file`, opened to be read, if it is a regular file of this user's own (never through a
/// symbolic link).
pub(super) fn open_to_read(file: &Path) -> Result<File, PrivateFileError> {
    let mut options = OpenOptions::new();
    options.read(true);
    // Non-blocking: a FIFO planted there must not hang the reader (it is refused below).
    open_own(file, options, OFlag::O_NONBLOCK, "read")
}

/// `file`, opened to be written (made with mode 0600 if missing, set to it if not), if it
/// is a regular file of this user's own.
pub(super) fn open_to_write(file: &Path) -> Result<File, PrivateFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut options = OpenOptions::new();
    // Not O_TRUNC: nothing is changed before the file is known to be this user's. Not
    // blocking: a pipe planted with no reader would hold the open forever.
    options.write(true).create(true).mode(0o600);
    let opened = open_own(file, options, OFlag::O_NONBLOCK, "write")?;
    opened
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|source| PrivateFileError::Io {
            action: "write",
            path: file.to_owned(),
            source,
        })?;
    Ok(opened)
}

/// Opens `file` as `options` and `flags` say, never through a symbolic link, and keeps it
/// only if it is a regular file of this user's own.
fn open_own(
    file: &Path,
    mut options: OpenOptions,
    flags: OFlag,
    action: &'static str,
) -> Result<File, PrivateFileError> {
    options.custom_flags((flags | OFlag::O_NOFOLLOW).bits());
    let kind = "file";
    let opened = options.open(file).map_err(|source| {
        let found = std::fs::symlink_metadata(file);
        match found {
            Ok(meta) if meta.file_type().is_symlink() => PrivateFileError::Symlink {
                path: file.to_owned(),
                kind,
            },
            Ok(meta) if meta.uid() != own_uid() => PrivateFileError::NotOwn {
                path: file.to_owned(),
                owner: meta.uid(),
                you: own_uid(),
            },
            _ => PrivateFileError::Io {
                action,
                path: file.to_owned(),
                source,
            },
        }
    })?;
    let meta = super::regular_file(file, &opened, action)?;
    owned(file, &meta, own_uid())?;
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::private_files::{read_own, write_own};
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    /// A directory for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("kubedev-private-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_private_dir_is_made_0700_with_its_parents_and_accepted_again() {
        let scratch = Scratch::new("made");
        let dir = scratch.0.join("a/b/kubedev");
        private_dir(&dir).expect("made");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&scratch.0.join("a")), 0o700);
        private_dir(&dir).expect("accepted as it is");
    }

    #[test]
    fn a_dir_made_first_by_someone_else_open_or_linked_is_refused() {
        let scratch = Scratch::new("refused");
        let open = scratch.0.join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = private_dir(&open).expect_err("open to others");
        assert!(
            matches!(err, PrivateFileError::OpenToOthers { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 700"), "{err}");

        // A link to a directory that would pass: the link itself is what is refused.
        let own = scratch.0.join("own");
        private_dir(&own).expect("made");
        let link = scratch.0.join("link");
        std::os::unix::fs::symlink(&own, &link).expect("symlink");
        let err = private_dir(&link).expect_err("a link");
        assert!(matches!(err, PrivateFileError::Symlink { .. }), "{err}");

        let file = scratch.0.join("file");
        std::fs::write(&file, "").expect("file");
        assert!(matches!(
            private_dir(&file),
            Err(PrivateFileError::WrongKind { .. })
        ));

        // As another user sees this user's private directory.
        let err = check_dir_of(&own, own_uid() + 1).expect_err("not theirs");
        assert!(matches!(err, PrivateFileError::NotOwn { .. }), "{err}");
        assert!(err.to_string().contains("remove it"), "{err}");
    }

    #[test]
    fn files_are_never_opened_through_a_link_and_appends_keep_what_was_there() {
        let scratch = Scratch::new("files");
        let target = scratch.0.join("precious");
        std::fs::write(&target, "precious\n").expect("write");
        let link = scratch.0.join("tunneld.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        for err in [
            append_own(&link).map(|_| ()).expect_err("append"),
            write_own(&link, "x").expect_err("write"),
            read_own(&link).map(|_| ()).expect_err("read"),
        ] {
            assert!(matches!(err, PrivateFileError::Symlink { .. }), "{err}");
        }
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "precious\n"
        );

        let log = scratch.0.join("own.log");
        writeln!(append_own(&log).expect("open"), "first run").expect("write");
        writeln!(append_own(&log).expect("open"), "second run").expect("write");
        assert_eq!(mode(&log), 0o600);
        assert_eq!(
            read_own(&log).expect("read").as_deref(),
            Some("first run\nsecond run\n")
        );
        write_own(&log, "replaced").expect("write");
        assert_eq!(read_own(&log).expect("read").as_deref(), Some("replaced"));
        assert_eq!(read_own(&scratch.0.join("missing")).expect("read"), None);
    }

    #[test]
    fn a_fifo_planted_for_a_reader_is_refused_without_hanging() {
        let scratch = Scratch::new("fifo");
        let fifo = scratch.0.join("resolv.conf.original");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(matches!(
            read_own(&fifo),
            Err(PrivateFileError::WrongKind { .. })
        ));
    }
}
