use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh_sftp::protocol::{
    Close, Extended, FSetStat, FileAttributes, Init, Lstat, MkDir, Open, OpenDir, OpenFlags, Read,
    ReadDir, ReadLink, Remove, Rename, SetStat, Stat, Write,
};
use tokio::io::DuplexStream;
use tokio::sync::Notify;

use super::*;
use bytes::Buf as _;
use kubedev_protocol::LISTING_EXTENSION;
use volumes::{MAX_HANDLES, confined};

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
    async fn start(root: &Path, read_only: bool) -> Self {
        Self::serve(Arc::new(Volumes::new(root, read_only))).await
    }

    /// A session with `responder` answering.
    async fn serve<R: Respond>(responder: Arc<R>) -> Self {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve_sftp(theirs, responder));
        let mut client = Self { stream: ours };
        client
            .send(Packet::Init(Init {
                version: 3,
                extensions: HashMap::new(),
            }))
            .await;
        let Packet::Version(version) = client.reply().await else {
            panic!("no VERSION");
        };
        assert!(version.extensions.contains_key(LISTING_EXTENSION));
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
        self.ask(open(id, path, pflags)).await
    }

    /// What `handle` holds from its start (up to 1 KiB), or the reply that says why not.
    async fn read_all(&mut self, id: u32, handle: &str) -> Result<Vec<u8>, Packet> {
        let read = Packet::Read(Read {
            id,
            handle: handle.into(),
            offset: 0,
            len: 1024,
        });
        match self.ask(read).await {
            Packet::Data(data) => Ok(data.data),
            other => Err(other),
        }
    }
}

