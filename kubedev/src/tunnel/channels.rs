//! `v4.channel.k8s.io`: every binary message starts with a channel byte (0 carries the
//! port's data, 1 its errors) and the first message on each channel is the port number.
//! The fallback where the API server does not tunnel SPDY.

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_tungstenite::tungstenite::Message;

use super::{BridgeError, MAX_MESSAGE, PortForwardError, Websocket, error_report};

const DATA_CHANNEL: u8 = 0;
const ERROR_CHANNEL: u8 = 1;

/// Moves bytes between `io` and the websocket until either side ends.
pub(super) async fn bridge<W: Websocket>(
    websocket: W,
    io: DuplexStream,
    port: u16,
) -> Result<(), BridgeError> {
    let (mut ws_tx, mut ws_rx) = websocket.split();
    let (mut io_rx, mut io_tx) = tokio::io::split(io);
    let upstream = async {
        let mut message = vec![0u8; MAX_MESSAGE + 1];
        loop {
            message[0] = DATA_CHANNEL;
            let len = io_rx.read(&mut message[1..]).await?;
            if len == 0 {
                ws_tx.close().await?;
                return Ok::<_, BridgeError>(());
            }
            ws_tx
                .send(Message::binary(message[..=len].to_vec()))
                .await?;
        }
    };
    let downstream = async {
        let mut decoder = FrameDecoder::new(port);
        while let Some(message) = ws_rx.next().await {
            let data = match message? {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let bytes = decoder.decode(&data)?;
            if !bytes.is_empty() {
                io_tx.write_all(bytes).await?;
            }
        }
        io_tx.shutdown().await?;
        Ok::<_, BridgeError>(())
    };
    tokio::select! {
        done = upstream => done,
        done = downstream => done,
    }
}

/// Turns the websocket's messages for one port into its bytes.
#[derive(Debug)]
struct FrameDecoder {
    port: u16,
    data_started: bool,
    error_started: bool,
}

impl FrameDecoder {
    fn new(port: u16) -> Self {
        Self {
            port,
            data_started: false,
            error_started: false,
        }
    }

    /// The data bytes in `message` (empty for control messages), or what went wrong.
    fn decode<'m>(&mut self, message: &'m [u8]) -> Result<&'m [u8], PortForwardError> {
        let (&channel, body) = message.split_first().ok_or(PortForwardError::Truncated)?;
        let started = match channel {
            DATA_CHANNEL => &mut self.data_started,
            ERROR_CHANNEL => &mut self.error_started,
            other => return Err(PortForwardError::UnknownChannel(other)),
        };
        let body = if *started {
            body
        } else {
            // Each channel opens with the port number, little-endian.
            let (port, rest) = body
                .split_first_chunk::<2>()
                .ok_or(PortForwardError::Truncated)?;
            let got = u16::from_le_bytes(*port);
            if got != self.port {
                return Err(PortForwardError::WrongPort {
                    expected: self.port,
                    got,
                });
            }
            *started = true;
            rest
        };
        match channel {
            ERROR_CHANNEL => error_report(body).map_or(Ok(&[]), Err),
            _ => Ok(body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 7329;

    fn opening(channel: u8) -> Vec<u8> {
        let mut message = vec![channel];
        message.extend_from_slice(&PORT.to_le_bytes());
        message
    }

    #[test]
    fn data_follows_the_port_announcement() {
        let mut decoder = FrameDecoder::new(PORT);
        assert_eq!(decoder.decode(&opening(DATA_CHANNEL)), Ok(&b""[..]));
        assert_eq!(decoder.decode(&opening(ERROR_CHANNEL)), Ok(&b""[..]));
        assert_eq!(decoder.decode(b"\x00hello"), Ok(&b"hello"[..]));
        // Later messages carry only data, even when they start like a port number.
        assert_eq!(decoder.decode(b"\x00\xa1\x1cx"), Ok(&b"\xa1\x1cx"[..]));
    }

    #[test]
    fn data_may_come_in_the_opening_message() {
        let mut decoder = FrameDecoder::new(PORT);
        let mut message = opening(DATA_CHANNEL);
        message.extend_from_slice(b"early");
        assert_eq!(decoder.decode(&message), Ok(&b"early"[..]));
    }

    #[test]
    fn errors_from_the_api_server_are_reported() {
        let mut decoder = FrameDecoder::new(PORT);
        decoder.decode(&opening(ERROR_CHANNEL)).ok();
        let reported = decoder.decode(b"\x01error forwarding port 7329: connection refused\n");
        assert_eq!(
            reported,
            Err(PortForwardError::Remote(
                "error forwarding port 7329: connection refused".into()
            ))
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let mut decoder = FrameDecoder::new(PORT);
        assert_eq!(decoder.decode(b""), Err(PortForwardError::Truncated));
        assert_eq!(
            decoder.decode(b"\x00\x01"),
            Err(PortForwardError::Truncated)
        );
        assert_eq!(
            decoder.decode(b"\x00\x50\x00"),
            Err(PortForwardError::WrongPort {
                expected: PORT,
                got: 80
            })
        );
        assert_eq!(
            decoder.decode(b"\x04\x00"),
            Err(PortForwardError::UnknownChannel(4))
        );
    }
}
