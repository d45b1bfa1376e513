use flate2::{Decompress, FlushDecompress};

use super::*;

/// The header pairs in SYN_STREAM frames, decompressed as the receiver does: one zlib
/// stream across every frame.
fn header_pairs(frames: &[Vec<u8>]) -> Vec<Vec<(String, String)>> {
    let mut zlib = Decompress::new(true);
    frames
        .iter()
        .map(|frame| {
            assert_eq!(&frame[..4], &[0x80, 3, 0, 1], "a SYN_STREAM of SPDY/3");
            let len = u32::from_be_bytes([0, frame[5], frame[6], frame[7]]) as usize;
            assert_eq!(frame.len(), FRAME_HEADER + len);
            let mut block = Vec::with_capacity(4096);
            zlib.decompress_vec(&frame[18..], &mut block, FlushDecompress::Sync)
                .expect("a zlib stream");
            let mut rest = &block[..];
            let mut take = |len: usize| split_off(&mut rest, len).to_vec();
            let count = u32::from_be_bytes(take(4).try_into().expect("a count"));
            (0..count)
                .map(|_| {
                    let mut string = || {
                        let len = u32::from_be_bytes(take(4).try_into().expect("a length"));
                        String::from_utf8(take(len as usize)).expect("text")
                    };
                    (string(), string())
                })
                .collect()
        })
        .collect()
}

#[test]
fn streams_open_with_their_headers_in_one_zlib_stream() {
    let mut compressor = HeaderCompressor::new();
    let error = compressor.syn_stream(1, &[("streamtype", "error"), ("port", "7329")]);
    let data = compressor.syn_stream(3, &[("streamtype", "data"), ("port", "7329")]);
    assert_eq!(&error[8..12], &1u32.to_be_bytes());
    assert_eq!(&data[8..12], &3u32.to_be_bytes());
    let pairs = |kind: &str| {
        vec![
            ("streamtype".into(), kind.into()),
            ("port".into(), "7329".into()),
        ]
    };
    assert_eq!(
        header_pairs(&[error, data]),
        vec![pairs("error"), pairs("data")]
    );
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = control_header(kind, flags, payload.len());
    frame.extend_from_slice(payload);
    frame
}

fn data(stream: u32, flags: u8, bytes: &[u8]) -> Vec<u8> {
    let mut frame = data_header(stream, flags, bytes.len()).to_vec();
    frame.extend_from_slice(bytes);
    frame
}

/// Everything a port-forward's peer sends, in one byte stream.
fn conversation() -> Vec<u8> {
    let mut reset = 1u32.to_be_bytes().to_vec();
    reset.extend_from_slice(&5u32.to_be_bytes());
    [
        control(
            SYN_REPLY,
            0,
            &[0, 0, 0, 3, 0x78, 0x9c, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        ),
        control(4, 0, &[0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 1]),
        data(3, 0, b"hello, "),
        control(9, 0, &[0, 0, 0, 3, 0, 1, 0, 0]),
        data(3, 0, b"world"),
        ping(2),
        data(1, FLAG_FIN, b"refused"),
        control(RST_STREAM, 0, &reset),
        data(3, FLAG_FIN, b""),
        control(GOAWAY, 0, &[0, 0, 0, 0, 0, 0, 0, 0]),
    ]
    .concat()
}

/// The events in `bytes` fed `chunk` bytes at a time, each stream's data joined.
fn events(bytes: &[u8], chunk: usize) -> Vec<String> {
    let mut decoder = Decoder::default();
    let mut seen: Vec<String> = Vec::new();
    for mut input in bytes.chunks(chunk) {
        while let Some(event) = decoder.next(&mut input).expect("SPDY/3") {
            let text = match event {
                Event::Data { stream, bytes } => {
                    let bytes = String::from_utf8_lossy(bytes);
                    let prefix = format!("data {stream}: ");
                    match seen.last_mut() {
                        Some(last) if last.starts_with(&prefix) => {
                            last.push_str(&bytes);
                            continue;
                        }
                        _ => format!("{prefix}{bytes}"),
                    }
                }
                other => format!("{other:?}"),
            };
            seen.push(text);
        }
    }
    seen
}

#[test]
fn frames_are_read_however_the_bytes_are_cut() {
    let expected = vec![
        "data 3: hello, world",
        "Ping(2)",
        "data 1: refused",
        "Fin { stream: 1 }",
        "Reset { stream: 1, status: 5 }",
        "Fin { stream: 3 }",
        "GoAway",
    ];
    let bytes = conversation();
    for chunk in [bytes.len(), 1, 3, 7, 8, 9] {
        let seen = events(&bytes, chunk);
        // Pieces of one DATA frame join; separate frames of a stream do too here.
        assert_eq!(seen, expected, "fed {chunk} bytes at a time");
    }
}

#[test]
fn a_reply_may_end_the_peers_side_at_once() {
    let bytes = control(SYN_REPLY, FLAG_FIN, &[0, 0, 0, 1, 0x78, 0x9c]);
    assert_eq!(events(&bytes, 2), vec!["Fin { stream: 1 }"]);
}

#[test]
fn another_version_is_refused() {
    let mut frame = ping(2);
    frame[1] = 2;
    let mut input = &frame[..];
    assert_eq!(Decoder::default().next(&mut input), Err(WrongVersion(2)));
}

#[test]
fn data_frames_carry_their_length_and_stream() {
    assert_eq!(
        data_header(3, FLAG_FIN, 0x01_0203),
        [0, 0, 0, 3, 1, 1, 2, 3]
    );
    assert_eq!(ping(7), vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
}
