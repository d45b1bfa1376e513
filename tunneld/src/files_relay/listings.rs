//! Directories listed in one round trip ([`LISTING_EXTENSION`]), served to the client a
//! `READDIR` at a time from what the agent sent. A whole listing gets a handle of the
//! relay's own, closed here; a partial one keeps the agent's handle, whose `READDIR`s go
//! on to the agent once the part sent is served.

use std::collections::{HashMap, VecDeque};

use bytes::{Buf as _, Bytes};
use kubedev_protocol::{LISTING_EXTENSION, take_sftp_string};

use super::packet::{self, SSH_FXP_NAME};

/// Handles of whole listings start so; the agent's are numbers.
const LOCAL_HANDLE_PREFIX: &str = "listed-";
/// What the listings the client holds open may hold together before a new one is opened
/// the plain way, on the agent: some 16 large directories listed at once.
const MOST_HELD: usize = 16 << 20;

#[derive(Debug)]
struct Listing {
    /// `NAME` packet bodies not yet served.
    names: VecDeque<Bytes>,
    /// The agent holds the directory open for the rest.
    more_on_agent: bool,
}

/// The listings the client has open.
#[derive(Debug, Default)]
pub(super) struct Listings {
    open: HashMap<String, Listing>,
    opened: u64,
    /// Bytes of `NAME` packets held, not yet served.
    held: usize,
}

/// Why a listing reply could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("the agent's {LISTING_EXTENSION} reply is malformed")]
pub(super) struct MalformedListing;

impl Listings {
    /// Whether one more listing may be held.
    pub(super) fn have_room(&self) -> bool {
        self.held < MOST_HELD
    }

    /// The agent's reply `data` to a listing: the handle to give the client.
    pub(super) fn opened(&mut self, mut data: Bytes) -> Result<String, MalformedListing> {
        let mut rest: &[u8] = &data;
        let agent_handle = take_sftp_string(&mut rest).ok_or(MalformedListing)?;
        data.advance(data.len() - rest.len());
        let mut names = VecDeque::new();
        while !data.is_empty() {
            if data.len() < 4 {
                return Err(MalformedListing);
            }
            let length = data.get_u32() as usize;
            if length > data.len() || data.first() != Some(&SSH_FXP_NAME) || length < 5 {
                return Err(MalformedListing);
            }
            names.push_back(data.split_to(length));
        }
        self.held += names.iter().map(Bytes::len).sum::<usize>();
        let more_on_agent = !agent_handle.is_empty();
        let handle = if more_on_agent {
            agent_handle
        } else {
            self.opened += 1;
            format!("{LOCAL_HANDLE_PREFIX}{}", self.opened)
        };
        let replaced = self.open.insert(
            handle.clone(),
            Listing {
                names,
                more_on_agent,
            },
        );
        if let Some(replaced) = replaced {
            self.held -= replaced.names.iter().map(Bytes::len).sum::<usize>();
        }
        Ok(handle)
    }

    /// The answer to the client's `READDIR` of `handle` as `id`, if it is served here.
    pub(super) fn read(&mut self, handle: &str, id: u32) -> Option<Bytes> {
        let listing = self.open.get_mut(handle)?;
        match listing.names.pop_front() {
            Some(name) => {
                self.held -= name.len();
                Some(packet::with_id(&name, id))
            }
            None if listing.more_on_agent => None,
            None => Some(packet::status(id, packet::Status::Eof)),
        }
    }

    /// The answer to the client's `CLOSE` of `handle` as `id`, if it is closed here.
    pub(super) fn close(&mut self, handle: &str, id: u32) -> Option<Bytes> {
        let listing = self.open.remove(handle)?;
        self.held -= listing.names.iter().map(Bytes::len).sum::<usize>();
        (!listing.more_on_agent).then(|| packet::status(id, packet::Status::Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(handle: &str, names: &[&[u8]]) -> Bytes {
        let mut data = Vec::new();
        data.extend_from_slice(&(handle.len() as u32).to_be_bytes());
        data.extend_from_slice(handle.as_bytes());
        for name in names {
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name);
        }
        Bytes::from(data)
    }

    const NAME: &[u8] = &[SSH_FXP_NAME, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn a_whole_listing_is_served_and_closed_here() {
        let mut listings = Listings::default();
        let handle = listings.opened(reply("", &[NAME, NAME])).expect("taken");
        assert!(handle.starts_with(LOCAL_HANDLE_PREFIX));
        let first = listings.read(&handle, 7).expect("served here");
        assert_eq!(
            &first[..],
            &[0, 0, 0, 9, SSH_FXP_NAME, 0, 0, 0, 7, 0, 0, 0, 0]
        );
        assert!(listings.read(&handle, 8).is_some());
        let end = listings.read(&handle, 9).expect("the end, here");
        assert_eq!(end, packet::status(9, packet::Status::Eof));
        assert_eq!(
            listings.close(&handle, 10),
            Some(packet::status(10, packet::Status::Ok))
        );
        assert_eq!(listings.read(&handle, 11), None, "closed");
    }

    #[test]
    fn a_partial_listing_goes_on_with_the_agent_once_its_part_is_served() {
        let mut listings = Listings::default();
        let handle = listings.opened(reply("17", &[NAME])).expect("taken");
        assert_eq!(handle, "17");
        assert!(listings.read("17", 1).is_some());
        assert_eq!(listings.read("17", 2), None, "the agent's READDIR");
        assert_eq!(listings.close("17", 3), None, "the agent's CLOSE");
        assert_eq!(listings.read("18", 4), None, "not a listing of ours");
    }

    #[test]
    fn listings_held_at_once_are_bounded() {
        let mut listings = Listings::default();
        let mut big = vec![SSH_FXP_NAME];
        big.resize(1 << 20, 0);
        let mut handles = Vec::new();
        while listings.have_room() {
            handles.push(listings.opened(reply("", &[&big])).expect("taken"));
        }
        assert_eq!(handles.len(), 16);
        listings.close(&handles[0], 1);
        assert!(listings.have_room(), "a closed listing frees its room");
    }

    #[test]
    fn a_malformed_reply_is_refused() {
        let mut listings = Listings::default();
        assert!(
            listings
                .opened(Bytes::from_static(&[0, 0, 0, 5, b'a']))
                .is_err()
        );
        assert!(listings.opened(reply("", &[&[SSH_FXP_NAME, 0]])).is_err());
        assert!(listings.opened(reply("", &[&[1, 0, 0, 0, 0]])).is_err());
        let mut truncated = reply("", &[NAME]).to_vec();
        truncated.pop();
        assert!(listings.opened(Bytes::from(truncated)).is_err());
    }
}
