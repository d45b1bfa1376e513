//! What the fuzz targets in `fuzz/` run on the bytes they are given, as a hostile client
//! in the cluster (`http_request`) or a hostile workstation (`sftp_paths`) would send
//! them. The unit tests replay every input kept in `fuzz/inputs/`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kubedev_protocol::codec::{read_message, write_message};
use kubedev_protocol::fuzzing::block_on;
use kubedev_protocol::mux::{self, Mode, MuxStream};
use kubedev_protocol::{HttpFilter, Listener, OpenReply, OpenRequest, Transport};
use russh_sftp::protocol::{
    Close, FSetStat, FileAttributes, Fstat, Init, Lstat, MkDir, Open, OpenDir, OpenFlags, Packet,
    Read, ReadDir, ReadLink, RealPath, Remove, Rename, RmDir, SetStat, Stat, Write,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use crate::incoming::http1;
use crate::incoming::route::Route;
use crate::workstations::{Claimant, Wiretapper};

/// `input` as one client connection to a port a workstation claimed with a filter: the
/// agent parses and routes every request in it, and the connection ends with the input.
pub fn http_request(input: &[u8]) {
    block_on(async {
        let (agent_end, workstation_end) = tokio::io::duplex(1 << 16);
        let (handle, _agent_streams_rx) = mux::spawn(agent_end, Mode::Server);
        let (_workstation, mut workstation_streams_rx) = mux::spawn(workstation_end, Mode::Client);
        tokio::spawn(async move {
            while let Some(stream) = workstation_streams_rx.recv().await {
                tokio::spawn(answer_as_workstation(stream));
            }
        });
        let claimants = vec![Claimant {
            handle: handle.clone(),
            filter: Some(HttpFilter {
                headers: vec![("x-dev".into(), "alice".into())],
                path_prefix: Some("/api".into()),
            }),
        }];
        // The same workstation also wiretaps every request.
        let wiretappers = vec![Wiretapper {
            links: vec![Claimant {
                handle,
                filter: None,
            }],
            filter: None,
            tally: Default::default(),
        }];
        let route = Route {
            listener: Listener {
                port: 8081,
                app_port: 8080,
                app_running: false,
                transport: Transport::Tcp,
                tls: false,
            },
            claimants,
            wiretappers,
            onward: None,
        };
        let (client, served) = tokio::io::duplex(1 << 16);
        let peer = SocketAddr::from(([10, 0, 0, 1], 40000));
        let serving = tokio::spawn(http1::serve(served, peer, route));
        let (mut from_agent, mut to_agent) = tokio::io::split(client);
        let sending = async {
            let _ = to_agent.write_all(input).await;
            let _ = to_agent.shutdown().await;
        };
        let mut answers = Vec::new();
        let (_, _) = tokio::join!(sending, from_agent.read_to_end(&mut answers));
        serving
            .await
            .expect("the connection's server does not panic");
        assert!(
            answers.is_empty() || answers.starts_with(b"HTTP/1."),
            "not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answers[..answers.len().min(64)])
        );
    });
}

/// The workstation's end of an intercepted connection: a server that answers every request.
async fn answer_as_workstation(mut stream: MuxStream) {
    if !matches!(
        read_message(&mut stream).await,
        Ok(OpenRequest::Incoming { .. })
    ) {
        return;
    }
    if write_message(&mut stream, &OpenReply::Connected)
        .await
        .is_err()
    {
        return;
    }
    let service = hyper::service::service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"from the workstation",
        ))))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The file outside the volumes that symlinks in them lead to.
const SECRET_NAME: &str = "secret-outside";
const SECRET: &[u8] = b"not for the workstation";
/// Another file beside it, whose name no request makes: a listing that shows it is a
/// listing of the directory outside (a file named [`SECRET_NAME`] may be created inside).
const MARKER_NAME: &str = "marker-outside";
/// The most requests taken from one input.
const MAX_REQUESTS: usize = 64;
/// Names the paths are made of: what the volumes and the files beside them hold.
const NAMES: &[&str] = &[
    "",
    ".",
    "..",
    "data",
    "seed.txt",
    "out",
    "abs",
    "up",
    "dangling",
    SECRET_NAME,
    "outside",
    "volumes",
    "new",
];

