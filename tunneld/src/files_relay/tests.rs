//! The relay between an SFTP client (this test, sending as sshfs does) and a real agent
//! over a real link, on files in a scratch directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use russh_sftp::protocol::{
    Close, Init, Open, OpenDir, OpenFlags, Packet, Read, ReadDir, RealPath, StatusCode, Write,
};
use tokio::io::{AsyncReadExt as _, DuplexStream};

use super::*;
use crate::agents::striped::{self, Flow};
use crate::test_agent::linked_pool_serving;

const CHUNK: u32 = 64 * 1024;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubedev-relay-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The client's end of a relayed session with an agent serving `root`.
struct Client {
    stream: DuplexStream,
}

impl Client {
    async fn start(root: &Path) -> Self {
        let pool = linked_pool_serving(root, false).await;
        let link = (pool.pick(None, Duration::from_secs(5)).await).expect("a link");
        let files = striped::open(&pool, &link, Flow::Files)
            .await
            .expect("the volumes");
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(relay(theirs, files));
        let mut client = Self { stream: ours };
        client.send(Packet::Init(Init::new())).await;
        assert!(matches!(client.reply().await, Packet::Version(_)));
        client
    }

    async fn send(&mut self, request: Packet) {
        let bytes = Bytes::try_from(request).expect("encodes");
        self.stream.write_all(&bytes).await.expect("sent");
    }

    async fn reply(&mut self) -> Packet {
        let length = self.stream.read_u32().await.expect("a reply");
        let mut body = vec![0u8; length as usize];
        self.stream.read_exact(&mut body).await.expect("its body");
        Packet::try_from(&mut Bytes::from(body)).expect("decodes")
    }

    async fn ask(&mut self, request: Packet) -> Packet {
        self.send(request).await;
        self.reply().await
    }

    /// Reads of `CHUNK` bytes from `from` to `to`, sent two at a time with the second's
    /// first (as a multithreaded client's come), answered by id.
    async fn read_range(&mut self, handle: &str, from: u64, to: u64, ids: &mut u32) -> Vec<u8> {
        let mut offsets: Vec<u64> = (from..to).step_by(CHUNK as usize).collect();
        for pair in offsets.chunks_mut(2) {
            pair.reverse();
        }
        let mut answers: HashMap<u64, Vec<u8>> = HashMap::new();
        for pair in offsets.chunks(2) {
            let mut asked = HashMap::new();
            for &offset in pair {
                *ids += 1;
                asked.insert(*ids, offset);
                let read = Read {
                    id: *ids,
                    handle: handle.into(),
                    offset,
                    len: CHUNK,
                };
                self.send(Packet::Read(read)).await;
            }
            for _ in pair {
                match self.reply().await {
                    Packet::Data(data) => {
                        let offset = asked.remove(&data.id).expect("a reply to a read asked");
                        answers.insert(offset, data.data);
                    }
                    other => panic!("not data: {other:?}"),
                }
            }
        }
        let mut read = Vec::new();
        for offset in (from..to).step_by(CHUNK as usize) {
            read.extend_from_slice(&answers[&offset]);
        }
        read
    }
}

fn handle(reply: Packet) -> String {
    match reply {
        Packet::Handle(handle) => handle.handle,
        other => panic!("not a handle: {other:?}"),
    }
}

