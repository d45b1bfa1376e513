use std::collections::HashMap;
use std::path::PathBuf;

use russh_sftp::protocol::{
    Close, FileAttributes, Init, Lstat, MkDir, Open, OpenDir, OpenFlags, Read, ReadDir, Remove,
    Rename, SetStat, Stat, Write,
};
use tokio::io::DuplexStream;

use super::*;
use volumes::confined;

/// A scratch volumes root holding `data/seed.txt`.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubedev-volumes-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).expect("scratch dir");
    std::fs::write(dir.join("data/seed.txt"), "from the pod").expect("seed");
    dir
}

/// The workstation's end of an SFTP session with a server on `root`.
struct Client {
    stream: DuplexStream,
}

impl Client {
    async fn start(root: &std::path::Path, read_only: bool) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve_sftp(theirs, Volumes::new(root, read_only)));
        let mut client = Self { stream: ours };
        client
            .send(Packet::Init(Init {
                version: 3,
                extensions: HashMap::new(),
            }))
            .await;
        assert!(matches!(client.reply().await, Packet::Version(_)));
        client
    }

    async fn send(&mut self, request: Packet) {
        let bytes = Bytes::try_from(request).expect("encodes");
        self.stream.write_all(&bytes).await.expect("sent");
    }

    async fn reply(&mut self) -> Packet {
        self.sized_reply().await.1
    }

    /// The next reply and its length on the wire.
    async fn sized_reply(&mut self) -> (u32, Packet) {
        let length = self.stream.read_u32().await.expect("a reply");
        let mut body = vec![0u8; length as usize];
        self.stream.read_exact(&mut body).await.expect("its body");
        let reply = Packet::try_from(&mut Bytes::from(body)).expect("decodes");
        (length, reply)
    }

    async fn ask(&mut self, request: Packet) -> Packet {
        self.send(request).await;
        self.reply().await
    }

    async fn open(&mut self, id: u32, path: &str, pflags: OpenFlags) -> Packet {
        self.ask(Packet::Open(Open {
            id,
            filename: path.into(),
            pflags,
            attrs: FileAttributes::default(),
        }))
        .await
    }
}

fn handle(reply: Packet) -> String {
    match reply {
        Packet::Handle(handle) => handle.handle,
        other => panic!("no handle: {other:?}"),
    }
}

/// The id of the request `reply` answers.
fn answers(reply: &Packet) -> u32 {
    match reply {
        Packet::Status(r) => r.id,
        Packet::Handle(r) => r.id,
        Packet::Data(r) => r.id,
        Packet::Name(r) => r.id,
        Packet::Attrs(r) => r.id,
        other => panic!("not a reply: {other:?}"),
    }
}

fn status(reply: &Packet) -> StatusCode {
    match reply {
        Packet::Status(status) => status.status_code,
        other => panic!("no status: {other:?}"),
    }
}

const WRITE: OpenFlags = OpenFlags::WRITE
    .union(OpenFlags::CREATE)
    .union(OpenFlags::TRUNCATE);

