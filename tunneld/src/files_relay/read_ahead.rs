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
//! reads ahead, until it is read somewhere else.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

/// The most read ahead of one file: a bandwidth-delay product of 160 MiB/s at 50 ms.
const FILE_WINDOW: u64 = 8 << 20;
/// The most read ahead of every file of a mount together, awaited or arrived.
pub(super) const MOUNT_WINDOW: u64 = 16 << 20;
/// Arrived reads this far behind the client's latest are kept for a read that comes late.
const BEHIND_KEPT: u64 = 1 << 20;

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
    /// The server's reply, and the length asked.
    Arrived(Bytes, u32),
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

/// The reads ahead of every open file of one mount.
#[derive(Debug, Default)]
pub(super) struct ReadAheads {
    files: HashMap<String, FileAhead>,
    /// Read ahead's ids and where their replies go.
    owners: HashMap<u32, (Owner, u32)>,
    /// Bytes asked ahead and not yet served or dropped, awaited or arrived.
    held: u64,
}

impl ReadAheads {
    /// A client's read of `len` bytes at `offset` of `handle`, as the client's `id`.
    pub(super) fn read(
        &mut self,
        handle: &str,
        offset: u64,
        len: u32,
        id: u32,
        ids: &mut impl NextId,
    ) -> ReadPlan {
        let file = self.files.entry(handle.to_owned()).or_insert(FileAhead {
            expected: offset,
            len,
            run: 0,
            next_fetch: offset,
            ended: false,
            chunks: BTreeMap::new(),
        });
        let served = match file.chunks.remove(&offset) {
            Some(Chunk::Arrived(body, asked)) if len == asked => {
                self.held -= u64::from(asked);
                Served::Now(body)
            }
            Some(Chunk::Awaited(ahead)) if len == file.len => {
                if let Some((owner, _)) = self.owners.get_mut(&ahead) {
                    *owner = Owner::Client(id);
                }
                Served::Awaited(ahead)
            }
            other => {
                if let Some(chunk) = other {
                    file.chunks.insert(offset, chunk);
                }
                Served::Forward
            }
        };
        let in_order = offset == file.expected || served != Served::Forward;
        let nearby = offset < file.expected && offset + BEHIND_KEPT >= file.expected;
        if in_order && len == file.len {
            file.run += 1;
            file.expected = file.expected.max(offset + u64::from(len));
        } else if !nearby || len != file.len {
            let dropped = std::mem::take(&mut file.chunks);
            *file = FileAhead {
                expected: offset + u64::from(len),
                len,
                run: 1,
                next_fetch: offset + u64::from(len),
                ended: false,
                chunks: BTreeMap::new(),
            };
            self.drop_chunks(dropped);
        }
        let fetch = self.plan_fetches(handle, offset, ids);
        ReadPlan { served, fetch }
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
        if !file.ended && file.len > 0 && (file.run >= 2 || reading_from_start) {
            let len = u64::from(file.len);
            let window = (len << file.run.min(16)).min(FILE_WINDOW);
            file.next_fetch = file.next_fetch.max(file.expected);
            while file.next_fetch < file.expected + window && self.held + len <= MOUNT_WINDOW {
                let id = ids.next_id();
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
                file.next_fetch += len;
            }
        }
        self.drop_chunks(stale);
        fetch
    }

    /// The server's reply `body` to `id`: `None` if `id` is not a read ahead's; else the
    /// client's id to send it to, if a client's read waits for it.
    pub(super) fn reply(&mut self, id: u32, body: Bytes) -> Option<Option<u32>> {
        let (owner, len) = self.owners.remove(&id)?;
        match owner {
            Owner::Client(client_id) => {
                self.held -= u64::from(len);
                Some(Some(client_id))
            }
            Owner::Dropped => {
                self.held -= u64::from(len);
                Some(None)
            }
            Owner::Ahead { handle, offset } => {
                let file = self.files.get_mut(&handle).filter(|file| {
                    matches!(file.chunks.get(&offset), Some(Chunk::Awaited(awaited)) if *awaited == id)
                });
                let Some(file) = file else {
                    self.held -= u64::from(len);
                    return Some(None);
                };
                if !is_full_data(&body, len) {
                    file.ended = true;
                }
                file.chunks.insert(offset, Chunk::Arrived(body, len));
                Some(None)
            }
        }
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
                Chunk::Arrived(_, len) => self.held -= u64::from(len),
                Chunk::Awaited(id) => {
                    if let Some((owner, _)) = self.owners.get_mut(&id) {
                        *owner = Owner::Dropped;
                    }
                }
            }
        }
    }
}

/// Whether `body` is a `DATA` reply holding all `len` bytes asked.
fn is_full_data(body: &[u8], len: u32) -> bool {
    const SSH_FXP_DATA: u8 = 103;
    let length = (body.get(5..9))
        .and_then(|field| <[u8; 4]>::try_from(field).ok())
        .map(u32::from_be_bytes);
    body.first() == Some(&SSH_FXP_DATA) && length == Some(len)
}

#[cfg(test)]
mod tests;