fn open(id: u32, path: &str, pflags: OpenFlags) -> Packet {
    Packet::Open(Open {
        id,
        filename: path.into(),
        pflags,
        attrs: FileAttributes::default(),
    })
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

/// The message of the status `reply` is.
fn message(reply: &Packet) -> &str {
    match reply {
        Packet::Status(status) => &status.error_message,
        other => panic!("no status: {other:?}"),
    }
}

fn with_mode(permissions: u32) -> FileAttributes {
    FileAttributes {
        permissions: Some(permissions),
        ..FileAttributes::default()
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("there").permissions().mode() & 0o7777
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

/// The volumes, with the answer to one request held up until the test lets it go, as a
/// read from a slow volume would be.
struct HeldUp {
    volumes: Volumes,
    held: u32,
    go: Notify,
}

impl Respond for HeldUp {
    async fn respond(&self, request: Packet) -> Packet {
        if request.get_request_id() == self.held {
            self.go.notified().await;
        }
        self.volumes.answer(request).await
    }
}

#[tokio::test]
async fn a_read_that_waits_does_not_hold_up_other_reads() {
    let root = scratch("concurrent");
    let responder = Arc::new(HeldUp {
        volumes: Volumes::new(&root, true),
        held: 3,
        go: Notify::new(),
    });
    let mut client = Client::serve(responder.clone()).await;
    let slow = handle(client.open(1, "/data/seed.txt", OpenFlags::READ).await);
    let fast = handle(client.open(2, "/data/seed.txt", OpenFlags::READ).await);
    for (id, handle) in [(3, slow), (4, fast)] {
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
        "the second read is answered while the first waits: {first:?}"
    );
    responder.go.notify_one();
    let second = client.reply().await;
    assert!(
        matches!(&second, Packet::Data(data) if data.id == 3 && data.data == b"from the pod"),
        "{second:?}"
    );
    std::fs::remove_dir_all(root).ok();
}

/// The reply to `asked`, which must come within seconds. If it does not, the server's open
/// of the FIFO at `fifo` is let go (a FIFO opened for both ends never waits) so that the
/// test ends, and fails.
async fn promptly(asked: impl Future<Output = Packet>, fifo: &Path) -> Packet {
    match tokio::time::timeout(Duration::from_secs(5), asked).await {
        Ok(reply) => reply,
        Err(_) => {
            let _both_ends = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(fifo);
            panic!("a request on {} held up the session", fifo.display());
        }
    }
}

#[tokio::test]
async fn a_fifo_or_socket_is_refused_at_once_and_the_session_goes_on() {
    let root = scratch("fifo");
    let fifo = root.join("data/fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
    )
    .expect("a FIFO");
    let _socket =
        std::os::unix::net::UnixListener::bind(root.join("data/socket")).expect("a socket");
    let mut client = Client::start(&root, false).await;

    let read = promptly(client.open(1, "/data/fifo", OpenFlags::READ), &fifo).await;
    assert_eq!(status(&read), StatusCode::PermissionDenied);
    assert!(message(&read).contains("FIFO"), "{read:?}");
    let write = promptly(client.open(2, "/data/fifo", WRITE), &fifo).await;
    assert_ne!(status(&write), StatusCode::Ok, "{write:?}");
    let truncate = Packet::SetStat(SetStat {
        id: 3,
        path: "/data/fifo".into(),
        attrs: FileAttributes {
            size: Some(0),
            ..FileAttributes::default()
        },
    });
    let truncate = promptly(client.ask(truncate), &fifo).await;
    assert_ne!(status(&truncate), StatusCode::Ok, "{truncate:?}");
    let socket = promptly(client.open(4, "/data/socket", OpenFlags::READ), &fifo).await;
    assert_ne!(status(&socket), StatusCode::Ok, "{socket:?}");

    let seed = handle(client.open(5, "/data/seed.txt", OpenFlags::READ).await);
    assert_eq!(
        client.read_all(6, &seed).await.expect("read"),
        b"from the pod"
    );
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
async fn a_request_that_cannot_be_read_is_answered_under_its_own_id() {
    let root = scratch("undecodable");
    let mut client = Client::start(&root, true).await;
    // A READ cut short after its id, as a broken client might send.
    let packet = [0, 0, 0, 7, 5, 0, 0, 0, 42, 0, 9];
    client.stream.write_all(&packet).await.expect("sent");
    let reply = client.reply().await;
    assert_eq!(
        (answers(&reply), status(&reply)),
        (42, StatusCode::BadMessage)
    );
    std::fs::remove_dir_all(root).ok();
}

/// The handle and entries of a [`LISTING_EXTENSION`] reply.
fn whole_listing(reply: Packet) -> (String, Vec<String>) {
    let Packet::ExtendedReply(reply) = reply else {
        panic!("not a listing: {reply:?}");
    };
    let mut data = Bytes::from(reply.data);
    let length = data.get_u32() as usize;
    let handle = String::from_utf8(data.split_to(length).to_vec()).expect("a handle");
    let mut names = Vec::new();
    while !data.is_empty() {
        let length = data.get_u32() as usize;
        match Packet::try_from(&mut data.split_to(length)).expect("a packet") {
            Packet::Name(batch) => names.extend(batch.files.into_iter().map(|f| f.filename)),
            other => panic!("not a NAME packet: {other:?}"),
        }
    }
    (handle, names)
}

fn list_whole(id: u32, path: &str) -> Packet {
    let mut data = (path.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(path.as_bytes());
    Packet::Extended(Extended {
        id,
        request: LISTING_EXTENSION.into(),
        data,
    })
}

#[tokio::test]
async fn a_directory_is_listed_in_one_round_trip_or_handed_over_in_part() {
    let root = scratch("whole-listing");
    let dir = root.join("data/many");
    std::fs::create_dir(&dir).expect("dir");
    let mut names: Vec<String> = (0..8000)
        .map(|i| format!("a-rather-long-file-name-as-node-modules-have-{i:04}.js"))
        .collect();
    for name in &names {
        std::fs::write(dir.join(name), "x").expect("file");
    }
    let mut client = Client::start(&root, true).await;

    let (handle, mut listed) = whole_listing(client.ask(list_whole(1, "/data")).await);
    listed.sort();
    assert_eq!(
        (handle.as_str(), listed),
        ("", vec!["many".into(), "seed.txt".into()])
    );

    let (handle, mut listed) = whole_listing(client.ask(list_whole(2, "/data/many")).await);
    assert!(
        !handle.is_empty() && listed.len() < names.len(),
        "a part, and a handle"
    );
    for id in 3.. {
        match client
            .ask(Packet::ReadDir(ReadDir {
                id,
                handle: handle.clone(),
            }))
            .await
        {
            Packet::Name(batch) => listed.extend(batch.files.into_iter().map(|f| f.filename)),
            end => {
                assert_eq!(status(&end), StatusCode::Eof);
                break;
            }
        }
    }
    let closed = client.ask(Packet::Close(Close { id: 9, handle })).await;
    assert_eq!(status(&closed), StatusCode::Ok);
    listed.sort();
    names.sort();
    assert_eq!(listed, names, "every entry once");

    let missing = client.ask(list_whole(10, "/data/nothing")).await;
    assert_eq!(status(&missing), StatusCode::NoSuchFile);
    let file = client.ask(list_whole(11, "/data/seed.txt")).await;
    assert_eq!(answers(&file), 11);
    assert!(
        matches!(file, Packet::Status(_)),
        "a file is not listed: {file:?}"
    );
    std::fs::remove_dir_all(root).ok();
}

/// A scratch volumes root whose `data/` has symlinks out of it (`out` to a directory
/// holding `secret`, `secret` to that file, `dangling` to nothing there) and one inside
/// (`inner` to `seed.txt`); and the directory outside.
fn linked_out(name: &str) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::symlink;
    let root = scratch(name);
    let outside = root.with_extension("outside");
    std::fs::create_dir_all(&outside).expect("a directory outside");
    std::fs::write(outside.join("secret"), "agent's").expect("a file outside");
    let data = root.join("data");
    symlink(&outside, data.join("out")).expect("link to a directory outside");
    symlink(outside.join("secret"), data.join("secret")).expect("link to a file outside");
    symlink(outside.join("created"), data.join("dangling")).expect("link to nothing");
    symlink("seed.txt", data.join("inner")).expect("link inside");
    (root, outside)
}

#[tokio::test]
async fn symlinks_never_lead_out_of_the_volumes() {
    let (root, outside) = linked_out("symlinks");
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
    let target = client
        .ask(Packet::ReadLink(ReadLink {
            id: 8,
            path: "/data/secret".into(),
        }))
        .await;
    assert!(
        matches!(&target, Packet::Name(name) if name.files[0].filename.ends_with("secret")),
        "{target:?}"
    );
    std::fs::remove_dir_all(root).ok();
    std::fs::remove_dir_all(outside).ok();
}

#[tokio::test]
async fn no_change_reaches_through_a_symlink_out() {
    let (root, outside) = linked_out("changes");
    let mut client = Client::start(&root, false).await;
    let secret_mode = mode_of(&outside.join("secret"));
    let changes = [
        Packet::MkDir(MkDir {
            id: 9,
            path: "/data/out/made".into(),
            attrs: FileAttributes::default(),
        }),
        Packet::Rename(Rename {
            id: 10,
            oldpath: "/data/seed.txt".into(),
            newpath: "/data/out/stolen".into(),
        }),
        Packet::Remove(Remove {
            id: 11,
            filename: "/data/out/secret".into(),
        }),
        Packet::SetStat(SetStat {
            id: 12,
            path: "/data/secret".into(),
            attrs: with_mode(0o777),
        }),
    ];
    for change in changes {
        let refused = client.ask(change).await;
        assert_eq!(
            status(&refused),
            StatusCode::PermissionDenied,
            "{refused:?}"
        );
    }
    assert!(!outside.join("made").exists() && !outside.join("stolen").exists());
    assert!(outside.join("secret").exists() && root.join("data/seed.txt").exists());
    assert_eq!(mode_of(&outside.join("secret")), secret_mode);
    std::fs::remove_dir_all(root).ok();
    std::fs::remove_dir_all(outside).ok();
}

#[tokio::test]
async fn the_root_itself_is_served() {
    let root = scratch("root");
    let mut client = Client::start(&root, true).await;
    for path in ["/", "", "/.."] {
        let stat = client
            .ask(Packet::Stat(Stat {
                id: 1,
                path: path.into(),
            }))
            .await;
        assert!(
            matches!(&stat, Packet::Attrs(attrs) if attrs.attrs.is_dir()),
            "{path:?}: {stat:?}"
        );
    }
    let listed = handle(
        client
            .ask(Packet::OpenDir(OpenDir {
                id: 2,
                path: "/".into(),
            }))
            .await,
    );
    let entries = client
        .ask(Packet::ReadDir(ReadDir {
            id: 3,
            handle: listed,
        }))
        .await;
    assert!(
        matches!(&entries, Packet::Name(name) if name.files.len() == 1 && name.files[0].filename == "data"),
        "{entries:?}"
    );
    std::fs::remove_dir_all(root).ok();
}

/// Swaps `data/swap` for `data/parked` (a directory and a symlink out of the volumes, in
/// either order) until `stop`, pausing after each swap so that a request's lookups may
/// see either.
fn swap_until(data: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>) {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (swap, parked) = (data.join("swap"), data.join("parked"));
        renameat_with(CWD, &swap, CWD, &parked, RenameFlags::EXCHANGE).expect("swapped");
        std::thread::sleep(Duration::from_micros(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_out_never_leads_out() {
    const SECRET: &[u8] = b"the agent's secret";
    let root = scratch("race");
    let outside = root.with_extension("outside");
    std::fs::create_dir_all(&outside).expect("a directory outside");
    std::fs::write(outside.join("secret"), SECRET).expect("a file outside");
    let data = root.join("data");
    std::fs::create_dir(data.join("swap")).expect("a directory inside");
    std::fs::write(data.join("swap/secret"), "inside").expect("a file inside");
    std::os::unix::fs::symlink(&outside, data.join("parked")).expect("a link out");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let stop = stop.clone();
        move || swap_until(data, stop)
    });

    let mut client = Client::start(&root, false).await;
    let (mut read_inside, mut read_outside) = (0, 0);
    for i in 0..2000 {
        let id = i * 5;
        if let Packet::Handle(planted) = client.open(id, "/data/swap/planted", WRITE).await {
            let close = Packet::Close(Close {
                id: id + 1,
                handle: planted.handle,
            });
            client.ask(close).await;
        }
        let Packet::Handle(opened) = client
            .open(id + 2, "/data/swap/secret", OpenFlags::READ)
            .await
        else {
            continue;
        };
        let read = client.read_all(id + 3, &opened.handle).await;
        let close = Packet::Close(Close {
            id: id + 4,
            handle: opened.handle,
        });
        client.ask(close).await;
        match read {
            Ok(read) if read == SECRET => read_outside += 1,
            Ok(_) => read_inside += 1,
            Err(reply) => panic!("an open file could not be read: {reply:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().expect("the swapper");
    assert_eq!(read_outside, 0, "read outside the volumes");
    assert!(read_inside > 0, "the directory was never read");
    assert!(
        !outside.join("planted").exists(),
        "created outside the volumes"
    );
    std::fs::remove_dir_all(root).ok();
    std::fs::remove_dir_all(outside).ok();
}

#[tokio::test]
async fn no_mode_a_client_sets_makes_a_file_setuid_or_setgid() {
    let root = scratch("setuid");
    let mut client = Client::start(&root, false).await;
    let tool = root.join("data/tool");
    let created = client
        .ask(Packet::Open(Open {
            id: 1,
            filename: "/data/tool".into(),
            pflags: WRITE,
            attrs: with_mode(0o6755),
        }))
        .await;
    let created = handle(created);
    assert_eq!(mode_of(&tool) & 0o6000, 0, "created setuid");
    let changes = [
        Packet::SetStat(SetStat {
            id: 2,
            path: "/data/tool".into(),
            attrs: with_mode(0o4755),
        }),
        Packet::FSetStat(FSetStat {
            id: 3,
            handle: created,
            attrs: with_mode(0o6711),
        }),
        Packet::MkDir(MkDir {
            id: 4,
            path: "/data/shared".into(),
            attrs: with_mode(0o3755),
        }),
    ];
    let mut modes = Vec::new();
    for change in changes {
        assert_eq!(status(&client.ask(change).await), StatusCode::Ok);
        modes.push(mode_of(&tool));
    }
    assert_eq!(
        modes[..2],
        [0o755, 0o711],
        "the permissions are set, no more"
    );
    let shared = mode_of(&root.join("data/shared"));
    assert_eq!(shared & 0o6000, 0, "made setgid: {shared:o}");
    assert_eq!(
        shared & 0o1000,
        0o1000,
        "the sticky bit is kept: {shared:o}"
    );
    std::fs::remove_dir_all(root).ok();
}

#[tokio::test]
async fn a_session_holds_a_bounded_number_of_handles_and_closing_frees_one() {
    kubedev_process::limits::raise_open_files_limit();
    let root = scratch("handles");
    let mut client = Client::start(&root, true).await;
    let last = u32::try_from(MAX_HANDLES).expect("a handle count");
    for id in 1..=last {
        client
            .send(open(id, "/data/seed.txt", OpenFlags::READ))
            .await;
    }
    let mut handles = Vec::new();
    for _ in 1..=last {
        handles.push(handle(client.reply().await));
    }
    let refused = client
        .open(last + 1, "/data/seed.txt", OpenFlags::READ)
        .await;
    assert_eq!(status(&refused), StatusCode::Failure);
    assert!(message(&refused).contains("close some"), "{refused:?}");
    let listing = client
        .ask(Packet::OpenDir(OpenDir {
            id: last + 2,
            path: "/data".into(),
        }))
        .await;
    assert_eq!(status(&listing), StatusCode::Failure);

    let closed = client
        .ask(Packet::Close(Close {
            id: last + 3,
            handle: handles.swap_remove(0),
        }))
        .await;
    assert_eq!(status(&closed), StatusCode::Ok);
    let again = client
        .open(last + 4, "/data/seed.txt", OpenFlags::READ)
        .await;
    assert!(matches!(again, Packet::Handle(_)), "{again:?}");
    std::fs::remove_dir_all(root).ok();
}

#[test]
fn paths_never_leave_the_root() {
    assert_eq!(confined("/data/a.txt"), "/data/a.txt");
    assert_eq!(confined("data/./b/../a.txt"), "/data/a.txt");
    assert_eq!(confined("/../../etc/passwd"), "/etc/passwd");
    assert_eq!(confined(""), "/");
    assert_eq!(confined("."), "/");
}