#[tokio::test]
async fn read_only_volumes_refuse_every_change_whatever_the_client_asks() {
    let root = scratch("ro");
    let mut client = Client::start(&root, true).await;
    let refused = client.open(1, "/data/new.txt", WRITE).await;
    assert_eq!(status(&refused), StatusCode::PermissionDenied);
    let changes = [
        Packet::Remove(Remove {
            id: 2,
            filename: "/data/seed.txt".into(),
        }),
        Packet::MkDir(MkDir {
            id: 3,
            path: "/data/dir".into(),
            attrs: FileAttributes::default(),
        }),
        Packet::Rename(Rename {
            id: 4,
            oldpath: "/data/seed.txt".into(),
            newpath: "/data/moved".into(),
        }),
        Packet::SetStat(SetStat {
            id: 5,
            path: "/data/seed.txt".into(),
            attrs: FileAttributes::default(),
        }),
    ];
    for change in changes {
        assert_eq!(
            status(&client.ask(change).await),
            StatusCode::PermissionDenied
        );
    }
    let seed = handle(client.open(6, "/data/seed.txt", OpenFlags::READ).await);
    let read = client
        .ask(Packet::Read(Read {
            id: 7,
            handle: seed,
            offset: 0,
            len: 1024,
        }))
        .await;
    assert!(matches!(read, Packet::Data(data) if data.data == b"from the pod"));
    assert!(!root.join("data/new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("data/seed.txt")).expect("seed"),
        "from the pod"
    );
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn requests_on_one_file_are_served_in_order_and_the_file_lands_on_disk() {
    let root = scratch("rw");
    let mut client = Client::start(&root, false).await;
    let new = handle(client.open(1, "/data/../data/new.txt", WRITE).await);
    // Sent without waiting, as sshfs does: the writes land before the close.
    for (id, (offset, part)) in [(0u64, "from the "), (9, "laptop")].into_iter().enumerate() {
        client
            .send(Packet::Write(Write {
                id: 2 + id as u32,
                handle: new.clone(),
                offset,
                data: part.as_bytes().to_vec(),
            }))
            .await;
    }
    client
        .send(Packet::Close(Close { id: 4, handle: new }))
        .await;
    let mut answered = Vec::new();
    for _ in 0..3 {
        let reply = client.reply().await;
        assert_eq!(status(&reply), StatusCode::Ok);
        answered.push(answers(&reply));
    }
    assert_eq!(answered, [2, 3, 4], "one file's requests answer in order");
    assert_eq!(
        std::fs::read_to_string(root.join("data/new.txt")).expect("on disk"),
        "from the laptop"
    );

    let listed = handle(
        client
            .ask(Packet::OpenDir(OpenDir {
                id: 5,
                path: "/data".into(),
            }))
            .await,
    );
    let entries = client
        .ask(Packet::ReadDir(ReadDir {
            id: 6,
            handle: listed,
        }))
        .await;
    let Packet::Name(entries) = entries else {
        panic!("no entries: {entries:?}");
    };
    let mut names: Vec<_> = entries.files.into_iter().map(|f| f.filename).collect();
    names.sort();
    assert_eq!(names, ["new.txt", "seed.txt"]);
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_file_opened_and_looked_up_at_once_is_found_as_sshfs_expects() {
    let root = scratch("create");
    let mut client = Client::start(&root, false).await;
    // sshfs creates a file with its open and lstat sent together.
    client
        .send(Packet::Open(Open {
            id: 1,
            filename: "/data/created.txt".into(),
            pflags: WRITE,
            attrs: FileAttributes::default(),
        }))
        .await;
    client
        .send(Packet::Lstat(Lstat {
            id: 2,
            path: "/data/created.txt".into(),
        }))
        .await;
    let (opened, looked_up) = (client.reply().await, client.reply().await);
    assert!(matches!(opened, Packet::Handle(_)), "{opened:?}");
    assert!(
        matches!(&looked_up, Packet::Attrs(attrs) if attrs.id == 2),
        "the lstat sees the file the open created: {looked_up:?}"
    );
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_read_that_waits_does_not_hold_up_other_reads() {
    let root = scratch("concurrent");
    let fifo = root.join("data/fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let mut client = Client::start(&root, false).await;
    // The FIFO's writer: it opens once the agent opens the FIFO, and writes when told.
    let (write_tx, write_rx) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            use std::io::Write as _;
            let mut writer = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("the FIFO's writer");
            let _ = write_rx.recv();
            writer.write_all(b"late").expect("write to the FIFO");
        }
    });
    let slow = handle(client.open(1, "/data/fifo", OpenFlags::READ).await);
    let seed = handle(client.open(2, "/data/seed.txt", OpenFlags::READ).await);
    // A read of the FIFO waits for data, as one from a slow volume would.
    for (id, handle) in [(3, slow), (4, seed)] {
        client
            .send(Packet::Read(Read {
                id,
                handle,
                offset: 0,
                len: 1024,
            }))
            .await;
    }
    let first = client.reply().await;
    assert!(
        matches!(&first, Packet::Data(data) if data.id == 4 && data.data == b"from the pod"),
        "the seed is read while the FIFO waits: {first:?}"
    );
    write_tx.send(()).expect("the writer waits");
    let second = client.reply().await;
    assert!(
        matches!(&second, Packet::Data(data) if data.id == 3 && data.data == b"late"),
        "{second:?}"
    );
    writer.join().expect("writer");
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_large_directory_comes_in_replies_sshfs_takes() {
    let root = scratch("large-dir");
    let dir = root.join("data/many");
    std::fs::create_dir(&dir).expect("dir");
    let names: Vec<String> = (0..3000)
        .map(|i| format!("a-rather-long-file-name-as-node-modules-have-{i:04}.js"))
        .collect();
    for name in &names {
        std::fs::write(dir.join(name), "x").expect("file");
    }
    let mut client = Client::start(&root, true).await;
    let listed = handle(
        client
            .ask(Packet::OpenDir(OpenDir {
                id: 1,
                path: "/data/many".into(),
            }))
            .await,
    );
    let mut seen = Vec::new();
    for id in 2.. {
        let request = Packet::ReadDir(ReadDir {
            id,
            handle: listed.clone(),
        });
        client.send(request).await;
        let (length, reply) = client.sized_reply().await;
        assert!(length <= 128 * 1024, "a reply of {length} bytes");
        match reply {
            Packet::Name(batch) => seen.extend(batch.files.into_iter().map(|f| f.filename)),
            end => {
                assert_eq!(status(&end), StatusCode::Eof);
                break;
            }
        }
    }
    seen.sort();
    assert_eq!(seen, names, "every entry once");
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn symlinks_never_lead_out_of_the_volumes() {
    use std::os::unix::fs::symlink;
    let root = scratch("symlinks");
    let outside = root.with_extension("outside");
    std::fs::create_dir_all(&outside).expect("a directory outside");
    std::fs::write(outside.join("secret"), "agent's").expect("a file outside");
    let data = root.join("data");
    symlink(&outside, data.join("out")).expect("link to a directory outside");
    symlink(outside.join("secret"), data.join("secret")).expect("link to a file outside");
    symlink(outside.join("created"), data.join("dangling")).expect("link to nothing");
    symlink("seed.txt", data.join("inner")).expect("link inside");
    let mut client = Client::start(&root, false).await;
    let stat = |id, path: &str| {
        Packet::Stat(Stat {
            id,
            path: path.into(),
        })
    };

    for (id, path) in [(1, "/data/secret"), (2, "/data/out/secret")] {
        let refused = client.ask(stat(id, path)).await;
        assert_eq!(status(&refused), StatusCode::PermissionDenied, "{path}");
    }
    let read = client.open(3, "/data/secret", OpenFlags::READ).await;
    assert_eq!(status(&read), StatusCode::PermissionDenied);
    let listing = client
        .ask(Packet::OpenDir(OpenDir {
            id: 4,
            path: "/data/out".into(),
        }))
        .await;
    assert_eq!(status(&listing), StatusCode::PermissionDenied);
    let create = client.open(5, "/data/dangling", WRITE).await;
    assert_eq!(status(&create), StatusCode::PermissionDenied);
    assert!(!outside.join("created").exists(), "nothing created outside");

    let inner = client.ask(stat(6, "/data/inner")).await;
    assert!(
        matches!(&inner, Packet::Attrs(attrs) if attrs.attrs.size == Some(12)),
        "a link inside is followed: {inner:?}"
    );
    let link = client
        .ask(Packet::Lstat(Lstat {
            id: 7,
            path: "/data/secret".into(),
        }))
        .await;
    assert!(matches!(link, Packet::Attrs(_)), "the link itself is seen");
    std::fs::remove_dir_all(root).ok();
    std::fs::remove_dir_all(outside).ok();
}

#[test]
fn paths_never_leave_the_root() {
    assert_eq!(confined("/data/a.txt"), "/data/a.txt");
    assert_eq!(confined("data/./b/../a.txt"), "/data/a.txt");
    assert_eq!(confined("/../../etc/passwd"), "/etc/passwd");
    assert_eq!(confined(""), "/");
    assert_eq!(confined("."), "/");
}