/// The first byte picks read-only (ingest) or not; the rest is a series of SFTP requests
/// on volumes whose symlinks lead out of them (relative, absolute, dangling, in a
/// subdirectory). Whatever the requests, nothing outside the volumes is read or changed,
/// and in read-only mode nothing inside either.
pub fn sftp_paths(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let read_only = mode % 2 == 0;
    let scratch = Scratch::new();
    let outside_before = snapshot(&scratch.outside());
    let volumes_before = snapshot(&scratch.volumes());
    block_on(async {
        let (client, server) = tokio::io::duplex(1 << 20);
        let serving = tokio::spawn({
            let root = scratch.volumes();
            async move { crate::files::serve_dir(server, &root, read_only).await }
        });
        let mut session = SftpSession::new(client);
        session.send(Packet::Init(Init::new())).await;
        let mut requests = Requests { input: rest };
        for _ in 0..MAX_REQUESTS {
            let Some(request) = requests.next(session.next_id + 1, &session.handles) else {
                break;
            };
            session.send(request).await;
        }
        drop(session);
        let _ = serving.await.expect("the SFTP server does not panic");
    });
    assert_eq!(
        snapshot(&scratch.outside()),
        outside_before,
        "changed outside the volumes"
    );
    if read_only {
        assert_eq!(
            snapshot(&scratch.volumes()),
            volumes_before,
            "changed read-only volumes"
        );
    }
}

/// The client's end: sends one request at a time and checks its reply.
struct SftpSession {
    stream: DuplexStream,
    next_id: u32,
    /// Handles the server gave out, for later requests to use.
    handles: Vec<String>,
}

impl SftpSession {
    fn new(stream: DuplexStream) -> Self {
        Self {
            stream,
            next_id: 0,
            handles: Vec::new(),
        }
    }

    async fn send(&mut self, request: Packet) {
        self.next_id += 1;
        let lists = matches!(request, Packet::ReadDir(_));
        let bytes = Bytes::try_from(request).expect("a request encodes");
        self.stream
            .write_all(&bytes)
            .await
            .expect("the server reads");
        let length = self.stream.read_u32().await.expect("a reply");
        let mut body = vec![0u8; length as usize];
        self.stream.read_exact(&mut body).await.expect("its body");
        match Packet::try_from(&mut Bytes::from(body)).expect("the reply decodes") {
            Packet::Handle(handle) => self.handles.push(handle.handle),
            Packet::Data(data) => assert!(
                !data.data.windows(SECRET.len()).any(|w| w == SECRET),
                "read a file outside the volumes"
            ),
            Packet::Name(name) if lists => assert!(
                !name.files.iter().any(|f| f.filename == MARKER_NAME),
                "listed a directory outside the volumes"
            ),
            _ => {}
        }
    }
}

/// SFTP requests read from fuzz input.
struct Requests<'a> {
    input: &'a [u8],
}

