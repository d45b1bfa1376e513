//! SFTP packets as the relay sees them: a length, a type, a request id and the rest, read
//! and written whole; decoded only where the relay acts on them.

use bytes::{BufMut as _, Bytes, BytesMut};
use russh_sftp::protocol::{self, Packet, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt as _};

pub(super) const SSH_FXP_INIT: u8 = 1;
pub(super) const SSH_FXP_VERSION: u8 = 2;
pub(super) const SSH_FXP_OPEN: u8 = 3;
pub(super) const SSH_FXP_CLOSE: u8 = 4;
pub(super) const SSH_FXP_READ: u8 = 5;
pub(super) const SSH_FXP_LSTAT: u8 = 7;
pub(super) const SSH_FXP_FSTAT: u8 = 8;
pub(super) const SSH_FXP_OPENDIR: u8 = 11;
pub(super) const SSH_FXP_READDIR: u8 = 12;
pub(super) const SSH_FXP_REALPATH: u8 = 16;
pub(super) const SSH_FXP_STAT: u8 = 17;
pub(super) const SSH_FXP_READLINK: u8 = 19;
pub(super) const SSH_FXP_NAME: u8 = 104;
pub(super) const SSH_FXP_EXTENDED_REPLY: u8 = 201;

/// A status the relay answers with itself.
#[derive(Debug, Clone, Copy)]
pub(super) enum Status {
    Ok,
    Eof,
    /// The agent's answer could not be read.
    Failure,
}

/// The next packet's body (type onwards) from `reader`; a packet over `most` bytes is an
/// error, as no peer of the relay sends one.
pub(super) async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    most: usize,
) -> std::io::Result<Bytes> {
    let length = reader.read_u32().await? as usize;
    if length > most || length < 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an SFTP packet of {length} bytes (at most {most} are taken)"),
        ));
    }
    let mut body = BytesMut::zeroed(length);
    reader.read_exact(&mut body).await?;
    Ok(body.freeze())
}

/// The next packet's body, as [`read_body`]; none where the stream ends between packets.
pub(super) async fn next_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    most: usize,
) -> std::io::Result<Option<Bytes>> {
    match read_body(reader, most).await {
        Ok(body) => Ok(Some(body)),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(err) => Err(err),
    }
}

/// The packet type of `body`.
pub(super) fn kind(body: &[u8]) -> u8 {
    body.first().copied().unwrap_or_default()
}

/// The request id of `body`, for every type but `INIT` and `VERSION`.
pub(super) fn id_of(body: &[u8]) -> Option<u32> {
    let field = body.get(1..5)?;
    Some(u32::from_be_bytes(field.try_into().ok()?))
}

/// `body` as a whole packet (its length first) with request id `id`.
pub(super) fn with_id(body: &[u8], id: u32) -> Bytes {
    let mut packet = BytesMut::with_capacity(4 + body.len());
    packet.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    packet.put_u8(kind(body));
    packet.put_u32(id);
    packet.put_slice(body.get(5..).unwrap_or_default());
    packet.freeze()
}

/// `body` as a whole packet, as it is.
pub(super) fn whole(body: &[u8]) -> Bytes {
    let mut packet = BytesMut::with_capacity(4 + body.len());
    packet.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    packet.put_slice(body);
    packet.freeze()
}

/// `body` decoded, if it is a packet russh-sftp knows.
pub(super) fn decode(body: &Bytes) -> Option<Packet> {
    Packet::try_from(&mut body.clone()).ok()
}

/// `packet` encoded whole.
pub(super) fn encode(packet: Packet) -> Bytes {
    // Only packets of the relay's own making are encoded, and each of them can be.
    Bytes::try_from(packet).unwrap_or_default()
}

/// A `STATUS` packet answering `id`.
pub(super) fn status(id: u32, status: Status) -> Bytes {
    let (status_code, message) = match status {
        Status::Ok => (StatusCode::Ok, "Ok"),
        Status::Eof => (StatusCode::Eof, "End of file"),
        Status::Failure => (StatusCode::Failure, "the agent's answer could not be read"),
    };
    encode(Packet::Status(protocol::Status {
        id,
        status_code,
        error_message: message.into(),
        language_tag: "en-US".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_takes_another_id_and_keeps_the_rest() {
        let body = [SSH_FXP_READ, 0, 0, 0, 1, 9, 8];
        assert_eq!(id_of(&body), Some(1));
        let moved = with_id(&body, 0x0102_0304);
        assert_eq!(&moved[..], &[0, 0, 0, 7, SSH_FXP_READ, 1, 2, 3, 4, 9, 8]);
        assert_eq!(&whole(&body)[4..], &body);
        assert_eq!(id_of(&[SSH_FXP_INIT, 0, 0]), None);
    }

    #[test]
    fn a_status_is_what_russh_sftp_reads() {
        let packet = status(5, Status::Eof);
        match decode(&packet.slice(4..)) {
            Some(Packet::Status(status)) => {
                assert_eq!((status.id, status.status_code), (5, StatusCode::Eof));
            }
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_packet_too_large_or_empty_is_an_error() {
        let mut too_large: &[u8] = &[0, 1, 0, 0, 1];
        assert!(read_body(&mut too_large, 1024).await.is_err());
        let mut empty: &[u8] = &[0, 0, 0, 0];
        assert!(read_body(&mut empty, 1024).await.is_err());
        let mut fine: &[u8] = &[0, 0, 0, 2, 7, 7];
        assert_eq!(
            &read_body(&mut fine, 1024).await.expect("read")[..],
            &[7, 7]
        );
    }
}
