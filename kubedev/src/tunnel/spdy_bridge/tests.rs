use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::mpsc as channel;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// The API server's end of a websocket, in memory: what the bridge sends arrives on `sent`,
/// and what is pushed to `to_bridge` is what the bridge receives.
struct FakeWebsocket {
    received: channel::UnboundedReceiver<Message>,
    sent: channel::UnboundedSender<Message>,
}

impl futures::Stream for FakeWebsocket {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.received
            .poll_next_unpin(cx)
            .map(|message| message.map(Ok))
    }
}

impl futures::Sink<Message> for FakeWebsocket {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        self.sent
            .unbounded_send(message)
            .map_err(|_| tungstenite::Error::ConnectionClosed)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

struct Peer {
    to_bridge: channel::UnboundedSender<Message>,
    from_bridge: channel::UnboundedReceiver<Message>,
    decoder: Decoder,
}

impl Peer {
    /// What the bridge sent next: its events, data joined per stream, as text.
    async fn next_message(&mut self) -> Vec<String> {
        let message = self.from_bridge.next().await.expect("a message");
        let bytes = message.into_data();
        let mut input = &bytes[..];
        let mut events = Vec::new();
        while let Some(event) = self.decoder.next(&mut input).expect("SPDY/3") {
            events.push(match event {
                Event::Data { stream, bytes } => {
                    format!("data {stream}: {}", String::from_utf8_lossy(bytes))
                }
                other => format!("{other:?}"),
            });
        }
        events
    }

    fn send(&self, frames: &[&[u8]]) {
        self.to_bridge
            .unbounded_send(Message::binary(frames.concat()))
            .expect("the bridge listens");
    }
}

fn start() -> (
    Peer,
    DuplexStream,
    tokio::task::JoinHandle<Result<(), BridgeError>>,
) {
    let (to_bridge, received) = channel::unbounded();
    let (sent, from_bridge) = channel::unbounded();
    let (ours, bridged) = tokio::io::duplex(64 * 1024);
    let websocket = FakeWebsocket { received, sent };
    let bridge = tokio::spawn(bridge(websocket, bridged, 7329));
    let peer = Peer {
        to_bridge,
        from_bridge,
        decoder: Decoder::default(),
    };
    (peer, ours, bridge)
}

fn data(stream: u32, flags: u8, bytes: &[u8]) -> Vec<u8> {
    [&spdy::data_header(stream, flags, bytes.len())[..], bytes].concat()
}

#[tokio::test]
async fn bytes_cross_both_ways_on_the_data_stream_and_pings_are_answered() {
    let (mut peer, mut ours, bridge) = start();
    // The opening: the error stream's two SYN_STREAMs and its end.
    assert_eq!(peer.next_message().await, vec!["Fin { stream: 1 }"]);
    ours.write_all(b"hello").await.expect("write");
    assert_eq!(peer.next_message().await, vec!["data 3: hello"]);
    // A reply frame's headers (skipped), then data cut across messages, then a ping.
    let reply = [&[0x80, 3, 0, 2, 0, 0, 0, 6][..], &[0, 0, 0, 3, 0x78, 0x9c]].concat();
    let answer = data(DATA_STREAM, 0, b"from the pod");
    let (first, second) = answer.split_at(5);
    peer.send(&[&reply, first]);
    peer.send(&[second, &spdy::ping(2)]);
    let mut received = [0; 12];
    ours.read_exact(&mut received).await.expect("read");
    assert_eq!(&received, b"from the pod");
    assert_eq!(peer.next_message().await, vec!["Ping(2)"]);
    // The end of ours ends the data stream and the port-forward.
    drop(ours);
    assert_eq!(peer.next_message().await, vec!["Fin { stream: 3 }"]);
    bridge.await.expect("joined").expect("ended cleanly");
}

#[tokio::test]
async fn the_runtimes_report_ends_the_port_forward_with_it() {
    let (peer, mut ours, bridge) = start();
    peer.send(&[
        &data(
            ERROR_STREAM,
            0,
            b"error forwarding port 7329: connection refused\n",
        ),
        &data(ERROR_STREAM, FLAG_FIN, b""),
    ]);
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).await.ok();
    let ended = bridge.await.expect("joined");
    assert_eq!(
        ended.map_err(|err| err.to_string()),
        Err(
            "the container runtime reported: error forwarding port 7329: connection refused".into()
        )
    );
}

#[tokio::test]
async fn the_end_of_the_pods_side_ends_ours() {
    let (peer, mut ours, bridge) = start();
    peer.send(&[&data(DATA_STREAM, FLAG_FIN, b"bye")]);
    let mut rest = Vec::new();
    ours.read_to_end(&mut rest).await.expect("read to the end");
    assert_eq!(rest, b"bye");
    bridge.await.expect("joined").expect("ended cleanly");
}
