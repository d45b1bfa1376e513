use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `chunk` to `stream`, which `written` bytes went to already, until a write
/// makes no progress for half a second or `limit` bytes are written, checking after
/// each write that no more than `bound` bytes are on their way (written, not yet
/// `read`); returns the bytes written.
async fn write_within_bound(
    stream: &mut MuxStream,
    chunk: &[u8],
    mut written: usize,
    limit: usize,
    read: &AtomicUsize,
    bound: usize,
) -> usize {
    while written < limit {
        let write = stream.write_all(chunk);
        match tokio::time::timeout(Duration::from_millis(500), write).await {
            Ok(Ok(())) => written += chunk.len(),
            _ => break,
        }
        let unread = written - read.load(Ordering::SeqCst);
        assert!(
            unread <= bound,
            "{unread} bytes on their way, bound {bound}"
        );
    }
    written
}

#[tokio::test]
async fn a_stream_never_has_more_than_its_window_bound_on_its_way() {
    // What the receiver may buffer, plus one write the sender may have in yamux's hands.
    let chunk = vec![7u8; 64 * 1024];
    let bound = yamux::DEFAULT_CREDIT as usize + WINDOW_GROWTH + chunk.len();
    let (a, b) = tokio::io::duplex(256 * 1024);
    let (client, _client_inbound) = spawn(a, Mode::Client);
    let (_server, mut server_inbound) = spawn(b, Mode::Server);
    let mut sending = client.open().await.expect("open");
    let read = Arc::new(AtomicUsize::new(0));
    sending.write_all(&chunk).await.expect("first write");
    let mut receiving = server_inbound.recv().await.expect("inbound");

    // A busy stream, whose window grows, then a reader that stops.
    let read_all = 64 << 20;
    let reader = tokio::spawn({
        let read = read.clone();
        async move {
            let mut buf = vec![0u8; 1 << 20];
            while read.load(Ordering::SeqCst) < read_all {
                let got = receiving.read(&mut buf).await.expect("read");
                read.fetch_add(got, Ordering::SeqCst);
            }
            receiving
        }
    });
    let limit = read_all + 4 * bound;
    let written = write_within_bound(&mut sending, &chunk, chunk.len(), limit, &read, bound).await;
    let _stalled = reader.await.expect("reader");
    assert!(
        written < limit,
        "the writer was held back once the reader stopped"
    );

    // The connection still carries a new stream.
    let mut other = client.open().await.expect("open another");
    other.write_all(b"still moving").await.expect("write");
    other.shutdown().await.expect("close");
    let mut accepted = server_inbound.recv().await.expect("the other stream");
    let mut got = String::new();
    accepted.read_to_string(&mut got).await.expect("read");
    assert_eq!(got, "still moving");
}

#[tokio::test]
async fn both_ends_open_streams_and_half_close() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, mut client_inbound) = spawn(a, Mode::Client);
    let (server, mut server_inbound) = spawn(b, Mode::Server);

    let mut outbound = client.open().await.expect("open");
    outbound.write_all(b"to server").await.expect("write");
    outbound.shutdown().await.expect("half-close");
    let mut accepted = server_inbound.recv().await.expect("inbound");
    let mut got = String::new();
    accepted
        .read_to_string(&mut got)
        .await
        .expect("read to FIN");
    assert_eq!(got, "to server");
    // The other direction is still open after the client's half-close.
    accepted.write_all(b"reply").await.expect("write back");
    accepted.shutdown().await.expect("close");
    let mut reply = String::new();
    outbound
        .read_to_string(&mut reply)
        .await
        .expect("read reply");
    assert_eq!(reply, "reply");

    let mut from_server = server.open().await.expect("server opens too");
    from_server.write_all(b"x").await.expect("write");
    from_server.shutdown().await.expect("close");
    let mut seen = client_inbound.recv().await.expect("inbound on client");
    let mut byte = String::new();
    seen.read_to_string(&mut byte).await.expect("read");
    assert_eq!(byte, "x");
}

