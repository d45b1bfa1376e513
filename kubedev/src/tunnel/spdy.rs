//! SPDY/3.1 frames, as many of them as a port-forward client needs.
//!
//! The API server passes the bytes through to the container runtime, which reads them with
//! Go's SPDY framer (spdystream). That framer has no flow control, so neither side sends
//! window updates; the TCP connections underneath hold a fast sender back.

use flate2::{Compress, Compression, FlushCompress};

/// A frame's header: a control bit, then a version and type, or a stream id; flags; a
/// 24-bit length.
pub(super) const FRAME_HEADER: usize = 8;
/// The flag that ends the sender's side of a stream.
pub(super) const FLAG_FIN: u8 = 0x01;

const VERSION: u16 = 3;
const CONTROL_BIT: u8 = 0x80;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// Compresses header blocks: SPDY keeps one zlib stream per direction for all of them.
/// No preset dictionary is used; the receiver's zlib reads a stream without one.
pub(super) struct HeaderCompressor {
    zlib: Compress,
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor").finish_non_exhaustive()
    }
}

impl HeaderCompressor {
    pub(super) fn new() -> Self {
        Self {
            zlib: Compress::new(Compression::default(), true),
        }
    }

    /// A SYN_STREAM frame opening `stream` with `headers` (names in lower case, as the
    /// receiver requires).
    pub(super) fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        push_u32(&mut block, headers.len());
        for (name, value) in headers {
            push_u32(&mut block, name.len());
            block.extend_from_slice(name.as_bytes());
            push_u32(&mut block, value.len());
            block.extend_from_slice(value.as_bytes());
        }
        let compressed = self.compress(&block);
        // Stream id, associated stream id, priority and slot, then the headers.
        let mut frame = control_header(SYN_STREAM, 0, 10 + compressed.len());
        frame.extend_from_slice(&(stream & STREAM_ID_MASK).to_be_bytes());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&compressed);
        frame
    }

    /// `block` compressed and flushed to a byte boundary, so the frame holds all of it.
    fn compress(&mut self, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let start = self.zlib.total_in();
        loop {
            let consumed = usize::try_from(self.zlib.total_in() - start).unwrap_or(block.len());
            // Compressing into memory fails only on a broken stream state, never here.
            let flushed = self
                .zlib
                .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
                .is_ok();
            let all_in = self.zlib.total_in() - start == block.len() as u64;
            if !flushed || (all_in && out.len() < out.capacity()) {
                return out;
            }
            out.reserve(out.capacity());
        }
    }
}

fn push_u32(out: &mut Vec<u8>, value: usize) {
    out.extend_from_slice(&u32::try_from(value).unwrap_or(u32::MAX).to_be_bytes());
}

fn control_header(kind: u16, flags: u8, len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER + len);
    frame.extend_from_slice(&(VERSION | u16::from(CONTROL_BIT) << 8).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&u24(len));
    frame
}

/// The header of a DATA frame of `len` bytes on `stream`.
pub(super) fn data_header(stream: u32, flags: u8, len: usize) -> [u8; FRAME_HEADER] {
    let mut header = [0; FRAME_HEADER];
    header[..4].copy_from_slice(&(stream & STREAM_ID_MASK).to_be_bytes());
    header[4] = flags;
    header[5..].copy_from_slice(&u24(len));
    header
}

/// A PING frame, as the answer to the peer's ping of the same id.
pub(super) fn ping(id: u32) -> Vec<u8> {
    let mut frame = control_header(PING, 0, 4);
    frame.extend_from_slice(&id.to_be_bytes());
    frame
}

fn u24(len: usize) -> [u8; 3] {
    let [_, a, b, c] = u32::try_from(len.min(0xff_ffff))
        .unwrap_or(0xff_ffff)
        .to_be_bytes();
    [a, b, c]
}

/// What the peer sent that the bridge acts on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// Bytes of a stream, in order (a DATA frame may come in several pieces).
    Data { stream: u32, bytes: &'a [u8] },
    /// The peer will send nothing more on the stream.
    Fin { stream: u32 },
    /// The peer ended the stream abruptly.
    Reset { stream: u32, status: u32 },
    /// The peer's ping, to be answered.
    Ping(u32),
    /// The peer is closing the connection.
    GoAway,
}

/// Why the peer's bytes are not SPDY/3.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct WrongVersion(pub(super) u16);

/// Reads frames from a byte stream cut anywhere (the websocket's messages carry SPDY's
/// bytes with no regard for its frames). Holds at most a frame header or the first bytes
/// of a control frame: data is handed on as it comes.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    state: State,
    kept: Kept,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Header,
    Data {
        stream: u32,
        remaining: usize,
        fin: bool,
    },
    Control {
        kind: u16,
        flags: u8,
        remaining: usize,
    },
    FinAfterData(u32),
}

