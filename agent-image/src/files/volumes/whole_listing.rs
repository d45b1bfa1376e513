//! A directory listed in one round trip ([`LISTING_EXTENSION`]): the open, every `readdir`
//! and the close a client would otherwise send one after another, each a round trip to the
//! workstation. A directory whose listing outgrows [`WHOLE_LISTING_BYTES`] is sent in part,
//! with a handle for the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut as _, Bytes, BytesMut};
use kubedev_protocol::{LISTING_EXTENSION, put_sftp_string, take_sftp_string};
use russh_sftp::protocol::{ExtendedReply, Name, Packet, Version};
use rustix::fs::{Mode, OFlags};

use super::error::VolumeError;
use super::handles::Open;
use super::listing::Listing;
use super::{READDIR_REPLY_BYTES, Volumes, blocking};

/// The most one reply lists before it hands over a handle for the rest: some 10,000
/// entries, while a reply stays a small part of what the link buffers.
const WHOLE_LISTING_BYTES: usize = 1024 * 1024;

/// What the agent answers `INIT` with: SFTP version 3, and the listing extension.
pub(super) fn version() -> Version {
    Version {
        extensions: HashMap::from([(LISTING_EXTENSION.to_owned(), "1".to_owned())]),
        ..Version::new()
    }
}

impl Volumes {
    /// The listing of the directory named in `data`, as [`LISTING_EXTENSION`] has it.
    pub(super) async fn list_whole(
        &self,
        id: u32,
        data: Vec<u8>,
    ) -> Result<ExtendedReply, VolumeError> {
        let path = sftp_string(&data).ok_or(VolumeError::BadMessage)?;
        let beneath = self.beneath()?;
        self.handles.room()?;
        let (listing, names) = blocking(move || {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY;
            let mut listing = Listing::new(beneath.open(&path, flags, Mode::empty())?)?;
            let names = names_until(&mut listing, WHOLE_LISTING_BYTES)?;
            Ok(((!names.complete).then_some(listing), names.packets))
        })
        .await?;
        let handle = match listing {
            Some(rest) => self.handles.keep(Open::Dir(Arc::new(Mutex::new(rest))))?,
            None => String::new(),
        };
        let mut data = Vec::with_capacity(4 + handle.len() + names.len());
        put_sftp_string(&mut data, &handle);
        data.extend_from_slice(&names);
        Ok(ExtendedReply { id, data })
    }
}

/// `NAME` packets of a listing, and whether they hold all of it.
struct Names {
    packets: Bytes,
    complete: bool,
}

/// The listing's next `NAME` packets (id 0), until `most_bytes` are passed or it ends.
fn names_until(listing: &mut Listing, most_bytes: usize) -> Result<Names, VolumeError> {
    let mut packets = BytesMut::new();
    while packets.len() < most_bytes {
        let files = listing.next_reply(READDIR_REPLY_BYTES)?;
        if files.is_empty() {
            return Ok(Names {
                packets: packets.freeze(),
                complete: true,
            });
        }
        let packet = Bytes::try_from(Packet::Name(Name { id: 0, files }))
            .map_err(|err| VolumeError::Io(std::io::Error::other(err)))?;
        packets.put_slice(&packet);
    }
    Ok(Names {
        packets: packets.freeze(),
        complete: false,
    })
}

/// The SFTP string that is the whole of `data`.
fn sftp_string(mut data: &[u8]) -> Option<String> {
    take_sftp_string(&mut data).filter(|_| data.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_one_whole_sftp_string() {
        assert_eq!(sftp_string(b"\0\0\0\x03/ab"), Some("/ab".into()));
        assert_eq!(sftp_string(b"\0\0\0\x04/ab"), None);
        assert_eq!(sftp_string(b"\0\0\0\x02/ab"), None);
        assert_eq!(sftp_string(b"\0\0"), None);
        assert_eq!(sftp_string(b"\0\0\0\x02\xff\xfe"), None);
    }
}