fn status(reply: &Packet) -> (u32, StatusCode) {
    match reply {
        Packet::Status(status) => (status.id, status.status_code),
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test]
async fn a_file_read_through_is_the_pods_and_a_write_meanwhile_is_read_back() {
    let root = scratch("read");
    let contents: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("big"), &contents).expect("the file");
    let mut client = Client::start(&root).await;
    let flags = OpenFlags::READ | OpenFlags::WRITE;
    let open = Open {
        id: 1,
        filename: "/big".into(),
        pflags: flags,
        attrs: Default::default(),
    };
    let file = handle(client.ask(Packet::Open(open)).await);
    let mut ids = 1;

    let first = client.read_range(&file, 0, 1 << 20, &mut ids).await;
    assert_eq!(
        first,
        contents[..1 << 20],
        "the first MiB, read ahead or not"
    );
    // Written past what was read, where reads ahead have already gone.
    let written = b"written from the workstation";
    let at = (1 << 20) + 4096;
    let write = Write {
        id: 100,
        handle: file.clone(),
        offset: at,
        data: written.to_vec(),
    };
    assert_eq!(
        status(&client.ask(Packet::Write(write)).await),
        (100, StatusCode::Ok)
    );
    let mut expected = contents.clone();
    expected[at as usize..at as usize + written.len()].copy_from_slice(written);
    let rest = client.read_range(&file, 1 << 20, 3 << 20, &mut ids).await;
    assert_eq!(rest, expected[1 << 20..], "the rest, with the write in it");

    let past_end = Read {
        id: 200,
        handle: file.clone(),
        offset: 3 << 20,
        len: CHUNK,
    };
    assert_eq!(
        status(&client.ask(Packet::Read(past_end)).await),
        (200, StatusCode::Eof)
    );
    let close = Close {
        id: 201,
        handle: file,
    };
    assert_eq!(
        status(&client.ask(Packet::Close(close)).await),
        (201, StatusCode::Ok)
    );
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_directory_is_listed_whole_and_closed_and_errors_keep_their_ids() {
    let root = scratch("list");
    std::fs::create_dir(root.join("many")).expect("dir");
    let mut names: Vec<String> = (0..2500).map(|i| format!("file-{i:05}")).collect();
    for name in &names {
        std::fs::write(root.join("many").join(name), "x").expect("file");
    }
    let mut client = Client::start(&root).await;
    let open = OpenDir {
        id: 7,
        path: "/many".into(),
    };
    let listed = client.ask(Packet::OpenDir(open)).await;
    let Packet::Handle(listed) = listed else {
        panic!("not a handle: {listed:?}");
    };
    assert_eq!(listed.id, 7);
    let mut seen = Vec::new();
    for id in 8.. {
        let read = ReadDir {
            id,
            handle: listed.handle.clone(),
        };
        match client.ask(Packet::ReadDir(read)).await {
            Packet::Name(batch) => {
                assert_eq!(batch.id, id);
                seen.extend(batch.files.into_iter().map(|file| file.filename));
            }
            end => {
                assert_eq!(status(&end), (id, StatusCode::Eof));
                break;
            }
        }
    }
    seen.sort();
    names.sort();
    assert_eq!(seen, names, "every entry once");
    let close = Close {
        id: 99,
        handle: listed.handle,
    };
    assert_eq!(
        status(&client.ask(Packet::Close(close)).await),
        (99, StatusCode::Ok)
    );

    let missing = OpenDir {
        id: 100,
        path: "/nothing".into(),
    };
    let missing = client.ask(Packet::OpenDir(missing)).await;
    assert_eq!(status(&missing), (100, StatusCode::NoSuchFile));
    let stray = Read {
        id: 101,
        handle: "no such handle".into(),
        offset: 0,
        len: 10,
    };
    let stray = client.ask(Packet::Read(stray)).await;
    assert_eq!(status(&stray).0, 101);
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn the_client_learns_when_the_agents_side_ends() {
    let (ours, theirs) = tokio::io::duplex(1024);
    let (agent, agent_end) = tokio::io::duplex(1024);
    let relaying = tokio::spawn(relay(theirs, agent));
    drop(agent_end);
    let mut ours = ours;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), ours.read_to_end(&mut rest))
        .await
        .expect("the client's side closes")
        .expect("read");
    assert!(relaying.await.expect("relay task").is_ok());
}

#[tokio::test]
async fn a_mounts_session_is_spread_over_every_link_before_it_carries_bulk() {
    let root = scratch("spread");
    let pool = linked_pool_serving(&root, false).await;
    let link = (pool.pick(None, Duration::from_secs(5)).await).expect("a link");
    let mut files = striped::open(&pool, &link, Flow::Files)
        .await
        .expect("the volumes");
    let mut exchange = async |request: Packet| {
        let bytes = Bytes::try_from(request).expect("encodes");
        files.write_all(&bytes).await.expect("sent");
        let length = files.read_u32().await.expect("a reply");
        let mut body = vec![0u8; length as usize];
        files.read_exact(&mut body).await.expect("its body");
        files.streams()
    };
    let mut streams = exchange(Packet::Init(Init::new())).await;
    // A few short requests, far from bulk, while the other links' streams join.
    for id in 1..=100 {
        if streams == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let path = RealPath {
            id,
            path: ".".into(),
        };
        streams = exchange(Packet::RealPath(path)).await;
    }
    assert_eq!(streams, 3, "a stream on each link carries the session");
    std::fs::remove_dir_all(root).ok();
}
