//! Reads sent ahead of a client that reads a file from start to end, so that the link's
//! bandwidth-delay product is in flight rather than the few reads the client keeps out
//! (the kernel asks a FUSE mount for 128 KiB ahead at most without root: 6 MiB/s at
//! 20 ms).
//!
//! A file's reads are taken as sequential while each comes at the offset after the one
//! before, or at an offset already read ahead (a multithreaded client sends neighbouring
//! reads out of order). Reads ahead are of the client's own length at the offsets it will
//! ask for, so each answers one of its reads as is. A file's window starts at two reads
//! and doubles with each sequential read, up to [`FILE_WINDOW`]; all files together hold
//! at most [`MOUNT_WINDOW`], awaited or arrived. A short answer or an error ends a file's
//! reads ahead, until it is read somewhere else, and is not kept: the client's read there
//! asks the agent again, so a file that grows is seen to. An answer is served for at most
//! [`FRESH_FOR`] after it arrived, as the pod's app may change the file meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The most read ahead of one file: a bandwidth-delay product of 160 MiB/s at 50 ms.
const FILE_WINDOW: u64 = 8 << 20;
/// The most read ahead of every file of a mount together, awaited or arrived.
pub(super) const MOUNT_WINDOW: u64 = 16 << 20;
/// Arrived reads this far behind the client's latest are kept for a read that comes late.
const BEHIND_KEPT: u64 = 1 << 20;
/// How long an answer read ahead stays servable: what the kernel caches a FUSE file's
/// attributes for by default.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// Reads shorter than this are never read ahead (sshfs's are 64 KiB): no client that
/// reads a byte at a time makes the relay send thousands of reads ahead per read.
const SHORTEST_READ_AHEAD: u32 = 4096;
/// Files read ahead at once, at most: the agent's limit on open handles.
const MOST_FILES: usize = 1024;
/// `SSH_FXP_DATA`'s header: type, id, and the data's length.
const DATA_HEADER: usize = 9;
/// The longest `STATUS` reply kept track of: its code and a short message.
const LONGEST_STATUS: usize = 1024;

/// The ids a relay gives its requests to the server.
pub(super) trait NextId {
    fn next_id(&mut self) -> u32;
}

/// A read sent ahead: its id, offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fetch {
    pub(super) id: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// What to do with a client's read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Served {
    /// Its answer arrived ahead: the body of the server's reply.
    Now(Bytes),
    /// Its answer is on its way, as the reply to this id.
    Awaited(u32),
    /// Send it on.
    Forward,
}

/// A client's read, and the reads to send ahead of it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ReadPlan {
    pub(super) served: Served,
    pub(super) fetch: Vec<Fetch>,
}

#[derive(Debug)]
enum Chunk {
    /// Asked for, as this id.
    Awaited(u32),
    /// The server's full answer to a read of `len`, and when it came.
    Arrived { body: Bytes, len: u32, at: Instant },
}

/// Where a read ahead's reply goes.
#[derive(Debug)]
enum Owner {
    /// Kept for the file's next reads.
    Ahead { handle: String, offset: u64 },
    /// A client's read came for it meanwhile: its id.
    Client(u32),
    /// No longer wanted.
    Dropped,
}

#[derive(Debug)]
struct FileAhead {
    /// The offset after the furthest sequential read.
    expected: u64,
    len: u32,
    /// Sequential reads in a row.
    run: u32,
    /// The offset the next read ahead asks for.
    next_fetch: u64,
    /// A read ahead came back short or failed: the file ends there.
    ended: bool,
    chunks: BTreeMap<u64, Chunk>,
}

impl FileAhead {
    /// A file whose reads start again at `offset`, `len` bytes each.
    fn starting_at(offset: u64, len: u32) -> Self {
        let end = offset.saturating_add(u64::from(len));
        Self {
            expected: end,
            len,
            run: 1,
            next_fetch: end,
            ended: false,
            chunks: BTreeMap::new(),
        }
    }
}

