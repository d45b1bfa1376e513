//! What one relayed SFTP session knows, and what each packet makes it send: the client's
//! requests go on under ids of the relay's own (so that its reads ahead and listings never
//! collide with the client's), the agent's replies come back under the client's ids, and
//! reads and listings are answered here where the agent's answer is already in hand.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use kubedev_protocol::{LISTING_EXTENSION, put_sftp_string};
use russh_sftp::protocol::{Extended, Handle, OpenFlags, Packet, Read};

use super::listings::Listings;
use super::packet::{self, Status};
use super::packet::{
    SSH_FXP_CLOSE, SSH_FXP_EXTENDED_REPLY, SSH_FXP_FSTAT, SSH_FXP_INIT, SSH_FXP_LSTAT,
    SSH_FXP_OPEN, SSH_FXP_OPENDIR, SSH_FXP_READ, SSH_FXP_READDIR, SSH_FXP_READLINK,
    SSH_FXP_REALPATH, SSH_FXP_STAT, SSH_FXP_VERSION,
};
use super::read_ahead::{NextId, ReadAheads, Served};

/// A packet to send.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Out {
    ToAgent(Bytes),
    ToClient(Bytes),
}

/// A packet that is not SFTP.
#[derive(Debug, thiserror::Error)]
#[error("an SFTP packet of type {0} without a request id")]
pub(super) struct NoRequestId(u8);

/// Where the reply to one of the relay's ids goes.
#[derive(Debug)]
enum Waiting {
    /// To the client, as its id.
    Client(u32),
    /// A listing the client opened as its id.
    Listing(u32),
}

/// The relay's request ids, in turn.
#[derive(Debug, Default)]
struct Ids(u32);

/// The next of the relay's ids that no reply is awaited for in `waiting` (after 2^32
/// requests, ids come round again).
struct FreeIds<'a> {
    ids: &'a mut Ids,
    waiting: &'a HashMap<u32, Waiting>,
}

