//! Paths resolved by the kernel beneath the volumes' root, at the moment they are used.
//! Checking a path and opening it later leaves a window in which the pod can swap a
//! directory for a symlink to anywhere in the agent's container. `openat2` with
//! `RESOLVE_BENEATH` refuses, in the very lookup that opens, every symlink that would leave
//! the root: absolute ones too, as they name the app's paths, not the agent's. Operations
//! that do not follow their last component (lstat, mkdir, remove, rename, readlink) resolve
//! its directory so and name the entry in it, with `*at` calls that never follow it.

use std::path::Path;
use std::sync::Arc;

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::confined;
use super::error::VolumeError;

/// Links in `/proc` (magic links) lead anywhere: `RESOLVE_BENEATH` refuses them today, but
/// openat2(2) says that may change, so they are refused by name.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
/// How often a lookup is tried when the kernel could not vouch for it: `EAGAIN` says a
/// rename elsewhere raced a `..` of a symlink, and the next try usually gets through.
const TRIES: usize = 8;

/// The volumes' root, held open: every path is resolved from it.
#[derive(Debug, Clone)]
pub(super) struct Beneath {
    root: Arc<OwnedFd>,
}

/// An entry named in its directory, for the calls that do not follow it.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) dir: OwnedFd,
    /// One component: no `/`, never `..`; `.` for the root itself.
    pub(super) name: String,
}

impl Beneath {
    pub(super) fn new(root: &Path) -> std::io::Result<Self> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(root, flags, Mode::empty())?;
        Ok(Self {
            root: Arc::new(root),
        })
    }

    /// The client's `path` opened with `flags` (and `mode`, when it creates), its symlinks
    /// followed only as long as they stay beneath the root.
    pub(super) fn open(
        &self,
        path: &str,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, VolumeError> {
        let confined = confined(path);
        let relative = match confined.trim_start_matches('/') {
            "" => ".",
            relative => relative,
        };
        let flags = flags | OFlags::CLOEXEC;
        let mut tries = 1;
        loop {
            match rustix::fs::openat2(&*self.root, relative, flags, mode, RESOLVE) {
                Err(Errno::AGAIN) if tries < TRIES => tries += 1,
                opened => return opened.map_err(|errno| refusal(errno, &confined)),
            }
        }
    }

    /// The directory the client's `path` names an entry in, resolved beneath the root, and
    /// the entry's name.
    pub(super) fn entry(&self, path: &str) -> Result<Entry, VolumeError> {
        let confined = confined(path);
        let (dir, name) = match confined.rsplit_once('/') {
            Some((dir, name)) if !name.is_empty() => (dir, name),
            _ => ("/", "."),
        };
        let dir = self.open(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok(Entry {
            dir,
            name: name.to_owned(),
        })
    }
}

/// What `openat2` failing with `errno` on `path` tells the client.
fn refusal(errno: Errno, path: &str) -> VolumeError {
    match errno {
        Errno::XDEV => VolumeError::Outside {
            path: path.to_owned(),
        },
        Errno::NOSYS => VolumeError::NoOpenat2,
        errno => errno.into(),
    }
}

#[cfg(test)]
mod tests {
    use russh_sftp::protocol::StatusCode;

    use super::*;

    #[test]
    fn a_kernel_without_openat2_gets_a_status_that_says_so() {
        let status = refusal(Errno::NOSYS, "/data/seed.txt").status(7);
        assert_eq!(status.status_code, StatusCode::OpUnsupported);
        assert!(status.error_message.contains("Linux 5.6"), "{status:?}");
    }

    #[test]
    fn a_path_that_leads_out_is_refused_by_name() {
        let status = refusal(Errno::XDEV, "/data/out").status(8);
        assert_eq!(status.status_code, StatusCode::PermissionDenied);
        assert!(status.error_message.starts_with("/data/out "), "{status:?}");
    }
}
