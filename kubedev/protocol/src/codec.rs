//! Framing: control messages as length-prefixed JSON, datagrams as length-prefixed bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest control message accepted; anything bigger is a broken or hostile peer.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Errors reading or writing a framed message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The connection ended before a whole message.
    #[error("connection closed")]
    Closed,
    /// A message announced more bytes than such a message may have.
    #[error("message of {0} bytes exceeds the limit of {1}")]
    TooLong(usize, usize),
    /// A message is not the JSON expected.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Writes `message` as a u32 big-endian length followed by its JSON.
pub async fn write_message<W, T>(writer: &mut W, message: &T) -> Result<(), CodecError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_MESSAGE_LEN {
        return Err(CodecError::TooLong(body.len(), MAX_MESSAGE_LEN));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one message written by [`write_message`].
pub async fn read_message<R, T>(reader: &mut R) -> Result<T, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_message_within(reader, MAX_MESSAGE_LEN).await
}

/// Reads one message of at most `limit` bytes, for a peer that has proved nothing yet.
pub async fn read_message_within<R, T>(reader: &mut R, limit: usize) -> Result<T, CodecError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(CodecError::Closed);
        }
        Err(err) => return Err(err.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(CodecError::TooLong(len, limit));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Writes one datagram as a u16 big-endian length followed by its bytes.
pub async fn write_datagram<W>(writer: &mut W, datagram: &[u8]) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let len = u16::try_from(datagram.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "datagram over 65535 bytes",
        )
    })?;
    let mut frame = Vec::with_capacity(2 + datagram.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(datagram);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one datagram written by [`write_datagram`] into `buf`, returning its length,
/// or `None` when the stream ended cleanly between datagrams.
pub async fn read_datagram<R>(
    reader: &mut R,
    buf: &mut [u8; 65535],
) -> std::io::Result<Option<usize>>
where
    R: AsyncRead + Unpin,
{
    let mut len = [0u8; 2];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u16::from_be_bytes(len) as usize;
    reader.read_exact(&mut buf[..len]).await?;
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenRequest;

    #[tokio::test]
    async fn messages_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let sent = OpenRequest::Udp {
            host: "dns.kube-system".into(),
            port: 53,
        };
        write_message(&mut a, &sent).await.expect("write");
        let received: OpenRequest = read_message(&mut b).await.expect("read");
        assert_eq!(received, sent);
    }

    #[tokio::test]
    async fn oversized_and_truncated_messages_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&(MAX_MESSAGE_LEN as u32 + 1).to_be_bytes())
            .await
            .expect("write");
        let err = read_message::<_, OpenRequest>(&mut b)
            .await
            .expect_err("too long");
        assert!(matches!(err, CodecError::TooLong(..)), "{err}");

        let (mut a, mut b) = tokio::io::duplex(1024);
        drop(a.write_all(&[0, 0]).await);
        drop(a);
        let err = read_message::<_, OpenRequest>(&mut b)
            .await
            .expect_err("closed");
        assert!(matches!(err, CodecError::Closed), "{err}");
    }

    #[tokio::test]
    async fn datagrams_keep_their_boundaries() {
        let (mut a, mut b) = tokio::io::duplex(200_000);
        for datagram in [&b"first"[..], b"", &[7u8; 65535]] {
            write_datagram(&mut a, datagram).await.expect("write");
        }
        drop(a);
        let mut buf = [0u8; 65535];
        assert_eq!(
            read_datagram(&mut b, &mut buf).await.expect("read"),
            Some(5)
        );
        assert_eq!(&buf[..5], b"first");
        assert_eq!(
            read_datagram(&mut b, &mut buf).await.expect("read"),
            Some(0)
        );
        assert_eq!(
            read_datagram(&mut b, &mut buf).await.expect("read"),
            Some(65535)
        );
        assert_eq!(read_datagram(&mut b, &mut buf).await.expect("read"), None);
    }

    #[tokio::test]
    async fn oversized_datagram_is_refused() {
        let (mut a, _b) = tokio::io::duplex(16);
        let err = write_datagram(&mut a, &[0u8; 65536])
            .await
            .expect_err("too big");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
