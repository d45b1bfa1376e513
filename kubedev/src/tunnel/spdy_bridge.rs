//! A port-forward in SPDY tunnelled through the websocket, as kubectl speaks it: each
//! binary message carries SPDY's bytes, which the API server passes on to the container
//! runtime. One forwarded connection is a pair of streams named by a request id: an error
//! stream, where the runtime reports why it could not connect, and a data stream.

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};

use super::spdy::{self, Decoder, Event, FLAG_FIN, FRAME_HEADER, HeaderCompressor};
use super::{
    BridgeError, MAX_ERROR_REPORT, MAX_MESSAGE, PortForwardError, Websocket, error_report,
};

/// How long the end of our side may take to reach the peer.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Streams a client opens have odd ids.
const ERROR_STREAM: u32 = 1;
const DATA_STREAM: u32 = 3;

/// Moves bytes between `io` and `port` in the pod until either side ends.
pub(super) async fn bridge<W: Websocket>(
    websocket: W,
    io: DuplexStream,
    port: u16,
) -> Result<(), BridgeError> {
    let (ws_tx, ws_rx) = websocket.split();
    let (io_rx, io_tx) = tokio::io::split(io);
    let (ping_tx, ping_rx) = mpsc::channel(4);
    tokio::select! {
        done = upstream(ws_tx, io_rx, ping_rx, port) => done,
        done = downstream(ws_rx, io_tx, ping_tx) => done,
    }
}

/// Opens the pair of streams for `port`, then sends what `io` gives on the data stream and
/// answers the peer's pings; the end of `io` ends the port-forward.
async fn upstream<T, R>(
    mut ws_tx: T,
    mut io_rx: R,
    mut ping_rx: mpsc::Receiver<u32>,
    port: u16,
) -> Result<(), BridgeError>
where
    T: futures::Sink<Message, Error = tungstenite::Error> + Unpin,
    R: tokio::io::AsyncRead + Unpin,
{
    ws_tx.send(Message::binary(opening(port))).await?;
    let mut message = vec![0u8; FRAME_HEADER + MAX_MESSAGE];
    loop {
        tokio::select! {
            read = io_rx.read(&mut message[FRAME_HEADER..]) => {
                let len = read?;
                if len == 0 {
                    // The end of the connection, as with the channel protocol: a link is
                    // done with when its side ends (yamux never half-closes).
                    let fin = spdy::data_header(DATA_STREAM, FLAG_FIN, 0);
                    let closing = async {
                        ws_tx.send(Message::binary(fin.to_vec())).await?;
                        ws_tx.close().await
                    };
                    // A peer that reads nothing more does not hold the link open.
                    tokio::time::timeout(CLOSE_WAIT, closing).await.ok().transpose()?;
                    return Ok(());
                }
                message[..FRAME_HEADER].copy_from_slice(&spdy::data_header(DATA_STREAM, 0, len));
                ws_tx.send(Message::binary(message[..FRAME_HEADER + len].to_vec())).await?;
            }
            Some(id) = ping_rx.recv() => ws_tx.send(Message::binary(spdy::ping(id))).await?,
        }
    }
}

/// The error stream (ended at once: nothing is sent on it) and the data stream for `port`,
/// under request id 0.
fn opening(port: u16) -> Vec<u8> {
    let port = port.to_string();
    let mut compressor = HeaderCompressor::new();
    let headers = |kind| {
        [
            ("streamtype", kind),
            ("port", port.as_str()),
            ("requestid", "0"),
        ]
    };
    let mut opening = compressor.syn_stream(ERROR_STREAM, &headers("error"));
    opening.extend_from_slice(&spdy::data_header(ERROR_STREAM, FLAG_FIN, 0));
    opening.extend(compressor.syn_stream(DATA_STREAM, &headers("data")));
    opening
}

/// Writes what the data stream brings to `io`, until the pod's side ends or the runtime
/// reports an error.
async fn downstream<S, W>(
    mut ws_rx: S,
    mut io_tx: W,
    ping_tx: mpsc::Sender<u32>,
) -> Result<(), BridgeError>
where
    S: futures::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut decoder = Decoder::default();
    let mut report = Vec::new();
    while let Some(message) = ws_rx.next().await {
        let bytes = match message? {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            _ => continue,
        };
        let mut input = &bytes[..];
        while let Some(event) = decoder
            .next(&mut input)
            .map_err(|version| PortForwardError::SpdyVersion(version.0))?
        {
            match event {
                Event::Data {
                    stream: DATA_STREAM,
                    bytes,
                } => io_tx.write_all(bytes).await?,
                Event::Data {
                    stream: ERROR_STREAM,
                    bytes,
                } => {
                    let room = MAX_ERROR_REPORT.saturating_sub(report.len());
                    report.extend_from_slice(&bytes[..room.min(bytes.len())]);
                }
                Event::Data { .. } => {}
                Event::Fin {
                    stream: ERROR_STREAM,
                } => {
                    if let Some(reported) = error_report(&report) {
                        return Err(reported.into());
                    }
                }
                Event::Fin {
                    stream: DATA_STREAM,
                }
                | Event::GoAway => return ended(io_tx, &report).await,
                Event::Fin { .. } => {}
                Event::Reset { stream, status } => {
                    let reset = PortForwardError::Reset { stream, status };
                    return Err(error_report(&report).unwrap_or(reset).into());
                }
                // A ping of the peer's own has an even id; answering is best effort.
                Event::Ping(id) if id % 2 == 0 => {
                    ping_tx.try_send(id).ok();
                }
                Event::Ping(_) => {}
            }
        }
    }
    ended(io_tx, &report).await
}

/// The pod's side ended: the end of `io`'s stream, or the error the runtime reported.
async fn ended<W>(mut io_tx: W, report: &[u8]) -> Result<(), BridgeError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    if let Some(reported) = error_report(report) {
        return Err(reported.into());
    }
    io_tx.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests;
