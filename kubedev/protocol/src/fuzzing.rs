//! What the fuzz targets in `fuzz/` run on the bytes they are given: what a hostile or
//! broken peer can send before and after the handshake. Each must return, never panic or
//! hang, and keep what it promises (a message that decodes encodes back to itself). The
//! unit tests replay every input kept in `fuzz/inputs/` (seeds, and each crash once found).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::codec::{CodecError, read_datagram, read_message, write_datagram, write_message};
use crate::handshake::{greet_agent, welcome_client};
use crate::mux::{self, Mode};
use crate::stripe::{Member, Striped};
use crate::{Hello, HelloReply, OpenReply, OpenRequest};

/// The token the fuzzed agent knows.
pub const FUZZ_TOKEN: &str = "fuzz-token";

/// A runtime for one input: the code under test is async.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// A peer that sends `input` and takes whatever it is sent.
pub fn peer_sending(input: &[u8]) -> impl AsyncRead + AsyncWrite + Unpin + '_ {
    tokio::io::join(input, tokio::io::sink())
}

/// The first byte picks what the rest is read as: control messages of each kind, datagrams,
/// or the multiplexer's frames.
pub fn frame_codec(input: &[u8]) {
    let Some((&kind, rest)) = input.split_first() else {
        return;
    };
    block_on(async {
        match kind % 6 {
            0 => drop(messages_round_trip::<OpenRequest>(rest).await),
            1 => drop(messages_round_trip::<OpenReply>(rest).await),
            2 => drop(messages_round_trip::<Hello>(rest).await),
            3 => drop(messages_round_trip::<HelloReply>(rest).await),
            4 => datagrams_round_trip(rest).await,
            _ => mux_frames(rest).await,
        }
    });
}

/// Reads messages of type `T` from `input` until one does not decode, checks that each
/// encodes back to itself, and returns them.
pub async fn messages_round_trip<T>(mut input: &[u8]) -> Vec<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut messages = Vec::new();
    while let Ok(message) = read_message::<_, T>(&mut input).await {
        let mut encoded = Vec::new();
        match write_message(&mut encoded, &message).await {
            Ok(()) => {
                let decoded: T = read_message(&mut encoded.as_slice())
                    .await
                    .expect("what was encoded decodes");
                assert_eq!(decoded, message);
            }
            // Escapes can make the encoding longer than what was read.
            Err(CodecError::TooLong(..)) => {}
            Err(err) => panic!("{message:?} does not encode: {err}"),
        }
        messages.push(message);
    }
    messages
}

async fn datagrams_round_trip(mut input: &[u8]) {
    let mut buf = [0u8; 65535];
    while let Ok(Some(len)) = read_datagram(&mut input, &mut buf).await {
        let mut encoded = Vec::new();
        write_datagram(&mut encoded, &buf[..len])
            .await
            .expect("a datagram that was read can be written");
        assert_eq!(encoded.len(), 2 + len);
        assert_eq!(&encoded[2..], &buf[..len]);
    }
}

/// Frames from a peer that opens streams and writes to them: every stream is read to its
/// end, and the connection ends with the input.
async fn mux_frames(input: &[u8]) {
    // The multiplexer runs as a task, which needs owned bytes.
    let (handle, mut streams_rx) = mux::spawn(peer_sending_owned(input.to_vec()), Mode::Server);
    let mut readers = tokio::task::JoinSet::new();
    while let Some(mut stream) = streams_rx.recv().await {
        readers.spawn(async move {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
    }
    while readers.join_next().await.is_some() {}
    handle.closed().await;
}

fn peer_sending_owned(input: Vec<u8>) -> impl AsyncRead + AsyncWrite + Unpin + Send + 'static {
    tokio::io::join(std::io::Cursor::new(input), tokio::io::sink())
}

/// The first byte picks the side: the agent welcoming what the input sends as a client,
/// or tunneld greeting what the input answers as an agent. Neither side may ever accept:
/// the input cannot know the token, nor answer the other side's fresh random challenge.
pub fn handshake(input: &[u8]) {
    let Some((&side, rest)) = input.split_first() else {
        return;
    };
    block_on(async {
        let mut peer = peer_sending(rest);
        if side % 2 == 0 {
            let welcomed = welcome_client(&mut peer, FUZZ_TOKEN, "agent", "fuzz-pod").await;
            assert!(
                welcomed.is_err(),
                "welcomed a client that cannot know the token"
            );
        } else {
            let greeted = greet_agent(&mut peer, FUZZ_TOKEN, "tunneld", "fuzz-pod").await;
            assert!(
                greeted.is_err(),
                "linked to an agent that cannot know the token"
            );
        }
    });
}

/// A striped flow reading what its peer sends on two streams (the first byte says where
/// the rest splits between them: chunks, end and leave markers, anything): it must end,
/// with the bytes sent or an error, and never panic or hang; then it is written and ended.
pub fn striped_flow(input: &[u8]) {
    let Some((&split, rest)) = input.split_first() else {
        return;
    };
    let (first, second) = rest.split_at(usize::from(split) * rest.len() / 255);
    block_on(async {
        let (joins_tx, joined_rx) = mpsc::channel(1);
        let mut flow = Striped::new(peer_sending(first), joined_rx);
        let _ = joins_tx.send(Member::new(peer_sending(second))).await;
        drop(joins_tx);
        let mut received = Vec::new();
        let reading = flow.read_to_end(&mut received);
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), reading).await;
        assert!(read.is_ok(), "a striped flow hung on what its peer sent");
        assert!(received.len() <= rest.len(), "more bytes than were sent");
        if flow.write_all(b"after").await.is_ok() {
            let _ = flow.shutdown().await;
        }
    });
}

/// Runs `run` on every input kept for fuzz target `target` in the workspace's
/// `fuzz/inputs/`, naming each before it runs.
pub fn replay_kept_inputs(target: &str, run: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/inputs")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no kept inputs in {}", dir.display());
    for path in inputs {
        eprintln!("{}", path.display());
        run(&std::fs::read(&path).expect("a kept input"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_frame_codec_inputs_pass() {
        replay_kept_inputs("frame_codec", frame_codec);
    }

    #[test]
    fn kept_handshake_inputs_pass() {
        replay_kept_inputs("handshake", handshake);
    }

    #[test]
    fn kept_striped_flow_inputs_pass() {
        replay_kept_inputs("striped_flow", striped_flow);
    }
}