/// The reads ahead of every open file of one mount.
#[derive(Debug, Default)]
pub(super) struct ReadAheads {
    files: HashMap<String, FileAhead>,
    /// Read ahead's ids and where their replies go, with the length each asked.
    owners: HashMap<u32, (Owner, u32)>,
    /// Bytes asked ahead and not yet served or dropped, awaited or arrived (an arrived
    /// answer is never longer than what was asked: [`is_full_data`]).
    held: u64,
}

impl ReadAheads {
    /// A client's read of `len` bytes at `offset` of `handle`, as the client's `id`, at
    /// `now`.
    pub(super) fn read(
        &mut self,
        handle: &str,
        (offset, len): (u64, u32),
        id: u32,
        ids: &mut impl NextId,
        now: Instant,
    ) -> ReadPlan {
        let forward = ReadPlan {
            served: Served::Forward,
            fetch: Vec::new(),
        };
        if len < SHORTEST_READ_AHEAD {
            return forward;
        }
        if !self.files.contains_key(handle) {
            if self.files.len() >= MOST_FILES {
                return forward;
            }
            let mut file = FileAhead::starting_at(offset, len);
            (file.expected, file.next_fetch, file.run) = (offset, offset, 0);
            self.files.insert(handle.to_owned(), file);
        }
        let served = self.serve(handle, offset, len, id, now);
        self.follow(handle, offset, len, served != Served::Forward);
        let fetch = self.plan_fetches(handle, offset, ids);
        ReadPlan { served, fetch }
    }

    /// What answers a client's read: a fresh answer arrived ahead, or one on its way.
    fn serve(&mut self, handle: &str, offset: u64, len: u32, id: u32, now: Instant) -> Served {
        let Some(file) = self.files.get_mut(handle) else {
            return Served::Forward;
        };
        match file.chunks.remove(&offset) {
            Some(Chunk::Arrived {
                body,
                len: asked,
                at,
            }) => {
                self.held -= u64::from(asked);
                if asked == len && now.duration_since(at) < FRESH_FOR {
                    Served::Now(body)
                } else {
                    Served::Forward
                }
            }
            Some(Chunk::Awaited(ahead)) if len == file.len => {
                if let Some((owner, _)) = self.owners.get_mut(&ahead) {
                    *owner = Owner::Client(id);
                }
                Served::Awaited(ahead)
            }
            Some(awaited) => {
                file.chunks.insert(offset, awaited);
                Served::Forward
            }
            None => Served::Forward,
        }
    }

    /// Takes a client's read into `handle`'s sequence, or starts the sequence again there.
    fn follow(&mut self, handle: &str, offset: u64, len: u32, served_ahead: bool) {
        let Some(file) = self.files.get_mut(handle) else {
            return;
        };
        let end = offset.saturating_add(u64::from(len));
        let in_order = offset == file.expected || served_ahead;
        let nearby = offset < file.expected && offset.saturating_add(BEHIND_KEPT) >= file.expected;
        if in_order && len == file.len {
            file.run = file.run.saturating_add(1);
            file.expected = file.expected.max(end);
        } else if !nearby || len != file.len {
            let dropped = std::mem::replace(file, FileAhead::starting_at(offset, len)).chunks;
            self.drop_chunks(dropped);
        }
    }

    /// Reads to send ahead of `handle`'s latest read at `offset`.
    fn plan_fetches(&mut self, handle: &str, offset: u64, ids: &mut impl NextId) -> Vec<Fetch> {
        let Some(file) = self.files.get_mut(handle) else {
            return Vec::new();
        };
        let behind: Vec<u64> = (file.chunks.range(..offset.saturating_sub(BEHIND_KEPT)))
            .map(|(at, _)| *at)
            .collect();
        let stale: BTreeMap<u64, Chunk> = behind
            .into_iter()
            .filter_map(|at| file.chunks.remove_entry(&at))
            .collect();
        let reading_from_start = offset == 0 && file.run == 1;
        let mut fetch = Vec::new();
        if !file.ended && (file.run >= 2 || reading_from_start) {
            let len = u64::from(file.len);
            let window = (len << file.run.min(16)).min(FILE_WINDOW);
            let until = file.expected.saturating_add(window);
            file.next_fetch = file.next_fetch.max(file.expected);
            while file.next_fetch < until && self.held + len <= MOUNT_WINDOW {
                let id = loop {
                    let id = ids.next_id();
                    if !self.owners.contains_key(&id) {
                        break id;
                    }
                };
                let ahead = Owner::Ahead {
                    handle: handle.to_owned(),
                    offset: file.next_fetch,
                };
                self.owners.insert(id, (ahead, file.len));
                file.chunks.insert(file.next_fetch, Chunk::Awaited(id));
                fetch.push(Fetch {
                    id,
                    offset: file.next_fetch,
                    len: file.len,
                });
                self.held += len;
                file.next_fetch = file.next_fetch.saturating_add(len);
            }
        }
        self.drop_chunks(stale);
        fetch
    }

