//! A directory listed a reply at a time. Entries are read from the open directory as
//! `readdir` requests come, so a listing holds the kernel's batch of names (rustix's buffer,
//! a few KiB to some 24 KiB), not the directory: one of a million entries costs what one
//! of ten does.

use russh_sftp::protocol::File;
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Dir};

use super::attributes;
use super::error::VolumeError;

/// An open directory and where its listing is.
#[derive(Debug)]
pub(super) struct Listing {
    dir: Dir,
    /// The entry read last that did not fit in the reply before: it opens the next one.
    held: Option<File>,
}

impl Listing {
    /// The listing of `dir`, which the caller opened for reading (not `O_PATH`).
    pub(super) fn new(dir: OwnedFd) -> Result<Self, VolumeError> {
        Ok(Self {
            dir: Dir::new(dir)?,
            held: None,
        })
    }

    /// The next entries whose encoding fits in `most_bytes` (always one, if any is left);
    /// none at the end.
    pub(super) fn next_reply(&mut self, most_bytes: usize) -> Result<Vec<File>, VolumeError> {
        let mut reply = Vec::new();
        let mut bytes = 0;
        while let Some(file) = self.next_entry()? {
            bytes += encoded_len(&file);
            if bytes > most_bytes && !reply.is_empty() {
                self.held = Some(file);
                break;
            }
            reply.push(file);
        }
        Ok(reply)
    }

    fn next_entry(&mut self) -> Result<Option<File>, VolumeError> {
        if let Some(file) = self.held.take() {
            return Ok(Some(file));
        }
        while let Some(entry) = self.dir.read() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            // Named in the directory itself, one component, not followed: nothing outside
            // is looked at. An entry removed since it was read is left out.
            let Ok(stat) = rustix::fs::statat(self.dir.fd()?, name, AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let name = name.to_string_lossy();
            return Ok(Some(File::new(name, attributes(&stat))));
        }
        Ok(None)
    }
}

/// A directory entry's size in a reply, at most: both names with their lengths, and every
/// attribute (flags, size, owner, permissions, times).
fn encoded_len(file: &File) -> usize {
    4 + file.filename.len() + 4 + file.longname.len() + 32
}
