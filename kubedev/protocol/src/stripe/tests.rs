use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::*;

/// A sender and a receiver joined by `streams` pipes of `buffer` bytes each (the first at
/// once, the others when `join` is called), as two ends of a flow over several links.
struct Pair {
    sender: Striped<DuplexStream>,
    receiver: Striped<DuplexStream>,
    joins: Joins,
}

/// Where a new pipe's two ends go.
struct Joins {
    sender: mpsc::Sender<Member<DuplexStream>>,
    receiver: mpsc::Sender<Member<DuplexStream>>,
}

impl Pair {
    fn new(buffer: usize) -> Self {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let (sender_joins, sender_joined_rx) = mpsc::channel(MAX_STREAMS);
        let (receiver_joins, receiver_joined_rx) = mpsc::channel(MAX_STREAMS);
        Self {
            sender: Striped::new(ours, sender_joined_rx),
            receiver: Striped::new(theirs, receiver_joined_rx),
            joins: Joins {
                sender: sender_joins,
                receiver: receiver_joins,
            },
        }
    }
}

impl Joins {
    async fn join(&self, buffer: usize) {
        self.join_leaving_on(buffer, CancellationToken::new()).await;
    }

    /// Joins a pipe whose sender's end leaves the flow once `leave` is cancelled.
    async fn join_leaving_on(&self, buffer: usize, leave: CancellationToken) {
        let (ours, theirs) = tokio::io::duplex(buffer);
        self.sender
            .send(Member::new(ours).leaving_on(leave))
            .await
            .expect("sender listens");
        self.receiver
            .send(Member::new(theirs))
            .await
            .expect("receiver listens");
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

/// Writes `data` in writes of varied sizes, then ends.
async fn send(mut sender: Striped<DuplexStream>, data: Vec<u8>) -> Striped<DuplexStream> {
    let mut at = 0;
    let sizes = [1, 1000, 70_000, 300_000, 5];
    for size in sizes.iter().cycle() {
        if at == data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        sender.write_all(&data[at..end]).await.expect("write");
        at = end;
    }
    sender.shutdown().await.expect("end");
    sender
}

#[tokio::test]
async fn bytes_come_out_in_order_over_streams_of_different_speeds() {
    let pair = Pair::new(256 * 1024);
    // A narrow stream and a wide one: chunks overtake each other.
    pair.joins.join(16 * 1024).await;
    pair.joins.join(1 << 20).await;
    let data = pattern(6 << 20);
    let sending = tokio::spawn(send(pair.sender, data.clone()));
    let mut receiver = pair.receiver;
    let mut received = Vec::new();
    receiver
        .read_to_end(&mut received)
        .await
        .expect("read to the end");
    sending.await.expect("sent");
    assert!(received == data, "the bytes came back in order");
    assert!(receiver.early_bytes == 0 && receiver.early.is_empty());
}

#[tokio::test]
async fn streams_joining_mid_flow_carry_the_rest() {
    let pair = Pair::new(64 * 1024);
    let (bulk_tx, bulk_rx) = oneshot::channel();
    let sender = pair.sender.bulk_after(1 << 20, bulk_tx);
    let data = pattern(4 << 20);
    let sending = tokio::spawn(send(sender, data.clone()));
    let mut receiver = pair.receiver;
    let reading = tokio::spawn(async move {
        let mut received = Vec::new();
        receiver
            .read_to_end(&mut received)
            .await
            .expect("read to the end");
        (received, receiver)
    });
    bulk_rx.await.expect("told once bulk");
    pair.joins.join(64 * 1024).await;
    pair.joins.join(64 * 1024).await;
    let sender = sending.await.expect("sent");
    let (received, receiver) = reading.await.expect("read");
    assert!(received == data);
    assert_eq!(sender.streams.len(), 3, "the joined streams were used");
    assert!(
        sender.streams[0].shut,
        "the first stream ends with the flow"
    );
    assert!(
        (sender.streams.iter()).all(|stream| stream.out.is_empty()),
        "the joined ones carried the end, and stay open so that they can still leave"
    );
    assert_eq!(receiver.read_next, data.len() as u64);
}

#[tokio::test]
async fn both_directions_go_at_once() {
    let pair = Pair::new(128 * 1024);
    pair.joins.join(128 * 1024).await;
    let (mut left, mut right) = (pair.sender, pair.receiver);
    let (from_left, from_right) = (pattern(1 << 20), pattern(3 << 20));
    let (left_sends, right_sends) = (from_left.clone(), from_right.clone());
    let left_side = async move {
        let (mut reader, mut writer) = tokio::io::split(&mut left);
        let mut got = Vec::new();
        let write = async {
            writer.write_all(&left_sends).await.expect("write");
            writer.shutdown().await.expect("end");
        };
        tokio::join!(write, async {
            reader.read_to_end(&mut got).await.expect("read")
        });
        got
    };
    let right_side = async move {
        let (mut reader, mut writer) = tokio::io::split(&mut right);
        let mut got = Vec::new();
        let write = async {
            writer.write_all(&right_sends).await.expect("write");
            writer.shutdown().await.expect("end");
        };
        tokio::join!(write, async {
            reader.read_to_end(&mut got).await.expect("read")
        });
        got
    };
    let (at_left, at_right) = tokio::join!(left_side, right_side);
    assert!(at_left == from_right && at_right == from_left);
}

#[tokio::test]
async fn a_stream_lost_before_its_end_fails_the_flow() {
    let (mut lost, lost_far) = tokio::io::duplex(1024);
    let (mut kept, kept_far) = tokio::io::duplex(1024);
    let (joins, joined_rx) = mpsc::channel(1);
    let mut receiver = Striped::new(lost_far, joined_rx);
    joins.send(Member::new(kept_far)).await.expect("joined");
    // Bytes 3..6 and the end come on one stream; 0..3 were on the one lost.
    kept.write_all(&[&header(3, 3)[..], b"def", &header(6, 0)].concat())
        .await
        .expect("kept");
    lost.write_all(&header(0, 3)[..6])
        .await
        .expect("a part of a header");
    drop(lost);
    let mut received = Vec::new();
    let failed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        receiver.read_to_end(&mut received),
    )
    .await
    .expect("fails rather than waits");
    assert_eq!(
        failed.map_err(|err| err.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn chunks_out_of_place_are_refused() {
    let cases: [&[[u8; HEADER]]; 5] = [
        // Too long; beyond the end; an end before a chunk already announced.
        &[header(0, MAX_CHUNK + 1)],
        &[header(12, 0), header(10, 5)],
        &[header(20, 5), header(10, 0)],
        // An offset that overflows; two chunks that overlap.
        &[header(u64::MAX - 2, 5)],
        &[header(10, 5), header(12, 5)],
    ];
    for headers in cases {
        let (mut ours, theirs) = tokio::io::duplex(1 << 16);
        let (_joins, joined_rx) = mpsc::channel(1);
        let mut receiver = Striped::new(theirs, joined_rx);
        for header in headers {
            ours.write_all(header).await.expect("header");
            let len = u32::from_be_bytes(header[8..].try_into().expect("length"));
            if len <= 5 {
                ours.write_all(&vec![7; len as usize]).await.expect("bytes");
            }
        }
        let mut received = Vec::new();
        let refused = receiver.read_to_end(&mut received).await;
        assert_eq!(
            refused.map_err(|err| err.kind()),
            Err(io::ErrorKind::InvalidData),
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn nothing_is_written_after_the_end() {
    let pair = Pair::new(1024);
    let mut sender = pair.sender;
    sender.shutdown().await.expect("end");
    let refused = sender.write_all(b"late").await;
    assert_eq!(
        refused.map_err(|err| err.kind()),
        Err(io::ErrorKind::BrokenPipe)
    );
}

/// Sends back what `from` reads, from a second task that writes, as a split stream is
/// served.
fn echo_from_two_tasks(far: Striped<DuplexStream>) {
    let (mut far_reads, mut far_writes) = tokio::io::split(far);
    // read_tx: the far end's reader -> its writer.
    let (read_tx, mut read_rx) = mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        let mut buf = vec![0; 100_000];
        while let Ok(got @ 1..) = far_reads.read(&mut buf).await {
            if read_tx.send(buf[..got].to_vec()).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(bytes) = read_rx.recv().await {
            far_writes.write_all(&bytes).await.expect("echo");
            if read_rx.is_empty() {
                far_writes.flush().await.expect("flushed");
            }
        }
        far_writes.shutdown().await.expect("end");
    });
}

#[tokio::test]
async fn a_flow_read_and_written_by_two_tasks_takes_streams_that_join_while_both_wait() {
    let pair = Pair::new(64 * 1024);
    echo_from_two_tasks(pair.receiver);
    let (mut near_reads, mut near_writes) = tokio::io::split(pair.sender);
    // echoed_tx: the near end's reader -> the test, one message back at a time.
    let (echoed_tx, mut echoed_rx) = mpsc::channel::<Vec<u8>>(1);
    let rounds: Vec<Vec<u8>> = (0..5).map(|round| pattern(150_000 + round)).collect();
    let lengths: Vec<usize> = rounds.iter().map(Vec::len).collect();
    tokio::spawn(async move {
        for len in lengths {
            let mut echoed = vec![0; len];
            near_reads.read_exact(&mut echoed).await.expect("the echo");
            echoed_tx.send(echoed).await.expect("the test listens");
        }
    });
    for message in &rounds {
        let round = async {
            near_writes.write_all(message).await.expect("sent");
            near_writes.flush().await.expect("flushed");
            echoed_rx.recv().await
        };
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(10), round);
        let echoed = echoed.await.expect("echoed in time").expect("echoed");
        assert!(
            echoed == *message,
            "each message comes back whole and in order"
        );
        // Joined while the near end's writer waits for nothing and its reader waits on
        // the streams it had.
        pair.joins.join(64 * 1024).await;
    }
}

/// A stream that records the length of each write it takes.
struct CountedWrites {
    io: DuplexStream,
    writes: Vec<usize>,
}

impl AsyncRead for CountedWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.writes.push(written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_short_message_leaves_in_one_write_with_its_header() {
    let (near, far) = tokio::io::duplex(1 << 20);
    let counted = CountedWrites {
        io: near,
        writes: Vec::new(),
    };
    let mut sender = Striped::new(counted, mpsc::channel(1).1);
    let mut receiver = Striped::new(far, mpsc::channel(1).1);
    sender
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("sent");
    sender.flush().await.expect("flushed");
    let mut got = [0u8; 18];
    receiver.read_exact(&mut got).await.expect("received");
    assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(sender.streams[0].io.writes, [HEADER + got.len()]);
}

/// Sends `data` from `from` to `to` and checks it comes whole.
async fn carry(from: &mut Striped<DuplexStream>, to: &mut Striped<DuplexStream>, data: &[u8]) {
    let mut received = vec![0; data.len()];
    let ((), read) = tokio::join!(write_then_keep(from, data), to.read_exact(&mut received));
    read.expect("read");
    assert!(received == data, "the bytes came whole and in order");
}

/// Exchanges a byte each way until both ends carry the flow on `streams` streams.
async fn exchange_until_streams(
    left: &mut Striped<DuplexStream>,
    right: &mut Striped<DuplexStream>,
    streams: usize,
) {
    send_until_streams(left, right, streams, true).await;
}

/// Sends a byte from `from` to `to` (and one back if `both_ways`) until both carry the
/// flow on `streams` streams.
async fn send_until_streams(
    from: &mut Striped<DuplexStream>,
    to: &mut Striped<DuplexStream>,
    streams: usize,
    both_ways: bool,
) {
    let settled = async {
        while from.streams() != streams || to.streams() != streams {
            carry(from, to, b"f").await;
            if both_ways {
                carry(to, from, b"t").await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), settled)
        .await
        .expect("both ends let the stream go");
}

#[tokio::test]
async fn a_stream_that_leaves_hands_the_flow_to_the_others_and_makes_room_for_another() {
    let pair = Pair::new(64 * 1024);
    let leave = CancellationToken::new();
    pair.joins.join_leaving_on(64 * 1024, leave.clone()).await;
    for _ in 2..MAX_STREAMS {
        pair.joins.join(64 * 1024).await;
    }
    let (mut left, mut right) = (pair.sender, pair.receiver);
    carry(&mut left, &mut right, &pattern(2 << 20)).await;
    carry(&mut right, &mut left, &pattern(2 << 20)).await;
    assert_eq!(
        (left.streams(), right.streams()),
        (MAX_STREAMS, MAX_STREAMS)
    );

    // Told to leave while bytes move both ways: none is lost, and both ends let it go.
    leave.cancel();
    let (one, other) = (pattern(3 << 20), pattern(1 << 20));
    let mut from_right = vec![0; other.len()];
    let mut from_left = vec![0; one.len()];
    let (left_reads, left_writes) = tokio::io::split(&mut left);
    let (right_reads, right_writes) = tokio::io::split(&mut right);
    let ((), (), (), ()) = tokio::join!(
        write_then_keep(left_writes, &one),
        write_then_keep(right_writes, &other),
        read_into(left_reads, &mut from_right),
        read_into(right_reads, &mut from_left),
    );
    assert!(from_left == one && from_right == other);
    exchange_until_streams(&mut left, &mut right, MAX_STREAMS - 1).await;

    // The place it left is taken by the next stream to join, which carries the flow.
    pair.joins.join(64 * 1024).await;
    exchange_until_streams(&mut left, &mut right, MAX_STREAMS).await;
    carry(&mut left, &mut right, &pattern(2 << 20)).await;
    assert!(left.streams.iter().all(|stream| stream.out.is_empty()));

    // The flow ends as usual: the stream that left was no loss.
    left.shutdown().await.expect("end");
    right.shutdown().await.expect("end");
    let (mut rest_left, mut rest_right) = (Vec::new(), Vec::new());
    right.read_to_end(&mut rest_right).await.expect("an end");
    left.read_to_end(&mut rest_left).await.expect("an end");
    assert!(rest_left.is_empty() && rest_right.is_empty());
}

async fn write_then_keep<W: AsyncWrite + Unpin>(mut writer: W, data: &[u8]) {
    writer.write_all(data).await.expect("written");
    writer.flush().await.expect("flushed");
}

async fn read_into<R: AsyncRead + Unpin>(mut reader: R, into: &mut [u8]) {
    reader.read_exact(into).await.expect("read");
}

#[tokio::test]
async fn a_chunk_after_a_leave_marker_is_refused_and_its_end_is_no_loss() {
    let (mut first, first_far) = tokio::io::duplex(1 << 16);
    let (mut left, left_far) = tokio::io::duplex(1 << 16);
    let (joins, joined_rx) = mpsc::channel(1);
    let mut receiver = Striped::new(first_far, joined_rx);
    joins.send(Member::new(left_far)).await.expect("joined");
    // The stream that leaves carries bytes 0..3, then its marker, then its end.
    left.write_all(&[&header(0, 3)[..], b"abc", &header(members::LEAVE_AT, 0)].concat())
        .await
        .expect("left");
    left.shutdown().await.expect("shut");
    first
        .write_all(&[&header(3, 2)[..], b"de", &header(5, 0)].concat())
        .await
        .expect("first");
    let mut received = Vec::new();
    receiver
        .read_to_end(&mut received)
        .await
        .expect("a whole flow");
    assert_eq!(received, b"abcde");

    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let mut receiver = Striped::new(theirs, mpsc::channel(1).1);
    ours.write_all(&[&header(members::LEAVE_AT, 0)[..], &header(0, 1), b"x"].concat())
        .await
        .expect("written");
    let refused = receiver.read_to_end(&mut Vec::new()).await;
    assert_eq!(
        refused.map_err(|err| err.kind()),
        Err(io::ErrorKind::InvalidData)
    );
}

#[tokio::test]
async fn a_flow_whose_every_stream_left_refuses_writes() {
    let (mut ours, theirs) = tokio::io::duplex(1 << 16);
    let mut flow = Striped::new(theirs, mpsc::channel(1).1);
    ours.write_all(&header(members::LEAVE_AT, 0))
        .await
        .expect("marker");
    let mut byte = [0; 1];
    let read = tokio::time::timeout(std::time::Duration::from_millis(100), flow.read(&mut byte));
    assert!(read.await.is_err(), "nothing to read yet");
    let refused = flow.write_all(b"late").await;
    assert_eq!(
        refused.map_err(|err| err.kind()),
        Err(io::ErrorKind::InvalidData)
    );
    let mut answer = Vec::new();
    ours.read_to_end(&mut answer).await.expect("its side shut");
    assert_eq!(
        answer,
        header(members::LEAVE_AT, 0),
        "the leave is answered"
    );
}

#[tokio::test]
async fn a_stream_leaves_a_flow_whose_one_side_has_ended() {
    let pair = Pair::new(64 * 1024);
    let leave = CancellationToken::new();
    pair.joins.join_leaving_on(64 * 1024, leave.clone()).await;
    let (mut left, mut right) = (pair.sender, pair.receiver);
    carry(&mut left, &mut right, &pattern(2 << 20)).await;
    assert_eq!((left.streams(), right.streams()), (2, 2));
    left.shutdown().await.expect("the left side ends");
    let mut rest = Vec::new();
    right.read_to_end(&mut rest).await.expect("an end");

    // The right side goes on writing while the left leaves the joined stream.
    leave.cancel();
    send_until_streams(&mut right, &mut left, 1, false).await;
    carry(&mut right, &mut left, &pattern(1 << 20)).await;
}