/// Up to eight bytes: a frame header being read, or the start of a control frame, which
/// is all of every frame acted on (RST_STREAM and GOAWAY are the longest); the rest, a
/// reply's compressed headers, is skipped, never held.
#[derive(Debug, Default)]
struct Kept {
    bytes: [u8; FRAME_HEADER],
    len: usize,
}

impl Kept {
    /// Keeps what fits of `bytes`.
    fn keep(&mut self, bytes: &[u8]) {
        let fits = (FRAME_HEADER - self.len).min(bytes.len());
        self.bytes[self.len..self.len + fits].copy_from_slice(&bytes[..fits]);
        self.len += fits;
    }

    fn take(&mut self) -> ([u8; FRAME_HEADER], usize) {
        let taken = (self.bytes, self.len);
        *self = Self::default();
        taken
    }
}

/// Splits off the first `len` bytes of `input`, or all of it.
fn split_off<'a>(input: &mut &'a [u8], len: usize) -> &'a [u8] {
    let (head, rest) = input.split_at(len.min(input.len()));
    *input = rest;
    head
}

impl Decoder {
    /// The next event in `input`, consuming what it used; `None` once `input` is spent.
    pub(super) fn next<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<Event<'a>>, WrongVersion> {
        loop {
            match std::mem::take(&mut self.state) {
                State::Header => {
                    self.kept
                        .keep(split_off(input, FRAME_HEADER - self.kept.len));
                    if self.kept.len < FRAME_HEADER {
                        return Ok(None);
                    }
                    let (header, _) = self.kept.take();
                    if let Some(event) = self.start_frame(header)? {
                        return Ok(Some(event));
                    }
                }
                State::Data {
                    stream,
                    remaining,
                    fin,
                } => {
                    let bytes = split_off(input, remaining);
                    self.state = match (remaining - bytes.len(), fin) {
                        (0, true) => State::FinAfterData(stream),
                        (0, false) => State::Header,
                        (remaining, fin) => State::Data {
                            stream,
                            remaining,
                            fin,
                        },
                    };
                    if bytes.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Event::Data { stream, bytes }));
                }
                State::FinAfterData(stream) => return Ok(Some(Event::Fin { stream })),
                State::Control {
                    kind,
                    flags,
                    remaining,
                } => {
                    let bytes = split_off(input, remaining);
                    self.kept.keep(bytes);
                    let remaining = remaining - bytes.len();
                    if remaining > 0 {
                        self.state = State::Control {
                            kind,
                            flags,
                            remaining,
                        };
                        return Ok(None);
                    }
                    let (payload, len) = self.kept.take();
                    if let Some(event) = control_event(kind, flags, &payload[..len]) {
                        return Ok(Some(event));
                    }
                }
            }
        }
    }

    /// Starts the frame `header` announces; its event if it has no payload to wait for.
    fn start_frame(
        &mut self,
        header: [u8; FRAME_HEADER],
    ) -> Result<Option<Event<'static>>, WrongVersion> {
        let flags = header[4];
        let len = u32::from_be_bytes([0, header[5], header[6], header[7]]) as usize;
        if header[0] & CONTROL_BIT == 0 {
            let stream = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let fin = flags & FLAG_FIN != 0;
            if len > 0 {
                self.state = State::Data {
                    stream,
                    remaining: len,
                    fin,
                };
                return Ok(None);
            }
            return Ok(fin.then_some(Event::Fin { stream }));
        }
        let version = u16::from_be_bytes([header[0] & !CONTROL_BIT, header[1]]);
        if version != VERSION {
            return Err(WrongVersion(version));
        }
        let kind = u16::from_be_bytes([header[2], header[3]]);
        if len == 0 {
            return Ok(control_event(kind, flags, &[]));
        }
        self.state = State::Control {
            kind,
            flags,
            remaining: len,
        };
        Ok(None)
    }
}

fn control_event(kind: u16, flags: u8, payload: &[u8]) -> Option<Event<'static>> {
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    match kind {
        RST_STREAM => Some(Event::Reset {
            stream: word(0)? & STREAM_ID_MASK,
            status: word(4)?,
        }),
        PING => Some(Event::Ping(word(0)?)),
        GOAWAY => Some(Event::GoAway),
        // A reply or headers may end the peer's side of the stream at once.
        SYN_REPLY | HEADERS if flags & FLAG_FIN != 0 => Some(Event::Fin {
            stream: word(0)? & STREAM_ID_MASK,
        }),
        // Settings, window updates and anything newer change nothing here.
        _ => None,
    }
}

#[cfg(test)]
mod tests;
