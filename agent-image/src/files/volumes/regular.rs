//! Files opened for a client: regular files only, opened without waiting.

use russh_sftp::protocol::OpenFlags;
use rustix::fs::{FileType, Mode, OFlags};

use super::beneath::Beneath;
use super::confined;
use super::error::VolumeError;

/// The open(2) flags an SFTP open asks for.
pub(super) fn open_flags(pflags: OpenFlags) -> OFlags {
    let mut flags = match (
        pflags.contains(OpenFlags::READ),
        pflags.intersects(OpenFlags::WRITE | OpenFlags::APPEND),
    ) {
        (true, true) => OFlags::RDWR,
        (false, true) => OFlags::WRONLY,
        (_, false) => OFlags::RDONLY,
    };
    let also = [
        (OpenFlags::APPEND, OFlags::APPEND),
        (OpenFlags::TRUNCATE, OFlags::TRUNC),
        (OpenFlags::CREATE, OFlags::CREATE),
        (OpenFlags::CREATE | OpenFlags::EXCLUDE, OFlags::EXCL),
    ];
    for (asked, flag) in also {
        if pflags.contains(asked) {
            flags |= flag;
        }
    }
    flags
}

/// The client's `path` opened, if it is a regular file. Opened without waiting: opening a
/// FIFO waits for its other end, a device's may wait for the device, and requests are
/// served in order, so every request after it would wait too. Reads wait, as they should,
/// once the file is known to be regular.
pub(super) fn open_regular(
    beneath: &Beneath,
    path: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<std::fs::File, VolumeError> {
    let file = beneath.open(path, flags | OFlags::NONBLOCK | OFlags::NOCTTY, mode)?;
    let kind = FileType::from_raw_mode(rustix::fs::fstat(&file)?.st_mode);
    if kind != FileType::RegularFile {
        return Err(VolumeError::NotRegular {
            path: confined(path),
            kind: kind_name(kind),
        });
    }
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags.difference(OFlags::NONBLOCK))?;
    Ok(file.into())
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "special file",
    }
}