impl Requests<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.input.split_first()?;
        self.input = rest;
        Some(first)
    }

    fn bytes(&mut self, most: u8) -> Vec<u8> {
        let len = usize::from(self.byte().unwrap_or(0) % most).min(self.input.len());
        let (taken, rest) = self.input.split_at(len);
        self.input = rest;
        taken.to_vec()
    }

    /// One to four names from [`NAMES`] (or raw bytes), absolute or relative.
    fn path(&mut self) -> Option<String> {
        let shape = self.byte()?;
        let names: Vec<String> = (0..=shape % 4)
            .map(|_| match self.byte().unwrap_or(0) {
                raw @ 0xf0.. => String::from_utf8_lossy(&self.bytes(raw - 0xef + 8)).into_owned(),
                pick => NAMES[usize::from(pick) % NAMES.len()].to_owned(),
            })
            .collect();
        let joined = names.join("/");
        Some(if shape & 0x80 == 0 {
            format!("/{joined}")
        } else {
            joined
        })
    }

    fn handle(&mut self, handles: &[String]) -> Option<String> {
        let pick = usize::from(self.byte()?);
        Some(if handles.is_empty() || pick == 0xff {
            pick.to_string()
        } else {
            handles[pick % handles.len()].clone()
        })
    }

    fn attrs(&mut self) -> Option<FileAttributes> {
        let which = self.byte()?;
        let mut attrs = FileAttributes::empty();
        if which & 1 != 0 {
            attrs.permissions = Some(u32::from(self.byte()?) << 1);
        }
        if which & 2 != 0 {
            attrs.size = Some(u64::from(self.byte()?));
        }
        if which & 4 != 0 {
            attrs.mtime = Some(u32::from(self.byte()?));
            attrs.atime = attrs.mtime;
        }
        Some(attrs)
    }

    /// The next request, with `id`; none once the input runs out.
    fn next(&mut self, id: u32, handles: &[String]) -> Option<Packet> {
        match self.byte()? % 17 {
            kind @ (1 | 2 | 3 | 7 | 13 | 14) => {
                let handle = self.handle(handles)?;
                self.on_handle(kind, id, handle)
            }
            kind => {
                let path = self.path()?;
                self.on_path(kind, id, path)
            }
        }
    }

    /// The request of `kind` on an open file or directory; every such request names its
    /// handle first.
    fn on_handle(&mut self, kind: u8, id: u32, handle: String) -> Option<Packet> {
        Some(match kind {
            1 => Packet::Read(Read {
                id,
                handle,
                offset: u64::from(self.byte()?),
                len: u32::from(self.byte()?) * 64,
            }),
            2 => Packet::Write(Write {
                id,
                handle,
                offset: u64::from(self.byte()?),
                data: self.bytes(32),
            }),
            3 => Packet::Close(Close { id, handle }),
            7 => Packet::ReadDir(ReadDir { id, handle }),
            13 => Packet::FSetStat(FSetStat {
                id,
                handle,
                attrs: self.attrs()?,
            }),
            _ => Packet::Fstat(Fstat { id, handle }),
        })
    }

    /// The request of `kind` on a path; every such request names its path first.
    fn on_path(&mut self, kind: u8, id: u32, path: String) -> Option<Packet> {
        Some(match kind {
            0 => Packet::Open(Open {
                id,
                filename: path,
                pflags: OpenFlags::from_bits_truncate(u32::from(self.byte()?)),
                attrs: FileAttributes::empty(),
            }),
            4 => Packet::Stat(Stat { id, path }),
            5 => Packet::Lstat(Lstat { id, path }),
            6 => Packet::OpenDir(OpenDir { id, path }),
            8 => Packet::Remove(Remove { id, filename: path }),
            9 => Packet::MkDir(MkDir {
                id,
                path,
                attrs: FileAttributes::empty(),
            }),
            10 => Packet::RmDir(RmDir { id, path }),
            11 => Packet::Rename(Rename {
                id,
                oldpath: path,
                newpath: self.path()?,
            }),
            12 => Packet::SetStat(SetStat {
                id,
                path,
                attrs: self.attrs()?,
            }),
            15 => Packet::ReadLink(ReadLink { id, path }),
            _ => Packet::RealPath(RealPath { id, path }),
        })
    }
}

/// A directory of its own for one input: `volumes/` (the root served) beside `outside/`.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static INPUTS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fuzz-sftp-{}-{}",
            std::process::id(),
            INPUTS.fetch_add(1, Ordering::Relaxed)
        ));
        let scratch = Self(dir);
        let (volumes, outside) = (scratch.volumes(), scratch.outside());
        std::fs::create_dir_all(volumes.join("data")).expect("the volumes");
        std::fs::create_dir_all(&outside).expect("beside them");
        std::fs::write(volumes.join("data/seed.txt"), "from the pod").expect("a file");
        std::fs::write(outside.join(SECRET_NAME), SECRET).expect("the secret");
        std::fs::write(outside.join(MARKER_NAME), "").expect("the marker");
        let links: [(&str, PathBuf); 4] = [
            ("out", "../outside".into()),
            ("abs", outside.clone()),
            ("data/up", format!("../../outside/{SECRET_NAME}").into()),
            ("dangling", "../outside/new".into()),
        ];
        for (link, target) in links {
            std::os::unix::fs::symlink(target, volumes.join(link)).expect("a symlink");
        }
        scratch
    }

    fn volumes(&self) -> PathBuf {
        self.0.join("volumes")
    }

    fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every entry under `dir` (symlinks not followed): its kind, permissions, and contents or
/// target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        let what = if meta.is_symlink() {
            format!("link {:?}", std::fs::read_link(&path).ok())
        } else if meta.is_dir() {
            if let Ok(children) = std::fs::read_dir(&path) {
                pending.extend(children.flatten().map(|entry| entry.path()));
            }
            "dir".to_owned()
        } else {
            format!("file {:?}", std::fs::read(&path).ok())
        };
        let key = path.strip_prefix(dir).unwrap_or(&path).to_owned();
        entries.insert(key, format!("{mode:o} {what}"));
    }
    entries
}

#[cfg(test)]
mod tests {
    use kubedev_protocol::fuzzing::replay_kept_inputs;

    use super::*;

    #[test]
    fn kept_http_request_inputs_pass() {
        replay_kept_inputs("http_request", http_request);
    }

    #[test]
    fn kept_sftp_paths_inputs_pass() {
        replay_kept_inputs("sftp_paths", sftp_paths);
    }
}