    /// Whether `id` is a read ahead's still awaited.
    pub(super) fn owns(&self, id: u32) -> bool {
        self.owners.contains_key(&id)
    }

    /// The server's reply `body` to `id`, at `now`: `None` if `id` is not a read ahead's;
    /// else the client's id to send it to, if a client's read waits for it.
    pub(super) fn reply(&mut self, id: u32, body: Bytes, now: Instant) -> Option<Option<u32>> {
        let (owner, len) = self.owners.remove(&id)?;
        let Owner::Ahead { handle, offset } = owner else {
            self.held -= u64::from(len);
            return Some(match owner {
                Owner::Client(client_id) => Some(client_id),
                _ => None,
            });
        };
        let file = self.files.get_mut(&handle).filter(|file| {
            matches!(file.chunks.get(&offset), Some(Chunk::Awaited(awaited)) if *awaited == id)
        });
        match file {
            Some(file) if is_full_data(&body, len) => {
                let arrived = Chunk::Arrived { body, len, at: now };
                file.chunks.insert(offset, arrived);
            }
            Some(file) => {
                // The file ends there, or failed: its client asks the agent itself.
                if !is_short_answer(&body, len) {
                    tracing::debug!("a reply of {} bytes to a read ahead of {len}", body.len());
                }
                file.ended = true;
                file.chunks.remove(&offset);
                self.held -= u64::from(len);
            }
            None => self.held -= u64::from(len),
        }
        Some(None)
    }

    /// Something may have changed a file: nothing read ahead is served from now on.
    pub(super) fn forget_all(&mut self) {
        let files = std::mem::take(&mut self.files);
        for (_, file) in files {
            self.drop_chunks(file.chunks);
        }
    }

    /// `handle` is closed.
    pub(super) fn close(&mut self, handle: &str) {
        if let Some(file) = self.files.remove(handle) {
            self.drop_chunks(file.chunks);
        }
    }

    fn drop_chunks(&mut self, chunks: BTreeMap<u64, Chunk>) {
        for chunk in chunks.into_values() {
            match chunk {
                Chunk::Arrived { len, .. } => self.held -= u64::from(len),
                Chunk::Awaited(id) => {
                    if let Some((owner, _)) = self.owners.get_mut(&id) {
                        *owner = Owner::Dropped;
                    }
                }
            }
        }
    }
}

/// The length a `DATA` reply says it holds, if `body` is one.
fn data_length(body: &[u8]) -> Option<usize> {
    const SSH_FXP_DATA: u8 = 103;
    let field = <[u8; 4]>::try_from(body.get(5..DATA_HEADER)?).ok()?;
    (body.first() == Some(&SSH_FXP_DATA)).then(|| u32::from_be_bytes(field) as usize)
}

/// Whether `body` is a `DATA` reply holding all `len` bytes asked, and nothing more.
fn is_full_data(body: &[u8], len: u32) -> bool {
    data_length(body) == Some(len as usize) && body.len() == DATA_HEADER + len as usize
}

/// Whether `body` is a well-formed short answer to a read of `len`: less data, or a status.
fn is_short_answer(body: &[u8], len: u32) -> bool {
    const SSH_FXP_STATUS: u8 = 101;
    match data_length(body) {
        Some(held) => held < len as usize && body.len() == DATA_HEADER + held,
        None => body.first() == Some(&SSH_FXP_STATUS) && body.len() <= LONGEST_STATUS,
    }
}

#[cfg(test)]
mod tests;
