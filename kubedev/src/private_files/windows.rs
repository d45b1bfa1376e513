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
    let Some(profile) = profile.filter(|profile| profile.is_absolute()) else {
        return Err(outside(dir, Path::new("")));
    };
    private_dir_in(dir, &profile)
}

/// [`private_dir`] with the profile given. Where `dir` leads is checked on resolved paths
/// (links, junctions, short names and letter case as the file system has them): first the
/// part of it that exists, before anything is made, then all of it once made.
fn private_dir_in(dir: &Path, profile: &Path) -> Result<(), PrivateFileError> {
    let profile = resolve(profile)?;
    if profile.parent().is_none() {
        return Err(outside(dir, &profile));
    }
    let (existing, missing) = existing_part(dir).ok_or_else(|| outside(dir, &profile))?;
    inside(dir, &resolve(existing)?.join(missing), &profile)?;
    std::fs::create_dir_all(dir).map_err(|source| PrivateFileError::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;
    check_private_dir(dir)?;
    inside(dir, &resolve(dir)?, &profile)
}

/// Splits `dir` into its longest part that exists and the names below it; a `..` among
/// the missing names is refused, since where it leads is known only once they exist.
fn existing_part(dir: &Path) -> Option<(&Path, PathBuf)> {
    let mut existing = dir;
    while std::fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    let missing = dir.strip_prefix(existing).unwrap_or(dir).to_owned();
    let climbs = missing
        .components()
        .any(|part| !matches!(part, std::path::Component::Normal(_)));
    (!climbs).then_some((existing, missing))
}

/// Whether `dir` is a real directory, not a link to one.
pub fn check_private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    super::real_dir(dir).map(|_| ())
}

/// `path` as the file system resolves it.
fn resolve(path: &Path) -> Result<PathBuf, PrivateFileError> {
    std::fs::canonicalize(path).map_err(|source| PrivateFileError::Io {
        action: "resolve",
        path: path.to_owned(),
        source,
    })
}

/// Refuses `dir` unless `resolved`, where it leads, is below the resolved `profile`.
fn inside(dir: &Path, resolved: &Path, profile: &Path) -> Result<(), PrivateFileError> {
    if resolved.starts_with(profile) && resolved != profile {
        return Ok(());
    }
    Err(PrivateFileError::LeadsOutOfProfile {
        path: dir.to_owned(),
        resolved: resolved.to_owned(),
    })
}

/// The refusal of `dir`, which is not in `profile`.
fn outside(dir: &Path, profile: &Path) -> PrivateFileError {
    PrivateFileError::OutsideProfile {
        path: dir.to_owned(),
        profile: profile.to_owned(),
    }
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

    /// A profile of its own for a test, removed when dropped.
    struct Profile(PathBuf);

    impl Profile {
        fn new(test: &str) -> Self {
            let root = std::env::temp_dir().join(format!("kubedev-{test}-{}", std::process::id()));
            std::fs::create_dir_all(root.join("Dev")).expect("profile");
            Self(root)
        }

        fn dir(&self) -> PathBuf {
            self.0.join("Dev")
        }
    }

    impl Drop for Profile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn directories_in_the_profile_are_made_however_spelled() {
        let profile = Profile::new("in");
        let spelled_otherwise = PathBuf::from(profile.dir().to_string_lossy().to_uppercase());
        private_dir_in(&spelled_otherwise.join(r"AppData\kubedev"), &profile.dir())
            .expect("in the profile");
        assert!(profile.dir().join(r"AppData\kubedev").is_dir());
        private_dir_in(&profile.dir().join(r"AppData\kubedev"), &profile.dir())
            .expect("taken as it is once made");
    }

    #[test]
    fn directories_outside_the_profile_are_refused_before_anything_is_made() {
        let profile = Profile::new("out");
        let beside = profile.0.join("Developer").join("kubedev");
        let climbing = profile.dir().join(r"new\..\..\Public");
        for outside in [beside.as_path(), &climbing, &profile.dir(), &profile.0] {
            let refused = private_dir_in(outside, &profile.dir()).expect_err("outside");
            assert!(
                refused.to_string().contains("outside your profile"),
                "{refused}"
            );
        }
        assert!(!profile.0.join("Developer").exists(), "nothing made");
        assert!(!profile.dir().join("new").exists(), "nothing made");
    }

    #[test]
    fn a_drive_root_is_no_profile() {
        let root = PathBuf::from(r"C:\");
        let refused = private_dir_in(&root.join("kubedev"), &root).expect_err("the root");
        assert!(
            refused.to_string().contains("outside your profile"),
            "{refused}"
        );
    }
}