#[tokio::test]
async fn closing_ends_the_connection_for_both_ends() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (client, _client_inbound) = spawn(a, Mode::Client);
    let (server, mut server_inbound) = spawn(b, Mode::Server);
    client.close();
    assert!(server_inbound.recv().await.is_none(), "peer sees the end");
    assert!(client.open().await.is_err());
    assert!(server.open().await.is_err());
}

/// Echoes every stream in `inbound_rx` until it ends.
fn echo_every_stream(mut inbound_rx: mpsc::Receiver<MuxStream>) {
    tokio::spawn(async move {
        while let Some(stream) = inbound_rx.recv().await {
            tokio::spawn(async move {
                let (mut reading, mut writing) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut reading, &mut writing).await;
            });
        }
    });
}

/// Whether `text` sent on `stream` comes back.
async fn echoes(stream: &mut MuxStream, text: &[u8]) -> bool {
    let exchange = async {
        stream.write_all(text).await?;
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back == text)
    };
    let answered = tokio::time::timeout(Duration::from_secs(5), exchange).await;
    matches!(answered, Ok(Ok(true)))
}

#[tokio::test]
async fn streams_opened_beyond_the_cap_are_refused_and_the_connection_carries_on() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (client, _client_inbound) = spawn(a, Mode::Client);
    let (_server, server_inbound) = spawn(b, Mode::Server);
    echo_every_stream(server_inbound);
    // One more than yamux's limit, which without the cap would end the connection.
    let mut open = Vec::new();
    for _ in 0..=MAX_STREAMS {
        match client.open().await {
            Ok(mut stream) => {
                assert!(echoes(&mut stream, b"x").await);
                open.push(stream);
            }
            Err(MuxError::Full(cap)) => assert_eq!(cap, OPENED_STREAMS_CAP),
            Err(err) => panic!("the connection ended: {err}"),
        }
    }
    assert_eq!(open.len(), OPENED_STREAMS_CAP);
    assert_eq!(
        client.refused.total() as usize,
        MAX_STREAMS + 1 - OPENED_STREAMS_CAP
    );

    // What keeps the session alive still gets through a flood of flows.
    let mut ping = client.open_control().await.expect("a control stream");
    assert!(echoes(&mut ping, b"ping").await);
    assert!(
        echoes(&mut open[0], b"still here").await,
        "a stream opened before"
    );
    assert!(!client.is_closed());
    open.truncate(OPENED_STREAMS_CAP - 5);
    let mut again = client.open().await.expect("a place was freed");
    assert!(echoes(&mut again, b"again").await);
}

#[tokio::test]
async fn streams_a_peer_opens_beyond_the_cap_are_reset_and_the_connection_carries_on() {
    let (a, b) = tokio::io::duplex(1 << 20);
    // A peer that ignores the caps, as a broken or hostile one would.
    let careless = Caps {
        opened: MAX_STREAMS,
        ..Caps::DEFAULT
    };
    let (peer, peer_inbound) = spawn_with(a, Mode::Client, careless);
    let (this_end, inbound) = spawn(b, Mode::Server);
    echo_every_stream(inbound);
    echo_every_stream(peer_inbound);
    // One more than yamux's limit, which without the cap would end the connection.
    let mut kept = Vec::new();
    for _ in 0..=MAX_STREAMS {
        let mut stream = peer.open().await.expect("the connection is up");
        if echoes(&mut stream, b"x").await {
            kept.push(stream);
        }
    }
    assert_eq!(kept.len(), ACCEPTED_STREAMS_CAP, "the rest were reset");

    assert!(
        echoes(&mut kept[0], b"still here").await,
        "a stream opened before"
    );
    assert!(!peer.is_closed() && !this_end.is_closed());
    let mut own = this_end.open().await.expect("this end still opens its own");
    assert!(echoes(&mut own, b"own").await);
    // Places free once this end's tasks have seen their streams end.
    kept.truncate(ACCEPTED_STREAMS_CAP - 8);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = peer.open().await.expect("open");
        if echoes(&mut stream, b"again").await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place was freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
