//! The modes a client sets on files in the volumes: their permissions and sticky bit, never
//! setuid or setgid, with which a file from the workstation would run as its owner in the
//! pod, often root.

use std::os::fd::{AsRawFd as _, OwnedFd};

use rustix::fs::Mode;
use rustix::io::Errno;

use super::error::VolumeError;

/// The mode bits a client may set.
const SETTABLE_MODE: u32 = 0o1777;

/// The mode a client asked for, without what it may not set.
pub(super) fn settable(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode & SETTABLE_MODE)
}

/// Sets the mode of `target`, a file opened with `O_PATH`, which fchmod(2) does not take;
/// chmod(2) on its path would follow a symlink swapped in since it was resolved. Its link
/// in `/proc/self/fd` leads to the very file it was opened as.
pub(super) fn chmod(target: &OwnedFd, mode: u32) -> Result<(), VolumeError> {
    let link = format!("/proc/self/fd/{}", target.as_raw_fd());
    match rustix::fs::chmod(link.as_str(), settable(mode)) {
        Err(Errno::NOENT) => Err(VolumeError::NoProc),
        changed => Ok(changed?),
    }
}