impl NextId for FreeIds<'_> {
    fn next_id(&mut self) -> u32 {
        loop {
            self.ids.0 = self.ids.0.wrapping_add(1);
            if !self.waiting.contains_key(&self.ids.0) {
                return self.ids.0;
            }
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct RelaySession {
    ids: Ids,
    waiting: HashMap<u32, Waiting>,
    reads: ReadAheads,
    listings: Listings,
    /// The agent lists a directory in one round trip.
    listing_offered: bool,
}

impl RelaySession {
    /// What the client's packet `body` makes the relay send.
    pub(super) fn client_sent(&mut self, body: &Bytes) -> Result<Vec<Out>, NoRequestId> {
        let kind = packet::kind(body);
        if kind == SSH_FXP_INIT {
            return Ok(vec![Out::ToAgent(packet::whole(body))]);
        }
        let id = packet::id_of(body).ok_or(NoRequestId(kind))?;
        if changes_files(kind, body) {
            self.reads.forget_all();
        }
        // Only what the relay acts on is decoded: a write's data is never copied.
        let acted_on = matches!(
            kind,
            SSH_FXP_READ | SSH_FXP_OPENDIR | SSH_FXP_READDIR | SSH_FXP_CLOSE
        );
        let answered = match acted_on.then(|| packet::decode(body)).flatten() {
            Some(Packet::Read(read)) => return Ok(self.read(body, &read, id)),
            Some(Packet::OpenDir(open)) if self.listing_offered && self.listings.have_room() => {
                return Ok(vec![self.list(&open.path, id)]);
            }
            Some(Packet::ReadDir(listed)) => self.listings.read(&listed.handle, id),
            Some(Packet::Close(close)) => {
                self.reads.close(&close.handle);
                self.listings.close(&close.handle, id)
            }
            _ => None,
        };
        Ok(vec![match answered {
            Some(answer) => Out::ToClient(answer),
            None => self.forward(body, id),
        }])
    }

    /// What the agent's packet `body` makes the relay send the client.
    pub(super) fn agent_sent(&mut self, body: Bytes) -> Result<Option<Bytes>, NoRequestId> {
        let kind = packet::kind(&body);
        if kind == SSH_FXP_VERSION {
            if let Some(Packet::Version(version)) = packet::decode(&body) {
                self.listing_offered = version.extensions.contains_key(LISTING_EXTENSION);
            }
            return Ok(Some(packet::whole(&body)));
        }
        let id = packet::id_of(&body).ok_or(NoRequestId(kind))?;
        match self.waiting.remove(&id) {
            Some(Waiting::Client(client_id)) => Ok(Some(packet::with_id(&body, client_id))),
            Some(Waiting::Listing(client_id)) => Ok(Some(self.listed(&body, client_id))),
            None => match self.reads.reply(id, body.clone(), Instant::now()) {
                Some(Some(client_id)) => Ok(Some(packet::with_id(&body, client_id))),
                Some(None) => Ok(None),
                None => {
                    tracing::debug!("an SFTP reply to {id}, which no request had");
                    Ok(None)
                }
            },
        }
    }

    /// The client's `body` on to the agent, under an id of the relay's.
    fn forward(&mut self, body: &[u8], client_id: u32) -> Out {
        let id = self.free_id();
        self.waiting.insert(id, Waiting::Client(client_id));
        Out::ToAgent(packet::with_id(body, id))
    }

    /// An id no reply is awaited for, of the client's requests or of reads ahead.
    fn free_id(&mut self) -> u32 {
        let mut ids = FreeIds {
            ids: &mut self.ids,
            waiting: &self.waiting,
        };
        loop {
            let id = ids.next_id();
            if !self.reads.owns(id) {
                return id;
            }
        }
    }

    fn read(&mut self, body: &[u8], read: &Read, client_id: u32) -> Vec<Out> {
        let mut ids = FreeIds {
            ids: &mut self.ids,
            waiting: &self.waiting,
        };
        let asked = (read.offset, read.len);
        let plan = (self.reads).read(&read.handle, asked, client_id, &mut ids, Instant::now());
        let mut out = Vec::with_capacity(1 + plan.fetch.len());
        match plan.served {
            Served::Now(reply) => out.push(Out::ToClient(packet::with_id(&reply, client_id))),
            Served::Awaited(_) => {}
            Served::Forward => out.push(self.forward(body, client_id)),
        }
        out.extend(plan.fetch.into_iter().map(|fetch| {
            Out::ToAgent(packet::encode(Packet::Read(Read {
                id: fetch.id,
                handle: read.handle.clone(),
                offset: fetch.offset,
                len: fetch.len,
            })))
        }));
        out
    }

    /// The client's `OPENDIR` of `path` as the listing extension.
    fn list(&mut self, path: &str, client_id: u32) -> Out {
        let id = self.free_id();
        self.waiting.insert(id, Waiting::Listing(client_id));
        let mut data = Vec::new();
        put_sftp_string(&mut data, path);
        Out::ToAgent(packet::encode(Packet::Extended(Extended {
            id,
            request: LISTING_EXTENSION.into(),
            data,
        })))
    }

    /// The answer to the client's `OPENDIR`, from the agent's reply to the listing.
    fn listed(&mut self, body: &Bytes, client_id: u32) -> Bytes {
        if packet::kind(body) != SSH_FXP_EXTENDED_REPLY {
            // A failure: the status OPENDIR would have had.
            return packet::with_id(body, client_id);
        }
        let opened = match packet::decode(body) {
            Some(Packet::ExtendedReply(reply)) => self.listings.opened(Bytes::from(reply.data)),
            _ => return packet::status(client_id, Status::Failure),
        };
        match opened {
            Ok(handle) => packet::encode(Packet::Handle(Handle {
                id: client_id,
                handle,
            })),
            Err(err) => {
                tracing::warn!("{err}");
                packet::status(client_id, Status::Failure)
            }
        }
    }
}

/// Whether a request of `kind` may change a file's contents: reads ahead are then dropped,
/// as the agent serves a request after the reads sent before it.
fn changes_files(kind: u8, body: &Bytes) -> bool {
    match kind {
        SSH_FXP_CLOSE | SSH_FXP_READ | SSH_FXP_LSTAT | SSH_FXP_FSTAT | SSH_FXP_OPENDIR
        | SSH_FXP_READDIR | SSH_FXP_REALPATH | SSH_FXP_STAT | SSH_FXP_READLINK => false,
        SSH_FXP_OPEN => match packet::decode(body) {
            Some(Packet::Open(open)) => open.pflags.intersects(
                OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            ),
            _ => true,
        },
        _ => true,
    }
}
