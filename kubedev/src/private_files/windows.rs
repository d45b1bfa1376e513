//! The Windows implementation. Windows has no modes: a directory under the user's profile
//! inherits an access list that admits only that user, the system and administrators, and
//! files made in it inherit that. So kubedev's directories must be in the profile
//! (`%USERPROFILE%`); what else is checked is what could redirect a write: a symbolic link
//! or junction (a reparse point) where a directory or file belongs. Access lists are not
//! read: one changed by hand inside the profile is trusted.

use std::fs::{File, OpenOptions};
use std::os::windows::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::PrivateFileError;

/// `FILE_FLAG_OPEN_REPARSE_POINT`: opens a reparse point itself rather than its target, so
/// that a link planted where a file belongs is found and refused, not followed.
const OPEN_REPARSE_POINT: u32 = 0x0020_0000;

/// Makes `dir` (its missing parents too), or accepts it as it is if it is a real
/// directory; refused outside the user's profile.
pub fn private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    let profile = std::env::var_os("USERPROFILE").map(PathBuf::from);
    private_dir_in(dir, profile.as_deref())
}

/// [`private_dir`] with the profile given. The path is checked before anything is made,
/// then again as resolved once it exists, so that a junction along it cannot lead out of
/// the profile.
fn private_dir_in(dir: &Path, profile: Option<&Path>) -> Result<(), PrivateFileError> {
    in_profile(dir, profile)?;
    let Some(profile) = profile else {
        return Ok(());
    };
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PrivateFileError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    check_private_dir(dir)?;
    let resolved = std::fs::canonicalize(dir).map_err(io_error("resolve", dir))?;
    let resolved_profile = std::fs::canonicalize(profile).map_err(io_error("resolve", profile))?;
    in_profile(&resolved, Some(&resolved_profile)).map_err(|_| PrivateFileError::OutsideProfile {
        path: dir.to_owned(),
        profile: profile.to_owned(),
    })
}

/// Whether `dir` is a real directory, not a link to one.
pub fn check_private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    super::real_dir(dir).map(|_| ())
}

/// Refuses `dir` unless it is inside `profile` (compared as Windows does: letter case
/// aside); refused too when the profile is unknown.
fn in_profile(dir: &Path, profile: Option<&Path>) -> Result<(), PrivateFileError> {
    let lower = |path: &Path| path.to_string_lossy().to_lowercase().replace('/', "\\");
    let inside = profile.is_some_and(|profile| {
        let (dir, profile) = (lower(dir), lower(profile));
        let profile = profile.trim_end_matches('\\');
        dir.strip_prefix(profile)
            .is_some_and(|rest| rest.starts_with('\\'))
            && !dir.split('\\').any(|part| part == "..")
    });
    if inside {
        return Ok(());
    }
    Err(PrivateFileError::OutsideProfile {
        path: dir.to_owned(),
        profile: profile.map(Path::to_owned).unwrap_or_default(),
    })
}

/// Opens `file` for appending, creating it if missing.
pub fn append_own(file: &Path) -> Result<File, PrivateFileError> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    open_own(file, options, "open")
}

/// `file`, opened to be read, if it is a regular file (never through a link).
pub(super) fn open_to_read(file: &Path) -> Result<File, PrivateFileError> {
    let mut options = OpenOptions::new();
    options.read(true);
    open_own(file, options, "read")
}

/// `file`, opened to be written (made if missing), if it is a regular file.
pub(super) fn open_to_write(file: &Path) -> Result<File, PrivateFileError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true);
    open_own(file, options, "write")
}

/// Opens `file` as `options` say without following a link, and keeps it only if it is a
/// regular file.
fn open_own(
    file: &Path,
    mut options: OpenOptions,
    action: &'static str,
) -> Result<File, PrivateFileError> {
    options.custom_flags(OPEN_REPARSE_POINT);
    let opened = options.open(file).map_err(|source| PrivateFileError::Io {
        action,
        path: file.to_owned(),
        source,
    })?;
    super::regular_file(file, &opened, action)?;
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_inside_the_profile_are_taken() {
        let profile = Some(Path::new(r"C:\Users\Dev"));
        assert!(in_profile(Path::new(r"C:\Users\Dev\AppData\Local\kubedev"), profile).is_ok());
        assert!(in_profile(Path::new(r"c:\users\dev\kubedev"), profile).is_ok());
        for outside in [
            r"C:\kubedev",
            r"C:\ProgramData\kubedev",
            r"C:\Users\Developer\kubedev",
            r"C:\Users\Dev\..\Public\kubedev",
            r"C:\Users\Dev",
        ] {
            let refused = in_profile(Path::new(outside), profile).expect_err(outside);
            assert!(
                refused.to_string().contains("outside your profile"),
                "{refused}"
            );
        }
        assert!(in_profile(Path::new(r"C:\Users\Dev\kubedev"), None).is_err());
    }

    #[test]
    fn a_directory_made_in_the_profile_is_taken_as_resolved() {
        let root = std::env::temp_dir().join(format!("kubedev-profile-{}", std::process::id()));
        let profile = root.join("Dev");
        std::fs::create_dir_all(&profile).expect("profile");
        let spelled_otherwise = PathBuf::from(profile.to_string_lossy().to_uppercase());

        assert!(
            private_dir_in(&spelled_otherwise.join(r"AppData\kubedev"), Some(&profile)).is_ok()
        );
        assert!(profile.join(r"AppData\kubedev").is_dir());
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
